//! One connection from the proxy to a PostgreSQL server: connect (TLS when
//! configured), log in with what the proxy knows of the user's secret, and
//! keep what the session state needs (reported parameters, the backend key
//! for cancel requests, the prepared statements it holds).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use bytes::BytesMut;
use pgwarden_pgauth::{md5_response, ScramClient, ScramCredential, Secret};
use pgwarden_wire::backend::{error_field, Authentication, BackendMessage, ErrorFields};
use pgwarden_wire::frame::split_frame;
use pgwarden_wire::frontend::{encode_password, encode_sasl_initial_response, FrontendMessage};
use pgwarden_wire::startup::StartupPacket;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::ServerTlsMode;
use crate::stream::Stream;
use crate::tls::server_name;

/// Upper bound of connecting and logging in to a server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest message accepted from a server (PostgreSQL's own limit is 1 GiB).
pub const MAX_SERVER_MESSAGE: usize = pgwarden_wire::MAX_MESSAGE_LEN;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot reach server {address}: {source}")]
    Io {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("server {address} did not answer within {CONNECT_TIMEOUT:?}")]
    Timeout { address: String },
    /// The server sent an ErrorResponse; it is forwarded to the client as is.
    #[error("server {address} refused: {}", error_field(fields, b'M').unwrap_or("error"))]
    Refused {
        address: String,
        fields: ErrorFields,
    },
    #[error("server {address}: {message}")]
    Protocol { address: String, message: String },
    #[error("server {address} asks for a password the proxy does not know for user {user} (add it to auth_file, or use SCRAM between client and proxy)")]
    NoCredential { address: String, user: String },
}

/// What the proxy can prove to a server for one user.
#[derive(Debug, Clone)]
pub enum ServerCredential {
    /// A stored secret from the user list or auth_query.
    Secret(Secret),
    /// SCRAM keys recovered from the client's own SCRAM exchange.
    ScramKeys {
        client_key: [u8; 32],
        server_key: [u8; 32],
    },
    /// Nothing: only works if the server trusts the proxy.
    None,
}

/// A logged-in server connection.
pub struct ServerConn {
    pub stream: Stream,
    pub address: String,
    pub process_id: i32,
    pub secret_key: i32,
    /// Parameters as the server last reported them.
    pub params: BTreeMap<String, String>,
    /// Settings the proxy applied with SET that the server does not report
    /// (search_path, for instance).
    pub applied: BTreeMap<String, String>,
    /// Server-side names of prepared statements this connection holds.
    pub prepared: HashSet<String>,
    /// A batch with statements prepared on this connection failed: which of
    /// them exist is unknown, so they are deallocated before reuse.
    pub prepared_uncertain: bool,
    /// Cached [`settings_fingerprint`] of `params` and `applied`; `None`
    /// after any change to them.
    pub fingerprint: Option<u64>,
    /// Read buffer of the forwarding loop. It stays with the connection, so
    /// a checkout allocates none and idle clients own none.
    pub read_buf: BytesMut,
}

/// Options of a new server connection.
pub struct ConnectOptions<'a> {
    pub address: &'a str,
    pub user: &'a str,
    pub database: &'a str,
    pub credential: &'a ServerCredential,
    pub tls_mode: ServerTlsMode,
    pub tls: Option<&'a tokio_rustls::TlsConnector>,
    /// Extra startup parameters (application_name, ...).
    pub startup: &'a [(String, String)],
}

pub async fn connect(opts: ConnectOptions<'_>) -> Result<ServerConn, ServerError> {
    let address = opts.address.to_string();
    match tokio::time::timeout(CONNECT_TIMEOUT, connect_inner(opts)).await {
        Ok(r) => r,
        Err(_) => Err(ServerError::Timeout { address }),
    }
}

async fn connect_inner(opts: ConnectOptions<'_>) -> Result<ServerConn, ServerError> {
    let address = opts.address.to_string();
    let io = |source| ServerError::Io {
        address: address.clone(),
        source,
    };
    let tcp = TcpStream::connect(opts.address).await.map_err(io)?;
    tcp.set_nodelay(true).map_err(io)?;
    let mut stream = match (opts.tls_mode, opts.tls) {
        (ServerTlsMode::Disable, _) | (_, None) => Stream::Plain(tcp),
        (mode, Some(connector)) => negotiate_tls(tcp, mode, connector, &address).await?,
    };
    let mut params = vec![
        ("user".to_string(), opts.user.to_string()),
        ("database".to_string(), opts.database.to_string()),
    ];
    params.extend(opts.startup.iter().cloned());
    let mut out = BytesMut::new();
    StartupPacket::Startup { minor: 0, params }.encode(&mut out);
    stream.write_all(&out).await.map_err(io)?;

    let mut conn = ServerConn {
        stream,
        address: address.clone(),
        process_id: 0,
        secret_key: 0,
        params: BTreeMap::new(),
        applied: BTreeMap::new(),
        prepared: HashSet::new(),
        prepared_uncertain: false,
        fingerprint: None,
        read_buf: BytesMut::new(),
    };
    let mut buf = BytesMut::with_capacity(1024);
    let mut scram: Option<ScramClient> = None;
    loop {
        let (tag, body) = read_frame(&mut conn.stream, &mut buf, &address).await?;
        let msg = BackendMessage::decode(tag, &body).map_err(|e| ServerError::Protocol {
            address: address.clone(),
            message: e.to_string(),
        })?;
        out.clear();
        match msg {
            BackendMessage::Authentication(auth) => match auth {
                Authentication::Ok => {}
                Authentication::CleartextPassword => match opts.credential {
                    ServerCredential::Secret(Secret::Plain(p)) => encode_password(&mut out, p),
                    _ => return Err(no_credential(&address, opts.user)),
                },
                Authentication::Md5Password { salt } => {
                    let ServerCredential::Secret(secret) = opts.credential else {
                        return Err(no_credential(&address, opts.user));
                    };
                    let response = md5_response(opts.user, secret, salt)
                        .ok_or_else(|| no_credential(&address, opts.user))?;
                    encode_password(&mut out, &response);
                }
                Authentication::Sasl { mechanisms } => {
                    if !mechanisms
                        .iter()
                        .any(|m| m == pgwarden_pgauth::SCRAM_SHA_256)
                    {
                        return Err(ServerError::Protocol {
                            address,
                            message: format!("unsupported SASL mechanisms {mechanisms:?}"),
                        });
                    }
                    let credential = match opts.credential {
                        ServerCredential::Secret(Secret::Plain(p)) => {
                            ScramCredential::Password(p.clone())
                        }
                        ServerCredential::ScramKeys {
                            client_key,
                            server_key,
                        } => ScramCredential::Keys {
                            client_key: *client_key,
                            server_key: *server_key,
                        },
                        _ => return Err(no_credential(&address, opts.user)),
                    };
                    let mut client = ScramClient::new(credential);
                    let first = client.client_first();
                    encode_sasl_initial_response(&mut out, pgwarden_pgauth::SCRAM_SHA_256, &first);
                    scram = Some(client);
                }
                Authentication::SaslContinue { data } => {
                    let client = scram
                        .as_mut()
                        .ok_or_else(|| protocol(&address, "SASLContinue without SASL"))?;
                    let last = client
                        .handle_server_first(&data)
                        .map_err(|e| protocol(&address, &e.to_string()))?;
                    FrontendMessage::Password(last).encode(&mut out);
                }
                Authentication::SaslFinal { data } => {
                    let client = scram
                        .as_ref()
                        .ok_or_else(|| protocol(&address, "SASLFinal without SASL"))?;
                    client
                        .verify_server_final(&data)
                        .map_err(|e| protocol(&address, &e.to_string()))?;
                }
            },
            BackendMessage::ParameterStatus { name, value } => {
                conn.params.insert(name, value);
            }
            BackendMessage::BackendKeyData {
                process_id,
                secret_key,
            } => {
                conn.process_id = process_id;
                conn.secret_key = secret_key;
            }
            BackendMessage::ReadyForQuery(_) => return Ok(conn),
            BackendMessage::ErrorResponse(fields) => {
                return Err(ServerError::Refused { address, fields })
            }
            BackendMessage::NoticeResponse(_) | BackendMessage::NegotiateProtocolVersion { .. } => {
            }
            other => {
                return Err(protocol(
                    &address,
                    &format!("unexpected message during login: {other:?}"),
                ))
            }
        }
        if !out.is_empty() {
            conn.stream.write_all(&out).await.map_err(io)?;
        }
    }
}

async fn negotiate_tls(
    mut tcp: TcpStream,
    mode: ServerTlsMode,
    connector: &tokio_rustls::TlsConnector,
    address: &str,
) -> Result<Stream, ServerError> {
    let io = |source| ServerError::Io {
        address: address.to_string(),
        source,
    };
    let mut out = BytesMut::new();
    StartupPacket::SslRequest.encode(&mut out);
    tcp.write_all(&out).await.map_err(io)?;
    let answer = tcp.read_u8().await.map_err(io)?;
    match answer {
        b'S' => {
            let tls = connector
                .connect(server_name(address), tcp)
                .await
                .map_err(io)?;
            Ok(Stream::ToServerTls(Box::new(tls)))
        }
        b'N' if mode == ServerTlsMode::Prefer => Ok(Stream::Plain(tcp)),
        b'N' => Err(protocol(
            address,
            "the server does not accept TLS but server_tls_sslmode requires it",
        )),
        other => Err(protocol(
            address,
            &format!("unexpected answer {other:#x} to SSLRequest"),
        )),
    }
}

fn no_credential(address: &str, user: &str) -> ServerError {
    ServerError::NoCredential {
        address: address.to_string(),
        user: user.to_string(),
    }
}

fn protocol(address: &str, message: &str) -> ServerError {
    ServerError::Protocol {
        address: address.to_string(),
        message: message.to_string(),
    }
}

/// Reads one whole frame (login phase and injected queries only; the hot
/// path forwards raw bytes).
pub async fn read_frame(
    stream: &mut Stream,
    buf: &mut BytesMut,
    address: &str,
) -> Result<(u8, BytesMut), ServerError> {
    loop {
        match split_frame(buf, MAX_SERVER_MESSAGE) {
            Ok(Some(frame)) => return Ok(frame),
            Ok(None) => {}
            Err(e) => return Err(protocol(address, &e.to_string())),
        }
        let n = stream
            .read_buf(buf)
            .await
            .map_err(|source| ServerError::Io {
                address: address.to_string(),
                source,
            })?;
        if n == 0 {
            return Err(ServerError::Io {
                address: address.to_string(),
                source: std::io::ErrorKind::UnexpectedEof.into(),
            });
        }
    }
}

/// An order-independent digest of session settings: equal digests mean the
/// same settings, so a checkout can skip comparing them one by one.
pub fn settings_fingerprint<'a>(entries: impl Iterator<Item = (&'a String, &'a String)>) -> u64 {
    use std::hash::{Hash, Hasher};
    entries.fold(0u64, |acc, (k, v)| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        k.hash(&mut h);
        v.hash(&mut h);
        acc.wrapping_add(h.finish())
    })
}

impl ServerConn {
    /// The fingerprint of what the server's session is set to (reported
    /// parameters, plus settings applied that it does not report).
    pub fn fingerprint(&mut self) -> u64 {
        if let Some(f) = self.fingerprint {
            return f;
        }
        let params = &self.params;
        let f = settings_fingerprint(
            params.iter().chain(
                self.applied
                    .iter()
                    .filter(|(k, _)| !params.contains_key(*k)),
            ),
        );
        self.fingerprint = Some(f);
        f
    }

    /// Runs a simple query whose results nobody sees (SET, DISCARD ALL,
    /// DEALLOCATE ALL), tracking reported parameters. `Ok(Some(fields))` when
    /// the server answered with an error.
    pub async fn run_hidden(&mut self, sql: &str) -> Result<Option<ErrorFields>, ServerError> {
        let mut out = BytesMut::new();
        FrontendMessage::Query(sql.to_string()).encode(&mut out);
        self.stream
            .write_all(&out)
            .await
            .map_err(|source| ServerError::Io {
                address: self.address.clone(),
                source,
            })?;
        let mut buf = BytesMut::with_capacity(256);
        let mut error = None;
        loop {
            let (tag, body) = read_frame(&mut self.stream, &mut buf, &self.address).await?;
            match tag {
                b'Z' => return Ok(error),
                b'S' => {
                    if let Ok(BackendMessage::ParameterStatus { name, value }) =
                        BackendMessage::decode(tag, &body)
                    {
                        self.params.insert(name, value);
                        self.fingerprint = None;
                    }
                }
                b'E' => {
                    if let Ok(BackendMessage::ErrorResponse(f)) = BackendMessage::decode(tag, &body)
                    {
                        error = Some(f);
                    }
                }
                _ => {}
            }
        }
    }

    /// Sends Terminate and closes (best effort, bounded).
    pub async fn terminate(mut self) {
        let mut out = BytesMut::new();
        FrontendMessage::Terminate.encode(&mut out);
        let _ = tokio::time::timeout(Duration::from_millis(200), async {
            let _ = self.stream.write_all(&out).await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }
}

/// Sends a CancelRequest for a server backend.
pub async fn send_cancel(address: &str, process_id: i32, secret_key: i32) -> std::io::Result<()> {
    let mut tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let mut out = BytesMut::new();
    StartupPacket::CancelRequest {
        process_id,
        secret_key,
    }
    .encode(&mut out);
    tcp.write_all(&out).await?;
    // PostgreSQL closes the connection once it has the request.
    let mut sink = [0u8; 1];
    let _ = tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut sink)).await;
    Ok(())
}
