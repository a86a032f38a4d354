//! Inputs and outputs of the decision engine.

use pgwarden_types::{ClusterSnapshot, DynamicConfig, LocalPgState, Lsn, Role, Tags};

/// Who this node is (from its local configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeIdentity {
    pub name: String,
    pub tags: Tags,
    /// The local configuration has a `bootstrap` section (Patroni only races for
    /// `initialize` when it does).
    pub can_bootstrap: bool,
    /// Dynamic configuration from `bootstrap.dcs`, used before the `config` key exists.
    pub bootstrap_config: DynamicConfig,
}

/// What the consensus store looked like this cycle.
// One value per cycle, moved once: boxing the snapshot would only change the
// executor's constructor, not save anything measurable.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum DcsView {
    /// A fresh, linearizable snapshot read this cycle.
    Available(ClusterSnapshot),
    /// The store did not answer within `retry_timeout`.
    Unreachable,
}

/// What another member's `GET /patroni` said during a leader race.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerReport {
    pub name: String,
    /// `false` when the request failed or timed out; such members are ignored.
    pub reachable: bool,
    pub role: Option<Role>,
    /// WAL position: `xlog.location` of a primary, or max(received, replayed) of a replica.
    pub wal_position: Option<Lsn>,
    pub timeline: Option<u32>,
    pub tags: Tags,
    pub watchdog_failed: bool,
}

/// A long-running action executed by the agent outside the cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    Initdb,
    Clone,
    Rewind,
    Start,
    Stop,
    Promote,
    Restart,
}

/// The result of the last long action, reported once in the cycle after it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskOutcome {
    pub kind: TaskKind,
    pub success: bool,
    /// One-line error for failures, shown to the operator.
    pub message: String,
}

/// Everything the agent observed in one cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Monotonic milliseconds (an arbitrary origin, never wall-clock).
    pub now_ms: u64,
    pub me: NodeIdentity,
    pub dcs: DcsView,
    pub local: LocalPgState,
    /// Reports of other members, filled by the agent when the leader key is
    /// missing (the race) or a switchover/failover is being evaluated.
    pub peers: Vec<PeerReport>,
    /// Send time (monotonic ms) of the last lease renewal etcd confirmed.
    /// `None` when this process has never held a confirmed lease.
    pub last_lease_renewal_sent_ms: Option<u64>,
    /// Long action still running (the engine waits, or cancels/fences).
    pub running_task: Option<TaskKind>,
    /// Long action that finished since the previous cycle.
    pub finished_task: Option<TaskOutcome>,
    /// SIGTERM received: stop PostgreSQL cleanly and hand leadership over.
    pub shutdown_requested: bool,
    /// `failsafe_mode`, primary side: send time (monotonic ms) of the last
    /// round in which every member listed in `/failsafe` accepted this node as
    /// the leader (`POST /failsafe`). Each of them then stays out of leader
    /// races for ttl, so this confirmation is as good as a lease renewal.
    pub failsafe_confirmed_ms: Option<u64>,
    /// `failsafe_mode`, replica side: a leader that this node accepted through
    /// `POST /failsafe` less than ttl ago; it does not race meanwhile.
    pub failsafe_leader: Option<String>,
    /// An operator's request through the REST API, to be answered this cycle.
    pub operator_request: Option<OperatorRequest>,
    /// Wall-clock time (Unix milliseconds): only for comparing with times
    /// operators scheduled (`scheduled_at`), never for leases or fencing.
    pub wall_clock_ms: i64,
}

/// What an operator asked this node to do (`POST /restart`, `POST /reinitialize`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorRequest {
    /// Restart PostgreSQL in its current role.
    Restart,
    /// Throw the data directory away and clone it again (from the leader
    /// itself with `from_leader`, else as a new member would).
    Reinitialize { from_leader: bool },
}

/// How to stop a primary that must no longer accept writes (Patroni's demotion modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoteMode {
    /// Lost contact with the store: fast stop, keep the key (it will expire).
    Offline,
    /// Planned switchover: checkpoint, fast stop, release the key once a replica has all WAL.
    Graceful,
    /// Crash or start timeout: immediate stop and release the key.
    Immediate,
    /// Lost the lock: immediate stop, nothing to release.
    ImmediateNoLock,
}

/// One step for the executor. Leadership side effects carry the revision they were decided under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create `initialize` = "" if absent (create_revision == 0).
    RaceInitialize,
    /// Run initdb, write config files, start as primary, create roles; on success
    /// store the system identifier in `initialize`, seed `config`, take the leader key.
    Bootstrap,
    /// Take the leader key with our lease if absent (create_revision == 0).
    AcquireLeader,
    /// Refresh our lease and make sure the leader key still holds our name under it.
    RenewLeader,
    /// Delete the leader key if it still holds our name.
    ReleaseLeader,
    /// Publish `/failsafe` (member name → api_url; empty when the mode is off).
    WriteFailsafe {
        members: std::collections::BTreeMap<String, String>,
    },
    /// Write `{}` to `failover` if it is still at `mod_revision`.
    ClearFailover { mod_revision: i64 },
    /// Store our system identifier in `initialize` (adopting an existing cluster).
    WriteInitialize { system_identifier: String },
    /// Seed the `config` key from `bootstrap.dcs` (only when it is missing).
    SeedConfig,
    /// pg_basebackup from this member into the (empty) data directory.
    CloneFrom { member: String },
    /// Start PostgreSQL as a primary (no standby.signal) — only while holding the lock.
    StartPrimary,
    /// Start PostgreSQL as a replica following `leader` (None: no upstream yet).
    StartReplica { leader: Option<String> },
    /// Point a running replica at a new upstream (rewrite primary_conninfo, reload).
    Follow { leader: String },
    /// Promote the running replica (pg_ctl promote) — only while holding the lock.
    Promote,
    /// Stop accepting writes.
    Demote { mode: DemoteMode },
    /// Stop PostgreSQL (fast) without touching leadership.
    Stop,
    /// Operator restart of a primary leader: fast stop, start as primary
    /// (only while the lease is fresh).
    RestartAsPrimary,
    /// Operator restart of a replica: fast stop, start following `leader`.
    RestartAsReplica { leader: Option<String> },
    /// pg_rewind from `source` (the server must be stopped first).
    Rewind { source: String },
    /// Remove the data directory so that the next cycles clone again.
    WipeDataDir,
    /// Create missing physical slots for these members and drop slots of members that are gone.
    SyncSlots { members: Vec<String> },
    /// Record the current timeline in `history` (leader, after promotion).
    UpdateHistory,
    /// Publish `status` (optime, slots).
    WriteStatus,
    /// Write the `sync` key under the given precondition; a failed write stops
    /// the cycle's remaining actions (so no promotion follows a lost race).
    WriteSync(SyncWrite),
    /// Delete the `sync` key if it is still at `mod_revision` (mode turned off).
    DeleteSync { mod_revision: i64 },
    /// Set (`Some`) or drop (`None`: the user's own setting applies) pgwarden's
    /// `synchronous_standby_names`, and reload.
    SetSyncStandbyNames { value: Option<String> },
}

/// A conditional write of the `sync` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncWrite {
    pub state: pgwarden_types::SyncState,
    /// The key's revision when the decision was made; `None`: it must not exist.
    pub mod_revision: Option<i64>,
}

/// The leader's flush position once its latest `synchronous_standby_names`
/// took effect: a standby that flushed past it holds every acknowledged commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncBarrier {
    /// The setting this barrier belongs to.
    pub value: String,
    /// A previous cycle already saw PostgreSQL report the setting. The
    /// barrier is read one cycle later: the probe's own backend applies a
    /// reload at once, the WAL senders and the checkpointer (which decide
    /// whom commits wait for) a moment later.
    pub seen_in_effect: bool,
    /// `None` until the setting has been in effect for a whole cycle.
    pub lsn: Option<Lsn>,
}

/// State the engine carries from one cycle to the next (plain data, owned by the agent).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Memory {
    /// `now_ms` of the previous cycle (logged by the agent and shown in
    /// fencing reasons; a long gap alone does not fence).
    pub last_cycle_ms: Option<u64>,
    /// The last snapshot showed the leader key under my name and no decision
    /// since released it or demoted. Only then may a primary ride out an
    /// unreachable store on a fresh lease renewal: a key on my live lease
    /// cannot be anyone else's.
    pub held_leader_key: bool,
    /// Fence deadline of the dynamic configuration in the last snapshot (the
    /// ttl the lease was granted with); used while the store is unreachable.
    pub fence_deadline_ms: Option<u64>,
    /// When a crashed primary's restart began, for `primary_start_timeout`.
    pub primary_start_began_ms: Option<u64>,
    /// The leader we last followed, to detect leader changes.
    pub last_leader: Option<String>,
    /// Last rewind attempt failed; do not try again until the leader changes.
    pub rewind_failed: bool,
    /// Since when this running replica has looked stuck behind a timeline
    /// fork (replayed past the leader's switch point on an old timeline).
    pub diverged_replica_since_ms: Option<u64>,
    /// This node was primary when it last observed PostgreSQL (survives restarts of PG).
    pub was_primary: bool,
    /// Last reason logged, so the agent logs a decision once when it changes.
    pub last_reason: String,
    /// Synchronous replication: the barrier of the current setting.
    pub sync_barrier: Option<SyncBarrier>,
    /// When this node stopped its primary for a switchover; until a new
    /// leader shows up (at most ttl) it waits instead of starting read-only.
    pub switchover_demoted_ms: Option<u64>,
    /// The cluster was paused when the store was last read (a shutdown while
    /// the store is unreachable then leaves PostgreSQL alone, as in pause).
    pub paused: bool,
    /// When each member was last seen in the store (`member_slots_ttl`: the
    /// leader keeps the slot of a member that vanished for that long, so a
    /// member that comes back after a short outage streams without a re-clone).
    pub members_seen_ms: std::collections::BTreeMap<String, u64>,
    /// An operator asked to re-clone from the leader (not a `clonefrom` member).
    pub clone_from_leader: bool,
}

/// The engine's answer for one cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub actions: Vec<Action>,
    /// The immediate answer to `Observation::operator_request`: `Ok` with a
    /// message when it was accepted and needs no further wait, `Err` with the
    /// reason when it was refused. `None` for a restart that started (the
    /// agent answers when the restart task ends) or when nothing was asked.
    pub operator_reply: Option<Result<String, String>>,
    /// One sentence in Patroni's style, e.g. "no action: I am the leader with the lock".
    pub reason: String,
    pub memory: Memory,
}
