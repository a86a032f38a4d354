//! `pgwarden demo`: a whole cluster on one machine.
//!
//! Starts three etcd members and three agents on loopback ports that do not
//! clash with a system PostgreSQL (5432) or etcd (2379), shows progress until
//! there is one leader and two streaming replicas, prints the member table and
//! connection strings, and on Ctrl-C stops everything it started, by PID.
//! Run as root, PostgreSQL and the agents run as the `postgres` OS user.

use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgwarden_dcs::{Dcs, EtcdDcs, EtcdSettings};
use pgwarden_types::ClusterSnapshot;

const SCOPE: &str = "demo";
const MEMBERS: usize = 3;

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  pgwarden demo\n  pgwarden demo --dir /tmp/mycluster --pg-port 25432\n\n\
Stop it with Ctrl-C: agents stop PostgreSQL cleanly, then etcd is stopped; nothing is left running."
)]
pub struct DemoArgs {
    /// Directory for data, configuration and logs (default: a new directory under /tmp, removed on exit).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// PostgreSQL port of the first node; the others use the next ports.
    #[arg(long, default_value_t = 15432)]
    pg_port: u16,
    /// REST API port of the first node; the others use the next ports.
    #[arg(long, default_value_t = 18008)]
    api_port: u16,
    /// etcd client port of the first member; members use this port + 10*i (peer port = client port + 1).
    #[arg(long, default_value_t = 12379)]
    etcd_port: u16,
    /// Directory holding PostgreSQL's initdb, pg_ctl, postgres.
    #[arg(long, default_value = "/usr/lib/postgresql/15/bin")]
    pg_bin: PathBuf,
    /// The etcd server binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd_bin: PathBuf,
    /// Stop the cluster as soon as it is ready instead of waiting for Ctrl-C (for scripts and tests).
    #[arg(long)]
    exit_when_ready: bool,
    /// Read-write port of the pgwarden proxy; read-only is the next port, metrics the one after.
    #[arg(long, default_value_t = 16432)]
    proxy_port: u16,
    /// Do not start the proxy.
    #[arg(long)]
    no_proxy: bool,
}

struct Running {
    name: String,
    child: Child,
}

/// Everything the demo started; stopped in reverse order on drop.
struct Cluster {
    dir: PathBuf,
    remove_dir: bool,
    etcd: Vec<Running>,
    agents: Vec<Running>,
    proxy: Option<Running>,
    data_dirs: Vec<PathBuf>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(proxy) = &mut self.proxy {
            let _ = nix::sys::signal::kill(pid_of(&proxy.child), nix::sys::signal::Signal::SIGTERM);
            wait_or_kill(&mut proxy.child, Instant::now() + Duration::from_secs(5));
        }
        for agent in &self.agents {
            let _ = nix::sys::signal::kill(pid_of(&agent.child), nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for agent in &mut self.agents {
            wait_or_kill(&mut agent.child, deadline);
        }
        // An agent that was killed leaves its postmaster running on purpose; stop it here.
        for data_dir in &self.data_dirs {
            if let Some(pid) = postmaster_pid(data_dir) {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGQUIT);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.data_dirs.iter().any(|d| postmaster_pid(d).is_some())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        for member in &mut self.etcd {
            let _ =
                nix::sys::signal::kill(pid_of(&member.child), nix::sys::signal::Signal::SIGTERM);
            wait_or_kill(&mut member.child, Instant::now() + Duration::from_secs(10));
        }
        if self.remove_dir {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!(
                "data, configuration and logs kept in {}",
                self.dir.display()
            );
        }
    }
}

fn pid_of(child: &Child) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX))
}

fn wait_or_kill(child: &mut Child, deadline: Instant) {
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn postmaster_pid(data_dir: &Path) -> Option<nix::unistd::Pid> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains("postgres")
        .then(|| nix::unistd::Pid::from_raw(pid))
}

fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn check_prerequisites(args: &DemoArgs) -> anyhow::Result<()> {
    for tool in [
        "initdb",
        "pg_ctl",
        "postgres",
        "pg_basebackup",
        "pg_rewind",
        "pg_controldata",
    ] {
        if !args.pg_bin.join(tool).exists() {
            bail!(
                "PostgreSQL's {tool} was not found in {}.\n  Install PostgreSQL 15: sudo apt-get install postgresql-15\n  or point --pg-bin at the directory holding it.",
                args.pg_bin.display()
            );
        }
    }
    if !args.etcd_bin.exists() {
        bail!(
            "etcd was not found at {}.\n  Install it: sudo apt-get install etcd-server etcd-client\n  or point --etcd-bin at the binary.",
            args.etcd_bin.display()
        );
    }
    if is_root()
        && nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .is_none()
    {
        bail!("running as root, the demo runs PostgreSQL as the `postgres` user, which does not exist.\n  Install postgresql-15 (it creates the user) or run the demo as an ordinary user.");
    }
    let mut ports = Vec::new();
    for i in 0..MEMBERS as u16 {
        ports.extend([
            args.pg_port + i,
            args.api_port + i,
            args.etcd_port + 10 * i,
            args.etcd_port + 10 * i + 1,
        ]);
    }
    let busy: Vec<String> = ports
        .iter()
        .filter(|p| !port_free(**p))
        .map(u16::to_string)
        .collect();
    if !busy.is_empty() {
        bail!(
            "ports {} on 127.0.0.1 are in use (another demo still running?).\n  Choose others with --pg-port, --api-port and --etcd-port.",
            busy.join(", ")
        );
    }
    Ok(())
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    check_prerequisites(&args)?;
    let (dir, remove_dir) = match &args.dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("pgwarden-demo-{}", std::process::id())),
            true,
        ),
    };
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let password = demo_password();
    let mut cluster = Cluster {
        dir: dir.clone(),
        remove_dir,
        etcd: Vec::new(),
        agents: Vec::new(),
        proxy: None,
        data_dirs: Vec::new(),
    };

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let interrupted = install_interrupt_flag(&runtime)?;

    step(&format!(
        "starting 3 etcd members (logs in {})",
        dir.display()
    ));
    let endpoints = start_etcd(&args, &dir, &mut cluster)?;
    let dcs = runtime.block_on(wait_for_etcd(&endpoints))?;

    step("starting 3 pgwarden agents");
    let exe = std::env::current_exe().context("finding the pgwarden executable")?;
    for i in 0..MEMBERS {
        let name = format!("node{}", i + 1);
        let node_dir = dir.join(&name);
        fs::create_dir_all(&node_dir)?;
        let config_path = dir.join(format!("{name}.yml"));
        fs::write(
            &config_path,
            node_config(&args, i, &node_dir, &endpoints, &password),
        )?;
        cluster.data_dirs.push(node_dir.join("data"));
        if is_root() {
            chown_postgres(&dir)?;
        }
        let log = fs::File::create(dir.join(format!("{name}.log")))?;
        let mut command = Command::new(&exe);
        if is_root() {
            // Switch user in the child itself (no runuser in between), so the PID we
            // hold is the agent's and Ctrl-C handling can signal it directly.
            let user = nix::unistd::User::from_name("postgres")?.context("no postgres user")?;
            command
                .uid(user.uid.as_raw())
                .gid(user.gid.as_raw())
                .env("HOME", &user.dir);
        }
        command
            .arg("agent")
            .arg(&config_path)
            // Out of the terminal's process group: Ctrl-C reaches only the demo,
            // which then stops the agents first and etcd last (a Ctrl-C sent to
            // the whole group would kill etcd under agents still shutting down).
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = command
            .spawn()
            .with_context(|| format!("starting the agent for {name}"))?;
        cluster.agents.push(Running { name, child });
    }

    let snapshot = runtime.block_on(wait_until_ready(dcs.as_ref(), &mut cluster, &interrupted))?;
    if !args.no_proxy {
        step(&format!(
            "starting the pgwarden proxy on 127.0.0.1:{} (read-write) and :{} (read-only)",
            args.proxy_port,
            args.proxy_port + 1
        ));
        cluster.proxy = Some(start_proxy(&args, &exe, &dir, &endpoints, &password)?);
        runtime.block_on(wait_for_proxy(args.proxy_port, &password))?;
    }
    println!();
    print_table(&snapshot);
    print_connection_strings(&args, &password);
    if args.exit_when_ready {
        step("cluster is ready; stopping it (--exit-when-ready)");
        return Ok(());
    }
    println!("\nPress Ctrl-C to stop the cluster.");
    while !interrupted.load(std::sync::atomic::Ordering::SeqCst) {
        // Sleeping inside the runtime lets the signal task run.
        runtime.block_on(async { tokio::time::sleep(Duration::from_millis(200)).await });
        for agent in &mut cluster.agents {
            if let Ok(Some(status)) = agent.child.try_wait() {
                eprintln!(
                    "warning: the agent of {} exited ({status}); see {}/{}.log",
                    agent.name,
                    dir.display(),
                    agent.name
                );
            }
        }
    }
    step("stopping the cluster");
    drop(cluster);
    step("stopped");
    Ok(())
}

fn step(message: &str) {
    println!("==> {message}");
}

fn demo_password() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("demo{:x}", nanos ^ u128::from(std::process::id()))
}

/// Sets a flag on Ctrl-C or SIGTERM.
///
/// Signal handlers (unlike a blocked signal mask) are reset when the agents are
/// exec'd, so the agents still receive and handle SIGTERM themselves.
fn install_interrupt_flag(
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use tokio::signal::unix::{signal, SignalKind};
    let _context = runtime.enter();
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = flag.clone();
    runtime.spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        seen.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    Ok(flag)
}

fn start_etcd(args: &DemoArgs, dir: &Path, cluster: &mut Cluster) -> anyhow::Result<Vec<String>> {
    let peer = |i: usize| format!("http://127.0.0.1:{}", args.etcd_port + 10 * i as u16 + 1);
    let client = |i: usize| format!("http://127.0.0.1:{}", args.etcd_port + 10 * i as u16);
    let initial: Vec<String> = (0..MEMBERS)
        .map(|i| format!("e{}={}", i + 1, peer(i)))
        .collect();
    for i in 0..MEMBERS {
        let name = format!("e{}", i + 1);
        let log = fs::File::create(dir.join(format!("etcd-{name}.log")))?;
        let child = Command::new(&args.etcd_bin)
            .arg(format!("--name={name}"))
            .arg(format!(
                "--data-dir={}",
                dir.join(format!("etcd-{name}")).display()
            ))
            .arg(format!("--listen-client-urls={}", client(i)))
            .arg(format!("--advertise-client-urls={}", client(i)))
            .arg(format!("--listen-peer-urls={}", peer(i)))
            .arg(format!("--initial-advertise-peer-urls={}", peer(i)))
            .arg(format!("--initial-cluster={}", initial.join(",")))
            .arg("--initial-cluster-state=new")
            .arg("--initial-cluster-token=pgwarden-demo")
            // Without checkpoints a lease's TTL restarts at every etcd leader change,
            // which would delay failover after a dead primary by up to one ttl per election.
            .arg("--experimental-enable-lease-checkpoint")
            .arg("--experimental-enable-lease-checkpoint-persist")
            // etcd 3.4's default (deprecated) logger crashes on the first warning.
            .arg("--logger=zap")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting etcd member {name}"))?;
        cluster.etcd.push(Running { name, child });
    }
    Ok((0..MEMBERS)
        .map(|i| format!("127.0.0.1:{}", args.etcd_port + 10 * i as u16))
        .collect())
}

async fn wait_for_etcd(endpoints: &[String]) -> anyhow::Result<Box<dyn Dcs>> {
    let settings = EtcdSettings {
        endpoints: endpoints.to_vec(),
        namespace: "/service/".into(),
        scope: SCOPE.into(),
        username: None,
        password: None,
        request_timeout: Duration::from_secs(2),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(dcs) = EtcdDcs::connect(settings.clone()).await {
            if dcs.snapshot().await.is_ok() {
                return Ok(Box::new(dcs));
            }
        }
        if Instant::now() > deadline {
            bail!("etcd did not become ready within 30 s; see the etcd-*.log files");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_until_ready(
    dcs: &dyn Dcs,
    cluster: &mut Cluster,
    interrupted: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<ClusterSnapshot> {
    let deadline = Instant::now() + Duration::from_secs(180);
    let started = Instant::now();
    let mut last_line = String::new();
    loop {
        if interrupted.load(std::sync::atomic::Ordering::SeqCst) {
            bail!("interrupted");
        }
        for agent in &mut cluster.agents {
            if let Ok(Some(status)) = agent.child.try_wait() {
                bail!(
                    "the agent of {} exited ({status}) before the cluster was ready; see {}/{}.log",
                    agent.name,
                    cluster.dir.display(),
                    agent.name
                );
            }
        }
        if let Ok(snapshot) = dcs.snapshot().await {
            let line = progress_line(&snapshot);
            if line != last_line {
                println!("    [{:>5.1}s] {line}", started.elapsed().as_secs_f64());
                last_line = line;
            }
            if is_ready(&snapshot) {
                step(&format!(
                    "cluster ready in {:.1} s",
                    started.elapsed().as_secs_f64()
                ));
                return Ok(snapshot);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the cluster was not ready after 180 s; see the node*.log files in {}",
                cluster.dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn progress_line(snapshot: &ClusterSnapshot) -> String {
    let leader = snapshot.leader_name().unwrap_or("none");
    let members: Vec<String> = snapshot
        .members
        .iter()
        .map(|m| {
            let state = m
                .data
                .replication_state
                .clone()
                .unwrap_or_else(|| m.data.state.as_str().to_string());
            format!("{}: {}", m.name, state)
        })
        .collect();
    format!("leader: {leader}; {}", members.join(", "))
}

fn is_ready(snapshot: &ClusterSnapshot) -> bool {
    let Some(leader) = snapshot.leader_name() else {
        return false;
    };
    snapshot.members.len() == MEMBERS
        && snapshot
            .members
            .iter()
            .all(|m| m.name == leader || m.data.replication_state.as_deref() == Some("streaming"))
}

fn print_table(snapshot: &ClusterSnapshot) {
    println!(
        "{:<8} {:<16} {:<8} {:<10} {:>3}",
        "Member", "Host", "Role", "State", "TL"
    );
    for m in &snapshot.members {
        let host = m
            .data
            .pg_host_port()
            .map(|(h, p)| format!("{h}:{p}"))
            .unwrap_or_default();
        let leader = snapshot.leader_name() == Some(m.name.as_str());
        let role = if leader { "Leader" } else { "Replica" };
        let state = if leader {
            m.data.state.as_str().to_string()
        } else {
            m.data
                .replication_state
                .clone()
                .unwrap_or_else(|| m.data.state.as_str().to_string())
        };
        let tl = m.data.timeline.map(|t| t.to_string()).unwrap_or_default();
        println!(
            "{:<8} {:<16} {:<8} {:<10} {:>3}",
            m.name, host, role, state, tl
        );
    }
}

fn print_connection_strings(args: &DemoArgs, password: &str) {
    let ports: Vec<u16> = (0..MEMBERS as u16).map(|i| args.pg_port + i).collect();
    let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    println!("\nConnect (superuser postgres, password {password}):");
    println!("  read-write, follows the primary:");
    println!(
        "    psql 'postgresql://postgres:{password}@{}/postgres?target_session_attrs=read-write'",
        hosts.join(",")
    );
    println!("  any node that accepts reads:");
    println!(
        "    psql 'postgresql://postgres:{password}@{}/postgres?target_session_attrs=any'",
        hosts.join(",")
    );
    for (i, port) in ports.iter().enumerate() {
        println!("  node{}: psql 'host=127.0.0.1 port={port} user=postgres password={password} dbname=postgres'", i + 1);
    }
    if !args.no_proxy {
        let (rw, ro) = (args.proxy_port, args.proxy_port + 1);
        println!("  through the pgwarden proxy (transaction pooling, follows the leader key):");
        println!("    read-write: psql 'host=127.0.0.1 port={rw} user=postgres password={password} dbname=postgres'");
        println!("    read-only:  psql 'host=127.0.0.1 port={ro} user=postgres password={password} dbname=postgres'");
        println!("    console:    psql 'host=127.0.0.1 port={rw} user=postgres password={password} dbname=pgwarden' -c 'SHOW POOLS'");
        println!(
            "    metrics:    http://127.0.0.1:{}/metrics",
            args.proxy_port + 2
        );
    }
    println!(
        "REST API: {}",
        (0..MEMBERS as u16)
            .map(|i| format!("http://127.0.0.1:{}/patroni", args.api_port + i))
            .collect::<Vec<_>>()
            .join("  ")
    );
}

/// Writes the proxy's configuration and user list and starts it.
fn start_proxy(
    args: &DemoArgs,
    exe: &Path,
    dir: &Path,
    endpoints: &[String],
    password: &str,
) -> anyhow::Result<Running> {
    let users = dir.join("proxy-users.txt");
    fs::write(&users, format!("\"postgres\" \"{password}\"\n"))?;
    let hosts: String = endpoints.iter().map(|e| format!("\n    - {e}")).collect();
    let config = dir.join("proxy.yml");
    fs::write(
        &config,
        format!(
            "scope: {SCOPE}
namespace: /service/
etcd3:
  hosts:{hosts}
proxy:
  listen: 127.0.0.1:{rw}
  listen_ro: 127.0.0.1:{ro}
  metrics_listen: 127.0.0.1:{metrics}
  pool_mode: transaction
  default_pool_size: 20
  auth_type: scram-sha-256
  auth_file: {users}
  admin_users: [postgres]
",
            rw = args.proxy_port,
            ro = args.proxy_port + 1,
            metrics = args.proxy_port + 2,
            users = users.display(),
        ),
    )?;
    let log = fs::File::create(dir.join("proxy.log"))?;
    let child = Command::new(exe)
        .arg("proxy")
        .arg(&config)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the proxy")?;
    Ok(Running {
        name: "proxy".into(),
        child,
    })
}

/// Waits until a query through the proxy's read-write port reaches the primary.
async fn wait_for_proxy(port: u16, password: &str) -> anyhow::Result<()> {
    let dsn = format!(
        "host=127.0.0.1 port={port} user=postgres password={password} dbname=postgres connect_timeout=2"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        match tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                match client
                    .simple_query("select pg_is_in_recovery()::text")
                    .await
                {
                    Ok(rows) => {
                        let primary = rows.iter().any(|m| {
                            matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("false"))
                        });
                        if primary {
                            println!("==> proxy ready: read-write port reaches the primary");
                            return Ok(());
                        }
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the proxy did not answer within 30 s (last error: {last}); see proxy.log in the demo directory")
}

fn chown_postgres(dir: &Path) -> anyhow::Result<()> {
    let user = nix::unistd::User::from_name("postgres")?.context("no postgres user")?;
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{}:{}", user.uid, user.gid))
        .arg(dir)
        .status()?;
    if !status.success() {
        bail!("could not give {} to the postgres user", dir.display());
    }
    Ok(())
}

fn node_config(
    args: &DemoArgs,
    i: usize,
    node_dir: &Path,
    endpoints: &[String],
    password: &str,
) -> String {
    let name = format!("node{}", i + 1);
    let pg_port = args.pg_port + i as u16;
    let api_port = args.api_port + i as u16;
    let hosts: String = endpoints.iter().map(|e| format!("\n    - {e}")).collect();
    format!(
        "scope: {SCOPE}
namespace: /service/
name: {name}
restapi:
  listen: 127.0.0.1:{api_port}
  connect_address: 127.0.0.1:{api_port}
etcd3:
  hosts:{hosts}
bootstrap:
  dcs:
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_log_hints: 'on'
  initdb:
    - encoding: UTF8
    - data-checksums
postgresql:
  listen: 127.0.0.1:{pg_port}
  connect_address: 127.0.0.1:{pg_port}
  data_dir: {data}
  bin_dir: {bin}
  pgpass: {pgpass}
  authentication:
    superuser:
      username: postgres
      password: {password}
    replication:
      username: replicator
      password: {password}-repl
    rewind:
      username: rewind_user
      password: {password}-rewind
  parameters:
    unix_socket_directories: {sock}
  pg_hba:
    - local all all peer
    - host replication replicator 127.0.0.1/32 scram-sha-256
    - host all all 127.0.0.1/32 scram-sha-256
",
        data = node_dir.join("data").display(),
        bin = args.pg_bin.display(),
        pgpass = node_dir.join("pgpass").display(),
        sock = node_dir.display(),
    )
}
