//! State shared between the loop, the REST server and the two watchers, and
//! the watchers themselves.
//!
//! The fence timer is the agent's own guarantee that a primary stops accepting
//! writes before its lease could have expired, independent of the main loop:
//! if the loop is stuck in a slow call, the timer still stops PostgreSQL once
//! the last confirmed renewal is older than the fence deadline. The postmaster
//! watch wakes the loop within a fraction of a second when PostgreSQL dies, so
//! a crash is handled at once instead of at the next `loop_wait`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use pgwarden_api::NodeStatus;
use pgwarden_config::AgentConfig;
use pgwarden_dcs::Dcs;
use pgwarden_engine::{DcsView, TaskKind};
use pgwarden_postgres::{Postgres, StopMode};
use pgwarden_types::{DynamicConfig, LocalPgState};
use tokio::sync::{watch, Notify};
use tracing::error;

use crate::clock::Monotonic;

const NEVER: u64 = u64::MAX;
const RETRY_AFTER_FAILED_KEEPALIVE: Duration = Duration::from_millis(200);

pub struct Shared {
    clock: Monotonic,
    /// Wakes the main loop before `loop_wait` runs out.
    pub wake: Notify,
    last_renewal_ms: AtomicU64,
    /// The lease the keeper renews (0: none; the loop grants one).
    lease: AtomicI64,
    fence_deadline_ms: AtomicU64,
    /// This node runs a primary that only its lease entitles it to.
    acting_primary: AtomicBool,
    /// The same flag for tasks that sleep until this node is primary (the
    /// fence timer and the watchdog feeder tick only while it is).
    primary_changed: tokio::sync::watch::Sender<bool>,
    dcs_last_seen: AtomicI64,
    dynamic: RwLock<DynamicConfig>,
    members: RwLock<BTreeSet<String>>,
    status: RwLock<Option<NodeStatus>>,
    dcs: Mutex<Option<Arc<dyn Dcs>>>,
    /// The last snapshot showed the leader key under my name.
    held_leader_key: AtomicBool,
    /// The last keepalive did not reach etcd (failsafe rounds run meanwhile).
    dcs_failing: AtomicBool,
    /// Send time of the last failsafe round every listed member accepted.
    failsafe_confirmed_ms: AtomicU64,
    /// `/failsafe` as last read: member name → api_url.
    failsafe_targets: RwLock<BTreeMap<String, String>>,
    /// Replica side: the leader accepted through `POST /failsafe`, and when.
    failsafe_accepted: Mutex<Option<(String, u64)>>,
    /// Operator requests from the REST API.
    pub mailbox: crate::operator::Mailbox,
    last_cycle_duration_ms: AtomicU64,
}

/// Why this node refuses a leader's `POST /failsafe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailsafeRefusal {
    /// `failsafe_mode` is off in the configuration this node last read.
    Disabled,
    /// This node runs a primary itself.
    RunningAsLeader,
}

impl Shared {
    pub fn new(clock: Monotonic) -> Shared {
        let dynamic = DynamicConfig::default();
        Shared {
            clock,
            wake: Notify::new(),
            last_renewal_ms: AtomicU64::new(NEVER),
            lease: AtomicI64::new(0),
            fence_deadline_ms: AtomicU64::new(dynamic.fence_deadline_ms()),
            acting_primary: AtomicBool::new(false),
            primary_changed: tokio::sync::watch::channel(false).0,
            dcs_last_seen: AtomicI64::new(0),
            dynamic: RwLock::new(dynamic),
            members: RwLock::new(BTreeSet::new()),
            status: RwLock::new(None),
            dcs: Mutex::new(None),
            held_leader_key: AtomicBool::new(false),
            dcs_failing: AtomicBool::new(false),
            failsafe_confirmed_ms: AtomicU64::new(NEVER),
            failsafe_targets: RwLock::new(BTreeMap::new()),
            failsafe_accepted: Mutex::new(None),
            mailbox: Default::default(),
            last_cycle_duration_ms: AtomicU64::new(NEVER),
        }
    }

    pub fn set_held_leader_key(&self, held: bool) {
        self.held_leader_key.store(held, Ordering::SeqCst);
    }

    pub fn set_failsafe_targets(&self, targets: BTreeMap<String, String>) {
        *self
            .failsafe_targets
            .write()
            .unwrap_or_else(|p| p.into_inner()) = targets;
    }

    fn failsafe_mode(&self) -> bool {
        self.dynamic
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .failsafe_mode
    }

    fn ttl_ms(&self) -> u64 {
        self.dynamic
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .ttl
            .saturating_mul(1000)
    }

    /// Send time of the last failsafe round every listed member accepted.
    pub fn failsafe_confirmed_ms(&self) -> Option<u64> {
        let v = self.failsafe_confirmed_ms.load(Ordering::SeqCst);
        (v != NEVER && self.failsafe_mode()).then_some(v)
    }

    /// A failsafe confirmation within the fence deadline, now.
    pub fn failsafe_is_fresh(&self) -> bool {
        self.failsafe_confirmed_ms().is_some_and(|at| {
            self.clock.now_ms().saturating_sub(at) < self.fence_deadline_ms.load(Ordering::SeqCst)
        })
    }

    /// Replica side of `POST /failsafe`: stay out of leader races for ttl.
    pub fn accept_failsafe(&self, leader: &str) -> Result<(), FailsafeRefusal> {
        if !self.failsafe_mode() {
            return Err(FailsafeRefusal::Disabled);
        }
        if self.acting_primary.load(Ordering::SeqCst) {
            return Err(FailsafeRefusal::RunningAsLeader);
        }
        *self
            .failsafe_accepted
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((leader.to_string(), self.clock.now_ms()));
        Ok(())
    }

    /// The leader accepted through `POST /failsafe` less than ttl ago.
    pub fn failsafe_leader(&self) -> Option<String> {
        let accepted = self
            .failsafe_accepted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        let (leader, at) = accepted;
        (self.failsafe_mode() && self.clock.now_ms().saturating_sub(at) < self.ttl_ms())
            .then_some(leader)
    }

    pub fn set_dcs(&self, dcs: Arc<dyn Dcs>) {
        *self.dcs.lock().unwrap_or_else(|p| p.into_inner()) = Some(dcs);
    }

    pub fn dcs(&self) -> Arc<dyn Dcs> {
        self.dcs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .expect("the store is set before the first cycle")
    }

    /// Records the send time of a keepalive that etcd confirmed.
    pub fn renewed_at(&self, sent_ms: u64) {
        self.last_renewal_ms.store(sent_ms, Ordering::SeqCst);
    }

    /// The current lease, if any.
    pub fn lease(&self) -> Option<i64> {
        let id = self.lease.load(Ordering::SeqCst);
        (id != 0).then_some(id)
    }

    /// A freshly granted lease; its clock started no earlier than `sent_ms`.
    pub fn lease_granted(&self, lease: i64, sent_ms: u64) {
        self.renewed_at(sent_ms);
        self.lease.store(lease, Ordering::SeqCst);
    }

    /// Forgets the lease and every renewal of it.
    pub fn lease_lost(&self) {
        self.last_renewal_ms.store(NEVER, Ordering::SeqCst);
        self.lease.store(0, Ordering::SeqCst);
    }

    pub fn last_renewal_ms(&self) -> Option<u64> {
        let v = self.last_renewal_ms.load(Ordering::SeqCst);
        (v != NEVER).then_some(v)
    }

    /// The last confirmed renewal is within the fence deadline, now.
    pub fn renewal_is_fresh(&self) -> bool {
        match self.last_renewal_ms() {
            Some(at) => {
                self.clock.now_ms().saturating_sub(at)
                    < self.fence_deadline_ms.load(Ordering::SeqCst)
            }
            None => false,
        }
    }

    pub fn set_acting_primary(&self, on: bool) {
        self.acting_primary.store(on, Ordering::SeqCst);
        self.primary_changed
            .send_if_modified(|v| std::mem::replace(v, on) != on);
    }

    /// Clears the acting-primary flag and says whether it was set.
    fn take_acting_primary(&self) -> bool {
        let was = self.acting_primary.swap(false, Ordering::SeqCst);
        self.primary_changed
            .send_if_modified(|v| std::mem::replace(v, false));
        was
    }

    /// Resolves once this node acts as primary (at once if it does).
    async fn until_acting_primary(&self) {
        let mut rx = self.primary_changed.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(|primary| *primary).await;
    }

    pub fn dcs_seen(&self) {
        self.dcs_last_seen
            .store(chrono::Utc::now().timestamp(), Ordering::SeqCst);
    }

    /// How often the keeper renews: once per loop_wait (as Patroni renews once
    /// per cycle), but at least three times per ttl, so a failed keepalive
    /// still leaves several retries before the fence deadline (ttl minus a
    /// fifth); never more often than every 250 ms. Renewing more often than
    /// needed is not free: the key's remaining lease at a crash is what a
    /// failover waits out, and each keepalive costs the agent and etcd CPU.
    fn keepalive_interval(&self) -> Duration {
        let dynamic = self.dynamic.read().unwrap_or_else(|p| p.into_inner());
        keepalive_interval(&dynamic)
    }

    pub fn set_dynamic(&self, dynamic: DynamicConfig) {
        self.fence_deadline_ms
            .store(dynamic.fence_deadline_ms(), Ordering::SeqCst);
        *self.dynamic.write().unwrap_or_else(|p| p.into_inner()) = dynamic;
    }

    pub fn set_members(&self, members: BTreeSet<String>) {
        *self.members.write().unwrap_or_else(|p| p.into_inner()) = members;
    }

    pub fn is_known_member(&self, name: &str) -> bool {
        self.members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(name)
    }

    pub fn status(&self) -> Option<NodeStatus> {
        self.status
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Publishes the state the REST API serves, after every cycle.
    pub fn publish(
        &self,
        config: &AgentConfig,
        view: &DcsView,
        local: &LocalPgState,
        reason: &str,
        task: Option<TaskKind>,
        dynamic: &DynamicConfig,
    ) {
        let holds_lock = match view {
            DcsView::Available(s) => s.leader_name() == Some(config.name.as_str()),
            DcsView::Unreachable => false,
        } && self.renewal_is_fresh();
        // Any running primary is subject to the fence, whether or not this cycle
        // saw our key: only a fresh confirmed renewal lets it keep running.
        self.set_acting_primary(local.is_running_primary());
        let last_seen = self.dcs_last_seen.load(Ordering::SeqCst);
        let status = crate::rest::node_status(
            config,
            view,
            local,
            reason,
            task,
            dynamic,
            holds_lock,
            (last_seen > 0).then_some(last_seen),
        );
        let mut status = status;
        status.scheduled_restart = self.mailbox.scheduled_restart().map(|s| s.document);
        status.failsafe_mode_is_active = self.failsafe_leader().is_some()
            || (self.failsafe_is_fresh() && self.dcs_failing.load(Ordering::SeqCst));
        let now = self.clock.now_ms();
        let valid_for = self
            .last_renewal_ms()
            .map(|at| (at + self.fence_deadline_ms.load(Ordering::SeqCst)).saturating_sub(now));
        status.lease_valid_until_ms = valid_for.map(|ms| {
            chrono::Utc::now().timestamp_millis() + i64::try_from(ms).unwrap_or(i64::MAX / 2)
        });
        let cycle = self.last_cycle_duration_ms.load(Ordering::SeqCst);
        status.cycle_duration_ms = (cycle != NEVER).then_some(cycle);
        *self.status.write().unwrap_or_else(|p| p.into_inner()) = Some(status);
    }

    /// Records how long the HA cycle that just ended took.
    pub fn cycle_took(&self, ms: u64) {
        self.last_cycle_duration_ms.store(ms, Ordering::SeqCst);
    }
}

/// Stops accepting writes as fast as possible: SIGQUIT to the postmaster is
/// PostgreSQL's immediate shutdown (every backend exits at once), sent directly
/// rather than through a pg_ctl process; pg_ctl then confirms the stop.
async fn fence_postgres(pg: &Postgres) {
    // Nothing runs (a watchdog or a crash stopped it): leave the data
    // directory alone, it may already be in use by pg_rewind's own postgres.
    if !pg.postmaster_alive() {
        return;
    }
    if let Some(pid) = pg.postmaster_pid() {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGQUIT,
            );
        }
    }
    if let Err(err) = pg.stop(StopMode::Immediate, Duration::from_secs(10)).await {
        error!("fencing stop failed: {err}");
    }
}

fn keepalive_interval(dynamic: &DynamicConfig) -> Duration {
    let third_of_ttl = dynamic.ttl.saturating_mul(1000) / 3;
    Duration::from_millis(
        third_of_ttl
            .min(u64::try_from(dynamic.loop_wait.as_millis()).unwrap_or(u64::MAX))
            .max(250),
    )
}

/// Renews the lease every `interval`, independent of how long a cycle takes.
///
/// A keepalive that etcd answers with "lease not found" means the lease (and a
/// leader key on it) is gone: a primary is fenced right here, before the loop
/// can grant a new lease whose fresh renewal would hide the loss from the
/// fence timer.
pub fn spawn_lease_keeper(
    shared: Arc<Shared>,
    dcs: Arc<dyn Dcs>,
    pg: Postgres,
    request_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut failed = false;
        loop {
            // After a failed keepalive try again soon (the client moves to the
            // next etcd endpoint): an etcd leader change must not eat a
            // whole interval of the fence deadline.
            let interval = if failed {
                RETRY_AFTER_FAILED_KEEPALIVE.min(shared.keepalive_interval())
            } else {
                shared.keepalive_interval()
            };
            tokio::select! {
                _ = stop.changed() => return,
                () = tokio::time::sleep(interval) => {}
            }
            let Some(lease) = shared.lease() else {
                continue;
            };
            let sent = shared.clock.now_ms();
            let answer = tokio::time::timeout(request_timeout, dcs.keep_alive(lease)).await;
            failed = !matches!(answer, Ok(Ok(_)));
            shared.dcs_failing.store(failed, Ordering::SeqCst);
            match answer {
                Ok(Ok(true)) => shared.renewed_at(sent),
                Ok(Ok(false)) => {
                    if shared.failsafe_is_fresh() {
                        // Every member accepted this primary moments ago and stays out
                        // of races for ttl: re-acquire the key instead of fencing.
                        tracing::warn!(
                            "my etcd lease {lease:x} is gone; failsafe mode keeps the primary \
                             while a new lease and the leader key are acquired"
                        );
                    } else if shared.take_acting_primary() {
                        error!("fencing: my etcd lease {lease:x} is gone; stopping PostgreSQL");
                        fence_postgres(&pg).await;
                    } else {
                        tracing::warn!(
                            "my etcd lease {lease:x} is gone; a new one will be requested"
                        );
                    }
                    shared.lease_lost();
                    shared.wake.notify_one();
                }
                Ok(Err(err)) => tracing::debug!("lease keepalive failed: {err}"),
                Err(_) => tracing::debug!("lease keepalive timed out"),
            }
        }
    });
}

/// Stops a primary whose lease renewal is older than the fence deadline.
///
/// It sleeps until that deadline rather than polling: a renewal moves the
/// deadline, and the timer finds the new one when it wakes (at the latest
/// after [`FENCE_RECHECK`], so a changed deadline setting is seen too).
pub fn spawn_fence_timer(shared: Arc<Shared>, pg: Postgres, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        loop {
            if !shared.acting_primary.load(Ordering::SeqCst) {
                // A replica has nothing to fence: sleep instead of ticking.
                tokio::select! {
                    _ = stop.changed() => return,
                    () = shared.until_acting_primary() => {}
                }
                continue;
            }
            // Pause does not switch fencing off (as in the engine): the pause
            // flag this node knows may already have been lifted in the store,
            // and then replicas race for the expired key.
            if let Some(left) = validity_left(&shared) {
                tokio::select! {
                    _ = stop.changed() => return,
                    () = tokio::time::sleep(left.min(FENCE_RECHECK)) => {}
                }
                continue;
            }
            let age = shared
                .last_renewal_ms()
                .map(|at| shared.clock.now_ms().saturating_sub(at));
            error!(
                "fencing: my leader lease was last confirmed {} ago, past the fence deadline; \
                 stopping PostgreSQL so that it cannot accept writes another primary will not have",
                age.map_or("never".to_string(), |ms| format!("{ms} ms"))
            );
            shared.set_acting_primary(false);
            fence_postgres(&pg).await;
            shared.wake.notify_one();
        }
    });
}

/// The longest the fence timer sleeps before looking at the deadline again.
const FENCE_RECHECK: Duration = Duration::from_millis(500);

/// Wakes the loop as soon as the postmaster disappears.
pub fn spawn_postmaster_watch(shared: Arc<Shared>, pg: Postgres, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut was_alive = false;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tick.tick() => {}
            }
            let alive = pg.postmaster_alive();
            if was_alive && !alive {
                shared.wake.notify_one();
            }
            was_alive = alive;
        }
    });
}

/// Disarming waits (up to 2 s) for the guard to exit: never on the agent's
/// only runtime thread, where the keeper and the fence timer run.
fn disarm_off_thread(guard: pgwarden_watchdog::WatchdogHandle) {
    tokio::task::spawn_blocking(move || guard.disarm());
}

/// What a primary sends to every member in a failsafe round.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FailsafeClaim {
    pub name: String,
    pub conn_url: String,
    pub api_url: String,
    pub slots: BTreeMap<String, u64>,
}

/// Failsafe mode, primary side: while etcd does not answer the keeper, ask
/// every member listed in `/failsafe` to accept this node as the leader
/// (`POST /failsafe`), every keepalive interval. A round that every member
/// accepts is recorded with its send time; the fence timer and the engine
/// treat it like a lease renewal.
pub fn spawn_failsafe_rounds(
    shared: Arc<Shared>,
    me: String,
    claim: FailsafeClaim,
    auth: Option<(String, String)>,
    request_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let client = match pgwarden_api::http_client_builder()
            .timeout(request_timeout)
            .build()
        {
            Ok(client) => client,
            Err(err) => {
                error!("failsafe mode cannot build an HTTP client: {err}");
                return;
            }
        };
        loop {
            let interval = shared.keepalive_interval();
            tokio::select! {
                _ = stop.changed() => return,
                () = tokio::time::sleep(interval) => {}
            }
            let engaged = shared.failsafe_mode()
                && shared.dcs_failing.load(Ordering::SeqCst)
                && shared.acting_primary.load(Ordering::SeqCst)
                && shared.held_leader_key.load(Ordering::SeqCst);
            if !engaged {
                continue;
            }
            let targets: Vec<(String, String)> = shared
                .failsafe_targets
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|(name, _)| **name != me)
                .map(|(n, u)| (n.clone(), u.clone()))
                .collect();
            let sent = shared.clock.now_ms();
            let asks = targets.iter().map(|(name, url)| {
                let base = url.trim_end_matches('/');
                let base = base.strip_suffix("/patroni").unwrap_or(base);
                let mut request = client.post(format!("{base}/failsafe")).json(&claim);
                if let Some((user, password)) = &auth {
                    request = request.basic_auth(user, Some(password));
                }
                async move {
                    let accepted = matches!(request.send().await, Ok(r) if r.status().is_success());
                    (name.clone(), accepted)
                }
            });
            let answers = futures::future::join_all(asks).await;
            let refused: Vec<&str> = answers
                .iter()
                .filter(|(_, ok)| !ok)
                .map(|(n, _)| n.as_str())
                .collect();
            if refused.is_empty() {
                shared.failsafe_confirmed_ms.store(sent, Ordering::SeqCst);
                tracing::debug!("failsafe round accepted by {} members", answers.len());
            } else {
                tracing::warn!(
                    "failsafe round not accepted by {}; the primary will be fenced when its \
                     lease deadline passes",
                    refused.join(", ")
                );
            }
        }
    });
}

/// How long PostgreSQL may still run as primary from now: until the fence
/// deadline after the last confirmed renewal (or failsafe round).
fn validity_left(shared: &Shared) -> Option<Duration> {
    let deadline = shared.fence_deadline_ms.load(Ordering::SeqCst);
    let confirmed = [shared.last_renewal_ms(), shared.failsafe_confirmed_ms()]
        .into_iter()
        .flatten()
        .max()?;
    let left = (confirmed + deadline).checked_sub(shared.clock.now_ms())?;
    (left > 0).then(|| Duration::from_millis(left))
}

/// How often the guard hears how long the lease is still valid. What it is
/// told only moves when a renewal lands (about once a second), so feeding
/// faster would not make its deadline more exact; this only bounds how late
/// it learns of a renewal, far inside the fence deadline.
const WATCHDOG_FEED_INTERVAL: Duration = Duration::from_millis(250);

/// The software watchdog (crate `pgwarden-watchdog`): while this node runs a
/// primary on a valid lease, a separate guard process is told every 250 ms
/// until when the lease is certainly valid. If the agent freezes or dies,
/// the guard stops PostgreSQL when that time passes (or at once when the pipe
/// closes). Disarmed when the node stops being primary and when the agent
/// exits on purpose.
pub fn spawn_watchdog(
    shared: Arc<Shared>,
    program: std::path::PathBuf,
    data_dir: std::path::PathBuf,
    mut stop: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut guard: Option<pgwarden_watchdog::WatchdogHandle> = None;
        let mut tick = tokio::time::interval(WATCHDOG_FEED_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if guard.is_none() && !shared.acting_primary.load(Ordering::SeqCst) {
                // Nothing to feed or disarm until this node is primary.
                tokio::select! {
                    _ = stop.changed() => return,
                    () = shared.until_acting_primary() => {}
                }
            }
            tokio::select! {
                _ = stop.changed() => {
                    // The agent is exiting: disarm here, so the guard surely
                    // hears it before the process (and the pipe) goes away.
                    if let Some(g) = guard.take() {
                        g.disarm();
                    }
                    return;
                }
                _ = tick.tick() => {}
            }
            let primary = shared.acting_primary.load(Ordering::SeqCst);
            let left = validity_left(&shared);
            match (primary, left, guard.as_mut()) {
                (true, Some(left), None) => {
                    match pgwarden_watchdog::WatchdogHandle::spawn(
                        &program,
                        &["watchdog-guard"],
                        &data_dir,
                        left,
                    ) {
                        Ok(g) => {
                            tracing::info!(
                                "watchdog armed: PostgreSQL is stopped if the agent stops renewing its lease"
                            );
                            guard = Some(g);
                        }
                        Err(err) => error!("{err}; the primary runs without a watchdog"),
                    }
                }
                (true, Some(left), Some(g)) => {
                    if let Err(err) = g.feed(left) {
                        error!("{err}; re-arming");
                        // Dropping waits (boundedly) for the old guard to exit.
                        if let Some(old) = guard.take() {
                            tokio::task::spawn_blocking(move || drop(old));
                        }
                    }
                }
                // Not primary any more: stop guarding cleanly.
                (false, _, Some(_)) => {
                    if let Some(g) = guard.take() {
                        disarm_off_thread(g);
                        tracing::info!("watchdog disarmed");
                    }
                }
                _ => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timings(ttl: u64, loop_wait_ms: u64) -> DynamicConfig {
        DynamicConfig {
            ttl,
            loop_wait: Duration::from_millis(loop_wait_ms),
            ..DynamicConfig::default()
        }
    }

    #[test]
    fn keepalive_runs_once_per_loop_wait_and_thrice_per_ttl() {
        // Defaults (4/1/1) and the test profile (10/1/3): once per loop_wait.
        assert_eq!(
            keepalive_interval(&timings(4, 1000)),
            Duration::from_secs(1)
        );
        assert_eq!(
            keepalive_interval(&timings(10, 1000)),
            Duration::from_secs(1)
        );
        // Patroni's defaults (30/10/10): a third of ttl beats loop_wait.
        assert_eq!(
            keepalive_interval(&timings(30, 10_000)),
            Duration::from_secs(10)
        );
        assert_eq!(
            keepalive_interval(&timings(12, 10_000)),
            Duration::from_secs(4)
        );
        // 3/1/1: every second leaves retries before the 2.4 s fence.
        let three = timings(3, 1000);
        let interval = keepalive_interval(&three);
        assert_eq!(interval, Duration::from_secs(1));
        assert!(interval.as_millis() * 2 < u128::from(three.fence_deadline_ms()));
        // Fast profile 2/0.5/0.75: every 500 ms, two renewals before the 1.5 s fence.
        let fast = timings(2, 500);
        let interval = keepalive_interval(&fast);
        assert_eq!(interval, Duration::from_millis(500));
        assert_eq!(fast.fence_deadline_ms(), 1500);
        assert!(interval.as_millis() * 2 < u128::from(fast.fence_deadline_ms()));
        // Never below 250 ms.
        assert_eq!(
            keepalive_interval(&timings(0, 0)),
            Duration::from_millis(250)
        );
    }
}
