//! Test-only helpers for pgwarden (never shipped).
//!
//! What this crate guarantees to the tests that use it:
//! - every process it starts is owned by a guard that SIGKILLs it by PID and
//!   reaps it on drop, also when the test panics; output goes to log files,
//!   never to undrained pipes;
//! - ports come from the kernel (bind 127.0.0.1:0), never fixed numbers, and
//!   everything listens on loopback only;
//! - every wait is bounded by a deadline and reports what it waited for.
//!
//! It must not touch processes it did not start, and must not be a dependency
//! of any shipped crate. Keep this file a list of `pub mod` lines.

pub mod etcd;
pub mod ports;
pub mod process;
pub mod wait;
