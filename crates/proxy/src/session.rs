//! One client connection from the first byte to the last.
//!
//! Phases: startup (TLS negotiation, cancel requests, the StartupMessage),
//! authentication, server login, then the forwarding loop. In transaction
//! mode the client holds a server connection from its first message until
//! the server reports an idle transaction state with nothing outstanding;
//! in session mode until it leaves. Bytes are forwarded as read; only frame
//! headers (and the few bodies the proxy needs: ReadyForQuery,
//! ParameterStatus) are looked at on the way back.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pgwarden_wire::backend::{BackendMessage, ErrorFields, TxStatus};
use pgwarden_wire::frame::{split_frame, FrameEvent, FrameScanner};
use pgwarden_wire::startup::{parse_options, StartupPacket};
use pgwarden_wire::WireError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{ClientTlsMode, PoolMode};
use crate::metrics::Metrics;
use crate::server::ServerCredential;
use crate::statements::{rewrite_batch, ClientStatements};
use crate::stream::Stream;
use crate::{Checkout, ClientEntry, Port, Shared};

/// Time a client has to finish the startup and authentication.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest message accepted from a client.
pub const MAX_CLIENT_MESSAGE: usize = pgwarden_wire::MAX_MESSAGE_LEN;
/// Read size of the forwarding loop.
pub const READ_CHUNK: usize = 16 * 1024;
/// A server read buffer grown beyond this (by a large message) is not kept
/// with the connection.
const MAX_KEPT_READ_BUF: usize = 64 * 1024;

/// Parameters a server reports that depend on the server, not on the session:
/// never SET, but re-announced to the client when it moves to another node.
const SERVER_OWNED: &[&str] = &[
    "server_version",
    "server_encoding",
    "integer_datetimes",
    "in_hot_standby",
    "is_superuser",
    "session_authorization",
    "default_transaction_read_only",
    "scram_iterations",
];

/// Startup parameters that are not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// How a session ends.
#[derive(Debug)]
pub enum SessionEnd {
    /// The client left or its socket failed: nothing to tell it.
    Gone,
    /// Tell the client (FATAL) and close.
    Fatal { code: &'static str, message: String },
    /// A server's own error, forwarded as is, then close.
    Server(ErrorFields),
}

impl SessionEnd {
    pub fn protocol(e: WireError) -> SessionEnd {
        SessionEnd::Fatal {
            code: "08P01",
            message: e.to_string(),
        }
    }

    pub fn auth_failed(user: &str) -> SessionEnd {
        SessionEnd::Fatal {
            code: "28P01",
            message: format!("password authentication failed for user \"{user}\""),
        }
    }
}

/// Reads one whole frame of the regular protocol (login phase, admin console).
pub async fn read_client_frame(
    stream: &mut Stream,
    buf: &mut BytesMut,
    max: usize,
) -> Result<(u8, BytesMut), SessionEnd> {
    loop {
        if let Some(frame) = split_frame(buf, max).map_err(SessionEnd::protocol)? {
            return Ok(frame);
        }
        buf.reserve(1024);
        if stream.read_buf(buf).await.map_err(|_| SessionEnd::Gone)? == 0 {
            return Err(SessionEnd::Gone);
        }
    }
}

async fn send(stream: &mut Stream, msgs: &[BackendMessage]) -> Result<(), SessionEnd> {
    let mut out = BytesMut::new();
    for m in msgs {
        m.encode(&mut out);
    }
    stream.write_all(&out).await.map_err(|_| SessionEnd::Gone)
}

/// Entry point of a client task.
pub async fn serve(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, port: Port) {
    let _ = tcp.set_nodelay(true);
    let mut stream = Stream::Plain(tcp);
    let result = run(&shared, &mut stream, peer, port).await;
    let fields = match result {
        Ok(()) | Err(SessionEnd::Gone) => return,
        Err(SessionEnd::Fatal { code, message }) => {
            if code == "08P01" {
                Metrics::add(&shared.metrics.protocol_errors, 1);
            }
            tracing::debug!(%peer, code, %message, "closing client");
            match BackendMessage::error("FATAL", code, &message) {
                BackendMessage::ErrorResponse(f) => f,
                _ => unreachable!("error() builds an ErrorResponse"),
            }
        }
        Err(SessionEnd::Server(fields)) => fields,
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = send(&mut stream, &[BackendMessage::ErrorResponse(fields)]).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// What the client asked for in its StartupMessage.
struct Startup {
    user: String,
    database: String,
    /// Settings from the startup packet and its `options` (`-c name=value`).
    settings: Vec<(String, String)>,
}

async fn run(
    shared: &Arc<Shared>,
    stream: &mut Stream,
    peer: SocketAddr,
    port: Port,
) -> Result<(), SessionEnd> {
    let mut buf = BytesMut::new();
    // Boxed: the login's state is freed once it is over, so an idle
    // client's task stays small (see docs/proxy.md, memory per client).
    let login = tokio::time::timeout(
        LOGIN_TIMEOUT,
        Box::pin(async {
            let Some(startup) = startup_phase(shared, stream, &mut buf).await? else {
                return Ok(None);
            };
            let config = shared.config();
            if shared.client_count.load(Ordering::Relaxed) >= config.proxy.max_client_conn {
                Metrics::add(&shared.metrics.clients_refused, 1);
                return Err(SessionEnd::Fatal {
                    code: "53300",
                    message: format!(
                        "no more connections allowed: max_client_conn ({}) reached",
                        config.proxy.max_client_conn
                    ),
                });
            }
            let secret = shared.secret_of(&startup.user).await;
            let credential = crate::auth::authenticate(
                stream,
                &mut buf,
                config.proxy.auth_type,
                &startup.user,
                secret,
                |password| shared.cached_verifier(&startup.user, password),
            )
            .await
            .inspect_err(|e| {
                if matches!(e, SessionEnd::Fatal { code: "28P01", .. }) {
                    Metrics::add(&shared.metrics.auth_failures, 1);
                }
            })?;
            Ok(Some((startup, credential)))
        }),
    )
    .await
    .map_err(|_| SessionEnd::Fatal {
        code: "08P01",
        message: "authentication timed out".into(),
    })??;
    let Some((startup, credential)) = login else {
        return Ok(());
    };
    shared.remember_credential(&startup.user, &credential);
    Metrics::add(&shared.metrics.clients_accepted, 1);
    let _counted = shared.count_client();

    if startup.database == crate::admin::ADMIN_DATABASE {
        return Box::pin(crate::admin::serve(shared, stream, &mut buf, &startup.user)).await;
    }
    let entry = shared.register_client(
        &startup.user,
        &startup.database,
        peer,
        port,
        stream.is_tls(),
    );
    let _registered = crate::Registration {
        shared: shared.clone(),
        entry: entry.clone(),
    };
    let mut session = Session {
        shared: shared.clone(),
        entry,
        port,
        user: startup.user,
        database: startup.database,
        credential,
        mode: shared.config().proxy.pool_mode,
        client_params: BTreeMap::new(),
        statements: ClientStatements::default(),
        routing: shared.routing.clone(),
        held: None,
        target: None,
        fingerprint: None,
    };
    for (k, v) in startup.settings {
        session.client_params.insert(k, v);
    }
    Box::pin(session.login(stream)).await?;
    session.forward(stream, buf).await
}

/// Reads packets until the StartupMessage; answers SSLRequest and
/// GSSENCRequest, serves a CancelRequest (then returns `None`).
async fn startup_phase(
    shared: &Arc<Shared>,
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<Option<Startup>, SessionEnd> {
    let mut tls_offered = false;
    loop {
        let packet = loop {
            if let Some(p) = StartupPacket::decode(buf).map_err(|e| match e {
                WireError::UnsupportedProtocol { .. } => SessionEnd::Fatal {
                    code: "0A000",
                    message: e.to_string(),
                },
                other => SessionEnd::protocol(other),
            })? {
                break p;
            }
            buf.reserve(256);
            if stream.read_buf(buf).await.map_err(|_| SessionEnd::Gone)? == 0 {
                return Err(SessionEnd::Gone);
            }
        };
        match packet {
            StartupPacket::SslRequest if !tls_offered && !stream.is_tls() => {
                tls_offered = true;
                let acceptor = shared.client_tls();
                let Some(acceptor) = acceptor else {
                    stream.write_all(b"N").await.map_err(|_| SessionEnd::Gone)?;
                    continue;
                };
                if !buf.is_empty() {
                    // Bytes after SSLRequest before the handshake: a
                    // man-in-the-middle injection attempt (CVE-2021-23222).
                    return Err(SessionEnd::Fatal {
                        code: "08P01",
                        message: "received unencrypted data after SSL request".into(),
                    });
                }
                stream.write_all(b"S").await.map_err(|_| SessionEnd::Gone)?;
                let Stream::Plain(tcp) = std::mem::replace(stream, Stream::Closed) else {
                    unreachable!("checked is_tls above");
                };
                let tls = acceptor.accept(tcp).await.map_err(|_| SessionEnd::Gone)?;
                *stream = Stream::FromClientTls(Box::new(tls));
            }
            StartupPacket::GssEncRequest if !stream.is_tls() => {
                stream.write_all(b"N").await.map_err(|_| SessionEnd::Gone)?;
            }
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                return Err(SessionEnd::Fatal {
                    code: "08P01",
                    message: "encryption requested twice".into(),
                })
            }
            StartupPacket::CancelRequest {
                process_id,
                secret_key,
            } => {
                Metrics::add(&shared.metrics.cancel_requests, 1);
                shared.cancel(process_id, secret_key).await;
                return Ok(None);
            }
            StartupPacket::Startup { minor, params } => {
                if shared.config().proxy.client_tls_sslmode == ClientTlsMode::Require
                    && !stream.is_tls()
                {
                    return Err(SessionEnd::Fatal {
                        code: "28000",
                        message: "TLS is required (client_tls_sslmode = require): connect with sslmode=require".into(),
                    });
                }
                let mut unrecognized = Vec::new();
                let mut user = None;
                let mut database = None;
                let mut settings = Vec::new();
                for (k, v) in params {
                    match k.as_str() {
                        "user" => user = Some(v),
                        "database" => database = Some(v),
                        "replication" if v != "false" && v != "0" && v != "off" => {
                            return Err(SessionEnd::Fatal {
                                code: "08P01",
                                message: "replication connections are not supported through the proxy; connect to the node directly".into(),
                            })
                        }
                        "replication" => {}
                        "options" => {
                            let parsed = parse_options(&v).map_err(SessionEnd::protocol)?;
                            settings.extend(parsed);
                        }
                        _ if k.starts_with("_pq_.") => unrecognized.push(k),
                        _ if !is_setting_name(&k) => {
                            return Err(SessionEnd::Fatal {
                                code: "42704",
                                message: format!("unrecognized configuration parameter \"{k}\""),
                            })
                        }
                        _ => settings.push((k, v)),
                    }
                }
                if minor > 0 || !unrecognized.is_empty() {
                    send(
                        stream,
                        &[BackendMessage::NegotiateProtocolVersion {
                            newest_minor: 0,
                            unrecognized,
                        }],
                    )
                    .await?;
                }
                let user = user.filter(|u| !u.is_empty()).ok_or(SessionEnd::Fatal {
                    code: "28000",
                    message: "no PostgreSQL user name specified in startup packet".into(),
                })?;
                let database = database
                    .filter(|d| !d.is_empty())
                    .unwrap_or_else(|| user.clone());
                return Ok(Some(Startup {
                    user,
                    database,
                    settings: settings
                        .into_iter()
                        .filter(|(k, _)| !NOT_SETTINGS.contains(&k.as_str()))
                        .collect(),
                }));
            }
        }
    }
}

struct Session {
    shared: Arc<Shared>,
    entry: Arc<ClientEntry>,
    port: Port,
    user: String,
    database: String,
    credential: ServerCredential,
    mode: PoolMode,
    /// What the client believes the session parameters are: reported values
    /// it was sent, and settings it asked for.
    client_params: BTreeMap<String, String>,
    statements: ClientStatements,
    routing: tokio::sync::watch::Receiver<Arc<crate::routing::Routing>>,
    /// The server connection the client holds, if any.
    held: Option<Checkout>,
    /// Where its last transaction went.
    target: Option<Arc<crate::Target>>,
    /// Cached fingerprint of `client_params` (`None` after a change).
    fingerprint: Option<u64>,
}

impl Session {
    /// AuthenticationOk, a first server connection (which proves the database
    /// and credentials work), the parameters, the key, ReadyForQuery.
    async fn login(&mut self, stream: &mut Stream) -> Result<(), SessionEnd> {
        send(
            stream,
            &[BackendMessage::Authentication(
                pgwarden_wire::backend::Authentication::Ok,
            )],
        )
        .await?;
        let mut checkout = self.checkout().await?;
        let mut out = BytesMut::new();
        self.sync_params(&mut checkout, &mut out, true).await?;
        BackendMessage::BackendKeyData {
            process_id: self.entry.process_id,
            secret_key: self.entry.secret_key,
        }
        .encode(&mut out);
        BackendMessage::ReadyForQuery(TxStatus::Idle).encode(&mut out);
        stream.write_all(&out).await.map_err(|_| SessionEnd::Gone)?;
        self.held = Some(checkout);
        Ok(())
    }

    /// The checkout of most transactions: the target of the last one is
    /// still valid and its pool has an idle connection, so no lookup, no
    /// timer and no await. Read-only clients are re-balanced every time.
    fn checkout_now(&mut self) -> Option<Checkout> {
        if self.port != Port::ReadWrite {
            return None;
        }
        let target = self
            .target
            .as_ref()
            .filter(|t| self.shared.still_valid(t, &self.routing))?;
        let checkout = self.shared.try_checkout(target)?;
        self.entry.set_server(Some(&checkout));
        Some(checkout)
    }

    async fn checkout(&mut self) -> Result<Checkout, SessionEnd> {
        let deadline = tokio::time::Instant::now() + self.shared.config().query_wait_timeout();
        // Read-only targets are re-resolved every time (least connections).
        let reusable = self.port == Port::ReadWrite
            && self
                .target
                .as_ref()
                .is_some_and(|t| self.shared.still_valid(t, &self.routing));
        let target = match (&self.target, reusable) {
            (Some(t), true) => t.clone(),
            _ => {
                // Boxed: a wait for routing is rare, and keeping its state
                // out of this future keeps every other checkout cheap.
                let t = Box::pin(self.shared.resolve(
                    self.port,
                    &self.user,
                    &self.database,
                    &mut self.routing,
                    deadline,
                ))
                .await?;
                self.target = Some(t.clone());
                t
            }
        };
        let checkout = self
            .shared
            .checkout(target, &self.credential, deadline)
            .await?;
        self.entry.set_server(Some(&checkout));
        Ok(checkout)
    }

    /// Whether the server's session settings are already what the client
    /// expects (the usual case: [`Session::sync_params`] has nothing to do).
    fn params_match(&mut self, checkout: &mut Checkout) -> bool {
        let mine = *self
            .fingerprint
            .get_or_insert_with(|| crate::server::settings_fingerprint(self.client_params.iter()));
        checkout.conn.conn.fingerprint() == mine
    }

    /// Makes the server's session parameters what the client expects (SET
    /// and RESET, answers hidden), then tells the client about every
    /// reported parameter that still differs (such as `in_hot_standby` when
    /// it moved to another node). At login every parameter is announced.
    async fn sync_params(
        &mut self,
        checkout: &mut Checkout,
        out: &mut BytesMut,
        at_login: bool,
    ) -> Result<(), SessionEnd> {
        if !at_login && self.params_match(checkout) {
            return Ok(());
        }
        let server = &mut checkout.conn.conn;
        self.fingerprint = None;
        // set_config() takes the value as text, exactly like `-c name=value`
        // in the startup packet (a list stays a list: SET would quote it
        // into one element).
        let mut sets = Vec::new();
        for (name, value) in &self.client_params {
            if SERVER_OWNED.iter().any(|o| o.eq_ignore_ascii_case(name)) {
                continue;
            }
            let current = lookup(&server.params, name).or_else(|| lookup(&server.applied, name));
            if current != Some(value.as_str()) {
                sets.push(format!(
                    "pg_catalog.set_config({}, {}, false)",
                    quote_literal(name),
                    quote_literal(value)
                ));
                server.applied.insert(name.clone(), value.clone());
                server.fingerprint = None;
            }
        }
        let mut sql = if sets.is_empty() {
            String::new()
        } else {
            format!("SELECT {};", sets.join(", "))
        };
        let stale: Vec<String> = server
            .applied
            .keys()
            .filter(|k| lookup(&self.client_params, k).is_none())
            .cloned()
            .collect();
        for name in stale {
            sql.push_str(&format!("RESET {name};"));
            server.applied.remove(&name);
            server.fingerprint = None;
        }
        if !sql.is_empty() {
            match server.run_hidden(&sql).await {
                Ok(None) => {}
                Ok(Some(fields)) if at_login => return Err(SessionEnd::Server(fields)),
                Ok(Some(fields)) => tracing::warn!(
                    error = pgwarden_wire::backend::error_field(&fields, b'M').unwrap_or(""),
                    "restoring session parameters failed"
                ),
                Err(e) => {
                    return Err(SessionEnd::Fatal {
                        code: "08006",
                        message: e.to_string(),
                    })
                }
            }
        }
        if at_login {
            // From now on, names are the server's spelling (DateStyle, not datestyle).
            let settings = std::mem::take(&mut self.client_params);
            for (name, value) in &server.params {
                BackendMessage::ParameterStatus {
                    name: name.clone(),
                    value: value.clone(),
                }
                .encode(out);
                self.client_params.insert(name.clone(), value.clone());
            }
            for (name, value) in settings {
                if lookup(&self.client_params, &name).is_none() {
                    self.client_params.insert(name, value);
                }
            }
            return Ok(());
        }
        for (name, value) in &server.params {
            if self.client_params.get(name) != Some(value) {
                BackendMessage::ParameterStatus {
                    name: name.clone(),
                    value: value.clone(),
                }
                .encode(out);
                self.client_params.insert(name.clone(), value.clone());
            }
        }
        Ok(())
    }

    /// Gives the held server connection back (or closes it when its state
    /// is not reusable).
    async fn release(&mut self, mut checkout: Checkout, reusable: bool, leaving: bool) {
        self.entry.set_server(None);
        let server = &mut checkout.conn.conn;
        let mut reusable = reusable;
        if reusable && leaving && self.mode == PoolMode::Session {
            let reset = self.shared.config().proxy.server_reset_query.clone();
            if !reset.is_empty() {
                reusable = matches!(server.run_hidden(&reset).await, Ok(None));
                server.applied.clear();
                server.fingerprint = None;
                server.prepared.clear();
            }
        }
        if reusable && server.prepared_uncertain {
            reusable = matches!(server.run_hidden("DEALLOCATE ALL").await, Ok(None));
            server.prepared.clear();
            server.prepared_uncertain = false;
        }
        self.shared.release(checkout, reusable);
    }

    /// Gives back the connection of a finished transaction at once when no
    /// cleanup query is due (the usual case); else it is handed back to the
    /// caller for [`Session::release`].
    fn release_now(&mut self, checkout: Checkout) -> Option<Checkout> {
        if checkout.conn.conn.prepared_uncertain {
            return Some(checkout);
        }
        self.entry.set_server(None);
        self.shared.release(checkout, true);
        None
    }

    /// The forwarding loop, until the client leaves.
    async fn forward(mut self, stream: &mut Stream, mut cbuf: BytesMut) -> Result<(), SessionEnd> {
        let transaction_mode = self.mode == PoolMode::Transaction;
        if transaction_mode {
            if let Some(c) = self.held.take() {
                Box::pin(self.release(c, true, false)).await;
            }
        }
        let metrics = self.shared.metrics.clone();
        let mut routing = self.routing.clone();
        loop {
            // Wait for a whole message from the client.
            if !has_frame(&cbuf) {
                if cbuf.is_empty() && self.held.is_none() {
                    // Idle without a server: no buffer while waiting. It
                    // goes to the spares, and the next active client (or
                    // this one) takes it instead of allocating one.
                    self.shared.give_buffer(std::mem::take(&mut cbuf));
                    stream.readable().await.map_err(|_| SessionEnd::Gone)?;
                    cbuf = self.shared.take_buffer();
                }
                cbuf.reserve(READ_CHUNK);
                let read = match self.held.as_ref() {
                    // Holding a server (session mode): its node may lose the
                    // leader key while the client is quiet.
                    Some(held) => loop {
                        tokio::select! {
                            changed = routing.changed() => {
                                if changed.is_ok() && held.is_fenced(&routing.borrow_and_update()) {
                                    Metrics::add(&metrics.fenced_connections, 1);
                                    return Err(fenced_end(held.node()));
                                }
                            }
                            read = stream.read_buf(&mut cbuf) => break read,
                        }
                    },
                    None => stream.read_buf(&mut cbuf).await,
                };
                let n = read.map_err(|_| SessionEnd::Gone)?;
                if n == 0 {
                    return Box::pin(self.client_gone(None)).await;
                }
                Metrics::add(&metrics.bytes_from_clients, n as u64);
                continue;
            }
            if is_terminate(&cbuf) && self.held.is_none() {
                return Ok(());
            }
            // The slow paths (waiting for or opening a connection, restoring
            // settings) are boxed so the idle task stays small; the usual
            // transaction takes an idle connection synchronously.
            let mut checkout = match self.held.take() {
                Some(c) => c,
                None => {
                    let mut c = match self.checkout_now() {
                        Some(c) => c,
                        None => Box::pin(self.checkout()).await?,
                    };
                    if !self.params_match(&mut c) {
                        let mut out = BytesMut::new();
                        Box::pin(self.sync_params(&mut c, &mut out, false)).await?;
                        if !out.is_empty() {
                            stream.write_all(&out).await.map_err(|_| SessionEnd::Gone)?;
                        }
                    }
                    if transaction_mode {
                        Metrics::add(&metrics.transactions, 1);
                    }
                    c
                }
            };
            let outcome = Box::pin(self.exchange(
                stream,
                &mut cbuf,
                &mut checkout,
                &mut routing,
                transaction_mode,
            ))
            .await;
            match outcome {
                Ok(Exchange::Idle) => {
                    if transaction_mode {
                        if let Some(checkout) = self.release_now(checkout) {
                            Box::pin(self.release(checkout, true, false)).await;
                        }
                    } else {
                        self.held = Some(checkout);
                    }
                }
                Ok(Exchange::ClientLeft { clean }) => {
                    Box::pin(self.release(checkout, clean, true)).await;
                    return Ok(());
                }
                Err(end) => {
                    self.entry.set_server(None);
                    self.shared.release(checkout, false);
                    return Err(end);
                }
            }
        }
    }

    /// Sends what the client has and pumps both directions until the server
    /// is idle with nothing outstanding (or the client leaves).
    async fn exchange(
        &mut self,
        stream: &mut Stream,
        cbuf: &mut BytesMut,
        checkout: &mut Checkout,
        routing: &mut tokio::sync::watch::Receiver<Arc<crate::routing::Routing>>,
        transaction_mode: bool,
    ) -> Result<Exchange, SessionEnd> {
        let metrics = self.shared.metrics.clone();
        let mut pending: u32 = 0;
        let mut open_extended = false;
        let mut status = TxStatus::Idle;
        let mut leaving = false;
        let mut scanner = FrameScanner::new(crate::server::MAX_SERVER_MESSAGE);
        if checkout.is_fenced(&routing.borrow_and_update()) {
            Metrics::add(&metrics.fenced_connections, 1);
            return Err(fenced_end(checkout.node()));
        }
        let mut sbuf = std::mem::take(&mut checkout.conn.conn.read_buf);
        let result = loop {
            // Forward whatever whole messages the client has sent.
            if has_frame(cbuf) && !leaving {
                let server = &mut checkout.conn.conn;
                let before = server.prepared.len();
                let rw = rewrite_batch(
                    cbuf,
                    &mut self.statements,
                    &mut server.prepared,
                    transaction_mode,
                    MAX_CLIENT_MESSAGE,
                )
                .map_err(SessionEnd::protocol)?;
                if !rw.prepare_first.is_empty() {
                    if pending > 0 || open_extended {
                        break Err(SessionEnd::Fatal {
                            code: "0A000",
                            message: "a statement prepared in an earlier transaction was used inside an unsynchronized pipeline; send Sync before reusing it (transaction pooling)".into(),
                        });
                    }
                    prepare_on_server(server, &rw.prepare_first).await?;
                }
                if server.prepared.len() > before {
                    checkout.added_statements = true;
                }
                if !rw.out.is_empty() {
                    if let Err(e) = server.stream.write_all(&rw.out).await {
                        break Err(server_lost(&server.address, &e));
                    }
                }
                pending += rw.syncs;
                Metrics::add(&metrics.queries, u64::from(rw.syncs));
                if rw.syncs > 0 || !rw.out.is_empty() {
                    open_extended = rw.open_extended || (open_extended && rw.syncs == 0);
                }
                if rw.terminate {
                    leaving = true;
                }
            }
            if pending == 0 && !open_extended && scanner.at_boundary() {
                if leaving {
                    break Ok(Exchange::ClientLeft {
                        clean: status == TxStatus::Idle,
                    });
                }
                if status == TxStatus::Idle || !transaction_mode {
                    break Ok(Exchange::Idle);
                }
            }
            let server = &mut checkout.conn.conn;
            if sbuf.capacity() - sbuf.len() < 1024 {
                sbuf.reserve(READ_CHUNK);
            }
            if cbuf.capacity() - cbuf.len() < 1024 {
                cbuf.reserve(READ_CHUNK);
            }
            tokio::select! {
                biased;
                changed = routing.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    let current = routing.borrow_and_update().clone();
                    if checkout.is_fenced(&current) {
                        Metrics::add(&metrics.fenced_connections, 1);
                        break Err(fenced_end(checkout.node()));
                    }
                }
                read = server.stream.read_buf(&mut sbuf) => {
                    let n = match read {
                        Ok(0) => break Err(server_lost(&server.address, &std::io::ErrorKind::UnexpectedEof.into())),
                        Ok(n) => n,
                        Err(e) => break Err(server_lost(&server.address, &e)),
                    };
                    Metrics::add(&metrics.bytes_from_servers, n as u64);
                    let mut ready = 0u32;
                    let mut last_status = None;
                    let mut error = false;
                    let mut params_changed = false;
                    let params = &mut server.params;
                    let client_params = &mut self.client_params;
                    let scan = scanner.feed(
                        &sbuf,
                        |t| t == b'Z' || t == b'S',
                        |ev| {
                            match ev {
                                FrameEvent::Begin { tag: b'E', .. } => error = true,
                                FrameEvent::Body { tag: b'Z', body } => {
                                    ready += 1;
                                    last_status = body.first().and_then(|b| TxStatus::from_byte(*b));
                                }
                                FrameEvent::Body { tag: b'S', body } => {
                                    if let Ok(BackendMessage::ParameterStatus { name, value }) =
                                        BackendMessage::decode(b'S', body)
                                    {
                                        client_params.insert(name.clone(), value.clone());
                                        params.insert(name, value);
                                        params_changed = true;
                                    }
                                }
                                _ => {}
                            }
                            ControlFlow::Continue(())
                        },
                    );
                    if let Err(e) = scan {
                        break Err(SessionEnd::Fatal { code: "08P01", message: format!("server {}: {e}", server.address) });
                    }
                    if params_changed {
                        server.fingerprint = None;
                        self.fingerprint = None;
                    }
                    if error && checkout.added_statements {
                        server.prepared_uncertain = true;
                    }
                    pending = pending.saturating_sub(ready);
                    if let Some(s) = last_status {
                        status = s;
                    }
                    if let Err(_e) = stream.write_all(&sbuf).await {
                        sbuf.clear();
                        break Ok(Exchange::ClientLeft { clean: false });
                    }
                    sbuf.clear();
                }
                read = stream.read_buf(cbuf), if !leaving => {
                    match read {
                        Ok(0) | Err(_) => {
                            leaving = true;
                            // Whatever is outstanding is answered to nobody:
                            // the connection is reusable only if idle now.
                            if pending > 0 || open_extended {
                                break Ok(Exchange::ClientLeft { clean: false });
                            }
                        }
                        Ok(n) => Metrics::add(&metrics.bytes_from_clients, n as u64),
                    }
                }
            }
        };
        if sbuf.capacity() <= MAX_KEPT_READ_BUF {
            checkout.conn.conn.read_buf = sbuf;
        }
        result
    }

    /// The client closed its socket while holding nothing or something.
    async fn client_gone(&mut self, _reason: Option<&str>) -> Result<(), SessionEnd> {
        if let Some(c) = self.held.take() {
            self.release(c, true, true).await;
        }
        Ok(())
    }
}

/// How one exchange ended.
enum Exchange {
    /// Nothing outstanding and (transaction mode) not inside a transaction.
    Idle,
    /// The client left; `clean` when the server connection is reusable.
    ClientLeft { clean: bool },
}

fn fenced_end(node: &str) -> SessionEnd {
    SessionEnd::Fatal {
        code: "57P01",
        message: format!(
            "terminating connection because server {node} no longer holds the leader key"
        ),
    }
}

fn server_lost(address: &str, e: &std::io::Error) -> SessionEnd {
    SessionEnd::Fatal {
        code: "08006",
        message: format!("server connection to {address} was lost: {e}"),
    }
}

/// Creates statements on a server before a batch that uses them.
async fn prepare_on_server(
    server: &mut crate::server::ServerConn,
    defs: &[crate::statements::StatementDef],
) -> Result<(), SessionEnd> {
    let mut out = BytesMut::new();
    for d in defs {
        d.parse_message().encode(&mut out);
    }
    pgwarden_wire::frontend::FrontendMessage::Sync.encode(&mut out);
    server
        .stream
        .write_all(&out)
        .await
        .map_err(|e| server_lost(&server.address, &e))?;
    let mut buf = BytesMut::new();
    let address = server.address.clone();
    loop {
        let (tag, _) = crate::server::read_frame(&mut server.stream, &mut buf, &address)
            .await
            .map_err(|e| SessionEnd::Fatal {
                code: "08006",
                message: e.to_string(),
            })?;
        match tag {
            b'Z' => return Ok(()),
            b'E' => {
                // Which ones exist is unknown now; the client's Bind will
                // report the error, and the statements are redone next time.
                for d in defs {
                    server.prepared.remove(&d.server_name);
                }
                server.prepared_uncertain = true;
            }
            _ => {}
        }
    }
}

/// Whether `buf` starts with a whole frame.
fn has_frame(buf: &[u8]) -> bool {
    if buf.len() < 5 {
        return false;
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    // A bad length is a whole "frame" too: the decoder reports the error.
    len < 4 || buf.len() > len as usize || len as usize > MAX_CLIENT_MESSAGE
}

fn is_terminate(buf: &[u8]) -> bool {
    buf.first() == Some(&b'X')
}

fn lookup<'a>(map: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    map.get(name).map(String::as_str).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    })
}

/// A SQL string literal.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Whether a name can be used in SET without quoting (GUC names).
pub fn is_setting_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_frames_are_recognised() {
        assert!(!has_frame(b"Q\0\0\0"));
        assert!(!has_frame(b"Q\0\0\0\x09sel"));
        assert!(has_frame(b"Q\0\0\0\x05\0"));
        assert!(
            has_frame(b"Q\xff\xff\xff\xff"),
            "bad lengths reach the decoder"
        );
    }

    #[test]
    fn literals_and_names() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert!(is_setting_name("search_path"));
        assert!(is_setting_name("pgwarden.custom"));
        assert!(!is_setting_name("x; DROP TABLE t"));
        assert!(!is_setting_name(""));
    }

    #[test]
    fn lookups_ignore_case() {
        let mut m = BTreeMap::new();
        m.insert("DateStyle".to_string(), "ISO, MDY".to_string());
        assert_eq!(lookup(&m, "datestyle"), Some("ISO, MDY"));
        assert_eq!(lookup(&m, "TimeZone"), None);
    }
}
