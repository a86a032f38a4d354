//! Simulation: three engines against the in-memory store (`MemoryDcs`, the
//! same store the etcd conformance suite checks), stepped by random schedules
//! (reliability-plan §6, property 6).
//!
//! Model. One global simulated clock (ms) that also drives the store's manual
//! clock. The store holds one lease per node (expiring `ttl` after the node's
//! last confirmed keepalive) and the cluster's keys; the engine's actions are
//! carried out through the store's own calls, as the agent's executor does:
//! `AcquireLeader` is `acquire_leader` (create_revision == 0), `RenewLeader`
//! is `update_leader` (never re-creates a vanished key), `ReleaseLeader` a
//! guarded delete, `sync`, `failover`, `history` and `status` their CAS or
//! plain writes. An unreachable store is message loss: the node's calls are
//! not made. Every member publishes its state each step. As in the agent, a keepalive task renews the lease
//! independently of the HA cycle: whenever a node runs (a step of that node,
//! also one that only executes a decision taken before a freeze) and reaches
//! the store, its lease is kept alive, and the observation reports the send
//! time of the last confirmed keepalive. A frozen node (one that does not
//! step) sends nothing, so its renewal ages. A keepalive on an expired lease
//! fails; the cycle then grants a new lease *after* reading the renewal, so
//! the engine judges the stale one (as the agent does).
//! PostgreSQL is a role (stopped / replica / primary), a WAL position and a
//! timeline. Each schedule step picks a node, advances the clock (sometimes
//! by a long freeze), decides whether that node reaches the store, and either
//! runs a whole cycle or decides now and executes later (a process frozen
//! between deciding and acting).
//!
//! Invariant checked after every step (acting sets only shrink between
//! steps, so this covers every instant): at most one node is *acting primary*,
//! i.e. its PostgreSQL is primary after its last executed action and its
//! fence deadline has not passed since it last confirmed leadership
//! (`now < send time of the last keepalive confirmed while the leader key was
//! on its lease + fence_deadline_ms`). A plain member keepalive does not
//! count: after a freeze the lease may be fresh while the key is someone
//! else's, and the engine then demotes in that same cycle. Also: a node promoted by a race is never lagging more
//! than `maximum_lag_on_failover` behind the optime it saw (unless a failover
//! request named it), in sync mode an unlisted node never holds the key, and
//! the engine never starts a long action while one runs.
//!
//! Synchronous mode is modelled too: the engine's `sync` key writes are
//! compare-and-swap on the key's revision, its `synchronous_standby_names`
//! takes effect at once, and a primary's commit is acknowledged only once
//! every standby the setting names (any one for `*`) has flushed it. Checked
//! at every promotion in synchronous mode: the promoted node holds every
//! commit acknowledged on its timeline.

use pgwarden_types::{
    ClusterSnapshot, ClusterStatus, DataDirState, DynamicConfig, FailoverRequest, HistoryLine,
    LocalPgState, Lsn, MemberData, PgClusterState, PgState, ReplicationRow, Role, SyncState, Tags,
    Versioned,
};
use std::time::Duration;

use futures::executor::block_on;
use pgwarden_dcs::{Dcs, LeaseId, MemoryDcs, Precondition};
use proptest::prelude::*;
use serde_json::json;

use crate::{
    decide, Action, DcsView, Decision, DemoteMode, Memory, NodeIdentity, Observation, PeerReport,
    TaskKind, TaskOutcome,
};

const NAMES: [&str; 3] = ["n1", "n2", "n3"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pg {
    Stopped,
    Replica,
    Primary,
}

#[derive(Debug, Clone)]
struct Node {
    mem: Memory,
    pg: Pg,
    lsn: u64,
    timeline: u32,
    following: Option<String>,
    cluster_state: PgClusterState,
    standby_signal: bool,
    empty: bool,
    keepalive_sent: Option<u64>,
    /// Send time of the last keepalive confirmed while the leader key was on
    /// this node's lease: the node's valid belief that it leads.
    leader_confirmed: Option<u64>,
    task: Option<(TaskKind, u8)>,
    finished: Option<TaskOutcome>,
    /// Decided but not yet executed (frozen between decide and act).
    pending: Option<(Decision, Observation)>,
    /// pgwarden's `synchronous_standby_names` on this node (in effect at once).
    sync_setting: Option<String>,
}

#[derive(Debug, Clone)]
struct Step {
    node: usize,
    dt: u64,
    reachable: bool,
    defer: bool,
    peers_reachable: [bool; 3],
    task_len: u8,
    wal_inc: u64,
    catchup: [u64; 3],
    failover_to: Option<usize>,
}

struct World {
    now: u64,
    cfg: DynamicConfig,
    nodes: Vec<Node>,
    store: MemoryDcs,
    /// Each node's current lease in the store.
    leases: [Option<LeaseId>; 3],
    promotions: usize,
    /// Highest acknowledged commit position per timeline: a commit on a
    /// primary is acknowledged once the standbys its synchronous setting
    /// names have flushed it (at once when the setting is empty).
    acked: std::collections::BTreeMap<u32, u64>,
}

fn idx(name: &str) -> usize {
    NAMES.iter().position(|n| *n == name).expect("known node")
}

impl World {
    fn new(sync: bool) -> World {
        let mut cfg_json = json!({
            "ttl": 10, "loop_wait": 2, "retry_timeout": 4,
            "maximum_lag_on_failover": 1000,
            "postgresql": {"use_pg_rewind": true},
        });
        if sync {
            cfg_json["synchronous_mode"] = json!(true);
        }
        let cfg = DynamicConfig::from_json(&cfg_json).expect("config");
        let node = Node {
            mem: Memory::default(),
            pg: Pg::Stopped,
            lsn: 1000,
            timeline: 1,
            following: None,
            cluster_state: PgClusterState::ShutDownInRecovery,
            standby_signal: true,
            empty: false,
            keepalive_sent: None,
            leader_confirmed: None,
            task: None,
            finished: None,
            pending: None,
            sync_setting: None,
        };
        // An initialized cluster: bootstrap is not what this simulates.
        let store = MemoryDcs::new("sim");
        block_on(store.set_initialize("7")).expect("initialize key");
        block_on(store.set_config(&cfg_json, Precondition::Unconditional)).expect("config key");
        World {
            now: 1_000_000,
            cfg,
            nodes: vec![node.clone(), node.clone(), node],
            store,
            leases: [None; 3],
            promotions: 0,
            acked: std::collections::BTreeMap::new(),
        }
    }

    /// The store as a node reads it (the store itself never fails here).
    fn read(&self) -> ClusterSnapshot {
        block_on(self.store.snapshot()).expect("memory store snapshot")
    }

    /// The node holding the leader key and the key's create revision.
    fn leader(&self) -> Option<(usize, i64)> {
        self.read()
            .leader
            .map(|l| (idx(&l.name), l.create_revision))
    }

    fn sync_key(&self) -> Option<Versioned<SyncState>> {
        self.read().sync
    }

    fn lease_alive(&self, i: usize) -> bool {
        self.leases[i]
            .and_then(|l| self.store.lease_remaining(l))
            .is_some_and(|left| !left.is_zero())
    }

    /// A confirmed keepalive of a live lease, or a freshly granted lease.
    fn keepalive(&mut self, i: usize) {
        let renewed = match self.leases[i] {
            Some(lease) if self.lease_alive(i) => {
                block_on(self.store.keep_alive(lease)).expect("keepalive")
            }
            _ => false,
        };
        if !renewed {
            let lease = block_on(self.store.grant_lease(self.cfg.ttl)).expect("lease grant");
            self.leases[i] = Some(lease);
        }
        self.nodes[i].keepalive_sent = Some(self.now);
        let held = self
            .read()
            .leader
            .is_some_and(|l| l.name == NAMES[i] && Some(l.lease) == self.leases[i]);
        if held {
            self.nodes[i].leader_confirmed = Some(self.now);
        }
    }

    /// Every member publishes what its PostgreSQL looks like (as each agent
    /// does after its cycle; static keys, so a frozen node's entry stays).
    fn publish_members(&self) {
        for (name, n) in NAMES.iter().zip(&self.nodes) {
            let data = MemberData {
                state: if n.pg == Pg::Stopped {
                    PgState::Stopped
                } else {
                    PgState::Running
                },
                role: if n.pg == Pg::Primary {
                    Role::Primary
                } else {
                    Role::Replica
                },
                xlog_location: Some(n.lsn),
                timeline: Some(n.timeline),
                ..MemberData::empty()
            };
            block_on(self.store.touch_member(name, &data, 0)).expect("member key");
        }
    }

    /// The keepalive task of a running node. Returns whether the lease has
    /// expired and a new one must be granted (after the renewal was read).
    fn keeper(&mut self, i: usize, reachable: bool) -> bool {
        if !reachable {
            return false;
        }
        if self.lease_alive(i) {
            self.keepalive(i);
            false
        } else {
            true
        }
    }

    fn local(&self, i: usize) -> LocalPgState {
        let n = &self.nodes[i];
        let data_dir = if n.empty {
            DataDirState::Empty
        } else {
            DataDirState::Initialized {
                system_identifier: "7".into(),
                cluster_state: n.cluster_state,
                checkpoint_timeline: n.timeline,
                standby_signal: n.standby_signal,
            }
        };
        let running = n.pg != Pg::Stopped;
        let replication = if n.pg == Pg::Primary {
            (0..3)
                .filter(|&j| {
                    self.nodes[j].pg == Pg::Replica
                        && self.nodes[j].following.as_deref() == Some(NAMES[i])
                })
                .map(|j| ReplicationRow {
                    usename: "replicator".into(),
                    application_name: NAMES[j].into(),
                    client_addr: None,
                    state: "streaming".into(),
                    sync_state: "async".into(),
                    sync_priority: 0,
                    write_lsn: Some(Lsn(self.nodes[j].lsn)),
                    flush_lsn: Some(Lsn(self.nodes[j].lsn)),
                    replay_lsn: Some(Lsn(self.nodes[j].lsn)),
                })
                .collect()
        } else {
            Vec::new()
        };
        LocalPgState {
            replication,
            managed_sync_standby_names: n.sync_setting.clone(),
            sync_standby_names: running.then(|| n.sync_setting.clone().unwrap_or_default()),
            data_dir,
            postmaster_pid: running.then_some(100 + i as u32),
            accepting_connections: running,
            in_recovery: running.then_some(n.pg == Pg::Replica),
            timeline: running.then_some(n.timeline),
            write_lsn: (n.pg == Pg::Primary).then_some(Lsn(n.lsn)),
            receive_lsn: (n.pg == Pg::Replica).then_some(Lsn(n.lsn)),
            replay_lsn: (n.pg == Pg::Replica).then_some(Lsn(n.lsn)),
            streaming: n.pg == Pg::Replica && n.following.is_some(),
            following: n.following.clone(),
            ..LocalPgState::empty()
        }
    }

    fn acting_primaries(&self) -> Vec<usize> {
        let deadline = self.cfg.fence_deadline_ms();
        (0..3)
            .filter(|&j| {
                let n = &self.nodes[j];
                n.pg == Pg::Primary && n.leader_confirmed.is_some_and(|t| self.now < t + deadline)
            })
            .collect()
    }

    fn step(&mut self, s: &Step) -> Result<(), String> {
        self.now += s.dt;
        self.store.advance(Duration::from_millis(s.dt));
        let i = s.node;
        if let Some(j) = s.failover_to {
            if let Some((h, _)) = self.leader() {
                if j != h {
                    let request = FailoverRequest {
                        leader: Some(NAMES[h].into()),
                        member: Some(NAMES[j].into()),
                        scheduled_at: None,
                    };
                    block_on(
                        self.store
                            .set_failover(&request, Precondition::Unconditional),
                    )
                    .expect("failover key");
                }
            }
        }
        // The node runs in this step: its keepalive task runs too.
        let regrant = self.keeper(i, s.reachable);
        // A decision taken before a freeze is executed now, against today's store.
        if let Some((d, obs)) = self.nodes[i].pending.take() {
            self.execute(i, &d, &obs, s)?;
        } else {
            // Task bookkeeping: a long action ends after `task_len` cycles.
            let node = &mut self.nodes[i];
            if let Some((kind, left)) = node.task {
                node.task = if left == 0 {
                    node.finished = Some(TaskOutcome {
                        kind,
                        success: true,
                        message: String::new(),
                    });
                    None
                } else {
                    Some((kind, left - 1))
                };
            }
            let obs = self.observe(i, s);
            if regrant {
                // The leader key died with the old lease: a new lease
                // confirms nothing about leadership.
                self.keepalive(i);
            }
            let d = decide(&obs, &self.nodes[i].mem);
            self.nodes[i].mem = d.memory.clone();
            self.nodes[i].finished = None;
            if s.defer {
                self.nodes[i].pending = Some((d, obs));
            } else {
                self.execute(i, &d, &obs, s)?;
                // A node that just ran a whole cycle is primary only with a
                // fresh leadership confirmation: the engine fenced otherwise.
                let n = &self.nodes[i];
                let deadline = self.cfg.fence_deadline_ms();
                if n.pg == Pg::Primary
                    && n.leader_confirmed.is_none_or(|t| self.now >= t + deadline)
                {
                    return Err(format!(
                        "{} ends a cycle as primary without a fresh lease: {}",
                        NAMES[i], d.reason
                    ));
                }
            }
        }
        self.replicate(s);
        let acting = self.acting_primaries();
        if acting.len() > 1 {
            return Err(format!("two acting primaries at {}: {acting:?}", self.now));
        }
        if let (Some(sync), Some((h, _))) = (&self.sync_key(), self.leader()) {
            if !sync.value.lists(NAMES[h]) {
                return Err(format!("unlisted {} holds the key in sync mode", NAMES[h]));
            }
        }
        Ok(())
    }

    fn observe(&self, i: usize, s: &Step) -> Observation {
        self.publish_members();
        let snapshot = self.read();
        let no_leader = snapshot.leader.is_none();
        let dcs = if s.reachable {
            DcsView::Available(snapshot)
        } else {
            DcsView::Unreachable
        };
        let peers = if s.reachable && no_leader {
            (0..3)
                .filter(|&j| j != i)
                .map(|j| {
                    let n = &self.nodes[j];
                    PeerReport {
                        name: NAMES[j].into(),
                        reachable: s.peers_reachable[j],
                        role: Some(if n.pg == Pg::Primary {
                            Role::Primary
                        } else {
                            Role::Replica
                        }),
                        wal_position: Some(Lsn(n.lsn)),
                        timeline: Some(n.timeline),
                        tags: Tags::default(),
                        watchdog_failed: false,
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        let n = &self.nodes[i];
        Observation {
            now_ms: self.now,
            me: NodeIdentity {
                name: NAMES[i].into(),
                tags: Tags::default(),
                can_bootstrap: true,
                bootstrap_config: self.cfg.clone(),
            },
            dcs,
            local: self.local(i),
            peers,
            last_lease_renewal_sent_ms: n.keepalive_sent,
            running_task: n.task.map(|(k, _)| k),
            finished_task: n.finished.clone(),
            shutdown_requested: false,
            failsafe_confirmed_ms: None,
            failsafe_leader: None,
            operator_request: None,
            wall_clock_ms: 0,
        }
    }

    fn execute(
        &mut self,
        i: usize,
        d: &Decision,
        obs: &Observation,
        s: &Step,
    ) -> Result<(), String> {
        let reachable = s.reachable;
        let mut raced = false;
        for action in &d.actions {
            let long = !matches!(
                action,
                Action::RenewLeader
                    | Action::AcquireLeader
                    | Action::ReleaseLeader
                    | Action::ClearFailover { .. }
                    | Action::WriteInitialize { .. }
                    | Action::SeedConfig
                    | Action::SyncSlots { .. }
                    | Action::UpdateHistory
                    | Action::WriteStatus
                    | Action::Follow { .. }
                    | Action::RaceInitialize
            );
            if long && obs.running_task.is_some() && !matches!(action, Action::Demote { .. }) {
                return Err(format!(
                    "{action:?} started while {:?} runs",
                    obs.running_task
                ));
            }
            match action {
                Action::AcquireLeader => {
                    let Some(lease) = self.leases[i].filter(|_| reachable && self.lease_alive(i))
                    else {
                        return Ok(());
                    };
                    // A failed compare (someone holds the key) skips the rest
                    // of the cycle, as in the agent.
                    if block_on(self.store.acquire_leader(NAMES[i], lease))
                        .map_err(|e| e.to_string())?
                        .is_none()
                    {
                        return Ok(());
                    }
                    self.keepalive(i);
                    raced = true;
                }
                Action::RenewLeader => {
                    let Some(lease) = self.leases[i].filter(|_| reachable) else {
                        return Ok(());
                    };
                    if !block_on(self.store.update_leader(NAMES[i], lease))
                        .map_err(|e| e.to_string())?
                    {
                        return Ok(());
                    }
                    self.keepalive(i);
                }
                Action::ReleaseLeader if reachable => {
                    block_on(self.store.release_leader(NAMES[i])).map_err(|e| e.to_string())?;
                }
                Action::ClearFailover { mod_revision } if reachable => {
                    let cleared = FailoverRequest::default();
                    block_on(
                        self.store
                            .set_failover(&cleared, Precondition::ModRevision(*mod_revision)),
                    )
                    .map_err(|e| e.to_string())?;
                }
                Action::WriteStatus if reachable => {
                    let status = ClusterStatus {
                        optime: Some(self.nodes[i].lsn),
                        ..ClusterStatus::default()
                    };
                    block_on(self.store.set_status(&status)).map_err(|e| e.to_string())?;
                }
                Action::UpdateHistory if reachable => {
                    let tl = self.nodes[i].timeline;
                    let mut history = self.read().history;
                    if history.last().is_none_or(|h| h.timeline + 1 < tl) {
                        history.push(HistoryLine {
                            timeline: tl - 1,
                            switch_lsn: self.nodes[i].lsn,
                            reason: "no recovery target specified".into(),
                            timestamp: None,
                            new_leader: Some(NAMES[i].into()),
                        });
                        block_on(self.store.set_history(&history)).map_err(|e| e.to_string())?;
                    }
                }
                Action::Promote => {
                    if raced {
                        self.check_lag(i, obs)?;
                    }
                    if self.cfg.synchronous_mode != pgwarden_types::SynchronousMode::Off {
                        let n = &self.nodes[i];
                        let acked = self.acked.get(&n.timeline).copied().unwrap_or(0);
                        if n.lsn < acked {
                            return Err(format!(
                                "{} promoted at {} on timeline {} but commits up to {acked} were \
                                 acknowledged there",
                                NAMES[i], n.lsn, n.timeline
                            ));
                        }
                    }
                    let n = &mut self.nodes[i];
                    n.pg = Pg::Primary;
                    n.timeline += 1;
                    n.standby_signal = false;
                    n.cluster_state = PgClusterState::InProduction;
                    n.following = None;
                    n.task = Some((TaskKind::Promote, s.task_len));
                    self.promotions += 1;
                }
                Action::StartPrimary => {
                    let n = &mut self.nodes[i];
                    n.pg = if n.standby_signal {
                        Pg::Replica
                    } else {
                        Pg::Primary
                    };
                    n.cluster_state = PgClusterState::InProduction;
                    n.task = Some((TaskKind::Start, s.task_len));
                }
                Action::StartReplica { leader } => {
                    let n = &mut self.nodes[i];
                    n.pg = Pg::Replica;
                    n.standby_signal = true;
                    n.cluster_state = PgClusterState::InArchiveRecovery;
                    n.following = leader.clone();
                    n.task = Some((TaskKind::Start, s.task_len));
                }
                Action::Follow { leader } => self.nodes[i].following = Some(leader.clone()),
                Action::Demote { mode } => {
                    let release = matches!(mode, DemoteMode::Graceful | DemoteMode::Immediate);
                    let n = &mut self.nodes[i];
                    n.pg = Pg::Stopped;
                    n.cluster_state = match mode {
                        DemoteMode::Graceful | DemoteMode::Offline => PgClusterState::ShutDown,
                        _ => PgClusterState::InProduction,
                    };
                    n.task = Some((TaskKind::Stop, s.task_len));
                    if release && reachable {
                        block_on(self.store.release_leader(NAMES[i])).map_err(|e| e.to_string())?;
                    }
                }
                Action::Stop => {
                    let n = &mut self.nodes[i];
                    n.pg = Pg::Stopped;
                    n.task = Some((TaskKind::Stop, s.task_len));
                }
                Action::Rewind { source } => {
                    let src = self.nodes[idx(source)].clone();
                    let n = &mut self.nodes[i];
                    if n.pg != Pg::Stopped {
                        return Err("pg_rewind on a running server".into());
                    }
                    n.lsn = n.lsn.min(src.lsn);
                    n.timeline = src.timeline;
                    n.cluster_state = PgClusterState::InArchiveRecovery;
                    n.task = Some((TaskKind::Rewind, s.task_len));
                }
                Action::WipeDataDir => self.nodes[i].empty = true,
                Action::CloneFrom { member } => {
                    let src = self.nodes[idx(member)].clone();
                    let n = &mut self.nodes[i];
                    n.empty = false;
                    n.lsn = src.lsn;
                    n.timeline = src.timeline;
                    n.standby_signal = true;
                    n.cluster_state = PgClusterState::InArchiveRecovery;
                    n.task = Some((TaskKind::Clone, s.task_len));
                }
                Action::WriteSync(write) if reachable => {
                    let pre = match write.mod_revision {
                        Some(rev) => Precondition::ModRevision(rev),
                        None => Precondition::Absent,
                    };
                    if block_on(self.store.set_sync(&write.state, pre))
                        .map_err(|e| e.to_string())?
                        .is_none()
                    {
                        // CAS failed: the rest of the cycle is skipped, as in the agent.
                        return Ok(());
                    }
                }
                Action::WriteSync(_) => return Ok(()),
                Action::DeleteSync { mod_revision } if reachable => {
                    block_on(
                        self.store
                            .delete_sync(Precondition::ModRevision(*mod_revision)),
                    )
                    .map_err(|e| e.to_string())?;
                }
                Action::SetSyncStandbyNames { value } => {
                    self.nodes[i].sync_setting = value.clone();
                }
                Action::RaceInitialize | Action::Bootstrap => {
                    return Err("bootstrap attempted in an initialized cluster".into())
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A node promoted by a race was within `maximum_lag_on_failover` of the
    /// optime it saw, unless a failover request named it.
    fn check_lag(&self, i: usize, obs: &Observation) -> Result<(), String> {
        let DcsView::Available(snap) = &obs.dcs else {
            return Err("promoted without a snapshot".into());
        };
        let named = snap.failover_request().and_then(|r| r.member.as_deref()) == Some(NAMES[i]);
        if let (Some(optime), false) = (snap.status.optime, named) {
            let lag = optime.saturating_sub(self.nodes[i].lsn);
            if lag > self.cfg.maximum_lag_on_failover {
                return Err(format!("{} promoted lagging {lag} bytes", NAMES[i]));
            }
        }
        Ok(())
    }

    /// Primaries write; replicas that stream from a primary on their timeline catch up.
    fn replicate(&mut self, s: &Step) {
        for j in 0..3 {
            if self.nodes[j].pg == Pg::Primary {
                self.nodes[j].lsn += s.wal_inc;
            }
        }
        for j in 0..3 {
            let Some(up) = self.nodes[j].following.as_deref().map(idx) else {
                continue;
            };
            let src = &self.nodes[up];
            if self.nodes[j].pg == Pg::Replica
                && src.pg != Pg::Stopped
                && src.timeline >= self.nodes[j].timeline
                && src.lsn >= self.nodes[j].lsn
            {
                let target = src.lsn.min(self.nodes[j].lsn + s.catchup[j]);
                let tl = src.timeline;
                self.nodes[j].lsn = target;
                self.nodes[j].timeline = tl;
            }
        }
        for (p, primary_name) in NAMES.iter().enumerate() {
            if self.nodes[p].pg != Pg::Primary {
                continue;
            }
            let streams_here = |j: usize| {
                self.nodes[j].pg == Pg::Replica
                    && self.nodes[j].following.as_deref() == Some(*primary_name)
                    && self.nodes[j].timeline == self.nodes[p].timeline
            };
            let standbys: Vec<u64> = (0..3)
                .filter(|&j| streams_here(j))
                .map(|j| self.nodes[j].lsn)
                .collect();
            let flushed_by = |name: &str| {
                let j = idx(name);
                if streams_here(j) {
                    self.nodes[j].lsn
                } else {
                    0
                }
            };
            let acked = match self.nodes[p].sync_setting.as_deref() {
                None | Some("") => Some(self.nodes[p].lsn),
                Some("*") => standbys.iter().max().copied(),
                Some(list) => {
                    let names: Vec<&str> = list
                        .split_once('(')
                        .map_or(list, |(_, rest)| rest.trim_end_matches(')'))
                        .split(',')
                        .map(str::trim)
                        .collect();
                    names.iter().map(|n| flushed_by(n)).min()
                }
            };
            if let Some(acked) = acked {
                let acked = acked.min(self.nodes[p].lsn);
                let entry = self.acked.entry(self.nodes[p].timeline).or_insert(0);
                *entry = (*entry).max(acked);
            }
        }
    }
}

fn arb_step() -> impl Strategy<Value = Step> {
    (
        0..3usize,
        prop_oneof![9 => 0..3_000u64, 1 => 5_000..30_000u64],
        prop::bool::weighted(0.85),
        prop::bool::weighted(0.1),
        [
            prop::bool::weighted(0.8),
            prop::bool::weighted(0.8),
            prop::bool::weighted(0.8),
        ],
        0..3u8,
        0..600u64,
        // n3 is a slow replica that may fall more than the lag limit behind.
        [0..2_000u64, 0..2_000u64, 0..40u64],
        prop_oneof![30 => Just(None), 1 => (0..3usize).prop_map(Some)],
    )
        .prop_map(
            |(
                node,
                dt,
                reachable,
                defer,
                peers_reachable,
                task_len,
                wal_inc,
                catchup,
                failover_to,
            )| Step {
                node,
                dt,
                reachable,
                defer,
                peers_reachable,
                task_len,
                wal_inc,
                catchup,
                failover_to,
            },
        )
}

fn run(sync: bool, steps: &[Step]) -> Result<World, String> {
    let mut world = World::new(sync);
    for (k, s) in steps.iter().enumerate() {
        world
            .step(s)
            .map_err(|e| format!("step {k} ({s:?}): {e}"))?;
    }
    Ok(world)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn no_two_acting_primaries(sync in any::<bool>(), steps in prop::collection::vec(arb_step(), 1..250)) {
        if let Err(e) = run(sync, &steps) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// Non-vacuity of the random simulation: over many schedules leaders are
/// elected and failovers (more than one promotion in a run) happen.
#[test]
fn random_schedules_elect_and_fail_over() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRunner};
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    );
    let strategy = prop::collection::vec(arb_step(), 200..250);
    let (mut elected, mut failed_over) = (0, 0);
    for k in 0..60 {
        let steps = strategy.new_tree(&mut runner).expect("schedule").current();
        let world = run(k % 2 == 0, &steps).expect("safe schedule");
        elected += usize::from(world.promotions > 0);
        failed_over += usize::from(world.promotions > 1);
    }
    assert!(elected >= 30, "only {elected} of 60 runs elected a leader");
    assert!(
        failed_over >= 5,
        "only {failed_over} of 60 runs failed over"
    );
}

fn calm(node: usize, dt: u64) -> Step {
    Step {
        node,
        dt,
        reachable: true,
        defer: false,
        peers_reachable: [true; 3],
        task_len: 0,
        wal_inc: 100,
        catchup: [10_000; 3],
        failover_to: None,
    }
}

/// Non-vacuity: a calm schedule elects exactly one primary; freezing it makes
/// another node take over; the frozen one fences on wake-up and rejoins as a
/// replica after pg_rewind.
#[test]
fn failover_after_freeze_and_rejoin() {
    let mut steps: Vec<Step> = (0..30).map(|k| calm(k % 3, 700)).collect();
    let mut world = run(false, &steps).expect("calm run");
    let primaries: Vec<usize> = (0..3)
        .filter(|&j| world.nodes[j].pg == Pg::Primary)
        .collect();
    assert_eq!(primaries.len(), 1, "one primary after a calm start");
    let old = primaries[0];
    assert_eq!(world.leader().map(|l| l.0), Some(old));
    // Freeze the primary: only the others step for 20 s.
    let others: Vec<usize> = (0..3).filter(|&j| j != old).collect();
    for k in 0..20 {
        // A frozen agent does not answer /patroni either.
        let mut s = calm(others[k % 2], 1_000);
        s.peers_reachable[old] = false;
        world.step(&s).expect("failover");
        steps.push(s);
    }
    let new = world.leader().map(|l| l.0).expect("a new leader");
    assert_ne!(new, old);
    assert_eq!(world.nodes[new].pg, Pg::Primary);
    // The old primary wakes up: its lease expired during the freeze, so its
    // keepalive fails, the renewal it reports is stale and its first
    // decision fences.
    assert!(!world.lease_alive(old));
    world.step(&calm(old, 500)).expect("wake");
    assert_eq!(
        world.nodes[old].pg,
        Pg::Stopped,
        "{}",
        world.nodes[old].mem.last_reason
    );
    let reason = &world.nodes[old].mem.last_reason;
    assert!(
        reason.contains("the last confirmed lease renewal is")
            && reason.contains("previous cycle was"),
        "{reason}"
    );
    for k in 0..12 {
        world.step(&calm(k % 3, 700)).expect("rejoin");
    }
    assert_eq!(
        world.nodes[old].pg,
        Pg::Replica,
        "{}",
        world.nodes[old].mem.last_reason
    );
    assert_eq!(world.nodes[old].following.as_deref(), Some(NAMES[new]));
    assert!(world.promotions >= 2);
}

/// A slow cycle or short freeze of the primary (longer than the fence
/// deadline, shorter than the ttl) does not demote it: its lease never
/// expired, its keepalive succeeds on wake, and nobody else took over.
#[test]
fn slow_primary_cycle_keeps_leadership() {
    let steps: Vec<Step> = (0..30).map(|k| calm(k % 3, 700)).collect();
    let mut world = run(false, &steps).expect("calm run");
    let old = world.leader().map(|l| l.0).expect("leader");
    let promotions = world.promotions;
    let others: Vec<usize> = (0..3).filter(|&j| j != old).collect();
    // The old primary steps at the start of this window; 9.5 s pass before its next cycle.
    world.step(&calm(old, 0)).expect("renew");
    for k in 0..19 {
        world.step(&calm(others[k % 2], 500)).expect("others");
    }
    let gap = world.now - world.nodes[old].mem.last_cycle_ms.expect("cycled");
    assert!(gap >= world.cfg.fence_deadline_ms() && gap < world.cfg.ttl * 1000);
    assert!(world.lease_alive(old));
    world.step(&calm(old, 0)).expect("slow cycle");
    assert_eq!(
        world.nodes[old].pg,
        Pg::Primary,
        "{}",
        world.nodes[old].mem.last_reason
    );
    assert_eq!(world.leader().map(|l| l.0), Some(old));
    assert_eq!(world.promotions, promotions);
}

/// A short store outage leaves the primary running while its lease is
/// valid; an outage reaching the fence deadline stops it before its key can
/// expire, and nobody promotes while nobody can reach the store.
#[test]
fn store_outage_fences_the_primary() {
    let steps: Vec<Step> = (0..30).map(|k| calm(k % 3, 700)).collect();
    let mut world = run(false, &steps).expect("calm run");
    let old = world.leader().map(|l| l.0).expect("leader");
    let promotions = world.promotions;
    world.step(&calm(old, 0)).expect("renew");
    let deadline = world.cfg.fence_deadline_ms();
    let renewed = world.now;
    let cut = |node: usize, dt: u64| {
        let mut s = calm(node, dt);
        s.reachable = false;
        s.peers_reachable = [false; 3];
        s
    };
    loop {
        world.step(&cut(old, 1_000)).expect("outage");
        for j in (0..3).filter(|&j| j != old) {
            world.step(&cut(j, 0)).expect("outage");
        }
        let n = &world.nodes[old];
        if world.now - renewed < deadline {
            assert_eq!(n.pg, Pg::Primary, "{}", n.mem.last_reason);
            assert!(
                n.mem.last_reason.contains("keeping the primary"),
                "{}",
                n.mem.last_reason
            );
        } else {
            assert_eq!(n.pg, Pg::Stopped, "{}", n.mem.last_reason);
            assert!(
                n.mem.last_reason.contains("DCS is not accessible"),
                "{}",
                n.mem.last_reason
            );
            break;
        }
    }
    // Stopped before its key could expire.
    assert!(world.now < renewed + world.cfg.ttl * 1000);
    assert_eq!(world.promotions, promotions);
}

/// Non-vacuity of the synchronous-mode check: over many schedules the
/// leader lists synchronous standbys, commits are acknowledged through them,
/// and failovers happen while it does.
#[test]
fn sync_schedules_list_standbys_and_fail_over() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRunner};
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    );
    let strategy = prop::collection::vec(arb_step(), 200..250);
    let (mut listed_steps, mut failovers_with_listing) = (0, 0);
    for _ in 0..40 {
        let steps = strategy.new_tree(&mut runner).expect("schedule").current();
        let mut world = World::new(true);
        for (k, s) in steps.iter().enumerate() {
            let listed_before = world
                .sync_key()
                .is_some_and(|k| k.value.sync_standby.is_some());
            let promotions = world.promotions;
            world.step(s).unwrap_or_else(|e| panic!("step {k}: {e}"));
            listed_steps += usize::from(listed_before);
            if listed_before && world.promotions > promotions {
                failovers_with_listing += 1;
            }
        }
    }
    assert!(
        listed_steps >= 500,
        "only {listed_steps} steps had a synchronous standby"
    );
    assert!(
        failovers_with_listing >= 5,
        "only {failovers_with_listing} promotions happened with a synchronous standby listed"
    );
}
