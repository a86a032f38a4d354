//! Bounded waiting for a condition, instead of sleep-then-assert.
//!
//! A condition is polled until it is ready or the deadline passes; on timeout
//! the error names what was awaited and how long, so a failing test says what
//! it was waiting for. Conditions return `bool` or `Option<T>` (see [`Ready`]).

use std::future::Future;
use std::time::Duration;

/// What a polled condition may return: `bool` (ready when true) or `Option<T>`
/// (ready when `Some`, which is then the result of the wait).
pub trait Ready {
    type Output;
    fn into_ready(self) -> Option<Self::Output>;
}

impl Ready for bool {
    type Output = ();
    fn into_ready(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Ready for Option<T> {
    type Output = T;
    fn into_ready(self) -> Option<T> {
        self
    }
}

/// Polls `f` every `poll` until it is ready, at most for `deadline`.
///
/// The condition is always evaluated at least once, and once more at the
/// deadline, so a slow first poll cannot cause a spurious timeout.
pub async fn wait_until<R, F, Fut>(
    what: &str,
    deadline: Duration,
    poll: Duration,
    mut f: F,
) -> Result<R::Output, String>
where
    R: Ready,
    F: FnMut() -> Fut,
    Fut: Future<Output = R>,
{
    let start = tokio::time::Instant::now();
    let end = start + deadline;
    loop {
        if let Some(v) = f().await.into_ready() {
            return Ok(v);
        }
        let now = tokio::time::Instant::now();
        if now >= end {
            return Err(format!(
                "timed out after {:?} waiting for {what}",
                now.duration_since(start)
            ));
        }
        tokio::time::sleep(poll.min(end - now)).await;
    }
}

/// Blocking twin of [`wait_until`] for synchronous code (do not call it on an
/// async runtime thread).
pub fn wait_until_blocking<R, F>(
    what: &str,
    deadline: Duration,
    poll: Duration,
    mut f: F,
) -> Result<R::Output, String>
where
    R: Ready,
    F: FnMut() -> R,
{
    let start = std::time::Instant::now();
    let end = start + deadline;
    loop {
        if let Some(v) = f().into_ready() {
            return Ok(v);
        }
        let now = std::time::Instant::now();
        if now >= end {
            return Err(format!(
                "timed out after {:?} waiting for {what}",
                now.duration_since(start)
            ));
        }
        std::thread::sleep(poll.min(end - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_value_when_ready() {
        let mut calls = 0;
        let got = wait_until(
            "third call",
            Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                calls += 1;
                let n = calls;
                async move { (n >= 3).then_some(n) }
            },
        )
        .await;
        assert_eq!(got, Ok(3));
    }

    #[tokio::test]
    async fn timeout_names_the_condition() {
        let err = wait_until(
            "never",
            Duration::from_millis(20),
            Duration::from_millis(5),
            || async { false },
        )
        .await
        .unwrap_err();
        assert!(err.contains("waiting for never"), "{err}");
    }

    #[test]
    fn blocking_variant() {
        let mut n = 0;
        let r = wait_until_blocking(
            "n reaches 2",
            Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                n += 1;
                n >= 2
            },
        );
        assert_eq!(r, Ok(()));
        assert!(wait_until_blocking(
            "nothing",
            Duration::from_millis(10),
            Duration::from_millis(2),
            || None::<u8>
        )
        .is_err());
    }
}
