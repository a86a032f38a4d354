//! Follows the cluster's keys in etcd and publishes the routing table.
//!
//! A watch wakes it on every change; a read every `confirm_interval`
//! confirms the leader when nothing changes. Each successful read moves the
//! deadline to (start of that read + ttl); when the deadline passes without a
//! confirmation (etcd unreachable, the proxy partitioned), the write target
//! is withdrawn, because the leader may have lost its lease without the
//! proxy seeing it. Subscribers are woken only when the routing changes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgwarden_dcs::{Dcs, WatchEvent};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::routing::Routing;

/// Upper bound of one snapshot read.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Follower<D: Dcs> {
    pub dcs: D,
    pub max_replica_lag: u64,
    pub confirm_interval: Duration,
    pub routing: watch::Sender<Arc<Routing>>,
    pub metrics: Arc<Metrics>,
}

impl<D: Dcs> Follower<D> {
    pub async fn run(self) {
        let mut watch_rx: Option<tokio::sync::mpsc::Receiver<WatchEvent>> = None;
        let mut deadline: Option<Instant> = None;
        loop {
            let started = Instant::now();
            match tokio::time::timeout(READ_TIMEOUT, self.dcs.snapshot()).await {
                Ok(Ok(snapshot)) => {
                    let routing = Routing::from_snapshot(&snapshot, self.max_replica_lag);
                    deadline = Some(started + Duration::from_secs(routing.ttl_secs));
                    self.publish(routing);
                    if watch_rx.is_none() {
                        match self.dcs.watch(snapshot.revision).await {
                            Ok(rx) => watch_rx = Some(rx),
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot watch the cluster keys; polling")
                            }
                        }
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the cluster keys from etcd"),
                Err(_) => tracing::warn!("reading the cluster keys from etcd timed out"),
            }
            // Wait for a change, the next confirmation, or the deadline.
            let next_confirm = tokio::time::sleep(self.confirm_interval);
            let until_deadline = deadline
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::MAX);
            tokio::select! {
                event = async {
                    match watch_rx.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if event.is_none() {
                        watch_rx = None;
                    }
                }
                _ = next_confirm => {}
                _ = tokio::time::sleep(until_deadline) => {
                    tracing::warn!("no confirmation of the leader within ttl: closing read-write routing until etcd answers");
                    let current = (**self.routing.borrow()).clone();
                    self.publish(current.fenced());
                    deadline = None;
                }
            }
        }
    }

    fn publish(&self, next: Routing) {
        let metrics = &self.metrics;
        self.routing.send_if_modified(|current| {
            let changed = current.leader != next.leader
                || current.replicas != next.replicas
                || current.switchover_pending != next.switchover_pending
                || current.ttl_secs != next.ttl_secs;
            if changed {
                if current.leader_token() != next.leader_token() {
                    metrics.note_leader_change(next.leader_token());
                    tracing::info!(
                        leader = ?next.leader.as_ref().map(|l| &l.node.name),
                        token = ?next.leader_token(),
                        "read-write target changed"
                    );
                }
                *current = Arc::new(next);
            }
            changed
        });
    }
}
