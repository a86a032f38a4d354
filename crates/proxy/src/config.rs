//! The proxy's configuration file.
//!
//! The cluster is named the way the agent's file names it (`scope`,
//! `namespace`, `etcd3.hosts` or `etcd.hosts`), so an operator can copy those
//! lines; everything the proxy itself does lives under `proxy:` and uses
//! PgBouncer's names where PgBouncer has the setting. Unknown keys are errors
//! (serde names the key and lists the allowed ones); rules between keys are
//! checked in [`ProxyConfig::validate`] and every message names its key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read proxy configuration {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("proxy configuration {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("proxy configuration {origin}: {}", problems.join("; "))]
    Invalid {
        origin: String,
        problems: Vec<String>,
    },
}

/// `etcd3` / `etcd`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EtcdSection {
    /// `host:port` list, as a YAML list or one comma-separated string.
    #[serde(default, deserialize_with = "hosts")]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

fn hosts<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Hosts {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Hosts::deserialize(d)? {
        Hosts::One(s) => s
            .split(',')
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .collect(),
        Hosts::Many(v) => v,
    })
}

/// Pooling mode, as PgBouncer names them.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A client keeps one server connection for its whole session.
    Session,
    /// A client holds a server connection only for the length of a transaction.
    Transaction,
}

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, serde::Serialize)]
pub enum AuthType {
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
    /// No password asked (the server may still ask the proxy for one).
    #[serde(rename = "trust")]
    Trust,
}

/// `client_tls_sslmode`, PgBouncer's values.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, serde::Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ClientTlsMode {
    /// SSLRequest is answered `N`.
    #[default]
    Disable,
    /// TLS offered; plain connections accepted too.
    Allow,
    /// Same as allow (the client decides).
    Prefer,
    /// Plain connections are refused.
    Require,
}

/// `server_tls_sslmode`, libpq's values.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, serde::Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTlsMode {
    #[default]
    Disable,
    /// TLS when the server offers it, without certificate checks.
    Prefer,
    /// TLS required, without certificate checks.
    Require,
    /// TLS with the server certificate checked against `server_tls_ca_file`.
    VerifyCa,
    /// As verify-ca, and the certificate must name the host.
    VerifyFull,
}

/// `proxy:`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    /// Read-write listener: routes to the leader.
    pub listen: SocketAddr,
    /// Read-only listener: routes to replicas.
    #[serde(default)]
    pub listen_ro: Option<SocketAddr>,
    #[serde(default = "defaults::pool_mode")]
    pub pool_mode: PoolMode,
    #[serde(default = "defaults::default_pool_size")]
    pub default_pool_size: usize,
    #[serde(default)]
    pub min_pool_size: usize,
    #[serde(default = "defaults::max_client_conn")]
    pub max_client_conn: usize,
    /// Per database and node; 0 = no limit.
    #[serde(default)]
    pub max_db_connections: usize,
    /// Seconds an unused server connection is kept.
    #[serde(default = "defaults::server_idle_timeout")]
    pub server_idle_timeout: u64,
    /// Seconds after which a server connection is closed once released.
    #[serde(default = "defaults::server_lifetime")]
    pub server_lifetime: u64,
    /// Seconds a client waits for a server connection before it gets an error.
    #[serde(default = "defaults::query_wait_timeout")]
    pub query_wait_timeout: u64,
    /// Run when a session-mode client leaves; empty disables it.
    #[serde(default = "defaults::server_reset_query")]
    pub server_reset_query: String,
    /// Bytes of replay lag beyond which a replica takes no read-only clients.
    #[serde(default = "defaults::max_replica_lag")]
    pub max_replica_lag: u64,
    /// Send read-only clients to the primary when no replica qualifies.
    #[serde(default = "defaults::yes")]
    pub ro_fallback_to_primary: bool,
    #[serde(default = "defaults::auth_type")]
    pub auth_type: AuthType,
    /// PgBouncer-format user list.
    #[serde(default)]
    pub auth_file: Option<PathBuf>,
    /// User the proxy logs in as to run `auth_query` (its secret comes from `auth_file`).
    #[serde(default)]
    pub auth_user: Option<String>,
    #[serde(default = "defaults::auth_query")]
    pub auth_query: String,
    /// Users allowed on the admin console (database `pgwarden`).
    #[serde(default)]
    pub admin_users: Vec<String>,
    /// Users allowed the console's SHOW commands only.
    #[serde(default)]
    pub stats_users: Vec<String>,
    #[serde(default)]
    pub client_tls_sslmode: ClientTlsMode,
    #[serde(default)]
    pub client_tls_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub client_tls_key_file: Option<PathBuf>,
    #[serde(default)]
    pub server_tls_sslmode: ServerTlsMode,
    #[serde(default)]
    pub server_tls_ca_file: Option<PathBuf>,
    /// HTTP listener for `GET /metrics`.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Milliseconds between confirmations of the leader key when no watch event comes.
    #[serde(default = "defaults::confirm_interval_ms")]
    pub confirm_interval_ms: u64,
    /// Threads serving clients; 0 chooses (see [`ProxySection::runtime_threads`]).
    /// 1 runs everything on one thread (no cross-thread wake-ups), which is
    /// fastest when the proxy shares a small machine with its clients or
    /// servers.
    #[serde(default)]
    pub worker_threads: usize,
}

impl ProxySection {
    /// The number of runtime threads: `worker_threads`, or for 0 one per
    /// CPU, except on machines of two CPUs or fewer, where one thread is
    /// used. There the proxy shares its cores with PostgreSQL or clients,
    /// and a second thread costs more in cross-thread wake-ups than it
    /// adds (pgbench select-only, 64 clients, 2 cores: 27 against 22 us of
    /// proxy CPU per transaction; docs/proxy.md, Performance).
    pub fn runtime_threads(&self, cpus: usize) -> usize {
        match self.worker_threads {
            0 if cpus <= 2 => 1,
            0 => cpus,
            n => n,
        }
    }
}

mod defaults {
    use super::*;
    pub fn pool_mode() -> PoolMode {
        PoolMode::Transaction
    }
    pub fn default_pool_size() -> usize {
        20
    }
    pub fn max_client_conn() -> usize {
        10_000
    }
    pub fn server_idle_timeout() -> u64 {
        600
    }
    pub fn server_lifetime() -> u64 {
        3600
    }
    pub fn query_wait_timeout() -> u64 {
        120
    }
    pub fn server_reset_query() -> String {
        "DISCARD ALL".into()
    }
    pub fn max_replica_lag() -> u64 {
        1_048_576
    }
    pub fn yes() -> bool {
        true
    }
    pub fn auth_type() -> AuthType {
        AuthType::ScramSha256
    }
    pub fn auth_query() -> String {
        "SELECT rolname, CASE WHEN rolvaliduntil IS NULL OR rolvaliduntil > now() \
         THEN rolpassword END FROM pg_authid WHERE rolname = $1 AND rolcanlogin"
            .into()
    }
    pub fn confirm_interval_ms() -> u64 {
        1000
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    pub scope: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub etcd3: Option<EtcdSection>,
    #[serde(default)]
    pub etcd: Option<EtcdSection>,
    pub proxy: ProxySection,
}

fn default_namespace() -> String {
    "/service/".into()
}

impl ProxyConfig {
    pub fn load(path: &Path) -> Result<ProxyConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        ProxyConfig::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<ProxyConfig, ConfigError> {
        let config: ProxyConfig = serde_norway::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// The etcd section in use (`etcd3` wins over `etcd`).
    pub fn etcd(&self) -> Option<&EtcdSection> {
        self.etcd3.as_ref().or(self.etcd.as_ref())
    }

    /// `host:port` of each etcd member.
    pub fn etcd_endpoints(&self) -> Vec<String> {
        let Some(e) = self.etcd() else {
            return Vec::new();
        };
        let mut hosts = e.hosts.clone();
        if let Some(h) = &e.host {
            hosts.push(h.clone());
        }
        let scheme = e.protocol.as_deref().unwrap_or("http");
        hosts
            .into_iter()
            .map(|h| {
                if h.contains("://") {
                    h
                } else {
                    format!("{scheme}://{h}")
                }
            })
            .collect()
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let p = &self.proxy;
        let mut problems = Vec::new();
        if self.scope.trim().is_empty() {
            problems.push("scope: must name the cluster (the agents' `scope`)".to_string());
        }
        if self.etcd_endpoints().is_empty() {
            problems.push(
                "etcd3.hosts: no etcd member given; list the agents' etcd members as host:port"
                    .to_string(),
            );
        }
        if p.default_pool_size == 0 {
            problems.push("proxy.default_pool_size: must be at least 1".into());
        }
        if p.min_pool_size > p.default_pool_size {
            problems.push(format!(
                "proxy.min_pool_size: {} is larger than proxy.default_pool_size {}",
                p.min_pool_size, p.default_pool_size
            ));
        }
        if p.max_client_conn == 0 {
            problems.push("proxy.max_client_conn: must be at least 1".into());
        }
        if p.max_db_connections != 0 && p.max_db_connections < p.default_pool_size {
            problems.push(format!(
                "proxy.max_db_connections: {} is below proxy.default_pool_size {}; raise it or set 0 (no limit)",
                p.max_db_connections, p.default_pool_size
            ));
        }
        if p.query_wait_timeout == 0 {
            problems.push("proxy.query_wait_timeout: must be at least 1 second".into());
        }
        if Some(p.listen) == p.listen_ro {
            problems.push(format!(
                "proxy.listen_ro: {} is also proxy.listen; use two ports",
                p.listen
            ));
        }
        if p.auth_type != AuthType::Trust && p.auth_file.is_none() && p.auth_user.is_none() {
            problems.push(format!(
                "proxy.auth_file: auth_type {} needs a user list (auth_file) or auth_user with auth_query",
                serde_json::to_value(p.auth_type).map(|v| v.to_string()).unwrap_or_default()
            ));
        }
        if p.auth_user.is_some() && p.auth_file.is_none() {
            problems.push(
                "proxy.auth_file: auth_user needs its password in the user list (auth_file)".into(),
            );
        }
        let tls_on = p.client_tls_sslmode != ClientTlsMode::Disable;
        if tls_on && (p.client_tls_cert_file.is_none() || p.client_tls_key_file.is_none()) {
            problems.push(
                "proxy.client_tls_cert_file: client_tls_sslmode other than disable needs client_tls_cert_file and client_tls_key_file"
                    .into(),
            );
        }
        if matches!(
            p.server_tls_sslmode,
            ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull
        ) && p.server_tls_ca_file.is_none()
        {
            problems.push(
                "proxy.server_tls_ca_file: server_tls_sslmode verify-ca/verify-full needs the CA certificate file"
                    .into(),
            );
        }
        if p.confirm_interval_ms < 50 {
            problems.push("proxy.confirm_interval_ms: must be at least 50".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                origin: origin.to_string(),
                problems,
            })
        }
    }

    pub fn query_wait_timeout(&self) -> Duration {
        Duration::from_secs(self.proxy.query_wait_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "scope: demo\netcd3:\n  hosts: 127.0.0.1:2379,127.0.0.1:2380\nproxy:\n  listen: 127.0.0.1:6432\n  auth_file: /etc/users.txt\n";

    #[test]
    fn minimal_file_gets_pgbouncer_defaults() {
        let c = ProxyConfig::parse(MINIMAL, "test.yml").unwrap();
        assert_eq!(c.namespace, "/service/");
        assert_eq!(
            c.etcd_endpoints(),
            vec!["http://127.0.0.1:2379", "http://127.0.0.1:2380"]
        );
        assert_eq!(c.proxy.pool_mode, PoolMode::Transaction);
        assert_eq!(c.proxy.default_pool_size, 20);
        assert_eq!(c.proxy.server_reset_query, "DISCARD ALL");
        assert_eq!(c.proxy.auth_type, AuthType::ScramSha256);
    }

    #[test]
    fn automatic_worker_threads_use_one_thread_on_small_machines() {
        let mut c = ProxyConfig::parse(MINIMAL, "test.yml").unwrap();
        assert_eq!(c.proxy.runtime_threads(2), 1);
        assert_eq!(c.proxy.runtime_threads(8), 8);
        c.proxy.worker_threads = 2;
        assert_eq!(c.proxy.runtime_threads(2), 2, "an explicit value is kept");
    }

    #[test]
    fn unknown_keys_are_named() {
        let text = MINIMAL.replace("auth_file", "auth_fil");
        let err = ProxyConfig::parse(&text, "test.yml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("auth_fil") && err.contains("test.yml"),
            "{err}"
        );
    }

    #[test]
    fn rules_between_keys_name_the_key() {
        let text = format!("{MINIMAL}  min_pool_size: 50\n  listen_ro: 127.0.0.1:6432\n  client_tls_sslmode: require\n");
        let err = ProxyConfig::parse(&text, "test.yml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("proxy.min_pool_size"), "{err}");
        assert!(err.contains("proxy.listen_ro"), "{err}");
        assert!(err.contains("proxy.client_tls_cert_file"), "{err}");
    }

    #[test]
    fn bad_values_are_rejected() {
        let text = format!("{MINIMAL}  pool_mode: statement\n");
        let err = ProxyConfig::parse(&text, "t").unwrap_err().to_string();
        assert!(err.contains("statement"), "{err}");
        let no_auth = "scope: demo\netcd3:\n  hosts: [\"127.0.0.1:2379\"]\nproxy:\n  listen: 127.0.0.1:6432\n";
        let err = ProxyConfig::parse(no_auth, "t").unwrap_err().to_string();
        assert!(err.contains("proxy.auth_file"), "{err}");
        let no_etcd = "scope: demo\nproxy:\n  listen: 127.0.0.1:6432\n  auth_type: trust\n";
        let err = ProxyConfig::parse(no_etcd, "t").unwrap_err().to_string();
        assert!(err.contains("etcd3.hosts"), "{err}");
    }
}
