//! Another member holds the leader key and PostgreSQL answers (patroni-compat §2.6 "follow").
//!
//! Invariants: a running primary without the lock is demoted at once
//! (`ImmediateNoLock`), except in pause where Patroni leaves it running;
//! a replica is pointed at its upstream (the leader or its `replicatefrom`
//! member) and otherwise left alone, unless it replayed past the point where
//! the leader's timeline forked: then it is rewound (or re-cloned) like a
//! former primary. Replicas never touch slots, history or status: that is the
//! leader's job.

use pgwarden_types::Lsn;

use crate::decide::{Ctx, Outcome};
use crate::observation::{Action, DemoteMode};

/// Leader key held by `leader` (not me); PostgreSQL runs and answers.
pub(crate) fn follow(ctx: &mut Ctx<'_>, leader: &str) -> Outcome {
    let me = ctx.me();
    let local = ctx.local();
    if local.in_recovery == Some(false) {
        if ctx.cfg.pause {
            return Outcome::none(format!(
                "continue to run as primary without lock; ({leader}) holds the leader key"
            ));
        }
        return Outcome::new(
            vec![Action::Demote {
                mode: DemoteMode::ImmediateNoLock,
            }],
            "demoting self because I do not have the lock and I was a leader",
        );
    }
    if let Some(out) = diverged_replica(ctx, leader) {
        return out;
    }
    match ctx.upstream(leader) {
        Some(upstream) if local.following.as_deref() != Some(upstream.as_str()) => {
            let reason = if upstream == leader {
                format!("I am ({me}), a secondary, and now following a new leader ({leader})")
            } else {
                format!(
                    "I am ({me}), a secondary, and now replicating from ({upstream}) \
                     under leader ({leader})"
                )
            };
            Outcome::new(vec![Action::Follow { leader: upstream }], reason)
        }
        _ => Outcome::none(format!(
            "no action: I am ({me}), a secondary, and following a leader ({leader})"
        )),
    }
}

/// A replica can replay WAL of its old timeline past the point where the new
/// leader's timeline forked: an asynchronous replica that received records the
/// promoted synchronous standby never had, or any replica ahead of a leader
/// promoted within `maximum_lag_on_failover`. PostgreSQL then refuses the new
/// timeline ("forked off current database system timeline before current
/// recovery point") and stays behind for good, so this replica needs pg_rewind
/// (or a re-clone) like a former primary (Patroni checks the same on replicas).
///
/// A replica's timeline is read from its WAL receiver, else from its last
/// restartpoint, which can lag behind a timeline switch it already replayed;
/// the condition must therefore hold for a whole `ttl` before anything is done,
/// which a healthy replica (whose WAL receiver reports the new timeline within
/// a second) never shows.
fn diverged_replica(ctx: &mut Ctx<'_>, leader: &str) -> Option<Outcome> {
    let local = ctx.local();
    let fork = local
        .timeline
        .zip(local.replay_lsn)
        .and_then(|(timeline, replay)| {
            let line = ctx.snap.history.iter().find(|h| h.timeline == timeline)?;
            let switch = Lsn(line.switch_lsn);
            (timeline < ctx.snap.timeline() && replay > switch)
                .then_some((timeline, replay, switch))
        });
    let Some((timeline, replay, switch)) = fork else {
        ctx.mem.diverged_replica_since_ms = None;
        return None;
    };
    let since = *ctx.mem.diverged_replica_since_ms.get_or_insert(ctx.now());
    if ctx.now().saturating_sub(since) < ctx.cfg.ttl.saturating_mul(1000) {
        return None;
    }
    let what = format!(
        "I replayed timeline {timeline} up to {replay}, past its switch to timeline {} at {switch}",
        timeline + 1
    );
    let cfg = &ctx.cfg;
    if ctx.mem.rewind_failed || !cfg.use_pg_rewind {
        let allowed = cfg.remove_data_directory_on_diverged_timelines
            || (ctx.mem.rewind_failed && cfg.remove_data_directory_on_rewind_failure);
        if allowed {
            return Some(Outcome::new(
                vec![Action::Stop, Action::WipeDataDir],
                format!("removing the data directory: {what}, and pg_rewind is off or failed"),
            ));
        }
        return Some(Outcome::none(format!(
            "cannot follow leader ({leader}): {what}; pg_rewind is off or failed and removing \
             the data directory is not allowed; reinitialize this member"
        )));
    }
    if !ctx.leader_ready_as_rewind_source(leader) {
        return Some(Outcome::none(format!(
            "{what}; waiting for leader ({leader}) to run and checkpoint before pg_rewind"
        )));
    }
    Some(Outcome::new(
        vec![
            Action::Stop,
            Action::Rewind {
                source: leader.to_string(),
            },
        ],
        format!("{what}: stopping to run pg_rewind from ({leader})"),
    ))
}
