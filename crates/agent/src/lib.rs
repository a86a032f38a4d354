//! The pgwarden agent: one per PostgreSQL node.
//!
//! Each cycle the agent observes (one linearizable etcd snapshot and the local
//! PostgreSQL), asks the pure engine what to do, runs the returned actions in
//! order, publishes its member key and REST state, then waits for `loop_wait`
//! or for a wake-up (an etcd watch event, a dead postmaster, a finished task,
//! a REST request). Nothing here decides policy; the engine does.
//!
//! Invariants kept here:
//! * the lease renewal time handed to the engine is the *send* time of the
//!   last keepalive etcd confirmed, read on the monotonic clock before this
//!   cycle renews, so a process that was frozen fences before it renews;
//! * an independent fence timer stops a primary whose renewal is older than
//!   the fence deadline even when the cycle itself is stuck;
//! * PostgreSQL is started detached and survives the agent; a restarted agent
//!   adopts it from `postmaster.pid`.

mod clock;
mod cycle;
mod executor;
mod fence;
mod member;
mod operator;
mod peers;
mod rest;

use std::future::Future;
use std::sync::Arc;

use pgwarden_config::AgentConfig;
use pgwarden_dcs::{Dcs, EtcdDcs, EtcdSettings};
use pgwarden_postgres::{PgSettings, Postgres};
use pgwarden_types::DynamicConfig;

pub use cycle::Agent;

/// Why the agent could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot reach etcd at {endpoints}: {source}")]
    Etcd {
        endpoints: String,
        #[source]
        source: pgwarden_dcs::DcsError,
    },
    #[error("cannot listen for the REST API on {address}: {source} (is another agent or program using this port? change restapi.listen)")]
    RestListen {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the REST API's access rules are not usable: {reason}")]
    RestSecurity { reason: String },
    #[error("another member is already running with the name {name:?} (its REST API at {api_url} answered); every member needs a unique name")]
    DuplicateName { name: String, api_url: String },
    #[error("the data directory {path} holds a cluster with system identifier {local}, but etcd says this cluster is {stored}; refusing to run (point postgresql.data_dir elsewhere, or remove the cluster's keys with `pgwarden remove` if etcd is stale)")]
    SystemIdMismatch {
        path: String,
        local: String,
        stored: String,
    },
}

/// Settings for the local PostgreSQL derived from the agent configuration.
pub fn postgres_settings(
    config: &AgentConfig,
    dynamic: &pgwarden_types::DynamicConfig,
) -> PgSettings {
    let pg = &config.postgresql;
    PgSettings {
        data_dir: pg.data_dir.clone(),
        bin_dir: pg.bin_dir.clone(),
        listen_addresses: pg.listen_addresses.clone(),
        port: pg.port,
        connect_host: pg.connect_host.clone(),
        connect_port: pg.connect_port,
        socket_dir: None,
        scope: config.scope.clone(),
        member_name: config.name.clone(),
        database: pg.database.clone(),
        superuser: credentials(&pg.superuser),
        replication: credentials(&pg.replication),
        rewind: pg.rewind.as_ref().map(credentials),
        pgpass: pg.pgpass.clone(),
        parameters: config.merged_parameters(dynamic),
        pg_hba: pg
            .pg_hba
            .clone()
            .or_else(|| dynamic.pg_hba.clone())
            .unwrap_or_else(|| config.bootstrap.pg_hba.clone()),
        initdb_options: config.bootstrap.initdb.clone(),
        pg_ctl_timeout: pg.pg_ctl_timeout,
        run_as: None,
    }
}

fn credentials(c: &pgwarden_config::Credentials) -> pgwarden_postgres::Credentials {
    pgwarden_postgres::Credentials {
        username: c.username.clone(),
        password: c.password.clone(),
    }
}

/// Connects to etcd with the agent's settings.
pub async fn connect_dcs(config: &AgentConfig) -> Result<Arc<dyn Dcs>, AgentError> {
    let dynamic = config.effective_dynamic(None);
    let settings = EtcdSettings {
        endpoints: config.etcd.endpoints(),
        namespace: config.namespace.clone(),
        scope: config.scope.clone(),
        username: config.etcd.username.clone(),
        password: config.etcd.password.clone(),
        request_timeout: dynamic.retry_timeout.max(DynamicConfig::MIN_SUBSECOND),
    };
    let dcs = EtcdDcs::connect(settings)
        .await
        .map_err(|source| AgentError::Etcd {
            endpoints: config.etcd.hosts.join(","),
            source,
        })?;
    Ok(Arc::new(dcs))
}

/// Runs the agent until `shutdown` resolves, then hands over leadership and stops PostgreSQL.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    run_with_reload(config, None, shutdown).await
}

/// Re-reads the configuration (for `POST /reload` and SIGHUP); the message
/// of an error names the file and the key.
pub type ReloadSource = Arc<dyn Fn() -> Result<AgentConfig, String> + Send + Sync>;

/// [`run`], with a way to re-read the configuration on `POST /reload`.
/// Returns the handle that triggers a reload (for a SIGHUP handler) through
/// `on_start` before the loop begins.
pub async fn run_with_reload(
    config: AgentConfig,
    reload: Option<ReloadSource>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let dcs = connect_dcs(&config).await?;
    let dynamic = config.effective_dynamic(None);
    let postgres = Postgres::new(postgres_settings(&config, &dynamic));
    let agent = Agent::new(config, dcs, postgres).with_reload_source(reload);
    agent.run(shutdown).await
}
