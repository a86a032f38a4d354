//! Decode errors. Each names what was wrong so the proxy can answer with a
//! precise protocol-violation message (SQLSTATE 08P01) before closing.

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("invalid length {len} in message header (minimum {min})")]
    TooShort { len: u64, min: usize },
    #[error("message length {len} exceeds the limit of {max} bytes")]
    TooLong { len: u64, max: usize },
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("malformed {message} message: {problem}")]
    Malformed {
        message: &'static str,
        problem: &'static str,
    },
    #[error("unexpected message type {tag:?}")]
    UnexpectedTag { tag: char },
}

impl WireError {
    pub(crate) fn malformed(message: &'static str, problem: &'static str) -> WireError {
        WireError::Malformed { message, problem }
    }
}
