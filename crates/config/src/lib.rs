//! Loading and validating the pgwarden agent configuration.
//!
//! The file format is Patroni's YAML schema for the common subset, so an
//! existing Patroni file loads unchanged. [`load_path`] / [`load_str`] /
//! [`load_env`] read YAML (a file, or a directory of `*.yml`/`*.yaml` merged in
//! sorted order), apply `PATRONI_*` / `PGWARDEN_*` environment overrides
//! (`PGWARDEN_` wins; env wins over the file) and return a typed, validated
//! [`AgentConfig`].
//!
//! # Invariants
//! * A key Patroni knows but pgwarden does not implement yields one warning
//!   listing all of them, never a refusal; a key nobody knows is an error with
//!   a did-you-mean suggestion naming the full dotted path.
//! * All problems are collected and reported together, each naming the key,
//!   the bad value (never a password) and what is allowed.
//! * Values are not silently corrected: the timing rule
//!   `loop_wait + 2*retry_timeout <= ttl` is enforced by rejecting the file.
//! * The environment is an injected lookup; nothing here reads or modifies the
//!   process environment or holds global state. The only I/O is reading the
//!   configuration path (and probing the injected `PATH` for `pg_ctl` when
//!   `postgresql.bin_dir` is absent).

mod address;
mod env;
mod error;
mod schema;
mod source;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pgwarden_types::{DynamicConfig, Tags};
use serde_json::{Map, Value};

pub use error::{ConfigError, Problem};

/// Default DCS namespace (Patroni's `/service`).
pub const DEFAULT_NAMESPACE: &str = "/service/";

/// Default `postgresql.bin_dir` when neither the file nor `PATH` gives one.
pub const DEFAULT_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// Parameters passed on the postmaster command line (compat spec §3.3): they
/// only come from dynamic configuration; local values are ignored.
pub const POSTMASTER_CLI_PARAMETERS: &[&str] = &[
    "listen_addresses",
    "port",
    "cluster_name",
    "wal_level",
    "hot_standby",
    "max_connections",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
    "track_commit_timestamp",
    "max_replication_slots",
    "max_worker_processes",
    "wal_log_hints",
];

/// The validated configuration of one agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub scope: String,
    /// As given (default `/service/`); the DCS layer joins it with the scope.
    pub namespace: String,
    pub name: String,
    pub restapi: RestApiConfig,
    pub etcd: EtcdConfig,
    pub bootstrap: BootstrapConfig,
    pub postgresql: PostgresqlConfig,
    pub tags: Tags,
    pub watchdog: WatchdogConfig,
    /// One line per warning (unimplemented Patroni keys, defaults applied) for the caller to log.
    pub warnings: Vec<String>,
}

/// `restapi`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestApiConfig {
    /// `host:port` to bind; `*`/empty host normalized to `0.0.0.0`.
    pub listen: String,
    /// `host:port` peers use; never a wildcard.
    pub connect_address: String,
    pub authentication: Option<BasicAuth>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub cafile: Option<PathBuf>,
    /// `none`, `optional` or `required` (lower case).
    pub verify_client: Option<String>,
    pub allowlist: Vec<String>,
    /// Also admit the hosts of the members' REST APIs (from the store).
    pub allowlist_include_members: bool,
}

/// HTTP basic authentication for the REST API's write endpoints.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// `etcd3` (or `etcd`, read the same way: pgwarden speaks only the v3 API).
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `host:port` of each member (default port 2379; IPv6 in brackets).
    pub hosts: Vec<String>,
    /// `http` or `https`.
    pub protocol: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl EtcdConfig {
    /// `protocol://host:port` of each member, as gRPC clients want them.
    pub fn endpoints(&self) -> Vec<String> {
        self.hosts
            .iter()
            .map(|h| format!("{}://{h}", self.protocol))
            .collect()
    }
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("hosts", &self.hosts)
            .field("protocol", &self.protocol)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("cacert", &self.cacert)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

/// `bootstrap`.
#[derive(Debug, Clone, PartialEq)]
pub struct BootstrapConfig {
    /// `bootstrap.dcs` as written to the DCS `config` key at cluster creation
    /// (YAML 1.1 booleans and numeric strings of known keys normalized; unknown
    /// keys kept for Patroni peers). `{}` when absent.
    pub dcs_raw: Value,
    /// Typed, validated view of `dcs_raw`.
    pub dcs: DynamicConfig,
    /// Rendered initdb switches, e.g. `--encoding=UTF8`, `--data-checksums`.
    pub initdb: Vec<String>,
    /// Lines appended to the initdb-generated pg_hba.conf.
    pub pg_hba: Vec<String>,
    /// Whether the file had a `bootstrap` section.
    pub present: bool,
}

/// `postgresql`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresqlConfig {
    /// `listen_addresses` from `postgresql.listen` (hosts joined by `,`).
    pub listen_addresses: String,
    pub port: u16,
    /// Host other nodes connect to (unbracketed, as libpq wants it).
    pub connect_host: String,
    pub connect_port: u16,
    /// Absolute.
    pub data_dir: PathBuf,
    pub bin_dir: PathBuf,
    /// Default: `<data_dir parent>/pgpass-<name>` (or `/tmp/pgpass-<name>`).
    pub pgpass: PathBuf,
    pub superuser: Credentials,
    pub replication: Credentials,
    pub rewind: Option<Credentials>,
    /// Local `postgresql.parameters`, rendered as strings (booleans as on/off).
    pub parameters: BTreeMap<String, String>,
    pub pg_hba: Option<Vec<String>>,
    pub use_pg_rewind: Option<bool>,
    pub remove_data_directory_on_rewind_failure: Option<bool>,
    pub remove_data_directory_on_diverged_timelines: Option<bool>,
    /// Default 60 s.
    pub pg_ctl_timeout: Duration,
    /// Default `postgres`.
    pub database: String,
}

/// A PostgreSQL login.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// `watchdog.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WatchdogMode {
    Off,
    /// Use a watchdog when one is available (Patroni's default).
    #[default]
    Automatic,
    /// Refuse leadership without a working watchdog.
    Required,
}

/// `watchdog`: `mode` switches pgwarden's software watchdog (a guard process
/// that stops a primary's PostgreSQL when the agent stops renewing its
/// lease) on (`automatic`, `required`) or off; `device` and `safety_margin`
/// are Patroni's kernel-watchdog settings and are ignored with a warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchdogConfig {
    pub mode: WatchdogMode,
    pub device: Option<PathBuf>,
    /// Seconds; -1 means ttl/2. Default 5.
    pub safety_margin: i64,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig {
            mode: WatchdogMode::Automatic,
            device: None,
            safety_margin: 5,
        }
    }
}

impl AgentConfig {
    /// The REST URL published in the member key: `http(s)://connect_address/patroni`.
    pub fn api_url(&self) -> String {
        let scheme = if self.restapi.certfile.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}/patroni", self.restapi.connect_address)
    }

    /// The connection URL published in the member key: `postgres://host:port/database`.
    pub fn conn_url(&self) -> String {
        format!(
            "postgres://{}:{}/{}",
            address::bracket(&self.postgresql.connect_host),
            self.postgresql.connect_port,
            self.postgresql.database
        )
    }

    /// The dynamic configuration in force: the DCS `config` key when it exists,
    /// else `bootstrap.dcs`.
    ///
    /// A `config` key that does not validate (written by hand or by an older
    /// Patroni that auto-corrects timing) is logged and `bootstrap.dcs` is used.
    pub fn effective_dynamic(&self, cluster_config: Option<&Value>) -> DynamicConfig {
        match cluster_config.filter(|v| !v.is_null()) {
            None => self.bootstrap.dcs.clone(),
            Some(value) => {
                let mut value = value.clone();
                validate::normalize_dynamic(&mut value);
                DynamicConfig::from_json(&value).unwrap_or_else(|e| {
                    tracing::warn!(
                        key = %e.key,
                        problem = %e.problem,
                        "the DCS config key is invalid; using bootstrap.dcs from the local configuration"
                    );
                    self.bootstrap.dcs.clone()
                })
            }
        }
    }

    /// PostgreSQL parameters to run with: the dynamic ones overridden by the
    /// local ones, except the postmaster command-line set
    /// ([`POSTMASTER_CLI_PARAMETERS`]), which only comes from dynamic
    /// configuration; `listen_addresses`/`port` always come from
    /// `postgresql.listen` and `cluster_name` is the scope, as in Patroni.
    pub fn merged_parameters(&self, dynamic: &DynamicConfig) -> BTreeMap<String, String> {
        let mut out = dynamic.parameters.clone();
        for (k, v) in &self.postgresql.parameters {
            if !POSTMASTER_CLI_PARAMETERS.contains(&k.as_str()) {
                out.insert(k.clone(), v.clone());
            }
        }
        out.insert(
            "listen_addresses".into(),
            self.postgresql.listen_addresses.clone(),
        );
        out.insert("port".into(), self.postgresql.port.to_string());
        out.insert("cluster_name".into(), self.scope.clone());
        out
    }
}

/// Loads a configuration file or directory, then applies environment overrides.
pub fn load_path(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<AgentConfig, ConfigError> {
    let (tree, origin) = source::read_path(path)?;
    finish(tree, &origin, env, true)
}

/// Loads configuration text; `origin` names it in messages (e.g. the file name).
pub fn load_str(
    yaml: &str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<AgentConfig, ConfigError> {
    let tree = source::parse_yaml(yaml, origin)?;
    finish(tree, origin, env, true)
}

/// Loads without a path, as Patroni does: the whole YAML from
/// `PGWARDEN_CONFIGURATION`/`PATRONI_CONFIGURATION` (other variables are then
/// ignored, with a warning), else the environment variables alone.
pub fn load_env(env: &dyn Fn(&str) -> Option<String>) -> Result<AgentConfig, ConfigError> {
    match env::lookup(env, "CONFIGURATION") {
        Some((var, yaml)) => {
            let tree = source::parse_yaml(&yaml, &var)?;
            let mut config = finish(tree, &var, env, false)?;
            let ignored: Vec<String> = env::all_suffixes()
                .iter()
                .filter_map(|suffix| env::lookup(env, suffix).map(|(v, _)| v))
                .collect();
            if !ignored.is_empty() {
                config.warnings.push(format!(
                    "{} ignored because the configuration comes from {var}",
                    ignored.join(", ")
                ));
            }
            Ok(config)
        }
        None => finish(Value::Object(Map::new()), "environment", env, true),
    }
}

/// [`load_path`] when a path is given, else [`load_env`].
pub fn load(
    path: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<AgentConfig, ConfigError> {
    match path {
        Some(p) => load_path(p, env),
        None => load_env(env),
    }
}

fn finish(
    mut tree: Value,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
    apply_env: bool,
) -> Result<AgentConfig, ConfigError> {
    if !tree.is_object() {
        return Err(ConfigError::Invalid {
            origin: origin.to_string(),
            problems: vec![Problem {
                key: "(top level)".into(),
                message:
                    "the configuration must be a mapping of settings (scope: ..., name: ..., ...)"
                        .into(),
            }],
        });
    }
    let applied = if apply_env {
        env::apply(&mut tree, env)
    } else {
        Default::default()
    };
    let keys = schema::check_keys(&tree);
    let mut ctx = validate::Ctx::new(&tree, &applied.sources, env);
    ctx.unimplemented = keys.unimplemented;
    ctx.warnings = keys.ignored;
    let (config, mut problems, _warnings) = validate::build(ctx);
    let mut all = applied.problems;
    all.extend(keys.unknown);
    all.append(&mut problems);
    match config {
        Some(config) if all.is_empty() => Ok(config),
        _ => Err(ConfigError::Invalid {
            origin: origin.to_string(),
            problems: all,
        }),
    }
}
