//! No leader key: the leader race (patroni-compat §2.5).
//!
//! A node races (`AcquireLeader`, then `Promote` if it runs in recovery) only
//! when it is the healthiest node it can see:
//! * in synchronous mode it is listed in `/sync` (checked first, for
//!   primaries too);
//! * it is not more than `maximum_lag_on_failover` behind `status.optime`
//!   (skipped only when a failover request names this node: the operator's
//!   explicit choice), and its WAL position is known;
//! * with `check_timeline`, its timeline is not behind the cluster's;
//! * no reachable peer reports itself as primary;
//! * it may be promoted (not `nofailover`, priority > 0);
//! * no reachable, promotable peer without a failed watchdog (in sync mode:
//!   listed in `/sync`) is ahead of it; on an equal WAL position no such peer
//!   has a higher `failover_priority`; on equal priority the **lowest name
//!   wins**, so exactly one of several equal nodes proceeds.
//!
//! A failover request (`failover` key) changes who races: the named candidate
//! races; others stand back while the candidate is reachable and eligible;
//! the former leader named in the request races only when nobody else can.
//! A running primary without the key re-acquires it when healthy (Patroni)
//! and demotes itself otherwise.
//! Quorum mode is treated like `synchronous_mode: on` (only listed members
//! race; votes are not counted yet).

use pgwarden_types::Lsn;

use crate::decide::{Ctx, Outcome};
use crate::observation::{Action, DemoteMode, PeerReport};

/// The leader key is missing and PostgreSQL runs and answers.
pub(crate) fn leader_race(ctx: &mut Ctx<'_>) -> Outcome {
    let local = ctx.local();
    let is_primary = local.in_recovery == Some(false);
    if ctx.cfg.pause {
        return paused_race(ctx, is_primary);
    }
    match healthiest(ctx, is_primary) {
        Ok(()) => {
            let mut actions = vec![Action::AcquireLeader];
            if let Some(f) = &ctx.snap.failover {
                if !f.value.is_empty() {
                    actions.push(Action::ClearFailover { mod_revision: f.mod_revision });
                }
            }
            if is_primary {
                Outcome::new(actions, "acquired session lock as a leader")
            } else {
                actions.extend(crate::sync::before_promotion(ctx));
                actions.push(Action::Promote);
                Outcome::new(actions, "promoted self to leader by acquiring session lock")
            }
        }
        Err(why) if is_primary => Outcome::new(
            vec![Action::Demote { mode: DemoteMode::ImmediateNoLock }],
            format!("demoting self because I do not have the lock and I am not the healthiest node: {why}"),
        ),
        Err(why) => Outcome::none(format!("not healthiest node: {why}")),
    }
}

/// Pause: only a running primary whose system identifier matches takes the key.
fn paused_race(ctx: &Ctx<'_>, is_primary: bool) -> Outcome {
    if !is_primary {
        return Outcome::none(format!(
            "no action: I am ({}), a secondary, and there is no leader",
            ctx.me()
        ));
    }
    let init = ctx.snap.initialize.as_deref().unwrap_or("");
    let matches = init.is_empty() || Some(init) == ctx.local().system_identifier();
    if let Err(why) = gates(ctx) {
        return Outcome::none(format!("continue to run as primary without lock: {why}"));
    }
    if matches {
        Outcome::new(
            vec![Action::AcquireLeader],
            "acquired session lock as a leader",
        )
    } else {
        Outcome::none("continue to run as primary without lock: system identifier does not match")
    }
}

/// The gates that hold in pause too: `/sync` membership and the lag limit.
fn gates(ctx: &Ctx<'_>) -> Result<(), String> {
    let me = ctx.me();
    let snap = ctx.snap;
    let cfg = &ctx.cfg;
    if let Some(sync) = ctx.active_sync() {
        if !sync.lists(me) {
            return Err(format!(
                "I am ({me}) and not listed in /sync, so promoting me could lose committed transactions"
            ));
        }
    }
    let named_me = snap.failover_request().and_then(|r| r.member.as_deref()) == Some(me);
    let Some(my_wal) = ctx.local().wal_position() else {
        return Err("my WAL position is unknown".into());
    };
    if !named_me {
        if let Some(optime) = snap.status.optime {
            let lag = my_wal.lag_behind(Lsn(optime));
            if lag > cfg.maximum_lag_on_failover {
                return Err(format!(
                    "my WAL position {my_wal} lags {lag} bytes behind the last known leader position, \
                     more than maximum_lag_on_failover {}",
                    cfg.maximum_lag_on_failover
                ));
            }
        }
    }
    Ok(())
}

/// `Ok` when this node should race now; `Err` says why not.
fn healthiest(ctx: &Ctx<'_>, is_primary: bool) -> Result<(), String> {
    let me = ctx.me();
    let snap = ctx.snap;
    let cfg = &ctx.cfg;
    let local = ctx.local();
    let sync = ctx.active_sync();
    gates(ctx)?;
    if let Some(leader) = ctx.obs.failsafe_leader.as_deref().filter(|l| *l != me) {
        return Err(format!(
            "failsafe mode: ({leader}) still runs as the leader and every member accepted it"
        ));
    }
    if cfg.failsafe_mode {
        if let Some(listed) = snap.failsafe.as_ref().filter(|f| !f.is_empty()) {
            if !listed.contains_key(me) {
                return Err(format!(
                    "failsafe mode: I am ({me}) and not listed in /failsafe"
                ));
            }
        }
    }
    let request = snap.failover_request();
    let Some(my_wal) = local.wal_position() else {
        return Err("my WAL position is unknown".into());
    };
    let cluster_tl = snap.timeline();
    if is_primary || cfg.check_timeline {
        match local.timeline {
            Some(t) if t >= cluster_tl => {}
            Some(t) => {
                return Err(format!(
                    "my timeline {t} is behind the cluster timeline {cluster_tl}"
                ))
            }
            None if cfg.check_timeline => return Err("my timeline is unknown".into()),
            None => {}
        }
    }
    let reachable = || ctx.obs.peers.iter().filter(|p| p.reachable && p.name != me);
    if let Some(p) = reachable().find(|p| p.role == Some(pgwarden_types::Role::Primary)) {
        return Err(format!("primary ({}) is still alive", p.name));
    }
    if is_primary {
        // Patroni: a running primary re-takes a missing key without comparing
        // WAL with replicas (they cannot be ahead of it on its own timeline).
        return Ok(());
    }
    if !ctx.obs.me.tags.can_be_promoted() {
        return Err(format!(
            "I am ({me}) and tagged nofailover or failover_priority 0"
        ));
    }
    let eligible = |p: &&PeerReport| {
        p.tags.can_be_promoted() && !p.watchdog_failed && sync.is_none_or(|s| s.lists(&p.name))
    };
    let mut excluded: Option<&str> = None;
    if let Some(req) = request {
        excluded = req.leader.as_deref().filter(|l| *l != me);
        match req.member.as_deref() {
            Some(c) if c == me => return Ok(()),
            Some(c) if reachable().filter(eligible).any(|p| p.name == c) => {
                return Err(format!(
                    "failover candidate ({c}) is healthy and takes over"
                ));
            }
            _ => {}
        }
        if req.leader.as_deref() == Some(me) {
            if let Some(p) = reachable().find(eligible) {
                return Err(format!(
                    "I am ({me}), the former leader of a failover, and ({}) can take over",
                    p.name
                ));
            }
        }
    }
    let my_prio = ctx.obs.me.tags.effective_failover_priority();
    for peer in reachable()
        .filter(eligible)
        .filter(|p| Some(p.name.as_str()) != excluded)
    {
        let theirs = peer.wal_position.unwrap_or(Lsn(0));
        if theirs > my_wal {
            return Err(format!(
                "({}) is ahead of me: {theirs} > {my_wal}",
                peer.name
            ));
        }
        if theirs < my_wal {
            continue;
        }
        let their_prio = peer.tags.effective_failover_priority();
        if their_prio > my_prio {
            return Err(format!(
                "({}) has the same WAL position and a higher failover_priority ({their_prio} > {my_prio})",
                peer.name
            ));
        }
        if their_prio == my_prio && peer.name.as_str() < me {
            return Err(format!(
                "({}) has the same WAL position and priority and wins the tie-break by name",
                peer.name
            ));
        }
    }
    Ok(())
}
