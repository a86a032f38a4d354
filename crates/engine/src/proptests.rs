//! Property tests over random single observations (reliability-plan §6, 1-5),
//! plus structural rules the executor relies on.

use pgwarden_types::{DynamicConfig, LocalPgState, Lsn, PgClusterState, Role, Tags};
use proptest::prelude::*;
use serde_json::json;

use crate::testkit::*;
use crate::{Action, DcsView, Decision, DemoteMode, Observation, PeerReport, TaskKind};

#[derive(Debug, Clone)]
struct Case {
    b: B,
    cfg: DynamicConfig,
}

fn task(i: u8) -> TaskKind {
    [
        TaskKind::Initdb,
        TaskKind::Clone,
        TaskKind::Rewind,
        TaskKind::Start,
        TaskKind::Stop,
        TaskKind::Promote,
        TaskKind::Restart,
    ][usize::from(i) % 7]
}

prop_compose! {
    fn arb_peer()(
        who in 0..3usize, role_primary in prop::bool::weighted(0.15), wal in 0..3_000_000u64,
        reachable in prop::bool::weighted(0.8), nofailover in prop::bool::weighted(0.2),
        watchdog_failed in prop::bool::weighted(0.1), prio in prop::option::of(0..3i64),
    ) -> PeerReport {
        PeerReport {
            reachable,
            watchdog_failed,
            tags: Tags { nofailover, failover_priority: prio, ..Tags::default() },
            ..peer(["n1", "n3", "n2"][who], if role_primary { Role::Primary } else { Role::Replica }, wal)
        }
    }
}

prop_compose! {
    fn arb_case()(
        leader in 0..4usize,
        local_kind in 0..5u8,
        standby in any::<bool>(),
        wal in 0..3_000_000u64,
        optime in prop::option::of(0..3_000_000u64),
        unreachable in prop::bool::weighted(0.2),
        renewal_age in prop::option::of(0..40_000u64),
        gap in prop::option::of(0..40_000u64),
        was_primary in any::<bool>(),
        held_key in any::<bool>(),
        remembered_ttl in prop::option::of(prop::sample::select(vec![10u64, 30])),
        running in prop::option::of(0..7u8),
        finished in prop::option::of((0..7u8, any::<bool>())),
        shutdown in prop::bool::weighted(0.1),
        pause in prop::bool::weighted(0.15),
        sync_kind in 0..3u8,
        peers in prop::collection::vec(arb_peer(), 0..4),
        failover in 0..5u8,
        nofailover in prop::bool::weighted(0.2),
        rewind in any::<bool>(),
        ttl in prop::sample::select(vec![10u64, 30]),
        max_lag in prop::sample::select(vec![0u64, 1000, 1_048_576]),
        timeline in 1..4u32,
        history_len in 0..3usize,
        start_began in prop::option::of(0..400_000u64),
    ) -> Case {
        let (loop_wait, retry) = if ttl == 10 { (2, 4) } else { (10, 10) };
        let mut cfg_json = json!({
            "ttl": ttl, "loop_wait": loop_wait, "retry_timeout": retry, "pause": pause,
            "maximum_lag_on_failover": max_lag,
            "postgresql": {"use_pg_rewind": rewind},
        });
        if sync_kind > 0 {
            cfg_json["synchronous_mode"] = json!(true);
        }
        let cfg = DynamicConfig::from_json(&cfg_json).expect("valid config");
        let mut b = b().config(cfg_json).me_mut(|me| me.bootstrap_config = cfg.clone());
        b = match leader {
            0 => b,
            1 => b.leader("n2"),
            2 => b.leader("n1"),
            _ => b.leader("n3"),
        };
        let local = match local_kind {
            0 => LocalPgState { timeline: Some(timeline), ..local_primary(wal) },
            1 => LocalPgState { timeline: Some(timeline), ..local_replica(wal, Some("n1")) },
            2 => local_stopped(
                if standby { PgClusterState::ShutDownInRecovery } else { PgClusterState::ShutDown },
                standby,
            ),
            3 => LocalPgState {
                data_dir: initialized(PgClusterState::InCrashRecovery, standby),
                postmaster_pid: Some(3),
                ..LocalPgState::empty()
            },
            _ => LocalPgState::empty(),
        };
        b = b.local(local).peers(peers);
        if let Some(o) = optime {
            b = b.optime(o);
        }
        b = match sync_kind {
            1 => b.sync("n1", "n2"),
            2 => b.sync("n1", "n3"),
            _ => b,
        };
        b = match failover {
            1 => b.failover(Some("n1"), Some("n2")),
            2 => b.failover(Some("n1"), Some("n3")),
            3 => b.failover(Some("n2"), Some("n3")),
            4 => b.failover(Some("n1"), None),
            _ => b,
        };
        b = b.snap(|s| {
            s.history = (1..=history_len as u32)
                .map(|tl| pgwarden_types::HistoryLine {
                    timeline: tl,
                    switch_lsn: 0,
                    reason: String::new(),
                    timestamp: None,
                    new_leader: None,
                })
                .collect()
        });
        b.obs.last_lease_renewal_sent_ms = renewal_age.map(|a| NOW - a);
        b.mem.last_cycle_ms = gap.map(|g| NOW - g);
        b.mem.was_primary = was_primary;
        b.mem.held_leader_key = held_key;
        if unreachable {
            // While the store is unreachable the deadline comes from memory
            // (the ttl last seen); keep `cfg` the one the engine applies.
            b.mem.fence_deadline_ms = remembered_ttl.map(|t| t * 1000 - 1000);
        }
        b.mem.primary_start_began_ms = start_began.map(|s| NOW - s);
        b.obs.running_task = running.map(task);
        b.obs.finished_task = finished.map(|(k, ok)| crate::TaskOutcome {
            kind: task(k),
            success: ok,
            message: String::new(),
        });
        b.obs.shutdown_requested = shutdown;
        b.obs.me.tags.nofailover = nofailover;
        if unreachable {
            b.obs.dcs = DcsView::Unreachable;
        }
        let cfg = match (unreachable, remembered_ttl) {
            (true, Some(t)) => {
                let (lw, rt) = if t == 10 { (2, 4) } else { (10, 10) };
                DynamicConfig::from_json(&json!({"ttl": t, "loop_wait": lw, "retry_timeout": rt}))
                    .expect("valid config")
            }
            _ => cfg,
        };
        Case { b, cfg }
    }
}

fn is_leadership(a: &Action) -> bool {
    matches!(a, Action::AcquireLeader | Action::RenewLeader)
}

fn is_long(a: &Action) -> bool {
    matches!(
        a,
        Action::Bootstrap
            | Action::CloneFrom { .. }
            | Action::Rewind { .. }
            | Action::StartPrimary
            | Action::StartReplica { .. }
            | Action::Promote
            | Action::Demote { .. }
            | Action::Stop
    )
}

fn sync_blocks(obs: &Observation, cfg: &DynamicConfig) -> bool {
    let DcsView::Available(s) = &obs.dcs else {
        return false;
    };
    cfg.synchronous_mode != pgwarden_types::SynchronousMode::Off
        && s.sync
            .as_ref()
            .is_some_and(|v| v.value.leader.is_some() && !v.value.lists(&obs.me.name))
}

fn lag_blocks(obs: &Observation, cfg: &DynamicConfig) -> bool {
    let DcsView::Available(s) = &obs.dcs else {
        return false;
    };
    let named_me =
        s.failover_request().and_then(|r| r.member.as_deref()) == Some(obs.me.name.as_str());
    match (s.status.optime, obs.local.wal_position()) {
        (Some(o), Some(w)) => !named_me && w.lag_behind(Lsn(o)) > cfg.maximum_lag_on_failover,
        _ => false,
    }
}

fn check(case: &Case, d: &Decision) -> Result<(), TestCaseError> {
    let obs = &case.b.obs;
    let a = &d.actions;
    let deadline = case.cfg.fence_deadline_ms();
    // (1) Promote / StartPrimary only after a leadership action in the same list.
    for (i, act) in a.iter().enumerate() {
        if matches!(act, Action::Promote | Action::StartPrimary) {
            prop_assert!(
                a[..i].iter().any(is_leadership),
                "{act:?} without lease: {a:?} ({})",
                d.reason
            );
        }
    }
    let primary = obs.local.is_running_primary() && obs.running_task != Some(TaskKind::Initdb);
    let stale = obs
        .last_lease_renewal_sent_ms
        .is_none_or(|t| NOW - t >= deadline);
    // (2) A primary without a fresh renewal demotes and never renews or races.
    if primary && stale {
        prop_assert!(
            a.iter().any(|x| matches!(x, Action::Demote { .. })),
            "no demote: {a:?} ({})",
            d.reason
        );
        prop_assert!(!a.iter().any(is_leadership), "renewed while stale: {a:?}");
    }
    // (2b) A primary that cannot read the store never renews, races, promotes
    // or starts a primary; it keeps running only on a fresh renewal of the
    // lease that held its key, and then does nothing else (but stop on shutdown).
    if primary && obs.dcs == DcsView::Unreachable {
        prop_assert!(
            !a.iter()
                .any(|x| is_leadership(x) || matches!(x, Action::Promote | Action::StartPrimary)),
            "acted without a snapshot: {a:?} ({})",
            d.reason
        );
        if stale || !case.b.mem.held_leader_key {
            prop_assert_eq!(
                a,
                &vec![Action::Demote {
                    mode: DemoteMode::ImmediateNoLock
                }],
                "{}",
                d.reason
            );
        } else {
            // ...except that a shutdown stops PostgreSQL (never a risk).
            let stop_for_shutdown = obs.shutdown_requested && a == &vec![Action::Stop];
            prop_assert!(
                a.is_empty() || stop_for_shutdown,
                "unreachable, fresh: {a:?} ({})",
                d.reason
            );
        }
    }
    // (3) After a gap in which the renewal went stale (a freeze), the first
    // action of a primary is Demote.
    let gap = case
        .b
        .mem
        .last_cycle_ms
        .is_some_and(|t| NOW - t >= deadline);
    if primary && gap && stale {
        prop_assert!(
            matches!(a.first(), Some(Action::Demote { .. })),
            "frozen: {a:?} ({})",
            d.reason
        );
    }
    // (4) Sync mode: unlisted nodes never take the key.
    if sync_blocks(obs, &case.cfg) {
        prop_assert!(
            !a.contains(&Action::AcquireLeader),
            "unlisted acquired: {}",
            d.reason
        );
    }
    // (5) Lagging nodes never take the key (unless named by a manual failover).
    if lag_blocks(obs, &case.cfg) {
        prop_assert!(
            !a.contains(&Action::AcquireLeader),
            "lagging acquired: {}",
            d.reason
        );
    }
    // Fencing demotions never come with a lease action.
    if a.iter()
        .any(|x| matches!(x, Action::Demote { mode } if *mode != DemoteMode::Graceful))
    {
        prop_assert!(!a.iter().any(is_leadership), "demote + lease: {a:?}");
    }
    // While a task runs only lease renewal or demotion may be returned.
    if obs.running_task.is_some() {
        prop_assert!(
            a.iter()
                .all(|x| matches!(x, Action::RenewLeader | Action::Demote { .. })),
            "action during task: {a:?}"
        );
    }
    prop_assert!(
        a.iter().filter(|x| is_long(x)).count() <= 1,
        "two long actions: {a:?}"
    );
    // Memory bookkeeping.
    prop_assert_eq!(d.memory.last_cycle_ms, Some(NOW));
    prop_assert_eq!(&d.memory.last_reason, &d.reason);
    prop_assert!(!d.reason.is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn single_cycle_safety_properties(case in arb_case()) {
        let d = case.b.run();
        check(&case, &d)?;
    }
}
