//! The observe-decide-act loop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use pgwarden_api::ApiClient;
use pgwarden_config::AgentConfig;
use pgwarden_dcs::{Dcs, LeaseId, WatchEvent};
use pgwarden_engine::{decide, DcsView, Memory, NodeIdentity, Observation, TaskOutcome};
use pgwarden_postgres::Postgres;
use pgwarden_types::{display_seconds, ClusterSnapshot, DynamicConfig, LocalPgState};
use tokio::net::TcpListener;
use tokio::time::{sleep_until, timeout, Instant};
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::clock::Monotonic;
use crate::executor::{Executor, RunningTask};
use crate::fence::{
    spawn_failsafe_rounds, spawn_fence_timer, spawn_lease_keeper, spawn_postmaster_watch,
    FailsafeClaim, Shared,
};
use crate::member::member_data;
use crate::peers::poll_peers;
use crate::rest::{spawn_rest, RestBackend};
use crate::AgentError;

/// One agent: owns the loop state; shares what the REST server and fence timer need.
pub struct Agent {
    config: Arc<AgentConfig>,
    dcs: Arc<dyn Dcs>,
    pg: Postgres,
    clock: Monotonic,
    shared: Arc<Shared>,
    memory: Memory,
    lease: Option<(LeaseId, u64)>,
    task: Option<RunningTask>,
    last_published: Option<(String, LeaseId)>,
    api_client: ApiClient,
    dynamic: DynamicConfig,
    system_id_checked: bool,
    reload_source: Option<crate::ReloadSource>,
    /// Whoever waits for the end of an operator restart.
    restart_waiter: Option<tokio::sync::oneshot::Sender<crate::operator::Reply>>,
    /// The PostgreSQL configuration changed: rewrite the files and reload.
    pg_reload_pending: bool,
}

impl Agent {
    pub fn new(config: AgentConfig, dcs: Arc<dyn Dcs>, pg: Postgres) -> Agent {
        let dynamic = config.effective_dynamic(None);
        let clock = Monotonic::new();
        let shared = Arc::new(Shared::new(clock));
        shared.set_dcs(dcs.clone());
        Agent {
            shared,
            api_client: ApiClient::new(Duration::from_millis(1500)),
            config: Arc::new(config),
            dcs,
            pg,
            clock,
            memory: Memory::default(),
            lease: None,
            task: None,
            last_published: None,
            dynamic,
            system_id_checked: false,
            reload_source: None,
            restart_waiter: None,
            pg_reload_pending: false,
        }
    }

    /// Where `POST /reload` and SIGHUP re-read the configuration from.
    pub fn with_reload_source(mut self, source: Option<crate::ReloadSource>) -> Agent {
        self.reload_source = source;
        self
    }

    /// Re-reads the configuration; identity changes need a restart of the agent.
    fn reload_config(&mut self) -> Result<String, String> {
        let Some(source) = &self.reload_source else {
            return Err("this agent was started without a configuration file to re-read".into());
        };
        let fresh = source()?;
        if fresh.name != self.config.name || fresh.scope != self.config.scope {
            return Err(format!(
                "name or scope changed in the configuration ({}/{} -> {}/{}); restart the agent to apply that",
                self.config.scope, self.config.name, fresh.scope, fresh.name
            ));
        }
        for warning in &fresh.warnings {
            warn!("{warning}");
        }
        self.config = Arc::new(fresh);
        let settings = crate::postgres_settings(&self.config, &self.dynamic);
        self.pg.update_settings(settings);
        self.pg_reload_pending = true;
        info!("configuration reloaded");
        Ok("reloaded configuration".into())
    }

    /// Runs until `shutdown` resolves and the shutdown handover has finished.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AgentError> {
        let span = info_span!("agent", scope = %self.config.scope, member = %self.config.name);
        async move {
            let listener = TcpListener::bind(&self.config.restapi.listen).await.map_err(|source| {
                AgentError::RestListen { address: self.config.restapi.listen.clone(), source }
            })?;
            self.refuse_duplicate_name().await?;
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let backend = Arc::new(RestBackend::new(
                self.shared.clone(),
                self.dcs.clone(),
                self.config.scope.clone(),
                self.config.name.clone(),
            ));
            let security = crate::rest::api_security(&self.config)
                .map_err(|reason| AgentError::RestSecurity { reason })?;
            let tls = crate::rest::api_tls(&self.config)
                .map_err(|reason| AgentError::RestSecurity { reason })?;
            spawn_rest(listener, backend, security, tls, stop_rx.clone());
            if self.reload_source.is_some() {
                spawn_reload_on_sighup(self.shared.clone(), stop_rx.clone());
            }
            self.spawn_watch(stop_rx.clone());
            spawn_fence_timer(self.shared.clone(), self.pg.clone(), stop_rx.clone());
            spawn_postmaster_watch(self.shared.clone(), self.pg.clone(), stop_rx.clone());
            spawn_lease_keeper(
                self.shared.clone(),
                self.dcs.clone(),
                self.pg.clone(),
                self.request_timeout(),
                stop_rx.clone(),
            );
            if self.config.watchdog.mode != pgwarden_config::WatchdogMode::Off {
                match std::env::current_exe() {
                    Ok(program) => crate::fence::spawn_watchdog(
                        self.shared.clone(),
                        program,
                        self.config.postgresql.data_dir.clone(),
                        stop_rx.clone(),
                    ),
                    Err(err) => error!("cannot find this program to run the watchdog guard: {err}"),
                }
            }
            spawn_failsafe_rounds(
                self.shared.clone(),
                self.config.name.clone(),
                FailsafeClaim {
                    name: self.config.name.clone(),
                    conn_url: self.config.conn_url(),
                    api_url: self.config.api_url(),
                    slots: Default::default(),
                },
                self.config
                    .restapi
                    .authentication
                    .as_ref()
                    .map(|a| (a.username.clone(), a.password.clone())),
                self.request_timeout(),
                stop_rx.clone(),
            );
            info!(
                "starting pgwarden agent {} for cluster {} (REST API on {})",
                env!("CARGO_PKG_VERSION"),
                self.config.scope,
                self.config.restapi.listen
            );
            for warning in &self.config.warnings {
                warn!("{warning}");
            }

            let mut shutdown = std::pin::pin!(shutdown);
            let mut shutting_down = false;
            loop {
                let started = Instant::now();
                let done = self.run_cycle(shutting_down).await;
                if shutting_down && done {
                    break;
                }
                let next = started + self.dynamic.loop_wait.max(DynamicConfig::MIN_SUBSECOND);
                tokio::select! {
                    () = &mut shutdown, if !shutting_down => {
                        info!("received shutdown request: stopping PostgreSQL and handing over leadership");
                        shutting_down = true;
                    }
                    () = self.shared.wake.notified() => {}
                    () = sleep_until(next) => {}
                }
            }
            self.shared.lease_lost();
            if let Some((lease, _)) = self.lease.take() {
                // Revoking removes our member key (and the leader key if still ours) at once.
                let _ = timeout(self.request_timeout(), self.dcs.revoke_lease(lease)).await;
            }
            let _ = stop_tx.send(true);
            info!("pgwarden agent stopped");
            Ok(())
        }
        .instrument(span)
        .await
    }

    fn request_timeout(&self) -> Duration {
        self.dynamic.retry_timeout.max(DynamicConfig::MIN_SUBSECOND)
    }

    /// Patroni refuses to start when a live member already uses its name.
    async fn refuse_duplicate_name(&self) -> Result<(), AgentError> {
        let Ok(Ok(snapshot)) = timeout(self.request_timeout(), self.dcs.snapshot()).await else {
            return Ok(());
        };
        let Some(member) = snapshot.member(&self.config.name) else {
            return Ok(());
        };
        if member.data.api_url == self.config.api_url() {
            // Our own key from a previous run of this agent: not a duplicate.
            return Ok(());
        }
        if let Some(base) = member.data.api_base() {
            if self.api_client.get_patroni(&base).await.is_ok() {
                return Err(AgentError::DuplicateName {
                    name: self.config.name.clone(),
                    api_url: base,
                });
            }
        }
        Ok(())
    }

    fn spawn_watch(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let dcs = self.dcs.clone();
        let shared = self.shared.clone();
        let me = self.config.name.clone();
        tokio::spawn(async move {
            loop {
                let mut events = match dcs.watch(0).await {
                    Ok(rx) => rx,
                    Err(err) => {
                        debug!("etcd watch not established: {err}; retrying");
                        tokio::select! {
                            _ = stop.changed() => return,
                            () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        }
                    }
                };
                loop {
                    tokio::select! {
                        _ = stop.changed() => return,
                        event = events.recv() => match event {
                            None => break,
                            Some(WatchEvent::Resync) => shared.wake.notify_one(),
                            Some(WatchEvent::Changed { key, .. }) => {
                                use pgwarden_dcs::ClusterKey;
                                // Member keys change every cycle somewhere; only a new or
                                // vanished member matters (slots), which the leader handles
                                // on its next cycle anyway. Our own member key never wakes us.
                                let wake = match &key {
                                    ClusterKey::Member(name) => name != &me && !shared.is_known_member(name),
                                    // A new history line means a promotion finished: a former
                                    // primary waiting to rejoin can decide now.
                                    ClusterKey::Status | ClusterKey::Other(_) => false,
                                    _ => true,
                                };
                                if wake {
                                    shared.wake.notify_one();
                                }
                            }
                        }
                    }
                }
            }
        });
    }

    /// One cycle. Returns true when a requested shutdown has completed.
    async fn run_cycle(&mut self, shutdown_requested: bool) -> bool {
        let began = self.clock.now_ms();
        let finished = self.collect_finished_task();
        if let Some(waiter) = self.shared.mailbox.take_reload() {
            let outcome = self.reload_config();
            if let Err(err) = &outcome {
                error!("reload failed: {err}");
            }
            if let Some(tx) = waiter {
                let _ = tx.send(outcome);
            }
        }
        let pending = self.shared.mailbox.take(chrono::Utc::now().fixed_offset());
        // The renewal the engine judges is the keeper's, read before this cycle
        // does anything: after a freeze it is stale and the primary fences first.
        let renewal = self.shared.last_renewal_ms();
        self.ensure_lease().await;
        let renewal = renewal.or_else(|| self.shared.last_renewal_ms());

        let view = match timeout(self.request_timeout(), self.dcs.snapshot()).await {
            Ok(Ok(snapshot)) => {
                self.shared.dcs_seen();
                DcsView::Available(snapshot)
            }
            Ok(Err(err)) => {
                warn!("etcd is not accessible: {err}");
                DcsView::Unreachable
            }
            Err(_) => {
                warn!(
                    "etcd did not answer within retry_timeout ({}s)",
                    display_seconds(self.dynamic.retry_timeout)
                );
                DcsView::Unreachable
            }
        };
        if let DcsView::Available(snapshot) = &view {
            self.apply_dynamic_config(snapshot);
            self.shared
                .set_failsafe_targets(snapshot.failsafe.clone().unwrap_or_default());
            if let Err(err) = self.check_system_identifier(snapshot) {
                error!("{err}");
                self.publish_status(&view, &self.pg.observe().await, &err.to_string());
                return shutdown_requested;
            }
        }

        let local = self.pg.observe().await;
        if local.postmaster_pid.is_none() {
            // PostgreSQL is down (crashed, or stopped by the watchdog): nothing
            // is left to fence, and what this cycle starts (pg_rewind's own
            // postgres, a replica) must not be taken for a primary.
            self.shared.set_acting_primary(false);
        }
        let peers = match &view {
            DcsView::Available(snapshot) if needs_peer_reports(snapshot) => {
                poll_peers(&self.api_client, snapshot, &self.config.name).await
            }
            _ => Vec::new(),
        };

        let observation = Observation {
            now_ms: self.clock.now_ms(),
            me: NodeIdentity {
                name: self.config.name.clone(),
                tags: self.config.tags.clone(),
                can_bootstrap: self.config.bootstrap.present,
                bootstrap_config: self.config.bootstrap.dcs.clone(),
            },
            dcs: view.clone(),
            local: local.clone(),
            peers,
            last_lease_renewal_sent_ms: renewal,
            running_task: self.task.as_ref().map(|t| t.kind),
            finished_task: finished,
            shutdown_requested,
            failsafe_confirmed_ms: self.shared.failsafe_confirmed_ms(),
            failsafe_leader: self.shared.failsafe_leader(),
            operator_request: pending.as_ref().map(|p| p.request.clone()),
            wall_clock_ms: chrono::Utc::now().timestamp_millis(),
        };
        let decision = decide(&observation, &self.memory);
        if decision.reason != self.memory.last_reason {
            info!("{}", decision.reason);
        } else {
            debug!("{}", decision.reason);
        }
        self.memory = decision.memory.clone();
        self.memory.last_reason = decision.reason.clone();
        self.shared.set_held_leader_key(self.memory.held_leader_key);
        if let Some(pending) = pending {
            match &decision.operator_reply {
                Some(reply) => {
                    match reply {
                        Ok(message) => info!("operator request {:?}: {message}", pending.request),
                        Err(why) => warn!("operator request {:?} refused: {why}", pending.request),
                    }
                    if let Some(tx) = pending.reply {
                        let _ = tx.send(reply.clone());
                    }
                }
                None => self.restart_waiter = pending.reply,
            }
        }

        let snapshot = match &view {
            DcsView::Available(s) => Some(s),
            DcsView::Unreachable => None,
        };
        let mut executor = Executor {
            config: &self.config,
            dcs: self.dcs.as_ref(),
            pg: &self.pg,
            shared: &self.shared,
            lease: self.lease.map(|(id, _)| id),
            snapshot,
            local: &local,
            dynamic: &self.dynamic,
            request_timeout: self.request_timeout(),
        };
        if let Some(task) = executor.run(&decision.actions).await {
            self.task = Some(task);
        }
        if self.pg_reload_pending && self.task.is_none() {
            self.pg_reload_pending = false;
            if let Err(err) = executor.apply_postgres_config().await {
                warn!("could not apply the PostgreSQL configuration: {err}");
            }
        }

        // Publish what PostgreSQL looks like now; when the cycle only kept
        // things up (renewal, status, slots) the observation from the start
        // of the cycle is still true, and probing again would double the
        // agent's idle cost.
        let local = if decision.actions.iter().all(leaves_postgres_alone) && self.task.is_none() {
            local
        } else {
            self.pg.observe().await
        };
        if matches!(view, DcsView::Available(_)) {
            self.publish_member(&local).await;
        }
        self.shared
            .cycle_took(self.clock.now_ms().saturating_sub(began));
        self.publish_status(&view, &local, &decision.reason);

        shutdown_requested && self.task.is_none() && local.postmaster_pid.is_none()
    }

    fn collect_finished_task(&mut self) -> Option<TaskOutcome> {
        let task = self.task.as_mut()?;
        let outcome = task.try_finish()?;
        self.task = None;
        if outcome.kind == pgwarden_engine::TaskKind::Restart {
            if let Some(tx) = self.restart_waiter.take() {
                let _ = tx.send(if outcome.success {
                    Ok("restarted successfully".to_string())
                } else {
                    Err(format!("restart failed: {}", outcome.message))
                });
            }
        }
        if outcome.success {
            info!("{:?} finished", outcome.kind);
        } else {
            error!("{:?} failed: {}", outcome.kind, outcome.message);
        }
        Some(outcome)
    }

    /// Makes sure there is a lease (the keeper task renews it). A changed ttl
    /// discards the lease; the leader key is re-attached by RenewLeader.
    async fn ensure_lease(&mut self) {
        let ttl = self.dynamic.ttl;
        match (self.lease, self.shared.lease()) {
            (Some((id, lease_ttl)), Some(current)) if id == current && lease_ttl == ttl => return,
            (Some((id, _)), Some(current)) if id == current => {
                // Not revoked: a leader key on it must survive until RenewLeader
                // re-attaches it to the new lease; the old lease simply expires.
                info!("ttl changed to {ttl}s: requesting a new lease");
            }
            _ => {}
        }
        self.lease = None;
        self.last_published = None;
        let sent = self.clock.now_ms();
        match timeout(self.request_timeout(), self.dcs.grant_lease(ttl)).await {
            Ok(Ok(lease)) => {
                debug!("granted etcd lease {lease:x} with ttl {ttl}s");
                self.lease = Some((lease, ttl));
                self.shared.lease_granted(lease, sent);
            }
            Ok(Err(err)) => warn!("could not obtain an etcd lease: {err}"),
            Err(_) => warn!("obtaining an etcd lease timed out"),
        }
    }

    fn apply_dynamic_config(&mut self, snapshot: &ClusterSnapshot) {
        let raw = snapshot.config.as_ref().map(|c| &c.value);
        let dynamic = self.config.effective_dynamic(raw);
        if dynamic != self.dynamic {
            if raw.is_some() {
                info!(
                    "dynamic configuration in effect: ttl={} loop_wait={} retry_timeout={}",
                    dynamic.ttl,
                    display_seconds(dynamic.loop_wait),
                    display_seconds(dynamic.retry_timeout)
                );
            }
            let settings = crate::postgres_settings(&self.config, &dynamic);
            self.pg.update_settings(settings);
            self.pg_reload_pending |= self.dynamic.parameters != dynamic.parameters
                || self.dynamic.pg_hba != dynamic.pg_hba;
            self.dynamic = dynamic;
        }
        self.shared.set_dynamic(self.dynamic.clone());
        self.shared
            .set_members(snapshot.members.iter().map(|m| m.name.clone()).collect());
    }

    /// Refuses to run against a store that describes a different cluster.
    fn check_system_identifier(&mut self, snapshot: &ClusterSnapshot) -> Result<(), AgentError> {
        if self.system_id_checked {
            return Ok(());
        }
        let Some(stored) = snapshot.system_identifier() else {
            return Ok(());
        };
        let local = self.pg.local_system_identifier();
        match local {
            Some(local) if local != stored => Err(AgentError::SystemIdMismatch {
                path: self.config.postgresql.data_dir.display().to_string(),
                local,
                stored: stored.to_string(),
            }),
            Some(_) => {
                self.system_id_checked = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn publish_member(&mut self, local: &LocalPgState) {
        let Some((lease, _)) = self.lease else { return };
        let data = member_data(
            &self.config,
            local,
            self.task.as_ref().map(|t| t.kind),
            &self.dynamic,
        );
        let encoded = serde_json::to_string(&data).unwrap_or_default();
        if self.last_published.as_ref() == Some(&(encoded.clone(), lease)) {
            return;
        }
        match timeout(
            self.request_timeout(),
            self.dcs.touch_member(&self.config.name, &data, lease),
        )
        .await
        {
            Ok(Ok(())) => self.last_published = Some((encoded, lease)),
            Ok(Err(err)) => warn!("could not publish my member key: {err}"),
            Err(_) => warn!("publishing my member key timed out"),
        }
    }

    fn publish_status(&self, view: &DcsView, local: &LocalPgState, reason: &str) {
        self.shared.publish(
            &self.config,
            view,
            local,
            reason,
            self.task.as_ref().map(|t| t.kind),
            &self.dynamic,
        );
    }
}

/// Peers are polled only when an election may happen: no leader, or a failover request.
fn needs_peer_reports(snapshot: &ClusterSnapshot) -> bool {
    snapshot.leader.is_none() || snapshot.failover_request().is_some()
}

/// Actions after which PostgreSQL's role, state and WAL position are what the
/// cycle observed before acting.
fn leaves_postgres_alone(action: &pgwarden_engine::Action) -> bool {
    use pgwarden_engine::Action;
    matches!(
        action,
        Action::RenewLeader
            | Action::WriteStatus
            | Action::SyncSlots { .. }
            | Action::UpdateHistory
            | Action::WriteFailsafe { .. }
            | Action::WriteSync(_)
            | Action::DeleteSync { .. }
            | Action::SeedConfig
            | Action::WriteInitialize { .. }
            | Action::ClearFailover { .. }
    )
}

/// SIGHUP re-reads the configuration file, as `POST /reload` does.
fn spawn_reload_on_sighup(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        warn!("cannot install a SIGHUP handler; use POST /reload to re-read the configuration");
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                received = hangup.recv() => {
                    if received.is_none() {
                        return;
                    }
                    info!("SIGHUP: re-reading the configuration");
                    shared.mailbox.request_reload(None);
                    shared.wake.notify_one();
                }
            }
        }
    });
}
