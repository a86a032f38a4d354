//! PostgreSQL is not running, or runs but does not answer yet (Patroni's
//! `recover()` and `handle_starting_instance`, patroni-compat §2.4, §2.9).
//!
//! Invariants: `StartPrimary` only right after `RenewLeader` and only for the
//! key holder whose data directory last ran as a primary; a former primary
//! never starts as a replica of a new leader before `pg_rewind` (when
//! `use_pg_rewind` is on) — a failed rewind leaves it down or wipes it, as
//! configured; `primary_start_timeout` bounds how long the key holder may
//! keep the cluster without a running primary.

use pgwarden_types::PgState;

use crate::decide::{Ctx, Outcome};
use crate::observation::{Action, DemoteMode};

/// No postmaster runs.
pub(crate) fn not_running(ctx: &mut Ctx<'_>) -> Outcome {
    let me = ctx.me();
    let paused = ctx.cfg.pause;
    match ctx.leader() {
        Some(l) if l == me => {
            if paused {
                return Outcome::new(
                    vec![Action::ReleaseLeader],
                    "removed leader lock because postgres is not running",
                );
            }
            if !ctx.former_primary() {
                return Outcome::new(
                    vec![Action::RenewLeader, Action::StartReplica { leader: None }],
                    "starting as readonly because I had the session lock",
                );
            }
            if let Some(out) = start_timed_out(ctx) {
                return out;
            }
            if ctx.cfg.primary_start_timeout == 0 {
                if let Some(candidate) = ctx.failover_candidate() {
                    return Outcome::new(
                        vec![Action::ReleaseLeader],
                        format!(
                            "removed leader key because postgres is not running, \
                             primary_start_timeout is 0 and ({candidate}) can take over"
                        ),
                    );
                }
            }
            Outcome::new(
                vec![Action::RenewLeader, Action::StartPrimary],
                "starting primary after failure",
            )
        }
        Some(leader) => {
            if paused {
                return Outcome::none("postgres is not running");
            }
            if ctx.former_primary() {
                if let Some(out) = rejoin_former_primary(ctx, leader) {
                    return out;
                }
            }
            let upstream = ctx.upstream(leader);
            Outcome::new(
                vec![Action::StartReplica { leader: upstream }],
                format!("starting as a secondary following leader ({leader})"),
            )
        }
        None => {
            if paused {
                return Outcome::none("postgres is not running");
            }
            Outcome::new(
                vec![Action::StartReplica { leader: None }],
                "starting as a secondary; there is no leader yet",
            )
        }
    }
}

/// A former primary that must not simply follow the new leader.
fn rejoin_former_primary(ctx: &Ctx<'_>, leader: &str) -> Option<Outcome> {
    let cfg = &ctx.cfg;
    if ctx.mem.rewind_failed {
        if cfg.remove_data_directory_on_rewind_failure
            || cfg.remove_data_directory_on_diverged_timelines
        {
            return Some(Outcome::new(
                vec![Action::WipeDataDir],
                format!("removing the data directory after pg_rewind from ({leader}) failed"),
            ));
        }
        return Some(Outcome::none(format!(
            "not starting: pg_rewind from ({leader}) failed and removing the data directory \
             is not allowed; reinitialize this member"
        )));
    }
    if !cfg.use_pg_rewind {
        return None;
    }
    let ready = ctx.snap.member(leader).is_some_and(|m| {
        m.data.state == PgState::Running && m.data.checkpoint_after_promote != Some(false)
    });
    if !ready {
        return Some(Outcome::none(format!(
            "waiting for leader ({leader}) to run and checkpoint before pg_rewind"
        )));
    }
    Some(Outcome::new(
        vec![Action::Rewind {
            source: leader.to_string(),
        }],
        format!("running pg_rewind from ({leader})"),
    ))
}

/// The key holder's primary did not come up within `primary_start_timeout`:
/// give the key up (Patroni's "demote immediate") so that a replica takes over.
pub(crate) fn start_timed_out(ctx: &Ctx<'_>) -> Option<Outcome> {
    let began = ctx.mem.primary_start_began_ms?;
    let timeout_ms = ctx.cfg.primary_start_timeout.saturating_mul(1000);
    let elapsed = ctx.now().saturating_sub(began);
    if elapsed < timeout_ms {
        return None;
    }
    let candidate = ctx.failover_candidate()?;
    // A start still in flight may yet bring up a primary: stop it, do not just drop the key.
    let running = ctx.local().postmaster_pid.is_some() || ctx.obs.running_task.is_some();
    let actions = if running {
        vec![Action::Demote {
            mode: DemoteMode::Immediate,
        }]
    } else {
        vec![Action::ReleaseLeader]
    };
    Some(Outcome::new(
        actions,
        format!(
            "removed leader key after trying and failing to start postgres for {elapsed} ms \
             (primary_start_timeout {} s); ({candidate}) can take over",
            ctx.cfg.primary_start_timeout
        ),
    ))
}

/// A postmaster runs but does not answer queries (starting, crash recovery, hung).
pub(crate) fn not_answering(ctx: &mut Ctx<'_>) -> Outcome {
    let me = ctx.me();
    if ctx.i_am_leader() {
        if let Some(out) = start_timed_out(ctx) {
            return out;
        }
        return Outcome::new(
            vec![Action::RenewLeader],
            format!("postgres is starting; I am ({me}) and keep the leader lock"),
        );
    }
    if crate::fencing::primary_risk(ctx.obs, &ctx.mem) && !ctx.cfg.pause {
        return Outcome::new(
            vec![Action::Demote { mode: DemoteMode::ImmediateNoLock }],
            "demoting self because postgres does not answer, I do not have the lock and I was a leader",
        );
    }
    Outcome::none("waiting for postgres to accept connections")
}
