//! This node holds the leader key and PostgreSQL answers (patroni-compat §2.6, §2.7).
//!
//! Every decision here starts with `RenewLeader` (the executor stops at once
//! when the renewal fails), except in pause with a replica (the key is
//! released) and the switchover demotion (which renews first as well).
//! The leader alone maintains `history`, `status`, slots, `config` seeding and
//! `initialize`; it never promotes before renewing.
//! Scheduled switchovers (`scheduled_at`) are not executed yet: the key is
//! left in place and the reason says so.

use pgwarden_types::Lsn;

use crate::decide::{Ctx, Outcome};
use crate::observation::{Action, DemoteMode};
use crate::sync;

/// Leader key is mine; PostgreSQL runs and answers.
pub(crate) fn holding_lock(ctx: &mut Ctx<'_>) -> Outcome {
    let me = ctx.me();
    let local = ctx.local();
    let is_primary = local.in_recovery == Some(false);
    if ctx.cfg.pause {
        if is_primary {
            return Outcome::new(
                vec![Action::RenewLeader],
                format!("no action: I am ({me}), the leader with the lock"),
            );
        }
        return Outcome::new(
            vec![Action::ReleaseLeader],
            "removed leader lock because postgres is not running as primary",
        );
    }
    if !is_primary {
        let mut actions = vec![Action::RenewLeader];
        actions.extend(sync::before_promotion(ctx));
        actions.push(Action::Promote);
        return Outcome::new(
            actions,
            "promoted self to leader because I had the session lock",
        );
    }
    if let Some(out) = switchover(ctx) {
        return out;
    }
    let mut actions = upkeep(ctx);
    actions.extend(sync::maintain(ctx));
    Outcome::new(
        actions,
        format!("no action: I am ({me}), the leader with the lock"),
    )
}

/// What a healthy primary leader does every cycle.
fn upkeep(ctx: &Ctx<'_>) -> Vec<Action> {
    let snap = ctx.snap;
    let local = ctx.local();
    let mut actions = vec![Action::RenewLeader];
    if local.timeline.is_some_and(|t| t > snap.timeline()) {
        actions.push(Action::UpdateHistory);
    }
    actions.push(Action::WriteStatus);
    if ctx.cfg.use_slots {
        let keep_ms = ctx.cfg.member_slots_ttl.saturating_mul(1000);
        let mut members: std::collections::BTreeSet<String> = snap
            .members
            .iter()
            .filter(|m| m.name != ctx.me())
            .map(|m| m.name.clone())
            .collect();
        members.extend(
            ctx.mem
                .members_seen_ms
                .iter()
                .filter(|(name, seen)| {
                    name.as_str() != ctx.me() && ctx.now().saturating_sub(**seen) < keep_ms
                })
                .map(|(name, _)| name.clone()),
        );
        actions.push(Action::SyncSlots {
            members: members.into_iter().collect(),
        });
    }
    if snap.config.is_none() {
        actions.push(Action::SeedConfig);
    }
    let failsafe = failsafe_members(ctx);
    if snap.failsafe.as_ref().unwrap_or(&Default::default()) != &failsafe
        && !(failsafe.is_empty() && snap.failsafe.is_none())
    {
        actions.push(Action::WriteFailsafe { members: failsafe });
    }
    if snap.system_identifier().is_none() {
        if let Some(sysid) = local.system_identifier() {
            actions.push(Action::WriteInitialize {
                system_identifier: sysid.to_string(),
            });
        }
    }
    actions
}

/// What `/failsafe` should hold: in failsafe mode every member that publishes
/// a REST API (this leader included), otherwise nothing.
fn failsafe_members(ctx: &Ctx<'_>) -> std::collections::BTreeMap<String, String> {
    if !ctx.cfg.failsafe_mode {
        return Default::default();
    }
    ctx.snap
        .members
        .iter()
        .filter(|m| !m.data.api_url.is_empty())
        .map(|m| (m.name.clone(), m.data.api_url.clone()))
        .collect()
}

/// A scheduled switchover this late (the leader was down or paused at its
/// time) is dropped rather than surprising the operator hours later.
const STALE_SCHEDULE_MS: i64 = 60_000;

/// A `failover` key addressed to this leader (patroni-compat §2.7).
fn switchover(ctx: &Ctx<'_>) -> Option<Outcome> {
    let me = ctx.me();
    let failover = ctx.snap.failover.as_ref()?;
    let req = ctx.snap.failover_request()?;
    let clear = |why: String| {
        let mut actions = upkeep(ctx);
        actions.push(Action::ClearFailover {
            mod_revision: failover.mod_revision,
        });
        Some(Outcome::new(actions, why))
    };
    if let Some(named) = req.leader.as_deref() {
        if named != me {
            return clear(format!(
                "cleared the failover key: it names ({named}) as the leader but I am ({me})"
            ));
        }
    }
    if let Some(at) = &req.scheduled_at {
        let Ok(when) = chrono::DateTime::parse_from_rfc3339(at) else {
            return clear(format!(
                "cleared the failover key: its scheduled_at ({at}) is not an ISO 8601 time"
            ));
        };
        let due_in_ms = when.timestamp_millis() - ctx.obs.wall_clock_ms;
        if due_in_ms > 0 {
            return Some(Outcome::new(
                upkeep(ctx),
                format!(
                    "no action: I am ({me}), the leader with the lock; switchover scheduled at {at}"
                ),
            ));
        }
        if -due_in_ms > STALE_SCHEDULE_MS {
            return clear(format!(
                "cleared the failover key: the switchover scheduled at {at} is more than \
                 {} s overdue",
                STALE_SCHEDULE_MS / 1000
            ));
        }
    }
    let reference = ctx.local().write_lsn.or(ctx.snap.status.optime.map(Lsn));
    let switchover = req.leader.is_some();
    let target = match req.member.as_deref() {
        Some(candidate) if candidate == me => {
            return clear(format!(
                "cleared the failover key: the candidate ({me}) already is the leader"
            ));
        }
        Some(candidate) => {
            let verdict = match ctx.snap.member(candidate) {
                None => Err("it is not a member of the cluster".to_string()),
                Some(m) => ctx.member_can_take_over(m, reference, switchover),
            };
            if let Err(why) = verdict {
                return clear(format!(
                    "manual failover: candidate ({candidate}) is not eligible ({why}); \
                     cleared the failover key"
                ));
            }
            candidate.to_string()
        }
        None => {
            let found = ctx
                .snap
                .members
                .iter()
                .find(|m| ctx.member_can_take_over(m, reference, switchover).is_ok());
            match found {
                Some(m) => m.name.clone(),
                None => return clear(
                    "manual failover: no member is eligible to take over; cleared the failover key"
                        .to_string(),
                ),
            }
        }
    };
    Some(Outcome::new(
        vec![
            Action::RenewLeader,
            Action::Demote {
                mode: DemoteMode::Graceful,
            },
        ],
        format!("manual failover: demoting myself so that ({target}) takes over"),
    ))
}
