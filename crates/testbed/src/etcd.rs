//! A real etcd cluster of `/usr/bin/etcd` members on loopback, for tests.
//!
//! Every member gets its own free client and peer port on 127.0.0.1, its own
//! data dir under the caller's `base_dir`, and a [`ChildGuard`] that SIGKILLs it
//! by PID when the cluster (or the member slot) is dropped. Members run with
//! lease checkpointing on (so lease TTLs survive etcd leader changes, as in
//! production) and `--unsafe-no-fsync` (valid here only because tests never
//! simulate a kernel or power failure). Election and heartbeat timings keep
//! etcd's defaults: shortening them on a 2-core machine causes false elections.
//!
//! Fault injection: `kill_member` (SIGKILL), `restart_member` (same data dir),
//! `stop_member`/`resume_member` (SIGSTOP/SIGCONT). Health and leadership are
//! read over etcd's HTTP gateway (`/health`, `/v3/maintenance/status`) so this
//! module needs no etcd client library. It never deletes `base_dir`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::ports::free_ports;
use crate::process::ChildGuard;
use crate::wait::wait_until;

/// Path of the etcd server binary (Debian's `etcd-server` package).
pub const ETCD_BIN: &str = "/usr/bin/etcd";

/// How long a member may take to report healthy after (re)start.
const HEALTH_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    process: Option<ChildGuard>,
}

/// A running etcd cluster; dropping it kills every member.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    base_dir: PathBuf,
    initial_cluster: String,
    token: String,
}

impl EtcdCluster {
    /// Starts `members` etcd members and waits until every one reports healthy.
    pub async fn start(members: usize, base_dir: &Path) -> Result<EtcdCluster, String> {
        assert!(members > 0, "an etcd cluster needs at least one member");
        std::fs::create_dir_all(base_dir).map_err(|e| format!("create {base_dir:?}: {e}"))?;
        let ports = free_ports(members * 2);
        let members: Vec<Member> = (0..members)
            .map(|i| Member {
                name: format!("etcd{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                data_dir: base_dir.join(format!("etcd{i}.data")),
                process: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            token: format!("pgwarden-test-{}", ports[0]),
            members,
            base_dir: base_dir.to_path_buf(),
            initial_cluster,
        };
        for i in 0..cluster.members.len() {
            cluster.spawn_member(i)?;
        }
        for i in 0..cluster.members.len() {
            cluster.wait_member_healthy(i).await?;
        }
        tracing::info!(endpoints = ?cluster.endpoints(), "etcd cluster is healthy");
        Ok(cluster)
    }

    fn spawn_member(&mut self, i: usize) -> Result<(), String> {
        let m = &self.members[i];
        let client_url = format!("http://127.0.0.1:{}", m.client_port);
        let peer_url = format!("http://127.0.0.1:{}", m.peer_port);
        let mut cmd = Command::new(ETCD_BIN);
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-token")
            .arg(&self.token)
            // Ignored by etcd when the data dir already exists (restart case).
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--experimental-enable-lease-checkpoint")
            .arg("--experimental-enable-lease-checkpoint-persist")
            .arg("--unsafe-no-fsync")
            .arg("--logger")
            .arg("zap")
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH);
        let guard = ChildGuard::spawn(&m.name, cmd, &self.base_dir)
            .map_err(|e| format!("spawn {ETCD_BIN} for {}: {e}", m.name))?;
        self.members[i].process = Some(guard);
        Ok(())
    }

    async fn wait_member_healthy(&mut self, i: usize) -> Result<(), String> {
        let port = self.members[i].client_port;
        let name = self.members[i].name.clone();
        let res = wait_until(
            &format!("etcd member {name} on port {port} to report healthy"),
            HEALTH_DEADLINE,
            Duration::from_millis(100),
            || async move { member_healthy(port).await },
        )
        .await;
        if let Err(e) = res {
            let tail = self.members[i]
                .process
                .as_ref()
                .map(|p| p.stderr_tail(4000))
                .unwrap_or_default();
            return Err(format!("{e}\n--- {name} stderr tail ---\n{tail}"));
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Client URLs (`http://127.0.0.1:<port>`) of all members, dead or alive.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
    }

    /// Directory holding the members' data dirs and their log files.
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// PID of member `i`, if it is running.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].process.as_ref().map(ChildGuard::pid)
    }

    /// SIGKILL member `i` and reap it. Its data dir is kept for a restart.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].process.take() {
            p.kill();
            tracing::info!(member = %self.members[i].name, "killed etcd member");
        }
    }

    /// Starts member `i` again on the same ports and data dir (killing it first
    /// if it still runs) and waits until it is healthy.
    pub async fn restart_member(&mut self, i: usize) -> Result<(), String> {
        self.kill_member(i);
        self.spawn_member(i)?;
        self.wait_member_healthy(i).await
    }

    /// Freezes member `i` (SIGSTOP): it keeps its sockets but answers nothing.
    pub fn stop_member(&self, i: usize) -> Result<(), String> {
        self.process(i)?.pause()
    }

    /// Thaws a member frozen by [`EtcdCluster::stop_member`].
    pub fn resume_member(&self, i: usize) -> Result<(), String> {
        self.process(i)?.resume()
    }

    fn process(&self, i: usize) -> Result<&ChildGuard, String> {
        self.members[i]
            .process
            .as_ref()
            .ok_or_else(|| format!("etcd member {} is not running", self.members[i].name))
    }

    /// Index of the member that is currently the raft leader, as seen by the
    /// reachable members (None when no answering member knows a leader).
    pub async fn leader_index(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for m in &self.members {
            let status = match &m.process {
                Some(_) => member_status(m.client_port).await,
                None => None,
            };
            if let Some((member_id, leader_id)) = status {
                ids.push(Some(member_id));
                if leader_id != 0 {
                    leader = Some(leader_id);
                }
            } else {
                ids.push(None);
            }
        }
        let leader = leader?;
        ids.iter().position(|id| *id == Some(leader))
    }

    /// Waits until every running member reports healthy.
    pub async fn wait_healthy(&mut self) -> Result<(), String> {
        for i in 0..self.members.len() {
            if self.members[i].process.is_some() {
                self.wait_member_healthy(i).await?;
            }
        }
        Ok(())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }
}

/// `GET /health` on one member: true when it reports `"health":"true"`.
pub async fn member_healthy(client_port: u16) -> bool {
    match http(client_port, "GET", "/health", "").await {
        Ok(body) => body.contains("\"health\":\"true\""),
        Err(_) => false,
    }
}

/// `(member_id, leader_id)` from `/v3/maintenance/status` of one member.
async fn member_status(client_port: u16) -> Option<(u64, u64)> {
    let body = http(client_port, "POST", "/v3/maintenance/status", "{}")
        .await
        .ok()?;
    let json = &body[body.find('{')?..=body.rfind('}')?];
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    // The gateway encodes uint64 as JSON strings.
    let num = |v: &serde_json::Value| -> Option<u64> {
        v.as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| v.as_u64())
    };
    let member_id = num(v.get("header")?.get("member_id")?)?;
    let leader = v.get("leader").and_then(num).unwrap_or(0);
    Some((member_id, leader))
}

/// One HTTP/1.1 request to 127.0.0.1:`port` with `Connection: close`, bounded
/// to 2 s; returns everything after the header block.
async fn http(port: u16, method: &str, path: &str, body: &str) -> Result<String, String> {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        stream
            .read_to_end(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(String::from_utf8_lossy(&buf).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .map_err(|_| format!("HTTP {method} {path} on port {port} timed out"))??;
    match response.split_once("\r\n\r\n") {
        Some((_, body)) => Ok(body.to_string()),
        None => Err(format!("malformed HTTP response from port {port}")),
    }
}
