//! Self-fencing of a node that is, or may be about to be, a writable primary.
//!
//! Runs before any other branch. The agent renews the lease from a dedicated
//! keepalive task, independent of the HA cycle, and reports the monotonic
//! *send* time of the last keepalive etcd confirmed
//! (`Observation::last_lease_renewal_sent_ms`, read at the start of the
//! cycle). A (possible) primary decides on that alone:
//! * it never confirmed a lease, or its last confirmed renewal is at least the
//!   fence deadline old → `Demote{ImmediateNoLock}`, whether the store
//!   answered or not. This also covers a frozen process: the keepalive task
//!   was frozen too, and a keepalive on an expired lease fails, so after a
//!   freeze long enough for the lease to expire the renewal is stale;
//! * the store did not answer this cycle (`DcsView::Unreachable`) but the
//!   renewal is fresh and the last snapshot showed the leader key under my
//!   name (`Memory::held_leader_key`) → no action at all: the key sits on my
//!   lease, which etcd keeps alive at least until the fence deadline, so
//!   nobody else can hold it. Without that knowledge (e.g. a primary that
//!   was racing for a missing key) it demotes `ImmediateNoLock`: a fresh
//!   renewal of a lease that holds no key proves nothing;
//! * store answered and renewal fresh → the other branches decide.
//!
//! A long gap since the previous cycle (a slow cycle, a short freeze) is not
//! a trigger by itself: if the renewal is still fresh the lease never expired,
//! so nobody else could have taken the key; the gap only shows in the reason.
//! While the store is unreachable the deadline is the one of the dynamic
//! configuration last seen (`Memory::fence_deadline_ms`): the lease was
//! granted with that ttl, not with the bootstrap one.
//!
//! A fencing decision is only the `Demote` action (or nothing): never
//! `RenewLeader`, `AcquireLeader` or anything needing a snapshot in the same
//! cycle. The next cycles may race again. Pause does not switch fencing off
//! (deviation from Patroni, which keeps a paused primary running through a
//! DCS outage).
//!
//! Failsafe mode (`failsafe_mode: on`): a round in which every member listed
//! in `/failsafe` accepted this node as the leader counts like a confirmed
//! renewal (`Observation::failsafe_confirmed_ms`): each of those members stays
//! out of leader races for ttl after accepting, so nobody can promote before
//! the same fence deadline passes. Without such a round the rules above apply
//! unchanged.

use crate::decide::{standby_signal, task_name, Outcome};
use crate::observation::{Action, DcsView, DemoteMode, Memory, Observation, TaskKind};

/// Whether PostgreSQL on this node may accept writes now or soon: it runs as
/// a primary, is being promoted, or a former primary is (re)starting without
/// `standby.signal`. A bootstrap (initdb) in progress does not count: no other
/// node can hold data before `initialize` names this node's system identifier.
pub(crate) fn primary_risk(obs: &Observation, mem: &Memory) -> bool {
    let local = &obs.local;
    if obs.running_task == Some(TaskKind::Initdb) {
        return false;
    }
    if local.is_running_primary() || obs.running_task == Some(TaskKind::Promote) {
        return true;
    }
    if local.postmaster_pid.is_some() && local.in_recovery == Some(false) {
        return true;
    }
    if standby_signal(local) || local.in_recovery == Some(true) {
        return false;
    }
    mem.was_primary
        && (local.postmaster_pid.is_some()
            || matches!(obs.running_task, Some(TaskKind::Start | TaskKind::Restart)))
}

/// Returns the fencing decision when this node must not go on as usual.
///
/// `previous` is the memory as handed in (what this node knew when it last
/// saw the store), `mem` the working copy (with the role learned this cycle),
/// `deadline` the fence deadline in effect.
pub(crate) fn check(
    obs: &Observation,
    previous: &Memory,
    mem: &Memory,
    deadline: u64,
) -> Option<Outcome> {
    if !primary_risk(obs, mem) {
        return None;
    }
    let me = &obs.me.name;
    let demote = |why: String| {
        Some(Outcome::new(
            vec![Action::Demote {
                mode: DemoteMode::ImmediateNoLock,
            }],
            why,
        ))
    };
    let unreachable = obs.dcs == DcsView::Unreachable;
    let dcs = if unreachable {
        "DCS is not accessible and "
    } else {
        ""
    };
    let failsafe = obs.failsafe_confirmed_ms.filter(|confirmed| {
        obs.last_lease_renewal_sent_ms
            .is_none_or(|renewed| *confirmed > renewed)
    });
    let Some(sent) = failsafe.or(obs.last_lease_renewal_sent_ms) else {
        return demote(format!(
            "demoting self ({me}) because {dcs}this process never confirmed a lease"
        ));
    };
    let age = obs.now_ms.saturating_sub(sent);
    if age >= deadline {
        let gap = previous.last_cycle_ms.map_or(String::new(), |last| {
            format!(
                " (the previous cycle was {} ms ago)",
                obs.now_ms.saturating_sub(last)
            )
        });
        return demote(format!(
            "demoting self ({me}) because {dcs}the last confirmed lease renewal is {age} ms old, \
             at least the fence deadline of {deadline} ms{gap}"
        ));
    }
    if !unreachable {
        return None;
    }
    if !previous.held_leader_key {
        return demote(format!(
            "demoting self ({me}) because DCS is not accessible and the leader key was not mine \
             when I last saw it"
        ));
    }
    let task = obs.running_task.map_or(String::new(), |kind| {
        format!("; running {}", task_name(kind))
    });
    if failsafe.is_some() {
        return Some(Outcome::none(format!(
            "DCS is not accessible; failsafe mode: every member accepted me as the leader \
             {age} ms ago, keeping the primary for another {} ms{task}",
            deadline - age
        )));
    }
    Some(Outcome::none(format!(
        "DCS is not accessible; keeping the primary while my lease is valid for another {} ms{task}",
        deadline - age
    )))
}
