//! The one error type of the crate.
//!
//! Variants are precise enough for the proxy to choose what to send: a
//! protocol violation (08P01) versus a failed authentication (28P01), which
//! message and attribute was wrong. Messages never contain a secret.

use std::path::PathBuf;

#[derive(thiserror::Error, Debug)]
pub enum AuthError {
    /// A SCRAM message could not be parsed as a whole.
    #[error("malformed SCRAM {message}: {reason}")]
    Malformed {
        message: &'static str,
        reason: String,
    },
    /// One attribute of a SCRAM message is missing or invalid.
    #[error("malformed SCRAM {message}: attribute '{attribute}': {reason}")]
    BadAttribute {
        message: &'static str,
        attribute: char,
        reason: String,
    },
    /// The client asked for channel binding (`p=...`); pgwarden offers only
    /// SCRAM-SHA-256 without it.
    #[error("SCRAM channel binding is not supported (the client asked for '{0}')")]
    ChannelBindingNotSupported(String),
    /// `c=` of client-final does not repeat the gs2 header of client-first.
    #[error("SCRAM channel binding data does not match the gs2 header of client-first-message")]
    ChannelBindingMismatch,
    /// `a=` (authorization identity) in the gs2 header; PostgreSQL refuses it too.
    #[error("SCRAM authorization identity (a=) is not supported")]
    AuthzidNotSupported,
    /// A mandatory extension (`m=`) nobody implements.
    #[error("SCRAM mandatory extension (m=) is not supported")]
    MandatoryExtension,
    /// The nonce of a later message does not extend or repeat the agreed one.
    #[error("SCRAM nonce mismatch")]
    NonceMismatch,
    /// The client's proof is wrong: wrong password, or a user that does not exist.
    #[error("SCRAM authentication failed: wrong proof")]
    WrongProof,
    /// The server's signature in server-final is wrong: it does not know the password.
    #[error("SCRAM server signature is wrong: the server does not know the password")]
    WrongServerSignature,
    /// The server sent `e=...` in server-final.
    #[error("the server refused SCRAM authentication: {0}")]
    ServerError(String),
    /// A method of an exchange was called in the wrong order.
    #[error("SCRAM exchange used out of order: {0}")]
    OutOfOrder(&'static str),
    /// A stored SCRAM verifier text is not in `pg_authid` format.
    #[error("bad SCRAM verifier: {0}")]
    BadVerifier(String),
    /// A user list line could not be parsed (lines count from 1).
    #[error("user list line {line}: {reason}")]
    UserList { line: usize, reason: String },
    /// The user list file could not be read.
    #[error("cannot read user list {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
