//! The PostgreSQL v3 wire protocol as the pgwarden proxy needs it.
//!
//! Role: decode and encode the startup phase (SSLRequest, GSSENCRequest,
//! CancelRequest, StartupMessage) and the framed messages of both directions.
//! The proxy forwards most frames untouched, so this crate offers three layers:
//! - [`frame`]: frame headers (type byte + length) and a [`frame::FrameScanner`]
//!   that walks a byte stream without copying or buffering bodies, reporting
//!   only the frames a caller asks for;
//! - [`startup`]: the untyped startup packets, with strict limits;
//! - [`frontend`] / [`backend`]: typed bodies for the few messages the proxy
//!   must understand, each with `decode` and `encode` that round-trip.
//!
//! Invariants: every decoder is total (any input gives a value or a
//! [`WireError`], never a panic) and bounded (lengths are checked before any
//! allocation). This crate does no I/O, holds no state besides what a caller
//! owns, and never logs.

pub mod backend;
mod error;
pub mod frame;
pub mod frontend;
mod read;
pub mod startup;

pub use error::WireError;

/// Largest startup packet accepted (PostgreSQL itself allows 10000 bytes).
pub const MAX_STARTUP_LEN: usize = 10_000;
/// Largest regular message accepted (PostgreSQL's limit for most messages is
/// 1 GiB; anything >= 2^31 is certainly garbage).
pub const MAX_MESSAGE_LEN: usize = 1 << 30;
