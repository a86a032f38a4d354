//! The proxy end to end: a real 3-node cluster (etcd 3.4, PostgreSQL 15,
//! pgwarden agents) and `pgwarden proxy` in front of it, driven with
//! tokio-postgres, pgbench and raw sockets.

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgwarden_dcs::{Dcs, Precondition};
use pgwarden_testbed::ports::free_port;
use pgwarden_testbed::process::ChildGuard;
use pgwarden_types::{FailoverRequest, Role};
use support::{Options, TestCluster, PASSWORD};

const READY: Duration = Duration::from_secs(90);

struct Proxy {
    guard: ChildGuard,
    rw: u16,
    ro: u16,
    metrics: u16,
}

impl Proxy {
    fn dsn(&self, port: u16, user: &str, password: &str, extra: &str) -> String {
        format!(
            "host=127.0.0.1 port={port} user={user} password={password} dbname=postgres connect_timeout=5 {extra}"
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.guard.stderr_path()).unwrap_or_default()
            + &std::fs::read_to_string(self.guard.stdout_path()).unwrap_or_default()
    }
}

/// Starts `pgwarden proxy` for the test cluster with `extra` lines under `proxy:`.
fn start_proxy(cluster: &TestCluster, users: &str, extra: &str) -> Proxy {
    let dir = cluster.dir.path().join("proxy");
    std::fs::create_dir_all(&dir).unwrap();
    let userlist = dir.join("users.txt");
    std::fs::write(&userlist, users).unwrap();
    let (rw, ro, metrics) = (free_port(), free_port(), free_port());
    let hosts: Vec<String> = cluster
        .etcd
        .endpoints()
        .iter()
        .map(|e| e.trim_start_matches("http://").to_string())
        .collect();
    let config = format!(
        "scope: {scope}\nnamespace: /service/\netcd3:\n  hosts: {hosts}\nproxy:\n  listen: 127.0.0.1:{rw}\n  listen_ro: 127.0.0.1:{ro}\n  metrics_listen: 127.0.0.1:{metrics}\n  auth_file: {userlist}\n  admin_users: [postgres]\n  query_wait_timeout: 20\n  confirm_interval_ms: 200\n{extra}",
        scope = support::SCOPE,
        hosts = hosts.join(","),
        userlist = userlist.display(),
    );
    let path = dir.join("proxy.yml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgwarden"));
    cmd.arg("proxy").arg(&path).env("PGWARDEN_LOG", "info");
    let guard = ChildGuard::spawn("proxy", cmd, &dir).expect("starting the proxy");
    Proxy {
        guard,
        rw,
        ro,
        metrics,
    }
}

async fn connect(dsn: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Connects, retrying while the proxy starts.
async fn connect_eventually(dsn: &str) -> tokio_postgres::Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match connect(dsn).await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("cannot connect through the proxy: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn one(client: &tokio_postgres::Client, sql: &str) -> String {
    let rows = client.simple_query(sql).await.expect(sql);
    rows.into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_default()
}

fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code().to_string())
}

async fn leader_port(cluster: &TestCluster) -> (String, u16) {
    let leader = cluster.leader().await.expect("a leader");
    let port = cluster.nodes[cluster.index_of(&leader)].pg_port;
    (leader, port)
}

fn pgbench(args: &[&str], dsn: &str) -> (bool, String) {
    let out = Command::new("pgbench")
        .args(args)
        .arg(dsn)
        .output()
        .expect("running pgbench");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Sends raw bytes and returns what the proxy answers before closing (bounded).
fn raw_exchange(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut s = StdTcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
        if out.len() > 64 * 1024 {
            break;
        }
    }
    out
}

fn startup_packet(params: &[(&str, &str)], version: i32) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// The SQLSTATE of the first ErrorResponse in raw bytes.
fn error_code(mut bytes: &[u8]) -> Option<String> {
    // Single-byte answers (SSL 'N'/'S') never come here: we send none.
    while bytes.len() >= 5 {
        let tag = bytes[0];
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        let body = bytes.get(5..1 + len)?;
        if tag == b'E' {
            let mut fields = body;
            while let Some((&code, rest)) = fields.split_first() {
                let end = rest.iter().position(|b| *b == 0)?;
                if code == b'C' {
                    return Some(String::from_utf8_lossy(&rest[..end]).to_string());
                }
                fields = &rest[end + 1..];
            }
            return None;
        }
        bytes = &bytes[1 + len..];
    }
    None
}

fn userlist(lines: &[(&str, &str)]) -> String {
    lines
        .iter()
        .map(|(u, s)| format!("\"{u}\" \"{s}\"\n"))
        .collect()
}

async fn scram_verifier_of(cluster: &TestCluster, leader: &str, role: &str) -> String {
    cluster
        .query_strings(
            leader,
            &format!("select rolpassword from pg_authid where rolname = '{role}'"),
        )
        .await
        .and_then(|v| v.into_iter().next())
        .expect("a stored password")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_routes_authenticates_pools_and_rejects_bad_input() {
    let cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_ready(3, READY).await;
    cluster
        .execute(
            &leader,
            "create role app login password 'app-pw';
             create role gone login password 'gone-pw' valid until '2000-01-01';
             create role viaquery login password 'vq-pw';
             set password_encryption = 'md5';
             create role legacy login password 'legacy-pw';
             create table items(id int primary key, who text); grant all on items to app;",
        )
        .await
        .expect("creating roles");
    let app = scram_verifier_of(&cluster, &leader, "app").await;
    let gone = scram_verifier_of(&cluster, &leader, "gone").await;
    let legacy = scram_verifier_of(&cluster, &leader, "legacy").await;
    assert!(app.starts_with("SCRAM-SHA-256$") && legacy.starts_with("md5"));
    // auth_type md5: SCRAM verifiers still do SCRAM (as PostgreSQL does),
    // md5 hashes and plain passwords answer an md5 challenge.
    let proxy = start_proxy(
        &cluster,
        &userlist(&[
            ("postgres", PASSWORD),
            ("app", &app),
            ("gone", &gone),
            ("legacy", &legacy),
        ]),
        "  auth_type: md5\n  auth_user: postgres\n  default_pool_size: 1\n",
    );
    let rw = connect_eventually(&proxy.dsn(proxy.rw, "app", "app-pw", "")).await;
    let (_, leader_pg) = leader_port(&cluster).await;

    // Read-write goes to the leader, read-only to a replica.
    assert_eq!(one(&rw, "select pg_is_in_recovery()::text").await, "false");
    assert_eq!(
        one(&rw, "select inet_server_port()::text").await,
        leader_pg.to_string()
    );
    let ro = connect_eventually(&proxy.dsn(proxy.ro, "app", "app-pw", "")).await;
    assert_eq!(one(&ro, "select pg_is_in_recovery()::text").await, "true");

    // md5 user, SCRAM pass-through user, auth_query user.
    let legacy_client = connect(&proxy.dsn(proxy.rw, "legacy", "legacy-pw", ""))
        .await
        .expect("md5 login through the proxy");
    assert_eq!(one(&legacy_client, "select current_user").await, "legacy");
    let vq = connect(&proxy.dsn(proxy.rw, "viaquery", "vq-pw", ""))
        .await
        .expect("auth_query login through the proxy");
    assert_eq!(one(&vq, "select current_user").await, "viaquery");

    // Wrong password, unknown user, expired role: 28P01 and the same message shape.
    for (user, password) in [("app", "wrong"), ("nobody", "x"), ("legacy", "wrong")] {
        let err = connect(&proxy.dsn(proxy.rw, user, password, ""))
            .await
            .err()
            .unwrap_or_else(|| panic!("{user} logged in with a wrong password"));
        assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{user}: {err}");
        assert!(
            err.as_db_error().map(|d| d.message()).unwrap_or_default()
                == format!("password authentication failed for user \"{user}\""),
            "{err}"
        );
    }
    let err = connect(&proxy.dsn(proxy.rw, "gone", "gone-pw", ""))
        .await
        .expect_err("a role past VALID UNTIL must not log in");
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{err}");

    // Transaction pooling with one server connection: two clients with
    // different startup parameters take turns on it and each keeps its own.
    let a = connect(&proxy.dsn(
        proxy.rw,
        "app",
        "app-pw",
        "application_name=alpha options='-c search_path=alpha_path,public'",
    ))
    .await
    .unwrap();
    let b = connect(&proxy.dsn(proxy.rw, "app", "app-pw", "application_name=beta"))
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(
            one(&a, "select current_setting('application_name')").await,
            "alpha"
        );
        assert_eq!(
            one(&a, "select current_setting('search_path')").await,
            "alpha_path,public"
        );
        assert_eq!(
            one(&b, "select current_setting('application_name')").await,
            "beta"
        );
        assert_eq!(
            one(&b, "select current_setting('search_path')").await,
            "\"$user\", public"
        );
    }
    // Named prepared statements survive the move between server connections.
    let sa = a.prepare("select $1::int + 1").await.unwrap();
    let sb = b.prepare("select $1::int * 10").await.unwrap();
    for i in 0..5i32 {
        let ra: i32 = a.query_one(&sa, &[&i]).await.unwrap().get(0);
        let rb: i32 = b.query_one(&sb, &[&i]).await.unwrap().get(0);
        assert_eq!((ra, rb), (i + 1, i * 10));
    }
    // Writes in a transaction through the pool.
    a.batch_execute("begin; insert into items values (1, 'a'); commit;")
        .await
        .unwrap();
    assert_eq!(one(&b, "select count(*)::text from items").await, "1");
    drop((a, b));

    // pgbench through both ports; prepared mode in transaction pooling.
    let pg_dsn = proxy.dsn(proxy.rw, "postgres", PASSWORD, "");
    let (ok, out) = pgbench(&["-i", "-s", "1", "-q"], &pg_dsn);
    assert!(ok, "pgbench -i: {out}");
    // One client per pgbench thread: pgbench prepares synchronously, so a
    // second client of the same thread would wait for the one server
    // connection its neighbour holds inside a transaction.
    let (ok, out) = pgbench(
        &["-n", "-c", "2", "-j", "2", "-t", "50", "-M", "prepared"],
        &pg_dsn,
    );
    assert!(
        ok && out.contains("number of failed transactions: 0"),
        "{out}"
    );
    let ro_dsn = proxy.dsn(proxy.ro, "postgres", PASSWORD, "");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The replicas must have replayed pgbench's tables first.
        let (ok, out) = pgbench(
            &[
                "-n", "-S", "-c", "2", "-j", "2", "-t", "50", "-M", "extended",
            ],
            &ro_dsn,
        );
        if ok && out.contains("number of failed transactions: 0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pgbench -S through the read-only port: {out}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A cancel request reaches the right server.
    let sleeper = connect(&proxy.dsn(proxy.rw, "app", "app-pw", ""))
        .await
        .unwrap();
    let token = sleeper.cancel_token();
    let started = Instant::now();
    let sleeping = tokio::spawn(async move { sleeper.simple_query("select pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("sending the cancel");
    let err = sleeping
        .await
        .unwrap()
        .expect_err("the query was cancelled");
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));

    // Bad input: each is refused, and the proxy keeps serving.
    let oversized = [
        &0x8000_0000u32.to_be_bytes()[..],
        &0x0003_0000u32.to_be_bytes(),
    ]
    .concat();
    let answer = raw_exchange(proxy.rw, &oversized);
    assert_eq!(
        error_code(&answer).as_deref(),
        Some("08P01"),
        "a startup length of 2^31: {answer:?}"
    );
    let answer = raw_exchange(proxy.rw, &startup_packet(&[("user", "app")], 0x0004_0000));
    assert_eq!(
        error_code(&answer).as_deref(),
        Some("0A000"),
        "protocol 4.0"
    );
    let answer = raw_exchange(
        proxy.rw,
        &startup_packet(&[("user", "app"), ("options", "-c")], 0x0003_0000),
    );
    assert_eq!(
        error_code(&answer).as_deref(),
        Some("08P01"),
        "an empty -c option"
    );
    let mut twice = startup_packet(&[("user", "app")], 0x0003_0000);
    twice.extend(startup_packet(&[("user", "app")], 0x0003_0000));
    let answer = raw_exchange(proxy.rw, &twice);
    assert_eq!(
        error_code(&answer).as_deref(),
        Some("08P01"),
        "a second StartupMessage: {answer:?}"
    );
    let cancel = [
        &16i32.to_be_bytes()[..],
        &80_877_102i32.to_be_bytes(),
        &1i32.to_be_bytes(),
        &2i32.to_be_bytes(),
    ]
    .concat();
    assert!(
        raw_exchange(proxy.rw, &cancel).is_empty(),
        "a cancel for an unknown key gets no answer"
    );
    assert_eq!(one(&rw, "select 1").await, "1", "the proxy still serves");

    // Admin console and metrics.
    let admin = connect(&proxy.dsn(proxy.rw, "postgres", PASSWORD, "dbname=pgwarden"))
        .await
        .unwrap();
    let pools = admin.simple_query("SHOW POOLS").await.unwrap();
    let rows: Vec<_> = pools
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((r.get(1).unwrap().to_string(), r.get(2).unwrap().to_string()))
            }
            _ => None,
        })
        .collect();
    assert!(rows.contains(&("app".into(), "rw".into())), "{rows:?}");
    assert!(admin.simple_query("PAUSE").await.is_ok());
    let paused = tokio::spawn({
        let dsn = proxy.dsn(proxy.rw, "app", "app-pw", "");
        async move {
            let t = Instant::now();
            let c = connect(&dsn).await.unwrap();
            c.simple_query("select 1").await.unwrap();
            t.elapsed()
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!paused.is_finished(), "PAUSE holds new transactions");
    assert!(admin.simple_query("RESUME").await.is_ok());
    let waited = tokio::time::timeout(Duration::from_secs(10), paused)
        .await
        .unwrap()
        .unwrap();
    assert!(waited >= Duration::from_millis(500), "{waited:?}");
    let err = admin.simple_query("DROP TABLE items").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42601"));
    let metrics = reqwest_text(proxy.metrics).await;
    assert!(
        metrics.contains("pgwarden_proxy_leader_revision "),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("pgwarden_proxy_leader{{member=\"{leader}\"}} 1")),
        "{metrics}"
    );

    // TLS towards clients, in session pooling: sslmode=require and
    // verify-full work, a plain connection is refused.
    let tls_dir = cluster.dir.path().join("tls");
    make_certificates(&tls_dir);
    let tls = start_proxy(
        &cluster,
        &userlist(&[("postgres", PASSWORD), ("app", &app)]),
        &format!(
            "  pool_mode: session\n  client_tls_sslmode: require\n  client_tls_cert_file: {dir}/server.pem\n  client_tls_key_file: {dir}/server.key\n",
            dir = tls_dir.display()
        ),
    );
    let psql = |conninfo: String| {
        let out = Command::new("psql")
            .arg(conninfo)
            .args([
                "-XAtc",
                "select ssl::text from pg_stat_ssl where pid = pg_backend_pid()",
            ])
            .env("PGPASSWORD", "app-pw")
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .expect("running psql");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out) = psql(format!(
            "host=127.0.0.1 port={} user=app dbname=postgres sslmode=require",
            tls.rw
        ));
        if ok {
            // The proxy terminates TLS; its own server connection is plain.
            assert_eq!(out, "false", "{out}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sslmode=require through the proxy: {out}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (ok, out) = psql(format!(
        "host=localhost hostaddr=127.0.0.1 port={} user=app dbname=postgres sslmode=verify-full sslrootcert={}/ca.pem",
        tls.rw,
        tls_dir.display()
    ));
    assert!(ok, "sslmode=verify-full: {out}");
    let (ok, out) = psql(format!(
        "host=127.0.0.1 port={} user=app dbname=postgres sslmode=disable",
        tls.rw
    ));
    assert!(
        !ok && out.contains("TLS is required"),
        "plain connection: {out}"
    );
    // Session pooling: a session's settings stay with it, and the server
    // connection is reset (DISCARD ALL) before the next client gets it.
    let dsn = |extra: &str| {
        format!(
            "host=127.0.0.1 port={} user=app password=app-pw dbname=postgres sslmode=require {extra}",
            tls.rw
        )
    };
    let (ok, out) = psql(dsn(""));
    assert!(ok, "{out}");
    let session = Command::new("psql")
        .arg(dsn(""))
        .args([
            "-XAt",
            "-c",
            "set work_mem = '7MB'",
            "-c",
            "select current_setting('work_mem') || ' ' || pg_backend_pid()",
        ])
        .output()
        .unwrap();
    let first = String::from_utf8_lossy(&session.stdout).to_string();
    assert!(first.contains("7MB"), "{first}");
    let backend = first.split_whitespace().last().unwrap().to_string();
    let next = Command::new("psql")
        .arg(dsn(""))
        .args([
            "-XAtc",
            "select current_setting('work_mem') || ' ' || pg_backend_pid()",
        ])
        .output()
        .unwrap();
    let next = String::from_utf8_lossy(&next.stdout).to_string();
    assert_eq!(
        next.trim(),
        format!("4MB {backend}"),
        "the next session reuses the server connection, reset"
    );
    assert!(!tls.log().contains("panicked"), "{}", tls.log());

    // ParameterStatus in_hot_standby matches the node behind each port: libpq
    // decides target_session_attrs=primary/standby from it.
    let attrs = |port: u16, attrs: &str| {
        psql(format!(
            "host=127.0.0.1 port={port} user=app dbname=postgres target_session_attrs={attrs}"
        ))
    };
    assert!(
        attrs(proxy.rw, "primary").0,
        "{}",
        attrs(proxy.rw, "primary").1
    );
    assert!(
        attrs(proxy.ro, "standby").0,
        "{}",
        attrs(proxy.ro, "standby").1
    );
    let (ok, out) = attrs(proxy.rw, "standby");
    assert!(
        !ok && out.contains("not in hot standby"),
        "rw as standby: {out}"
    );
    let (ok, out) = attrs(proxy.ro, "primary");
    assert!(
        !ok && out.contains("in hot standby"),
        "ro as primary: {out}"
    );

    // TLS towards servers: the leader gets a certificate; with
    // server_tls_sslmode verify-full the proxy's server connection to it is
    // encrypted, and a replica without TLS is refused rather than used in plain.
    let run = |args: &[&str]| {
        let status = Command::new(args[0]).args(&args[1..]).status().unwrap();
        assert!(status.success(), "{args:?}");
    };
    let dir = tls_dir.display().to_string();
    run(&["chown", "-R", "postgres:postgres", &dir]);
    run(&["chmod", "600", &format!("{dir}/server.key")]);
    // ALTER SYSTEM refuses to run in a multi-statement (transaction) batch.
    for sql in [
        format!("alter system set ssl_cert_file = '{dir}/server.pem'"),
        format!("alter system set ssl_key_file = '{dir}/server.key'"),
        "alter system set ssl = on".to_string(),
        "select pg_reload_conf()".to_string(),
    ] {
        cluster
            .execute(&leader, &sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let server_tls = start_proxy(
        &cluster,
        &userlist(&[("postgres", PASSWORD), ("app", &app)]),
        &format!("  server_tls_sslmode: verify-full\n  server_tls_ca_file: {dir}/ca.pem\n"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out) = psql(format!(
            "host=127.0.0.1 port={} user=app dbname=postgres",
            server_tls.rw
        ));
        if ok {
            assert_eq!(out, "true", "the proxy's server connection uses TLS");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "server_tls_sslmode verify-full through the proxy: {out}\n{}",
            server_tls.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (ok, out) = psql(format!(
        "host=127.0.0.1 port={} user=app dbname=postgres",
        server_tls.ro
    ));
    assert!(
        !ok,
        "a replica without TLS must not be used in plain: {out}"
    );
    assert!(
        !server_tls.log().contains("panicked"),
        "{}",
        server_tls.log()
    );
    drop(server_tls);
    for sql in ["alter system reset ssl", "select pg_reload_conf()"] {
        cluster
            .execute(&leader, sql)
            .await
            .expect("turning TLS off again");
    }

    assert!(!proxy.log().contains("panicked"), "{}", proxy.log());
    // The other proxies' server connections go away with them.
    drop((tls, proxy));

    // max_db_connections 1: two users of one database share one server
    // connection slot; the idle one of the other user's pool makes room.
    // min_pool_size never pushes past it.
    let limited = start_proxy(
        &cluster,
        &userlist(&[("postgres", PASSWORD), ("app", &app), ("legacy", &legacy)]),
        "  auth_type: md5\n  default_pool_size: 1\n  max_db_connections: 1\n  min_pool_size: 1\n",
    );
    let app_client = connect_eventually(&limited.dsn(limited.rw, "app", "app-pw", "")).await;
    let legacy_client = connect(&limited.dsn(limited.rw, "legacy", "legacy-pw", ""))
        .await
        .expect("legacy gets the slot app's idle connection held");
    for _ in 0..3 {
        assert_eq!(one(&app_client, "select current_user").await, "app");
        assert_eq!(one(&legacy_client, "select current_user").await, "legacy");
    }
    let count_backends = || async {
        let rows = cluster
            .query_strings(
                &leader,
                "select count(*)::text from pg_stat_activity where usename in ('app', 'legacy') and datname = 'postgres'",
            )
            .await
            .unwrap();
        rows[0].parse::<u32>().unwrap()
    };
    // Give the janitor (min_pool_size) two rounds to try to exceed the limit.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(count_backends().await, 1, "max_db_connections 1 holds");
    assert!(!limited.log().contains("panicked"), "{}", limited.log());
}

/// A CA and a server certificate for localhost/127.0.0.1 (openssl CLI).
fn make_certificates(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=pgwarden test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}

async fn reqwest_text(port: u16) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Writes through the proxy, one short transaction at a time; returns
/// (time acknowledged, server port) per acknowledged id, and the errors.
async fn proxy_writer(
    dsn: String,
    stop: Arc<AtomicBool>,
    start_id: i64,
) -> (Vec<(Instant, i64, u16)>, Vec<String>) {
    let mut acked = Vec::new();
    let mut errors = Vec::new();
    let mut client = None;
    let mut id = start_id;
    while !stop.load(Ordering::SeqCst) {
        if client.is_none() {
            match connect(&dsn).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    errors.push(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        let c = client.as_ref().unwrap();
        id += 1;
        let sql = format!("insert into acked values ({id}) returning inet_server_port()::text");
        match tokio::time::timeout(Duration::from_secs(5), c.simple_query(&sql)).await {
            Ok(Ok(rows)) => {
                let port = rows
                    .iter()
                    .find_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => {
                            r.get(0).and_then(|p| p.parse().ok())
                        }
                        _ => None,
                    })
                    .unwrap_or(0);
                acked.push((Instant::now(), id, port));
            }
            Ok(Err(e)) => {
                errors.push(e.to_string());
                client = None;
            }
            Err(_) => {
                errors.push("timeout".into());
                client = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (acked, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_follows_a_failover_and_never_serves_the_old_primary() {
    let mut cluster = TestCluster::start(3, Options::default()).await;
    let old = cluster.wait_ready(3, READY).await;
    cluster
        .execute(&old, "create table acked(id bigint primary key)")
        .await
        .unwrap();
    let proxy = start_proxy(&cluster, &userlist(&[("postgres", PASSWORD)]), "");
    let dsn = proxy.dsn(proxy.rw, "postgres", PASSWORD, "");
    drop(connect_eventually(&dsn).await);
    let old_port = cluster.nodes[cluster.index_of(&old)].pg_port;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(proxy_writer(dsn.clone(), stop.clone(), 0));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // kill -9 of the primary's host: agent and PostgreSQL.
    let i = cluster.index_of(&old);
    cluster.kill_agent(i);
    cluster.kill_postmaster(i);
    let killed = Instant::now();
    // The moment the new leader is visible in etcd (leader key + primary role).
    let visible = loop {
        if let Some(s) = cluster.snapshot().await {
            if let Some(m) = s.leader_member() {
                if m.name != old && m.data.role == Role::Primary {
                    break Instant::now();
                }
            }
        }
        assert!(killed.elapsed() < Duration::from_secs(60), "no new primary");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    let (acked, errors) = writer.await.unwrap();
    let new = cluster.leader().await.unwrap();
    let new_port = cluster.nodes[cluster.index_of(&new)].pg_port;

    let after: Vec<_> = acked.iter().filter(|(t, _, _)| *t > visible).collect();
    assert!(
        !after.is_empty(),
        "no write succeeded after the failover; errors: {errors:?}"
    );
    assert!(
        after.iter().all(|(_, _, port)| *port == new_port),
        "a write after the new leader appeared was served by another node: {after:?}"
    );
    assert!(acked
        .iter()
        .all(|(_, _, p)| *p == old_port || *p == new_port));
    let first = after[0].0.duration_since(visible);
    println!(
        "first write through the proxy {first:?} after the new leader was visible in etcd ({} before: {:?} after the kill)",
        old,
        visible.duration_since(killed)
    );
    // Every acknowledged write made after the failover is on the new primary.
    let present: BTreeSet<i64> = cluster
        .query_strings(&new, "select id::text from acked")
        .await
        .unwrap()
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    for (_, id, _) in &after {
        assert!(present.contains(id), "acknowledged id {id} is missing");
    }
    assert!(!proxy.log().contains("panicked"), "{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_through_the_proxy_gives_clients_a_delay_not_an_error() {
    let cluster = TestCluster::start(3, Options::default()).await;
    let old = cluster.wait_ready(3, READY).await;
    cluster
        .execute(&old, "create table acked(id bigint primary key)")
        .await
        .unwrap();
    let proxy = start_proxy(&cluster, &userlist(&[("postgres", PASSWORD)]), "");
    let dsn = proxy.dsn(proxy.rw, "postgres", PASSWORD, "");
    drop(connect_eventually(&dsn).await);

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(proxy_writer(dsn.clone(), stop.clone(), w * 1_000_000)))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let candidate = cluster
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .find(|n| *n != old)
        .unwrap();
    let request = FailoverRequest {
        leader: Some(old.clone()),
        member: Some(candidate.clone()),
        scheduled_at: None,
    };
    assert!(cluster
        .dcs
        .set_failover(&request, Precondition::Unconditional)
        .await
        .unwrap());
    cluster
        .wait_for("the switchover", Duration::from_secs(60), || async {
            (cluster.leader().await.as_deref() == Some(candidate.as_str())
                && cluster.is_writable(&candidate).await)
                .then_some(())
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let candidate_port = cluster.nodes[cluster.index_of(&candidate)].pg_port;
    let mut total = 0;
    for w in writers {
        let (acked, errors) = w.await.unwrap();
        assert!(
            errors.is_empty(),
            "a client saw errors during the switchover: {errors:?}"
        );
        assert!(acked.last().is_some_and(|(_, _, p)| *p == candidate_port));
        total += acked.len();
    }
    assert!(total > 0);
    assert!(!proxy.log().contains("panicked"), "{}", proxy.log());
}
