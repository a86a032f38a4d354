//! The etcd v3 implementation of [`Dcs`] (native gRPC through `etcd-client`).
//!
//! Connection model (the same as Patroni's): one client per endpoint, one
//! "current" endpoint. A call runs on the current endpoint; if that endpoint
//! fails with a transport error, has no raft leader, or does not answer within
//! its share of the request timeout, the call moves to the next endpoint and
//! tries again until `request_timeout` is spent. So a dead or frozen member
//! costs one attempt, after which calls stay on a healthy member.
//!
//! Invariants:
//! - every call is bounded by `request_timeout` (tokio timeouts around every
//!   attempt) and fails with `Timeout` or `Unavailable` rather than hanging;
//! - reads are linearizable and every request carries etcd's "require leader"
//!   flag, so a member cut off from its quorum answers nothing useful and a
//!   primary notices that it lost the store;
//! - leadership and CAS writes are single transactions. When an attempt's
//!   outcome is unknown (it timed out after being sent) and the call is retried,
//!   the transactions read the key back in their failure branch, so a write
//!   that did land on the first attempt is still reported as ours (for
//!   `race_initialize`, where the value cannot tell, the call reports `Timeout`).
//!
//! It must not cache reads: every `snapshot` goes to the quorum.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, KeyValue,
    PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions, WatchStream,
};
use pgwarden_types::{
    ClusterSnapshot, ClusterStatus, FailoverRequest, HistoryLine, MemberData, SyncState,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::keys::{ClusterKey, KeyLayout};
use crate::parse::{parse_snapshot, RawKv};
use crate::{values, Dcs, DcsError, LeaseId, Precondition, WatchEvent, WATCH_CHANNEL_CAPACITY};

/// How to reach etcd and which cluster to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSettings {
    /// `host:port` or `http://host:port`.
    pub endpoints: Vec<String>,
    /// Key namespace; empty means `/service`.
    pub namespace: String,
    pub scope: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Upper bound of every call, all retries across endpoints included.
    pub request_timeout: Duration,
}

/// Lower bound of one attempt on one endpoint (a linearizable read needs a
/// round trip to the raft leader; below this, slow-but-healthy members would be
/// skipped needlessly).
const MIN_ATTEMPT: Duration = Duration::from_millis(500);
/// Pause after every endpoint failed once, so a down cluster is not hammered.
const ROUND_BACKOFF: Duration = Duration::from_millis(100);

/// The etcd store. Clones share connections.
#[derive(Clone)]
pub struct EtcdDcs {
    inner: Arc<Inner>,
}

struct Inner {
    settings: EtcdSettings,
    layout: KeyLayout,
    endpoints: Vec<String>,
    clients: Vec<Mutex<Option<Client>>>,
    current: AtomicUsize,
}

impl std::fmt::Debug for EtcdDcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdDcs")
            .field("endpoints", &self.inner.endpoints)
            .field("prefix", &self.inner.layout.prefix())
            .finish()
    }
}

/// An attempt's failure: either from etcd (classified by the retry loop) or a
/// final answer decided by the operation itself.
enum CallError {
    Etcd(etcd_client::Error),
    Final(DcsError),
}

impl From<etcd_client::Error> for CallError {
    fn from(e: etcd_client::Error) -> Self {
        CallError::Etcd(e)
    }
}

enum Class {
    /// Try another endpoint. `ambiguous`: the request may have been applied.
    Retry {
        ambiguous: bool,
        reconnect: bool,
    },
    Fatal(DcsError),
}

// gRPC status codes (numeric, to avoid depending on tonic directly).
const CODE_CANCELLED: i32 = 1;
const CODE_UNKNOWN: i32 = 2;
const CODE_INVALID_ARGUMENT: i32 = 3;
const CODE_DEADLINE_EXCEEDED: i32 = 4;
const CODE_NOT_FOUND: i32 = 5;
const CODE_PERMISSION_DENIED: i32 = 7;
const CODE_FAILED_PRECONDITION: i32 = 9;
const CODE_UNAVAILABLE: i32 = 14;
const CODE_UNAUTHENTICATED: i32 = 16;

fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.message().contains("lease not found"),
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("lease not found"),
        _ => false,
    }
}

fn classify(e: &etcd_client::Error) -> Class {
    use etcd_client::Error as E;
    if is_lease_not_found(e) {
        return Class::Fatal(DcsError::LeaseNotFound);
    }
    match e {
        // The connection could not be made: the request was never sent.
        E::TransportError(_) => Class::Retry {
            ambiguous: false,
            reconnect: false,
        },
        E::IoError(_) | E::WatchError(_) | E::LeaseKeepAliveError(_) | E::Internal(_) => {
            Class::Retry {
                ambiguous: true,
                reconnect: false,
            }
        }
        E::GRpcStatus(s) => {
            let msg = s.message();
            let code = s.code() as i32;
            if msg.contains("invalid auth token")
                || msg.contains("auth token")
                || code == CODE_UNAUTHENTICATED
            {
                return Class::Retry {
                    ambiguous: false,
                    reconnect: true,
                };
            }
            match code {
                CODE_UNAVAILABLE | CODE_DEADLINE_EXCEEDED | CODE_CANCELLED | CODE_UNKNOWN => {
                    let not_sent = msg.contains("no leader")
                        || msg.contains("connect")
                        || msg.contains("Connection refused")
                        || msg.contains("not a primary lessor")
                        || msg.contains("not primary");
                    Class::Retry {
                        ambiguous: !not_sent,
                        reconnect: false,
                    }
                }
                CODE_INVALID_ARGUMENT
                | CODE_PERMISSION_DENIED
                | CODE_FAILED_PRECONDITION
                | CODE_NOT_FOUND => Class::Fatal(DcsError::Rejected(msg.to_string())),
                _ => Class::Fatal(DcsError::Other(msg.to_string())),
            }
        }
        other => Class::Fatal(DcsError::Other(other.to_string())),
    }
}

fn normalize_endpoint(ep: &str) -> String {
    let ep = ep.trim().trim_end_matches('/');
    if ep.contains("://") {
        ep.to_string()
    } else {
        format!("http://{ep}")
    }
}

fn header_revision(resp: &TxnResponse) -> i64 {
    resp.header().map_or(0, |h| h.revision())
}

/// The first key of the first range response in a txn branch.
fn first_kv(responses: &[TxnOpResponse]) -> Option<KeyValue> {
    responses.iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().first().cloned(),
        _ => None,
    })
}

fn nested_txn(responses: &[TxnOpResponse]) -> Option<TxnResponse> {
    responses.iter().find_map(|r| match r {
        TxnOpResponse::Txn(t) => Some(t.clone()),
        _ => None,
    })
}

fn precondition_compare(key: &str, pre: Precondition) -> Option<Compare> {
    match pre {
        Precondition::Absent => Some(Compare::create_revision(key, CompareOp::Equal, 0)),
        Precondition::ModRevision(rev) => Some(Compare::mod_revision(key, CompareOp::Equal, rev)),
        Precondition::Unconditional => None,
    }
}

impl EtcdDcs {
    /// Prepares clients for `settings.endpoints`. Does not contact etcd: an
    /// endpoint that is down (or all of them) only fails later calls, so an
    /// agent can start while etcd is unreachable. Fails on an empty endpoint
    /// list or a zero timeout.
    pub async fn connect(settings: EtcdSettings) -> Result<EtcdDcs, DcsError> {
        if settings.endpoints.is_empty() {
            return Err(DcsError::Rejected("no etcd endpoints configured".into()));
        }
        if settings.request_timeout.is_zero() {
            return Err(DcsError::Rejected(
                "etcd request timeout must be positive".into(),
            ));
        }
        if settings.username.is_some() != settings.password.is_some() {
            return Err(DcsError::Rejected(
                "etcd username and password must be set together".into(),
            ));
        }
        let endpoints: Vec<String> = settings
            .endpoints
            .iter()
            .map(|e| normalize_endpoint(e))
            .collect();
        let clients = endpoints.iter().map(|_| Mutex::new(None)).collect();
        let layout = KeyLayout::new(&settings.namespace, &settings.scope);
        Ok(EtcdDcs {
            inner: Arc::new(Inner {
                settings,
                layout,
                endpoints,
                clients,
                current: AtomicUsize::new(0),
            }),
        })
    }

    pub fn layout(&self) -> &KeyLayout {
        &self.inner.layout
    }

    /// The endpoint calls currently go to.
    pub fn current_endpoint(&self) -> &str {
        &self.inner.endpoints
            [self.inner.current.load(Ordering::Relaxed) % self.inner.endpoints.len()]
    }

    fn attempt_budget(&self) -> Duration {
        let n = u32::try_from(self.inner.endpoints.len())
            .unwrap_or(u32::MAX)
            .max(1);
        (self.inner.settings.request_timeout / n).max(MIN_ATTEMPT)
    }

    async fn client(&self, idx: usize) -> Result<Client, etcd_client::Error> {
        if let Some(c) = self.inner.clients[idx]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return Ok(c.clone());
        }
        let s = &self.inner.settings;
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(self.attempt_budget())
            // HTTP/2 pings notice a frozen or vanished member under a long-lived
            // watch stream, which would otherwise wait forever.
            .with_keep_alive(
                Duration::from_secs(1),
                s.request_timeout.max(Duration::from_secs(1)),
            )
            .with_keep_alive_while_idle(true)
            .with_tcp_keepalive(Duration::from_secs(5))
            .with_require_leader(true);
        if let (Some(u), Some(p)) = (&s.username, &s.password) {
            opts = opts
                .with_user(u.clone(), p.clone())
                .with_auto_token_refresh(true);
        }
        let client = Client::connect([self.inner.endpoints[idx].as_str()], Some(opts)).await?;
        *self.inner.clients[idx]
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(client.clone());
        Ok(client)
    }

    fn drop_client(&self, idx: usize) {
        *self.inner.clients[idx]
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn rotate_from(&self, idx: usize) {
        let n = self.inner.endpoints.len();
        // Only the first caller to see `idx` fail moves on, so concurrent
        // failures do not skip a healthy endpoint.
        let _ = self.inner.current.compare_exchange(
            idx,
            (idx + 1) % n,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }

    /// Runs `f` against the current endpoint, moving through the endpoints on
    /// retryable failures, all within `request_timeout`. `f` gets a client and
    /// whether an earlier attempt of this call may have been applied.
    async fn call<T, F, Fut>(&self, op: &'static str, mut f: F) -> Result<T, DcsError>
    where
        F: FnMut(Client, bool) -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        let start = Instant::now();
        let deadline = start + self.inner.settings.request_timeout;
        let n = self.inner.endpoints.len();
        let mut ambiguous = false;
        let mut last_timed_out = false;
        let mut errors: Vec<String> = Vec::new();
        let mut attempts = 0usize;
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let idx = self.inner.current.load(Ordering::Acquire) % n;
            let budget = self.attempt_budget().min(deadline - now);
            let endpoint = &self.inner.endpoints[idx];
            let attempt = async {
                let client = self.client(idx).await?;
                f(client, ambiguous).await
            };
            match tokio::time::timeout(budget, attempt).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(CallError::Final(e))) => return Err(e),
                Ok(Err(CallError::Etcd(e))) => match classify(&e) {
                    Class::Fatal(err) => return Err(err),
                    Class::Retry {
                        ambiguous: amb,
                        reconnect,
                    } => {
                        tracing::debug!(op, endpoint, error = %e, "etcd attempt failed; trying next endpoint");
                        if reconnect {
                            self.drop_client(idx);
                        }
                        ambiguous |= amb;
                        last_timed_out = false;
                        errors.push(format!("{endpoint}: {e}"));
                        self.rotate_from(idx);
                    }
                },
                Err(_) => {
                    tracing::debug!(
                        op,
                        endpoint,
                        ?budget,
                        "etcd attempt timed out; trying next endpoint"
                    );
                    // Sent but unanswered: it may still be applied.
                    ambiguous = true;
                    last_timed_out = true;
                    errors.push(format!("{endpoint}: no answer within {budget:?}"));
                    self.rotate_from(idx);
                }
            }
            attempts += 1;
            if attempts % n == 0 {
                let now = Instant::now();
                if now < deadline {
                    tokio::time::sleep(ROUND_BACKOFF.min(deadline - now)).await;
                }
            }
        }
        errors.dedup();
        if last_timed_out || errors.is_empty() {
            Err(DcsError::Timeout)
        } else {
            let shown: Vec<&String> = errors.iter().rev().take(n).collect();
            Err(DcsError::Unavailable(format!("{op}: {shown:?}")))
        }
    }

    fn key(&self, key: &ClusterKey) -> String {
        self.inner.layout.key(key)
    }

    async fn put(
        &self,
        op: &'static str,
        key: ClusterKey,
        value: String,
        lease: LeaseId,
    ) -> Result<i64, DcsError> {
        let key = self.key(&key);
        self.call(op, |mut c, _| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                let opts = (lease != 0).then(|| PutOptions::new().with_lease(lease));
                let resp = c.put(key, value, opts).await?;
                Ok(resp.header().map_or(0, |h| h.revision()))
            }
        })
        .await
    }

    async fn delete_key(&self, op: &'static str, key: ClusterKey) -> Result<(), DcsError> {
        let key = self.key(&key);
        self.call(op, |mut c, _| {
            let key = key.clone();
            async move {
                c.delete(key, None).await?;
                Ok(())
            }
        })
        .await
    }

    /// Put under a precondition; Some(new mod_revision) when written.
    async fn cas_put(
        &self,
        op: &'static str,
        key: ClusterKey,
        value: String,
        pre: Precondition,
    ) -> Result<Option<i64>, DcsError> {
        let Some(compare) = precondition_compare(&self.key(&key), pre) else {
            return self.put(op, key, value, 0).await.map(Some);
        };
        let key = self.key(&key);
        self.call(op, |mut c, retried| {
            let (key, value, compare) = (key.clone(), value.clone(), compare.clone());
            async move {
                let txn = Txn::new()
                    .when([compare])
                    .and_then([TxnOp::put(key.clone(), value.clone(), None)])
                    .or_else([TxnOp::get(key, None)]);
                let resp = c.txn(txn).await?;
                if resp.succeeded() {
                    return Ok(Some(header_revision(&resp)));
                }
                // An earlier attempt may have landed: then the key holds our value.
                match first_kv(&resp.op_responses()) {
                    Some(kv) if retried && kv.value() == value.as_bytes() => {
                        Ok(Some(kv.mod_revision()))
                    }
                    _ => Ok(None),
                }
            }
        })
        .await
    }

    fn raw_kv(kv: &KeyValue) -> RawKv {
        RawKv {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: String::from_utf8_lossy(kv.value()).into_owned(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            lease: kv.lease(),
        }
    }

    async fn range(&self, op: &'static str) -> Result<(i64, Vec<RawKv>), DcsError> {
        let prefix = self.inner.layout.prefix().to_string();
        let end = self.inner.layout.range_end();
        self.call(op, |mut c, _| {
            let (prefix, end) = (prefix.clone(), end.clone());
            async move {
                let resp = c
                    .get(prefix, Some(GetOptions::new().with_range(end)))
                    .await?;
                let rev = resp.header().map_or(0, |h| h.revision());
                Ok((rev, resp.kvs().iter().map(Self::raw_kv).collect()))
            }
        })
        .await
    }

    /// Every key of the cluster prefix with its value (for test artifacts).
    pub async fn dump(&self) -> Result<Vec<(String, String)>, DcsError> {
        let (_, kvs) = self.range("dump").await?;
        Ok(kvs.into_iter().map(|kv| (kv.key, kv.value)).collect())
    }

    /// Opens a watch of the prefix from `start_revision` (0 = from now) and
    /// waits for etcd to confirm it. Err(None) when the start revision was
    /// compacted away.
    async fn open_watch(&self, start_revision: i64) -> Result<Result<WatchStream, i64>, DcsError> {
        let prefix = self.inner.layout.prefix().to_string();
        let end = self.inner.layout.range_end();
        self.call("watch", |mut c, _| {
            let (prefix, end) = (prefix.clone(), end.clone());
            async move {
                let mut opts = WatchOptions::new().with_range(end);
                if start_revision > 0 {
                    opts = opts.with_start_revision(start_revision);
                }
                let mut stream = c.watch(prefix, Some(opts)).await?;
                match stream.message().await? {
                    Some(r) if r.canceled() && r.compact_revision() > 0 => {
                        Ok(Err(r.compact_revision()))
                    }
                    Some(r) if r.created() && !r.canceled() => Ok(Ok(stream)),
                    Some(r) => Err(CallError::Etcd(etcd_client::Error::WatchError(format!(
                        "watch not created: {}",
                        r.cancel_reason()
                    )))),
                    None => Err(CallError::Etcd(etcd_client::Error::WatchError(
                        "watch stream closed".into(),
                    ))),
                }
            }
        })
        .await
    }

    /// Opens a watch, falling back to "from now" (and reporting that events
    /// were missed) when `start_revision` is compacted.
    async fn open_watch_or_resync(
        &self,
        start_revision: i64,
    ) -> Result<(WatchStream, bool), DcsError> {
        match self.open_watch(start_revision).await? {
            Ok(stream) => Ok((stream, false)),
            Err(compacted) => {
                tracing::warn!(
                    start_revision,
                    compacted,
                    "etcd watch start revision compacted; resyncing"
                );
                match self.open_watch(0).await? {
                    Ok(stream) => Ok((stream, true)),
                    Err(_) => Err(DcsError::Other(
                        "etcd watch from current revision reported compaction".into(),
                    )),
                }
            }
        }
    }

    async fn watch_task(
        self,
        mut stream: WatchStream,
        mut next: i64,
        tx: mpsc::Sender<WatchEvent>,
    ) {
        let prefix = self.inner.layout.prefix().to_string();
        loop {
            // Follow the stream until it breaks.
            loop {
                let msg = tokio::select! {
                    _ = tx.closed() => return,
                    msg = stream.message() => msg,
                };
                match msg {
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            tracing::warn!(
                                reason = resp.cancel_reason(),
                                "etcd canceled the watch"
                            );
                            if resp.compact_revision() > 0 {
                                next = 0;
                            }
                            break;
                        }
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            let key = String::from_utf8_lossy(kv.key());
                            let Some(rel) = key.strip_prefix(&prefix) else {
                                continue;
                            };
                            let event = WatchEvent::Changed {
                                key: ClusterKey::from_relative(rel),
                                deleted: ev.event_type() == EventType::Delete,
                                revision: kv.mod_revision(),
                            };
                            next = next.max(kv.mod_revision() + 1);
                            if tx.send(event).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) => {
                        tracing::warn!("etcd watch stream ended; re-establishing");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "etcd watch stream failed; re-establishing");
                        break;
                    }
                }
            }
            // Re-establish on whichever endpoint answers, for as long as someone listens.
            loop {
                let opened = tokio::select! {
                    _ = tx.closed() => return,
                    r = self.open_watch_or_resync(next) => r,
                };
                match opened {
                    Ok((s, _)) => {
                        stream = s;
                        if tx.send(WatchEvent::Resync).await.is_err() {
                            return;
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "could not re-establish etcd watch yet");
                        tokio::select! {
                            _ = tx.closed() => return,
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        }
                    }
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Dcs for EtcdDcs {
    async fn snapshot(&self) -> Result<ClusterSnapshot, DcsError> {
        let (revision, kvs) = self.range("snapshot").await?;
        Ok(parse_snapshot(&self.inner.layout, revision, &kvs))
    }

    async fn grant_lease(&self, ttl_secs: u64) -> Result<LeaseId, DcsError> {
        let ttl = i64::try_from(ttl_secs)
            .map_err(|_| DcsError::Rejected(format!("lease ttl {ttl_secs} too large")))?;
        self.call("grant_lease", |mut c, _| async move {
            Ok(c.lease_grant(ttl, None).await?.id())
        })
        .await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<bool, DcsError> {
        self.call("keep_alive", |mut c, _| async move {
            match c.lease_keep_alive(lease).await {
                // The keeper sent one refresh and etcd answered with a positive TTL.
                Ok(_) => Ok(true),
                Err(e) if is_lease_not_found(&e) => Ok(false),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), DcsError> {
        self.call("revoke_lease", |mut c, retried| async move {
            match c.lease_revoke(lease).await {
                Ok(_) => Ok(()),
                // An earlier attempt may have revoked it already.
                Err(e) if retried && is_lease_not_found(&e) => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn acquire_leader(&self, name: &str, lease: LeaseId) -> Result<Option<i64>, DcsError> {
        let key = self.key(&ClusterKey::Leader);
        self.call("acquire_leader", |mut c, retried| {
            let (key, name) = (key.clone(), name.to_string());
            async move {
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        key.clone(),
                        name.clone(),
                        Some(PutOptions::new().with_lease(lease)),
                    )])
                    .or_else([TxnOp::get(key, None)]);
                let resp = c.txn(txn).await?;
                if resp.succeeded() {
                    return Ok(Some(header_revision(&resp)));
                }
                match first_kv(&resp.op_responses()) {
                    Some(kv) if retried && kv.value() == name.as_bytes() && kv.lease() == lease => {
                        Ok(Some(kv.create_revision()))
                    }
                    _ => Ok(None),
                }
            }
        })
        .await
    }

    async fn update_leader(&self, name: &str, lease: LeaseId) -> Result<bool, DcsError> {
        let key = self.key(&ClusterKey::Leader);
        self.call("update_leader", |mut c, _| {
            let (key, name) = (key.clone(), name.to_string());
            async move {
                let put = || {
                    TxnOp::put(
                        key.clone(),
                        name.clone(),
                        Some(PutOptions::new().with_lease(lease)),
                    )
                };
                let reattach = Txn::new()
                    .when([Compare::value(key.clone(), CompareOp::Equal, name.clone())])
                    .and_then([put()]);
                // Already ours on our lease: nothing to write (the key exists, so
                // the lease is alive). Otherwise re-attach if the key still holds
                // our name; a missing key is never re-created here.
                let txn = Txn::new()
                    .when([
                        Compare::value(key.clone(), CompareOp::Equal, name.clone()),
                        Compare::lease(key.clone(), CompareOp::Equal, lease),
                    ])
                    .or_else([TxnOp::txn(reattach)]);
                let resp = c.txn(txn).await?;
                if resp.succeeded() {
                    return Ok(true);
                }
                let Some(reattach) = nested_txn(&resp.op_responses()) else {
                    return Ok(false);
                };
                Ok(reattach.succeeded())
            }
        })
        .await
    }

    async fn release_leader(&self, name: &str) -> Result<bool, DcsError> {
        let key = self.key(&ClusterKey::Leader);
        self.call("release_leader", |mut c, retried| {
            let (key, name) = (key.clone(), name.to_string());
            async move {
                let txn = Txn::new()
                    .when([Compare::value(key.clone(), CompareOp::Equal, name)])
                    .and_then([TxnOp::delete(key.clone(), None)])
                    .or_else([TxnOp::get(key, None)]);
                let resp = c.txn(txn).await?;
                if resp.succeeded() {
                    return Ok(true);
                }
                // After an attempt of unknown outcome, "gone" means our delete landed.
                Ok(retried && first_kv(&resp.op_responses()).is_none())
            }
        })
        .await
    }

    async fn touch_member(
        &self,
        name: &str,
        data: &MemberData,
        lease: LeaseId,
    ) -> Result<(), DcsError> {
        self.put(
            "touch_member",
            ClusterKey::Member(name.to_string()),
            values::member(data),
            lease,
        )
        .await
        .map(drop)
    }

    async fn delete_member(&self, name: &str) -> Result<(), DcsError> {
        self.delete_key("delete_member", ClusterKey::Member(name.to_string()))
            .await
    }

    async fn race_initialize(&self) -> Result<bool, DcsError> {
        let key = self.key(&ClusterKey::Initialize);
        self.call("race_initialize", |mut c, retried| {
            let key = key.clone();
            async move {
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key, "", None)]);
                let resp = c.txn(txn).await?;
                if resp.succeeded() {
                    Ok(true)
                } else if retried {
                    // The earlier attempt may be the one that created the key,
                    // and an empty value cannot tell whose it is.
                    Err(CallError::Final(DcsError::Timeout))
                } else {
                    Ok(false)
                }
            }
        })
        .await
    }

    async fn set_initialize(&self, system_identifier: &str) -> Result<(), DcsError> {
        self.put(
            "set_initialize",
            ClusterKey::Initialize,
            system_identifier.to_string(),
            0,
        )
        .await
        .map(drop)
    }

    async fn delete_initialize(&self) -> Result<(), DcsError> {
        self.delete_key("delete_initialize", ClusterKey::Initialize)
            .await
    }

    async fn set_config(
        &self,
        config: &serde_json::Value,
        pre: Precondition,
    ) -> Result<bool, DcsError> {
        Ok(self
            .cas_put(
                "set_config",
                ClusterKey::Config,
                values::config(config),
                pre,
            )
            .await?
            .is_some())
    }

    async fn set_failover(
        &self,
        request: &FailoverRequest,
        pre: Precondition,
    ) -> Result<bool, DcsError> {
        Ok(self
            .cas_put(
                "set_failover",
                ClusterKey::Failover,
                values::failover(request),
                pre,
            )
            .await?
            .is_some())
    }

    async fn set_sync(
        &self,
        state: &SyncState,
        pre: Precondition,
    ) -> Result<Option<i64>, DcsError> {
        self.cas_put("set_sync", ClusterKey::Sync, values::sync(state), pre)
            .await
    }

    async fn delete_sync(&self, pre: Precondition) -> Result<bool, DcsError> {
        let key = self.key(&ClusterKey::Sync);
        let Some(compare) = precondition_compare(&key, pre) else {
            return self
                .delete_key("delete_sync", ClusterKey::Sync)
                .await
                .map(|_| true);
        };
        self.call("delete_sync", |mut c, retried| {
            let (key, compare) = (key.clone(), compare.clone());
            async move {
                let txn = Txn::new()
                    .when([compare])
                    .and_then([TxnOp::delete(key.clone(), None)])
                    .or_else([TxnOp::get(key, None)]);
                let resp = c.txn(txn).await?;
                Ok(resp.succeeded() || (retried && first_kv(&resp.op_responses()).is_none()))
            }
        })
        .await
    }

    async fn set_status(&self, status: &ClusterStatus) -> Result<(), DcsError> {
        self.put("set_status", ClusterKey::Status, values::status(status), 0)
            .await
            .map(drop)
    }

    async fn set_history(&self, lines: &[HistoryLine]) -> Result<(), DcsError> {
        self.put(
            "set_history",
            ClusterKey::History,
            values::history(lines),
            0,
        )
        .await
        .map(drop)
    }

    async fn set_failsafe(&self, members: &BTreeMap<String, String>) -> Result<(), DcsError> {
        self.put(
            "set_failsafe",
            ClusterKey::Failsafe,
            values::failsafe(members),
            0,
        )
        .await
        .map(drop)
    }

    async fn delete_cluster(&self) -> Result<(), DcsError> {
        let prefix = self.inner.layout.prefix().to_string();
        let end = self.inner.layout.range_end();
        self.call("delete_cluster", |mut c, _| {
            let (prefix, end) = (prefix.clone(), end.clone());
            async move {
                c.delete(prefix, Some(DeleteOptions::new().with_range(end)))
                    .await?;
                Ok(())
            }
        })
        .await
    }

    async fn watch(&self, after_revision: i64) -> Result<mpsc::Receiver<WatchEvent>, DcsError> {
        let start = if after_revision > 0 {
            after_revision + 1
        } else {
            0
        };
        let (stream, missed) = self.open_watch_or_resync(start).await?;
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL_CAPACITY);
        if missed {
            let _ = tx.try_send(WatchEvent::Resync);
        }
        tokio::spawn(self.clone().watch_task(stream, start, tx));
        Ok(rx)
    }

    async fn dump(&self) -> Result<Vec<(String, String)>, DcsError> {
        EtcdDcs::dump(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalized() {
        assert_eq!(
            normalize_endpoint("127.0.0.1:2379"),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            normalize_endpoint("http://127.0.0.1:2379/"),
            "http://127.0.0.1:2379"
        );
        assert_eq!(normalize_endpoint("https://e:1"), "https://e:1");
    }

    #[tokio::test]
    async fn connect_validates_settings_without_contacting_etcd() {
        let settings = EtcdSettings {
            endpoints: vec![],
            namespace: String::new(),
            scope: "s".into(),
            username: None,
            password: None,
            request_timeout: Duration::from_secs(1),
        };
        assert!(matches!(
            EtcdDcs::connect(settings.clone()).await,
            Err(DcsError::Rejected(_))
        ));
        // Nothing listens on a freshly released port: connect still succeeds,
        // the first call fails within the timeout with a retryable error.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dcs = EtcdDcs::connect(EtcdSettings {
            endpoints: vec![format!("127.0.0.1:{port}")],
            ..settings
        })
        .await
        .unwrap();
        assert_eq!(dcs.layout().prefix(), "/service/s/");
        let err = dcs.snapshot().await.unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
    }
}
