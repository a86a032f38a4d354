//! Self-fencing of a node that is, or may be about to be, a writable primary.
//!
//! Runs before any other branch. A (possible) primary demotes when it cannot
//! prove on its own monotonic clock that its lease is still valid:
//! * the store did not answer this cycle (`DcsView::Unreachable`) → `Offline`;
//! * its last confirmed renewal (by send time) is older than the fence
//!   deadline, or it never confirmed one → `ImmediateNoLock`;
//! * this process was frozen: the gap since the previous cycle reaches the
//!   fence deadline → `ImmediateNoLock`, even if the snapshot still shows our
//!   name on the key (knowledge from before the freeze is not trusted).
//!
//! A fencing decision is only the `Demote` action: never `RenewLeader` or
//! `AcquireLeader` in the same cycle. The next cycles may race again.
//! Pause does not switch fencing off (deviation from Patroni, which keeps a
//! paused primary running through a DCS outage). Failsafe mode is not
//! implemented: with `failsafe_mode` on, pgwarden still demotes.

use pgwarden_types::DynamicConfig;

use crate::decide::{standby_signal, Outcome};
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

/// Returns the fencing decision when this node must demote before anything else.
///
/// `previous` is the memory as handed in (for the freeze gap), `mem` the
/// working copy (with the role learned this cycle).
pub(crate) fn check(
    obs: &Observation,
    previous: &Memory,
    mem: &Memory,
    cfg: &DynamicConfig,
) -> Option<Outcome> {
    if !primary_risk(obs, mem) {
        return None;
    }
    let me = &obs.me.name;
    let demote =
        |mode: DemoteMode, why: String| Some(Outcome::new(vec![Action::Demote { mode }], why));
    if obs.dcs == DcsView::Unreachable {
        return demote(
            DemoteMode::Offline,
            format!("demoting self ({me}) because DCS is not accessible and I was a leader"),
        );
    }
    let deadline = cfg.fence_deadline_ms();
    if let Some(last) = previous.last_cycle_ms {
        let gap = obs.now_ms.saturating_sub(last);
        if gap >= deadline {
            return demote(
                DemoteMode::ImmediateNoLock,
                format!(
                    "demoting self ({me}) because this process was frozen for {gap} ms, \
                     at least the fence deadline of {deadline} ms; the lease cannot be trusted"
                ),
            );
        }
    }
    match obs.last_lease_renewal_sent_ms {
        None => demote(
            DemoteMode::ImmediateNoLock,
            format!("demoting self ({me}) because this process never confirmed a lease"),
        ),
        Some(sent) => {
            let age = obs.now_ms.saturating_sub(sent);
            if age >= deadline {
                demote(
                    DemoteMode::ImmediateNoLock,
                    format!(
                        "demoting self ({me}) because the last confirmed lease renewal is {age} ms old, \
                         at least the fence deadline of {deadline} ms"
                    ),
                )
            } else {
                None
            }
        }
    }
}
