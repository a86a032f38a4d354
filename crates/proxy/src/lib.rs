//! pgwarden proxy: a PostgreSQL wire-protocol proxy and connection pooler
//! that follows the leader key in etcd.
//!
//! Layout: [`follower`] turns etcd into a [`routing::Routing`] table;
//! [`session`] runs one client (startup, [`auth`], forwarding);
//! [`pool`] keeps server connections per (node, fencing token, user,
//! database); [`server`] logs in to PostgreSQL; [`statements`] keeps named
//! prepared statements working across pooled connections; [`admin`] is the
//! PgBouncer-style console; [`metrics`] the Prometheus counters.
//!
//! Safety rule: a read-write server connection belongs to one fencing token
//! (the leader key's create revision). When the token changes, or the
//! proxy's deadline passes without confirming it, every connection of the
//! old token is closed at once, in use or idle.

pub mod admin;
pub mod auth;
pub mod config;
pub mod follower;
pub mod metrics;
pub mod pool;
pub mod routing;
pub mod server;
pub mod session;
pub mod statements;
pub mod stream;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use pgwarden_pgauth::{ScramVerifier, Secret, UserList};
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::config::ProxyConfig;
use crate::metrics::{Metrics, PoolGauges};
use crate::pool::{Pool, PoolError, PoolLimits, Pooled};
use crate::routing::Routing;
use crate::server::{ServerConn, ServerCredential};
use crate::session::SessionEnd;

/// Spare client read buffers kept at most (each about `session::READ_CHUNK`).
const MAX_SPARE_BUFFERS: usize = 128;
/// Larger buffers (grown by a big message) are freed, not kept.
const MAX_SPARE_BUFFER_SIZE: usize = 64 * 1024;

/// Which listener a client came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Port {
    ReadWrite,
    ReadOnly,
}

impl Port {
    pub fn label(self) -> &'static str {
        match self {
            Port::ReadWrite => "rw",
            Port::ReadOnly => "ro",
        }
    }
}

/// Identity of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub node: String,
    pub address: String,
    /// Fencing token when the node is the write target, else 0.
    pub token: i64,
    pub user: String,
    pub database: String,
}

type ServerPool = Pool<ServerConn>;

/// Where a checkout goes: the pool of one node for one user and database,
/// resolved from one routing table. Sessions keep the last one and reuse it
/// while the routing table is the same (no lookup per transaction).
pub struct Target {
    pub key: PoolKey,
    pub pool: Arc<ServerPool>,
    pub node: String,
    /// Some(token) when routed to the leader: connections are fenced when
    /// the routing's token differs.
    pub fence_token: Option<i64>,
    /// The routing table it was resolved from.
    pub routing: Arc<Routing>,
}

/// A server connection held by a client.
pub struct Checkout {
    pub conn: Pooled<ServerConn>,
    pub permit: OwnedSemaphorePermit,
    pub target: Arc<Target>,
    /// Statements were created on the server during this checkout.
    pub added_statements: bool,
}

impl Checkout {
    pub fn node(&self) -> &str {
        &self.target.node
    }

    pub fn is_fenced(&self, routing: &Routing) -> bool {
        match self.target.fence_token {
            Some(token) => match &routing.leader {
                Some(l) => l.token != token || l.node.address != self.target.key.address,
                None => true,
            },
            None => false,
        }
    }
}

/// A connected client, for SHOW CLIENTS and cancel requests.
pub struct ClientEntry {
    pub process_id: i32,
    pub secret_key: i32,
    pub user: String,
    pub database: String,
    pub peer: SocketAddr,
    pub port: Port,
    pub tls: bool,
    pub connected_at: SystemTime,
    /// The server connection it holds: its target (whose address it is),
    /// backend pid and key. Set and cleared on every transaction, so it
    /// shares the target rather than copying the address.
    pub server: Mutex<Option<(Arc<Target>, i32, i32)>>,
}

impl ClientEntry {
    pub fn set_server(&self, checkout: Option<&Checkout>) {
        let value = checkout.map(|c| {
            (
                c.target.clone(),
                c.conn.conn.process_id,
                c.conn.conn.secret_key,
            )
        });
        *self.server.lock().unwrap_or_else(|p| p.into_inner()) = value;
    }

    /// Address, backend pid and key of the server connection it holds.
    pub fn server(&self) -> Option<(String, i32, i32)> {
        self.server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(t, pid, key)| (t.key.address.clone(), *pid, *key))
    }
}

/// Removes a client from the registry when its session ends.
pub struct Registration {
    pub shared: Arc<Shared>,
    pub entry: Arc<ClientEntry>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared
            .lock_clients()
            .remove(&(self.entry.process_id, self.entry.secret_key));
    }
}

/// Decrements the client count when a session ends.
pub struct ClientCount(Arc<Shared>);

impl Drop for ClientCount {
    fn drop(&mut self) {
        self.0.client_count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// State shared by every task of the proxy.
pub struct Shared {
    config: RwLock<Arc<ProxyConfig>>,
    pub config_path: Option<PathBuf>,
    pub routing: watch::Receiver<Arc<Routing>>,
    pools: Mutex<HashMap<PoolKey, Arc<ServerPool>>>,
    db_limits: Mutex<HashMap<(String, String), Arc<Semaphore>>>,
    users: RwLock<Arc<UserList>>,
    /// Credentials learned from clients (SCRAM keys) or auth_query.
    learned: Mutex<HashMap<String, ServerCredential>>,
    /// SCRAM verifiers derived from plain passwords (PBKDF2 runs once per user).
    verifiers: Mutex<HashMap<String, (String, ScramVerifier)>>,
    clients: Mutex<HashMap<(i32, i32), Arc<ClientEntry>>>,
    /// Client read buffers of clients gone idle, for the next active one.
    spare_buffers: Mutex<Vec<BytesMut>>,
    pub client_count: AtomicUsize,
    pub metrics: Arc<Metrics>,
    /// Admin PAUSE: new checkouts wait.
    pub paused: watch::Sender<bool>,
    client_tls: RwLock<Option<tokio_rustls::TlsAcceptor>>,
    server_tls: RwLock<Option<tokio_rustls::TlsConnector>>,
    pub started: Instant,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("proxy.auth_file: {0}")]
    UserList(#[from] pgwarden_pgauth::AuthError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot connect to etcd: {0}")]
    Etcd(#[from] pgwarden_dcs::DcsError),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl Shared {
    pub fn new(
        config: ProxyConfig,
        config_path: Option<PathBuf>,
        routing: watch::Receiver<Arc<Routing>>,
        metrics: Arc<Metrics>,
    ) -> Result<Shared, ProxyError> {
        let users = load_users(&config)?;
        let (client_tls, server_tls) = tls_of(&config)?;
        Ok(Shared {
            config: RwLock::new(Arc::new(config)),
            config_path,
            routing,
            pools: Mutex::new(HashMap::new()),
            db_limits: Mutex::new(HashMap::new()),
            users: RwLock::new(Arc::new(users)),
            learned: Mutex::new(HashMap::new()),
            verifiers: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
            spare_buffers: Mutex::new(Vec::new()),
            client_count: AtomicUsize::new(0),
            metrics,
            paused: watch::channel(false).0,
            client_tls: RwLock::new(client_tls),
            server_tls: RwLock::new(server_tls),
            started: Instant::now(),
        })
    }

    pub fn config(&self) -> Arc<ProxyConfig> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn client_tls(&self) -> Option<tokio_rustls::TlsAcceptor> {
        self.client_tls
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the configuration file, the user list and the TLS files.
    /// Listen addresses and the etcd settings need a restart (a warning says
    /// so); pool limits apply to pools created afterwards.
    pub fn reload(&self) -> Result<(), ProxyError> {
        let Some(path) = &self.config_path else {
            return Ok(());
        };
        let next = ProxyConfig::load(path)?;
        let users = load_users(&next)?;
        let (client_tls, server_tls) = tls_of(&next)?;
        let current = self.config();
        if next.proxy.listen != current.proxy.listen
            || next.proxy.listen_ro != current.proxy.listen_ro
            || next.etcd_endpoints() != current.etcd_endpoints()
            || next.scope != current.scope
        {
            tracing::warn!("listen addresses, scope and etcd hosts change only on restart");
        }
        *self.users.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(users);
        *self.client_tls.write().unwrap_or_else(|p| p.into_inner()) = client_tls;
        *self.server_tls.write().unwrap_or_else(|p| p.into_inner()) = server_tls;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        self.lock_learned().clear();
        tracing::info!("configuration reloaded");
        Ok(())
    }

    /// The stored secret of a user: the user list, else `auth_query`.
    pub async fn secret_of(&self, user: &str) -> Option<Secret> {
        let users = self.users.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(s) = users.get(user) {
            return Some(s.clone());
        }
        let config = self.config();
        let auth_user = config.proxy.auth_user.as_deref()?;
        let Some(Secret::Plain(password)) = users.get(auth_user).cloned() else {
            tracing::warn!(
                auth_user,
                "auth_query needs the plain password of auth_user in auth_file"
            );
            return None;
        };
        let leader = self.routing.borrow().leader.clone()?;
        match run_auth_query(
            &leader.node.address,
            auth_user,
            &password,
            &config.proxy.auth_query,
            user,
        )
        .await
        {
            Ok(secret) => secret,
            Err(e) => {
                tracing::warn!(error = %e, user, "auth_query failed");
                None
            }
        }
    }

    pub fn cached_verifier(&self, user: &str, password: &str) -> Option<ScramVerifier> {
        let mut cache = self.verifiers.lock().unwrap_or_else(|p| p.into_inner());
        match cache.get(user) {
            Some((p, v)) if p == password => Some(v.clone()),
            _ => {
                let v = ScramVerifier::generate(password);
                cache.insert(user.to_string(), (password.to_string(), v.clone()));
                Some(v)
            }
        }
    }

    /// Keeps SCRAM keys a client proved, so pools can open connections for
    /// that user later (min_pool_size) and other clients need not prove more.
    pub fn remember_credential(&self, user: &str, credential: &ServerCredential) {
        if matches!(credential, ServerCredential::ScramKeys { .. }) {
            self.lock_learned()
                .insert(user.to_string(), credential.clone());
        }
    }

    pub fn count_client(self: &Arc<Self>) -> ClientCount {
        self.client_count.fetch_add(1, Ordering::Relaxed);
        ClientCount(self.clone())
    }

    pub fn register_client(
        &self,
        user: &str,
        database: &str,
        peer: SocketAddr,
        port: Port,
        tls: bool,
    ) -> Arc<ClientEntry> {
        let mut clients = self.lock_clients();
        loop {
            let process_id: i32 = rand::random::<i32>() & 0x7fff_ffff;
            let secret_key: i32 = rand::random();
            if clients.contains_key(&(process_id, secret_key)) {
                continue;
            }
            let entry = Arc::new(ClientEntry {
                process_id,
                secret_key,
                user: user.to_string(),
                database: database.to_string(),
                peer,
                port,
                tls,
                connected_at: SystemTime::now(),
                server: Mutex::new(None),
            });
            clients.insert((process_id, secret_key), entry.clone());
            return entry;
        }
    }

    pub fn clients(&self) -> Vec<Arc<ClientEntry>> {
        self.lock_clients().values().cloned().collect()
    }

    /// Forwards a cancel request to the server the client is using; an
    /// unknown key is ignored (as PostgreSQL does, without an answer).
    pub async fn cancel(&self, process_id: i32, secret_key: i32) {
        let target = self
            .lock_clients()
            .get(&(process_id, secret_key))
            .and_then(|c| c.server());
        if let Some((address, pid, key)) = target {
            if let Err(e) = server::send_cancel(&address, pid, key).await {
                tracing::warn!(error = %e, %address, "forwarding a cancel request failed");
            }
        }
    }

    /// Where the next transaction goes: waits while a switchover is under
    /// way, the console paused the proxy, or no node qualifies, until
    /// `deadline` (from `query_wait_timeout`).
    pub async fn resolve(
        &self,
        port: Port,
        user: &str,
        database: &str,
        routing: &mut watch::Receiver<Arc<Routing>>,
        deadline: tokio::time::Instant,
    ) -> Result<Arc<Target>, SessionEnd> {
        let config = self.config();
        let mut paused = self.paused.subscribe();
        let mut counted_hold = false;
        let (current, (node, address, fence_token)) = loop {
            let current = routing.borrow_and_update().clone();
            let is_paused = *paused.borrow_and_update();
            let target = if is_paused {
                None
            } else {
                self.pick(port, &current, &config)
            };
            let held = current.switchover_pending && port == Port::ReadWrite;
            if let (Some(t), false) = (target, held) {
                break (current, t);
            }
            if !counted_hold {
                counted_hold = true;
                Metrics::add(&self.metrics.held, 1);
            }
            let woke = tokio::time::timeout_at(deadline, async {
                tokio::select! {
                    r = routing.changed() => r.is_ok(),
                    r = paused.changed() => r.is_ok(),
                }
            })
            .await;
            match woke {
                Ok(true) => continue,
                Ok(false) => return Err(no_server("the proxy is shutting down")),
                Err(_) => {
                    return Err(no_server(match port {
                        Port::ReadWrite => "no primary became available within query_wait_timeout",
                        Port::ReadOnly => "no replica became available within query_wait_timeout",
                    }))
                }
            }
        };
        let key = PoolKey {
            node: node.clone(),
            address,
            token: fence_token.unwrap_or(0),
            user: user.to_string(),
            database: database.to_string(),
        };
        let pool = self.pool(&key, &config);
        Ok(Arc::new(Target {
            key,
            pool,
            node,
            fence_token,
            routing: current,
        }))
    }

    /// Whether a resolved target can take the next transaction as is: same
    /// routing table, not paused, no switchover pending, pool open.
    pub fn still_valid(&self, target: &Target, routing: &watch::Receiver<Arc<Routing>>) -> bool {
        Arc::ptr_eq(&target.routing, &routing.borrow())
            && !*self.paused.borrow()
            && !target.routing.switchover_pending
            && !target.pool.is_closed()
    }

    /// An idle connection of `target` if one can be had without waiting or
    /// connecting: the common case of a transaction, taken without any
    /// timer or await (the caller falls back to [`Shared::checkout`]).
    pub fn try_checkout(&self, target: &Arc<Target>) -> Option<Checkout> {
        let (permit, conn) = target.pool.try_take_idle(Instant::now())?;
        Some(Checkout {
            conn,
            permit,
            target: target.clone(),
            added_statements: false,
        })
    }

    /// A client read buffer: a spare one when there is one, so a transaction
    /// does not allocate one (idle clients hand theirs back).
    pub fn take_buffer(&self) -> BytesMut {
        self.lock_spares().pop().unwrap_or_default()
    }

    /// Keeps an emptied client read buffer for the next transaction; at most
    /// [`MAX_SPARE_BUFFERS`] of ordinary size are kept, the rest are freed.
    pub fn give_buffer(&self, mut buf: BytesMut) {
        if buf.capacity() == 0 || buf.capacity() > MAX_SPARE_BUFFER_SIZE {
            return;
        }
        buf.clear();
        let mut spares = self.lock_spares();
        if spares.len() < MAX_SPARE_BUFFERS {
            spares.push(buf);
        }
    }

    /// A server connection of `target` (waiting for a free one until `deadline`).
    pub async fn checkout(
        &self,
        target: Arc<Target>,
        credential: &ServerCredential,
        deadline: tokio::time::Instant,
    ) -> Result<Checkout, SessionEnd> {
        let pool = &target.pool;
        let started = tokio::time::Instant::now();
        let remaining = deadline.saturating_duration_since(started);
        let started = started.into_std();
        let slot = pool
            .acquire(remaining, started)
            .await
            .map_err(|e| match e {
                PoolError::WaitTimeout => {
                    no_server("query_wait_timeout: no server connection became free")
                }
                PoolError::Closed => SessionEnd::Fatal {
                    code: "57P01",
                    message: format!("server {} stopped being a routing target", target.node),
                },
            })?;
        if slot.waited {
            let waited = started.elapsed();
            if waited > Duration::from_millis(1) {
                Metrics::add(&self.metrics.waits, 1);
                Metrics::add(&self.metrics.wait_us_total, waited.as_micros() as u64);
            }
        }
        let conn = match slot.idle {
            Some(c) => c,
            // Boxed: connecting is rare and its state is large; a checkout
            // that waits for a connection should not carry it.
            None => Box::pin(self.open_for(&target, credential, deadline)).await?,
        };
        Ok(Checkout {
            conn,
            permit: slot.permit,
            target,
            added_statements: false,
        })
    }

    /// Opens a new connection for a slot of `target`'s pool.
    async fn open_for(
        &self,
        target: &Target,
        credential: &ServerCredential,
        deadline: tokio::time::Instant,
    ) -> Result<Pooled<ServerConn>, SessionEnd> {
        let config = self.config();
        let key = &target.key;
        let db_permit = self.db_permit(key, &config, deadline).await?;
        let credential = match credential {
            ServerCredential::None => self
                .lock_learned()
                .get(&key.user)
                .cloned()
                .unwrap_or(ServerCredential::None),
            c => c.clone(),
        };
        match self.open_server(key, &credential, &config).await {
            Ok(c) => {
                target.pool.note_opened();
                Metrics::add(&self.metrics.server_connects, 1);
                Ok(Pooled::new(c, Instant::now(), db_permit))
            }
            Err(server::ServerError::Refused { fields, .. }) => {
                Metrics::add(&self.metrics.server_connect_failures, 1);
                Err(SessionEnd::Server(fields))
            }
            Err(e) => {
                Metrics::add(&self.metrics.server_connect_failures, 1);
                Err(SessionEnd::Fatal {
                    code: "08006",
                    message: e.to_string(),
                })
            }
        }
    }

    /// Where a new checkout goes: (member, address, fencing token if leader).
    fn pick(
        &self,
        port: Port,
        routing: &Routing,
        config: &ProxyConfig,
    ) -> Option<(String, String, Option<i64>)> {
        let leader = routing
            .leader
            .as_ref()
            .map(|l| (l.node.name.clone(), l.node.address.clone(), Some(l.token)));
        match port {
            Port::ReadWrite => leader,
            Port::ReadOnly => {
                if routing.replicas.is_empty() {
                    return if config.proxy.ro_fallback_to_primary {
                        leader
                    } else {
                        None
                    };
                }
                // Least connections: server connections in use per replica.
                let pools = self.lock_pools();
                let now = Instant::now();
                routing
                    .replicas
                    .iter()
                    .min_by_key(|r| {
                        pools
                            .iter()
                            .filter(|(k, _)| k.address == r.node.address && k.token == 0)
                            .map(|(_, p)| p.stats(now).active)
                            .sum::<usize>()
                    })
                    .map(|r| (r.node.name.clone(), r.node.address.clone(), None))
            }
        }
    }

    fn pool(&self, key: &PoolKey, config: &ProxyConfig) -> Arc<ServerPool> {
        let mut pools = self.lock_pools();
        if let Some(p) = pools.get(key).filter(|p| !p.is_closed()) {
            return p.clone();
        }
        let p = Arc::new(Pool::new(PoolLimits {
            size: config.proxy.default_pool_size,
            min_size: config.proxy.min_pool_size,
            idle_timeout: Duration::from_secs(config.proxy.server_idle_timeout),
            lifetime: Duration::from_secs(config.proxy.server_lifetime),
        }));
        pools.insert(key.clone(), p.clone());
        p
    }

    /// The `max_db_connections` semaphore of (node, database), if limited.
    fn db_semaphore(&self, key: &PoolKey, config: &ProxyConfig) -> Option<Arc<Semaphore>> {
        let limit = config.proxy.max_db_connections;
        if limit == 0 {
            return None;
        }
        Some(
            self.db_limits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry((key.address.clone(), key.database.clone()))
                .or_insert_with(|| Arc::new(Semaphore::new(limit)))
                .clone(),
        )
    }

    /// A permit of `max_db_connections` for (node, database), closing an idle
    /// connection of another user's pool when that frees one.
    async fn db_permit(
        &self,
        key: &PoolKey,
        config: &ProxyConfig,
        deadline: tokio::time::Instant,
    ) -> Result<Option<OwnedSemaphorePermit>, SessionEnd> {
        let Some(sem) = self.db_semaphore(key, config) else {
            return Ok(None);
        };
        if let Ok(p) = sem.clone().try_acquire_owned() {
            return Ok(Some(p));
        }
        let victim = {
            let pools = self.lock_pools();
            pools
                .iter()
                .filter(|(k, _)| k.address == key.address && k.database == key.database)
                .find_map(|(_, p)| p.evict_one())
        };
        if let Some(v) = victim {
            tokio::spawn(v.conn.terminate());
        }
        match tokio::time::timeout_at(deadline, sem.acquire_owned()).await {
            Ok(Ok(p)) => Ok(Some(p)),
            _ => Err(no_server(
                "max_db_connections reached and no connection became free",
            )),
        }
    }

    /// Takes a connection back from a client.
    pub fn release(&self, checkout: Checkout, reusable: bool) {
        let Checkout {
            conn,
            permit,
            target,
            ..
        } = checkout;
        let pool = &target.pool;
        let to_close = if reusable {
            pool.release(conn, Instant::now())
        } else {
            Some(conn)
        };
        drop(permit);
        if let Some(c) = to_close {
            tokio::spawn(c.conn.terminate());
        }
    }

    /// Periodic upkeep: close pools whose node is no longer a target (at once
    /// on a routing change), idle and expired connections, and open
    /// connections for `min_pool_size`.
    async fn janitor(self: Arc<Self>) {
        let mut routing = self.routing.clone();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                r = routing.changed() => if r.is_err() { return },
                _ = tick.tick() => {}
            }
            let current = routing.borrow_and_update().clone();
            let now = Instant::now();
            let mut to_close = Vec::new();
            let mut fill = Vec::new();
            {
                let mut pools = self.lock_pools();
                pools.retain(|key, pool| {
                    let target = if key.token != 0 {
                        current.leader_token() == Some(key.token)
                    } else {
                        current
                            .replicas
                            .iter()
                            .any(|r| r.node.address == key.address)
                    };
                    if !target {
                        if key.token != 0 {
                            let n = pool.close();
                            Metrics::add(&self.metrics.fenced_connections, n.len() as u64);
                            to_close.extend(n);
                        } else {
                            to_close.extend(pool.close());
                        }
                        return pool.stats(now).active > 0;
                    }
                    to_close.extend(pool.reap(now));
                    let missing = pool.missing_for_min();
                    if missing > 0 {
                        fill.push((key.clone(), pool.clone(), missing));
                    }
                    true
                });
            }
            for c in to_close {
                tokio::spawn(c.conn.terminate());
            }
            for (key, pool, missing) in fill {
                self.fill(&key, &pool, missing).await;
            }
        }
    }

    /// Logs in to the server of a pool.
    async fn open_server(
        &self,
        key: &PoolKey,
        credential: &ServerCredential,
        config: &ProxyConfig,
    ) -> Result<ServerConn, server::ServerError> {
        let server_tls = self
            .server_tls
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        server::connect(server::ConnectOptions {
            address: &key.address,
            user: &key.user,
            database: &key.database,
            credential,
            tls_mode: config.proxy.server_tls_sslmode,
            tls: server_tls.as_ref(),
            startup: &[],
        })
        .await
    }

    /// Opens connections for `min_pool_size` when the user's credential is known.
    async fn fill(&self, key: &PoolKey, pool: &Arc<ServerPool>, missing: usize) {
        let credential = {
            let users = self.users.read().unwrap_or_else(|p| p.into_inner()).clone();
            match users.get(&key.user) {
                Some(s @ Secret::Plain(_)) | Some(s @ Secret::Md5(_)) => {
                    ServerCredential::Secret(s.clone())
                }
                _ => match self.lock_learned().get(&key.user) {
                    Some(c) => c.clone(),
                    None => return,
                },
            }
        };
        let config = self.config();
        for _ in 0..missing {
            let Some(permit) = pool.try_slot() else {
                return;
            };
            // min_pool_size never pushes past max_db_connections.
            let db_permit = match self.db_semaphore(key, &config) {
                None => None,
                Some(sem) => match sem.try_acquire_owned() {
                    Ok(p) => Some(p),
                    Err(_) => return,
                },
            };
            match self.open_server(key, &credential, &config).await {
                Ok(c) => {
                    pool.note_opened();
                    Metrics::add(&self.metrics.server_connects, 1);
                    if let Some(c) =
                        pool.release(Pooled::new(c, Instant::now(), db_permit), Instant::now())
                    {
                        tokio::spawn(c.conn.terminate());
                    }
                }
                Err(e) => {
                    Metrics::add(&self.metrics.server_connect_failures, 1);
                    tracing::warn!(error = %e, "opening a connection for min_pool_size failed");
                    return;
                }
            }
            drop(permit);
        }
    }

    /// Gauges of every pool, for SHOW POOLS and /metrics.
    pub fn pool_gauges(&self) -> Vec<PoolGauges> {
        let now = Instant::now();
        let mut out: Vec<PoolGauges> = self
            .lock_pools()
            .iter()
            .map(|(k, p)| {
                let s = p.stats(now);
                PoolGauges {
                    role: if k.token != 0 { "rw" } else { "ro" },
                    node: k.node.clone(),
                    user: k.user.clone(),
                    database: k.database.clone(),
                    active: s.active,
                    idle: s.idle,
                    waiting: s.waiting,
                    max_wait_us: s.max_wait_us,
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.node, &a.user, &a.database).cmp(&(&b.node, &b.user, &b.database)));
        out
    }

    /// Server connections for SHOW SERVERS: (pool key, in use, opened).
    pub fn pool_list(&self) -> Vec<(PoolKey, pool::PoolStats)> {
        let now = Instant::now();
        self.lock_pools()
            .iter()
            .map(|(k, p)| (k.clone(), p.stats(now)))
            .collect()
    }

    pub fn metrics_text(&self) -> String {
        let routing = self.routing.borrow().clone();
        metrics::render(
            &self.metrics,
            self.client_count.load(Ordering::Relaxed),
            routing.leader.as_ref().map(|l| l.node.name.as_str()),
            routing.replicas.len(),
            &self.pool_gauges(),
        )
    }

    fn lock_pools(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Arc<ServerPool>>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_spares(&self) -> std::sync::MutexGuard<'_, Vec<BytesMut>> {
        self.spare_buffers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_clients(&self) -> std::sync::MutexGuard<'_, HashMap<(i32, i32), Arc<ClientEntry>>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_learned(&self) -> std::sync::MutexGuard<'_, HashMap<String, ServerCredential>> {
        self.learned.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn no_server(message: &str) -> SessionEnd {
    SessionEnd::Fatal {
        code: "08P01",
        message: message.to_string(),
    }
}

fn load_users(config: &ProxyConfig) -> Result<UserList, ProxyError> {
    Ok(match &config.proxy.auth_file {
        Some(path) => UserList::load(path)?,
        None => UserList::default(),
    })
}

type TlsPair = (
    Option<tokio_rustls::TlsAcceptor>,
    Option<tokio_rustls::TlsConnector>,
);

fn tls_of(config: &ProxyConfig) -> Result<TlsPair, ProxyError> {
    let p = &config.proxy;
    let client = match (&p.client_tls_cert_file, &p.client_tls_key_file) {
        (Some(cert), Some(key)) if p.client_tls_sslmode != config::ClientTlsMode::Disable => {
            Some(tls::client_acceptor(cert, key)?)
        }
        _ => None,
    };
    let server = tls::server_connector(p.server_tls_sslmode, p.server_tls_ca_file.as_deref())?;
    Ok((client, server))
}

/// Runs `auth_query` on the leader as `auth_user`.
async fn run_auth_query(
    address: &str,
    auth_user: &str,
    password: &str,
    query: &str,
    user: &str,
) -> Result<Option<Secret>, String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("bad address {address}"))?;
    let mut pg = tokio_postgres::Config::new();
    pg.host(host.trim_start_matches('[').trim_end_matches(']'))
        .port(port.parse().map_err(|_| format!("bad port in {address}"))?)
        .user(auth_user)
        .password(password)
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(3));
    let (client, connection) = pg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let rows = client
        .query(query, &[&user])
        .await
        .map_err(|e| e.to_string())?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let secret: Option<String> = row.try_get(1).map_err(|e| e.to_string())?;
    match secret {
        Some(s) => Secret::parse(&s).map(Some).map_err(|e| e.to_string()),
        None => Ok(None),
    }
}

/// Binds the listeners, connects to etcd and serves until `shutdown` resolves.
pub async fn run(
    config: ProxyConfig,
    config_path: Option<PathBuf>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ProxyError> {
    let metrics = Arc::new(Metrics::default());
    let dcs = pgwarden_dcs::EtcdDcs::connect(pgwarden_dcs::EtcdSettings {
        endpoints: config.etcd_endpoints(),
        namespace: config.namespace.clone(),
        scope: config.scope.clone(),
        username: config.etcd().and_then(|e| e.username.clone()),
        password: config.etcd().and_then(|e| e.password.clone()),
        request_timeout: Duration::from_secs(2),
    })
    .await?;
    let (tx, rx) = watch::channel(Arc::new(Routing::default()));
    let rw = bind(config.proxy.listen).await?;
    let ro = match config.proxy.listen_ro {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let metrics_listener = match config.proxy.metrics_listen {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let follower = follower::Follower {
        dcs,
        max_replica_lag: config.proxy.max_replica_lag,
        confirm_interval: Duration::from_millis(config.proxy.confirm_interval_ms),
        routing: tx,
        metrics: metrics.clone(),
    };
    let shared = Arc::new(Shared::new(config, config_path, rx, metrics)?);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(follower.run());
    tasks.spawn(shared.clone().janitor());
    tasks.spawn(accept_loop(shared.clone(), rw, Port::ReadWrite));
    if let Some(ro) = ro {
        tasks.spawn(accept_loop(shared.clone(), ro, Port::ReadOnly));
    }
    if let Some(l) = metrics_listener {
        tasks.spawn(serve_metrics(shared.clone(), l));
    }
    tasks.spawn(reload_on_sighup(shared.clone()));
    tracing::info!(
        listen = %shared.config().proxy.listen,
        listen_ro = ?shared.config().proxy.listen_ro,
        "proxy ready"
    );
    shutdown.await;
    tasks.abort_all();
    Ok(())
}

async fn bind(address: SocketAddr) -> Result<TcpListener, ProxyError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| ProxyError::Listen { address, source })
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, port: Port) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                tokio::spawn(session::serve(shared.clone(), tcp, peer, port));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_metrics(shared: Arc<Shared>, listener: TcpListener) {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let shared = shared.clone();
            async move {
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    shared.metrics_text(),
                )
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "metrics listener stopped");
    }
}

async fn reload_on_sighup(shared: Arc<Shared>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        if let Err(e) = shared.reload() {
            tracing::error!(error = %e, "reload failed; the previous configuration stays in force");
        }
    }
}
