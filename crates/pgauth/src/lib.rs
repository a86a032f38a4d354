//! PostgreSQL authentication primitives for the pgwarden proxy.
//!
//! Role: the pure parts of client and server authentication as PostgreSQL
//! speaks it: SCRAM-SHA-256 (RFC 5802 / RFC 7677, without channel binding)
//! on both sides, md5 challenge responses, stored secrets in PostgreSQL's
//! `pg_authid` formats, and PgBouncer's `userlist.txt`.
//!
//! Invariants: every comparison of a secret-derived value is constant-time
//! (`subtle`); a user that does not exist fails exactly like a wrong password
//! ([`ScramServer::for_unknown_user`]); no `Debug` output shows a password,
//! an md5 hash or SCRAM keys.
//!
//! It must not do I/O on sockets, spawn tasks or log: the proxy owns the wire
//! protocol and decides what the client is told.

mod error;
mod md5auth;
mod scram;
mod secret;
mod userlist;

pub use error::AuthError;
pub use md5auth::{md5_response, verify_md5_response};
pub use scram::{
    ScramClient, ScramCredential, ScramServer, ScramVerifier, DEFAULT_ITERATIONS, SCRAM_SHA_256,
};
pub use secret::Secret;
pub use userlist::UserList;
