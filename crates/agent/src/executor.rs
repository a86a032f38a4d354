//! Runs the engine's actions against etcd and PostgreSQL.
//!
//! Actions run in the order the engine returned them. A leadership action that
//! fails (lost race, key held by someone else, etcd error) stops the list, so
//! nothing that depended on it (promotion, start as primary) runs. Just before
//! anything that makes PostgreSQL writable, the executor checks on the
//! monotonic clock that the last confirmed renewal is still within the fence
//! deadline: a decision taken before a freeze cannot promote after it.
//!
//! Long actions (bootstrap, clone, rewind, start, promote) run as one
//! background task; the loop keeps renewing the lease meanwhile.

use std::future::Future;
use std::time::Duration;

use pgwarden_config::AgentConfig;
use pgwarden_dcs::{Dcs, LeaseId, Precondition};
use pgwarden_engine::{Action, DemoteMode, TaskKind, TaskOutcome};
use pgwarden_postgres::{ConfigRole, Postgres, StopMode, Upstream};
use pgwarden_types::{
    seconds_value, slot_name_for_member, ClusterSnapshot, ClusterStatus, DynamicConfig,
    FailoverRequest, HistoryLine, LocalPgState,
};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tracing::{error, info, warn};

use crate::fence::Shared;

/// A long action running in the background.
pub struct RunningTask {
    pub kind: TaskKind,
    handle: JoinHandle<Result<(), String>>,
}

impl RunningTask {
    /// The outcome once the task has ended; `None` while it runs.
    pub fn try_finish(&mut self) -> Option<TaskOutcome> {
        if !self.handle.is_finished() {
            return None;
        }
        let result = futures::FutureExt::now_or_never(&mut self.handle)?;
        let (success, message) = match result {
            Ok(Ok(())) => (true, String::new()),
            Ok(Err(message)) => (false, message),
            Err(join) => (false, format!("task ended abnormally: {join}")),
        };
        Some(TaskOutcome {
            kind: self.kind,
            success,
            message,
        })
    }
}

pub struct Executor<'a> {
    pub config: &'a AgentConfig,
    pub dcs: &'a dyn Dcs,
    pub pg: &'a Postgres,
    pub shared: &'a std::sync::Arc<Shared>,
    pub lease: Option<LeaseId>,
    pub snapshot: Option<&'a ClusterSnapshot>,
    pub local: &'a LocalPgState,
    pub dynamic: &'a DynamicConfig,
    pub request_timeout: Duration,
}

/// An action that could not be carried out; later actions of the cycle are skipped.
struct Stop(String);

impl Executor<'_> {
    /// Runs `actions`; returns a long task that was started, if any.
    pub async fn run(&mut self, actions: &[Action]) -> Option<RunningTask> {
        let mut started = None;
        for action in actions {
            match self.run_one(action).await {
                Ok(Some(task)) => started = Some(task),
                Ok(None) => {}
                Err(Stop(why)) => {
                    warn!("{why}; skipping the rest of this cycle's actions");
                    break;
                }
            }
        }
        started
    }

    async fn etcd<T, E: std::fmt::Display>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, E>>,
    ) -> Result<T, Stop> {
        match timeout(self.request_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(err)) => Err(Stop(format!("{what} failed: {err}"))),
            Err(_) => Err(Stop(format!(
                "{what} timed out after {:?}",
                self.request_timeout
            ))),
        }
    }

    fn lease(&self) -> Result<LeaseId, Stop> {
        self.lease
            .ok_or_else(|| Stop("no etcd lease yet".to_string()))
    }

    /// Refuses to make PostgreSQL writable unless the lease was confirmed recently.
    fn lease_is_fresh(&self, what: &str) -> Result<(), Stop> {
        if self.shared.renewal_is_fresh() {
            Ok(())
        } else {
            Err(Stop(format!(
                "not {what}: my lease was not confirmed within the fence deadline"
            )))
        }
    }

    fn upstream(&self, member: &str) -> Result<Upstream, Stop> {
        let snapshot = self
            .snapshot
            .ok_or_else(|| Stop("no cluster view".into()))?;
        let m = snapshot
            .member(member)
            .ok_or_else(|| Stop(format!("member {member} is not registered in etcd")))?;
        let (host, port) = m.data.pg_host_port().ok_or_else(|| {
            Stop(format!(
                "member {member} has no usable conn_url: {:?}",
                m.data.conn_url
            ))
        })?;
        Ok(Upstream {
            member: member.to_string(),
            host,
            port,
            slot: self
                .dynamic
                .use_slots
                .then(|| slot_name_for_member(&self.config.name)),
        })
    }

    fn spawn(
        &self,
        kind: TaskKind,
        fut: impl Future<Output = Result<(), String>> + Send + 'static,
    ) -> RunningTask {
        let shared = self.shared.clone();
        let handle = tokio::spawn(async move {
            let result = fut.await;
            shared.wake.notify_one();
            result
        });
        RunningTask { kind, handle }
    }

    async fn run_one(&mut self, action: &Action) -> Result<Option<RunningTask>, Stop> {
        let name = self.config.name.clone();
        match action {
            Action::RaceInitialize => {
                if self
                    .etcd("initialize race", self.dcs.race_initialize())
                    .await?
                {
                    info!("won the initialize race: bootstrapping a new cluster");
                    Ok(None)
                } else {
                    Err(Stop("failed to acquire initialize lock".into()))
                }
            }
            Action::Bootstrap => {
                let lease = self.lease()?;
                Ok(Some(self.spawn(
                    TaskKind::Initdb,
                    bootstrap_task(self.task_context(), lease),
                )))
            }
            Action::AcquireLeader => {
                let lease = self.lease()?;
                match self
                    .etcd(
                        "taking the leader key",
                        self.dcs.acquire_leader(&name, lease),
                    )
                    .await?
                {
                    Some(revision) => {
                        info!("acquired session lock as a leader (leader key revision {revision})");
                        Ok(None)
                    }
                    None => Err(Stop(
                        "could not take the leader key: someone else holds it".into(),
                    )),
                }
            }
            Action::RenewLeader => {
                let lease = self.lease()?;
                if self
                    .etcd(
                        "updating the leader key",
                        self.dcs.update_leader(&name, lease),
                    )
                    .await?
                {
                    Ok(None)
                } else {
                    Err(Stop("the leader key is no longer mine".into()))
                }
            }
            Action::ReleaseLeader => {
                if let Some(lsn) = self.local.write_lsn {
                    let status = ClusterStatus {
                        optime: Some(lsn.0),
                        ..self.current_status()
                    };
                    let _ = self
                        .etcd("writing status", self.dcs.set_status(&status))
                        .await;
                }
                if self
                    .etcd("releasing the leader key", self.dcs.release_leader(&name))
                    .await?
                {
                    info!("released the leader key");
                }
                Ok(None)
            }
            Action::WriteFailsafe { members } => {
                self.etcd("writing failsafe", self.dcs.set_failsafe(members))
                    .await?;
                Ok(None)
            }
            Action::ClearFailover { mod_revision } => {
                let cleared = FailoverRequest::default();
                self.etcd(
                    "clearing the failover key",
                    self.dcs
                        .set_failover(&cleared, Precondition::ModRevision(*mod_revision)),
                )
                .await?;
                Ok(None)
            }
            Action::WriteSync(write) => {
                let pre = match write.mod_revision {
                    Some(revision) => Precondition::ModRevision(revision),
                    None => Precondition::Absent,
                };
                match self
                    .etcd("writing the sync key", self.dcs.set_sync(&write.state, pre))
                    .await?
                {
                    Some(_) => {
                        info!(
                            "synchronous standbys in the sync key: {}",
                            write.state.sync_standby.as_deref().unwrap_or("none")
                        );
                        Ok(None)
                    }
                    None => Err(Stop("the sync key was updated by someone else".to_string())),
                }
            }
            Action::DeleteSync { mod_revision } => {
                self.etcd(
                    "deleting the sync key",
                    self.dcs
                        .delete_sync(Precondition::ModRevision(*mod_revision)),
                )
                .await?;
                Ok(None)
            }
            Action::SetSyncStandbyNames { value } => {
                info!(
                    "setting synchronous_standby_names to {}",
                    value
                        .as_deref()
                        .map_or("the configured value".to_string(), |v| format!("'{v}'"))
                );
                self.pg
                    .set_sync_standby_names(value.as_deref())
                    .await
                    .map_err(|e| Stop(format!("could not set synchronous_standby_names: {e}")))?;
                Ok(None)
            }
            Action::WriteInitialize { system_identifier } => {
                self.etcd(
                    "writing initialize",
                    self.dcs.set_initialize(system_identifier),
                )
                .await?;
                Ok(None)
            }
            Action::SeedConfig => {
                let raw = seed_config(self.config);
                self.etcd(
                    "seeding config",
                    self.dcs.set_config(&raw, Precondition::Absent),
                )
                .await?;
                Ok(None)
            }
            Action::CloneFrom { member } => {
                let upstream = self.upstream(member)?;
                let pg = self.pg.clone();
                info!("cloning a new replica from {member} with pg_basebackup");
                Ok(Some(self.spawn(TaskKind::Clone, async move {
                    pg.basebackup(&upstream).await.map_err(|e| e.to_string())?;
                    start_replica(&pg, Some(upstream)).await
                })))
            }
            Action::StartPrimary => {
                self.lease_is_fresh("starting as primary")?;
                let pg = self.pg.clone();
                info!("starting PostgreSQL as primary");
                Ok(Some(self.spawn(TaskKind::Start, async move {
                    pg.start(&ConfigRole::Primary, pg.start_timeout())
                        .await
                        .map_err(|e| e.to_string())
                })))
            }
            Action::StartReplica { leader } => {
                let upstream = match leader {
                    Some(leader) => Some(self.upstream(leader)?),
                    None => None,
                };
                let pg = self.pg.clone();
                info!(
                    "starting PostgreSQL as a replica{}",
                    leader
                        .as_ref()
                        .map(|l| format!(" of {l}"))
                        .unwrap_or_default()
                );
                Ok(Some(self.spawn(TaskKind::Start, async move {
                    start_replica(&pg, upstream).await
                })))
            }
            Action::Follow { leader } => {
                let upstream = self.upstream(leader)?;
                info!("following new leader {leader}");
                if let Err(err) = self.pg.follow(&upstream).await {
                    error!("could not point replication at {leader}: {err}");
                }
                Ok(None)
            }
            Action::Promote => {
                self.lease_is_fresh("promoting")?;
                let pg = self.pg.clone();
                info!("promoting PostgreSQL to primary");
                Ok(Some(self.spawn(TaskKind::Promote, async move {
                    pg.promote(Duration::from_secs(60))
                        .await
                        .map_err(|e| e.to_string())
                })))
            }
            Action::Demote { mode } => {
                self.demote(*mode).await;
                Ok(None)
            }
            Action::RestartAsPrimary => {
                self.lease_is_fresh("restarting as primary")?;
                let pg = self.pg.clone();
                info!("restarting PostgreSQL as primary");
                Ok(Some(self.spawn(TaskKind::Restart, async move {
                    pg.stop(StopMode::Fast, Duration::from_secs(60))
                        .await
                        .map_err(|e| e.to_string())?;
                    pg.start(&ConfigRole::Primary, pg.start_timeout())
                        .await
                        .map_err(|e| e.to_string())
                })))
            }
            Action::RestartAsReplica { leader } => {
                let upstream = match leader {
                    Some(leader) => Some(self.upstream(leader)?),
                    None => None,
                };
                let pg = self.pg.clone();
                info!("restarting PostgreSQL as a replica");
                Ok(Some(self.spawn(TaskKind::Restart, async move {
                    pg.stop(StopMode::Fast, Duration::from_secs(60))
                        .await
                        .map_err(|e| e.to_string())?;
                    start_replica(&pg, upstream).await
                })))
            }
            Action::Stop => {
                if let Err(err) = self.pg.stop(StopMode::Fast, Duration::from_secs(60)).await {
                    error!("stopping PostgreSQL failed: {err}");
                }
                Ok(None)
            }
            Action::Rewind { source } => {
                let upstream = self.upstream(source)?;
                let pg = self.pg.clone();
                info!("running pg_rewind from {source}");
                Ok(Some(self.spawn(TaskKind::Rewind, async move {
                    match pg.rewind(&upstream).await {
                        Ok(outcome) => info!("pg_rewind exit code=0 ({outcome:?})"),
                        Err(err) => {
                            error!("pg_rewind failed: {err}");
                            return Err(err.to_string());
                        }
                    }
                    start_replica(&pg, Some(upstream)).await
                })))
            }
            Action::WipeDataDir => {
                warn!(
                    "removing the data directory {} to clone it again",
                    self.config.postgresql.data_dir.display()
                );
                if let Err(err) = self.pg.wipe_data_dir().await {
                    error!("could not remove the data directory: {err}");
                }
                Ok(None)
            }
            Action::SyncSlots { members } => {
                let wanted: Vec<String> = members.iter().map(|m| slot_name_for_member(m)).collect();
                if let Err(err) = self.pg.sync_physical_slots(&wanted).await {
                    warn!("could not maintain replication slots: {err}");
                }
                Ok(None)
            }
            Action::UpdateHistory => {
                self.update_history().await;
                Ok(None)
            }
            Action::WriteStatus => {
                let status = self.current_status();
                let unchanged = self.snapshot.is_some_and(|s| s.status == status);
                if !unchanged {
                    let _ = self
                        .etcd("writing status", self.dcs.set_status(&status))
                        .await;
                }
                Ok(None)
            }
        }
    }

    fn current_status(&self) -> ClusterStatus {
        let mut status = ClusterStatus {
            optime: self.local.write_lsn.map(|l| l.0),
            ..ClusterStatus::default()
        };
        if let Some(lsn) = self.local.write_lsn {
            status
                .slots
                .insert(slot_name_for_member(&self.config.name), lsn.0);
        }
        status
    }

    /// Rewrites the configuration files for the role PostgreSQL runs in and
    /// reloads it (parameters changed in the local or dynamic configuration).
    /// A stopped server gets its files at the next start.
    pub async fn apply_postgres_config(&self) -> Result<(), String> {
        let role = match self.local.in_recovery {
            Some(false) => ConfigRole::Primary,
            Some(true) => ConfigRole::Replica {
                upstream: self
                    .local
                    .following
                    .as_deref()
                    .and_then(|member| self.upstream(member).ok()),
            },
            None => return Ok(()),
        };
        self.pg
            .write_config(&role)
            .await
            .map_err(|e| e.to_string())?;
        self.pg.reload().await.map_err(|e| e.to_string())?;
        info!("PostgreSQL configuration rewritten and reloaded");
        Ok(())
    }

    async fn demote(&self, mode: DemoteMode) {
        let (stop_mode, checkpoint, release) = match mode {
            DemoteMode::Offline => (StopMode::Fast, false, false),
            DemoteMode::Graceful => (StopMode::Fast, true, true),
            DemoteMode::Immediate => (StopMode::Immediate, false, true),
            DemoteMode::ImmediateNoLock => (StopMode::Immediate, false, false),
        };
        warn!("demoting: stopping PostgreSQL ({mode:?})");
        self.shared.set_acting_primary(false);
        if checkpoint {
            if let Err(err) = self.pg.checkpoint().await {
                warn!("checkpoint before demotion failed: {err}");
            }
        }
        if let Err(err) = self.pg.stop(stop_mode, Duration::from_secs(60)).await {
            error!("stopping PostgreSQL for demotion failed: {err}; stopping it immediately");
            let _ = self
                .pg
                .stop(StopMode::Immediate, Duration::from_secs(30))
                .await;
        }
        if release {
            // A clean fast stop has streamed every WAL record up to the shutdown
            // checkpoint to connected standbys, so a replica can take over now.
            if let Some(lsn) = self.pg.observe().await.write_lsn.or(self.local.write_lsn) {
                let status = ClusterStatus {
                    optime: Some(lsn.0),
                    ..ClusterStatus::default()
                };
                let _ = self
                    .etcd("writing status", self.dcs.set_status(&status))
                    .await;
            }
            match self
                .etcd(
                    "releasing the leader key",
                    self.dcs.release_leader(&self.config.name),
                )
                .await
            {
                Ok(true) => info!("released the leader key after demotion"),
                Ok(false) => {}
                Err(Stop(why)) => warn!("{why}"),
            }
        }
    }

    async fn update_history(&self) {
        let lines = match self.pg.timeline_history().await {
            Ok(lines) => lines,
            Err(err) => {
                warn!("could not read the timeline history: {err}");
                return;
            }
        };
        let known = self.snapshot.map(|s| s.history.clone()).unwrap_or_default();
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
        let count = lines.len();
        let history: Vec<HistoryLine> = lines
            .into_iter()
            .enumerate()
            .map(|(i, (timeline, lsn, reason))| {
                let previous = known.iter().find(|k| k.timeline == timeline);
                let last = i + 1 == count;
                HistoryLine {
                    timeline,
                    switch_lsn: lsn.0,
                    reason,
                    timestamp: previous
                        .and_then(|p| p.timestamp.clone())
                        .or_else(|| Some(now.clone())),
                    new_leader: previous
                        .and_then(|p| p.new_leader.clone())
                        .or_else(|| last.then(|| self.config.name.clone())),
                }
            })
            .collect();
        if history != known {
            let _ = self
                .etcd("writing history", self.dcs.set_history(&history))
                .await;
        }
    }

    fn task_context(&self) -> TaskContext {
        TaskContext {
            config: self.config.clone(),
            pg: self.pg.clone(),
            dcs: self.shared.dcs(),
            shared: self.shared.clone(),
            members: self
                .snapshot
                .map(|s| {
                    s.members
                        .iter()
                        .map(|m| m.name.clone())
                        .filter(|n| n != &self.config.name)
                        .collect()
                })
                .unwrap_or_default(),
            use_slots: self.dynamic.use_slots,
        }
    }
}

/// What a background bootstrap needs, owned.
struct TaskContext {
    config: AgentConfig,
    pg: Postgres,
    dcs: std::sync::Arc<dyn Dcs>,
    shared: std::sync::Arc<Shared>,
    members: Vec<String>,
    use_slots: bool,
}

/// initdb, start, roles, slots, then publish the cluster in etcd and take the leader key.
/// On failure the `initialize` key is removed so that another node can try.
async fn bootstrap_task(ctx: TaskContext, lease: LeaseId) -> Result<(), String> {
    let result = bootstrap_steps(&ctx, lease).await;
    if let Err(err) = &result {
        error!(
            "bootstrap failed: {err}; removing the initialize key so that another member can try"
        );
        let _ = ctx
            .pg
            .stop(StopMode::Immediate, Duration::from_secs(30))
            .await;
        let _ = ctx.dcs.delete_initialize().await;
        if let Err(e) = ctx.pg.move_data_dir_aside().await {
            error!("could not move the failed data directory aside: {e}");
        }
    }
    result
}

async fn bootstrap_steps(ctx: &TaskContext, lease: LeaseId) -> Result<(), String> {
    info!("initializing a new cluster (initdb)");
    ctx.pg
        .initdb()
        .await
        .map_err(|e| format!("initdb failed: {e}"))?;
    ctx.pg
        .start(&ConfigRole::Primary, ctx.pg.start_timeout())
        .await
        .map_err(|e| format!("starting the new cluster failed: {e}"))?;
    ctx.pg
        .create_roles()
        .await
        .map_err(|e| format!("creating roles failed: {e}"))?;
    if ctx.use_slots && !ctx.members.is_empty() {
        // Slots exist before the replicas' first connection, so nobody waits
        // out the walreceiver's retry interval after bootstrap.
        let slots: Vec<String> = ctx
            .members
            .iter()
            .map(|m| slot_name_for_member(m))
            .collect();
        ctx.pg
            .sync_physical_slots(&slots)
            .await
            .map_err(|e| format!("creating replication slots failed: {e}"))?;
    }
    let sysid = ctx
        .pg
        .local_system_identifier()
        .ok_or_else(|| "the new cluster has no system identifier".to_string())?;
    ctx.dcs
        .set_initialize(&sysid)
        .await
        .map_err(|e| format!("storing the system identifier failed: {e}"))?;
    ctx.dcs
        .set_config(&seed_config(&ctx.config), Precondition::Absent)
        .await
        .map_err(|e| format!("storing the dynamic configuration failed: {e}"))?;
    match ctx.dcs.acquire_leader(&ctx.config.name, lease).await {
        Ok(Some(_)) => {}
        Ok(None) => return Err("another member took the leader key during bootstrap".into()),
        Err(e) => return Err(format!("taking the leader key failed: {e}")),
    }
    ctx.shared.set_acting_primary(true);
    info!("initialized a new cluster with system identifier {sysid}");
    Ok(())
}

/// The dynamic configuration stored at bootstrap: `bootstrap.dcs` with pgwarden's
/// timing defaults written out, so that every member (a Patroni peer included,
/// whose own defaults differ) and `GET /config` see the values in effect.
fn seed_config(config: &AgentConfig) -> serde_json::Value {
    let mut raw = config.bootstrap.dcs_raw.clone();
    if !raw.is_object() {
        raw = serde_json::Value::Object(serde_json::Map::new());
    }
    let typed = &config.bootstrap.dcs;
    if let Some(map) = raw.as_object_mut() {
        for (key, value) in [
            ("ttl", serde_json::Value::from(typed.ttl)),
            ("loop_wait", seconds_value(typed.loop_wait)),
            ("retry_timeout", seconds_value(typed.retry_timeout)),
            (
                "maximum_lag_on_failover",
                serde_json::Value::from(typed.maximum_lag_on_failover),
            ),
        ] {
            map.entry(key).or_insert(value);
        }
    }
    raw
}

/// Starts PostgreSQL as a replica of `upstream` (none: no upstream yet).
async fn start_replica(pg: &Postgres, upstream: Option<Upstream>) -> Result<(), String> {
    pg.start(&ConfigRole::Replica { upstream }, pg.start_timeout())
        .await
        .map_err(|e| e.to_string())
}
