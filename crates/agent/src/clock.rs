//! Monotonic milliseconds for the engine.
//!
//! The engine takes time as an input; this is the one place that reads the
//! clock. It is CLOCK_MONOTONIC (through tokio), which keeps running while the
//! process is stopped, so a frozen agent sees the whole gap when it wakes.

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Monotonic {
    origin: Instant,
}

impl Monotonic {
    pub fn new() -> Monotonic {
        Monotonic {
            origin: Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    pub fn ms_at(&self, instant: Instant) -> u64 {
        u64::try_from(instant.saturating_duration_since(self.origin).as_millis())
            .unwrap_or(u64::MAX)
    }
}
