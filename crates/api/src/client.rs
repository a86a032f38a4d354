//! A typed HTTP client for members' REST APIs (pgwarden or Patroni 3.x/4.x).
//!
//! The agent polls peers' `GET /patroni` during leader races with a short
//! timeout; the CLI and the testbed read `/cluster`. Every request is bounded by
//! the client's timeout, never goes through an HTTP proxy from the environment
//! (peers are reached directly), and is never retried here: the caller decides.
//! Parsing is tolerant of what Patroni versions publish (`master` for `primary`,
//! missing optional fields) but a document without the fields elections depend
//! on, or with malformed tags, is an error rather than a guess.

use std::time::Duration;

use pgwarden_types::{coerce_bool, Lsn, PgState, Role, Tags, Timeline};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::documents::ClusterDocument;

/// Why a request to a member's REST API failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiClientError {
    /// Building the HTTP client failed (bad TLS setup and the like).
    #[error("cannot set up the HTTP client: {0}")]
    Setup(#[source] reqwest::Error),
    /// Connecting, sending or reading failed, or the timeout elapsed.
    #[error("cannot reach {url}: {source}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The member answered with an unexpected HTTP status.
    #[error("{url} answered HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    /// The body is not the document we asked for.
    #[error("{url} returned an unusable document: {reason}")]
    InvalidDocument { url: String, reason: String },
}

impl ApiClientError {
    /// The request did not complete within the client's timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, ApiClientError::Request { source, .. } if source.is_timeout())
    }
}

/// What a peer's `GET /patroni` says, reduced to what elections and tools need.
#[derive(Debug, Clone, PartialEq)]
pub struct PatroniReport {
    /// `state`; `None` when missing or a word we do not know.
    pub state: Option<PgState>,
    /// `role`; Patroni 3.x's `master` reads as `Primary`; `None` when missing or unknown.
    pub role: Option<Role>,
    /// Patroni's reading: not in recovery when `xlog.location` is set or the role is primary.
    /// `None` when the document has no `xlog` (PostgreSQL not queryable).
    pub in_recovery: Option<bool>,
    /// `xlog.location` on a primary, `max(received_location, replayed_location)` on a replica.
    pub wal_position: Option<Lsn>,
    pub timeline: Option<Timeline>,
    pub tags: Tags,
    pub watchdog_failed: bool,
    pub pause: bool,
    pub cluster_unlocked: bool,
    pub server_version: Option<u32>,
    pub database_system_identifier: Option<String>,
    /// `patroni.name` (3.1+).
    pub name: Option<String>,
    /// `patroni.scope`.
    pub scope: Option<String>,
    /// `patroni.version`.
    pub version: Option<String>,
    /// The whole document, for callers that need another field.
    pub raw: Value,
}

impl PatroniReport {
    /// Reads a `/patroni` document. Fails only when it is not a JSON object or its
    /// tags are malformed (a peer whose `nofailover` cannot be read must not be
    /// treated as promotable).
    pub fn from_document(doc: Value) -> Result<PatroniReport, String> {
        let obj = doc
            .as_object()
            .ok_or_else(|| format!("expected a JSON object, got {doc}"))?;
        let word = |key: &str| obj.get(key).and_then(Value::as_str).map(str::to_string);
        let role = obj
            .get("role")
            .and_then(|r| serde_json::from_value::<Role>(r.clone()).ok());
        let state = obj
            .get("state")
            .and_then(|s| serde_json::from_value::<PgState>(s.clone()).ok());

        let xlog = obj
            .get("wal")
            .filter(|w| w.is_object())
            .or_else(|| obj.get("xlog"))
            .and_then(Value::as_object);
        let position = |key: &str| xlog.and_then(|x| x.get(key)).and_then(lsn_value);
        let (in_recovery, wal_position) = match xlog {
            None => (None, None),
            Some(_) => {
                let location = position("location").filter(|l| l.0 > 0);
                let primary = location.is_some() || role == Some(Role::Primary);
                let wal = if primary {
                    location
                } else {
                    match (position("received_location"), position("replayed_location")) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b),
                    }
                };
                (Some(!primary), wal)
            }
        };
        let tags = match obj.get("tags") {
            None | Some(Value::Null) => Tags::default(),
            Some(value) => Tags::from_json(value)?,
        };
        let flag = |key: &str| obj.get(key).and_then(coerce_bool).unwrap_or(false);
        let patroni = obj.get("patroni").and_then(Value::as_object);
        let patroni_word = |key: &str| {
            patroni
                .and_then(|p| p.get(key))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        Ok(PatroniReport {
            state,
            role,
            in_recovery,
            wal_position,
            timeline: obj
                .get("timeline")
                .and_then(Value::as_u64)
                .and_then(|t| u32::try_from(t).ok()),
            tags,
            watchdog_failed: flag("watchdog_failed"),
            pause: flag("pause"),
            cluster_unlocked: flag("cluster_unlocked"),
            server_version: obj
                .get("server_version")
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok()),
            database_system_identifier: word("database_system_identifier"),
            name: patroni_word("name"),
            scope: patroni_word("scope"),
            version: patroni_word("version"),
            raw: doc,
        })
    }
}

/// Positions are integers in `/patroni`; accept `X/X` strings too.
fn lsn_value(value: &Value) -> Option<Lsn> {
    match value {
        Value::Number(n) => n.as_u64().map(Lsn),
        Value::String(s) => s.parse().ok().or_else(|| s.trim().parse().ok().map(Lsn)),
        _ => None,
    }
}

/// HTTP client for members' REST APIs.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    timeout: Duration,
    auth: Option<(String, String)>,
}

impl ApiClient {
    /// A client whose every request (connect, send, read) is bounded by `timeout`.
    ///
    /// # Panics
    /// Only if the HTTP stack cannot initialise at all, which with this crate's
    /// plain-HTTP build does not happen; use [`ApiClient::try_new`] to get an error instead.
    pub fn new(timeout: Duration) -> ApiClient {
        match ApiClient::try_new(timeout) {
            Ok(client) => client,
            Err(err) => panic!("{err}"),
        }
    }

    /// Like [`ApiClient::new`], reporting a setup failure as an error.
    pub fn try_new(timeout: Duration) -> Result<ApiClient, ApiClientError> {
        let http = http_client_builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // Peers are reached directly; an HTTP(S)_PROXY meant for the internet must not intercept them.
            .no_proxy()
            .build()
            .map_err(ApiClientError::Setup)?;
        Ok(ApiClient {
            http,
            timeout,
            auth: None,
        })
    }

    /// Sends HTTP Basic credentials with every request (`ctl.authentication` or
    /// `restapi.authentication`).
    pub fn with_basic_auth(mut self, username: &str, password: &str) -> ApiClient {
        self.auth = Some((username.to_string(), password.to_string()));
        self
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `GET /patroni` of the member at `base_url` (`http://host:port`, with or
    /// without a trailing `/patroni`, so a member key's `api_url` works as is).
    pub async fn get_patroni(&self, base_url: &str) -> Result<PatroniReport, ApiClientError> {
        let url = endpoint(base_url, "/patroni");
        let doc: Value = self.get_json(&url).await?;
        PatroniReport::from_document(doc)
            .map_err(|reason| ApiClientError::InvalidDocument { url, reason })
    }

    /// `GET /cluster` of the member at `base_url`.
    pub async fn get_cluster(&self, base_url: &str) -> Result<ClusterDocument, ApiClientError> {
        self.get_json(&endpoint(base_url, "/cluster")).await
    }

    /// The HTTP status a health endpoint (e.g. `/replica?lag=16MB`) answers to GET;
    /// any status is a successful answer here.
    pub async fn health(
        &self,
        base_url: &str,
        path_and_query: &str,
    ) -> Result<u16, ApiClientError> {
        let url = endpoint(base_url, path_and_query);
        let response = self.request(reqwest::Method::GET, &url).send().await;
        let response = response.map_err(|source| ApiClientError::Request { url, source })?;
        Ok(response.status().as_u16())
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, url);
        match &self.auth {
            Some((user, password)) => builder.basic_auth(user, Some(password)),
            None => builder,
        }
    }

    async fn get_json<T: DeserializeOwned>(&self, url: &str) -> Result<T, ApiClientError> {
        let request_error = |source| ApiClientError::Request {
            url: url.to_string(),
            source,
        };
        let response = self
            .request(reqwest::Method::GET, url)
            .send()
            .await
            .map_err(request_error)?;
        let status = response.status();
        let body = response.bytes().await.map_err(request_error)?;
        if !status.is_success() {
            let text: String = String::from_utf8_lossy(&body).chars().take(200).collect();
            return Err(ApiClientError::Status {
                url: url.to_string(),
                status: status.as_u16(),
                body: text,
            });
        }
        serde_json::from_slice(&body).map_err(|err| ApiClientError::InvalidDocument {
            url: url.to_string(),
            reason: err.to_string(),
        })
    }
}

/// Joins a member's base URL and an endpoint path, dropping a trailing `/patroni`
/// from the base (member keys publish `api_url` with it).
pub fn endpoint(base_url: &str, path: &str) -> String {
    let base = base_url.trim_end_matches('/');
    let base = base.strip_suffix("/patroni").unwrap_or(base);
    if path.starts_with('/') {
        format!("{base}{path}")
    } else {
        format!("{base}/{path}")
    }
}

/// A reqwest builder for talking to members' REST APIs over HTTP or HTTPS.
///
/// Members often use self-signed certificates, so, as Patroni does between
/// its members, server certificates are not verified; the API's own access
/// rules (Basic authentication, allowlist) protect it. rustls runs on the
/// `ring` provider, installed once for the process.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .tls_danger_accept_invalid_certs(true)
}

/// Makes `ring` the process's rustls provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_a_patroni4_replica_document() {
        let doc = json!({"state":"running","postmaster_start_time":"2026-08-01 10:00:00.123456+00:00","role":"replica",
            "server_version":170002,"xlog":{"received_location":67108968,"replayed_location":67100000,
            "replayed_timestamp":"2026-08-01 10:05:00.000001+00:00","paused":false},"timeline":5,
            "replication_state":"streaming","dcs_last_seen":1785578700,"tags":{"clonefrom":true,"nofailover":"on"},
            "database_system_identifier":"7277694203142172922",
            "patroni":{"version":"4.1.4","scope":"batman","name":"postgresql1"}});
        let report = PatroniReport::from_document(doc).unwrap();
        assert_eq!(report.role, Some(Role::Replica));
        assert_eq!(report.state, Some(PgState::Running));
        assert_eq!(report.in_recovery, Some(true));
        assert_eq!(
            report.wal_position,
            Some(Lsn(67_108_968)),
            "max(received, replayed)"
        );
        assert_eq!(report.timeline, Some(5));
        assert!(report.tags.clonefrom);
        assert!(report.tags.nofailover);
        assert!(!report.watchdog_failed);
        assert_eq!(report.server_version, Some(170_002));
        assert_eq!(report.name.as_deref(), Some("postgresql1"));
        assert_eq!(report.scope.as_deref(), Some("batman"));
        assert_eq!(report.version.as_deref(), Some("4.1.4"));
        assert_eq!(
            report.database_system_identifier.as_deref(),
            Some("7277694203142172922")
        );
    }

    #[test]
    fn reads_a_patroni3_primary_document() {
        let doc = json!({"state":"running","role":"master","server_version":150004,
            "xlog":{"location":50331808},"timeline":2,"replication":[],"watchdog_failed":true,
            "cluster_unlocked":true,"pause":true,"patroni":{"version":"3.0.2","scope":"batman"}});
        let report = PatroniReport::from_document(doc).unwrap();
        assert_eq!(report.role, Some(Role::Primary));
        assert_eq!(report.in_recovery, Some(false));
        assert_eq!(report.wal_position, Some(Lsn(50_331_808)));
        assert!(report.watchdog_failed);
        assert!(report.cluster_unlocked);
        assert!(report.pause);
        assert_eq!(report.name, None, "patroni.name exists since 3.1");
        assert_eq!(report.tags, Tags::default());
    }

    #[test]
    fn a_node_without_queryable_postgresql_has_no_position() {
        let report = PatroniReport::from_document(
            json!({"state":"stopped","role":"uninitialized","dcs_last_seen":0}),
        )
        .unwrap();
        assert_eq!(report.state, Some(PgState::Stopped));
        assert_eq!(report.role, Some(Role::Uninitialized));
        assert_eq!(report.in_recovery, None);
        assert_eq!(report.wal_position, None);
        // Words from newer versions are tolerated, not fatal.
        let report =
            PatroniReport::from_document(json!({"state":"brand new state","role":"archiver"}))
                .unwrap();
        assert_eq!((report.state, report.role), (None, None));
    }

    #[test]
    fn malformed_documents_are_errors() {
        assert!(PatroniReport::from_document(json!([1, 2])).is_err());
        let err =
            PatroniReport::from_document(json!({"role":"replica","tags":{"nofailover":"perhaps"}}))
                .unwrap_err();
        assert!(err.contains("nofailover"), "{err}");
    }

    #[test]
    fn endpoints_accept_member_api_urls() {
        assert_eq!(
            endpoint("http://10.0.0.1:8008/patroni", "/patroni"),
            "http://10.0.0.1:8008/patroni"
        );
        assert_eq!(
            endpoint("http://10.0.0.1:8008/", "/cluster"),
            "http://10.0.0.1:8008/cluster"
        );
        assert_eq!(
            endpoint("http://10.0.0.1:8008", "replica?lag=1MB"),
            "http://10.0.0.1:8008/replica?lag=1MB"
        );
    }
}
