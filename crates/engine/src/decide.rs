//! The decision function: one pass over the observation in a fixed order.
//!
//! Order (first match wins), mirroring Patroni's `_run_cycle` with pgwarden's
//! stronger fencing put in front:
//! 1. fencing of a (possible) primary that cannot trust its lease (`fencing`);
//! 2. store unreachable: replicas keep running, a primary with a fresh renewal
//!    of the lease holding its key keeps running, nothing else;
//! 3. a long action is running: only lease renewal or loss-of-lock demotion;
//! 4. shutdown requested;
//! 5. data directory empty/invalid (`bootstrap`), system identifier checks;
//! 6. PostgreSQL not running (`recover`) or not answering yet;
//! 7. no leader key (`race`), leader key is mine (`leader`), someone else's (`follower`).
//!
//! Invariants: every `Promote`/`StartPrimary` is preceded in the same list by
//! `AcquireLeader` or `RenewLeader`; a fencing decision never contains
//! `RenewLeader`/`AcquireLeader`. This module must not read clocks or do I/O.

use pgwarden_types::{
    ClusterSnapshot, DataDirState, DynamicConfig, LocalPgState, Lsn, Member, PgClusterState,
    PgState, Role, SyncState, SynchronousMode,
};

use crate::observation::{
    Action, DcsView, Decision, Memory, Observation, OperatorRequest, TaskKind,
};
use crate::{bootstrap, fencing, follower, leader, race, recover};

/// The actions and reason of one cycle before memory bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub actions: Vec<Action>,
    pub reason: String,
    pub reply: Option<Result<String, String>>,
}

impl Outcome {
    pub(crate) fn new(actions: Vec<Action>, reason: impl Into<String>) -> Outcome {
        Outcome {
            actions,
            reason: reason.into(),
            reply: None,
        }
    }

    pub(crate) fn reply(mut self, reply: Result<String, String>) -> Outcome {
        self.reply = Some(reply);
        self
    }

    pub(crate) fn none(reason: impl Into<String>) -> Outcome {
        Outcome::new(Vec::new(), reason)
    }
}

/// Everything a branch needs: the observation, the snapshot, the effective
/// dynamic configuration and the working copy of the memory.
pub(crate) struct Ctx<'a> {
    pub obs: &'a Observation,
    pub snap: &'a ClusterSnapshot,
    pub cfg: DynamicConfig,
    pub mem: Memory,
}

impl<'a> Ctx<'a> {
    pub(crate) fn me(&self) -> &'a str {
        &self.obs.me.name
    }

    pub(crate) fn local(&self) -> &'a LocalPgState {
        &self.obs.local
    }

    pub(crate) fn now(&self) -> u64 {
        self.obs.now_ms
    }

    pub(crate) fn leader(&self) -> Option<&'a str> {
        self.snap.leader_name()
    }

    pub(crate) fn i_am_leader(&self) -> bool {
        self.leader() == Some(self.me())
    }

    /// The `/sync` state when synchronous replication is active: configured on
    /// and the key records a leader (Patroni ignores a stale key when the mode is off).
    pub(crate) fn active_sync(&self) -> Option<&'a SyncState> {
        if self.cfg.synchronous_mode == SynchronousMode::Off {
            return None;
        }
        self.snap
            .sync
            .as_ref()
            .map(|s| &s.value)
            .filter(|s| s.leader.is_some())
    }

    /// Where a replica of this node should stream from (Patroni's upstream
    /// selection): nothing with `nostream`, the `replicatefrom` member when it
    /// exists, else the leader.
    pub(crate) fn upstream(&self, leader: &str) -> Option<String> {
        let tags = &self.obs.me.tags;
        if tags.nostream {
            return None;
        }
        if let Some(from) = &tags.replicatefrom {
            if from != self.me() && self.snap.member(from).is_some() {
                return Some(from.clone());
            }
        }
        Some(leader.to_string())
    }

    /// Whether a member (not me) could take over right now, judged from its
    /// member key and, when polled, its `/patroni` report. Used by the leader
    /// for switchover and by `primary_start_timeout` handling.
    pub(crate) fn member_can_take_over(
        &self,
        member: &Member,
        reference: Option<Lsn>,
        switchover: bool,
    ) -> Result<(), String> {
        let name = member.name.as_str();
        if name == self.me() {
            return Err("it is me".into());
        }
        if !member.data.tags.can_be_promoted() {
            return Err("it is tagged nofailover".into());
        }
        if member.data.state != PgState::Running {
            return Err(format!("its state is {}", member.data.state.as_str()));
        }
        if member.data.role == Role::Primary {
            return Err("it runs as a primary".into());
        }
        if let Some(peer) = self.obs.peers.iter().find(|p| p.name == name) {
            if !peer.reachable {
                return Err("it did not answer".into());
            }
            if peer.watchdog_failed {
                return Err("its watchdog failed".into());
            }
        }
        if switchover {
            if let Some(sync) = self.active_sync() {
                if !sync.lists(name) {
                    return Err("it is not a synchronous standby".into());
                }
            }
        }
        let wal = member_wal(member).or_else(|| {
            self.obs
                .peers
                .iter()
                .find(|p| p.name == name)
                .and_then(|p| p.wal_position)
        });
        let Some(wal) = wal else {
            return Err("its WAL position is unknown".into());
        };
        if let Some(reference) = reference {
            let lag = wal.lag_behind(reference);
            if lag > self.cfg.maximum_lag_on_failover {
                return Err(format!(
                    "it lags {lag} bytes, more than maximum_lag_on_failover {}",
                    self.cfg.maximum_lag_on_failover
                ));
            }
        }
        if self.cfg.check_timeline {
            let mine = self.local().timeline.unwrap_or(self.snap.timeline());
            if member.data.timeline.is_none_or(|t| t < mine) {
                return Err("its timeline is behind".into());
            }
        }
        Ok(())
    }

    /// The first member (by name) that could take over from this node, if any.
    pub(crate) fn failover_candidate(&self) -> Option<&'a str> {
        let reference = self.local().write_lsn.or(self.snap.status.optime.map(Lsn));
        self.snap
            .members
            .iter()
            .find(|m| self.member_can_take_over(m, reference, false).is_ok())
            .map(|m| m.name.as_str())
    }

    /// The leader runs and has checkpointed since its promotion, so pg_rewind
    /// reads its new timeline from its control file.
    pub(crate) fn leader_ready_as_rewind_source(&self, leader: &str) -> bool {
        self.snap.member(leader).is_some_and(|m| {
            m.data.state == PgState::Running && m.data.checkpoint_after_promote != Some(false)
        })
    }

    /// Patroni's "last role was primary" for a stopped server.
    pub(crate) fn former_primary(&self) -> bool {
        self.mem.was_primary
    }
}

/// WAL position a member key publishes (furthest of the positions it lists).
pub(crate) fn member_wal(member: &Member) -> Option<Lsn> {
    [
        member.data.xlog_location,
        member.data.receive_lsn,
        member.data.replay_lsn,
    ]
    .into_iter()
    .flatten()
    .max()
    .map(Lsn)
}

/// `standby.signal` present in the data directory.
pub(crate) fn standby_signal(local: &LocalPgState) -> bool {
    matches!(
        local.data_dir,
        DataDirState::Initialized {
            standby_signal: true,
            ..
        }
    )
}

/// pg_controldata says the data directory last ran as a primary: not shut
/// down in recovery, not in archive recovery, and no `standby.signal`.
fn datadir_says_primary(local: &LocalPgState) -> bool {
    match &local.data_dir {
        DataDirState::Initialized {
            cluster_state,
            standby_signal,
            ..
        } => {
            !standby_signal
                && matches!(
                    cluster_state,
                    PgClusterState::InProduction
                        | PgClusterState::InCrashRecovery
                        | PgClusterState::ShuttingDown
                        | PgClusterState::ShutDown
                )
        }
        _ => false,
    }
}

/// Patroni-style name of a long action for "running <task>".
pub(crate) fn task_name(kind: TaskKind) -> &'static str {
    match kind {
        TaskKind::Initdb => "bootstrap",
        TaskKind::Clone => "replica creation",
        TaskKind::Rewind => "pg_rewind",
        TaskKind::Start => "start",
        TaskKind::Stop => "stop",
        TaskKind::Promote => "promote",
        TaskKind::Restart => "restart",
    }
}

/// Decides what this node does in this cycle.
pub fn decide(obs: &Observation, memory: &Memory) -> Decision {
    let mut mem = memory.clone();
    // A fresh process has no memory of its role: read it from pg_controldata
    // (Patroni's "last role primary" check), so that an agent restart next to
    // a running or cleanly stopped primary still knows it was one.
    if memory.last_cycle_ms.is_none() && datadir_says_primary(&obs.local) {
        mem.was_primary = true;
    }
    absorb_finished_task(obs, &mut mem);
    // After the task bookkeeping: a primary seen running is a primary to
    // remember, also in the cycle in which the bootstrap that made it ended.
    if obs.local.is_running_primary() {
        mem.was_primary = true;
    }

    let (outcome, paused) = match &obs.dcs {
        DcsView::Unreachable => {
            // The lease was granted with the ttl last seen in the store.
            let deadline = memory
                .fence_deadline_ms
                .unwrap_or_else(|| obs.me.bootstrap_config.fence_deadline_ms());
            let fence = fencing::check(obs, memory, &mem, deadline);
            // A shutdown stops PostgreSQL unless fencing already does.
            let fence = match fence {
                Some(out) if !out.actions.is_empty() => Some(out),
                _ if obs.shutdown_requested && obs.running_task.is_none() => {
                    Some(shutdown_without_store(obs, &mem))
                }
                other => other,
            };
            let out = fence.unwrap_or_else(|| {
                Outcome::none(match obs.running_task {
                    Some(kind) => format!(
                        "DCS is not accessible; running {} (nothing else to do)",
                        task_name(kind)
                    ),
                    None => "DCS is not accessible".to_string(),
                })
            });
            (out, false)
        }
        DcsView::Available(snap) => {
            let cfg = if snap.config.is_some() {
                snap.dynamic_config()
            } else {
                obs.me.bootstrap_config.clone()
            };
            let paused = cfg.pause;
            mem.paused = paused;
            if let Some(name) = snap.leader_name() {
                if mem.last_leader.as_deref() != Some(name) {
                    // A new leader is a new rewind source: try again.
                    mem.rewind_failed = false;
                    mem.diverged_replica_since_ms = None;
                    mem.last_leader = Some(name.to_string());
                }
            }
            mem.fence_deadline_ms = Some(cfg.fence_deadline_ms());
            let out = match fencing::check(obs, memory, &mem, cfg.fence_deadline_ms()) {
                Some(out) => out,
                None => {
                    let mut ctx = Ctx {
                        obs,
                        snap,
                        cfg,
                        mem,
                    };
                    let out = decide_available(&mut ctx);
                    mem = ctx.mem;
                    out
                }
            };
            (out, paused)
        }
    };

    let mut reason = outcome.reason;
    if paused && !reason.starts_with("PAUSE: ") {
        reason = format!("PAUSE: {reason}");
    }
    finish_memory(obs, &mut mem, &outcome.actions);
    mem.last_reason = reason.clone();
    // A request the chosen branch did not answer (fencing, store unreachable,
    // a running task) is refused with the reason of this cycle.
    let operator_reply = match (&obs.operator_request, outcome.reply) {
        (None, _) => None,
        (Some(_), Some(reply)) => Some(reply),
        (Some(OperatorRequest::Restart), None) if started_restart(&outcome.actions) => None,
        (Some(_), None) => Some(Err(format!("not now: {reason}"))),
    };
    Decision {
        actions: outcome.actions,
        reason,
        operator_reply,
        memory: mem,
    }
}

fn started_restart(actions: &[Action]) -> bool {
    actions.iter().any(|a| {
        matches!(
            a,
            Action::RestartAsPrimary | Action::RestartAsReplica { .. }
        )
    })
}

/// Learns from the long action that just ended.
fn absorb_finished_task(obs: &Observation, mem: &mut Memory) {
    let Some(done) = &obs.finished_task else {
        return;
    };
    match (done.kind, done.success) {
        (TaskKind::Rewind, false) => mem.rewind_failed = true,
        // The data directory now follows the leader's history: it is no
        // longer a former primary and may start as a replica.
        (TaskKind::Rewind, true) => {
            mem.rewind_failed = false;
            mem.was_primary = false;
        }
        // A bootstrap leaves a primary behind: if it crashes at once, it is
        // restarted as a primary, not promoted from a replica (no new timeline).
        (TaskKind::Initdb, true) => {
            mem.was_primary = true;
            mem.rewind_failed = false;
        }
        // Fresh data directories carry no primary past.
        (TaskKind::Clone | TaskKind::Initdb, _) => {
            mem.clone_from_leader = false;
            mem.was_primary = false;
            mem.rewind_failed = false;
        }
        _ => {}
    }
}

/// Memory bookkeeping that depends on the chosen actions.
fn finish_memory(obs: &Observation, mem: &mut Memory, actions: &[Action]) {
    mem.last_cycle_ms = Some(obs.now_ms);
    if let DcsView::Available(snap) = &obs.dcs {
        let keep_ms = snap.dynamic_config().member_slots_ttl.saturating_mul(1000);
        for m in &snap.members {
            mem.members_seen_ms.insert(m.name.clone(), obs.now_ms);
        }
        mem.members_seen_ms
            .retain(|_, seen| obs.now_ms.saturating_sub(*seen) < keep_ms);
    }
    let promoting = actions
        .iter()
        .any(|a| matches!(a, Action::Promote | Action::StartPrimary))
        || obs.running_task == Some(TaskKind::Promote);
    if promoting {
        mem.was_primary = true;
    } else if obs.local.postmaster_pid.is_some()
        && obs.local.accepting_connections
        && obs.local.in_recovery == Some(true)
    {
        mem.was_primary = false;
    }
    let gives_up = actions
        .iter()
        .any(|a| matches!(a, Action::ReleaseLeader | Action::Demote { .. }));
    match &obs.dcs {
        DcsView::Available(snap) => {
            mem.held_leader_key = snap.leader_name() == Some(obs.me.name.as_str()) && !gives_up;
        }
        DcsView::Unreachable => mem.held_leader_key &= !gives_up,
    }
    if actions.contains(&Action::WipeDataDir) || obs.local.data_dir == DataDirState::Empty {
        mem.was_primary = false;
        mem.rewind_failed = false;
    }
    if actions.contains(&Action::Demote {
        mode: crate::DemoteMode::Graceful,
    }) {
        mem.switchover_demoted_ms = Some(obs.now_ms);
    } else if let DcsView::Available(snap) = &obs.dcs {
        if snap.leader.is_some() {
            mem.switchover_demoted_ms = None;
        }
    }
    if actions.contains(&Action::StartPrimary) {
        if mem.primary_start_began_ms.is_none() {
            mem.primary_start_began_ms = Some(obs.now_ms);
        }
    } else if obs.local.is_running_primary()
        || actions
            .iter()
            .any(|a| matches!(a, Action::ReleaseLeader | Action::Demote { .. }))
    {
        mem.primary_start_began_ms = None;
    } else if let DcsView::Available(snap) = &obs.dcs {
        if snap.leader_name() != Some(obs.me.name.as_str()) {
            mem.primary_start_began_ms = None;
        }
    }
}

fn decide_available(ctx: &mut Ctx<'_>) -> Outcome {
    let obs = ctx.obs;
    if let Some(kind) = obs.running_task {
        return running_task(ctx, kind);
    }
    if obs.shutdown_requested {
        return shutdown(ctx);
    }
    if let Some(request) = &obs.operator_request {
        return operator(ctx, request);
    }
    let mut prefix = match &obs.local.data_dir {
        DataDirState::Empty => return bootstrap::empty_datadir(ctx),
        DataDirState::Invalid { reason } => return bootstrap::invalid_datadir(ctx, reason),
        DataDirState::Initialized {
            system_identifier, ..
        } => match bootstrap::check_sysid(ctx, system_identifier) {
            Err(out) => return out,
            Ok(actions) => actions,
        },
    };
    let local = ctx.local();
    let mut out = if local.postmaster_pid.is_none() {
        recover::not_running(ctx)
    } else if !local.accepting_connections || local.in_recovery.is_none() {
        recover::not_answering(ctx)
    } else {
        match ctx.leader() {
            None => race::leader_race(ctx),
            Some(l) if l == ctx.me() => leader::holding_lock(ctx),
            Some(l) => follower::follow(ctx, l),
        }
    };
    if !prefix.is_empty() {
        prefix.append(&mut out.actions);
        out.actions = prefix;
    }
    out
}

/// A long action runs: keep the lease if leader, fence if the lock is lost,
/// never start another long action.
fn running_task(ctx: &mut Ctx<'_>, kind: TaskKind) -> Outcome {
    let name = task_name(kind);
    let me = ctx.me();
    if ctx.i_am_leader() {
        if kind == TaskKind::Start || kind == TaskKind::Restart {
            if let Some(out) = recover::start_timed_out(ctx) {
                return out;
            }
        }
        return Outcome::new(
            vec![Action::RenewLeader],
            format!("running {name}; I am ({me}) and keep the leader lock"),
        );
    }
    if kind != TaskKind::Initdb && fencing::primary_risk(ctx.obs, &ctx.mem) {
        let whose = ctx
            .leader()
            .map_or("nobody".to_string(), |l| format!("({l})"));
        return Outcome::new(
            vec![Action::Demote { mode: crate::DemoteMode::ImmediateNoLock }],
            format!(
                "demoting self because I do not have the lock (held by {whose}) while running {name}"
            ),
        );
    }
    Outcome::none(format!("running {name}"))
}

/// SIGTERM: stop PostgreSQL and hand leadership over (Patroni leaves
/// everything alone in pause).
fn shutdown(ctx: &mut Ctx<'_>) -> Outcome {
    if ctx.cfg.pause {
        return Outcome::none("shutting down: leaving postgres and the leader lock alone");
    }
    let running = ctx.local().postmaster_pid.is_some();
    match (running, ctx.i_am_leader()) {
        (true, true) => Outcome::new(
            vec![Action::Stop, Action::ReleaseLeader],
            "shutting down: stopping postgres and releasing the leader lock",
        ),
        (true, false) => Outcome::new(vec![Action::Stop], "shutting down: stopping postgres"),
        (false, true) => Outcome::new(
            vec![Action::ReleaseLeader],
            "shutting down: postgres is stopped; releasing the leader lock",
        ),
        (false, false) => Outcome::none("shutting down: postgres is stopped"),
    }
}

/// SIGTERM while the store cannot be reached: PostgreSQL is still stopped
/// (stopping never makes a second primary), but the leader key cannot be
/// released, so a key of mine expires with its lease.
fn shutdown_without_store(obs: &Observation, mem: &Memory) -> Outcome {
    if mem.paused {
        return Outcome::none(
            "shutting down: DCS is not accessible and the cluster was paused; leaving postgres alone",
        );
    }
    if obs.local.postmaster_pid.is_some() {
        return Outcome::new(
            vec![Action::Stop],
            "shutting down: stopping postgres; DCS is not accessible, so my leader key (if any) \
             expires with its lease",
        );
    }
    Outcome::none("shutting down: postgres is stopped; DCS is not accessible")
}

/// An operator's restart or reinitialize request (the store answered, no
/// task runs, no shutdown is under way).
fn operator(ctx: &mut Ctx<'_>, request: &OperatorRequest) -> Outcome {
    let me = ctx.me();
    let local = ctx.local();
    let running = local.postmaster_pid.is_some();
    match request {
        OperatorRequest::Restart => {
            if !running {
                return Outcome::none("restart requested but postgres is not running")
                    .reply(Err("postgres is not running".into()));
            }
            match (ctx.i_am_leader(), local.in_recovery) {
                (true, Some(false)) => Outcome::new(
                    vec![Action::RenewLeader, Action::RestartAsPrimary],
                    format!("restarting postgres: I am ({me}), the leader with the lock"),
                ),
                (false, Some(true)) => Outcome::new(
                    vec![Action::RestartAsReplica {
                        leader: ctx.leader().and_then(|l| ctx.upstream(l)),
                    }],
                    "restarting postgres as a replica",
                ),
                (true, _) => Outcome::none("restart requested while postgres is not a primary")
                    .reply(Err(
                        "postgres is not running as a primary; not restarting the leader".into(),
                    )),
                (false, _) => Outcome::none(
                    "restart requested while postgres runs as a primary without the lock",
                )
                .reply(Err(
                    "postgres runs as a primary without the leader lock; not restarting it".into(),
                )),
            }
        }
        OperatorRequest::Reinitialize { from_leader } => {
            if ctx.i_am_leader() {
                return Outcome::none("reinitialize refused: I am the leader")
                    .reply(Err("I am the leader, can not reinitialize".into()));
            }
            if ctx.leader().is_none() {
                return Outcome::none("reinitialize refused: the cluster has no leader")
                    .reply(Err("Cluster has no leader, can not reinitialize".into()));
            }
            ctx.mem.clone_from_leader = *from_leader;
            let mut actions = Vec::new();
            if running {
                actions.push(Action::Stop);
            }
            actions.push(Action::WipeDataDir);
            Outcome::new(
                actions,
                "reinitializing: removing the data directory to clone it again",
            )
            .reply(Ok("reinitialize started".into()))
        }
    }
}
