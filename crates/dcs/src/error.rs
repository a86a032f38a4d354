//! The error type of every store operation.
//!
//! Callers branch on the variant: retryable errors (the store could not be
//! reached or had no quorum, or the deadline passed) mean "try again next
//! cycle, and if you are the leader, start counting towards demotion"; the
//! others mean the request itself was wrong or refused.

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DcsError {
    /// No endpoint answered, or the answering member had no quorum/leader.
    #[error("consensus store unavailable: {0}")]
    Unavailable(String),
    /// The request did not complete within the request timeout. Its effect is
    /// unknown: a write may or may not have been applied.
    #[error("consensus store request timed out")]
    Timeout,
    /// The lease does not exist any more (expired or revoked).
    #[error("lease not found")]
    LeaseNotFound,
    /// The store refused the request (permission, auth, invalid argument).
    #[error("consensus store rejected the request: {0}")]
    Rejected(String),
    #[error("consensus store error: {0}")]
    Other(String),
}

impl DcsError {
    /// Whether the same request may succeed later without any change by the caller.
    pub fn is_retryable(&self) -> bool {
        matches!(self, DcsError::Unavailable(_) | DcsError::Timeout)
    }
}
