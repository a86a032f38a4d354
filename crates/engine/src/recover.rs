//! PostgreSQL is not running, or runs but does not answer yet (Patroni's
//! `recover()` and `handle_starting_instance`, patroni-compat §2.4, §2.9).
//!
//! Invariants: `StartPrimary` only right after `RenewLeader` and only for the
//! key holder whose data directory last ran as a primary; a former primary
//! never starts as a replica of a new leader before `pg_rewind` (when
//! `use_pg_rewind` is on) — a failed rewind leaves it down or wipes it, as
//! configured; `primary_start_timeout` bounds how long the key holder may
//! keep the cluster without a running primary.

use pgwarden_types::{DataDirState, Lsn, PgClusterState};

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
            let ttl_ms = ctx.cfg.ttl.saturating_mul(1000);
            if let Some(since) = ctx.mem.switchover_demoted_ms {
                if ctx.now().saturating_sub(since) < ttl_ms {
                    return Outcome::none(
                        "stopped for a switchover; waiting for the new leader to take the key",
                    );
                }
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
    let promoted = ctx
        .snap
        .member(leader)
        .is_some_and(|m| m.data.role == pgwarden_types::Role::Primary);
    if !promoted {
        return Some(Outcome::none(format!(
            "waiting for leader ({leader}) to finish its promotion"
        )));
    }
    let fork = timeline_fork(ctx);
    if let Fork::After { checkpoint, switch } = fork {
        return Some(Outcome::new(
            vec![Action::StartReplica {
                leader: ctx.upstream(leader),
            }],
            format!(
                "starting as a secondary following leader ({leader}) without pg_rewind: my \
                 shutdown checkpoint {checkpoint} precedes the timeline switch at {switch}"
            ),
        ));
    }
    // The new leader publishes its promotion in its member key a moment
    // before the history line that says where its timeline forked: wait for
    // it, it may spare a pg_rewind (or, without pg_rewind, a re-clone).
    if fork == Fork::Unknown && leader_history_pending(ctx) {
        return Some(Outcome::none(format!(
            "waiting for leader ({leader}) to publish its timeline history"
        )));
    }
    if !cfg.use_pg_rewind {
        return match fork {
            Fork::After { .. } | Fork::SameTimeline => None,
            Fork::Diverged { .. } | Fork::Unknown
                if cfg.remove_data_directory_on_diverged_timelines =>
            {
                Some(Outcome::new(
                    vec![Action::WipeDataDir],
                    format!(
                        "removing the data directory: it may have diverged from leader ({leader}) \
                         ({}) and use_pg_rewind is off",
                        fork.describe()
                    ),
                ))
            }
            Fork::Diverged { .. } | Fork::Unknown => Some(Outcome::none(format!(
                "not starting: this former primary may have diverged from leader ({leader}) ({}), \
                 use_pg_rewind is off and remove_data_directory_on_diverged_timelines is off; \
                 reinitialize this member",
                fork.describe()
            ))),
        };
    }
    if !ctx.leader_ready_as_rewind_source(leader) {
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

/// Where this former primary's WAL stands against the leader's timeline history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fork {
    /// Shut down cleanly, and the leader's timeline forked after the shutdown
    /// checkpoint: the leader has every record this node wrote.
    After { checkpoint: Lsn, switch: Lsn },
    /// The leader's history does not leave this node's timeline (it writes on it).
    SameTimeline,
    /// This node wrote past the point where the leader's timeline forked.
    Diverged { checkpoint: Lsn, switch: Lsn },
    /// Cannot tell (crashed, so the end of WAL is unknown, or no history yet).
    Unknown,
}

impl Fork {
    fn describe(self) -> String {
        match self {
            Fork::Diverged { checkpoint, switch } => {
                format!("my checkpoint {checkpoint} is past the timeline switch at {switch}")
            }
            Fork::Unknown => "its end of WAL cannot be compared with the timeline switch".into(),
            Fork::After { .. } | Fork::SameTimeline => "it has not diverged".into(),
        }
    }
}

fn timeline_fork(ctx: &Ctx<'_>) -> Fork {
    let local = ctx.local();
    let DataDirState::Initialized {
        cluster_state,
        checkpoint_timeline,
        ..
    } = &local.data_dir
    else {
        return Fork::Unknown;
    };
    let Some(line) = ctx
        .snap
        .history
        .iter()
        .find(|h| h.timeline == *checkpoint_timeline)
    else {
        return if ctx.snap.timeline() == *checkpoint_timeline && !leader_history_pending(ctx) {
            Fork::SameTimeline
        } else {
            Fork::Unknown
        };
    };
    let Some(checkpoint) = local.checkpoint_lsn else {
        return Fork::Unknown;
    };
    let switch = Lsn(line.switch_lsn);
    if checkpoint >= switch {
        return Fork::Diverged { checkpoint, switch };
    }
    if *cluster_state == PgClusterState::ShutDown {
        Fork::After { checkpoint, switch }
    } else {
        Fork::Unknown
    }
}

/// The leader promoted onto a newer timeline than the history key shows yet.
fn leader_history_pending(ctx: &Ctx<'_>) -> bool {
    let Some(leader) = ctx.leader().and_then(|l| ctx.snap.member(l)) else {
        return false;
    };
    leader
        .data
        .timeline
        .is_some_and(|t| t > ctx.snap.timeline())
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
