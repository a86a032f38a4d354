//! Unit tests: every branch of `decide`, with the exact action list and the
//! key words of the reason.

use pgwarden_types::{LocalPgState, Lsn, PgClusterState, PgState, Role, SyncState, Tags};
use serde_json::json;

use crate::testkit::*;
use crate::{Action, DemoteMode, TaskKind};

use Action::*;

fn demote(mode: DemoteMode) -> Action {
    Demote { mode }
}

fn slots(names: &[&str]) -> Action {
    SyncSlots {
        members: names.iter().map(|s| s.to_string()).collect(),
    }
}

fn leader_upkeep() -> Vec<Action> {
    vec![RenewLeader, WriteStatus, slots(&["n1", "n3"])]
}

// ---------------------------------------------------------------- fencing

#[test]
fn unreachable_store_keeps_a_primary_whose_lease_is_fresh() {
    // Default ttl 10 s: deadline 9000 ms, renewal 1000 ms old.
    let d = expect(
        &b().primary().held_lock().unreachable(),
        vec![],
        &["DCS is not accessible; keeping the primary while my lease is valid for another 8000 ms"],
    );
    assert!(d.memory.held_leader_key);
    // The deadline is the one of the dynamic configuration last seen, not
    // the bootstrap one.
    expect(
        &b().primary()
            .held_lock()
            .memory(|m| m.fence_deadline_ms = Some(29_000))
            .renewed_ago(20_000)
            .unreachable(),
        vec![],
        &["valid for another 9000 ms"],
    );
    expect(
        &b().primary().held_lock().renewed_ago(8_999).unreachable(),
        vec![],
        &["valid for another 1 ms"],
    );
}

#[test]
fn unreachable_store_with_a_stale_renewal_demotes() {
    expect(
        &b().primary().held_lock().renewed_ago(9_000).unreachable(),
        vec![demote(DemoteMode::ImmediateNoLock)],
        &[
            "DCS is not accessible",
            "9000 ms old",
            "fence deadline of 9000 ms",
        ],
    );
    expect(
        &b().primary()
            .held_lock()
            .memory(|m| m.fence_deadline_ms = Some(29_000))
            .renewed_ago(29_000)
            .unreachable(),
        vec![demote(DemoteMode::ImmediateNoLock)],
        &["29000 ms old"],
    );
    expect(
        &b().primary().held_lock().never_renewed().unreachable(),
        vec![demote(DemoteMode::ImmediateNoLock)],
        &["DCS is not accessible", "never confirmed a lease"],
    );
}

#[test]
fn unreachable_store_demotes_a_primary_that_did_not_hold_the_key() {
    // A fresh renewal of a lease that holds no leader key proves nothing.
    expect(
        &b().primary().unreachable(),
        vec![demote(DemoteMode::ImmediateNoLock)],
        &["DCS is not accessible", "leader key was not mine"],
    );
}

#[test]
fn primary_fences_exactly_at_the_deadline() {
    // Default ttl 10 s: fence deadline 9000 ms after the last confirmed send.
    let base = b().leader("n2").primary();
    expect(
        &base.clone().renewed_ago(8_999),
        leader_upkeep(),
        &["the leader with the lock"],
    );
    expect(
        &base.renewed_ago(9_000),
        vec![demote(DemoteMode::ImmediateNoLock)],
        &["9000 ms old", "fence deadline of 9000 ms"],
    );
}

#[test]
fn primary_without_any_confirmed_lease_demotes() {
    expect(
        &b().leader("n2").primary().never_renewed(),
        vec![demote(DemoteMode::ImmediateNoLock)],
        &["never confirmed a lease"],
    );
}

#[test]
fn frozen_primary_with_a_stale_renewal_demotes_even_if_the_key_shows_its_name() {
    // After a freeze the keepalive task was frozen too: the renewal is stale.
    expect(
        &b().leader("n2")
            .primary()
            .held_lock()
            .last_cycle_ago(20_000)
            .renewed_ago(20_500),
        vec![demote(DemoteMode::ImmediateNoLock)],
        &["20500 ms old", "previous cycle was 20000 ms ago"],
    );
    // A frozen replica has nothing to fence.
    expect(
        &b().leader("n1")
            .local(local_replica(1000, Some("n1")))
            .last_cycle_ago(60_000)
            .renewed_ago(60_000),
        vec![],
        &["following a leader (n1)"],
    );
}

#[test]
fn slow_cycle_with_a_fresh_renewal_does_not_demote() {
    // The keepalive task kept the lease alive while the cycle was slow.
    expect(
        &b().leader("n2")
            .primary()
            .last_cycle_ago(30_000)
            .renewed_ago(500),
        leader_upkeep(),
        &["the leader with the lock"],
    );
    expect(
        &b().primary()
            .held_lock()
            .last_cycle_ago(30_000)
            .renewed_ago(500)
            .unreachable(),
        vec![],
        &["keeping the primary"],
    );
}

#[test]
fn fence_deadline_follows_the_dynamic_ttl() {
    let cfg = json!({"ttl": 30, "loop_wait": 10, "retry_timeout": 10});
    let base = b().config(cfg).leader("n2").primary();
    expect(
        &base.clone().renewed_ago(20_000),
        leader_upkeep(),
        &["leader with the lock"],
    );
    expect(
        &base.renewed_ago(29_000),
        vec![demote(DemoteMode::ImmediateNoLock)],
        &["29000 ms"],
    );
}

#[test]
fn bootstrap_config_is_used_before_the_config_key_exists() {
    let base = b().no_config_key().leader("n2").primary().me_mut(|me| {
        me.bootstrap_config.ttl = 30;
        me.bootstrap_config.loop_wait = std::time::Duration::from_secs(10);
        me.bootstrap_config.retry_timeout = std::time::Duration::from_secs(10);
    });
    let d = base.clone().renewed_ago(20_000).run();
    assert_eq!(d.actions[0], RenewLeader);
    assert!(d.actions.contains(&SeedConfig));
}

#[test]
fn fencing_ignores_pause() {
    expect(
        &b().config(json!({"pause": true}))
            .leader("n2")
            .primary()
            .renewed_ago(9_500),
        vec![demote(DemoteMode::ImmediateNoLock)],
        &["PAUSE: ", "fence deadline"],
    );
}

#[test]
fn replica_keeps_running_when_dcs_is_unreachable() {
    expect(&b().unreachable(), vec![], &["DCS is not accessible"]);
    expect(
        &b().unreachable().task(TaskKind::Clone),
        vec![],
        &["running replica creation"],
    );
}

#[test]
fn stopped_former_primary_has_nothing_to_fence() {
    let stopped = local_stopped(PgClusterState::ShutDown, false);
    expect(
        &b().local(stopped).was_primary().unreachable(),
        vec![],
        &["DCS is not accessible"],
    );
}

#[test]
fn promotion_in_progress_is_fenced() {
    expect(
        &b().task(TaskKind::Promote).unreachable(),
        vec![demote(DemoteMode::ImmediateNoLock)],
        &["DCS is not accessible"],
    );
    expect(
        &b().task(TaskKind::Promote)
            .held_lock()
            .renewed_ago(9_000)
            .unreachable(),
        vec![demote(DemoteMode::ImmediateNoLock)],
        &["9000 ms old"],
    );
    // Promoting under the key on a fresh lease: wait for the store.
    expect(
        &b().task(TaskKind::Promote).held_lock().unreachable(),
        vec![],
        &["keeping the primary", "running promote"],
    );
}

#[test]
fn starting_former_primary_is_fenced() {
    let starting = LocalPgState {
        data_dir: initialized(PgClusterState::InCrashRecovery, false),
        postmaster_pid: Some(5),
        ..LocalPgState::empty()
    };
    expect(
        &b().local(starting.clone()).was_primary().unreachable(),
        vec![demote(DemoteMode::ImmediateNoLock)],
        &[],
    );
    // The same server starting with standby.signal comes up read-only.
    let as_replica = LocalPgState {
        data_dir: initialized(PgClusterState::InCrashRecovery, true),
        ..starting
    };
    expect(
        &b().local(as_replica).was_primary().unreachable(),
        vec![],
        &["DCS is not accessible"],
    );
}

#[test]
fn bootstrap_in_progress_is_not_fenced() {
    let b = b()
        .primary()
        .task(TaskKind::Initdb)
        .snap(|s| s.initialize = Some(String::new()));
    expect(&b.clone().unreachable(), vec![], &["running bootstrap"]);
    expect(&b, vec![], &["running bootstrap"]);
}

// ---------------------------------------------------------------- bootstrap

fn fresh_cluster() -> B {
    b().empty_datadir().snap(|s| {
        s.initialize = None;
        s.config = None;
    })
}

#[test]
fn empty_cluster_races_for_initialize() {
    expect(
        &fresh_cluster(),
        vec![RaceInitialize, Bootstrap],
        &["bootstrap a new cluster"],
    );
}

#[test]
fn nofailover_or_no_bootstrap_section_waits() {
    let nofo = Tags {
        nofailover: true,
        ..Tags::default()
    };
    expect(
        &fresh_cluster().tags(nofo),
        vec![],
        &["waiting for leader to bootstrap"],
    );
    expect(
        &fresh_cluster().me_mut(|me| me.can_bootstrap = false),
        vec![],
        &["waiting for leader to bootstrap"],
    );
}

#[test]
fn initialize_taken_waits_for_leader() {
    let b = fresh_cluster().snap(|s| s.initialize = Some(String::new()));
    expect(&b, vec![], &["waiting for leader to bootstrap"]);
}

#[test]
fn empty_replica_clones_from_leader_or_clonefrom_member() {
    expect(
        &b().empty_datadir().leader("n1"),
        vec![CloneFrom {
            member: "n1".into(),
        }],
        &["from leader (n1)"],
    );
    let tagged = b()
        .empty_datadir()
        .leader("n1")
        .member_mut("n3", |m| m.data.tags.clonefrom = true);
    expect(
        &tagged,
        vec![CloneFrom {
            member: "n3".into(),
        }],
        &["from replica (n3)"],
    );
    let stopped = tagged.member_mut("n3", |m| m.data.state = PgState::Stopped);
    expect(
        &stopped,
        vec![CloneFrom {
            member: "n1".into(),
        }],
        &["from leader (n1)"],
    );
}

#[test]
fn never_clones_while_a_task_runs() {
    expect(
        &b().empty_datadir().leader("n1").task(TaskKind::Clone),
        vec![],
        &["running replica creation"],
    );
}

#[test]
fn empty_datadir_releases_a_held_key() {
    expect(
        &b().empty_datadir().leader("n2"),
        vec![ReleaseLeader],
        &["data directory", "empty"],
    );
}

#[test]
fn paused_empty_datadir_does_nothing() {
    expect(
        &b().empty_datadir()
            .leader("n1")
            .config(json!({"pause": true})),
        vec![],
        &["PAUSE: ", "empty"],
    );
}

#[test]
fn invalid_datadir_is_reported() {
    let local = LocalPgState {
        data_dir: pgwarden_types::DataDirState::Invalid {
            reason: "no PG_VERSION".into(),
        },
        ..LocalPgState::empty()
    };
    expect(
        &b().local(local).leader("n1"),
        vec![],
        &["not a valid cluster", "no PG_VERSION"],
    );
}

#[test]
fn foreign_system_identifier_is_refused() {
    let b = b().leader("n1").snap(|s| s.initialize = Some("999".into()));
    expect(&b, vec![], &["system identifier mismatch", "7", "999"]);
}

#[test]
fn running_primary_adopts_uninitialized_cluster() {
    let b = b().primary().snap(|s| s.initialize = None);
    expect(
        &b,
        vec![
            WriteInitialize {
                system_identifier: SYSID.into(),
            },
            AcquireLeader,
        ],
        &["acquired session lock as a leader"],
    );
}

#[test]
fn running_replica_refuses_to_adopt() {
    expect(
        &b().snap(|s| s.initialize = None),
        vec![],
        &["start pgwarden on the primary first"],
    );
}

#[test]
fn stopped_datadir_adopts_and_starts_read_only() {
    let b = b()
        .local(local_stopped(PgClusterState::ShutDownInRecovery, true))
        .snap(|s| s.initialize = None);
    expect(
        &b,
        vec![
            WriteInitialize {
                system_identifier: SYSID.into(),
            },
            StartReplica { leader: None },
        ],
        &["starting as a secondary"],
    );
}

// ---------------------------------------------------------------- recover

fn crashed_primary() -> B {
    b().leader("n2")
        .local(local_stopped(PgClusterState::InProduction, false))
        .was_primary()
}

#[test]
fn key_holder_restarts_its_crashed_primary() {
    let d = expect(
        &crashed_primary(),
        vec![RenewLeader, StartPrimary],
        &["starting primary after failure"],
    );
    assert_eq!(d.memory.primary_start_began_ms, Some(NOW));
    assert!(d.memory.was_primary);
    // A retry keeps the original start time.
    let again = crashed_primary().memory(|m| m.primary_start_began_ms = Some(NOW - 5_000));
    assert_eq!(again.run().memory.primary_start_began_ms, Some(NOW - 5_000));
}

#[test]
fn agent_restart_learns_former_primary_from_controldata() {
    let b = b()
        .leader("n2")
        .local(local_stopped(PgClusterState::ShutDown, false))
        .first_cycle();
    expect(
        &b,
        vec![RenewLeader, StartPrimary],
        &["starting primary after failure"],
    );
}

#[test]
fn primary_start_timeout_hands_over_to_a_healthy_replica() {
    let late = crashed_primary().memory(|m| m.primary_start_began_ms = Some(NOW - 300_000));
    expect(
        &late,
        vec![ReleaseLeader],
        &["failing to start postgres", "(n1) can take over"],
    );
    // Nobody can take over: keep trying.
    let alone = late.snap(|s| s.members.retain(|m| m.name == "n2"));
    expect(
        &alone,
        vec![RenewLeader, StartPrimary],
        &["starting primary after failure"],
    );
}

#[test]
fn zero_primary_start_timeout_fails_over_at_once() {
    let b = crashed_primary().config(json!({"primary_start_timeout": 0}));
    expect(
        &b,
        vec![ReleaseLeader],
        &["primary_start_timeout is 0", "(n1)"],
    );
    let lagging = b
        .optime(10_000_000)
        .member_mut("n1", |m| m.data.xlog_location = Some(1));
    let d = lagging
        .member_mut("n3", |m| m.data.state = PgState::Stopped)
        .run();
    assert_eq!(d.actions, vec![RenewLeader, StartPrimary], "{}", d.reason);
}

#[test]
fn key_holder_that_was_replica_starts_read_only() {
    let b = b()
        .leader("n2")
        .local(local_stopped(PgClusterState::ShutDownInRecovery, true));
    expect(
        &b,
        vec![RenewLeader, StartReplica { leader: None }],
        &["readonly because I had the session lock"],
    );
}

#[test]
fn stopped_replica_starts_following_the_leader() {
    let b = b()
        .leader("n1")
        .local(local_stopped(PgClusterState::ShutDownInRecovery, true));
    expect(
        &b,
        vec![StartReplica {
            leader: Some("n1".into()),
        }],
        &["following leader (n1)"],
    );
    let cascading = b.tags(Tags {
        replicatefrom: Some("n3".into()),
        ..Tags::default()
    });
    expect(
        &cascading,
        vec![StartReplica {
            leader: Some("n3".into()),
        }],
        &["leader (n1)"],
    );
}

#[test]
fn stopped_replica_without_leader_starts_read_only() {
    let b = b().local(local_stopped(PgClusterState::ShutDownInRecovery, true));
    expect(&b, vec![StartReplica { leader: None }], &["no leader yet"]);
}

fn former_primary() -> B {
    b().leader("n1")
        .local(local_stopped(PgClusterState::ShutDown, false))
        .was_primary()
}

#[test]
fn former_primary_rewinds_before_following() {
    let rewind = former_primary().config(json!({"postgresql": {"use_pg_rewind": true}}));
    expect(
        &rewind,
        vec![Rewind {
            source: "n1".into(),
        }],
        &["pg_rewind from (n1)"],
    );
}

/// The leader's history: timeline 1 ended at `switch` (it promoted onto 2).
fn forked_at(b: B, switch: u64, checkpoint: u64) -> B {
    b.snap(|s| {
        s.history = vec![pgwarden_types::HistoryLine {
            timeline: 1,
            switch_lsn: switch,
            reason: "no recovery target specified".into(),
            timestamp: None,
            new_leader: Some("n1".into()),
        }]
    })
    .member_mut("n1", |m| m.data.timeline = Some(2))
    .local_mut(|l| l.checkpoint_lsn = Some(Lsn(checkpoint)))
}

#[test]
fn clean_switchover_follows_without_rewind() {
    // Shut down cleanly before the fork: the leader has all my WAL.
    for rewind in [true, false] {
        let b = forked_at(former_primary(), 2000, 1500)
            .config(json!({"postgresql": {"use_pg_rewind": rewind}}));
        expect(
            &b,
            vec![StartReplica {
                leader: Some("n1".into()),
            }],
            &["without pg_rewind", "precedes the timeline switch"],
        );
    }
    // A crashed primary cannot prove where its WAL ends: rewind.
    let crashed = forked_at(former_primary(), 2000, 1500)
        .local_mut(|l| {
            l.data_dir = crate::testkit::initialized(PgClusterState::InProduction, false)
        })
        .config(json!({"postgresql": {"use_pg_rewind": true}}));
    expect(
        &crashed,
        vec![Rewind {
            source: "n1".into(),
        }],
        &["pg_rewind from (n1)"],
    );
}

#[test]
fn without_rewind_a_possibly_diverged_primary_stays_down_or_reclones() {
    // Past the fork: diverged.
    let diverged = forked_at(former_primary(), 2000, 2500);
    expect(
        &diverged,
        vec![],
        &[
            "may have diverged",
            "past the timeline switch",
            "reinitialize",
        ],
    );
    let wipe = forked_at(former_primary(), 2000, 2500).config(json!({
        "postgresql": {"remove_data_directory_on_diverged_timelines": true}
    }));
    expect(&wipe, vec![WipeDataDir], &["removing the data directory"]);
    // Nothing to compare with yet: the leader's history is still to come.
    let pending = former_primary().member_mut("n1", |m| m.data.timeline = Some(2));
    expect(
        &pending,
        vec![],
        &["waiting for leader (n1) to publish its timeline history"],
    );
    // With pg_rewind too: the history may spare it.
    let pending_rewind = pending.config(json!({"postgresql": {"use_pg_rewind": true}}));
    expect(
        &pending_rewind,
        vec![],
        &["to publish its timeline history"],
    );
    // The leader never left my timeline: following is safe.
    let same = former_primary().member_mut("n1", |m| m.data.timeline = Some(1));
    expect(
        &same,
        vec![StartReplica {
            leader: Some("n1".into()),
        }],
        &["following leader (n1)"],
    );
}

#[test]
fn rewind_waits_for_the_post_promote_checkpoint() {
    let b = former_primary()
        .config(json!({"postgresql": {"use_pg_rewind": true}}))
        .member_mut("n1", |m| m.data.checkpoint_after_promote = Some(false));
    expect(&b, vec![], &["waiting for leader (n1)", "checkpoint"]);
}

#[test]
fn successful_rewind_starts_as_replica() {
    let b = former_primary()
        .config(json!({"postgresql": {"use_pg_rewind": true}}))
        .local(local_stopped(PgClusterState::InArchiveRecovery, false))
        .finished(TaskKind::Rewind, true);
    let d = expect(
        &b,
        vec![StartReplica {
            leader: Some("n1".into()),
        }],
        &["following leader (n1)"],
    );
    assert!(!d.memory.was_primary);
}

#[test]
fn failed_rewind_stays_down_or_wipes() {
    let failed = former_primary()
        .config(json!({"postgresql": {"use_pg_rewind": true}}))
        .memory(|m| m.last_leader = Some("n1".into()))
        .finished(TaskKind::Rewind, false);
    let d = expect(
        &failed,
        vec![],
        &["pg_rewind from (n1) failed", "reinitialize"],
    );
    assert!(d.memory.rewind_failed);
    let wipe = failed
        .clone()
        .config(json!({"postgresql": {"use_pg_rewind": true, "remove_data_directory_on_rewind_failure": true}}));
    let d = expect(&wipe, vec![WipeDataDir], &["removing the data directory"]);
    assert!(!d.memory.was_primary && !d.memory.rewind_failed);
    let diverged =
        failed.config(json!({"postgresql": {"remove_data_directory_on_diverged_timelines": true}}));
    expect(
        &diverged,
        vec![WipeDataDir],
        &["removing the data directory"],
    );
}

#[test]
fn a_new_leader_allows_another_rewind() {
    let b = former_primary()
        .config(json!({"postgresql": {"use_pg_rewind": true}}))
        .memory(|m| {
            m.rewind_failed = true;
            m.last_leader = Some("n3".into());
        });
    let d = expect(
        &b,
        vec![Rewind {
            source: "n1".into(),
        }],
        &["pg_rewind"],
    );
    assert_eq!(d.memory.last_leader.as_deref(), Some("n1"));
}

#[test]
fn paused_stopped_postgres_is_left_alone() {
    let paused = json!({"pause": true});
    expect(
        &crashed_primary().config(paused.clone()),
        vec![ReleaseLeader],
        &["PAUSE: ", "not running"],
    );
    let replica = b()
        .leader("n1")
        .local(local_stopped(PgClusterState::ShutDownInRecovery, true));
    expect(
        &replica.config(paused),
        vec![],
        &["PAUSE: postgres is not running"],
    );
}

fn starting(standby: bool) -> LocalPgState {
    LocalPgState {
        data_dir: initialized(PgClusterState::InCrashRecovery, standby),
        postmaster_pid: Some(9),
        ..LocalPgState::empty()
    }
}

#[test]
fn postgres_not_answering_yet() {
    expect(
        &b().leader("n2").local(starting(false)).was_primary(),
        vec![RenewLeader],
        &["postgres is starting"],
    );
    expect(
        &b().leader("n1").local(starting(false)).was_primary(),
        vec![demote(DemoteMode::ImmediateNoLock)],
        &["does not answer", "do not have the lock"],
    );
    expect(
        &b().leader("n1").local(starting(true)),
        vec![],
        &["waiting for postgres to accept connections"],
    );
}

#[test]
fn slow_primary_start_hands_over() {
    let b = b()
        .leader("n2")
        .local(starting(false))
        .was_primary()
        .memory(|m| m.primary_start_began_ms = Some(NOW - 400_000));
    expect(
        &b,
        vec![demote(DemoteMode::Immediate)],
        &["failing to start postgres"],
    );
    expect(
        &b.task(TaskKind::Start),
        vec![demote(DemoteMode::Immediate)],
        &["failing to start postgres"],
    );
}

// ---------------------------------------------------------------- leader

#[test]
fn healthy_leader_keeps_the_lock() {
    let d = expect(
        &b().leader("n2").primary(),
        leader_upkeep(),
        &["no action: I am (n2), the leader with the lock"],
    );
    assert!(d.memory.was_primary);
}

#[test]
fn leader_without_slots() {
    let b = b()
        .leader("n2")
        .primary()
        .config(json!({"postgresql": {"use_slots": false}}));
    expect(
        &b,
        vec![RenewLeader, WriteStatus],
        &["leader with the lock"],
    );
}

#[test]
fn leader_records_a_new_timeline_seeds_config_and_initialize() {
    let b = b()
        .leader("n2")
        .local(LocalPgState {
            timeline: Some(2),
            ..local_primary(1000)
        })
        .no_config_key()
        .snap(|s| s.initialize = Some(String::new()));
    expect(
        &b,
        vec![
            RenewLeader,
            UpdateHistory,
            WriteStatus,
            slots(&["n1", "n3"]),
            SeedConfig,
            WriteInitialize {
                system_identifier: SYSID.into(),
            },
        ],
        &["leader with the lock"],
    );
}

#[test]
fn key_holder_in_recovery_promotes() {
    let d = expect(
        &b().leader("n2"),
        vec![RenewLeader, Promote],
        &["promoted self to leader because I had the session lock"],
    );
    assert!(d.memory.was_primary);
}

fn switchover_to(candidate: &str) -> B {
    b().leader("n2")
        .primary()
        .failover(Some("n2"), Some(candidate))
}

#[test]
fn switchover_to_an_eligible_candidate_demotes_gracefully() {
    expect(
        &switchover_to("n3"),
        vec![RenewLeader, demote(DemoteMode::Graceful)],
        &["manual failover", "(n3)"],
    );
    // Failover without a named leader works the same.
    let b = b().leader("n2").primary().failover(None, Some("n3"));
    expect(
        &b,
        vec![RenewLeader, demote(DemoteMode::Graceful)],
        &["(n3) takes over"],
    );
}

fn cleared() -> Vec<Action> {
    let mut a = leader_upkeep();
    a.push(ClearFailover { mod_revision: 9 });
    a
}

#[test]
fn switchover_to_an_ineligible_candidate_is_cleared() {
    let nofo = switchover_to("n3").member_mut("n3", |m| m.data.tags.nofailover = true);
    expect(&nofo, cleared(), &["(n3) is not eligible", "nofailover"]);
    let lagging = switchover_to("n3").local(local_primary(5_000_000));
    expect(&lagging, cleared(), &["maximum_lag_on_failover"]);
    let stopped = switchover_to("n3").member_mut("n3", |m| m.data.state = PgState::Stopped);
    expect(&stopped, cleared(), &["stopped"]);
    expect(&switchover_to("nobody"), cleared(), &["not a member"]);
    let unreachable = switchover_to("n3").peers(vec![PeerReportExt::unreachable("n3")]);
    expect(&unreachable, cleared(), &["did not answer"]);
}

#[test]
fn switchover_in_sync_mode_needs_a_sync_candidate() {
    let b = switchover_to("n3").sync("n2", "n1");
    expect(&b, cleared(), &["not a synchronous standby"]);
    let ok = switchover_to("n1").sync("n2", "n1");
    expect(
        &ok,
        vec![RenewLeader, demote(DemoteMode::Graceful)],
        &["(n1)"],
    );
}

#[test]
fn failover_key_for_another_leader_or_for_me_is_cleared() {
    expect(
        &b().leader("n2").primary().failover(Some("n1"), Some("n3")),
        cleared(),
        &["names (n1) as the leader"],
    );
    expect(&switchover_to("n2"), cleared(), &["already is the leader"]);
}

#[test]
fn failover_without_candidate_picks_an_eligible_member() {
    let b = b().leader("n2").primary().failover(Some("n2"), None);
    expect(
        &b,
        vec![RenewLeader, demote(DemoteMode::Graceful)],
        &["(n1) takes over"],
    );
    let none = b
        .member_mut("n1", |m| m.data.state = PgState::Stopped)
        .member_mut("n3", |m| m.data.state = PgState::Stopped);
    expect(&none, cleared(), &["no member is eligible"]);
}

#[test]
fn scheduled_switchover_waits_for_its_time_then_runs() {
    let at = |when: &str| {
        let when = when.to_string();
        switchover_to("n3")
            .snap(move |s| s.failover.as_mut().unwrap().value.scheduled_at = Some(when))
    };
    // The test wall clock is 2026-11-22T12:00:00Z.
    expect(
        &at("2026-11-22T12:00:01+00:00"),
        leader_upkeep(),
        &["switchover scheduled at"],
    );
    expect(
        &at("2026-11-22T11:59:59Z"),
        vec![RenewLeader, demote(DemoteMode::Graceful)],
        &["(n3) takes over"],
    );
    // Too late (the leader was away at that time) or unreadable: dropped.
    expect(&at("2026-11-22T11:58:00+00:00"), cleared(), &["overdue"]);
    expect(&at("tomorrow"), cleared(), &["not an ISO 8601 time"]);
}

#[test]
fn operator_restart_and_reinitialize() {
    let ask = |b: B, r: crate::OperatorRequest| {
        let mut b = b;
        b.obs.operator_request = Some(r);
        b
    };
    use crate::OperatorRequest::Restart;
    const REINIT: crate::OperatorRequest =
        crate::OperatorRequest::Reinitialize { from_leader: false };
    // The leader restarts as primary and keeps the lock; the answer waits for the task.
    let d = expect(
        &ask(b().leader("n2").primary(), Restart),
        vec![RenewLeader, RestartAsPrimary],
        &["restarting"],
    );
    assert_eq!(d.operator_reply, None);
    let d = expect(
        &ask(
            b().leader("n1").local(local_replica(1000, Some("n1"))),
            Restart,
        ),
        vec![RestartAsReplica {
            leader: Some("n1".into()),
        }],
        &["restarting postgres as a replica"],
    );
    assert_eq!(d.operator_reply, None);
    let d = ask(
        b().leader("n1")
            .local(local_stopped(PgClusterState::ShutDownInRecovery, true)),
        Restart,
    )
    .run();
    assert_eq!(
        d.operator_reply,
        Some(Err("postgres is not running".into()))
    );
    // Reinitialize: never on the leader, never without one.
    let d = ask(b().leader("n2").primary(), REINIT).run();
    assert_eq!(
        d.operator_reply,
        Some(Err("I am the leader, can not reinitialize".into()))
    );
    assert!(d.actions.iter().all(|a| *a != WipeDataDir));
    let d = ask(b(), REINIT).run();
    assert_eq!(
        d.operator_reply,
        Some(Err("Cluster has no leader, can not reinitialize".into()))
    );
    let d = expect(
        &ask(
            b().leader("n1").local(local_replica(1000, Some("n1"))),
            REINIT,
        ),
        vec![Stop, WipeDataDir],
        &["reinitializing"],
    );
    assert_eq!(d.operator_reply, Some(Ok("reinitialize started".into())));
    // A request the cycle cannot serve is refused with the reason.
    let d = ask(b().leader("n1").task(TaskKind::Clone), Restart).run();
    assert!(
        matches!(d.operator_reply, Some(Err(ref m)) if m.contains("running replica creation")),
        "{:?}",
        d.operator_reply
    );
}

#[test]
fn shutdown_hands_leadership_over() {
    expect(
        &b().leader("n2").primary().shutdown(),
        vec![Stop, ReleaseLeader],
        &["shutting down"],
    );
    expect(
        &b().leader("n1").shutdown(),
        vec![Stop],
        &["shutting down: stopping postgres"],
    );
    expect(
        &crashed_primary().shutdown(),
        vec![ReleaseLeader],
        &["postgres is stopped"],
    );
    expect(
        &b().leader("n1")
            .local(local_stopped(PgClusterState::ShutDown, true))
            .shutdown(),
        vec![],
        &["stopped"],
    );
    expect(
        &b().leader("n2")
            .primary()
            .shutdown()
            .config(json!({"pause": true})),
        vec![],
        &["PAUSE: ", "alone"],
    );
}

#[test]
fn paused_leader_only_renews_while_primary() {
    let paused = json!({"pause": true});
    expect(
        &b().leader("n2").primary().config(paused.clone()),
        vec![RenewLeader],
        &["PAUSE: no action: I am (n2), the leader"],
    );
    expect(
        &b().leader("n2").config(paused),
        vec![ReleaseLeader],
        &["PAUSE: ", "not running as primary"],
    );
}

#[test]
fn leader_keeps_the_lock_while_a_task_runs() {
    expect(
        &b().leader("n2").primary().task(TaskKind::Restart),
        vec![RenewLeader],
        &["running restart"],
    );
    expect(
        &b().leader("n1").task(TaskKind::Rewind),
        vec![],
        &["running pg_rewind"],
    );
}

// ---------------------------------------------------------------- follower

#[test]
fn replica_follows_the_leader() {
    let b = b().leader("n1").local(local_replica(1000, Some("n1")));
    expect(
        &b,
        vec![],
        &["no action: I am (n2), a secondary, and following a leader (n1)"],
    );
    expect(
        &b.clone().local_mut(|l| l.following = Some("n3".into())),
        vec![Follow {
            leader: "n1".into(),
        }],
        &["new leader (n1)"],
    );
    expect(
        &b.clone().local_mut(|l| l.following = None),
        vec![Follow {
            leader: "n1".into(),
        }],
        &["(n1)"],
    );
    let cascade = b.clone().tags(Tags {
        replicatefrom: Some("n3".into()),
        ..Tags::default()
    });
    expect(
        &cascade,
        vec![Follow {
            leader: "n3".into(),
        }],
        &["from (n3)", "leader (n1)"],
    );
    let nostream = b.local_mut(|l| l.following = None).tags(Tags {
        nostream: true,
        ..Tags::default()
    });
    expect(&nostream, vec![], &["following a leader (n1)"]);
}

#[test]
fn primary_without_the_lock_demotes() {
    let d = expect(
        &b().leader("n1").primary(),
        vec![demote(DemoteMode::ImmediateNoLock)],
        &["demoting self because I do not have the lock and I was a leader"],
    );
    assert!(
        d.memory.was_primary,
        "a demoted primary must rewind before following"
    );
    expect(
        &b().leader("n1").primary().config(json!({"pause": true})),
        vec![],
        &["PAUSE: continue to run as primary without lock"],
    );
}

#[test]
fn lost_lock_during_promotion_demotes() {
    expect(
        &b().leader("n1").task(TaskKind::Promote),
        vec![demote(DemoteMode::ImmediateNoLock)],
        &["while running promote"],
    );
    expect(
        &b().task(TaskKind::Promote),
        vec![demote(DemoteMode::ImmediateNoLock)],
        &["held by nobody"],
    );
}

#[test]
fn replica_forgets_its_primary_past() {
    let d = b()
        .leader("n1")
        .local(local_replica(1000, Some("n1")))
        .was_primary()
        .run();
    assert!(!d.memory.was_primary);
}

// ---------------------------------------------------------------- race

#[test]
fn lone_replica_promotes_by_acquiring_the_lock() {
    let d = expect(
        &b(),
        vec![AcquireLeader, Promote],
        &["promoted self to leader by acquiring session lock"],
    );
    assert!(d.memory.was_primary);
}

#[test]
fn running_primary_retakes_the_lock() {
    expect(
        &b().primary(),
        vec![AcquireLeader],
        &["acquired session lock as a leader"],
    );
}

#[test]
fn nofailover_never_races() {
    let b = b().tags(Tags {
        nofailover: true,
        ..Tags::default()
    });
    expect(&b, vec![], &["not healthiest node", "nofailover"]);
    let zero = self::b().tags(Tags {
        failover_priority: Some(0),
        ..Tags::default()
    });
    expect(&zero, vec![], &["not healthiest node"]);
}

#[test]
fn lagging_replica_does_not_race() {
    // Default maximum_lag_on_failover is 1 MiB.
    expect(
        &b().optime(1000 + 1_048_576),
        vec![AcquireLeader, Promote],
        &["promoted"],
    );
    expect(
        &b().optime(1000 + 1_048_577),
        vec![],
        &["lags 1048577 bytes"],
    );
}

#[test]
fn sync_mode_only_listed_members_race() {
    expect(&b().sync("n1", "n3"), vec![], &["not listed in /sync"]);
    // The winner claims the sync key (conditional on the revision it read)
    // and resets its own setting before promoting.
    expect(
        &b().sync("n1", "n2"),
        vec![
            AcquireLeader,
            claim_sync("n2", 8),
            reset_sync_setting(None),
            Promote,
        ],
        &["promoted"],
    );
    // Stale key with the mode off is ignored.
    let off = b()
        .sync("n1", "n3")
        .config(json!({"synchronous_mode": false}));
    expect(&off, vec![AcquireLeader, Promote], &["promoted"]);
    // A primary not listed demotes instead of taking the key.
    expect(
        &b().primary().sync("n1", "n3"),
        vec![demote(DemoteMode::ImmediateNoLock)],
        &["not listed in /sync"],
    );
}

#[test]
fn live_primary_peer_blocks_the_race() {
    expect(
        &b().peers(vec![peer("n1", Role::Primary, 0)]),
        vec![],
        &["primary (n1) is still alive"],
    );
    let gone = vec![PeerReportExt::unreachable("n1")];
    expect(
        &b().peers(gone),
        vec![AcquireLeader, Promote],
        &["promoted"],
    );
}

#[test]
fn most_advanced_peer_wins() {
    expect(
        &b().peers(vec![peer("n3", Role::Replica, 1001)]),
        vec![],
        &["(n3) is ahead of me"],
    );
    expect(
        &b().peers(vec![peer("n3", Role::Replica, 999)]),
        vec![AcquireLeader, Promote],
        &[],
    );
    let mut nofo = peer("n3", Role::Replica, 5000);
    nofo.tags.nofailover = true;
    let mut wd = peer("n1", Role::Replica, 5000);
    wd.watchdog_failed = true;
    expect(
        &b().peers(vec![nofo, wd]),
        vec![AcquireLeader, Promote],
        &[],
    );
    // In sync mode only listed peers count.
    expect(
        &b().sync("n1", "n2")
            .peers(vec![peer("n3", Role::Replica, 5000)]),
        vec![
            AcquireLeader,
            claim_sync("n2", 8),
            reset_sync_setting(None),
            Promote,
        ],
        &[],
    );
}

#[test]
fn priority_then_name_break_ties() {
    let mut high = peer("n3", Role::Replica, 1000);
    high.tags.failover_priority = Some(5);
    expect(
        &b().peers(vec![high.clone()]),
        vec![],
        &["higher failover_priority (5 > 1)"],
    );
    let me_high = b().tags(Tags {
        failover_priority: Some(9),
        ..Tags::default()
    });
    expect(
        &me_high.peers(vec![high]),
        vec![AcquireLeader, Promote],
        &[],
    );
    expect(
        &b().peers(vec![peer("n1", Role::Replica, 1000)]),
        vec![],
        &["tie-break by name"],
    );
    expect(
        &b().peers(vec![peer("n3", Role::Replica, 1000)]),
        vec![AcquireLeader, Promote],
        &[],
    );
}

#[test]
fn timelines_gate_the_race() {
    let behind = |b: B| b.snap(|s| s.history = vec![history_line(1), history_line(2)]);
    expect(&behind(b()), vec![AcquireLeader, Promote], &[]);
    let checked = behind(b()).config(json!({"check_timeline": true}));
    expect(
        &checked,
        vec![],
        &["timeline 1 is behind the cluster timeline 3"],
    );
    expect(
        &behind(b().primary()),
        vec![demote(DemoteMode::ImmediateNoLock)],
        &["timeline 1 is behind"],
    );
}

#[test]
fn unknown_wal_position_does_not_race() {
    let b = b().local_mut(|l| {
        l.receive_lsn = None;
        l.replay_lsn = None;
    });
    expect(&b, vec![], &["WAL position is unknown"]);
}

#[test]
fn failover_candidate_races_even_when_lagging() {
    let b = b().failover(Some("n1"), Some("n2")).optime(50_000_000);
    expect(
        &b,
        vec![AcquireLeader, ClearFailover { mod_revision: 9 }, Promote],
        &["promoted"],
    );
}

#[test]
fn others_stand_back_for_a_healthy_candidate() {
    let b = b().failover(Some("n1"), Some("n3"));
    expect(
        &b.clone().peers(vec![peer("n3", Role::Replica, 0)]),
        vec![],
        &["failover candidate (n3) is healthy"],
    );
    // Candidate unreachable: the most advanced of the rest (old leader excluded) races.
    let down = b.peers(vec![
        PeerReportExt::unreachable("n3"),
        peer("n1", Role::Replica, 9999),
    ]);
    expect(
        &down,
        vec![AcquireLeader, ClearFailover { mod_revision: 9 }, Promote],
        &["promoted"],
    );
}

#[test]
fn former_leader_races_only_when_nobody_else_can() {
    let b = b().failover(Some("n2"), Some("n3"));
    expect(
        &b.clone().peers(vec![
            PeerReportExt::unreachable("n3"),
            peer("n1", Role::Replica, 0),
        ]),
        vec![],
        &["former leader"],
    );
    expect(
        &b.peers(vec![PeerReportExt::unreachable("n3")]),
        vec![AcquireLeader, ClearFailover { mod_revision: 9 }, Promote],
        &[],
    );
}

#[test]
fn paused_race() {
    let paused = json!({"pause": true});
    expect(
        &b().config(paused.clone()),
        vec![],
        &["PAUSE: no action", "no leader"],
    );
    expect(
        &b().primary().config(paused.clone()),
        vec![AcquireLeader],
        &["PAUSE: acquired session lock"],
    );
    let foreign = b()
        .primary()
        .config(paused)
        .snap(|s| s.initialize = Some(String::new()));
    expect(&foreign, vec![AcquireLeader], &["PAUSE: "]);
}

// ---------------------------------------------------------------- memory

#[test]
fn memory_tracks_cycle_leader_and_reason() {
    let d = b().leader("n1").local(local_replica(10, Some("n1"))).run();
    assert_eq!(d.memory.last_cycle_ms, Some(NOW));
    assert_eq!(d.memory.last_leader.as_deref(), Some("n1"));
    assert_eq!(d.memory.last_reason, d.reason);
    // Unreachable keeps the last known leader.
    let d2 = b()
        .unreachable()
        .memory(|m| m.last_leader = Some("n1".into()))
        .run();
    assert_eq!(d2.memory.last_leader.as_deref(), Some("n1"));
    assert_eq!(d2.memory.last_cycle_ms, Some(NOW));
}

#[test]
fn memory_tracks_the_held_key_and_the_deadline() {
    let d = b().leader("n2").primary().run();
    assert!(d.memory.held_leader_key, "{}", d.reason);
    assert_eq!(d.memory.fence_deadline_ms, Some(9_000));
    let d = b()
        .leader("n2")
        .primary()
        .config(json!({"ttl": 30, "loop_wait": 10, "retry_timeout": 10}))
        .run();
    assert_eq!(d.memory.fence_deadline_ms, Some(29_000));
    // Someone else's key, no key, or a release clears it.
    assert!(!b().leader("n1").held_lock().run().memory.held_leader_key);
    assert!(!b().primary().held_lock().run().memory.held_leader_key);
    let d = b().leader("n2").primary().shutdown().run();
    assert_eq!(d.actions, vec![Stop, ReleaseLeader]);
    assert!(!d.memory.held_leader_key);
    // A switchover hands the key over.
    let d = switchover_to("n3").held_lock().run();
    assert!(!d.memory.held_leader_key, "{}", d.reason);
    // An unreachable store keeps what was known, unless this cycle demotes.
    let kept = b().primary().held_lock().unreachable().run();
    assert!(kept.memory.held_leader_key);
    let fenced = b()
        .primary()
        .held_lock()
        .renewed_ago(9_000)
        .unreachable()
        .run();
    assert!(!fenced.memory.held_leader_key);
}

#[test]
fn start_timer_resets_once_primary_runs() {
    let d = b()
        .leader("n2")
        .primary()
        .memory(|m| m.primary_start_began_ms = Some(1))
        .run();
    assert_eq!(d.memory.primary_start_began_ms, None);
}

fn history_line(tl: u32) -> pgwarden_types::HistoryLine {
    pgwarden_types::HistoryLine {
        timeline: tl,
        switch_lsn: 1,
        reason: "no recovery target specified".into(),
        timestamp: None,
        new_leader: None,
    }
}

/// Small helpers on `PeerReport` used only here.
struct PeerReportExt;

impl PeerReportExt {
    fn unreachable(name: &str) -> crate::PeerReport {
        crate::PeerReport {
            reachable: false,
            role: None,
            wal_position: Some(Lsn(u64::MAX)),
            ..peer(name, Role::Replica, 0)
        }
    }
}

#[test]
fn a_finished_bootstrap_is_remembered_as_a_primary() {
    // The cycle in which initdb finished sees a running primary; a crash right
    // after must restart it as a primary, not promote it again from a replica.
    let d = b()
        .leader("n2")
        .primary()
        .finished(TaskKind::Initdb, true)
        .run();
    assert!(d.memory.was_primary, "{}", d.reason);
    // A clone leaves no primary past.
    let d = b().leader("n1").finished(TaskKind::Clone, true).run();
    assert!(!d.memory.was_primary, "{}", d.reason);
}

fn claim_sync(leader: &str, mod_revision: i64) -> Action {
    Action::WriteSync(crate::SyncWrite {
        state: SyncState {
            leader: Some(leader.to_string()),
            quorum: 0,
            sync_standby: None,
        },
        mod_revision: Some(mod_revision),
    })
}

fn reset_sync_setting(value: Option<&str>) -> Action {
    Action::SetSyncStandbyNames {
        value: value.map(str::to_string),
    }
}

#[test]
fn failsafe_confirmation_keeps_a_primary_through_a_dcs_outage() {
    let stale = b().primary().held_lock().renewed_ago(20_000).unreachable();
    // Without a failsafe round the stale renewal fences.
    expect(
        &stale,
        vec![demote(DemoteMode::ImmediateNoLock)],
        &["20000 ms old"],
    );
    // Every member accepted me 500 ms ago: as good as a renewal.
    let mut confirmed = stale.clone();
    confirmed.obs.failsafe_confirmed_ms = Some(NOW - 500);
    expect(&confirmed, vec![], &["failsafe mode", "500 ms ago"]);
    // An old round does not help.
    let mut old_round = stale;
    old_round.obs.failsafe_confirmed_ms = Some(NOW - 9_000);
    expect(
        &old_round,
        vec![demote(DemoteMode::ImmediateNoLock)],
        &["9000 ms old"],
    );
}

#[test]
fn failsafe_never_saves_a_primary_that_did_not_hold_the_key() {
    let mut b = b().primary().renewed_ago(20_000).unreachable();
    b.obs.failsafe_confirmed_ms = Some(NOW - 500);
    expect(
        &b,
        vec![demote(DemoteMode::ImmediateNoLock)],
        &["was not mine"],
    );
}

#[test]
fn failsafe_leader_and_listing_gate_the_race() {
    let mut accepted = b();
    accepted.obs.failsafe_leader = Some("n1".into());
    expect(
        &accepted,
        vec![],
        &["failsafe mode: (n1) still runs as the leader"],
    );
    let unlisted = b().config(json!({"failsafe_mode": true})).snap(|s| {
        s.failsafe = Some(
            [("n1".to_string(), "http://n1/patroni".to_string())]
                .into_iter()
                .collect(),
        )
    });
    expect(&unlisted, vec![], &["not listed in /failsafe"]);
}

#[test]
fn leader_publishes_failsafe_members_only_in_failsafe_mode() {
    let with_urls = |b: crate::testkit::B| {
        b.member_mut("n1", |m| m.data.api_url = "http://n1/patroni".into())
            .member_mut("n2", |m| m.data.api_url = "http://n2/patroni".into())
    };
    let on = with_urls(b().leader("n2").primary().held_lock())
        .config(json!({"failsafe_mode": true}))
        .run();
    let expected: std::collections::BTreeMap<String, String> = [
        ("n1".to_string(), "http://n1/patroni".to_string()),
        ("n2".to_string(), "http://n2/patroni".to_string()),
    ]
    .into_iter()
    .collect();
    assert!(
        on.actions.contains(&WriteFailsafe { members: expected }),
        "{:?}",
        on.actions
    );
    let off = with_urls(b().leader("n2").primary().held_lock()).run();
    assert!(!off
        .actions
        .iter()
        .any(|a| matches!(a, WriteFailsafe { .. })));
}

#[test]
fn a_switched_over_primary_waits_for_the_new_leader() {
    // The switchover demotion is remembered...
    let d = switchover_to("n3").run();
    assert_eq!(d.memory.switchover_demoted_ms, Some(NOW));
    // ...so with no leader key yet the stopped old primary does not start read-only.
    let waiting = b()
        .local(local_stopped(PgClusterState::ShutDown, false))
        .was_primary()
        .memory(|m| m.switchover_demoted_ms = Some(NOW - 500));
    expect(&waiting, vec![], &["waiting for the new leader"]);
    // After ttl it starts read-only as usual (the candidate never came).
    let late = b()
        .local(local_stopped(PgClusterState::ShutDown, false))
        .was_primary()
        .memory(|m| m.switchover_demoted_ms = Some(NOW - 20_000));
    expect(
        &late,
        vec![StartReplica { leader: None }],
        &["no leader yet"],
    );
    // The candidate holds the key but has not promoted yet: wait for it.
    let promoting = former_primary().member_mut("n1", |m| m.data.role = Role::Replica);
    expect(
        &promoting,
        vec![],
        &["waiting for leader (n1) to finish its promotion"],
    );
}

#[test]
fn slots_of_vanished_members_are_kept_for_member_slots_ttl() {
    let slots = |d: &crate::Decision| {
        d.actions
            .iter()
            .find_map(|a| match a {
                SyncSlots { members } => Some(members.clone()),
                _ => None,
            })
            .expect("SyncSlots")
    };
    let leader = || {
        b().leader("n2")
            .primary()
            .held_lock()
            .config(json!({"postgresql": {"use_slots": true}, "member_slots_ttl": 60}))
    };
    let recent = leader().memory(|m| {
        m.members_seen_ms.insert("n9".into(), NOW - 30_000);
    });
    assert_eq!(slots(&recent.run()), vec!["n1", "n3", "n9"]);
    let gone = leader().memory(|m| {
        m.members_seen_ms.insert("n9".into(), NOW - 61_000);
    });
    let d = gone.run();
    assert_eq!(slots(&d), vec!["n1", "n3"]);
    assert!(!d.memory.members_seen_ms.contains_key("n9"));
    assert_eq!(d.memory.members_seen_ms.get("n1"), Some(&NOW));
}

#[test]
fn reinitialize_from_leader_skips_clonefrom_members() {
    let mut ask = b().leader("n1").local(local_replica(1000, Some("n1")));
    ask.obs.operator_request = Some(crate::OperatorRequest::Reinitialize { from_leader: true });
    let d = expect(&ask, vec![Stop, WipeDataDir], &["reinitializing"]);
    assert!(d.memory.clone_from_leader);
    let tagged = b()
        .empty_datadir()
        .leader("n1")
        .member_mut("n3", |m| m.data.tags.clonefrom = true)
        .memory(|m| m.clone_from_leader = true);
    expect(
        &tagged,
        vec![CloneFrom {
            member: "n1".into(),
        }],
        &["from leader (n1)"],
    );
    // The clone done, the request is forgotten.
    let done = b()
        .leader("n1")
        .memory(|m| m.clone_from_leader = true)
        .finished(TaskKind::Clone, true)
        .run();
    assert!(!done.memory.clone_from_leader);
}

/// A running replica on timeline 1 that replayed up to `replay` while the
/// leader (n1) forked timeline 2 off timeline 1 at 2000.
fn replica_behind_fork(replay: u64) -> B {
    forked_at(
        b().leader("n1").local(local_replica(replay, Some("n1"))),
        2000,
        1500,
    )
    .member_mut("n1", |m| m.data.checkpoint_after_promote = Some(true))
    .memory(|m| m.last_leader = Some("n1".into()))
}

#[test]
fn replica_past_the_fork_is_rewound_after_a_ttl() {
    // Replayed past the switch point: PostgreSQL cannot follow timeline 2.
    let stuck = replica_behind_fork(2500);
    let first = expect(
        &stuck,
        vec![],
        &["no action: I am (n2), a secondary, and following a leader (n1)"],
    );
    let since = first.memory.diverged_replica_since_ms;
    assert_eq!(
        since,
        Some(stuck.obs.now_ms),
        "the first sighting is remembered"
    );
    // Still within a ttl (10 s in the test timing): nothing yet.
    let early = stuck
        .clone()
        .memory(|m| m.diverged_replica_since_ms = Some(stuck.obs.now_ms - 9_000));
    expect(&early, vec![], &["following a leader (n1)"]);
    // A whole ttl later, without pg_rewind and without permission to wipe: stay, say why.
    let late = stuck
        .clone()
        .memory(|m| m.diverged_replica_since_ms = Some(stuck.obs.now_ms - 10_000));
    expect(
        &late,
        vec![],
        &[
            "replayed timeline 1 up to 0/9C4, past its switch to timeline 2 at 0/7D0",
            "reinitialize",
        ],
    );
    // With pg_rewind: stop, then rewind from the leader.
    let rewind = late
        .clone()
        .config(json!({"postgresql": {"use_pg_rewind": true}}));
    expect(
        &rewind,
        vec![
            Stop,
            Rewind {
                source: "n1".into(),
            },
        ],
        &["pg_rewind from (n1)"],
    );
    // ...but not before the leader checkpointed after its promotion.
    expect(
        &rewind
            .clone()
            .member_mut("n1", |m| m.data.checkpoint_after_promote = Some(false)),
        vec![],
        &["waiting for leader (n1) to run and checkpoint"],
    );
    // A failed rewind wipes only when allowed.
    let failed = rewind.clone().memory(|m| {
        m.rewind_failed = true;
        m.last_leader = Some("n1".into());
    });
    expect(&failed, vec![], &["reinitialize"]);
    expect(
        &failed.config(json!({"postgresql": {"use_pg_rewind": true,
            "remove_data_directory_on_rewind_failure": true}})),
        vec![Stop, WipeDataDir],
        &["removing the data directory"],
    );
    expect(
        &late.config(json!({"postgresql": {"remove_data_directory_on_diverged_timelines": true}})),
        vec![Stop, WipeDataDir],
        &["removing the data directory"],
    );
}

#[test]
fn replica_at_or_before_the_fork_just_follows() {
    for replay in [1500, 2000] {
        let b = replica_behind_fork(replay)
            .config(json!({"postgresql": {"use_pg_rewind": true}}))
            .memory(|m| m.diverged_replica_since_ms = Some(1));
        let d = expect(&b, vec![], &["following a leader (n1)"]);
        assert_eq!(
            d.memory.diverged_replica_since_ms, None,
            "the sighting is forgotten"
        );
    }
    // Already on the new timeline (its WAL receiver says so): nothing to do.
    let moved = replica_behind_fork(2500)
        .local_mut(|l| l.timeline = Some(2))
        .config(json!({"postgresql": {"use_pg_rewind": true}}))
        .memory(|m| m.diverged_replica_since_ms = Some(1));
    expect(&moved, vec![], &["following a leader (n1)"]);
}

#[test]
fn shutdown_without_the_store_still_stops_postgres() {
    // A replica: stop PostgreSQL, there is nothing to release.
    expect(
        &b().leader("n1").unreachable().shutdown(),
        vec![Stop],
        &["shutting down: stopping postgres", "DCS is not accessible"],
    );
    // A primary whose lease is still fresh: stop it; the key expires with the lease.
    expect(
        &b().leader("n2")
            .primary()
            .held_lock()
            .unreachable()
            .shutdown(),
        vec![Stop],
        &["expires with its lease"],
    );
    // Already stopped: the agent may exit.
    expect(
        &b().local(local_stopped(PgClusterState::ShutDownInRecovery, true))
            .unreachable()
            .shutdown(),
        vec![],
        &["postgres is stopped"],
    );
    // Paused when the store was last seen: leave PostgreSQL alone, as in pause.
    expect(
        &b().leader("n1")
            .unreachable()
            .shutdown()
            .memory(|m| m.paused = true),
        vec![],
        &["paused", "alone"],
    );
    // The pause flag is remembered from the last snapshot.
    let seen = b().leader("n1").config(json!({"pause": true})).run();
    assert!(seen.memory.paused);
    assert!(!b().leader("n1").run().memory.paused);
}
