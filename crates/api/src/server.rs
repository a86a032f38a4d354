//! The HTTP server: routes requests to the pure documents and health rules.
//!
//! The agent owns the state; it plugs it in through [`ApiBackend`]. The server
//! never decides anything and never writes to the store: a handler reads the last
//! published [`NodeStatus`] (or asks the backend for a fresh cluster snapshot)
//! and renders it. Servers take an already-bound listener and a shutdown future,
//! so tests bind port 0 and stop the server deterministically.
//!
//! Method rules (Patroni's): GET on a health endpoint answers the `/patroni`
//! document with the computed status; HEAD and OPTIONS on *any* path answer the
//! health status of that path with no body (so `HEAD /patroni` is a 503, as in
//! Patroni, where it falls into the generic health handler). Unknown GET paths
//! are health checks and answer 503.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use pgwarden_dcs::Dcs;

use crate::actions::{self, FailsafeRefusal, NodeAction};
use crate::security::ApiSecurity;
use axum::Router;
use pgwarden_types::ClusterSnapshot;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::documents::{cluster_document, history_document, patroni_document};
use crate::health::{health_status, is_status_only, HealthQuery};
use crate::status::NodeStatus;

/// A boxed, sendable future (the same type as `futures::future::BoxFuture`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the server needs from the agent.
///
/// `status` must be cheap and must not block: health checks call it on every
/// request. `cluster` may go to the store (Patroni's `/cluster` reads fresh) and
/// returns a message on failure, which the server answers with 503. Later
/// endpoints (config changes, switchover, restart, metrics) extend this trait
/// with their own methods and add routes to [`router`].
pub trait ApiBackend: Send + Sync + 'static {
    /// The status published after the agent's last cycle.
    fn status(&self) -> NodeStatus;

    /// A snapshot of the cluster's keys in the store.
    fn cluster(&self) -> BoxFuture<'_, Result<ClusterSnapshot, String>>;

    /// The store, for the endpoints that write the cluster's keys (config,
    /// switchover, failover). `None`: those endpoints answer 503.
    fn store(&self) -> Option<Arc<dyn Dcs>> {
        None
    }

    /// Hands a restart, reload or reinitialize request to the agent and
    /// waits for its answer (a message, or the reason of a refusal).
    fn node_action(&self, action: NodeAction) -> BoxFuture<'_, Result<String, String>> {
        let _ = action;
        Box::pin(async { Err("not supported by this agent".to_string()) })
    }

    /// A leader's `POST /failsafe`: accept it (and stay out of races for ttl) or refuse.
    fn accept_failsafe(&self, leader: &str) -> Result<(), FailsafeRefusal> {
        let _ = leader;
        Err(FailsafeRefusal::Disabled)
    }
}

pub(crate) type Backend = Arc<dyn ApiBackend>;

/// The router with every read endpoint. Later work merges more routes into it
/// (`router(backend).merge(...)`); the health-check fallback stays last.
pub fn router(backend: Backend) -> Router {
    router_with(backend, ApiSecurity::default())
}

/// [`router`] with access control on the write endpoints.
pub fn router_with(backend: Backend, security: ApiSecurity) -> Router {
    let guard_state = (backend.clone(), Arc::new(security));
    Router::new()
        .route(
            "/patroni",
            get(get_patroni).head(status_only).options(status_only),
        )
        .route(
            "/cluster",
            get(get_cluster).head(status_only).options(status_only),
        )
        .route(
            "/history",
            get(get_history).head(status_only).options(status_only),
        )
        .route(
            "/config",
            get(get_config)
                .head(status_only)
                .options(status_only)
                .patch(actions::patch_config)
                .put(actions::put_config),
        )
        .route(
            "/switchover",
            post(actions::post_switchover)
                .delete(actions::delete_switchover)
                .head(status_only)
                .options(status_only),
        )
        .route(
            "/failover",
            post(actions::post_failover)
                .head(status_only)
                .options(status_only),
        )
        .route(
            "/restart",
            post(actions::post_restart)
                .delete(actions::delete_restart)
                .head(status_only)
                .options(status_only),
        )
        .route(
            "/reload",
            post(actions::post_reload)
                .head(status_only)
                .options(status_only),
        )
        .route(
            "/reinitialize",
            post(actions::post_reinitialize)
                .head(status_only)
                .options(status_only),
        )
        .route(
            "/failsafe",
            post(actions::post_failsafe)
                .get(actions::get_failsafe)
                .head(status_only)
                .options(status_only),
        )
        .route(
            "/metrics",
            get(get_metrics).head(status_only).options(status_only),
        )
        .fallback(health_check)
        .layer(axum::middleware::from_fn_with_state(
            guard_state,
            crate::security::guard,
        ))
        .with_state(backend)
}

async fn get_metrics(State(backend): State<Backend>) -> Response {
    let body =
        crate::metrics::metrics_text(&backend.status(), chrono::Utc::now().timestamp_millis());
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Serves `router(backend)` on `listener` until `shutdown` resolves, then
/// finishes in-flight requests and returns.
pub async fn serve(
    listener: TcpListener,
    backend: Backend,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(listener, router(backend), shutdown).await
}

/// Serves any router (for callers that merged more routes into [`router`]).
pub async fn serve_router(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::debug!("REST API listening on {addr}");
    }
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// A JSON response with `Content-Type: application/json`.
pub fn json_response(status: u16, body: &Value) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A response with only a status line (and the headers HTTP itself requires).
pub fn status_only_response(status: u16) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = Response::new(Body::empty());
    *response.status_mut() = code;
    response
}

fn health_code(backend: &Backend, uri: &Uri) -> (u16, NodeStatus) {
    let status = backend.status();
    let query = HealthQuery::parse(uri.query().unwrap_or(""));
    (health_status(uri.path(), &query, &status), status)
}

async fn status_only(State(backend): State<Backend>, uri: Uri) -> Response {
    status_only_response(health_code(&backend, &uri).0)
}

async fn health_check(State(backend): State<Backend>, method: Method, uri: Uri) -> Response {
    match method {
        Method::GET => {
            let (code, status) = health_code(&backend, &uri);
            if is_status_only(uri.path()) {
                status_only_response(code)
            } else {
                json_response(code, &patroni_document(&status))
            }
        }
        Method::HEAD | Method::OPTIONS => status_only_response(health_code(&backend, &uri).0),
        // Patroni's HTTP server answers methods it has no handler for with 501.
        _ => status_only_response(501),
    }
}

async fn get_patroni(State(backend): State<Backend>) -> Response {
    json_response(200, &patroni_document(&backend.status()))
}

async fn snapshot(backend: &Backend) -> Result<ClusterSnapshot, Response> {
    backend.cluster().await.map_err(|err| {
        tracing::debug!("REST API could not read the cluster from the store: {err}");
        json_response(
            503,
            &json!({ "error": format!("cannot read the cluster from the store: {err}") }),
        )
    })
}

async fn get_cluster(State(backend): State<Backend>) -> Response {
    let scope = backend.status().scope;
    match snapshot(&backend).await {
        Ok(snapshot) => json_response(200, &cluster_document(&snapshot, &scope)),
        Err(response) => response,
    }
}

async fn get_history(State(backend): State<Backend>) -> Response {
    match snapshot(&backend).await {
        Ok(snapshot) => json_response(200, &history_document(&snapshot.history)),
        Err(response) => response,
    }
}

async fn get_config(State(backend): State<Backend>) -> Response {
    match snapshot(&backend).await {
        Ok(ClusterSnapshot {
            config: Some(config),
            ..
        }) if config.value.is_object() => json_response(200, &config.value),
        // Patroni: no (valid) config key in the store is a 502 without body.
        Ok(_) => status_only_response(502),
        Err(response) => response,
    }
}
