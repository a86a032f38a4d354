//! Operator requests from the REST API, handed to the loop.
//!
//! The REST server never acts itself: it submits a request and waits for the
//! loop's answer. The loop takes at most one request per cycle, puts it in
//! the observation and the engine decides (a restart is answered when the
//! restart task ends, a refusal at once). Scheduled restarts wait here until
//! their time and then enter the loop like any other request (with nobody
//! waiting for the answer). A reload request re-reads the configuration file.

use std::sync::Mutex;

use chrono::{DateTime, FixedOffset};
use pgwarden_engine::OperatorRequest;
use serde_json::Value;
use tokio::sync::oneshot;

/// The answer to an operator: a message for the HTTP body, or the reason of a refusal.
pub type Reply = Result<String, String>;

/// A request waiting for the loop, with whoever waits for the answer.
pub struct Pending {
    pub request: OperatorRequest,
    pub reply: Option<oneshot::Sender<Reply>>,
}

/// A restart an operator scheduled (`POST /restart` with `schedule`).
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduledRestart {
    pub at: DateTime<FixedOffset>,
    /// What `/patroni` shows under `scheduled_restart` (the schedule and filters).
    pub document: Value,
}

/// The mailbox between the REST server and the loop.
#[derive(Default)]
pub struct Mailbox {
    pending: Mutex<Option<Pending>>,
    scheduled_restart: Mutex<Option<ScheduledRestart>>,
    reload: Mutex<Option<oneshot::Sender<Reply>>>,
    reload_requested: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Mailbox {
    /// Queues a request; a request still waiting is refused (one at a time).
    pub fn submit(&self, request: OperatorRequest) -> oneshot::Receiver<Reply> {
        let (tx, rx) = oneshot::channel();
        let mut slot = lock(&self.pending);
        if slot.is_some() {
            let _ = tx.send(Err(
                "another restart or reinitialize request is waiting for this node".into(),
            ));
        } else {
            *slot = Some(Pending {
                request,
                reply: Some(tx),
            });
        }
        rx
    }

    /// The next request for this cycle: a waiting one, else a scheduled
    /// restart whose time has come (`now` is the wall clock).
    pub fn take(&self, now: DateTime<FixedOffset>) -> Option<Pending> {
        if let Some(p) = lock(&self.pending).take() {
            return Some(p);
        }
        let mut scheduled = lock(&self.scheduled_restart);
        if scheduled.as_ref().is_some_and(|s| s.at <= now) {
            *scheduled = None;
            return Some(Pending {
                request: OperatorRequest::Restart,
                reply: None,
            });
        }
        None
    }

    /// Schedules a restart; refuses when one is already scheduled (Patroni).
    pub fn schedule_restart(&self, restart: ScheduledRestart) -> Reply {
        let mut slot = lock(&self.scheduled_restart);
        if slot.is_some() {
            return Err("Cannot schedule restart: another restart is already scheduled".into());
        }
        let at = restart.at;
        *slot = Some(restart);
        Ok(format!("Restart scheduled for {}", at.to_rfc3339()))
    }

    /// Cancels the scheduled restart; `false` when none was scheduled.
    pub fn cancel_scheduled_restart(&self) -> bool {
        lock(&self.scheduled_restart).take().is_some()
    }

    pub fn scheduled_restart(&self) -> Option<ScheduledRestart> {
        lock(&self.scheduled_restart).clone()
    }

    /// Asks the loop to re-read the configuration file.
    pub fn request_reload(&self, reply: Option<oneshot::Sender<Reply>>) {
        if let Some(tx) = reply {
            *lock(&self.reload) = Some(tx);
        }
        self.reload_requested
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// A reload to perform now, with whoever waits for its outcome.
    pub fn take_reload(&self) -> Option<Option<oneshot::Sender<Reply>>> {
        self.reload_requested
            .swap(false, std::sync::atomic::Ordering::SeqCst)
            .then(|| lock(&self.reload).take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(s).unwrap()
    }

    #[test]
    fn one_request_at_a_time() {
        let mailbox = Mailbox::default();
        let _first = mailbox.submit(OperatorRequest::Restart);
        let mut second = mailbox.submit(OperatorRequest::Reinitialize { from_leader: false });
        assert!(matches!(second.try_recv(), Ok(Err(m)) if m.contains("another")));
        let taken = mailbox.take(at("2026-01-01T00:00:00Z")).unwrap();
        assert_eq!(taken.request, OperatorRequest::Restart);
        assert!(mailbox.take(at("2026-01-01T00:00:00Z")).is_none());
    }

    #[test]
    fn scheduled_restart_fires_once_at_its_time() {
        let mailbox = Mailbox::default();
        let restart = ScheduledRestart {
            at: at("2026-01-01T12:00:00Z"),
            document: Value::Null,
        };
        assert!(mailbox.schedule_restart(restart.clone()).is_ok());
        assert!(mailbox.schedule_restart(restart).is_err());
        assert!(mailbox.take(at("2026-01-01T11:59:59Z")).is_none());
        let due = mailbox.take(at("2026-01-01T12:00:00Z")).unwrap();
        assert_eq!(due.request, OperatorRequest::Restart);
        assert!(due.reply.is_none());
        assert!(mailbox.scheduled_restart().is_none());
        assert!(!mailbox.cancel_scheduled_restart());
    }

    #[test]
    fn reload_is_taken_once() {
        let mailbox = Mailbox::default();
        assert!(mailbox.take_reload().is_none());
        mailbox.request_reload(None);
        assert!(mailbox.take_reload().is_some());
        assert!(mailbox.take_reload().is_none());
    }
}
