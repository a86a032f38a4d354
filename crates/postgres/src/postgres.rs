//! [`Postgres`]: the lifecycle and observation of one local PostgreSQL.
//!
//! Invariants:
//! * every method is bounded in time (tool deadlines, SQL deadlines, waits);
//! * `observe` never fails: what cannot be learned is reported as unknown;
//! * the postmaster is started detached (`pg_ctl` puts it in its own session,
//!   its output goes to a log file beside the data directory), so it survives
//!   the agent; it is re-adopted from `postmaster.pid` + `/proc`;
//! * destructive operations (wipe, basebackup, rewind, move aside, initdb)
//!   refuse to run while a postmaster owns the data directory;
//! * configuration files are rewritten from the settings on every start,
//!   follow and role change: the data directory's copies are never the truth.
//!
//! It does not decide anything: when to start, stop, promote or rewind is the
//! engine's call. It does not serialize concurrent calls either: the agent
//! runs one long action at a time (an emergency `stop` may overlap one).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use pgwarden_types::{DataDirState, LocalPgState, Lsn, PgClusterState, ReplicationRow, Timeline};
use tracing::{debug, info, warn};

use crate::command::Tool;
use crate::error::PgError;
use crate::files::{self, Owner};
use crate::render;
use crate::settings::{
    ConfigRole, PgSettings, RewindOutcome, SlotChanges, StopMode, Timeouts, Upstream,
};
use crate::sql::{self, bounded, simple_rows};

/// Extra time a `pg_ctl` call gets beyond its own `-t` wait before we kill it.
const PG_CTL_GRACE: Duration = Duration::from_secs(10);
/// How much of the postmaster log an error carries.
const LOG_TAIL_BYTES: usize = 4000;
/// Poll interval while waiting for the server to accept connections.
const POLL: Duration = Duration::from_millis(100);

/// The local PostgreSQL. Cheap to clone; clones share the settings.
#[derive(Clone)]
pub struct Postgres {
    inner: Arc<Inner>,
}

struct Inner {
    settings: RwLock<Arc<PgSettings>>,
    timeouts: Timeouts,
    /// The probe connection and the postmaster it belongs to.
    probe_conn: tokio::sync::Mutex<Option<(u32, sql::Conn)>>,
    /// The system identifier last read from pg_control.
    known_sysid: tokio::sync::Mutex<Option<String>>,
    /// The postmaster last proven to own the data directory, as (pid, start
    /// ticks): while that process lives, checking it is one read of
    /// `/proc/<pid>/stat` instead of the pid file, cmdline and cwd (the
    /// crash watch asks five times a second).
    verified_postmaster: std::sync::Mutex<Option<(u32, u64)>>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("data_dir", &self.settings().data_dir)
            .finish()
    }
}

impl Postgres {
    pub fn new(settings: PgSettings) -> Postgres {
        Postgres::with_timeouts(settings, Timeouts::default())
    }

    pub fn with_timeouts(settings: PgSettings, timeouts: Timeouts) -> Postgres {
        Postgres {
            inner: Arc::new(Inner {
                settings: RwLock::new(Arc::new(settings)),
                timeouts,
                probe_conn: tokio::sync::Mutex::new(None),
                known_sysid: tokio::sync::Mutex::new(None),
                verified_postmaster: std::sync::Mutex::new(None),
            }),
        }
    }

    /// The settings in force (a snapshot; later updates do not change it).
    pub fn settings(&self) -> Arc<PgSettings> {
        self.inner
            .settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the settings; files change on the next `write_config`/`start`/`follow`.
    pub fn update_settings(&self, settings: PgSettings) {
        *self
            .inner
            .settings
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(settings);
        // Credentials or addresses may have changed: connect afresh.
        if let Ok(mut conn) = self.inner.probe_conn.try_lock() {
            *conn = None;
        }
        // So may the data directory: prove the postmaster's ownership again.
        *self
            .inner
            .verified_postmaster
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn timeouts(&self) -> Timeouts {
        self.inner.timeouts
    }

    /// How long a start may take (`pg_ctl_timeout`).
    pub fn start_timeout(&self) -> Duration {
        self.settings().pg_ctl_timeout
    }

    /// The pid of the live postmaster owning the data directory (no I/O beyond `/proc`).
    pub fn postmaster_pid(&self) -> Option<u32> {
        let mut verified = self
            .inner
            .verified_postmaster
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((pid, start)) = *verified {
            if files::proc_stat(pid).is_some_and(|st| st.is_live() && st.start_ticks == start) {
                return Some(pid);
            }
        }
        let pid = files::live_postmaster(&self.settings().data_dir);
        *verified = pid.and_then(|pid| files::proc_stat(pid).map(|st| (pid, st.start_ticks)));
        pid
    }

    pub fn postmaster_alive(&self) -> bool {
        self.postmaster_pid().is_some()
    }

    /// The system identifier read straight from `global/pg_control`; `None`
    /// when there is no (readable) cluster.
    pub fn local_system_identifier(&self) -> Option<String> {
        files::read_system_identifier(&self.settings().data_dir)
    }

    fn owner(&self, s: &PgSettings) -> Result<Option<Owner>, PgError> {
        files::owner_for(s.run_as.as_deref())
    }

    fn tool(&self, s: &PgSettings, name: &str) -> Tool {
        Tool::new(s.tool(name)).run_as(s.run_as.as_deref())
    }

    fn refuse_if_running(&self, s: &PgSettings, action: &'static str) -> Result<(), PgError> {
        match files::live_postmaster(&s.data_dir) {
            Some(pid) => Err(PgError::Running { action, pid }),
            None => Ok(()),
        }
    }

    // ----- observation -------------------------------------------------

    /// `pg_controldata` as key → value.
    pub async fn controldata(&self) -> Result<BTreeMap<String, String>, PgError> {
        let s = self.settings();
        let out = self
            .tool(&s, "pg_controldata")
            .arg("-D")
            .arg(s.data_dir.display().to_string())
            .timeout(self.inner.timeouts.controldata)
            .run()
            .await?;
        Ok(files::parse_controldata(&out.stdout))
    }

    /// The system identifier according to `pg_controldata`.
    pub async fn system_identifier(&self) -> Result<String, PgError> {
        self.controldata()
            .await?
            .remove("Database system identifier")
            .ok_or(PgError::Parse {
                what: "pg_controldata output",
                detail: "no \"Database system identifier\" line".into(),
            })
    }

    /// pg_rewind can work on this data directory: `wal_log_hints` was on at
    /// the last checkpoint or data checksums are enabled (pg_controldata).
    pub async fn rewind_possible(&self) -> Result<bool, PgError> {
        let map = self.controldata().await?;
        let hints = map.get("wal_log_hints setting").is_some_and(|v| v == "on");
        let checksums = map
            .get("Data page checksum version")
            .is_some_and(|v| v != "0");
        Ok(hints || checksums)
    }

    /// What the data directory holds.
    pub async fn data_dir_state(&self) -> DataDirState {
        self.data_dir_and_checkpoint().await.0
    }

    /// [`Self::data_dir_state`] and the latest checkpoint's location.
    async fn data_dir_and_checkpoint(&self) -> (DataDirState, Option<Lsn>) {
        let s = self.settings();
        match files::dir_is_empty(&s.data_dir) {
            Ok(true) => return (DataDirState::Empty, None),
            Ok(false) => {}
            Err(e) => {
                return (
                    DataDirState::Invalid {
                        reason: e.to_string(),
                    },
                    None,
                );
            }
        }
        if !s.data_dir.join("PG_VERSION").exists() {
            return (
                DataDirState::Invalid {
                    reason: format!("{} has files but no PG_VERSION", s.data_dir.display()),
                },
                None,
            );
        }
        let map = match self.controldata().await {
            Ok(map) => map,
            Err(e) => {
                return (
                    DataDirState::Invalid {
                        reason: e.to_string(),
                    },
                    None,
                );
            }
        };
        let Some(system_identifier) = map.get("Database system identifier").cloned() else {
            return (
                DataDirState::Invalid {
                    reason: "pg_controldata printed no system identifier".into(),
                },
                None,
            );
        };
        let checkpoint = map
            .get("Latest checkpoint location")
            .and_then(|v| Lsn::from_str(v).ok());
        let state = DataDirState::Initialized {
            system_identifier,
            cluster_state: PgClusterState::from_controldata(
                map.get("Database cluster state").map_or("", String::as_str),
            ),
            checkpoint_timeline: map
                .get("Latest checkpoint's TimeLineID")
                .and_then(|t| t.parse().ok())
                .unwrap_or(0),
            standby_signal: s.data_dir.join("standby.signal").exists(),
        };
        (state, checkpoint)
    }

    /// One observation of the local PostgreSQL. Never fails; bounded by the
    /// controldata deadline plus the probe deadline.
    ///
    /// While the same postmaster keeps answering on the kept probe session,
    /// pg_controldata is not run again: the data directory's identity cannot
    /// change under a running server, and its state follows from
    /// `pg_is_in_recovery()`. Only a stopped, new or silent server is read
    /// from pg_control.
    pub async fn observe(&self) -> LocalPgState {
        let s = self.settings();
        let mut state = LocalPgState::empty();
        state.managed_sync_standby_names =
            std::fs::read_to_string(s.data_dir.join(render::SYNC_CONF))
                .ok()
                .and_then(|text| render::parse_sync_conf(&text));
        state.postmaster_pid = self.postmaster_pid();
        let known = self.answering_server(state.postmaster_pid).await;
        let mut probed = false;
        if let (Some(system_identifier), Some(_)) = (known, state.postmaster_pid) {
            self.probe_into(&s, &mut state).await;
            probed = true;
            if state.accepting_connections {
                state.data_dir = DataDirState::Initialized {
                    system_identifier,
                    cluster_state: if state.in_recovery == Some(true) {
                        PgClusterState::InArchiveRecovery
                    } else {
                        PgClusterState::InProduction
                    },
                    checkpoint_timeline: state.timeline.unwrap_or(0),
                    standby_signal: s.data_dir.join("standby.signal").exists(),
                };
                return state;
            }
        }
        (state.data_dir, state.checkpoint_lsn) = self.data_dir_and_checkpoint().await;
        if let DataDirState::Initialized {
            system_identifier, ..
        } = &state.data_dir
        {
            *self.inner.known_sysid.lock().await = Some(system_identifier.clone());
        }
        if state.postmaster_pid.is_some() && !probed {
            self.probe_into(&s, &mut state).await;
        }
        state
    }

    /// The system identifier read from pg_control, when the probe session of
    /// this very postmaster is open (the server answered last time).
    async fn answering_server(&self, postmaster: Option<u32>) -> Option<String> {
        let pid = postmaster?;
        let conn = self.inner.probe_conn.lock().await;
        match conn.as_ref() {
            Some((conn_pid, c)) if *conn_pid == pid && !c.client.is_closed() => {
                self.inner.known_sysid.lock().await.clone()
            }
            _ => None,
        }
    }

    /// The SQL probe over the kept session (opened when needed).
    async fn probe_into(&self, s: &PgSettings, state: &mut LocalPgState) {
        let Some(postmaster) = state.postmaster_pid else {
            return;
        };
        let timeout = self.inner.timeouts.probe;
        let mut cached = self.inner.probe_conn.lock().await;
        if cached
            .as_ref()
            .is_some_and(|(pid, conn)| *pid != postmaster || conn.client.is_closed())
        {
            *cached = None;
        }
        let outcome = bounded("probe the local PostgreSQL", timeout, async {
            if cached.is_none() {
                *cached = Some((postmaster, sql::connect(s, timeout).await?));
            }
            let (_, conn) = cached.as_ref().expect("connected just above");
            probe(&conn.client, state).await
        })
        .await;
        match outcome {
            Ok(()) => state.accepting_connections = true,
            Err(e) => {
                debug!("SQL probe failed: {e}");
                *cached = None;
            }
        }
        drop(cached);
        if state.in_recovery != Some(false) {
            state.following = std::fs::read_to_string(s.data_dir.join("postgresql.conf"))
                .ok()
                .and_then(|conf| render::parse_following(&conf));
        }
    }

    // ----- configuration -----------------------------------------------

    /// Writes `postgresql.conf`, `pg_hba.conf` (when configured), the pgpass
    /// file and the signal files for `role`. Does not reload.
    pub async fn write_config(&self, role: &ConfigRole) -> Result<(), PgError> {
        let s = self.settings();
        self.write_config_files(&s, role)
    }

    fn write_config_files(&self, s: &PgSettings, role: &ConfigRole) -> Result<(), PgError> {
        let owner = self.owner(s)?;
        let dir = &s.data_dir;
        if !dir.is_dir() {
            return Err(PgError::io(
                "write the configuration into",
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "data directory missing"),
            ));
        }
        let conf = dir.join("postgresql.conf");
        let base = dir.join(render::BASE_CONF);
        if !base.exists() {
            let first_line = std::fs::read_to_string(&conf)
                .ok()
                .and_then(|t| t.lines().next().map(str::to_string));
            match first_line {
                Some(line) if line.trim() != render::INCLUDE_BASE => {
                    std::fs::rename(&conf, &base)
                        .map_err(|e| PgError::io("rename postgresql.conf to", &base, e))?;
                }
                _ => files::write_file(&base, b"", 0o600, owner)?,
            }
        }
        files::write_file(
            &conf,
            render::render_postgresql_conf(s, role).as_bytes(),
            0o600,
            owner,
        )?;
        if !s.pg_hba.is_empty() {
            files::write_file(
                &dir.join("pg_hba.conf"),
                render::render_pg_hba(s).as_bytes(),
                0o600,
                owner,
            )?;
        }
        self.write_pgpass(s, owner)?;
        files::remove_file(&dir.join("recovery.signal"))?;
        match role {
            ConfigRole::Replica { .. } => {
                files::write_file(&dir.join("standby.signal"), b"", 0o600, owner)?
            }
            ConfigRole::Primary => files::remove_file(&dir.join("standby.signal"))?,
        }
        Ok(())
    }

    fn write_pgpass(&self, s: &PgSettings, owner: Option<Owner>) -> Result<(), PgError> {
        files::write_file(&s.pgpass, render::render_pgpass(s).as_bytes(), 0o600, owner)
    }

    // ----- lifecycle ---------------------------------------------------

    /// initdb into an empty (or missing) data directory, then the managed
    /// configuration for a primary. The server is not started.
    pub async fn initdb(&self) -> Result<(), PgError> {
        let s = self.settings();
        let owner = self.owner(&s)?;
        self.refuse_if_running(&s, "initdb")?;
        if !files::dir_is_empty(&s.data_dir)? {
            return Err(PgError::DataDirNotEmpty {
                path: s.data_dir.clone(),
            });
        }
        files::reset_dir(&s.data_dir, owner)?;
        let pwfile = match &s.superuser.password {
            Some(password) => Some(PwFile::create(password, owner)?),
            None => None,
        };
        let mut tool = self
            .tool(&s, "initdb")
            .arg(format!("--pgdata={}", s.data_dir.display()))
            .arg(format!("--username={}", s.superuser.username))
            .timeout(self.inner.timeouts.initdb);
        if let Some(pw) = &pwfile {
            tool = tool.arg(format!("--pwfile={}", pw.path.display()));
        }
        info!("running initdb in {}", s.data_dir.display());
        let result = tool.args(s.initdb_options.iter().cloned()).run().await;
        drop(pwfile);
        result?;
        files::write_file(
            &s.data_dir.join("pg_hba.conf"),
            render::render_pg_hba(&s).as_bytes(),
            0o600,
            owner,
        )?;
        self.write_config_files(&s, &ConfigRole::Primary)
    }

    /// Writes the configuration for `role` and starts the postmaster detached,
    /// then waits up to `wait` until it accepts connections (read-only is
    /// enough for a replica). On a timeout the postmaster is left running.
    /// When a postmaster already owns the data directory nothing is written
    /// or started: the call only waits for it to accept connections. A stale
    /// `postmaster.pid` or socket lock file (dead or zombie pid) is removed.
    pub async fn start(&self, role: &ConfigRole, wait: Duration) -> Result<(), PgError> {
        let s = self.settings();
        if let Some(pid) = files::live_postmaster(&s.data_dir) {
            debug!(
                "start requested but postmaster {pid} is already running; waiting for connections"
            );
            return self.wait_ready(&s, wait, 0).await;
        }
        let pid_file = s.data_dir.join("postmaster.pid");
        if let Some(stale) = files::read_pid_file(&s.data_dir) {
            // A postmaster killed a moment ago may still be exiting (no longer
            // a postgres by its command line, not yet a zombie): its socket
            // lock would look live. Give it a moment to be gone.
            for _ in 0..100 {
                if !files::process_is_live(stale.pid) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if pid_file.exists() {
            // Its process is gone (or is not a postgres of this directory); a
            // stale file with a reused pid would make postgres refuse to start.
            warn!("removing stale {}", pid_file.display());
            files::remove_file(&pid_file)?;
        }
        for dir in s.socket_dir().display().to_string().split(',') {
            if files::remove_stale_socket_lock(Path::new(dir.trim()), s.port)? {
                warn!("removed a stale socket lock file in {dir}");
            }
        }
        self.write_config_files(&s, role)?;
        let owner = self.owner(&s)?;
        let log = s.log_file();
        let log_offset = prepare_log(&log, owner)?;
        let secs = wait.as_secs().max(1);
        info!(
            "starting PostgreSQL in {} as {}",
            s.data_dir.display(),
            role_name(role)
        );
        let result = self
            .tool(&s, "pg_ctl")
            .args(["start", "-D"])
            .arg(s.data_dir.display().to_string())
            .arg("-l")
            .arg(log.display().to_string())
            .args(["-w", "-t"])
            .arg(secs.to_string())
            .timeout(Duration::from_secs(secs) + PG_CTL_GRACE)
            .run()
            .await;
        if let Err(e) = result {
            return Err(PgError::StartFailed {
                reason: e.to_string(),
                log_tail: log_since(&log, log_offset),
            });
        }
        self.wait_ready(&s, wait, log_offset).await
    }

    async fn wait_ready(
        &self,
        s: &PgSettings,
        wait: Duration,
        log_offset: u64,
    ) -> Result<(), PgError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if files::live_postmaster(&s.data_dir).is_none() {
                return Err(PgError::StartFailed {
                    reason: "the postmaster exited".into(),
                    log_tail: log_since(&s.log_file(), log_offset),
                });
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let attempt = self
                .inner
                .timeouts
                .probe
                .min(left.max(Duration::from_millis(200)));
            match bounded("run SELECT 1", attempt, async {
                let conn = sql::connect(s, attempt).await?;
                conn.client
                    .simple_query("SELECT 1")
                    .await
                    .map_err(|e| PgError::sql("run SELECT 1", e))
            })
            .await
            {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() < deadline => debug!("not ready yet: {e}"),
                Err(e) => {
                    let last_error = e.to_string();
                    return Err(PgError::StartFailed {
                        reason: format!("not accepting connections within {wait:?} (last error: {last_error}); the postmaster keeps running"),
                        log_tail: log_since(&s.log_file(), log_offset),
                    });
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `pg_ctl stop -m <mode> -w`; succeeds when nothing is running.
    pub async fn stop(&self, mode: StopMode, timeout: Duration) -> Result<(), PgError> {
        let s = self.settings();
        let Some(pid) = files::live_postmaster(&s.data_dir) else {
            return Ok(());
        };
        info!("stopping PostgreSQL (pid {pid}, mode {})", mode.as_str());
        // Our own probe session must not hold up a smart shutdown.
        *self.inner.probe_conn.lock().await = None;
        let secs = timeout.as_secs().max(1);
        let result = self
            .tool(&s, "pg_ctl")
            .args(["stop", "-D"])
            .arg(s.data_dir.display().to_string())
            .args(["-m", mode.as_str(), "-w", "-t"])
            .arg(secs.to_string())
            .timeout(Duration::from_secs(secs) + PG_CTL_GRACE)
            .run()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(_) if files::live_postmaster(&s.data_dir).is_none() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `pg_ctl promote -w`, then the managed configuration of a primary, then
    /// a background `CHECKPOINT` (bounded) so that peers can `pg_rewind` from
    /// this server. Callers that need the checkpoint done before they go on
    /// call [`Postgres::checkpoint`] themselves.
    pub async fn promote(&self, timeout: Duration) -> Result<(), PgError> {
        let s = self.settings();
        if files::live_postmaster(&s.data_dir).is_none() {
            return Err(PgError::NotRunning { action: "promote" });
        }
        info!("promoting PostgreSQL in {}", s.data_dir.display());
        let secs = timeout.as_secs().max(1);
        self.tool(&s, "pg_ctl")
            .args(["promote", "-D"])
            .arg(s.data_dir.display().to_string())
            .args(["-w", "-t"])
            .arg(secs.to_string())
            .timeout(Duration::from_secs(secs) + PG_CTL_GRACE)
            .run()
            .await?;
        // The running server ignores the recovery block from now on; the file
        // must not make the next start a standby again.
        self.write_config_files(&s, &ConfigRole::Primary)?;
        // pg_rewind on a former primary reads this server's timeline from its
        // control file, which changes only with the first checkpoint after the
        // promotion; without it a rewind would wrongly report "no rewind
        // required". Run it in the background so that promote returns at once.
        let pg = self.clone();
        tokio::spawn(async move {
            if let Err(e) = pg.checkpoint().await {
                warn!("checkpoint after promote failed: {e}");
            }
        });
        Ok(())
    }

    /// Sets (`Some`) or removes (`None`) pgwarden's own
    /// `synchronous_standby_names`, then reloads a running server. Removing
    /// the file brings back the user's setting from the configuration.
    pub async fn set_sync_standby_names(&self, value: Option<&str>) -> Result<(), PgError> {
        let s = self.settings();
        let owner = self.owner(&s)?;
        let path = s.data_dir.join(render::SYNC_CONF);
        match value {
            Some(v) => {
                files::write_file(&path, render::render_sync_conf(v).as_bytes(), 0o600, owner)?
            }
            None => files::remove_file(&path)?,
        }
        if files::live_postmaster(&s.data_dir).is_some() {
            self.reload().await?;
        }
        Ok(())
    }

    /// `pg_ctl reload`.
    pub async fn reload(&self) -> Result<(), PgError> {
        let s = self.settings();
        if files::live_postmaster(&s.data_dir).is_none() {
            return Err(PgError::NotRunning { action: "reload" });
        }
        self.tool(&s, "pg_ctl")
            .args(["reload", "-D"])
            .arg(s.data_dir.display().to_string())
            .timeout(Duration::from_secs(30))
            .run()
            .await
            .map(|_| ())
    }

    /// Points a replica at a new upstream: rewrites the configuration and,
    /// when running, reloads (PostgreSQL 13+ applies `primary_conninfo` and
    /// `primary_slot_name` on reload by restarting the WAL receiver).
    pub async fn follow(&self, upstream: &Upstream) -> Result<(), PgError> {
        let s = self.settings();
        info!(
            "following {} at {}:{}",
            upstream.member, upstream.host, upstream.port
        );
        self.write_config_files(
            &s,
            &ConfigRole::Replica {
                upstream: Some(upstream.clone()),
            },
        )?;
        if files::live_postmaster(&s.data_dir).is_some() {
            self.reload().await?;
        }
        Ok(())
    }

    /// Clones the data directory from `source` with `pg_basebackup` (WAL
    /// streamed alongside) and writes the replica configuration. The data
    /// directory is emptied first and again when the copy fails.
    pub async fn basebackup(&self, source: &Upstream) -> Result<(), PgError> {
        let s = self.settings();
        let owner = self.owner(&s)?;
        self.refuse_if_running(&s, "take a base backup")?;
        wipe(&s.data_dir, owner).await?;
        self.write_pgpass(&s, owner)?;
        let conninfo = render::render_conninfo(&[
            ("host", source.host.clone()),
            ("port", source.port.to_string()),
            ("user", s.replication.username.clone()),
            ("application_name", s.member_name.clone()),
            ("sslmode", "prefer".into()),
            ("connect_timeout", "5".into()),
        ]);
        info!(
            "cloning {} from {} ({}:{})",
            s.data_dir.display(),
            source.member,
            source.host,
            source.port
        );
        let result = self
            .tool(&s, "pg_basebackup")
            .arg(format!("--pgdata={}", s.data_dir.display()))
            .args(["--wal-method=stream", "--checkpoint=fast", "--no-password"])
            .arg(format!("--dbname={conninfo}"))
            .env("PGPASSFILE", s.pgpass.display().to_string())
            .timeout(self.inner.timeouts.basebackup)
            .run()
            .await;
        if let Err(e) = result {
            if let Err(wipe_err) = wipe(&s.data_dir, owner).await {
                warn!("could not wipe the partial base backup: {wipe_err}");
            }
            return Err(e);
        }
        self.write_config_files(
            &s,
            &ConfigRole::Replica {
                upstream: Some(source.clone()),
            },
        )
    }

    /// Rewinds the stopped data directory onto `source`'s history with
    /// `pg_rewind`, then writes the replica configuration. PostgreSQL 15's
    /// pg_rewind runs crash recovery itself when the target was not shut
    /// down cleanly.
    pub async fn rewind(&self, source: &Upstream) -> Result<RewindOutcome, PgError> {
        let s = self.settings();
        let owner = self.owner(&s)?;
        self.refuse_if_running(&s, "rewind")?;
        // pg_rewind's single-user postgres refuses a postmaster.pid whose
        // process still exists, and an unreaped zombie (a killed postmaster)
        // does: the file is stale once its process is not live.
        let pid_file = s.data_dir.join("postmaster.pid");
        if pid_file.exists() {
            warn!("removing stale {}", pid_file.display());
            files::remove_file(&pid_file)?;
        }
        self.write_pgpass(&s, owner)?;
        // A single-user postgres (pg_rewind's crash recovery) refuses to run
        // with standby.signal; the replica config is written afterwards.
        files::remove_file(&s.data_dir.join("standby.signal"))?;
        files::remove_file(&s.data_dir.join("recovery.signal"))?;
        let creds = s.rewind_credentials();
        let conninfo = render::render_conninfo(&[
            ("host", source.host.clone()),
            ("port", source.port.to_string()),
            ("user", creds.username.clone()),
            ("dbname", s.database.clone()),
            ("application_name", format!("{}-rewind", s.member_name)),
            ("sslmode", "prefer".into()),
            ("connect_timeout", "5".into()),
        ]);
        info!(
            "rewinding {} from {} ({}:{})",
            s.data_dir.display(),
            source.member,
            source.host,
            source.port
        );
        let out = self
            .tool(&s, "pg_rewind")
            .arg(format!("--target-pgdata={}", s.data_dir.display()))
            .arg(format!("--source-server={conninfo}"))
            .env("PGPASSFILE", s.pgpass.display().to_string())
            .env("PGOPTIONS", "-c statement_timeout=0")
            .timeout(self.inner.timeouts.rewind)
            .run()
            .await?;
        let outcome = if format!("{}{}", out.stdout, out.stderr).contains("no rewind required") {
            RewindOutcome::NotNeeded
        } else {
            RewindOutcome::Rewound
        };
        info!("pg_rewind finished: {outcome:?}");
        self.write_config_files(
            &s,
            &ConfigRole::Replica {
                upstream: Some(source.clone()),
            },
        )?;
        Ok(outcome)
    }

    /// Empties the data directory (kept, mode 0700). Refused while running.
    pub async fn wipe_data_dir(&self) -> Result<(), PgError> {
        let s = self.settings();
        self.refuse_if_running(&s, "wipe the data directory")?;
        info!("wiping {}", s.data_dir.display());
        wipe(&s.data_dir, self.owner(&s)?).await
    }

    /// Renames the data directory to `<data_dir>.failed` (or
    /// `.failed.<epoch>` when taken) after a failed bootstrap; returns the new
    /// path, or `None` when there was nothing to move.
    pub async fn move_data_dir_aside(&self) -> Result<Option<PathBuf>, PgError> {
        let s = self.settings();
        self.refuse_if_running(&s, "move the data directory aside")?;
        if !s.data_dir.exists() {
            return Ok(None);
        }
        let mut target = PathBuf::from(format!("{}.failed", s.data_dir.display()));
        if target.exists() {
            let epoch = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            target = PathBuf::from(format!("{}.failed.{epoch}", s.data_dir.display()));
        }
        std::fs::rename(&s.data_dir, &target)
            .map_err(|e| PgError::io("move aside", &s.data_dir, e))?;
        warn!("moved {} to {}", s.data_dir.display(), target.display());
        Ok(Some(target))
    }

    // ----- SQL ---------------------------------------------------------

    /// On a fresh primary: superuser password, replication role, rewind role
    /// with the grants pg_rewind needs. Statement logging is off for the
    /// session so that passwords do not reach the server log.
    pub async fn create_roles(&self) -> Result<(), PgError> {
        let s = self.settings();
        let timeout = self.inner.timeouts.sql;
        bounded("create the roles", timeout, async {
            let conn = sql::connect(&s, timeout).await?;
            let client = &conn.client;
            let action = "create the roles";
            client
                .batch_execute(
                    "SET log_statement TO 'none'; SET log_min_duration_statement TO -1; \
                     SET log_min_error_statement TO 'panic'; SET synchronous_commit TO 'local'",
                )
                .await
                .map_err(|e| PgError::sql(action, e))?;
            let su = &s.superuser;
            let mut alter = format!(
                "ALTER ROLE {} WITH SUPERUSER LOGIN",
                render::quote_ident(&su.username)
            );
            if let Some(pw) = &su.password {
                alter.push_str(&format!(" PASSWORD {}", render::quote_literal(pw)));
            }
            client
                .batch_execute(&alter)
                .await
                .map_err(|e| PgError::sql("alter the superuser", e))?;
            if s.replication.username != su.username {
                ensure_role(
                    client,
                    &s.replication.username,
                    "REPLICATION LOGIN",
                    s.replication.password.as_deref(),
                )
                .await?;
            }
            if let Some(rw) = s.rewind.as_ref().filter(|r| r.username != su.username) {
                ensure_role(client, &rw.username, "LOGIN", rw.password.as_deref()).await?;
                let who = render::quote_ident(&rw.username);
                for function in [
                    "pg_catalog.pg_ls_dir(text, boolean, boolean)",
                    "pg_catalog.pg_stat_file(text, boolean)",
                    "pg_catalog.pg_read_binary_file(text)",
                    "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)",
                ] {
                    client
                        .batch_execute(&format!("GRANT EXECUTE ON FUNCTION {function} TO {who}"))
                        .await
                        .map_err(|e| PgError::sql("grant the rewind role its functions", e))?;
                }
            }
            info!("database roles are in place");
            Ok(())
        })
        .await
    }

    /// Makes the physical non-temporary slots equal `wanted`: creates the
    /// missing ones (reserving WAL at once), drops unwanted inactive ones,
    /// reports unwanted active ones as busy.
    pub async fn sync_physical_slots(&self, wanted: &[String]) -> Result<SlotChanges, PgError> {
        if let Some(bad) = wanted.iter().find(|n| !render::valid_slot_name(n)) {
            return Err(PgError::InvalidSlotName { name: bad.clone() });
        }
        let s = self.settings();
        let timeout = self.inner.timeouts.sql;
        bounded("synchronize the replication slots", timeout, async {
            // The leader runs this every cycle: use the kept probe session
            // (a new connection costs a SCRAM exchange, most of the idle CPU).
            let kept = self.inner.probe_conn.lock().await;
            let fresh;
            let client = match kept.as_ref() {
                Some((_, c)) if !c.client.is_closed() => &c.client,
                _ => {
                    fresh = sql::connect(&s, timeout).await?;
                    &fresh.client
                }
            };
            let rows = client
                .query(
                    "SELECT slot_name::text, active, temporary FROM pg_catalog.pg_replication_slots \
                     WHERE slot_type = 'physical'",
                    &[],
                )
                .await
                .map_err(|e| PgError::sql("list the replication slots", e))?;
            let existing: Vec<(String, bool, bool)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
            let mut changes = SlotChanges::default();
            for name in wanted {
                if existing.iter().any(|(n, _, _)| n == name) || changes.created.contains(name) {
                    continue;
                }
                client
                    .execute("SELECT pg_catalog.pg_create_physical_replication_slot($1, true)", &[name])
                    .await
                    .map_err(|e| PgError::sql(format!("create replication slot {name}"), e))?;
                info!("created physical replication slot {name}");
                changes.created.push(name.clone());
            }
            for (name, active, temporary) in existing {
                if temporary || wanted.contains(&name) {
                    continue;
                }
                if active {
                    changes.busy.push(name);
                    continue;
                }
                match client.execute("SELECT pg_catalog.pg_drop_replication_slot($1)", &[&name]).await {
                    Ok(_) => {
                        info!("dropped physical replication slot {name}");
                        changes.dropped.push(name);
                    }
                    // It became active between the listing and the drop.
                    Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) => {
                        changes.busy.push(name)
                    }
                    Err(e) => return Err(PgError::sql(format!("drop replication slot {name}"), e)),
                }
            }
            Ok(changes)
        })
        .await
    }

    /// `CHECKPOINT`.
    pub async fn checkpoint(&self) -> Result<(), PgError> {
        let timeout = self.inner.timeouts.checkpoint;
        self.execute_bounded("CHECKPOINT", timeout).await
    }

    /// The current timeline's history file as (parent timeline, switch point,
    /// reason) lines; empty on timeline 1.
    pub async fn timeline_history(&self) -> Result<Vec<(Timeline, Lsn, String)>, PgError> {
        let s = self.settings();
        let timeout = self.inner.timeouts.sql;
        bounded("read the timeline history", timeout, async {
            let conn = sql::connect(&s, timeout).await?;
            let rows = simple_rows(&conn.client, TIMELINE_SQL, "find the current timeline").await?;
            let row = rows.first().ok_or(PgError::Parse {
                what: "timeline query",
                detail: "no row".into(),
            })?;
            let timeline = current_timeline(
                row.first().cloned().flatten(),
                row.get(1).cloned().flatten(),
                row.get(2).cloned().flatten(),
            )
            .ok_or(PgError::Parse {
                what: "timeline query",
                detail: format!("{row:?}"),
            })?;
            if timeline <= 1 {
                return Ok(Vec::new());
            }
            let sql = format!("SELECT pg_catalog.pg_read_file('pg_wal/{timeline:08X}.history')");
            let rows = simple_rows(&conn.client, &sql, "read the timeline history file").await?;
            let text = rows
                .first()
                .and_then(|r| r.first().cloned().flatten())
                .unwrap_or_default();
            parse_history(&text)
        })
        .await
    }

    /// Runs SQL (simple protocol, possibly several statements) as the superuser.
    pub async fn execute(&self, sql_text: &str) -> Result<(), PgError> {
        self.execute_bounded(sql_text, self.inner.timeouts.sql)
            .await
    }

    async fn execute_bounded(&self, sql_text: &str, timeout: Duration) -> Result<(), PgError> {
        let s = self.settings();
        bounded("run SQL", timeout, async {
            let conn = sql::connect(&s, timeout).await?;
            conn.client
                .batch_execute(sql_text)
                .await
                .map_err(|e| PgError::sql("run SQL", e))
        })
        .await
    }

    /// Runs a query (simple protocol) as the superuser; values as text.
    pub async fn query(&self, sql_text: &str) -> Result<Vec<Vec<Option<String>>>, PgError> {
        let s = self.settings();
        let timeout = self.inner.timeouts.sql;
        bounded("run a query", timeout, async {
            let conn = sql::connect(&s, timeout).await?;
            simple_rows(&conn.client, sql_text, "run a query").await
        })
        .await
    }
}

/// Creates or alters a role with `attributes` and an optional password.
async fn ensure_role(
    client: &tokio_postgres::Client,
    name: &str,
    attributes: &str,
    password: Option<&str>,
) -> Result<(), PgError> {
    let exists = !client
        .query(
            "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1",
            &[&name],
        )
        .await
        .map_err(|e| PgError::sql(format!("look up role {name}"), e))?
        .is_empty();
    let verb = if exists { "ALTER" } else { "CREATE" };
    let mut sql_text = format!(
        "{verb} ROLE {} WITH {attributes}",
        render::quote_ident(name)
    );
    if let Some(pw) = password {
        sql_text.push_str(&format!(" PASSWORD {}", render::quote_literal(pw)));
    }
    client
        .batch_execute(&sql_text)
        .await
        .map_err(|e| PgError::sql(format!("{} role {name}", verb.to_lowercase()), e))
}

/// Current WAL file (primary), received timeline (replica), checkpoint timeline.
const TIMELINE_SQL: &str = "SELECT CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL \
     ELSE pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()) END, \
     (SELECT received_tli::text FROM pg_catalog.pg_stat_wal_receiver), \
     (SELECT timeline_id::text FROM pg_catalog.pg_control_checkpoint())";

/// A primary's timeline from its current WAL file name; a replica's from
/// the WAL receiver, else from the last checkpoint.
fn current_timeline(
    walfile: Option<String>,
    received: Option<String>,
    checkpoint: Option<String>,
) -> Option<Timeline> {
    if let Some(name) = walfile {
        return name
            .get(..8)
            .and_then(|hex| u32::from_str_radix(hex, 16).ok());
    }
    received
        .and_then(|t| t.parse().ok())
        .filter(|t| *t > 0)
        .or_else(|| checkpoint.and_then(|t| t.parse().ok()))
}

const PROBE_SQL: &str = "SELECT pg_catalog.pg_is_in_recovery(), \
     current_setting('server_version_num'), \
     to_char(pg_catalog.pg_postmaster_start_time() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00:00', \
     CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL ELSE pg_catalog.pg_current_wal_flush_lsn()::text END, \
     pg_catalog.pg_last_wal_receive_lsn()::text, \
     pg_catalog.pg_last_wal_replay_lsn()::text, \
     (SELECT status FROM pg_catalog.pg_stat_wal_receiver), \
     EXISTS (SELECT 1 FROM pg_catalog.pg_settings WHERE pending_restart), \
     current_setting('synchronous_standby_names')";

const REPLICATION_SQL: &str =
    "SELECT usename::text, application_name, host(client_addr), state, sync_state, \
     sync_priority::text, write_lsn::text, flush_lsn::text, replay_lsn::text \
     FROM pg_catalog.pg_stat_replication ORDER BY application_name, pid";

/// The SQL part of `observe`; fills `state` as it learns.
async fn probe(client: &tokio_postgres::Client, state: &mut LocalPgState) -> Result<(), PgError> {
    let rows = simple_rows(client, PROBE_SQL, "probe the server state").await?;
    let row = rows.into_iter().next().ok_or(PgError::Parse {
        what: "probe",
        detail: "no row".into(),
    })?;
    let col = |i: usize| row.get(i).cloned().flatten();
    let in_recovery = col(0).map(|v| v == "t");
    state.in_recovery = in_recovery;
    state.server_version = col(1).and_then(|v| v.parse().ok());
    state.postmaster_start_time = col(2);
    state.write_lsn = col(3).and_then(|v| Lsn::from_str(&v).ok());
    state.receive_lsn = col(4).and_then(|v| Lsn::from_str(&v).ok());
    state.replay_lsn = col(5).and_then(|v| Lsn::from_str(&v).ok());
    state.streaming = col(6).as_deref() == Some("streaming");
    state.pending_restart = col(7).as_deref() == Some("t");
    state.sync_standby_names = col(8);

    let rows = simple_rows(client, TIMELINE_SQL, "find the current timeline").await?;
    if let Some(row) = rows.first() {
        let col = |i: usize| row.get(i).cloned().flatten();
        state.timeline = current_timeline(col(0), col(1), col(2));
    }

    let rows = simple_rows(client, REPLICATION_SQL, "read pg_stat_replication").await?;
    state.replication = rows
        .into_iter()
        .map(|r| {
            let col = |i: usize| r.get(i).cloned().flatten();
            ReplicationRow {
                usename: col(0).unwrap_or_default(),
                application_name: col(1).unwrap_or_default(),
                client_addr: col(2),
                state: col(3).unwrap_or_default(),
                sync_state: col(4).unwrap_or_default(),
                sync_priority: col(5).and_then(|v| v.parse().ok()).unwrap_or(0),
                write_lsn: col(6).and_then(|v| Lsn::from_str(&v).ok()),
                flush_lsn: col(7).and_then(|v| Lsn::from_str(&v).ok()),
                replay_lsn: col(8).and_then(|v| Lsn::from_str(&v).ok()),
            }
        })
        .collect();
    Ok(())
}

/// Parses a `<timeline>.history` file.
fn parse_history(text: &str) -> Result<Vec<(Timeline, Lsn, String)>, PgError> {
    let mut lines = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.splitn(3, '\t');
        let bad = || PgError::Parse {
            what: "timeline history line",
            detail: line.to_string(),
        };
        let parent = parts
            .next()
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(bad)?;
        let lsn = parts
            .next()
            .and_then(|p| Lsn::from_str(p.trim()).ok())
            .ok_or_else(bad)?;
        let reason = parts.next().unwrap_or("").trim().to_string();
        lines.push((parent, lsn, reason));
    }
    Ok(lines)
}

fn role_name(role: &ConfigRole) -> String {
    match role {
        ConfigRole::Primary => "primary".into(),
        ConfigRole::Replica { upstream: Some(up) } => format!("replica of {}", up.member),
        ConfigRole::Replica { upstream: None } => "replica without upstream".into(),
    }
}

/// Empties the data directory on a blocking thread (it may be large).
async fn wipe(dir: &Path, owner: Option<Owner>) -> Result<(), PgError> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || files::reset_dir(&dir, owner))
        .await
        .map_err(|e| PgError::io("wipe", PathBuf::new(), std::io::Error::other(e.to_string())))?
}

/// Makes sure the postmaster log exists and belongs to the postgres user;
/// returns its current length (the start of this run's lines).
fn prepare_log(log: &Path, owner: Option<Owner>) -> Result<u64, PgError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(log)
        .map_err(|e| PgError::io("open the postmaster log", log, e))?;
    files::chown(log, owner)?;
    Ok(file.metadata().map(|m| m.len()).unwrap_or(0))
}

/// The log written since `offset` (its tail when long).
fn log_since(log: &Path, offset: u64) -> String {
    let Ok(bytes) = std::fs::read(log) else {
        return files::file_tail(log, LOG_TAIL_BYTES);
    };
    let from = usize::try_from(offset).unwrap_or(0).min(bytes.len());
    let fresh = &bytes[from..];
    let start = fresh.len().saturating_sub(LOG_TAIL_BYTES);
    String::from_utf8_lossy(&fresh[start..])
        .trim_end()
        .to_string()
}

/// A password file for `initdb --pwfile`, removed when dropped.
struct PwFile {
    path: PathBuf,
}

impl PwFile {
    fn create(password: &str, owner: Option<Owner>) -> Result<PwFile, PgError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let path =
            std::env::temp_dir().join(format!("pgwarden-pwfile-{}-{nanos}", std::process::id()));
        files::write_file(&path, format!("{password}\n").as_bytes(), 0o600, owner)?;
        Ok(PwFile { path })
    }
}

impl Drop for PwFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_file_lines() {
        let text =
            "1\t0/3000148\tno recovery target specified\n\n2\t0/5000000\tbefore 2000-01-01\n";
        let lines = parse_history(text).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            (
                1,
                Lsn(0x3000148),
                "no recovery target specified".to_string()
            )
        );
        assert!(parse_history("x\ty\n").is_err());
    }

    #[test]
    fn timeline_sources() {
        assert_eq!(
            current_timeline(
                Some("000000020000000000000003".into()),
                None,
                Some("1".into())
            ),
            Some(2)
        );
        assert_eq!(
            current_timeline(None, Some("3".into()), Some("2".into())),
            Some(3)
        );
        assert_eq!(current_timeline(None, None, Some("2".into())), Some(2));
    }
}
