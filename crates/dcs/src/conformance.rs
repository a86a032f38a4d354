//! The store conformance suite: one set of checks every [`Dcs`] must pass.
//!
//! It is run against [`crate::MemoryDcs`] and against a real 3-member etcd
//! (crates/dcs/tests). Each case works in its own cluster scope, uses only the
//! trait (plus the [`Harness`] to open handles and let leases expire), and
//! returns `Err(description)` instead of panicking so a runner can report
//! every failing case at once. Waits are polls bounded by the harness's
//! deadline, never fixed sleeps. Compiled only with the `conformance` feature.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use pgwarden_types::{
    ClusterStatus, FailoverRequest, HistoryLine, MemberData, PgState, Role, SyncState,
};
use serde_json::json;
use tokio::sync::mpsc::Receiver;

use crate::{ClusterKey, Dcs, Precondition, WatchEvent};

/// What a store implementation provides to the suite.
#[async_trait::async_trait]
pub trait Harness: Send + Sync {
    type Store: Dcs;
    /// A new handle (its own connection, for etcd) on cluster `scope`. Two
    /// calls with the same scope reach the same cluster.
    async fn open(&self, scope: &str) -> Self::Store;
    /// TTL (seconds) the suite grants its leases with.
    fn lease_ttl(&self) -> u64;
    /// Make leases that are not refreshed any more expire (memory: advance the
    /// clock past the TTL; etcd: nothing, the suite polls long enough).
    async fn let_leases_expire(&self, store: &Self::Store);
    /// How long the suite waits for an expiry or a watch event to show.
    fn deadline(&self) -> Duration;
}

/// Outcome of one case.
pub type CaseResult = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

fn dcs<T>(what: &str, r: Result<T, crate::DcsError>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= end {
            return Err(format!("timed out after {deadline:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Next event about `key` (other keys and Resync are skipped).
async fn next_event_for(
    rx: &mut Receiver<WatchEvent>,
    key: &ClusterKey,
    deadline: Duration,
) -> Result<(bool, i64), String> {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Err(_) => return Err(format!("no watch event for {key:?} within {deadline:?}")),
            Ok(None) => return Err("watch channel closed".into()),
            Ok(Some(WatchEvent::Changed {
                key: k,
                deleted,
                revision,
            })) if &k == key => return Ok((deleted, revision)),
            Ok(Some(_)) => {}
        }
    }
}

fn member(port: u16, role: Role) -> MemberData {
    MemberData {
        conn_url: format!("postgres://127.0.0.1:{port}/postgres"),
        api_url: format!("http://127.0.0.1:{}/patroni", port + 1000),
        state: PgState::Running,
        role,
        version: pgwarden_types::PATRONI_COMPAT_VERSION.to_string(),
        xlog_location: Some(67_108_968),
        timeline: Some(2),
        ..MemberData::empty()
    }
}

/// Every key kind written through the trait is stored in Patroni's exact form
/// and parsed back into the snapshot.
pub async fn snapshot_parses_every_key<H: Harness>(h: &H) -> CaseResult {
    let s = h.open("conf-snapshot").await;
    dcs("delete_cluster", s.delete_cluster().await)?;
    let empty = dcs("snapshot", s.snapshot().await)?;
    ensure!(
        empty.leader.is_none() && empty.members.is_empty() && empty.config.is_none(),
        "fresh scope not empty: {empty:?}"
    );

    let lease = dcs("grant", s.grant_lease(h.lease_ttl() + 30).await)?;
    dcs(
        "set_initialize",
        s.set_initialize("7412345678901234567").await,
    )?;
    dcs("set_config", s.set_config(&json!({"ttl": 30, "loop_wait": 10, "postgresql": {"parameters": {"max_connections": 100}}}), Precondition::Unconditional).await)?;
    let created = dcs("acquire", s.acquire_leader("n1", lease).await)?
        .ok_or("acquire on empty scope failed")?;
    let m1 = member(5432, Role::Primary);
    let m2 = member(5433, Role::Replica);
    dcs("touch n2", s.touch_member("n2", &m2, lease).await)?;
    dcs("touch n1", s.touch_member("n1", &m1, lease).await)?;
    let failover = FailoverRequest {
        leader: Some("n1".into()),
        member: Some("n2".into()),
        scheduled_at: None,
    };
    dcs(
        "set_failover",
        s.set_failover(&failover, Precondition::Unconditional).await,
    )?;
    let sync = SyncState {
        leader: Some("n1".into()),
        quorum: 0,
        sync_standby: Some("n2".into()),
    };
    dcs(
        "set_sync",
        s.set_sync(&sync, Precondition::Unconditional).await,
    )?;
    let status = ClusterStatus {
        optime: Some(67_108_968),
        slots: BTreeMap::from([("n2".to_string(), 67_108_000)]),
        retain_slots: vec!["n2".into()],
    };
    dcs("set_status", s.set_status(&status).await)?;
    let history = vec![HistoryLine {
        timeline: 1,
        switch_lsn: 25_165_984,
        reason: "no recovery target specified".into(),
        timestamp: Some("2026-01-01T00:00:00+00:00".into()),
        new_leader: Some("n1".into()),
    }];
    dcs("set_history", s.set_history(&history).await)?;
    let failsafe = BTreeMap::from([
        ("n1".to_string(), m1.api_url.clone()),
        ("n2".to_string(), m2.api_url.clone()),
    ]);
    dcs("set_failsafe", s.set_failsafe(&failsafe).await)?;

    let snap = dcs("snapshot", s.snapshot().await)?;
    ensure!(
        snap.system_identifier() == Some("7412345678901234567"),
        "initialize: {:?}",
        snap.initialize
    );
    ensure!(
        snap.config.as_ref().map(|c| c.value["ttl"].clone()) == Some(json!(30)),
        "config: {:?}",
        snap.config
    );
    let leader = snap.leader.clone().ok_or("no leader in snapshot")?;
    ensure!(
        leader.name == "n1" && leader.lease == lease && leader.create_revision == created,
        "leader: {leader:?}, created {created}, lease {lease}"
    );
    let names: Vec<&str> = snap.members.iter().map(|m| m.name.as_str()).collect();
    ensure!(
        names == ["n1", "n2"],
        "members not sorted by name: {names:?}"
    );
    ensure!(
        snap.members[0].data == m1 && snap.members[1].data == m2,
        "member data differs: {:?}",
        snap.members
    );
    ensure!(
        snap.members.iter().all(|m| m.lease == lease),
        "member lease differs"
    );
    ensure!(
        snap.failover_request() == Some(&failover),
        "failover: {:?}",
        snap.failover
    );
    ensure!(
        snap.sync.as_ref().map(|v| &v.value) == Some(&sync),
        "sync: {:?}",
        snap.sync
    );
    ensure!(snap.status == status, "status: {:?}", snap.status);
    ensure!(
        snap.history == history && snap.timeline() == 2,
        "history: {:?}",
        snap.history
    );
    ensure!(
        snap.failsafe.as_ref() == Some(&failsafe),
        "failsafe: {:?}",
        snap.failsafe
    );
    ensure!(
        snap.revision
            >= snap
                .members
                .iter()
                .map(|m| m.mod_revision)
                .max()
                .unwrap_or(0),
        "snapshot revision older than its keys"
    );

    // The stored bytes are exactly what Patroni writes: plain name, compact JSON.
    let dump: BTreeMap<String, String> = dcs("dump", s.dump().await)?.into_iter().collect();
    let p = "/service/conf-snapshot/";
    let expect = [
        ("leader", "n1".to_string()),
        ("initialize", "7412345678901234567".to_string()),
        ("failover", r#"{"leader":"n1","member":"n2"}"#.to_string()),
        ("sync", r#"{"leader":"n1","quorum":0,"sync_standby":"n2"}"#.to_string()),
        ("status", r#"{"optime":67108968,"slots":{"n2":67108000},"retain_slots":["n2"]}"#.to_string()),
        ("history", r#"[[1,25165984,"no recovery target specified","2026-01-01T00:00:00+00:00","n1"]]"#.to_string()),
        ("members/n1", r#"{"conn_url":"postgres://127.0.0.1:5432/postgres","api_url":"http://127.0.0.1:6432/patroni","state":"running","role":"primary","version":"4.1.4","xlog_location":67108968,"timeline":2}"#.to_string()),
    ];
    for (rel, value) in expect {
        let got = dump.get(&format!("{p}{rel}"));
        ensure!(
            got == Some(&value),
            "stored {rel} = {got:?}, expected {value}"
        );
    }

    // delete_member removes exactly that member.
    dcs("delete_member", s.delete_member("n2").await)?;
    let snap = dcs("snapshot", s.snapshot().await)?;
    ensure!(
        snap.members.len() == 1 && snap.members[0].name == "n1",
        "after delete_member: {:?}",
        snap.members
    );
    dcs("revoke", s.revoke_lease(lease).await)?;
    Ok(())
}

/// Two contenders race for the leader key at the same time: exactly one wins,
/// and the key carries the winner's name and lease.
pub async fn leader_race_has_one_winner<H: Harness>(h: &H) -> CaseResult {
    let a = h.open("conf-race").await;
    let b = h.open("conf-race").await;
    dcs("delete_cluster", a.delete_cluster().await)?;
    let la = dcs("grant a", a.grant_lease(h.lease_ttl() + 30).await)?;
    let lb = dcs("grant b", b.grant_lease(h.lease_ttl() + 30).await)?;
    let (ra, rb) = tokio::join!(a.acquire_leader("a", la), b.acquire_leader("b", lb));
    let (ra, rb) = (dcs("acquire a", ra)?, dcs("acquire b", rb)?);
    ensure!(
        ra.is_some() != rb.is_some(),
        "exactly one must win: a={ra:?} b={rb:?}"
    );
    let (winner, lease, rev) = match (ra, rb) {
        (Some(r), None) => ("a", la, r),
        (None, Some(r)) => ("b", lb, r),
        _ => unreachable!(),
    };
    let leader = dcs("snapshot", a.snapshot().await)?
        .leader
        .ok_or("no leader after race")?;
    ensure!(
        leader.name == winner && leader.lease == lease && leader.create_revision == rev,
        "leader {leader:?} vs winner {winner} rev {rev}"
    );
    // A second attempt by anyone fails while the key exists.
    ensure!(
        dcs("re-acquire", b.acquire_leader("b", lb).await)?.is_none(),
        "acquire succeeded on a held key"
    );
    ensure!(
        dcs("re-acquire", a.acquire_leader("a", la).await)?.is_none(),
        "acquire succeeded on a held key"
    );
    dcs("revoke a", a.revoke_lease(la).await)?;
    dcs("revoke b", b.revoke_lease(lb).await)?;
    Ok(())
}

/// update_leader keeps the key, re-attaches it to a new lease, never re-creates
/// it when gone, and refuses when someone else holds it.
pub async fn update_leader_reattaches<H: Harness>(h: &H) -> CaseResult {
    let s = h.open("conf-update").await;
    dcs("delete_cluster", s.delete_cluster().await)?;
    let ttl = h.lease_ttl() + 30;
    let l1 = dcs("grant", s.grant_lease(ttl).await)?;
    let created = dcs("acquire", s.acquire_leader("n1", l1).await)?.ok_or("acquire failed")?;
    ensure!(
        dcs("update same lease", s.update_leader("n1", l1).await)?,
        "update on own key and lease failed"
    );
    let l2 = dcs("grant", s.grant_lease(ttl).await)?;
    ensure!(
        dcs("update new lease", s.update_leader("n1", l2).await)?,
        "re-attach to new lease failed"
    );
    let leader = dcs("snapshot", s.snapshot().await)?
        .leader
        .ok_or("leader vanished")?;
    ensure!(
        leader.lease == l2 && leader.name == "n1",
        "not re-attached: {leader:?}"
    );
    ensure!(
        leader.create_revision == created,
        "re-attach must keep create_revision {created}: {leader:?}"
    );
    // The old lease no longer owns the key: revoking it leaves the key alone.
    dcs("revoke l1", s.revoke_lease(l1).await)?;
    ensure!(
        dcs("snapshot", s.snapshot().await)?.leader_name() == Some("n1"),
        "revoking the old lease deleted the key"
    );
    // Someone else cannot take it over through update_leader.
    let l3 = dcs("grant", s.grant_lease(ttl).await)?;
    ensure!(
        !dcs("update other", s.update_leader("n2", l3).await)?,
        "update_leader by non-owner succeeded"
    );
    ensure!(
        dcs("snapshot", s.snapshot().await)?.leader_name() == Some("n1"),
        "non-owner changed the key"
    );
    // When the key is gone, update_leader does not bring it back: the holder
    // must win a new race instead.
    ensure!(
        dcs("release", s.release_leader("n1").await)?,
        "release failed"
    );
    ensure!(
        !dcs("update absent", s.update_leader("n1", l2).await)?,
        "update_leader re-created an absent leader key"
    );
    ensure!(
        dcs("snapshot", s.snapshot().await)?.leader.is_none(),
        "the leader key reappeared"
    );
    dcs("revoke l2", s.revoke_lease(l2).await)?;
    dcs("revoke l3", s.revoke_lease(l3).await)?;
    Ok(())
}

/// Only the holder can release the leader key.
pub async fn release_only_by_owner<H: Harness>(h: &H) -> CaseResult {
    let s = h.open("conf-release").await;
    dcs("delete_cluster", s.delete_cluster().await)?;
    let lease = dcs("grant", s.grant_lease(h.lease_ttl() + 30).await)?;
    ensure!(
        !dcs("release absent", s.release_leader("n1").await)?,
        "release of absent key reported true"
    );
    dcs("acquire", s.acquire_leader("n1", lease).await)?.ok_or("acquire failed")?;
    ensure!(
        !dcs("release other", s.release_leader("n2").await)?,
        "non-owner released the key"
    );
    ensure!(
        dcs("snapshot", s.snapshot().await)?.leader_name() == Some("n1"),
        "key gone after foreign release"
    );
    ensure!(
        dcs("release own", s.release_leader("n1").await)?,
        "owner could not release"
    );
    ensure!(
        dcs("snapshot", s.snapshot().await)?.leader.is_none(),
        "key still there after release"
    );
    ensure!(
        !dcs("release twice", s.release_leader("n1").await)?,
        "second release reported true"
    );
    dcs("revoke", s.revoke_lease(lease).await)?;
    Ok(())
}

/// Leases: keep_alive works while the lease lives; expiry or revoke deletes
/// the leader and member keys attached to it; a dead lease cannot be used.
pub async fn lease_expiry_deletes_keys<H: Harness>(h: &H) -> CaseResult {
    let s = h.open("conf-lease").await;
    dcs("delete_cluster", s.delete_cluster().await)?;
    let lease = dcs("grant", s.grant_lease(h.lease_ttl()).await)?;
    ensure!(
        dcs("keep_alive", s.keep_alive(lease).await)?,
        "keep_alive of a live lease returned false"
    );
    dcs("acquire", s.acquire_leader("n1", lease).await)?.ok_or("acquire failed")?;
    dcs(
        "touch",
        s.touch_member("n1", &member(5432, Role::Primary), lease)
            .await,
    )?;
    // A member on no lease survives.
    dcs(
        "touch static",
        s.touch_member("static", &member(5440, Role::Replica), 0)
            .await,
    )?;
    h.let_leases_expire(&s).await;
    eventually(
        "leader and member keys to expire with their lease",
        h.deadline(),
        || async {
            let snap = s.snapshot().await.ok()?;
            (snap.leader.is_none() && snap.member("n1").is_none()).then_some(())
        },
    )
    .await?;
    let snap = dcs("snapshot", s.snapshot().await)?;
    ensure!(
        snap.member("static").is_some(),
        "a key without lease was deleted by lease expiry"
    );
    ensure!(
        !dcs("keep_alive expired", s.keep_alive(lease).await)?,
        "keep_alive of an expired lease returned true"
    );
    match s.acquire_leader("n1", lease).await {
        Err(crate::DcsError::LeaseNotFound) => {}
        other => {
            return Err(format!(
                "acquire with expired lease: expected LeaseNotFound, got {other:?}"
            ))
        }
    }

    // Revoke deletes at once.
    let l2 = dcs("grant", s.grant_lease(h.lease_ttl() + 30).await)?;
    dcs("acquire", s.acquire_leader("n2", l2).await)?.ok_or("acquire failed")?;
    dcs(
        "touch",
        s.touch_member("n2", &member(5433, Role::Primary), l2).await,
    )?;
    dcs("revoke", s.revoke_lease(l2).await)?;
    let snap = dcs("snapshot", s.snapshot().await)?;
    ensure!(
        snap.leader.is_none() && snap.member("n2").is_none(),
        "revoke left keys: {snap:?}"
    );
    ensure!(
        !dcs("keep_alive revoked", s.keep_alive(l2).await)?,
        "keep_alive of a revoked lease returned true"
    );
    Ok(())
}

/// N contenders race for `initialize` at once: exactly one wins.
pub async fn initialize_race_has_one_winner<H: Harness>(h: &H) -> CaseResult {
    const N: usize = 5;
    let mut stores = Vec::new();
    for _ in 0..N {
        stores.push(h.open("conf-init").await);
    }
    dcs("delete_cluster", stores[0].delete_cluster().await)?;
    let results = futures::future::join_all(stores.iter().map(|s| s.race_initialize())).await;
    let mut wins = 0;
    for r in results {
        if dcs("race_initialize", r)? {
            wins += 1;
        }
    }
    ensure!(
        wins == 1,
        "{wins} of {N} contenders won the initialize race"
    );
    let snap = dcs("snapshot", stores[0].snapshot().await)?;
    ensure!(
        snap.initialize.as_deref() == Some("") && snap.system_identifier().is_none(),
        "initialize during race: {:?}",
        snap.initialize
    );
    dcs(
        "set_initialize",
        stores[1].set_initialize("7000000000000000042").await,
    )?;
    ensure!(
        !dcs("race again", stores[2].race_initialize().await)?,
        "race won over a set initialize key"
    );
    ensure!(
        dcs("snapshot", stores[3].snapshot().await)?.system_identifier()
            == Some("7000000000000000042"),
        "sysid not stored"
    );
    dcs("delete_initialize", stores[0].delete_initialize().await)?;
    ensure!(
        dcs("race after delete", stores[4].race_initialize().await)?,
        "race after delete_initialize lost"
    );
    Ok(())
}

/// Preconditions on config, failover and sync: Absent, stale and current
/// ModRevision, Unconditional; delete_sync with preconditions.
pub async fn cas_preconditions<H: Harness>(h: &H) -> CaseResult {
    let s = h.open("conf-cas").await;
    dcs("delete_cluster", s.delete_cluster().await)?;

    // config
    ensure!(
        dcs(
            "config absent",
            s.set_config(&json!({"ttl": 30}), Precondition::Absent)
                .await
        )?,
        "config Absent on empty key refused"
    );
    ensure!(
        !dcs(
            "config absent again",
            s.set_config(&json!({"ttl": 31}), Precondition::Absent)
                .await
        )?,
        "config Absent on existing key accepted"
    );
    let rev = dcs("snapshot", s.snapshot().await)?
        .config
        .ok_or("config missing")?
        .mod_revision;
    ensure!(
        dcs(
            "config current",
            s.set_config(&json!({"ttl": 32}), Precondition::ModRevision(rev))
                .await
        )?,
        "config CAS with current revision refused"
    );
    ensure!(
        !dcs(
            "config stale",
            s.set_config(&json!({"ttl": 33}), Precondition::ModRevision(rev))
                .await
        )?,
        "config CAS with stale revision accepted"
    );
    ensure!(
        dcs(
            "config unconditional",
            s.set_config(&json!({"ttl": 34}), Precondition::Unconditional)
                .await
        )?,
        "unconditional config write refused"
    );
    let cfg = dcs("snapshot", s.snapshot().await)?
        .config
        .ok_or("config missing")?;
    ensure!(
        cfg.value == json!({"ttl": 34}),
        "config value {:?}",
        cfg.value
    );

    // failover
    let req = FailoverRequest {
        leader: Some("n1".into()),
        member: None,
        scheduled_at: None,
    };
    ensure!(
        dcs(
            "failover absent",
            s.set_failover(&req, Precondition::Absent).await
        )?,
        "failover Absent refused"
    );
    let rev = dcs("snapshot", s.snapshot().await)?
        .failover
        .ok_or("failover missing")?
        .mod_revision;
    ensure!(
        !dcs(
            "failover stale",
            s.set_failover(
                &FailoverRequest::default(),
                Precondition::ModRevision(rev - 1)
            )
            .await
        )?,
        "failover stale CAS accepted"
    );
    ensure!(
        dcs(
            "failover clear",
            s.set_failover(&FailoverRequest::default(), Precondition::ModRevision(rev))
                .await
        )?,
        "failover CAS clear refused"
    );
    let snap = dcs("snapshot", s.snapshot().await)?;
    ensure!(
        snap.failover.is_some() && snap.failover_request().is_none(),
        "cleared failover should be stored as {{}}: {:?}",
        snap.failover
    );

    // sync
    let st = SyncState {
        leader: Some("n1".into()),
        quorum: 0,
        sync_standby: None,
    };
    let r1 = dcs("sync absent", s.set_sync(&st, Precondition::Absent).await)?
        .ok_or("sync Absent refused")?;
    let stored = dcs("snapshot", s.snapshot().await)?
        .sync
        .ok_or("sync missing")?;
    ensure!(
        stored.mod_revision == r1,
        "set_sync returned {r1}, key has mod_revision {}",
        stored.mod_revision
    );
    ensure!(
        dcs(
            "sync absent again",
            s.set_sync(&st, Precondition::Absent).await
        )?
        .is_none(),
        "sync Absent on existing key accepted"
    );
    let st2 = SyncState {
        sync_standby: Some("n2".into()),
        ..st.clone()
    };
    let r2 = dcs(
        "sync current",
        s.set_sync(&st2, Precondition::ModRevision(r1)).await,
    )?
    .ok_or("sync CAS with current revision refused")?;
    ensure!(r2 > r1, "new sync revision {r2} not after {r1}");
    ensure!(
        dcs(
            "sync stale",
            s.set_sync(&st, Precondition::ModRevision(r1)).await
        )?
        .is_none(),
        "sync CAS with stale revision accepted"
    );
    ensure!(
        !dcs(
            "delete_sync stale",
            s.delete_sync(Precondition::ModRevision(r1)).await
        )?,
        "delete_sync with stale revision accepted"
    );
    ensure!(
        dcs("snapshot", s.snapshot().await)?.sync.map(|v| v.value) == Some(st2),
        "sync value after stale ops changed"
    );
    ensure!(
        dcs(
            "delete_sync current",
            s.delete_sync(Precondition::ModRevision(r2)).await
        )?,
        "delete_sync with current revision refused"
    );
    ensure!(
        dcs("snapshot", s.snapshot().await)?.sync.is_none(),
        "sync still present after delete"
    );
    ensure!(
        dcs(
            "sync unconditional",
            s.set_sync(&st, Precondition::Unconditional).await
        )?
        .is_some(),
        "unconditional sync write refused"
    );
    ensure!(
        dcs(
            "delete_sync unconditional",
            s.delete_sync(Precondition::Unconditional).await
        )?,
        "unconditional delete_sync refused"
    );
    Ok(())
}

/// delete_cluster removes the whole prefix and nothing outside it (a scope
/// whose name extends this one's is a different prefix).
pub async fn delete_cluster_removes_prefix_only<H: Harness>(h: &H) -> CaseResult {
    let s = h.open("conf-del").await;
    let other = h.open("conf-del2").await;
    dcs("delete_cluster", s.delete_cluster().await)?;
    dcs("set_initialize", s.set_initialize("1").await)?;
    dcs(
        "set_config",
        s.set_config(&json!({}), Precondition::Unconditional).await,
    )?;
    dcs(
        "touch",
        s.touch_member("n1", &member(5432, Role::Replica), 0).await,
    )?;
    dcs("other set_initialize", other.set_initialize("2").await)?;
    dcs("delete_cluster", s.delete_cluster().await)?;
    ensure!(
        dcs("dump", s.dump().await)?.is_empty(),
        "keys left after delete_cluster"
    );
    let snap = dcs("snapshot", s.snapshot().await)?;
    ensure!(
        snap.initialize.is_none() && snap.members.is_empty() && snap.config.is_none(),
        "snapshot not empty: {snap:?}"
    );
    ensure!(
        dcs("other", other.snapshot().await)?.system_identifier() == Some("2"),
        "delete_cluster touched another scope"
    );
    dcs("other delete", other.delete_cluster().await)?;
    Ok(())
}

/// A watch delivers leader puts and deletes (also by lease revoke) with their
/// revisions, replays changes after the given revision, and ignores other scopes.
pub async fn watch_delivers_leader_changes<H: Harness>(h: &H) -> CaseResult {
    let s = h.open("conf-watch").await;
    let other = h.open("conf-watch-other").await;
    dcs("delete_cluster", s.delete_cluster().await)?;
    let rev0 = dcs("snapshot", s.snapshot().await)?.revision;
    // Written before the watch starts: must be replayed because it is after rev0.
    dcs(
        "touch",
        s.touch_member("early", &member(5432, Role::Replica), 0)
            .await,
    )?;
    let mut rx = dcs("watch", s.watch(rev0).await)?;
    let (deleted, _) =
        next_event_for(&mut rx, &ClusterKey::Member("early".into()), h.deadline()).await?;
    ensure!(!deleted, "replayed member put reported as delete");

    let lease = dcs("grant", s.grant_lease(h.lease_ttl() + 30).await)?;
    dcs("other write", other.set_initialize("x").await)?;
    let created = dcs("acquire", s.acquire_leader("n1", lease).await)?.ok_or("acquire failed")?;
    let (deleted, rev) = next_event_for(&mut rx, &ClusterKey::Leader, h.deadline()).await?;
    ensure!(
        !deleted && rev == created,
        "leader put event: deleted={deleted} rev={rev}, created at {created}"
    );
    ensure!(
        dcs("release", s.release_leader("n1").await)?,
        "release failed"
    );
    let (deleted, rev2) = next_event_for(&mut rx, &ClusterKey::Leader, h.deadline()).await?;
    ensure!(
        deleted && rev2 > rev,
        "leader delete event: deleted={deleted} rev={rev2}"
    );

    // A delete caused by the lease going away is delivered too.
    dcs("acquire", s.acquire_leader("n1", lease).await)?.ok_or("acquire failed")?;
    let (deleted, _) = next_event_for(&mut rx, &ClusterKey::Leader, h.deadline()).await?;
    ensure!(!deleted, "expected leader put");
    dcs("revoke", s.revoke_lease(lease).await)?;
    let (deleted, _) = next_event_for(&mut rx, &ClusterKey::Leader, h.deadline()).await?;
    ensure!(
        deleted,
        "lease revoke did not produce a leader delete event"
    );
    drop(rx);
    dcs("other delete", other.delete_cluster().await)?;
    Ok(())
}

/// Runs every case; returns `(name, result)` for each.
pub async fn run_all<H: Harness>(h: &H) -> Vec<(&'static str, CaseResult)> {
    vec![
        (
            "snapshot_parses_every_key",
            snapshot_parses_every_key(h).await,
        ),
        (
            "leader_race_has_one_winner",
            leader_race_has_one_winner(h).await,
        ),
        (
            "update_leader_reattaches",
            update_leader_reattaches(h).await,
        ),
        ("release_only_by_owner", release_only_by_owner(h).await),
        (
            "lease_expiry_deletes_keys",
            lease_expiry_deletes_keys(h).await,
        ),
        (
            "initialize_race_has_one_winner",
            initialize_race_has_one_winner(h).await,
        ),
        ("cas_preconditions", cas_preconditions(h).await),
        (
            "delete_cluster_removes_prefix_only",
            delete_cluster_removes_prefix_only(h).await,
        ),
        (
            "watch_delivers_leader_changes",
            watch_delivers_leader_changes(h).await,
        ),
    ]
}

/// Runs every case and panics with the list of failures, if any.
pub async fn assert_conformance<H: Harness>(h: &H) {
    let results = run_all(h).await;
    let failures: Vec<String> = results
        .iter()
        .filter_map(|(name, r)| r.as_ref().err().map(|e| format!("{name}: {e}")))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} conformance cases failed:\n{}",
        failures.len(),
        results.len(),
        failures.join("\n")
    );
}
