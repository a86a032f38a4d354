//! Asking the other members how far they are, before racing for the leader key.

use futures::future::join_all;
use pgwarden_api::ApiClient;
use pgwarden_engine::PeerReport;
use pgwarden_types::ClusterSnapshot;

/// Polls every other member's `GET /patroni` concurrently; unreachable members are reported as such.
pub async fn poll_peers(
    client: &ApiClient,
    snapshot: &ClusterSnapshot,
    me: &str,
) -> Vec<PeerReport> {
    let polls = snapshot
        .members
        .iter()
        .filter(|m| m.name != me)
        .map(|member| async move {
            let unreachable = PeerReport {
                name: member.name.clone(),
                reachable: false,
                role: None,
                wal_position: None,
                timeline: None,
                tags: member.data.tags.clone(),
                watchdog_failed: false,
            };
            let Some(base) = member.data.api_base() else {
                return unreachable;
            };
            match client.get_patroni(&base).await {
                Ok(report) => PeerReport {
                    reachable: true,
                    role: report.role,
                    wal_position: report.wal_position,
                    timeline: report.timeline,
                    tags: report.tags,
                    watchdog_failed: report.watchdog_failed,
                    ..unreachable
                },
                Err(err) => {
                    tracing::debug!("member {} did not answer: {err}", member.name);
                    unreachable
                }
            }
        });
    join_all(polls).await
}
