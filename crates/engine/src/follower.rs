//! Another member holds the leader key and PostgreSQL answers (patroni-compat §2.6 "follow").
//!
//! Invariants: a running primary without the lock is demoted at once
//! (`ImmediateNoLock`), except in pause where Patroni leaves it running;
//! a replica is pointed at its upstream (the leader or its `replicatefrom`
//! member) and otherwise left alone. Replicas never touch slots, history or
//! status: that is the leader's job.

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
