//! The REST server and client over real loopback sockets.
//!
//! The backend here is a plain struct holding fixed test data (no store, no
//! PostgreSQL): what is under test is routing, methods, bodies, headers and the
//! client's parsing, not the agent. Every server binds port 0 and is stopped by
//! its shutdown future (or aborted on drop when a test fails); every network
//! wait is bounded.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pgwarden_api::{serve, ApiBackend, ApiClient, ApiClientError, BoxFuture, NodeStatus};
use pgwarden_types::{
    ClusterSnapshot, ClusterStatus, DataDirState, HistoryLine, LeaderKey, Lsn, Member,
    PgClusterState, PgState, Role, Tags, Versioned,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const BOUND: Duration = Duration::from_secs(10);
const WAL: u64 = 67_108_968;

struct FixedBackend {
    status: NodeStatus,
    cluster: Result<ClusterSnapshot, String>,
}

impl ApiBackend for FixedBackend {
    fn status(&self) -> NodeStatus {
        self.status.clone()
    }

    fn cluster(&self) -> BoxFuture<'_, Result<ClusterSnapshot, String>> {
        let cluster = self.cluster.clone();
        Box::pin(async move { cluster })
    }
}

fn streaming_replica() -> NodeStatus {
    let mut s = NodeStatus::starting(
        "batman",
        "postgresql1",
        chrono::Utc::now().timestamp_millis(),
    );
    s.state = PgState::Running;
    s.role = Role::Replica;
    s.dcs_reachable = true;
    s.cluster_unlocked = false;
    s.dcs_last_seen = Some(1_785_578_700);
    s.tags = Tags {
        clonefrom: true,
        ..Tags::default()
    };
    s.timeline = Some(5);
    s.replication_state = Some("streaming".into());
    s.cluster_optime = Some(Lsn(WAL));
    s.server_version = Some(170_002);
    s.postmaster_start_time = Some("2026-08-01 10:00:00.123456+00:00".into());
    s.pg.data_dir = DataDirState::Initialized {
        system_identifier: "7277694203142172922".into(),
        cluster_state: PgClusterState::InArchiveRecovery,
        checkpoint_timeline: 5,
        standby_signal: true,
    };
    s.pg.postmaster_pid = Some(4242);
    s.pg.accepting_connections = true;
    s.pg.in_recovery = Some(true);
    s.pg.receive_lsn = Some(Lsn(WAL));
    s.pg.replay_lsn = Some(Lsn(WAL - 10));
    s.pg.streaming = true;
    s
}

fn cluster() -> ClusterSnapshot {
    let member = |name: &str, data: Value| Member {
        name: name.into(),
        data: serde_json::from_value(data).unwrap(),
        mod_revision: 1,
        lease: 1,
    };
    ClusterSnapshot {
        revision: 9,
        initialize: Some("7277694203142172922".into()),
        config: Some(Versioned {
            value: json!({"ttl": 30, "loop_wait": 10}),
            mod_revision: 2,
        }),
        leader: Some(LeaderKey {
            name: "postgresql0".into(),
            create_revision: 3,
            mod_revision: 3,
            lease: 7,
        }),
        members: vec![
            member(
                "postgresql1",
                json!({"conn_url": "postgres://127.0.0.1:5433/postgres", "api_url": "http://127.0.0.1:8009/patroni", "state": "running", "role": "replica", "xlog_location": WAL, "receive_lsn": WAL, "replay_lsn": WAL - 10, "replication_state": "streaming", "timeline": 5}),
            ),
            member(
                "postgresql0",
                json!({"conn_url": "postgres://127.0.0.1:5432/postgres", "api_url": "http://127.0.0.1:8008/patroni", "state": "running", "role": "primary", "xlog_location": WAL, "timeline": 5}),
            ),
        ],
        failover: None,
        sync: None,
        history: HistoryLine::parse_all(
            r#"[[4,50331808,"no recovery target specified","2026-07-01T00:00:00+00:00","postgresql0"]]"#,
        ),
        status: ClusterStatus {
            optime: Some(WAL),
            slots: BTreeMap::new(),
            retain_slots: Vec::new(),
        },
        failsafe: None,
    }
}

/// A served backend; shut down on `stop`, aborted if a test panics first.
struct Server {
    base: String,
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    async fn start(status: NodeStatus, cluster: Result<ClusterSnapshot, String>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let backend = Arc::new(FixedBackend { status, cluster });
        let task = tokio::spawn(serve(listener, backend, async move {
            let _ = stopped.await;
        }));
        Server {
            base: format!("http://{addr}"),
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        let result = timeout(BOUND, task)
            .await
            .expect("server stops after shutdown");
        result.unwrap().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// One raw HTTP/1.1 exchange; returns (status line, header block, body bytes).
async fn raw(addr: std::net::SocketAddr, method: &str, path: &str) -> (String, String, Vec<u8>) {
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    raw_request(addr, request).await
}

async fn raw_request(addr: std::net::SocketAddr, request: String) -> (String, String, Vec<u8>) {
    timeout(BOUND, async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("complete head");
        let head = String::from_utf8(response[..split].to_vec()).unwrap();
        let body = response[split + 4..].to_vec();
        let (status_line, headers) = head.split_once("\r\n").unwrap_or((&head, ""));
        (status_line.to_string(), headers.to_lowercase(), body)
    })
    .await
    .expect("raw HTTP exchange finished")
}

async fn get(url: &str) -> (u16, Option<String>, String) {
    let response = timeout(
        BOUND,
        pgwarden_api::http_client_builder()
            .build()
            .unwrap()
            .get(url)
            .send(),
    )
    .await
    .unwrap()
    .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    (status, content_type, response.text().await.unwrap())
}

#[tokio::test]
async fn get_answers_json_documents_with_health_status() {
    let server = Server::start(streaming_replica(), Ok(cluster())).await;

    let (code, content_type, body) = get(&format!("{}/patroni", server.base)).await;
    assert_eq!(code, 200);
    assert_eq!(content_type.as_deref(), Some("application/json"));
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["role"], "replica");
    assert_eq!(doc["xlog"]["received_location"], WAL);
    assert_eq!(doc["patroni"]["name"], "postgresql1");

    for (path, want) in [
        ("/replica", 200),
        ("/read-only", 200),
        ("/health", 200),
        ("/async", 200),
        ("/primary", 503),
        ("/", 503),
        ("/leader", 503),
        ("/sync", 503),
        ("/replica?tag_clonefrom=true", 200),
        ("/replica?tag_dc=east", 503),
        ("/no-such-endpoint", 503),
    ] {
        let (code, content_type, body) = get(&format!("{}{path}", server.base)).await;
        assert_eq!(code, want, "{path}");
        assert_eq!(content_type.as_deref(), Some("application/json"), "{path}");
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            doc["role"], "replica",
            "{path} carries the /patroni document"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn head_and_options_answer_status_only() {
    let server = Server::start(streaming_replica(), Ok(cluster())).await;
    for (method, path, want) in [
        ("HEAD", "/replica", "200"),
        ("OPTIONS", "/replica", "200"),
        ("HEAD", "/primary", "503"),
        ("OPTIONS", "/primary", "503"),
        ("OPTIONS", "/read-only?lag=1GB", "200"),
        ("HEAD", "/nonsense", "503"),
        // Patroni routes HEAD/OPTIONS of every path to the health handler.
        ("HEAD", "/patroni", "503"),
        ("OPTIONS", "/cluster", "503"),
        ("GET", "/liveness", "200"),
        ("HEAD", "/liveness", "200"),
        ("GET", "/readiness", "200"),
    ] {
        let (status_line, headers, body) = raw(server.addr, method, path).await;
        assert!(
            status_line.starts_with(&format!("HTTP/1.1 {want} ")),
            "{method} {path}: {status_line}"
        );
        assert!(
            body.is_empty(),
            "{method} {path} has a body: {:?}",
            String::from_utf8_lossy(&body)
        );
        assert!(
            !headers.contains("content-type"),
            "{method} {path}: {headers}"
        );
    }
    // HAProxy's classic check: HTTP/1.0, no Host header; the server closes after answering.
    let (status_line, _, body) =
        raw_request(server.addr, "OPTIONS /replica HTTP/1.0\r\n\r\n".into()).await;
    assert!(
        status_line.starts_with("HTTP/1.0 200 ") || status_line.starts_with("HTTP/1.1 200 "),
        "{status_line}"
    );
    assert!(body.is_empty());
    // Methods without a handler.
    let (status_line, _, _) = raw(server.addr, "POST", "/replica").await;
    assert!(status_line.starts_with("HTTP/1.1 501 "), "{status_line}");
    server.stop().await;
}

#[tokio::test]
async fn cluster_history_and_config_come_from_the_snapshot() {
    let server = Server::start(streaming_replica(), Ok(cluster())).await;

    let (code, content_type, body) = get(&format!("{}/cluster", server.base)).await;
    assert_eq!(
        (code, content_type.as_deref()),
        (200, Some("application/json"))
    );
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["scope"], "batman");
    assert_eq!(doc["members"][0]["name"], "postgresql0");
    assert_eq!(doc["members"][0]["role"], "leader");
    assert_eq!(doc["members"][1]["replay_lag"], 10);

    let (code, _, body) = get(&format!("{}/history", server.base)).await;
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!([[
            4,
            50331808,
            "no recovery target specified",
            "2026-07-01T00:00:00+00:00",
            "postgresql0"
        ]])
    );

    let (code, content_type, body) = get(&format!("{}/config", server.base)).await;
    assert_eq!(
        (code, content_type.as_deref()),
        (200, Some("application/json"))
    );
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"ttl": 30, "loop_wait": 10})
    );
    server.stop().await;

    let no_config = ClusterSnapshot {
        config: None,
        ..cluster()
    };
    let server = Server::start(streaming_replica(), Ok(no_config)).await;
    assert_eq!(get(&format!("{}/config", server.base)).await.0, 502);
    server.stop().await;

    let server = Server::start(streaming_replica(), Err("etcd is unreachable".into())).await;
    let (code, content_type, body) = get(&format!("{}/cluster", server.base)).await;
    assert_eq!(
        (code, content_type.as_deref()),
        (503, Some("application/json"))
    );
    assert!(body.contains("etcd is unreachable"), "{body}");
    assert_eq!(get(&format!("{}/history", server.base)).await.0, 503);
    // Health checks and /patroni do not depend on the store being readable now.
    assert_eq!(get(&format!("{}/patroni", server.base)).await.0, 200);
    assert_eq!(get(&format!("{}/replica", server.base)).await.0, 200);
    server.stop().await;
}

#[tokio::test]
async fn client_reads_what_the_server_serves() {
    let server = Server::start(streaming_replica(), Ok(cluster())).await;
    let client = ApiClient::new(Duration::from_secs(2));

    // A member key's api_url works as the base.
    let report = client
        .get_patroni(&format!("{}/patroni", server.base))
        .await
        .unwrap();
    assert_eq!(report.role, Some(Role::Replica));
    assert_eq!(report.state, Some(PgState::Running));
    assert_eq!(report.wal_position, Some(Lsn(WAL)));
    assert_eq!(report.timeline, Some(5));
    assert!(report.tags.clonefrom);
    assert!(!report.watchdog_failed);

    let doc = client.get_cluster(&server.base).await.unwrap();
    assert_eq!(doc.scope, "batman");
    assert_eq!(doc.members.len(), 2);
    assert_eq!(doc.members[1].port, Some(5433));

    assert_eq!(client.health(&server.base, "/replica").await.unwrap(), 200);
    assert_eq!(client.health(&server.base, "/primary").await.unwrap(), 503);
    server.stop().await;
}

/// Serves one canned response on a raw socket and hands back the request head it saw.
async fn one_shot_http(listener: TcpListener, status: &'static str, body: &'static str) -> String {
    let (mut stream, _) = listener.accept().await.unwrap();
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "client closed before sending a full request");
        request.extend_from_slice(&buf[..n]);
    }
    let response = format!(
        "HTTP/1.0 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
    String::from_utf8_lossy(&request).to_lowercase()
}

#[tokio::test]
async fn client_parses_a_patroni_primary_and_sends_basic_auth() {
    // A Patroni 3.x primary answering over HTTP/1.0, as Patroni's server does.
    const DOC: &str = r#"{"state": "running", "postmaster_start_time": "2026-08-01 09:00:00.000001+00:00", "role": "master", "server_version": 150004, "xlog": {"location": 50331808}, "timeline": 4, "replication": [{"usename": "replicator", "application_name": "pg1", "client_addr": "127.0.0.1", "state": "streaming", "sync_state": "async", "sync_priority": 0}], "dcs_last_seen": 1785578700, "tags": {"nofailover": false, "dc": "east"}, "database_system_identifier": "7277694203142172922", "patroni": {"version": "3.3.1", "scope": "batman", "name": "pg0"}}"#;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let peer = tokio::spawn(one_shot_http(listener, "200 OK", DOC));

    let client = ApiClient::new(Duration::from_secs(2)).with_basic_auth("user", "pass");
    let report = timeout(BOUND, client.get_patroni(&base))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.role, Some(Role::Primary));
    assert_eq!(report.in_recovery, Some(false));
    assert_eq!(report.wal_position, Some(Lsn(50_331_808)));
    assert_eq!(report.timeline, Some(4));
    assert!(!report.tags.nofailover);
    assert_eq!(report.tags.custom["dc"], json!("east"));
    assert_eq!(report.version.as_deref(), Some("3.3.1"));

    let request = timeout(BOUND, peer).await.unwrap().unwrap();
    assert!(
        request.starts_with("get /patroni http/1.1\r\n"),
        "{request}"
    );
    assert!(
        request.contains("authorization: basic dxnlcjpwyxnz"),
        "{request}"
    );
}

#[tokio::test]
async fn client_reports_http_errors_and_garbage() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let peer = tokio::spawn(one_shot_http(
        listener,
        "500 Internal Server Error",
        r#"{"oops":1}"#,
    ));
    let client = ApiClient::new(Duration::from_secs(2));
    let err = timeout(BOUND, client.get_patroni(&base))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, ApiClientError::Status { status: 500, .. }),
        "{err}"
    );
    timeout(BOUND, peer).await.unwrap().unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let peer = tokio::spawn(one_shot_http(listener, "200 OK", "not json"));
    let err = timeout(BOUND, client.get_patroni(&base))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, ApiClientError::InvalidDocument { .. }),
        "{err}"
    );
    timeout(BOUND, peer).await.unwrap().unwrap();
}

#[tokio::test]
async fn client_gives_up_on_a_silent_peer() {
    // The kernel completes the handshake (backlog) but nobody ever answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let client = ApiClient::new(Duration::from_millis(300));
    let err = timeout(BOUND, client.get_patroni(&base))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    drop(listener);

    // Nobody listening at all: an error, promptly, and not a timeout.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let err = timeout(BOUND, client.get_patroni(&base))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, ApiClientError::Request { .. }) && !err.is_timeout(),
        "{err}"
    );
}
