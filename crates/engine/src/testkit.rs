//! Test builders: short, readable observations for the unit and property tests.
//!
//! Defaults describe a healthy three-member cluster (n1, n2, n3), seen by `n2`,
//! at `now_ms = 1_000_000`, with a fresh lease renewal, a previous cycle two
//! seconds ago, system identifier `7`, timeline 1 and default dynamic config.

use pgwarden_types::{
    ClusterSnapshot, DataDirState, DynamicConfig, FailoverRequest, LeaderKey, LocalPgState, Lsn,
    Member, MemberData, PgClusterState, PgState, Role, SyncState, Tags, Versioned,
};
use serde_json::{json, Value};

use crate::{
    decide, Action, DcsView, Decision, Memory, NodeIdentity, Observation, PeerReport, TaskKind,
    TaskOutcome,
};

pub(crate) const NOW: u64 = 1_000_000;
/// 2026-11-22T12:00:00Z, the wall clock of every test observation.
pub(crate) const WALL_CLOCK_MS: i64 = 1_795_348_800_000;
pub(crate) const SYSID: &str = "7";

pub(crate) fn member(name: &str, role: Role, state: PgState, wal: Option<u64>) -> Member {
    Member {
        name: name.to_string(),
        data: MemberData {
            role,
            state,
            xlog_location: wal,
            timeline: Some(1),
            ..MemberData::empty()
        },
        mod_revision: 1,
        lease: 1,
    }
}

pub(crate) fn peer(name: &str, role: Role, wal: u64) -> PeerReport {
    PeerReport {
        name: name.to_string(),
        reachable: true,
        role: Some(role),
        wal_position: Some(Lsn(wal)),
        timeline: Some(1),
        tags: Tags::default(),
        watchdog_failed: false,
    }
}

pub(crate) fn initialized(state: PgClusterState, standby_signal: bool) -> DataDirState {
    DataDirState::Initialized {
        system_identifier: SYSID.to_string(),
        cluster_state: state,
        checkpoint_timeline: 1,
        standby_signal,
    }
}

pub(crate) fn local_replica(wal: u64, following: Option<&str>) -> LocalPgState {
    LocalPgState {
        data_dir: initialized(PgClusterState::InArchiveRecovery, true),
        postmaster_pid: Some(100),
        accepting_connections: true,
        in_recovery: Some(true),
        timeline: Some(1),
        receive_lsn: Some(Lsn(wal)),
        replay_lsn: Some(Lsn(wal)),
        streaming: following.is_some(),
        following: following.map(str::to_string),
        ..LocalPgState::empty()
    }
}

pub(crate) fn local_primary(wal: u64) -> LocalPgState {
    LocalPgState {
        data_dir: initialized(PgClusterState::InProduction, false),
        postmaster_pid: Some(100),
        accepting_connections: true,
        in_recovery: Some(false),
        timeline: Some(1),
        write_lsn: Some(Lsn(wal)),
        ..LocalPgState::empty()
    }
}

pub(crate) fn local_stopped(state: PgClusterState, standby_signal: bool) -> LocalPgState {
    LocalPgState {
        data_dir: initialized(state, standby_signal),
        ..LocalPgState::empty()
    }
}

/// The timing every test runs with unless it sets its own: ttl 10, so the
/// fence deadline is 9000 ms (tests pin that boundary).
pub(crate) fn test_timing() -> Value {
    json!({"ttl": 10, "loop_wait": 2, "retry_timeout": 4})
}

pub(crate) fn base_snapshot() -> ClusterSnapshot {
    ClusterSnapshot {
        revision: 10,
        initialize: Some(SYSID.to_string()),
        config: Some(Versioned {
            value: test_timing(),
            mod_revision: 2,
        }),
        leader: None,
        members: vec![
            member("n1", Role::Replica, PgState::Running, Some(1000)),
            member("n2", Role::Replica, PgState::Running, Some(1000)),
            member("n3", Role::Replica, PgState::Running, Some(1000)),
        ],
        failover: None,
        sync: None,
        history: Vec::new(),
        status: Default::default(),
        failsafe: None,
    }
}

/// Observation + memory builder.
#[derive(Debug, Clone)]
pub(crate) struct B {
    pub obs: Observation,
    pub mem: Memory,
}

pub(crate) fn b() -> B {
    B::new("n2")
}

impl B {
    pub(crate) fn new(name: &str) -> B {
        B {
            obs: Observation {
                now_ms: NOW,
                me: NodeIdentity {
                    name: name.to_string(),
                    tags: Tags::default(),
                    can_bootstrap: true,
                    bootstrap_config: DynamicConfig::from_json(&test_timing())
                        .expect("valid test timing"),
                },
                dcs: DcsView::Available(base_snapshot()),
                local: local_replica(1000, None),
                peers: Vec::new(),
                last_lease_renewal_sent_ms: Some(NOW - 1000),
                running_task: None,
                finished_task: None,
                shutdown_requested: false,
                failsafe_confirmed_ms: None,
                failsafe_leader: None,
                operator_request: None,
                wall_clock_ms: WALL_CLOCK_MS,
            },
            mem: Memory {
                last_cycle_ms: Some(NOW - 2000),
                ..Memory::default()
            },
        }
    }

    pub(crate) fn snap(mut self, f: impl FnOnce(&mut ClusterSnapshot)) -> B {
        match &mut self.obs.dcs {
            DcsView::Available(s) => f(s),
            DcsView::Unreachable => panic!("snapshot of an unreachable DCS"),
        }
        self
    }

    pub(crate) fn leader(self, name: &str) -> B {
        let me = self.obs.me.name.clone();
        let name = name.to_string();
        self.snap(|s| {
            s.leader = Some(LeaderKey {
                name: name.clone(),
                create_revision: 5,
                mod_revision: 5,
                lease: 42,
            });
            for m in &mut s.members {
                if m.name == name && m.name != me {
                    m.data.role = Role::Primary;
                }
            }
        })
    }

    /// Sets the `config` key; timing keys it leaves out keep the test timing.
    pub(crate) fn config(self, value: Value) -> B {
        let mut merged = test_timing();
        if let (Some(base), Some(extra)) = (merged.as_object_mut(), value.as_object()) {
            for (k, v) in extra {
                base.insert(k.clone(), v.clone());
            }
        }
        self.snap(|s| {
            s.config = Some(Versioned {
                value: merged,
                mod_revision: 3,
            })
        })
    }

    pub(crate) fn no_config_key(self) -> B {
        self.snap(|s| s.config = None)
    }

    pub(crate) fn optime(self, optime: u64) -> B {
        self.snap(|s| s.status.optime = Some(optime))
    }

    pub(crate) fn sync(self, leader: &str, standbys: &str) -> B {
        let state = SyncState {
            leader: Some(leader.to_string()),
            quorum: 0,
            sync_standby: Some(standbys.to_string()).filter(|s| !s.is_empty()),
        };
        self.snap(|s| {
            let cfg = s.config.get_or_insert(Versioned {
                value: test_timing(),
                mod_revision: 3,
            });
            cfg.value["synchronous_mode"] = json!(true);
            s.sync = Some(Versioned {
                value: state,
                mod_revision: 8,
            });
        })
    }

    pub(crate) fn failover(self, leader: Option<&str>, member: Option<&str>) -> B {
        let req = FailoverRequest {
            leader: leader.map(str::to_string),
            member: member.map(str::to_string),
            scheduled_at: None,
        };
        self.snap(|s| {
            s.failover = Some(Versioned {
                value: req,
                mod_revision: 9,
            })
        })
    }

    pub(crate) fn member_mut(self, name: &str, f: impl FnOnce(&mut Member)) -> B {
        let name = name.to_string();
        self.snap(|s| {
            f(s.members
                .iter_mut()
                .find(|m| m.name == name)
                .expect("member"))
        })
    }

    pub(crate) fn local(mut self, local: LocalPgState) -> B {
        self.obs.local = local;
        self
    }

    pub(crate) fn local_mut(mut self, f: impl FnOnce(&mut LocalPgState)) -> B {
        f(&mut self.obs.local);
        self
    }

    pub(crate) fn primary(self) -> B {
        self.local(local_primary(1000))
    }

    pub(crate) fn empty_datadir(self) -> B {
        self.local(LocalPgState::empty())
    }

    pub(crate) fn unreachable(mut self) -> B {
        self.obs.dcs = DcsView::Unreachable;
        self
    }

    pub(crate) fn renewed_ago(mut self, ms: u64) -> B {
        self.obs.last_lease_renewal_sent_ms = Some(self.obs.now_ms - ms);
        self
    }

    pub(crate) fn never_renewed(mut self) -> B {
        self.obs.last_lease_renewal_sent_ms = None;
        self
    }

    pub(crate) fn last_cycle_ago(mut self, ms: u64) -> B {
        self.mem.last_cycle_ms = Some(self.obs.now_ms - ms);
        self
    }

    pub(crate) fn first_cycle(mut self) -> B {
        self.mem.last_cycle_ms = None;
        self
    }

    /// The previous snapshot showed the leader key under my name.
    pub(crate) fn held_lock(mut self) -> B {
        self.mem.held_leader_key = true;
        self
    }

    pub(crate) fn was_primary(mut self) -> B {
        self.mem.was_primary = true;
        self
    }

    pub(crate) fn memory(mut self, f: impl FnOnce(&mut Memory)) -> B {
        f(&mut self.mem);
        self
    }

    pub(crate) fn task(mut self, kind: TaskKind) -> B {
        self.obs.running_task = Some(kind);
        self
    }

    pub(crate) fn finished(mut self, kind: TaskKind, success: bool) -> B {
        self.obs.finished_task = Some(TaskOutcome {
            kind,
            success,
            message: if success { "" } else { "boom" }.into(),
        });
        self
    }

    pub(crate) fn shutdown(mut self) -> B {
        self.obs.shutdown_requested = true;
        self
    }

    pub(crate) fn peers(mut self, peers: Vec<PeerReport>) -> B {
        self.obs.peers = peers;
        self
    }

    pub(crate) fn tags(mut self, tags: Tags) -> B {
        self.obs.me.tags = tags;
        self
    }

    pub(crate) fn me_mut(mut self, f: impl FnOnce(&mut NodeIdentity)) -> B {
        f(&mut self.obs.me);
        self
    }

    pub(crate) fn run(&self) -> Decision {
        decide(&self.obs, &self.mem)
    }
}

/// Asserts the exact actions and that the reason contains every word group.
#[track_caller]
pub(crate) fn expect(b: &B, actions: Vec<Action>, words: &[&str]) -> Decision {
    let d = b.run();
    assert_eq!(d.actions, actions, "reason was: {}", d.reason);
    for w in words {
        assert!(d.reason.contains(w), "reason {:?} lacks {:?}", d.reason, w);
    }
    d
}
