//! Empty or foreign data directories: the bootstrap race, cloning a new
//! replica, and the system identifier checks (patroni-compat §2.2 steps 9-10, §2.3).
//!
//! Invariants: initdb is only ever started right after `RaceInitialize` in the
//! same decision (the executor stops when the race is lost), never when the
//! `initialize` key exists or the data directory holds a cluster; a data
//! directory whose system identifier differs from `initialize` is never
//! started. Cloning never starts while another long action runs (checked by
//! the caller).

use pgwarden_types::{PgState, Role};

use crate::decide::{Ctx, Outcome};
use crate::observation::Action;

/// Data directory missing or empty.
pub(crate) fn empty_datadir(ctx: &mut Ctx<'_>) -> Outcome {
    let me = ctx.me();
    if ctx.i_am_leader() {
        return Outcome::new(
            vec![Action::ReleaseLeader],
            format!("released the leader lock because the data directory of ({me}) is empty"),
        );
    }
    if ctx.cfg.pause {
        return Outcome::none("data directory is empty; not bootstrapping while paused");
    }
    let snap = ctx.snap;
    match snap.leader_name() {
        Some(leader) => {
            let source = snap
                .members
                .iter()
                .filter(|m| m.name != leader && m.name != me)
                .filter(|_| !ctx.mem.clone_from_leader)
                .find(|m| {
                    m.data.tags.clonefrom
                        && m.data.state == PgState::Running
                        && m.data.role != Role::Uninitialized
                })
                .map(|m| m.name.as_str());
            match source {
                Some(replica) => Outcome::new(
                    vec![Action::CloneFrom {
                        member: replica.to_string(),
                    }],
                    format!("trying to bootstrap from replica ({replica})"),
                ),
                None => Outcome::new(
                    vec![Action::CloneFrom {
                        member: leader.to_string(),
                    }],
                    format!("trying to bootstrap from leader ({leader})"),
                ),
            }
        }
        None if snap.initialize.is_none() => {
            let may_init = ctx.obs.me.can_bootstrap && !ctx.obs.me.tags.nofailover;
            if may_init {
                Outcome::new(
                    vec![Action::RaceInitialize, Action::Bootstrap],
                    "trying to bootstrap a new cluster",
                )
            } else {
                Outcome::none("waiting for leader to bootstrap")
            }
        }
        None => Outcome::none("waiting for leader to bootstrap"),
    }
}

/// The data directory is not empty but holds no usable cluster.
pub(crate) fn invalid_datadir(ctx: &mut Ctx<'_>, reason: &str) -> Outcome {
    let me = ctx.me();
    let actions = if ctx.i_am_leader() {
        vec![Action::ReleaseLeader]
    } else {
        Vec::new()
    };
    Outcome::new(
        actions,
        format!(
            "data directory of ({me}) is not a valid cluster ({reason}); reinitialize this member"
        ),
    )
}

/// Compares the local system identifier with `initialize`.
///
/// `Err` is the final outcome (refusal); `Ok` holds actions to run before the
/// rest of the cycle (adopting an existing cluster).
pub(crate) fn check_sysid(ctx: &mut Ctx<'_>, local_sysid: &str) -> Result<Vec<Action>, Outcome> {
    let snap = ctx.snap;
    if let Some(cluster_sysid) = snap.system_identifier() {
        if cluster_sysid != local_sysid {
            return Err(Outcome::none(format!(
                "system identifier mismatch: the data directory has {local_sysid} but the \
                 initialize key holds {cluster_sysid}; refusing to run this PostgreSQL"
            )));
        }
        return Ok(Vec::new());
    }
    if snap.initialize.is_none() && snap.leader.is_none() {
        let local = ctx.local();
        if local.postmaster_pid.is_some() && local.in_recovery == Some(true) {
            return Err(Outcome::none(
                "the cluster has no initialize key and this PostgreSQL runs as a replica; \
                 start pgwarden on the primary first",
            ));
        }
        return Ok(vec![Action::WriteInitialize {
            system_identifier: local_sysid.to_string(),
        }]);
    }
    Ok(Vec::new())
}
