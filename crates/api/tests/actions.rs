//! The write endpoints over a real loopback server, backed by the in-memory
//! store of `pgwarden-dcs` (the same code the conformance suite checks
//! against etcd). A small task stands in for the agents where an endpoint
//! waits for them (the switchover), and node actions are answered by a
//! recording backend: what is under test is validation, status codes,
//! messages and what ends up in the store.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgwarden_api::{
    router_with, serve_router, ApiBackend, ApiSecurity, BoxFuture, FailsafeRefusal, Network,
    NodeAction, NodeStatus,
};
use pgwarden_dcs::{Dcs, MemoryDcs, Precondition};
use pgwarden_types::{ClusterSnapshot, MemberData, PgState, Role, SyncState, Tags};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

struct Backend {
    dcs: Arc<MemoryDcs>,
    status: NodeStatus,
    actions: Mutex<Vec<NodeAction>>,
    answer: Result<String, String>,
    failsafe: Result<(), FailsafeRefusal>,
}

impl ApiBackend for Backend {
    fn status(&self) -> NodeStatus {
        self.status.clone()
    }

    fn cluster(&self) -> BoxFuture<'_, Result<ClusterSnapshot, String>> {
        Box::pin(async move { self.dcs.snapshot().await.map_err(|e| e.to_string()) })
    }

    fn store(&self) -> Option<Arc<dyn Dcs>> {
        Some(self.dcs.clone())
    }

    fn node_action(&self, action: NodeAction) -> BoxFuture<'_, Result<String, String>> {
        self.actions.lock().unwrap().push(action);
        let answer = self.answer.clone();
        Box::pin(async move { answer })
    }

    fn accept_failsafe(&self, _leader: &str) -> Result<(), FailsafeRefusal> {
        self.failsafe
    }
}

struct Server {
    url: String,
    backend: Arc<Backend>,
    _stop: oneshot::Sender<()>,
}

fn member(role: Role, state: PgState, port: u16, tags: Tags) -> MemberData {
    MemberData {
        role,
        state,
        conn_url: format!("postgres://127.0.0.1:{port}/postgres"),
        api_url: format!("http://127.0.0.1:{}/patroni", port + 1000),
        xlog_location: Some(1000),
        timeline: Some(1),
        tags,
        ..MemberData::empty()
    }
}

/// Three members, node1 the leader, a config key, optionally sync mode.
async fn cluster(dcs: &MemoryDcs, config: Value) {
    let lease = dcs.grant_lease(30).await.unwrap();
    dcs.touch_member(
        "node1",
        &member(Role::Primary, PgState::Running, 5432, Tags::default()),
        lease,
    )
    .await
    .unwrap();
    dcs.touch_member(
        "node2",
        &member(Role::Replica, PgState::Running, 5433, Tags::default()),
        lease,
    )
    .await
    .unwrap();
    let nofailover = Tags {
        nofailover: true,
        ..Tags::default()
    };
    dcs.touch_member(
        "node3",
        &member(Role::Replica, PgState::Running, 5434, nofailover),
        lease,
    )
    .await
    .unwrap();
    dcs.acquire_leader("node1", lease).await.unwrap().unwrap();
    dcs.set_config(&config, Precondition::Absent).await.unwrap();
}

async fn start(security: ApiSecurity, answer: Result<String, String>) -> Server {
    let dcs = Arc::new(MemoryDcs::new("batman"));
    cluster(
        &dcs,
        json!({"ttl": 30, "loop_wait": 10, "retry_timeout": 10}),
    )
    .await;
    let mut status = NodeStatus::starting("batman", "node2", chrono::Utc::now().timestamp_millis());
    status.state = PgState::Running;
    status.role = Role::Replica;
    status.server_version = Some(150_004);
    status.loop_wait = std::time::Duration::from_secs(1);
    let backend = Arc::new(Backend {
        dcs,
        status,
        actions: Mutex::new(Vec::new()),
        answer,
        failsafe: Ok(()),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let app = router_with(backend.clone(), security);
    tokio::spawn(serve_router(listener, app, async move {
        let _ = rx.await;
    }));
    Server {
        url: format!("http://{addr}"),
        backend,
        _stop: tx,
    }
}

async fn call(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, String) {
    let client = pgwarden_api::http_client_builder().build().unwrap();
    let mut request = client.request(method, url).timeout(Duration::from_secs(30));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

async fn post(server: &Server, path: &str, body: Value) -> (u16, String) {
    call(
        reqwest::Method::POST,
        &format!("{}{path}", server.url),
        Some(body),
    )
    .await
}

async fn failover_key(server: &Server) -> Option<pgwarden_types::FailoverRequest> {
    server
        .backend
        .dcs
        .snapshot()
        .await
        .unwrap()
        .failover_request()
        .cloned()
}

#[tokio::test]
async fn switchover_validation_changes_nothing_on_bad_input() {
    let server = start(ApiSecurity::default(), Ok("ok".into())).await;
    let cases = [
        (
            json!({"candidate": "node2"}),
            400,
            "only from a specific leader",
        ),
        (
            json!({"leader": "node2", "candidate": "node3"}),
            412,
            "leader name does not match",
        ),
        (
            json!({"leader": "node1", "candidate": "node9"}),
            412,
            "candidate does not exists",
        ),
        (
            json!({"leader": "node1", "candidate": "node3"}),
            412,
            "nofailover",
        ),
        (
            json!({"leader": "node1", "candidate": "node1"}),
            400,
            "the same",
        ),
        (
            json!({"leader": "node1", "candidate": "node2", "scheduled_at": "tomorrow"}),
            400,
            "ISO 8601",
        ),
        (
            json!({"leader": "node1", "candidate": "node2", "scheduled_at": "2001-01-01T00:00:00+00:00"}),
            400,
            "not in the future",
        ),
        (json!({"leader": 7}), 400, "must be a string"),
    ];
    for (body, code, words) in cases {
        let (status, text) = post(&server, "/switchover", body.clone()).await;
        assert_eq!(status, code, "{body}: {text}");
        assert!(text.contains(words), "{body}: {text}");
    }
    let (status, text) = call(
        reqwest::Method::POST,
        &format!("{}/switchover", server.url),
        None,
    )
    .await;
    assert_eq!(status, 400, "{text}");
    let raw = pgwarden_api::http_client_builder()
        .build()
        .unwrap()
        .post(format!("{}/switchover", server.url))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 400);
    assert!(raw.text().await.unwrap().contains("malformed JSON"));
    assert_eq!(failover_key(&server).await, None, "nothing was written");
}

#[tokio::test]
async fn failover_rules() {
    let server = start(ApiSecurity::default(), Ok("ok".into())).await;
    let (status, text) = post(&server, "/failover", json!({})).await;
    assert_eq!(
        (status, text.as_str()),
        (
            400,
            "Failover could be performed only to a specific candidate"
        )
    );
    // A healthy leader exists: refused without force.
    let (status, text) = post(&server, "/failover", json!({"candidate": "node2"})).await;
    assert_eq!(status, 412, "{text}");
    assert!(text.contains("healthy leader"), "{text}");
    assert_eq!(failover_key(&server).await, None);
    let (status, text) = post(
        &server,
        "/failover",
        json!({"candidate": "node2", "scheduled_at": "2100-01-01T00:00:00+00:00"}),
    )
    .await;
    assert_eq!(
        (status, text.as_str()),
        (400, "Failover can't be scheduled")
    );
}

#[tokio::test]
async fn switchover_waits_for_the_new_leader() {
    let server = start(ApiSecurity::default(), Ok("ok".into())).await;
    // Stand-in for the agents: once the failover key names node2, node1
    // releases the key and node2 takes it.
    let dcs = server.backend.dcs.clone();
    let agents = tokio::spawn(async move {
        for _ in 0..200 {
            let snap = dcs.snapshot().await.unwrap();
            if snap.failover_request().and_then(|r| r.member.as_deref()) == Some("node2") {
                dcs.release_leader("node1").await.unwrap();
                let lease = dcs.grant_lease(30).await.unwrap();
                dcs.acquire_leader("node2", lease).await.unwrap();
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    });
    let (status, text) = post(
        &server,
        "/switchover",
        json!({"leader": "node1", "candidate": "node2"}),
    )
    .await;
    assert!(agents.await.unwrap(), "the request reached the store");
    assert_eq!(
        (status, text.as_str()),
        (200, "Successfully switched over to \"node2\"")
    );
}

#[tokio::test]
async fn scheduled_switchover_is_written_and_can_be_deleted() {
    let server = start(ApiSecurity::default(), Ok("ok".into())).await;
    let url = format!("{}/switchover", server.url);
    let (status, text) = call(reqwest::Method::DELETE, &url, None).await;
    assert_eq!((status, text.as_str()), (404, "no switchover is scheduled"));
    let at = "2100-01-01T10:00:00+00:00";
    let (status, text) = post(
        &server,
        "/switchover",
        json!({"leader": "node1", "candidate": "node2", "scheduled_at": at}),
    )
    .await;
    assert_eq!((status, text.as_str()), (202, "Switchover scheduled"));
    let key = failover_key(&server).await.expect("failover key");
    assert_eq!(key.member.as_deref(), Some("node2"));
    assert_eq!(key.scheduled_at.as_deref(), Some(at));
    let (status, text) = call(reqwest::Method::DELETE, &url, None).await;
    assert_eq!(
        (status, text.as_str()),
        (200, "scheduled switchover deleted")
    );
    assert_eq!(failover_key(&server).await, None);
}

#[tokio::test]
async fn switchover_in_sync_mode_needs_a_sync_candidate() {
    let server = start(ApiSecurity::default(), Ok("ok".into())).await;
    let dcs = &server.backend.dcs;
    let config = dcs.snapshot().await.unwrap().config.unwrap();
    let mut value = config.value.clone();
    value["synchronous_mode"] = json!(true);
    dcs.set_config(&value, Precondition::Unconditional)
        .await
        .unwrap();
    dcs.set_sync(
        &SyncState {
            leader: Some("node1".into()),
            quorum: 0,
            sync_standby: None,
        },
        Precondition::Absent,
    )
    .await
    .unwrap();
    let (status, text) = post(
        &server,
        "/switchover",
        json!({"leader": "node1", "candidate": "node2"}),
    )
    .await;
    assert_eq!(status, 412, "{text}");
    assert!(text.contains("sync_standby"), "{text}");
}

#[tokio::test]
async fn config_patch_merges_validates_and_put_replaces() {
    let server = start(ApiSecurity::default(), Ok("ok".into())).await;
    let url = format!("{}/config", server.url);
    let (status, text) = call(
        reqwest::Method::PATCH,
        &url,
        Some(json!({"loop_wait": 5, "postgresql": {"parameters": {"work_mem": "8MB"}}})),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let config: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(config["loop_wait"], json!(5));
    assert_eq!(config["ttl"], json!(30));
    assert_eq!(config["postgresql"]["parameters"]["work_mem"], json!("8MB"));
    // null deletes.
    let (status, text) = call(
        reqwest::Method::PATCH,
        &url,
        Some(json!({"postgresql": null})),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(serde_json::from_str::<Value>(&text)
        .unwrap()
        .get("postgresql")
        .is_none());
    // Invalid: the rule loop_wait + 2*retry_timeout <= ttl; nothing is written.
    let before = server.backend.dcs.snapshot().await.unwrap().config.unwrap();
    let (status, text) = call(reqwest::Method::PATCH, &url, Some(json!({"loop_wait": 25}))).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("loop_wait"), "{text}");
    let after = server.backend.dcs.snapshot().await.unwrap().config.unwrap();
    assert_eq!(before, after);
    // PUT replaces.
    let (status, text) = call(
        reqwest::Method::PUT,
        &url,
        Some(json!({"ttl": 20, "loop_wait": 2, "retry_timeout": 5})),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let stored = server
        .backend
        .dcs
        .snapshot()
        .await
        .unwrap()
        .config
        .unwrap()
        .value;
    assert_eq!(
        stored,
        json!({"ttl": 20, "loop_wait": 2, "retry_timeout": 5})
    );
}

#[tokio::test]
async fn restart_reload_reinitialize_go_to_the_agent() {
    let server = start(ApiSecurity::default(), Ok("reinitialize started".into())).await;
    let (status, text) = post(&server, "/restart", json!({})).await;
    assert_eq!((status, text.as_str()), (200, "restarted successfully"));
    // Filters that do not hold: nothing is asked of the agent.
    for filter in [
        json!({"role": "primary"}),
        json!({"restart_pending": true}),
        json!({"postgres_version": "15.2"}),
    ] {
        let (status, text) = post(&server, "/restart", filter.clone()).await;
        assert_eq!(
            (status, text.as_str()),
            (503, "restart conditions are not satisfied"),
            "{filter}"
        );
    }
    let (status, text) = post(&server, "/restart", json!({"colour": "red"})).await;
    assert_eq!(status, 400, "{text}");
    let (status, text) = post(
        &server,
        "/restart",
        json!({"schedule": "2100-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!((status, text.as_str()), (202, "Restart scheduled"));
    let (status, _) = call(
        reqwest::Method::DELETE,
        &format!("{}/restart", server.url),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, text) = post(&server, "/reload", json!({})).await;
    assert_eq!((status, text.as_str()), (202, "reload scheduled"));
    let (status, text) = post(&server, "/reinitialize", json!({"force": true})).await;
    assert_eq!((status, text.as_str()), (200, "reinitialize started"));
    let actions = server.backend.actions.lock().unwrap().clone();
    assert_eq!(actions.len(), 5, "{actions:?}");
    assert_eq!(actions[0], NodeAction::Restart);
    assert!(matches!(actions[1], NodeAction::ScheduleRestart { .. }));
    assert_eq!(actions[2], NodeAction::CancelScheduledRestart);
    assert_eq!(actions[3], NodeAction::Reload);
    assert_eq!(actions[4], NodeAction::Reinitialize { from_leader: false });
}

#[tokio::test]
async fn refusals_of_the_agent_are_503_with_its_reason() {
    let server = start(
        ApiSecurity::default(),
        Err("I am the leader, can not reinitialize".into()),
    )
    .await;
    let (status, text) = post(&server, "/reinitialize", json!({})).await;
    assert_eq!(
        (status, text.as_str()),
        (503, "I am the leader, can not reinitialize")
    );
    let (status, text) = call(
        reqwest::Method::DELETE,
        &format!("{}/restart", server.url),
        None,
    )
    .await;
    assert_eq!((status, text.as_str()), (404, "no restarts are scheduled"));
}

#[tokio::test]
async fn basic_auth_guards_writes_only() {
    let security = ApiSecurity {
        basic_auth: Some(("admin".into(), "s3cret".into())),
        ..ApiSecurity::default()
    };
    let server = start(security, Ok("ok".into())).await;
    let client = pgwarden_api::http_client_builder().build().unwrap();
    let url = format!("{}/reload", server.url);
    let none = client.post(&url).send().await.unwrap();
    assert_eq!(none.status().as_u16(), 401);
    assert!(none.headers().contains_key("www-authenticate"));
    let wrong = client
        .post(&url)
        .basic_auth("admin", Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 403);
    let right = client
        .post(&url)
        .basic_auth("admin", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(right.status().as_u16(), 202);
    // Reads need no password.
    let read = client
        .get(format!("{}/config", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status().as_u16(), 200);
}

#[tokio::test]
async fn allowlist_admits_listed_networks_only() {
    let outside = ApiSecurity {
        allowlist: vec![Network::parse("10.0.0.0/8").unwrap()],
        ..ApiSecurity::default()
    };
    let server = start(outside, Ok("ok".into())).await;
    let (status, text) = post(&server, "/reload", json!({})).await;
    assert_eq!((status, text.as_str()), (403, "Access is denied"));
    let (status, _) = call(
        reqwest::Method::GET,
        &format!("{}/metrics", server.url),
        None,
    )
    .await;
    assert_eq!(status, 200, "reads are not restricted");

    let inside = ApiSecurity {
        allowlist: vec![Network::parse("127.0.0.0/8").unwrap()],
        ..ApiSecurity::default()
    };
    let server = start(inside, Ok("ok".into())).await;
    let (status, _) = post(&server, "/reload", json!({})).await;
    assert_eq!(status, 202);

    // Members' API hosts (127.0.0.1 here) are admitted on request.
    let members = ApiSecurity {
        allowlist: vec![Network::parse("10.0.0.0/8").unwrap()],
        allowlist_include_members: true,
        ..ApiSecurity::default()
    };
    let server = start(members, Ok("ok".into())).await;
    let (status, _) = post(&server, "/reload", json!({})).await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn failsafe_handshake() {
    let server = start(ApiSecurity::default(), Ok("ok".into())).await;
    let response = pgwarden_api::http_client_builder().build().unwrap()
        .post(format!("{}/failsafe", server.url))
        .json(&json!({"name": "node1", "conn_url": "postgres://x", "api_url": "http://x", "slots": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.headers().contains_key("lsn"));
    assert_eq!(response.text().await.unwrap(), "Accepted");
    let (status, _) = post(&server, "/failsafe", json!({})).await;
    assert_eq!(status, 400);
    // GET /failsafe: no key yet.
    let (status, _) = call(
        reqwest::Method::GET,
        &format!("{}/failsafe", server.url),
        None,
    )
    .await;
    assert_eq!(status, 502);
}
