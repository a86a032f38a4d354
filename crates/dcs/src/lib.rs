//! The consensus store (DCS) of pgwarden: one trait, two implementations.
//!
//! - [`Dcs`] is everything the agent, the CLI and the proxy need from the store:
//!   one linearizable snapshot of the cluster prefix, leases, the leader key
//!   with compare-and-swap, member keys, the bootstrap race, CAS writes of
//!   `config`/`failover`/`sync`, and a watch of the cluster prefix.
//! - [`EtcdDcs`] talks etcd v3 (gRPC) with the key layout and value formats of
//!   Patroni 4.x (`/<namespace>/<scope>/{initialize,config,leader,members/<name>,
//!   status,history,sync,failover,failsafe}`), so pgwarden and Patroni nodes can
//!   read each other's keys.
//! - [`MemoryDcs`] has the same semantics in memory on a manual clock, for
//!   simulation tests.
//!
//! Guarantees of every implementation:
//! - every call returns within the store's request timeout (etcd) or at once
//!   (memory); failures are typed, and [`DcsError::is_retryable`] tells whether
//!   trying again later can help;
//! - reads are linearizable: an etcd member cut off from its quorum does not
//!   answer, so a primary notices that it lost the store;
//! - leadership writes are compare-and-swap transactions, never blind puts;
//! - snapshots parse leniently (a malformed value never fails the whole read)
//!   and list members sorted by name.
//!
//! This crate must not decide anything about HA: it stores and reads.

mod error;
mod etcd;
mod keys;
mod memory;
mod parse;

#[cfg(feature = "conformance")]
pub mod conformance;

use std::collections::BTreeMap;

pub use error::DcsError;
pub use etcd::{EtcdDcs, EtcdSettings};
pub use keys::{ClusterKey, KeyLayout};
pub use memory::MemoryDcs;
pub use parse::{parse_member_value, parse_snapshot, RawKv};
use pgwarden_types::{
    ClusterSnapshot, ClusterStatus, FailoverRequest, HistoryLine, MemberData, SyncState,
};

/// Id of a lease in the store (etcd lease ids are positive i64).
pub type LeaseId = i64;

/// The condition a compare-and-swap write is made under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Only if the key does not exist (create_revision == 0).
    Absent,
    /// Only if the key's mod_revision is still this one.
    ModRevision(i64),
    /// Always.
    Unconditional,
}

/// One change seen by [`Dcs::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Changed {
        key: ClusterKey,
        deleted: bool,
        /// Store revision of the change (the key's new mod_revision, or the
        /// revision of the delete).
        revision: i64,
    },
    /// The watch broke and was re-established; events may have been missed, so
    /// callers should re-read a snapshot.
    Resync,
}

/// The consensus store as pgwarden uses it. See the crate docs for the guarantees.
#[async_trait::async_trait]
pub trait Dcs: Send + Sync + 'static {
    /// One linearizable read of the whole cluster prefix, parsed into a snapshot
    /// (members sorted by name; lenient parsing as patroni-compat.md describes).
    async fn snapshot(&self) -> Result<ClusterSnapshot, DcsError>;
    async fn grant_lease(&self, ttl_secs: u64) -> Result<LeaseId, DcsError>;
    /// Refresh once. Ok(false) when the lease no longer exists (expired/revoked).
    async fn keep_alive(&self, lease: LeaseId) -> Result<bool, DcsError>;
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), DcsError>;
    /// txn: leader create_revision == 0 -> put name with lease. Some(create_revision
    /// of the new key) when we created it.
    async fn acquire_leader(&self, name: &str, lease: LeaseId) -> Result<Option<i64>, DcsError>;
    /// Make sure `leader` holds `name` under `lease`: if it holds name under another
    /// lease, re-attach (txn value==name -> put with lease). Ok(true) iff afterwards
    /// the key holds our name on our lease. Ok(false) if someone else holds it or it
    /// is gone: a vanished key is never re-created here, because a leader that lost
    /// its key (say, while frozen) must not take it back from what it knew before;
    /// it has to win a new race through `acquire_leader`.
    async fn update_leader(&self, name: &str, lease: LeaseId) -> Result<bool, DcsError>;
    /// txn value==name -> delete. Ok(true) if deleted.
    async fn release_leader(&self, name: &str) -> Result<bool, DcsError>;
    async fn touch_member(
        &self,
        name: &str,
        data: &MemberData,
        lease: LeaseId,
    ) -> Result<(), DcsError>;
    async fn delete_member(&self, name: &str) -> Result<(), DcsError>;
    /// txn create_revision(initialize)==0 -> put "". Ok(true) if we won.
    async fn race_initialize(&self) -> Result<bool, DcsError>;
    async fn set_initialize(&self, system_identifier: &str) -> Result<(), DcsError>;
    async fn delete_initialize(&self) -> Result<(), DcsError>;
    /// Ok(true) if written.
    async fn set_config(
        &self,
        config: &serde_json::Value,
        pre: Precondition,
    ) -> Result<bool, DcsError>;
    async fn set_failover(
        &self,
        request: &FailoverRequest,
        pre: Precondition,
    ) -> Result<bool, DcsError>;
    /// Ok(Some(new mod_revision)) if written.
    async fn set_sync(&self, state: &SyncState, pre: Precondition)
        -> Result<Option<i64>, DcsError>;
    /// Ok(true) if the precondition held (the key is then absent). With
    /// `Precondition::Absent` that means "there was nothing to delete".
    async fn delete_sync(&self, pre: Precondition) -> Result<bool, DcsError>;
    async fn set_status(&self, status: &ClusterStatus) -> Result<(), DcsError>;
    async fn set_history(&self, lines: &[HistoryLine]) -> Result<(), DcsError>;
    async fn set_failsafe(&self, members: &BTreeMap<String, String>) -> Result<(), DcsError>;
    /// Range-delete the whole cluster prefix (patronictl remove).
    async fn delete_cluster(&self) -> Result<(), DcsError>;
    /// Change notifications for the cluster prefix after `after_revision`. The
    /// implementation re-establishes a broken watch itself and sends Resync when it
    /// did. The receiver closing ends the watch task.
    async fn watch(
        &self,
        after_revision: i64,
    ) -> Result<tokio::sync::mpsc::Receiver<WatchEvent>, DcsError>;
    /// Every key under the cluster prefix with its raw value, sorted by key
    /// (test artifacts, debugging; not for decisions).
    async fn dump(&self) -> Result<Vec<(String, String)>, DcsError>;
}

/// Capacity of the channel returned by [`Dcs::watch`]. A consumer that falls
/// this far behind slows the watch down (etcd buffers on its side) rather than
/// losing events.
pub const WATCH_CHANNEL_CAPACITY: usize = 256;

/// The exact value bytes Patroni writes for each kind of key (compact JSON).
pub mod values {
    use super::*;

    pub fn member(data: &MemberData) -> String {
        serde_json::to_string(data).expect("MemberData serializes")
    }

    pub fn config(config: &serde_json::Value) -> String {
        serde_json::to_string(config).expect("JSON value serializes")
    }

    pub fn failover(request: &FailoverRequest) -> String {
        serde_json::to_string(request).expect("FailoverRequest serializes")
    }

    pub fn sync(state: &SyncState) -> String {
        serde_json::to_string(state).expect("SyncState serializes")
    }

    pub fn status(status: &ClusterStatus) -> String {
        serde_json::to_string(status).expect("ClusterStatus serializes")
    }

    pub fn history(lines: &[HistoryLine]) -> String {
        let arr: Vec<serde_json::Value> = lines.iter().map(HistoryLine::to_json).collect();
        serde_json::to_string(&arr).expect("history serializes")
    }

    pub fn failsafe(members: &BTreeMap<String, String>) -> String {
        serde_json::to_string(members).expect("failsafe map serializes")
    }
}
