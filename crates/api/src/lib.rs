//! pgwarden's Patroni-compatible REST API.
//!
//! * [`NodeStatus`]: the plain data the agent publishes after every cycle.
//! * Pure response builders: [`patroni_document`] (`GET /patroni` and the body of
//!   GET health checks), [`cluster_document`] (`GET /cluster`),
//!   [`history_document`] (`GET /history`) and the health-check rules
//!   [`health_status`] / [`health_status_at`] with [`HealthQuery`].
//! * [`serve`]: an axum server over an already-bound listener and a shutdown
//!   future; the agent supplies its state through [`ApiBackend`], and later
//!   endpoints extend [`router`].
//! * [`ApiClient`]: a typed client for members' REST APIs (pgwarden or Patroni
//!   3.x/4.x), used by agents during leader races, by the CLI and the testbed.
//!
//! # Guarantees
//! * Responses are computed from data alone: given the same `NodeStatus`, query
//!   and `now`, every health endpoint answers the same status; the documents do
//!   not read the clock or the network. The server never writes to the store and
//!   never decides anything.
//! * `/patroni` has Patroni 4.1's field set and kinds: `role` is `primary`,
//!   `replica` or `standby_leader` while PostgreSQL is queryable (decided by
//!   `pg_is_in_recovery()`, not by what the agent hoped), `xlog` holds integer
//!   positions (never `null`, an unknown position is 0), `patroni.version` is
//!   `PATRONI_COMPAT_VERSION`. When PostgreSQL is not queryable only `state`
//!   (`unknown` instead of `running`), `role` and the cluster-level fields are
//!   present, so peers count the node as unhealthy. One extension field exists:
//!   `pgwarden.reason`, the engine's last reason line, when not empty.
//! * Health checks (`/`, `/primary`, `/read-write`, `/master`, `/leader`,
//!   `/standby-leader`, `/standby_leader`, `/replica`, `/read-only`,
//!   `/synchronous`, `/sync`, `/asynchronous`, `/async`, `/quorum`,
//!   `/read-only-sync`, `/read-only-synchronous`, `/read-only-quorum`,
//!   `/health`, `/liveness`, `/readiness`) follow Patroni 4.x, including
//!   `lag=` with units, `replication_state=`, `mode=` and `tag_<k>=<v>`. Any other
//!   path answers 503. GET answers the `/patroni` document as JSON body (except
//!   `/liveness` and `/readiness`, status only); HEAD and OPTIONS answer the
//!   status with an empty body on every path.
//! * Every JSON response carries `Content-Type: application/json`.
//! * The client bounds every request by its timeout, ignores proxy environment
//!   variables, never retries, and reads Patroni 3.x documents (`master`).
//!
//! # Deliberate differences from Patroni
//! * Health paths match exactly (a trailing `/` is ignored); Patroni matches
//!   substrings, so `/foo-replica` is a replica check there and a 503 here.
//! * `/primary` (and `/`, `/read-write`, `/master`) also requires PostgreSQL to
//!   be out of recovery, so writes are never routed to a lock holder that has not
//!   finished promoting.
//! * HEAD/OPTIONS on `/liveness` and `/readiness` compute those checks (Patroni
//!   answers them with the generic handler, i.e. 503).
//! * HTTP framing headers (`Date`, `Content-Length: 0`) accompany status-only
//!   responses; Patroni writes a bare status line. Load balancers read only the
//!   status.
//! * Replica lag is measured against the furthest of the leader's published
//!   optime, the WAL receiver's `latest_end_lsn` and this replica's received
//!   position (Patroni uses the first two; the third is a lower bound of the
//!   leader's position and only matters when the others are unknown).

mod actions;
mod client;
mod documents;
mod health;
mod metrics;
mod security;
mod server;
mod status;
mod tls;

pub use actions::{merge_patch, FailsafeRefusal, NodeAction};
pub use client::{
    endpoint, http_client_builder, install_crypto_provider, ApiClient, ApiClientError,
    PatroniReport,
};
pub use documents::{
    cluster_document, history_document, is_standby_cluster, patroni_document, ClusterDocument,
    ClusterMemberDocument, ReportedLag, ReportedLsn, ScheduledSwitchover,
};
pub use health::{
    health_status, health_status_at, is_status_only, parse_size, HealthQuery, ReadinessMode,
};
pub use metrics::metrics_text;
pub use rustls::ServerConfig as TlsServerConfig;
pub use security::{ApiSecurity, Network};
pub use server::{
    json_response, router, router_with, serve, serve_router, status_only_response, ApiBackend,
    BoxFuture,
};
pub use status::NodeStatus;
pub use tls::{serve_tls, server_config, ClientVerify, TlsError, TlsSettings};
