//! The agent's side of the REST API: what `GET /patroni`, health checks and
//! `/cluster` serve. The API crate owns routes and documents; this module
//! builds the `NodeStatus` each cycle and answers `/cluster` from a fresh read.

use std::sync::Arc;

use pgwarden_api::{
    ApiBackend, ApiSecurity, BoxFuture, FailsafeRefusal as ApiFailsafeRefusal, NodeAction,
    NodeStatus,
};
use pgwarden_config::AgentConfig;
use pgwarden_dcs::Dcs;
use pgwarden_engine::OperatorRequest;
use pgwarden_engine::{DcsView, TaskKind};
use pgwarden_types::{ClusterSnapshot, DynamicConfig, LocalPgState, Lsn, SynchronousMode};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::fence::{FailsafeRefusal, Shared};
use crate::member::{pg_role, pg_state};
use crate::operator::ScheduledRestart;

pub struct RestBackend {
    shared: Arc<Shared>,
    dcs: Arc<dyn Dcs>,
    scope: String,
    name: String,
}

impl RestBackend {
    pub fn new(shared: Arc<Shared>, dcs: Arc<dyn Dcs>, scope: String, name: String) -> RestBackend {
        RestBackend {
            shared,
            dcs,
            scope,
            name,
        }
    }
}

impl ApiBackend for RestBackend {
    fn status(&self) -> NodeStatus {
        let mut status = self.shared.status().unwrap_or_else(|| {
            NodeStatus::starting(
                &self.scope,
                &self.name,
                chrono::Utc::now().timestamp_millis(),
            )
        });
        // A restart scheduled since the last cycle shows at once.
        status.scheduled_restart = self.shared.mailbox.scheduled_restart().map(|s| s.document);
        status
    }

    fn cluster(&self) -> BoxFuture<'_, Result<ClusterSnapshot, String>> {
        Box::pin(async move { self.dcs.snapshot().await.map_err(|e| e.to_string()) })
    }

    fn store(&self) -> Option<Arc<dyn Dcs>> {
        Some(self.dcs.clone())
    }

    fn node_action(&self, action: NodeAction) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            let mailbox = &self.shared.mailbox;
            let waiting = match action {
                NodeAction::Restart => mailbox.submit(OperatorRequest::Restart),
                NodeAction::Reinitialize { from_leader } => {
                    mailbox.submit(OperatorRequest::Reinitialize { from_leader })
                }
                NodeAction::ScheduleRestart { at, document } => {
                    return mailbox.schedule_restart(ScheduledRestart { at, document });
                }
                NodeAction::CancelScheduledRestart => {
                    return if mailbox.cancel_scheduled_restart() {
                        Ok("scheduled restart deleted".into())
                    } else {
                        Err("no restarts are scheduled".into())
                    };
                }
                NodeAction::Reload => {
                    mailbox.request_reload(None);
                    self.shared.wake.notify_one();
                    return Ok("reload scheduled".into());
                }
            };
            self.shared.wake.notify_one();
            // A restart waits for PostgreSQL to come back (bounded by its start timeout).
            match tokio::time::timeout(OPERATOR_WAIT, waiting).await {
                Ok(Ok(reply)) => reply,
                Ok(Err(_)) => Err("the agent stopped before answering".into()),
                Err(_) => Err(format!(
                    "no answer from the agent within {} s",
                    OPERATOR_WAIT.as_secs()
                )),
            }
        })
    }

    fn accept_failsafe(&self, leader: &str) -> Result<(), ApiFailsafeRefusal> {
        self.shared
            .accept_failsafe(leader)
            .map_err(|refusal| match refusal {
                FailsafeRefusal::Disabled => ApiFailsafeRefusal::Disabled,
                FailsafeRefusal::RunningAsLeader => ApiFailsafeRefusal::RunningAsLeader,
            })
    }
}

/// How long the REST API waits for the loop to answer an operator request.
const OPERATOR_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

pub fn spawn_rest(
    listener: TcpListener,
    backend: Arc<RestBackend>,
    security: ApiSecurity,
    tls: Option<pgwarden_api::TlsServerConfig>,
    mut stop: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.changed().await;
        };
        let app = pgwarden_api::router_with(backend, security);
        let served = match tls {
            Some(config) => pgwarden_api::serve_tls(listener, app, config, shutdown).await,
            None => pgwarden_api::serve_router(listener, app, shutdown).await,
        };
        if let Err(err) = served {
            tracing::error!("the REST API stopped: {err}");
        }
    });
}

/// The status the REST API serves, built after every cycle.
#[allow(clippy::too_many_arguments)]
pub fn node_status(
    config: &AgentConfig,
    view: &DcsView,
    local: &LocalPgState,
    reason: &str,
    task: Option<TaskKind>,
    dynamic: &DynamicConfig,
    has_lock: bool,
    dcs_last_seen: Option<i64>,
) -> NodeStatus {
    let snapshot = match view {
        DcsView::Available(s) => Some(s),
        DcsView::Unreachable => None,
    };
    let in_sync = |mode: SynchronousMode| {
        dynamic.synchronous_mode == mode
            && snapshot
                .and_then(|s| s.sync.as_ref())
                .is_some_and(|sync| sync.value.standbys().contains(&config.name.to_lowercase()))
    };
    let next_cycle = chrono::Utc::now().timestamp_millis()
        + i64::try_from(dynamic.loop_wait.as_millis()).unwrap_or(i64::MAX);
    let mut status = NodeStatus::starting(&config.scope, &config.name, next_cycle);
    status.state = pg_state(local, task);
    status.role = pg_role(local);
    status.has_lock = has_lock;
    status.pg = local.clone();
    status.tags = config.tags.clone();
    status.pause = dynamic.pause;
    status.dcs_reachable = snapshot.is_some();
    status.dcs_last_seen = dcs_last_seen;
    status.sync_standby = in_sync(SynchronousMode::On);
    status.quorum_standby = in_sync(SynchronousMode::Quorum);
    status.cluster_unlocked = snapshot.is_none_or(|s| s.leader.is_none());
    status.timeline = local.timeline;
    status.database_system_identifier = local.system_identifier().map(str::to_string);
    status.pending_restart = local.pending_restart;
    status.replication_state =
        (local.in_recovery == Some(true) && local.streaming).then(|| "streaming".to_string());
    status.last_reason = reason.to_string();
    status.ttl = dynamic.ttl;
    status.loop_wait = dynamic.loop_wait;
    status.maximum_lag_on_failover = dynamic.maximum_lag_on_failover;
    status.cluster_optime = snapshot.and_then(|s| s.status.optime).map(Lsn);
    status.server_version = local.server_version;
    status.postmaster_start_time = local.postmaster_start_time.clone();
    status
}

/// The REST API's access rules from `restapi.*`; an unusable allowlist entry
/// is an error naming it.
pub fn api_security(config: &AgentConfig) -> Result<ApiSecurity, String> {
    let allowlist = config
        .restapi
        .allowlist
        .iter()
        .map(|entry| {
            pgwarden_api::Network::parse(entry).map_err(|why| format!("restapi.allowlist: {why}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ApiSecurity {
        basic_auth: config
            .restapi
            .authentication
            .as_ref()
            .map(|a| (a.username.clone(), a.password.clone())),
        allowlist,
        allowlist_include_members: config.restapi.allowlist_include_members,
    })
}

/// HTTPS for the REST API when `restapi.certfile` is set; errors name the key and file.
pub fn api_tls(config: &AgentConfig) -> Result<Option<pgwarden_api::TlsServerConfig>, String> {
    let Some(certfile) = config.restapi.certfile.clone() else {
        return Ok(None);
    };
    let keyfile = config
        .restapi
        .keyfile
        .clone()
        .unwrap_or_else(|| certfile.clone());
    let verify_client = match config.restapi.verify_client.as_deref() {
        Some("required") => pgwarden_api::ClientVerify::Required,
        Some("optional") => pgwarden_api::ClientVerify::Optional,
        _ => pgwarden_api::ClientVerify::None,
    };
    let settings = pgwarden_api::TlsSettings {
        certfile,
        keyfile,
        cafile: config.restapi.cafile.clone(),
        verify_client,
    };
    pgwarden_api::server_config(&settings)
        .map(Some)
        .map_err(|e| e.to_string())
}
