//! An in-memory store with etcd's semantics, on a manual clock.
//!
//! It keeps what the agent relies on from etcd: one global revision that every
//! write bumps once, create/mod revisions per key, leases whose expiry deletes
//! their keys in one revision, compare-and-swap transactions, and watches that
//! replay events after a given revision and then follow new ones. Time only
//! moves through [`MemoryDcs::advance`], so simulations are deterministic.
//! [`MemoryDcs::set_unavailable`] makes every call fail as if the store lost
//! quorum, and [`MemoryDcs::break_watches`] makes every watch report `Resync`.
//!
//! Handles are cheap clones sharing one store; [`MemoryDcs::for_scope`] gives a
//! handle on another cluster prefix of the same store. It must never block on
//! I/O or sleep.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pgwarden_types::{
    ClusterSnapshot, ClusterStatus, FailoverRequest, HistoryLine, MemberData, SyncState,
};
use tokio::sync::mpsc;

use crate::keys::{ClusterKey, KeyLayout};
use crate::parse::{parse_snapshot, RawKv};
use crate::{values, Dcs, DcsError, LeaseId, Precondition, WatchEvent, WATCH_CHANNEL_CAPACITY};

#[derive(Debug, Clone)]
struct Entry {
    value: String,
    create_revision: i64,
    mod_revision: i64,
    lease: LeaseId,
}

#[derive(Debug)]
struct Lease {
    ttl: Duration,
    expires_at: Duration,
    keys: BTreeSet<String>,
}

#[derive(Debug)]
struct Watcher {
    prefix: String,
    tx: mpsc::UnboundedSender<WatchEvent>,
}

#[derive(Debug)]
struct Change {
    revision: i64,
    key: String,
    deleted: bool,
}

#[derive(Debug, Default)]
struct State {
    revision: i64,
    kvs: BTreeMap<String, Entry>,
    leases: HashMap<LeaseId, Lease>,
    next_lease: LeaseId,
    now: Duration,
    changes: Vec<Change>,
    watchers: Vec<Watcher>,
    unavailable: Option<String>,
}

impl State {
    fn check_available(&self) -> Result<(), DcsError> {
        match &self.unavailable {
            Some(why) => Err(DcsError::Unavailable(why.clone())),
            None => Ok(()),
        }
    }

    fn check_lease(&self, lease: LeaseId) -> Result<(), DcsError> {
        if lease == 0 || self.leases.contains_key(&lease) {
            Ok(())
        } else {
            Err(DcsError::LeaseNotFound)
        }
    }

    fn create_revision(&self, key: &str) -> i64 {
        self.kvs.get(key).map_or(0, |e| e.create_revision)
    }

    fn holds(&self, key: &str, pre: Precondition) -> bool {
        match pre {
            Precondition::Absent => !self.kvs.contains_key(key),
            Precondition::ModRevision(rev) => {
                self.kvs.get(key).map_or(0, |e| e.mod_revision) == rev
            }
            Precondition::Unconditional => true,
        }
    }

    /// Puts one key in a new revision; returns that revision.
    fn put(&mut self, key: &str, value: String, lease: LeaseId) -> Result<i64, DcsError> {
        self.check_lease(lease)?;
        self.revision += 1;
        let rev = self.revision;
        let old = self.kvs.get(key).cloned();
        if let Some(old) = &old {
            if old.lease != 0 && old.lease != lease {
                if let Some(l) = self.leases.get_mut(&old.lease) {
                    l.keys.remove(key);
                }
            }
        }
        if lease != 0 {
            if let Some(l) = self.leases.get_mut(&lease) {
                l.keys.insert(key.to_string());
            }
        }
        let create_revision = old.map_or(rev, |o| o.create_revision);
        self.kvs.insert(
            key.to_string(),
            Entry {
                value,
                create_revision,
                mod_revision: rev,
                lease,
            },
        );
        self.record(rev, key, false);
        Ok(rev)
    }

    /// Deletes the given keys in one revision; false if none existed.
    fn delete(&mut self, keys: &[String]) -> bool {
        let existing: Vec<&String> = keys.iter().filter(|k| self.kvs.contains_key(*k)).collect();
        if existing.is_empty() {
            return false;
        }
        self.revision += 1;
        let rev = self.revision;
        for key in existing {
            if let Some(entry) = self.kvs.remove(key) {
                if let Some(l) = self.leases.get_mut(&entry.lease) {
                    l.keys.remove(key);
                }
            }
            self.record(rev, key, true);
        }
        true
    }

    fn record(&mut self, revision: i64, key: &str, deleted: bool) {
        self.changes.push(Change {
            revision,
            key: key.to_string(),
            deleted,
        });
        self.watchers.retain(|w| {
            if !key.starts_with(&w.prefix) {
                return !w.tx.is_closed();
            }
            let rel = &key[w.prefix.len()..];
            let event = WatchEvent::Changed {
                key: ClusterKey::from_relative(rel),
                deleted,
                revision,
            };
            w.tx.send(event).is_ok()
        });
    }

    fn expire(&mut self) {
        let now = self.now;
        let expired: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, l)| l.expires_at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.revoke(id);
        }
    }

    fn revoke(&mut self, id: LeaseId) -> bool {
        let Some(lease) = self.leases.remove(&id) else {
            return false;
        };
        let keys: Vec<String> = lease.keys.into_iter().collect();
        self.delete(&keys);
        true
    }
}

/// The in-memory store; clones share the same data.
#[derive(Debug, Clone)]
pub struct MemoryDcs {
    state: Arc<Mutex<State>>,
    layout: KeyLayout,
}

impl MemoryDcs {
    /// A new empty store, with a handle on cluster `scope` in namespace `/service`.
    pub fn new(scope: &str) -> MemoryDcs {
        MemoryDcs::with_layout(KeyLayout::new("/service", scope))
    }

    pub fn with_layout(layout: KeyLayout) -> MemoryDcs {
        MemoryDcs {
            state: Arc::new(Mutex::new(State {
                next_lease: 1,
                ..State::default()
            })),
            layout,
        }
    }

    /// Another handle on the same store, for a different cluster prefix.
    pub fn for_scope(&self, namespace: &str, scope: &str) -> MemoryDcs {
        MemoryDcs {
            state: self.state.clone(),
            layout: KeyLayout::new(namespace, scope),
        }
    }

    pub fn layout(&self) -> &KeyLayout {
        &self.layout
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every mutation
        // completes before anything can panic), so poisoning is not fatal.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn available(&self) -> Result<MutexGuard<'_, State>, DcsError> {
        let state = self.lock();
        state.check_available()?;
        Ok(state)
    }

    fn key(&self, key: &ClusterKey) -> String {
        self.layout.key(key)
    }

    /// Moves the manual clock forward; leases whose TTL ran out are revoked and
    /// their keys deleted (one revision per lease, as etcd does).
    pub fn advance(&self, by: Duration) {
        let mut state = self.lock();
        state.now += by;
        state.expire();
    }

    /// Time on the manual clock since the store was created.
    pub fn now(&self) -> Duration {
        self.lock().now
    }

    /// `Some(reason)`: every call fails with `DcsError::Unavailable(reason)`
    /// (leases still expire on the clock); `None` heals.
    pub fn set_unavailable(&self, reason: Option<&str>) {
        self.lock().unavailable = reason.map(str::to_string);
    }

    /// Sends `Resync` to every open watch, as a re-established etcd watch does.
    pub fn break_watches(&self) {
        self.lock()
            .watchers
            .retain(|w| w.tx.send(WatchEvent::Resync).is_ok());
    }

    /// Remaining TTL of a lease on the manual clock (None if it does not exist).
    pub fn lease_remaining(&self, lease: LeaseId) -> Option<Duration> {
        let state = self.lock();
        state
            .leases
            .get(&lease)
            .map(|l| l.expires_at.saturating_sub(state.now))
    }

    fn put_plain(&self, key: &ClusterKey, value: String, lease: LeaseId) -> Result<i64, DcsError> {
        self.available()?.put(&self.key(key), value, lease)
    }

    fn cas_put(
        &self,
        key: &ClusterKey,
        value: String,
        pre: Precondition,
    ) -> Result<Option<i64>, DcsError> {
        let key = self.key(key);
        let mut state = self.available()?;
        if !state.holds(&key, pre) {
            return Ok(None);
        }
        state.put(&key, value, 0).map(Some)
    }
}

#[async_trait::async_trait]
impl Dcs for MemoryDcs {
    async fn snapshot(&self) -> Result<ClusterSnapshot, DcsError> {
        let state = self.available()?;
        let prefix = self.layout.prefix();
        let kvs: Vec<RawKv> = state
            .kvs
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, e)| RawKv {
                key: k.clone(),
                value: e.value.clone(),
                create_revision: e.create_revision,
                mod_revision: e.mod_revision,
                lease: e.lease,
            })
            .collect();
        Ok(parse_snapshot(&self.layout, state.revision, &kvs))
    }

    async fn grant_lease(&self, ttl_secs: u64) -> Result<LeaseId, DcsError> {
        let mut state = self.available()?;
        let id = state.next_lease;
        state.next_lease += 1;
        let ttl = Duration::from_secs(ttl_secs.max(1));
        let expires_at = state.now + ttl;
        state.leases.insert(
            id,
            Lease {
                ttl,
                expires_at,
                keys: BTreeSet::new(),
            },
        );
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<bool, DcsError> {
        let mut state = self.available()?;
        let now = state.now;
        Ok(match state.leases.get_mut(&lease) {
            Some(l) => {
                l.expires_at = now + l.ttl;
                true
            }
            None => false,
        })
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), DcsError> {
        let mut state = self.available()?;
        if state.revoke(lease) {
            Ok(())
        } else {
            Err(DcsError::LeaseNotFound)
        }
    }

    async fn acquire_leader(&self, name: &str, lease: LeaseId) -> Result<Option<i64>, DcsError> {
        let key = self.key(&ClusterKey::Leader);
        let mut state = self.available()?;
        if state.create_revision(&key) != 0 {
            return Ok(None);
        }
        state.put(&key, name.to_string(), lease).map(Some)
    }

    async fn update_leader(&self, name: &str, lease: LeaseId) -> Result<bool, DcsError> {
        let key = self.key(&ClusterKey::Leader);
        let mut state = self.available()?;
        match state.kvs.get(&key) {
            Some(e) if e.value == name && e.lease == lease => Ok(state.leases.contains_key(&lease)),
            Some(e) if e.value == name => state.put(&key, name.to_string(), lease).map(|_| true),
            Some(_) | None => Ok(false),
        }
    }

    async fn release_leader(&self, name: &str) -> Result<bool, DcsError> {
        let key = self.key(&ClusterKey::Leader);
        let mut state = self.available()?;
        if state.kvs.get(&key).is_some_and(|e| e.value == name) {
            Ok(state.delete(&[key]))
        } else {
            Ok(false)
        }
    }

    async fn touch_member(
        &self,
        name: &str,
        data: &MemberData,
        lease: LeaseId,
    ) -> Result<(), DcsError> {
        self.put_plain(
            &ClusterKey::Member(name.to_string()),
            values::member(data),
            lease,
        )
        .map(drop)
    }

    async fn delete_member(&self, name: &str) -> Result<(), DcsError> {
        let key = self.key(&ClusterKey::Member(name.to_string()));
        self.available()?.delete(&[key]);
        Ok(())
    }

    async fn race_initialize(&self) -> Result<bool, DcsError> {
        self.cas_put(&ClusterKey::Initialize, String::new(), Precondition::Absent)
            .map(|r| r.is_some())
    }

    async fn set_initialize(&self, system_identifier: &str) -> Result<(), DcsError> {
        self.put_plain(&ClusterKey::Initialize, system_identifier.to_string(), 0)
            .map(drop)
    }

    async fn delete_initialize(&self) -> Result<(), DcsError> {
        let key = self.key(&ClusterKey::Initialize);
        self.available()?.delete(&[key]);
        Ok(())
    }

    async fn set_config(
        &self,
        config: &serde_json::Value,
        pre: Precondition,
    ) -> Result<bool, DcsError> {
        self.cas_put(&ClusterKey::Config, values::config(config), pre)
            .map(|r| r.is_some())
    }

    async fn set_failover(
        &self,
        request: &FailoverRequest,
        pre: Precondition,
    ) -> Result<bool, DcsError> {
        self.cas_put(&ClusterKey::Failover, values::failover(request), pre)
            .map(|r| r.is_some())
    }

    async fn set_sync(
        &self,
        state: &SyncState,
        pre: Precondition,
    ) -> Result<Option<i64>, DcsError> {
        self.cas_put(&ClusterKey::Sync, values::sync(state), pre)
    }

    async fn delete_sync(&self, pre: Precondition) -> Result<bool, DcsError> {
        let key = self.key(&ClusterKey::Sync);
        let mut state = self.available()?;
        if !state.holds(&key, pre) {
            return Ok(false);
        }
        state.delete(&[key]);
        Ok(true)
    }

    async fn set_status(&self, status: &ClusterStatus) -> Result<(), DcsError> {
        self.put_plain(&ClusterKey::Status, values::status(status), 0)
            .map(drop)
    }

    async fn set_history(&self, lines: &[HistoryLine]) -> Result<(), DcsError> {
        self.put_plain(&ClusterKey::History, values::history(lines), 0)
            .map(drop)
    }

    async fn set_failsafe(&self, members: &BTreeMap<String, String>) -> Result<(), DcsError> {
        self.put_plain(&ClusterKey::Failsafe, values::failsafe(members), 0)
            .map(drop)
    }

    async fn delete_cluster(&self) -> Result<(), DcsError> {
        let prefix = self.layout.prefix().to_string();
        let mut state = self.available()?;
        let keys: Vec<String> = state
            .kvs
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        state.delete(&keys);
        Ok(())
    }

    async fn watch(&self, after_revision: i64) -> Result<mpsc::Receiver<WatchEvent>, DcsError> {
        let prefix = self.layout.prefix().to_string();
        let (utx, mut urx) = mpsc::unbounded_channel();
        {
            let mut state = self.available()?;
            // Replay under the lock so no change falls between history and live events.
            for c in state
                .changes
                .iter()
                .filter(|c| c.revision > after_revision && c.key.starts_with(&prefix))
            {
                let key = ClusterKey::from_relative(&c.key[prefix.len()..]);
                let _ = utx.send(WatchEvent::Changed {
                    key,
                    deleted: c.deleted,
                    revision: c.revision,
                });
            }
            state.watchers.push(Watcher { prefix, tx: utx });
        }
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL_CAPACITY);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tx.closed() => break,
                    ev = urx.recv() => match ev {
                        Some(ev) => if tx.send(ev).await.is_err() { break },
                        None => break,
                    },
                }
            }
        });
        Ok(rx)
    }

    async fn dump(&self) -> Result<Vec<(String, String)>, DcsError> {
        let prefix = self.layout.prefix();
        Ok(self
            .available()?
            .kvs
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, e)| (k.clone(), e.value.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lease_expiry_deletes_keys_in_one_revision() {
        let dcs = MemoryDcs::new("c");
        let lease = dcs.grant_lease(10).await.unwrap();
        assert!(dcs.acquire_leader("n1", lease).await.unwrap().is_some());
        dcs.touch_member("n1", &MemberData::empty(), lease)
            .await
            .unwrap();
        let before = dcs.snapshot().await.unwrap().revision;
        dcs.advance(Duration::from_secs(9));
        assert!(dcs.keep_alive(lease).await.unwrap());
        dcs.advance(Duration::from_secs(9));
        assert_eq!(dcs.snapshot().await.unwrap().leader_name(), Some("n1"));
        dcs.advance(Duration::from_secs(1));
        let snap = dcs.snapshot().await.unwrap();
        assert!(snap.leader.is_none());
        assert!(snap.members.is_empty());
        assert_eq!(snap.revision, before + 1);
        assert!(!dcs.keep_alive(lease).await.unwrap());
        assert_eq!(
            dcs.acquire_leader("n1", lease).await,
            Err(DcsError::LeaseNotFound)
        );
    }

    #[tokio::test]
    async fn unavailable_fails_every_call() {
        let dcs = MemoryDcs::new("c");
        dcs.set_unavailable(Some("partitioned"));
        let err = dcs.snapshot().await.unwrap_err();
        assert!(err.is_retryable());
        assert!(dcs.grant_lease(5).await.unwrap_err().is_retryable());
        dcs.set_unavailable(None);
        assert!(dcs.snapshot().await.is_ok());
    }

    #[tokio::test]
    async fn watch_replays_then_follows_and_resyncs() {
        let dcs = MemoryDcs::new("c");
        let rev0 = dcs.snapshot().await.unwrap().revision;
        dcs.set_initialize("1").await.unwrap();
        let mut rx = dcs.watch(rev0).await.unwrap();
        let first = rx.recv().await.unwrap();
        assert_eq!(
            first,
            WatchEvent::Changed {
                key: ClusterKey::Initialize,
                deleted: false,
                revision: rev0 + 1
            }
        );
        dcs.break_watches();
        assert_eq!(rx.recv().await.unwrap(), WatchEvent::Resync);
        dcs.delete_initialize().await.unwrap();
        assert_eq!(
            rx.recv().await.unwrap(),
            WatchEvent::Changed {
                key: ClusterKey::Initialize,
                deleted: true,
                revision: rev0 + 2
            }
        );
    }

    #[tokio::test]
    async fn scopes_are_isolated() {
        let a = MemoryDcs::new("a");
        let b = a.for_scope("/service", "b");
        a.set_initialize("1").await.unwrap();
        assert!(b.snapshot().await.unwrap().initialize.is_none());
        b.delete_cluster().await.unwrap();
        assert_eq!(
            a.dump().await.unwrap(),
            vec![("/service/a/initialize".to_string(), "1".to_string())]
        );
    }
}
