//! The member key this node publishes (`members/<name>`).

use pgwarden_config::AgentConfig;
use pgwarden_engine::TaskKind;
use pgwarden_types::{
    DataDirState, DynamicConfig, LocalPgState, MemberData, PgState, Role, PATRONI_COMPAT_VERSION,
};

/// PostgreSQL state in Patroni's words, from what was observed and what is running.
pub fn pg_state(local: &LocalPgState, task: Option<TaskKind>) -> PgState {
    match task {
        Some(TaskKind::Initdb) => return PgState::InitializingNewCluster,
        Some(TaskKind::Clone) => return PgState::CreatingReplica,
        Some(TaskKind::Start | TaskKind::Rewind) => return PgState::Starting,
        Some(TaskKind::Restart) => return PgState::Restarting,
        Some(TaskKind::Stop) => return PgState::Stopping,
        Some(TaskKind::Promote) | None => {}
    }
    match (local.postmaster_pid.is_some(), local.accepting_connections) {
        (true, true) => PgState::Running,
        (true, false) => PgState::Starting,
        (false, _) => match local.data_dir {
            DataDirState::Initialized { .. } => PgState::Stopped,
            _ => PgState::Stopped,
        },
    }
}

/// Role in Patroni's words.
pub fn pg_role(local: &LocalPgState) -> Role {
    match (&local.data_dir, local.in_recovery) {
        (DataDirState::Empty | DataDirState::Invalid { .. }, _) => Role::Uninitialized,
        (_, Some(false)) => Role::Primary,
        _ => Role::Replica,
    }
}

/// Builds the member value from the local observation.
pub fn member_data(
    config: &AgentConfig,
    local: &LocalPgState,
    task: Option<TaskKind>,
    dynamic: &DynamicConfig,
) -> MemberData {
    let state = pg_state(local, task);
    let role = pg_role(local);
    let mut data = MemberData {
        conn_url: config.conn_url(),
        api_url: config.api_url(),
        state,
        role,
        version: PATRONI_COMPAT_VERSION.to_string(),
        tags: config.tags.clone(),
        pending_restart: local.pending_restart,
        timeline: local.timeline,
        pause: dynamic.pause,
        ..MemberData::empty()
    };
    // LSNs are published only while PostgreSQL runs (Patroni's rule).
    if state == PgState::Running {
        match role {
            Role::Primary => data.xlog_location = local.write_lsn.map(|l| l.0),
            _ => {
                data.xlog_location = local.wal_position().map(|l| l.0);
                data.receive_lsn = local.receive_lsn.map(|l| l.0);
                data.replay_lsn = local.replay_lsn.map(|l| l.0);
                data.replication_state = Some(
                    if local.streaming {
                        "streaming"
                    } else {
                        "in archive recovery"
                    }
                    .to_string(),
                );
            }
        }
    }
    data
}
