//! The testbed: N hosts on one machine, each a network namespace behind a
//! bridge that lives in its own "switch" namespace, each with its own cgroup2
//! directory, etcd member, PostgreSQL and pgwarden agent; plus a client
//! namespace for the workload and probes, and a proxy namespace where the
//! pgwarden proxy runs (its own address, so it can be cut from etcd without
//! cutting the harness). Faults are methods on [`Testbed`].
//!
//! Invariants:
//! - the root namespace's interfaces and routes are never touched: every link
//!   is created inside the switch namespace and moved into a host namespace;
//!   addresses are `10.213.<s>.0/24` of those namespaces only;
//! - every process is started through `sh -c 'echo $$ > cgroup.procs; exec …'`
//!   so it is in its host's cgroup before it can fork; `cgroup.kill` then ends
//!   a whole host atomically and teardown cannot leak a postmaster;
//! - everything carries the run prefix `pgwfb<pid>x<n>`; [`reap_leftovers`]
//!   removes what earlier runs left behind, only when that PID is gone;
//! - dropping a [`Testbed`] tears everything down, also after a panic;
//! - every wait is bounded. Inside a namespace each host uses the standard
//!   ports (2379/2380/5432/8008): the port space is private to the namespace.
//!
//! It must not signal any process it did not start, nor use other addresses.

use std::fs;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::Signal;
use pgwarden_testbed::process::ChildGuard;
use pgwarden_testbed::wait::wait_until_blocking;

use crate::history::FaultEvent;

/// Where cgroup2 is mounted on this (hybrid) machine; `/sys/fs/cgroup` on pure v2.
pub fn cgroup2_root() -> PathBuf {
    let hybrid = Path::new("/sys/fs/cgroup/unified");
    if hybrid.join("cgroup.procs").exists() {
        hybrid.to_path_buf()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

const NAME_PREFIX: &str = "pgwfb";
const WORK_ROOT: &str = "/tmp/pgwfb";
const LOCK_PATH: &str = "/run/pgwfb.lock";
pub const SCOPE: &str = "fb";
pub const PASSWORD: &str = "fb-secret";
pub const ETCD_CLIENT_PORT: u16 = 2379;
pub const ETCD_PEER_PORT: u16 = 2380;
pub const PG_PORT: u16 = 5432;
pub const API_PORT: u16 = 8008;
/// The proxy's read-write port, in the proxy's own namespace.
pub const PROXY_PORT: u16 = 6432;

static RUN_COUNTER: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, thiserror::Error)]
pub enum BedError {
    #[error("`{cmd}` failed: {detail}")]
    Command { cmd: String, detail: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Timeout(String),
    #[error("testbed unsupported here: {0}")]
    Unsupported(String),
}

/// Runs a short administrative command and returns its stdout.
pub fn run(argv: &[&str]) -> Result<String, BedError> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BedError::Command {
            cmd: argv.join(" "),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(BedError::Command {
            cmd: argv.join(" "),
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_stdin(argv: &[&str], input: &str) -> Result<(), BedError> {
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(BedError::Command {
            cmd: argv.join(" "),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Adds `rules` (each `input …` or `output …`) to the testbed's nftables
/// table in namespace `ns`, creating the table and its chains if needed;
/// deleting the table (heal, or the namespace going away) removes them.
fn nft_drop(ns: &str, rules: &[String]) -> Result<(), BedError> {
    let mut script = String::from(
        "table inet pgwfb {\n chain input { type filter hook input priority -10; policy accept; }\n chain output { type filter hook output priority -10; policy accept; }\n}\n",
    );
    for rule in rules {
        script.push_str(&format!("add rule inet pgwfb {rule}\n"));
    }
    run_stdin(&["ip", "netns", "exec", ns, "nft", "-f", "-"], &script)
}

/// What this machine can do, probed rather than assumed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    pub root: bool,
    pub netns: bool,
    pub nft: bool,
    pub cgroup2_kill_freeze: bool,
    pub netem: bool,
    pub faketime: Option<PathBuf>,
}

impl Capabilities {
    pub fn probe() -> Capabilities {
        let root = nix::unistd::Uid::effective().is_root();
        let ns = format!("{NAME_PREFIX}{}probe", std::process::id());
        let netns = root && run(&["ip", "netns", "add", &ns]).is_ok();
        let mut netem = false;
        if netns {
            let _ = run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            netem = run(&[
                "ip", "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem",
                "delay", "10ms",
            ])
            .is_ok();
            let _ = run(&["ip", "netns", "del", &ns]);
        }
        let cg = cgroup2_root().join(format!("{ns}cg"));
        let cgroup2_kill_freeze = root
            && fs::create_dir(&cg).is_ok()
            && cg.join("cgroup.kill").exists()
            && cg.join("cgroup.freeze").exists();
        let _ = fs::remove_dir(&cg);
        let faketime = ["/usr/bin/faketime", "/usr/local/bin/faketime"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
        Capabilities {
            root,
            netns,
            nft: Path::new("/usr/sbin/nft").exists(),
            cgroup2_kill_freeze,
            netem,
            faketime,
        }
    }

    /// Why a testbed cannot be built here, if it cannot.
    pub fn missing(&self) -> Option<String> {
        let mut m = Vec::new();
        if !self.root {
            m.push("root");
        }
        if !self.netns {
            m.push("ip netns");
        }
        if !self.nft {
            m.push("nft");
        }
        if !self.cgroup2_kill_freeze {
            m.push("cgroup2 cgroup.kill/cgroup.freeze");
        }
        (!m.is_empty()).then(|| m.join(", "))
    }
}

/// How to build a testbed.
#[derive(Clone, Debug)]
pub struct BedSpec {
    pub hosts: usize,
    pub synchronous_mode: bool,
    pub ttl: u64,
    pub loop_wait: u64,
    pub retry_timeout: u64,
    pub maximum_lag_on_failover: u64,
    /// Put each host's PostgreSQL data directory on a tmpfs of this many MiB
    /// (disk-full scenarios).
    pub tmpfs_mib: Option<u64>,
    pub pgwarden_bin: PathBuf,
}

impl BedSpec {
    /// The plan's timing profile: ttl 10, loop_wait 1, retry_timeout 3.
    pub fn new(pgwarden_bin: PathBuf) -> BedSpec {
        BedSpec {
            hosts: 3,
            synchronous_mode: false,
            ttl: 10,
            loop_wait: 1,
            retry_timeout: 3,
            maximum_lag_on_failover: 1_048_576,
            tmpfs_mib: None,
            pgwarden_bin,
        }
    }
}

/// The pgwarden binary: `$PGWARDEN_BIN`, else `target/debug/pgwarden` of this workspace.
pub fn default_pgwarden_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PGWARDEN_BIN") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/pgwarden")
}

/// A command prefix (and environment) for the agent, e.g. libfaketime.
#[derive(Clone, Debug, Default)]
pub struct AgentWrapper {
    pub argv: Vec<String>,
    pub env: Vec<(&'static str, String)>,
}

#[derive(Debug)]
pub struct Host {
    pub name: String,
    pub ns: String,
    pub ip: String,
    pub cgroup: PathBuf,
    pub dir: PathBuf,
    etcd: Option<ChildGuard>,
    agent: Option<ChildGuard>,
    tmpfs: bool,
}

impl Host {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(ChildGuard::pid)
    }
    pub fn etcd_pid(&self) -> Option<u32> {
        self.etcd.as_ref().map(ChildGuard::pid)
    }
    /// PID of the running postmaster, from `postmaster.pid`, if alive.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        let cmd = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmd)
            .contains("postgres")
            .then_some(pid)
    }
}

/// The namespace, cgroup and process of the pgwarden proxy.
#[derive(Debug)]
pub struct ProxyHost {
    pub ns: String,
    pub ip: String,
    pub cgroup: PathBuf,
    pub dir: PathBuf,
    process: Option<ChildGuard>,
}

impl ProxyHost {
    /// `host:port` of the proxy's read-write listener.
    pub fn address(&self) -> String {
        format!("{}:{PROXY_PORT}", self.ip)
    }
}

/// Where a process runs: its namespace, cgroup and working (and log) directory.
#[derive(Clone, Copy)]
struct Place<'a> {
    ns: &'a str,
    cgroup: &'a Path,
    dir: &'a Path,
}

/// A running testbed. Dropping it removes every namespace, cgroup, mount and process.
#[derive(Debug)]
pub struct Testbed {
    pub prefix: String,
    pub spec: BedSpec,
    pub origin: Instant,
    pub root: PathBuf,
    pub sw_ns: String,
    pub client_ns: String,
    pub client_ip: String,
    pub hosts: Vec<Host>,
    pub proxy: ProxyHost,
    pub events: Vec<FaultEvent>,
    subnet: String,
    postgres_ids: (u32, u32),
    // Held for the bed's lifetime so two beds never share the 2 cores.
    _lock: Flock<fs::File>,
}

fn postgres_ids() -> Result<(u32, u32), BedError> {
    let user = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .ok_or_else(|| BedError::Unsupported("no `postgres` OS user".into()))?;
    Ok((user.uid.as_raw(), user.gid.as_raw()))
}

fn take_lock(within: Duration) -> Result<Flock<fs::File>, BedError> {
    let start = Instant::now();
    loop {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_PATH)?;
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Ok(l),
            Err((_, e)) if start.elapsed() < within => {
                tracing::debug!("waiting for {LOCK_PATH}: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err((_, e)) => {
                return Err(BedError::Timeout(format!(
                    "another testbed holds {LOCK_PATH} for {within:?}: {e}"
                )))
            }
        }
    }
}

/// PID encoded in a testbed name (`pgwfb<pid>x<n>…`).
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    rest[digits.len()..].starts_with('x').then_some(())?;
    digits.parse().ok()
}

/// The run prefix (`pgwfb<pid>x<n>`) of a testbed name.
fn run_prefix(name: &str) -> Option<String> {
    let pid = owner_pid(name)?;
    let rest = &name[NAME_PREFIX.len() + pid.to_string().len() + 1..];
    let n: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some(format!("{NAME_PREFIX}{pid}x{n}"))
}

fn kill_cgroup(cg: &Path) {
    if !cg.exists() {
        return;
    }
    let _ = fs::write(cg.join("cgroup.freeze"), "0");
    let _ = fs::write(cg.join("cgroup.kill"), "1");
    let _ = wait_until_blocking(
        "cgroup to empty",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || cgroup_empty(cg),
    );
}

fn cgroup_empty(cg: &Path) -> bool {
    fs::read_to_string(cg.join("cgroup.procs")).map_or(true, |s| s.trim().is_empty())
}

fn remove_prefix(prefix: &str) {
    let cg_root = cgroup2_root();
    if let Ok(entries) = fs::read_dir(&cg_root) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{prefix}-")) {
                kill_cgroup(&e.path());
                let _ = fs::remove_dir(e.path());
            }
        }
    }
    let dir = Path::new(WORK_ROOT).join(prefix);
    if let Ok(mounts) = fs::read_to_string("/proc/self/mounts") {
        for line in mounts.lines() {
            if let Some(mp) = line.split_whitespace().nth(1) {
                if mp.starts_with(&format!("{}/", dir.display())) {
                    let _ = run(&["umount", "-l", mp]);
                }
            }
        }
    }
    if let Ok(list) = run(&["ip", "netns", "list"]) {
        for line in list.lines() {
            if let Some(ns) = line.split_whitespace().next() {
                if ns.starts_with(&format!("{prefix}-")) {
                    let _ = run(&["ip", "netns", "del", ns]);
                }
            }
        }
    }
    let _ = fs::remove_dir_all(&dir);
}

/// Removes namespaces, cgroups, mounts and directories of earlier testbed runs
/// whose owning PID is gone. Returns the prefixes removed.
pub fn reap_leftovers() -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    if let Ok(list) = run(&["ip", "netns", "list"]) {
        names.extend(
            list.lines()
                .filter_map(|l| l.split_whitespace().next().map(String::from)),
        );
    }
    for dir in [cgroup2_root(), PathBuf::from(WORK_ROOT)] {
        if let Ok(entries) = fs::read_dir(dir) {
            names.extend(
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned()),
            );
        }
    }
    let mut prefixes: Vec<String> = names
        .iter()
        .filter(|n| owner_pid(n).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()))
        .filter_map(|n| run_prefix(n))
        .collect();
    prefixes.sort();
    prefixes.dedup();
    for p in &prefixes {
        tracing::warn!(prefix = %p, "reaping testbed leftovers of a dead run");
        remove_prefix(p);
    }
    prefixes
}

/// Runs `f` on a fresh thread that entered network namespace `ns`, on a
/// current-thread tokio runtime (sockets keep the namespace they were made in).
pub fn in_netns<T, F, Fut>(ns: &str, f: F) -> Result<T, BedError>
where
    T: Send,
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = T>,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(ns)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok(rt.block_on(f()))
        })
        .join()
        .unwrap_or_else(|_| Err(BedError::Unsupported("netns thread panicked".into())))
    })
}

/// Moves the calling thread into network namespace `ns`.
pub fn enter_netns(ns: &str) -> Result<(), BedError> {
    let f = fs::File::open(format!("/run/netns/{ns}"))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| BedError::Command {
        cmd: format!("setns {ns}"),
        detail: e.to_string(),
    })
}

impl Testbed {
    /// Builds the namespaces, bridge, cgroups, etcd cluster and agents, and
    /// returns once etcd is healthy and the agents are started (not yet ready:
    /// see `scenario::wait_ready`).
    pub fn build(spec: BedSpec) -> Result<Testbed, BedError> {
        if let Some(m) = Capabilities::probe().missing() {
            return Err(BedError::Unsupported(m));
        }
        if !spec.pgwarden_bin.exists() {
            return Err(BedError::Unsupported(format!(
                "pgwarden binary {} missing (cargo build -p pgwarden, or set PGWARDEN_BIN)",
                spec.pgwarden_bin.display()
            )));
        }
        let lock = take_lock(Duration::from_secs(3600))?;
        reap_leftovers();
        let pid = std::process::id();
        let n = RUN_COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("{NAME_PREFIX}{pid}x{n}");
        let octet = 20 + (pid + n) % 200;
        let subnet = format!("10.213.{octet}");
        let root = Path::new(WORK_ROOT).join(&prefix);
        let proxy = ProxyHost {
            ns: format!("{prefix}-px"),
            ip: format!("{subnet}.101"),
            cgroup: cgroup2_root().join(format!("{prefix}-px")),
            dir: root.join("px"),
            process: None,
        };
        let mut bed = Testbed {
            sw_ns: format!("{prefix}-sw"),
            client_ns: format!("{prefix}-cl"),
            client_ip: format!("{subnet}.100"),
            prefix,
            origin: Instant::now(),
            root,
            hosts: Vec::new(),
            proxy,
            events: Vec::new(),
            subnet,
            postgres_ids: postgres_ids()?,
            spec,
            _lock: lock,
        };
        bed.build_network()?;
        bed.build_hosts()?;
        for i in 0..bed.hosts.len() {
            bed.start_etcd(i)?;
        }
        bed.wait_etcd_healthy(Duration::from_secs(60))?;
        for i in 0..bed.hosts.len() {
            bed.start_agent(i, None)?;
        }
        bed.start_proxy()?;
        bed.event("built");
        Ok(bed)
    }

    /// Nanoseconds since the bed's origin (the clock of every recorded event).
    pub fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    pub fn event(&mut self, what: impl Into<String>) {
        let what = what.into();
        tracing::info!(prefix = %self.prefix, "fault event: {what}");
        let at_ns = self.now_ns();
        self.events.push(FaultEvent { at_ns, what });
    }

    fn build_network(&mut self) -> Result<(), BedError> {
        let sw = self.sw_ns.clone();
        run(&["ip", "netns", "add", &sw])?;
        run(&["ip", "-n", &sw, "link", "set", "lo", "up"])?;
        run(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &sw, "link", "set", "br0", "up"])?;
        let attach = |ns: &str, port: &str, ip: &str| -> Result<(), BedError> {
            run(&["ip", "netns", "add", ns])?;
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            run(&[
                "ip", "-n", &sw, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                "netns", ns,
            ])?;
            run(&["ip", "-n", &sw, "link", "set", port, "master", "br0"])?;
            run(&["ip", "-n", &sw, "link", "set", port, "up"])?;
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ])?;
            run(&["ip", "-n", ns, "link", "set", "eth0", "up"]).map(drop)
        };
        for i in 0..self.spec.hosts {
            let ns = format!("{}-h{}", self.prefix, i + 1);
            attach(
                &ns,
                &format!("vh{}", i + 1),
                &format!("{}.{}", self.subnet, 11 + i),
            )?;
        }
        attach(&self.proxy.ns.clone(), "vpx", &self.proxy.ip.clone())?;
        attach(&self.client_ns.clone(), "vcl", &self.client_ip.clone())
    }

    fn build_hosts(&mut self) -> Result<(), BedError> {
        fs::create_dir_all(&self.root)?;
        let cg_root = cgroup2_root();
        for i in 0..self.spec.hosts {
            let name = format!("h{}", i + 1);
            let dir = self.root.join(&name);
            fs::create_dir_all(&dir)?;
            let mut tmpfs = false;
            if let Some(mib) = self.spec.tmpfs_mib {
                // Only PostgreSQL's data directory: etcd and the logs stay
                // on the ordinary disk, so a full disk is PostgreSQL's fault
                // alone and the evidence of the run survives it.
                let data = dir.join("data");
                fs::create_dir_all(&data)?;
                let (uid, gid) = self.postgres_ids;
                run(&[
                    "mount",
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={mib}m,mode=0700,uid={uid},gid={gid}"),
                    "tmpfs",
                    &data.display().to_string(),
                ])?;
                tmpfs = true;
            }
            let cgroup = cg_root.join(format!("{}-{name}", self.prefix));
            fs::create_dir_all(&cgroup)?;
            self.hosts.push(Host {
                ns: format!("{}-{name}", self.prefix),
                ip: format!("{}.{}", self.subnet, 11 + i),
                name,
                cgroup,
                dir,
                etcd: None,
                agent: None,
                tmpfs,
            });
        }
        for i in 0..self.hosts.len() {
            let yaml = self.agent_yaml(i);
            fs::write(self.hosts[i].dir.join("agent.yml"), yaml)?;
        }
        fs::create_dir_all(&self.proxy.dir)?;
        fs::create_dir_all(&self.proxy.cgroup)?;
        fs::write(self.proxy.dir.join("proxy.yml"), self.proxy_yaml())?;
        fs::write(
            self.proxy.dir.join("users.txt"),
            format!("\"postgres\" \"{PASSWORD}\"\n"),
        )?;
        let (uid, gid) = self.postgres_ids;
        let root = self.root.display().to_string();
        run(&["chown", "-R", &format!("{uid}:{gid}"), &root])?;
        Ok(())
    }

    pub fn etcd_endpoints(&self) -> String {
        self.hosts
            .iter()
            .map(|h| format!("http://{}:{ETCD_CLIENT_PORT}", h.ip))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn agent_yaml(&self, i: usize) -> String {
        let h = &self.hosts[i];
        let s = &self.spec;
        let hosts: String = self
            .hosts
            .iter()
            .map(|h| format!("\n    - {}:{ETCD_CLIENT_PORT}", h.ip))
            .collect();
        let sync = if s.synchronous_mode {
            "    synchronous_mode: on\n"
        } else {
            ""
        };
        format!(
            "scope: {SCOPE}
namespace: /service/
name: {name}
restapi:
  listen: {ip}:{API_PORT}
  connect_address: {ip}:{API_PORT}
etcd3:
  hosts:{hosts}
bootstrap:
  dcs:
    ttl: {ttl}
    loop_wait: {lw}
    retry_timeout: {rt}
    maximum_lag_on_failover: {lag}
    primary_start_timeout: 30
{sync}    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_keep_size: 128MB
        fsync: 'off'
        wal_sender_timeout: 5s
        wal_receiver_timeout: 5s
        wal_receiver_status_interval: 1s
        tcp_user_timeout: 5000
        max_wal_size: 64MB
  initdb:
    - encoding: UTF8
    - data-checksums
postgresql:
  listen: {ip}:{PG_PORT}
  connect_address: {ip}:{PG_PORT}
  data_dir: {data}
  bin_dir: /usr/lib/postgresql/15/bin
  pgpass: {dir}/pgpass
  authentication:
    superuser:
      username: postgres
      password: {PASSWORD}
    replication:
      username: replicator
      password: {PASSWORD}-repl
    rewind:
      username: rewind_user
      password: {PASSWORD}-rewind
  parameters:
    unix_socket_directories: {dir}
  pg_hba:
    - local all all peer
    - host replication replicator {subnet}.0/24 scram-sha-256
    - host all all {subnet}.0/24 scram-sha-256
",
            name = h.name,
            ip = h.ip,
            ttl = s.ttl,
            lw = s.loop_wait,
            rt = s.retry_timeout,
            lag = s.maximum_lag_on_failover,
            data = h.data_dir().display(),
            dir = h.dir.display(),
            subnet = self.subnet,
        )
    }

    /// The proxy's configuration: transaction pooling in front of the
    /// cluster, SCRAM towards the servers with the superuser's password, and a
    /// short `query_wait_timeout` so a held write fails while the fault lasts
    /// instead of outliving the writer's own timeout.
    fn proxy_yaml(&self) -> String {
        let hosts: String = self
            .hosts
            .iter()
            .map(|h| format!("\n    - {}:{ETCD_CLIENT_PORT}", h.ip))
            .collect();
        format!(
            "scope: {SCOPE}
namespace: /service/
etcd3:
  hosts:{hosts}
proxy:
  listen: {addr}
  pool_mode: transaction
  default_pool_size: 8
  auth_type: scram-sha-256
  auth_file: {users}
  query_wait_timeout: 5
",
            addr = self.proxy.address(),
            users = self.proxy.dir.join("users.txt").display(),
        )
    }

    /// Spawns `argv` inside host `i`'s namespace and cgroup.
    fn spawn_in_host(
        &self,
        i: usize,
        name: &str,
        argv: &[String],
        as_postgres: bool,
        env: &[(&str, String)],
    ) -> Result<ChildGuard, BedError> {
        let h = &self.hosts[i];
        let place = Place {
            ns: &h.ns,
            cgroup: &h.cgroup,
            dir: &h.dir,
        };
        self.spawn_in(place, name, argv, as_postgres, env)
    }

    /// Spawns `argv` inside `place`'s namespace and cgroup (the PID joins
    /// the cgroup before it execs, so all its descendants are in it too).
    fn spawn_in(
        &self,
        Place { ns, cgroup, dir }: Place<'_>,
        name: &str,
        argv: &[String],
        as_postgres: bool,
        env: &[(&str, String)],
    ) -> Result<ChildGuard, BedError> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("echo $$ > \"$0\" && exec \"$@\"")
            .arg(cgroup.join("cgroup.procs"))
            .args(["ip", "netns", "exec", ns]);
        if as_postgres {
            let (uid, gid) = self.postgres_ids;
            cmd.args([
                "setpriv",
                &format!("--reuid={uid}"),
                &format!("--regid={gid}"),
                "--init-groups",
            ]);
        }
        cmd.args(argv)
            .current_dir(dir)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Ok(ChildGuard::spawn(name, cmd, dir)?)
    }

    /// Starts the proxy in its namespace (a no-op when it runs).
    pub fn start_proxy(&mut self) -> Result<(), BedError> {
        if self.proxy.process.is_some() {
            return Ok(());
        }
        let argv = vec![
            self.spec.pgwarden_bin.display().to_string(),
            "proxy".to_string(),
            self.proxy.dir.join("proxy.yml").display().to_string(),
        ];
        let env = [("PGWARDEN_LOG", "info".to_string())];
        let place = Place {
            ns: &self.proxy.ns,
            cgroup: &self.proxy.cgroup,
            dir: &self.proxy.dir,
        };
        let guard = self.spawn_in(place, "proxy", &argv, true, &env)?;
        self.proxy.process = Some(guard);
        Ok(())
    }

    /// Drops every packet between the proxy and the etcd members (the
    /// PostgreSQL servers stay reachable): the proxy must fail closed.
    pub fn cut_proxy_from_etcd(&mut self) -> Result<(), BedError> {
        let ips: Vec<&str> = self.hosts.iter().map(|h| h.ip.as_str()).collect();
        let set = format!("{{ {} }}", ips.join(", "));
        nft_drop(
            &self.proxy.ns,
            &[
                format!("input ip saddr {set} tcp sport {ETCD_CLIENT_PORT} drop"),
                format!("output ip daddr {set} tcp dport {ETCD_CLIENT_PORT} drop"),
            ],
        )?;
        self.event("cut proxy from etcd");
        Ok(())
    }

    pub fn start_etcd(&mut self, i: usize) -> Result<(), BedError> {
        let h = &self.hosts[i];
        if h.etcd.is_some() {
            return Ok(());
        }
        let cluster = self
            .hosts
            .iter()
            .map(|h| format!("{}=http://{}:{ETCD_PEER_PORT}", h.name, h.ip))
            .collect::<Vec<_>>()
            .join(",");
        let client = format!("http://{}:{ETCD_CLIENT_PORT}", h.ip);
        let peer = format!("http://{}:{ETCD_PEER_PORT}", h.ip);
        let argv: Vec<String> = [
            "/usr/bin/etcd",
            "--name",
            &h.name,
            "--data-dir",
            &h.dir.join("etcd").display().to_string(),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &cluster,
            "--initial-cluster-token",
            &self.prefix,
            "--initial-cluster-state",
            "new",
            "--experimental-enable-lease-checkpoint",
            "--experimental-enable-lease-checkpoint-persist",
            "--unsafe-no-fsync",
            "--logger",
            "zap",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let env = [("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH.to_string())];
        let guard = self.spawn_in_host(i, "etcd", &argv, false, &env)?;
        self.hosts[i].etcd = Some(guard);
        Ok(())
    }

    /// Starts the agent of host `i`; `wrapper` prefixes the command (e.g. faketime).
    pub fn start_agent(
        &mut self,
        i: usize,
        wrapper: Option<&AgentWrapper>,
    ) -> Result<(), BedError> {
        if self.hosts[i].agent.is_some() {
            return Ok(());
        }
        let mut argv: Vec<String> = Vec::new();
        let mut env = vec![("PGWARDEN_LOG", "info,pgwarden=debug".to_string())];
        if let Some(w) = wrapper {
            argv.extend(w.argv.iter().cloned());
            env.extend(w.env.iter().cloned());
        }
        argv.push(self.spec.pgwarden_bin.display().to_string());
        argv.push("agent".into());
        argv.push(self.hosts[i].dir.join("agent.yml").display().to_string());
        let guard = self.spawn_in_host(i, "agent", &argv, true, &env)?;
        self.hosts[i].agent = Some(guard);
        Ok(())
    }

    /// `etcdctl` run from the client namespace against every member.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, BedError> {
        let eps = format!("--endpoints={}", self.etcd_endpoints());
        let mut argv = vec![
            "ip",
            "netns",
            "exec",
            &self.client_ns,
            "env",
            "ETCDCTL_API=3",
            "etcdctl",
            &eps,
            "--command-timeout=3s",
            "--dial-timeout=2s",
        ];
        argv.extend_from_slice(args);
        run(&argv)
    }

    fn wait_etcd_healthy(&self, within: Duration) -> Result<(), BedError> {
        wait_until_blocking(
            "every etcd member healthy",
            within,
            Duration::from_millis(300),
            || self.etcdctl(&["endpoint", "health"]).is_ok(),
        )
        .map_err(BedError::Timeout)
    }

    /// The member named in the leader key, per etcd (None when unreadable).
    pub fn leader_name(&self) -> Option<String> {
        let key = format!("/service/{SCOPE}/leader");
        let v = self.etcdctl(&["get", &key, "--print-value-only"]).ok()?;
        let v = v.trim();
        (!v.is_empty()).then(|| v.to_string())
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.hosts.iter().position(|h| h.name == name)
    }

    /// Index of the host whose etcd member leads the etcd cluster.
    pub fn etcd_leader(&self) -> Option<usize> {
        let out = self.etcdctl(&["endpoint", "status", "-w", "json"]).ok()?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        for (i, st) in v.as_array()?.iter().enumerate() {
            let s = &st["Status"];
            if s["header"]["member_id"] == s["leader"] {
                let ep = st["Endpoint"].as_str()?;
                return self
                    .hosts
                    .iter()
                    .position(|h| ep.contains(&h.ip))
                    .or(Some(i));
            }
        }
        None
    }

    /// Everything under the scope in etcd, as `etcdctl get --prefix` prints it.
    pub fn etcd_dump(&self) -> String {
        self.etcdctl(&["get", "--prefix", "/service/"])
            .unwrap_or_else(|e| format!("etcd dump failed: {e}"))
    }

    // ----- faults -----

    /// kill -9 of a whole host: agent, PostgreSQL and etcd member, atomically.
    pub fn kill_host(&mut self, i: usize) {
        self.event(format!("kill host {}", self.hosts[i].name));
        let h = &mut self.hosts[i];
        kill_cgroup(&h.cgroup);
        drop(h.agent.take());
        drop(h.etcd.take());
    }

    /// Restarts a killed host's etcd member and agent (the agent restarts PostgreSQL).
    pub fn start_host(&mut self, i: usize) -> Result<(), BedError> {
        self.event(format!("start host {}", self.hosts[i].name));
        self.start_etcd(i)?;
        self.start_agent(i, None)
    }

    pub fn freeze_host(&mut self, i: usize) -> Result<(), BedError> {
        self.event(format!("freeze host {}", self.hosts[i].name));
        fs::write(self.hosts[i].cgroup.join("cgroup.freeze"), "1")?;
        Ok(())
    }

    pub fn thaw_host(&mut self, i: usize) -> Result<(), BedError> {
        self.event(format!("thaw host {}", self.hosts[i].name));
        fs::write(self.hosts[i].cgroup.join("cgroup.freeze"), "0")?;
        Ok(())
    }

    fn signal_guard(&mut self, i: usize, etcd: bool, sig: Signal) -> Result<(), BedError> {
        let h = &self.hosts[i];
        let what = if etcd { "etcd" } else { "agent" };
        let g = if etcd { &h.etcd } else { &h.agent };
        let g = g.as_ref().ok_or_else(|| BedError::Command {
            cmd: format!("{sig} {what} of {}", h.name),
            detail: "not running".into(),
        })?;
        g.signal(sig).map_err(|detail| BedError::Command {
            cmd: format!("{sig} {what}"),
            detail,
        })?;
        let name = h.name.clone();
        self.event(format!("{sig} {what} of {name}"));
        Ok(())
    }

    pub fn stop_agent(&mut self, i: usize) -> Result<(), BedError> {
        self.signal_guard(i, false, Signal::SIGSTOP)
    }
    pub fn cont_agent(&mut self, i: usize) -> Result<(), BedError> {
        self.signal_guard(i, false, Signal::SIGCONT)
    }
    pub fn stop_etcd(&mut self, i: usize) -> Result<(), BedError> {
        self.signal_guard(i, true, Signal::SIGSTOP)
    }
    pub fn cont_etcd(&mut self, i: usize) -> Result<(), BedError> {
        self.signal_guard(i, true, Signal::SIGCONT)
    }

    /// Thaws host `i` and SIGCONTs its processes (a no-op for running ones).
    pub fn release(&mut self, i: usize) {
        let h = &self.hosts[i];
        let _ = fs::write(h.cgroup.join("cgroup.freeze"), "0");
        for g in [&h.etcd, &h.agent].into_iter().flatten() {
            let _ = g.signal(Signal::SIGCONT);
        }
    }

    pub fn kill_etcd(&mut self, i: usize) {
        self.event(format!("kill etcd of {}", self.hosts[i].name));
        drop(self.hosts[i].etcd.take());
    }

    /// Stops (SIGKILL) host `i`'s agent only; PostgreSQL keeps running.
    pub fn kill_agent(&mut self, i: usize) {
        self.event(format!("kill agent of {}", self.hosts[i].name));
        drop(self.hosts[i].agent.take());
    }

    /// SIGKILL of the postmaster (its children exit on their own).
    pub fn kill_postmaster(&mut self, i: usize) -> Result<(), BedError> {
        let pid = self.hosts[i]
            .postmaster_pid()
            .ok_or_else(|| BedError::Command {
                cmd: "kill postmaster".into(),
                detail: format!("no postmaster on {}", self.hosts[i].name),
            })?;
        self.event(format!("kill postmaster {pid} of {}", self.hosts[i].name));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).map_err(|e| {
            BedError::Command {
                cmd: format!("kill -9 {pid}"),
                detail: e.to_string(),
            }
        })
    }

    /// Drops traffic between host `i` and `peers` (both directions, in host
    /// `i`'s namespace), optionally only TCP to or from `ports`; `inbound_only`
    /// cuts only what host `i` receives (an asymmetric partition).
    pub fn block(
        &mut self,
        i: usize,
        peers: &[usize],
        ports: Option<&[u16]>,
        inbound_only: bool,
    ) -> Result<(), BedError> {
        let ips: Vec<&str> = peers.iter().map(|p| self.hosts[*p].ip.as_str()).collect();
        let set = format!("{{ {} }}", ips.join(", "));
        let matches: Vec<String> = match ports {
            None => vec![String::new()],
            Some(ps) => {
                let p = ps.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
                vec![
                    format!("tcp dport {{ {p} }} "),
                    format!("tcp sport {{ {p} }} "),
                ]
            }
        };
        let mut rules = Vec::new();
        for m in &matches {
            rules.push(format!("input ip saddr {set} {m}drop"));
            if !inbound_only {
                rules.push(format!("output ip daddr {set} {m}drop"));
            }
        }
        nft_drop(&self.hosts[i].ns, &rules)?;
        let names: Vec<&str> = peers.iter().map(|p| self.hosts[*p].name.as_str()).collect();
        self.event(format!(
            "block {} <-> {names:?} ports {ports:?}{}",
            self.hosts[i].name,
            if inbound_only { " inbound only" } else { "" }
        ));
        Ok(())
    }

    /// Cuts host `i` from every other host (clients still reach it).
    pub fn isolate(&mut self, i: usize) -> Result<(), BedError> {
        let peers: Vec<usize> = (0..self.hosts.len()).filter(|j| *j != i).collect();
        self.block(i, &peers, None, false)
    }

    /// Shapes traffic into host `i` to 256 kbit/s (tbf on the switch side).
    pub fn slow_link(&mut self, i: usize) -> Result<(), BedError> {
        let dev = format!("vh{}", i + 1);
        run(&[
            "ip",
            "netns",
            "exec",
            &self.sw_ns,
            "tc",
            "qdisc",
            "add",
            "dev",
            &dev,
            "root",
            "tbf",
            "rate",
            "256kbit",
            "burst",
            "16kb",
            "latency",
            "300ms",
        ])?;
        self.event(format!("slow link into {}", self.hosts[i].name));
        Ok(())
    }

    /// Removes every partition and shaping rule.
    pub fn heal(&mut self) {
        let namespaces = self.hosts.iter().map(|h| &h.ns).chain([&self.proxy.ns]);
        for ns in namespaces {
            let _ = run(&[
                "ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "pgwfb",
            ]);
        }
        for i in 0..self.hosts.len() {
            let dev = format!("vh{}", i + 1);
            let _ = run(&[
                "ip",
                "netns",
                "exec",
                &self.sw_ns,
                "tc",
                "qdisc",
                "del",
                "dev",
                &dev,
                "root",
            ]);
        }
        self.event("heal network");
    }

    /// Fills host `i`'s tmpfs (needs `tmpfs_mib`) with a filler file.
    pub fn fill_disk(&mut self, i: usize) -> Result<(), BedError> {
        let h = &self.hosts[i];
        if !h.tmpfs {
            return Err(BedError::Unsupported(
                "fill_disk needs BedSpec::tmpfs_mib".into(),
            ));
        }
        let of = format!("of={}", h.data_dir().join("filler").display());
        // dd stops with ENOSPC once the tmpfs is full; that error is the point.
        let _ = run(&["dd", "if=/dev/zero", &of, "bs=1M"]);
        self.event(format!("fill disk of {}", self.hosts[i].name));
        Ok(())
    }

    pub fn clear_disk(&mut self, i: usize) -> Result<(), BedError> {
        fs::remove_file(self.hosts[i].data_dir().join("filler"))?;
        self.event(format!("clear disk of {}", self.hosts[i].name));
        Ok(())
    }

    /// Restarts host `i`'s agent under libfaketime with `spec` (e.g. "+300s").
    pub fn skew_agent_clock(&mut self, i: usize, spec: &str) -> Result<(), BedError> {
        let ft = Capabilities::probe()
            .faketime
            .ok_or_else(|| BedError::Unsupported("faketime not installed".into()))?;
        drop(self.hosts[i].agent.take());
        let wrapper = AgentWrapper {
            argv: vec![ft.display().to_string(), "-f".into(), spec.into()],
            env: vec![("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_string())],
        };
        self.start_agent(i, Some(&wrapper))?;
        self.event(format!(
            "agent of {} restarted under faketime {spec}",
            self.hosts[i].name
        ));
        Ok(())
    }

    /// POST /switchover to the leader's REST API, from the client namespace.
    pub fn switchover(&mut self, leader: usize, candidate: usize) -> Result<String, BedError> {
        let body = format!(
            "{{\"leader\":\"{}\",\"candidate\":\"{}\"}}",
            self.hosts[leader].name, self.hosts[candidate].name
        );
        let url = format!("http://{}:{API_PORT}/switchover", self.hosts[leader].ip);
        let out = run(&[
            "ip",
            "netns",
            "exec",
            &self.client_ns,
            "curl",
            "-sS",
            "-m",
            "30",
            "-XPOST",
            "-H",
            "Content-Type: application/json",
            "-d",
            &body,
            "-w",
            " HTTP %{http_code}",
            &url,
        ])?;
        self.event(format!("switchover {body}: {}", out.trim()));
        Ok(out)
    }

    /// Copies logs (agent, etcd, PostgreSQL) of every host into `dest`.
    pub fn collect_logs(&self, dest: &Path) -> Result<(), BedError> {
        for h in &self.hosts {
            copy_logs(&h.dir, &dest.join(&h.name), 0)?;
            let _ = fs::write(
                dest.join(&h.name).join("agent.yml"),
                self.agent_yaml(self.index_of(&h.name).unwrap_or(0)),
            );
        }
        copy_logs(&self.proxy.dir, &dest.join("proxy"), 0)?;
        let _ = fs::write(dest.join("proxy").join("proxy.yml"), self.proxy_yaml());
        Ok(())
    }
}

fn copy_logs(src: &Path, dest: &Path, depth: usize) -> Result<(), BedError> {
    if depth > 4 {
        return Ok(());
    }
    let Ok(entries) = fs::read_dir(src) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(meta) = e.metadata() else { continue };
        if meta.is_dir() {
            if !matches!(name.as_str(), "base" | "global" | "pg_wal" | "etcd") {
                copy_logs(&p, &dest.join(&name), depth + 1)?;
            }
        } else if (name.ends_with(".log") || name.ends_with(".history") || name == "postmaster.pid")
            && meta.len() < 64 << 20
        {
            fs::create_dir_all(dest)?;
            fs::copy(&p, dest.join(&name))?;
        }
    }
    Ok(())
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            kill_cgroup(&h.cgroup);
            drop(h.agent.take());
            drop(h.etcd.take());
        }
        kill_cgroup(&self.proxy.cgroup);
        drop(self.proxy.process.take());
        remove_prefix(&self.prefix);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_owner_pid_and_prefix() {
        assert_eq!(owner_pid("pgwfb123x4-h1"), Some(123));
        assert_eq!(run_prefix("pgwfb123x4-h1").as_deref(), Some("pgwfb123x4"));
        assert_eq!(run_prefix("pgwfb123x45").as_deref(), Some("pgwfb123x45"));
        assert_eq!(owner_pid("pgwfb123probe"), None);
        assert_eq!(owner_pid("other123x4"), None);
        assert_eq!(owner_pid("pgwfbx4"), None);
    }
}
