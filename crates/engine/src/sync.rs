//! Synchronous replication maintained by the leader (patroni-compat §2.12).
//!
//! The `sync` key lists the members that hold every acknowledged commit, so
//! only they may be promoted. The leader moves one step per cycle and keeps
//! this invariant at every step:
//! * a standby is **added** to PostgreSQL's `synchronous_standby_names` first,
//!   and to the key only once it has flushed past a barrier: the leader's
//!   flush position observed after the new setting took effect (anything
//!   acknowledged before the change lies below the barrier, anything after it
//!   waited for the standby);
//! * a standby is **removed** from the key first, and from PostgreSQL in a
//!   later cycle, after the store confirmed the smaller key;
//! * with no candidate left, non-strict mode empties the key and then turns
//!   synchronous commit off (writes continue, nobody is promotable); strict
//!   mode sets `'*'` so that commits wait for whichever standby connects.
//!
//! A node that takes the leader key in synchronous mode rewrites the key to
//! `{leader: me, sync_standby: null}` (conditional on the revision it read)
//! and resets its own setting before it promotes; standbys are added back in
//! later cycles. Quorum mode (`synchronous_mode: quorum`) is maintained like
//! `on` with PostgreSQL's `FIRST` semantics: the key lists exactly the
//! standbys every commit waits for, which is stricter than quorum commit and
//! keeps the same promotion rule.
//!
//! This module is pure: it reads the observation and writes only the memory.

use names::{names_equal, render_standby_names};
use pgwarden_types::{Lsn, Member, PgState, SyncState, SynchronousMode};

use crate::decide::Ctx;
use crate::observation::{Action, SyncBarrier, SyncWrite};

/// Standby names as PostgreSQL reads them.
mod names {
    /// PostgreSQL compares standby names case-insensitively.
    pub(super) fn names_equal(a: &str, b: &str) -> bool {
        a.eq_ignore_ascii_case(b)
    }

    /// A name PostgreSQL reads unquoted: a lower-case identifier that is not
    /// one of the list's keywords.
    fn is_plain(name: &str) -> bool {
        let mut chars = name.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
        first_ok
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$')
            && !matches!(name, "first" | "any")
    }

    fn quote(name: &str) -> String {
        if is_plain(name) {
            name.to_string()
        } else {
            format!("\"{}\"", name.replace('"', "\"\""))
        }
    }

    /// `synchronous_standby_names` for these standbys, all of which every
    /// commit waits for: `a` for one, `N (a,b)` for several (names sorted).
    pub(super) fn render_standby_names(names: &[String]) -> String {
        let mut sorted: Vec<String> = names.iter().map(|n| quote(n)).collect();
        sorted.sort();
        match sorted.as_slice() {
            [one] => one.clone(),
            many => format!("{} ({})", many.len(), many.join(",")),
        }
    }
}

/// The names listed in the key, as the key spells them.
fn listed(state: &SyncState) -> Vec<String> {
    state
        .sync_standby
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn contains(names: &[String], name: &str) -> bool {
    names.iter().any(|n| names_equal(n, name))
}

fn sync_state(leader: &str, standbys: &[String]) -> SyncState {
    let mut sorted = standbys.to_vec();
    sorted.sort();
    SyncState {
        leader: Some(leader.to_string()),
        quorum: 0,
        sync_standby: (!sorted.is_empty()).then(|| sorted.join(",")),
    }
}

/// The precondition for rewriting the key as read in this snapshot.
fn write_over(ctx: &Ctx<'_>, state: SyncState) -> Action {
    Action::WriteSync(SyncWrite {
        state,
        mod_revision: ctx.snap.sync.as_ref().map(|k| k.mod_revision),
    })
}

/// The setting pgwarden wants for these standbys (`None`: the user's own).
fn wanted_setting(ctx: &Ctx<'_>, standbys: &[String]) -> Option<String> {
    if standbys.is_empty() {
        ctx.cfg.synchronous_mode_strict.then(|| "*".to_string())
    } else {
        Some(render_standby_names(standbys))
    }
}

/// Members that may be synchronous standbys now, best first, at most
/// `synchronous_node_count`.
fn candidates(ctx: &Ctx<'_>, current: &[String]) -> Vec<String> {
    let me = ctx.me();
    let local = ctx.local();
    let max_lag = ctx.cfg.maximum_lag_on_syncnode;
    let mut found: Vec<(&Member, Lsn, bool)> = Vec::new();
    for row in local.replication.iter().filter(|r| r.state == "streaming") {
        let Some(member) = ctx
            .snap
            .members
            .iter()
            .find(|m| names_equal(&m.name, &row.application_name))
        else {
            continue;
        };
        let tags = &member.data.tags;
        let cascades = tags
            .replicatefrom
            .as_deref()
            .is_some_and(|from| !names_equal(from, me));
        if names_equal(&member.name, me)
            || member.data.state != PgState::Running
            || !tags.can_be_sync()
            || cascades
            || found.iter().any(|(m, _, _)| m.name == member.name)
        {
            continue;
        }
        let flushed = row.flush_lsn.unwrap_or(Lsn(0));
        if max_lag > 0 {
            if let Some(primary) = local.write_lsn {
                let lag = flushed.lag_behind(primary);
                if lag > max_lag.unsigned_abs() {
                    continue;
                }
            }
        }
        found.push((member, flushed, contains(current, &member.name)));
    }
    found.sort_by(|(a, a_lsn, a_cur), (b, b_lsn, b_cur)| {
        let prio = |m: &Member| m.data.tags.sync_priority.unwrap_or(1);
        prio(b)
            .cmp(&prio(a))
            .then(b_cur.cmp(a_cur))
            .then(a.data.tags.nofailover.cmp(&b.data.tags.nofailover))
            .then(b_lsn.cmp(a_lsn))
            .then(a.name.cmp(&b.name))
    });
    let count = usize::try_from(ctx.cfg.synchronous_node_count.max(1)).unwrap_or(usize::MAX);
    found
        .into_iter()
        .take(count)
        .map(|(m, _, _)| m.name.clone())
        .collect()
}

/// One step towards the wanted synchronous standbys for a primary leader.
pub(crate) fn maintain(ctx: &mut Ctx<'_>) -> Vec<Action> {
    let local = ctx.local();
    let key = ctx.snap.sync.as_ref();
    if ctx.cfg.synchronous_mode == SynchronousMode::Off {
        ctx.mem.sync_barrier = None;
        let mut actions = Vec::new();
        if let Some(k) = key {
            actions.push(Action::DeleteSync {
                mod_revision: k.mod_revision,
            });
        }
        if local.managed_sync_standby_names.is_some() {
            actions.push(Action::SetSyncStandbyNames { value: None });
        }
        return actions;
    }
    let me = ctx.me();
    let current = match key {
        Some(k)
            if k.value
                .leader
                .as_deref()
                .is_some_and(|l| names_equal(l, me)) =>
        {
            listed(&k.value)
        }
        // A key naming someone else (or none) tells nothing about my standbys.
        _ => return vec![write_over(ctx, sync_state(me, &[]))],
    };
    let wanted = candidates(ctx, &current);

    let keep: Vec<String> = current
        .iter()
        .filter(|n| contains(&wanted, n))
        .cloned()
        .collect();
    if keep.len() != current.len() {
        return vec![write_over(ctx, sync_state(me, &keep))];
    }

    let setting = wanted_setting(ctx, &wanted);
    if local.managed_sync_standby_names != setting {
        ctx.mem.sync_barrier = setting.clone().map(|value| SyncBarrier {
            value,
            seen_in_effect: false,
            lsn: None,
        });
        return vec![Action::SetSyncStandbyNames { value: setting }];
    }
    let Some(setting) = setting else {
        return Vec::new();
    };
    let barrier = match ctx.mem.sync_barrier.take() {
        Some(b) if b.value == setting => b,
        _ => SyncBarrier {
            value: setting.clone(),
            seen_in_effect: false,
            lsn: None,
        },
    };
    // The barrier is read only once the new setting has been in effect for a
    // whole cycle: every commit acknowledged before lies below the flush
    // position read now.
    let in_effect = local.sync_standby_names.as_deref() == Some(setting.as_str());
    let barrier = match barrier.lsn {
        None if in_effect && barrier.seen_in_effect => SyncBarrier {
            lsn: local.write_lsn,
            ..barrier
        },
        None => SyncBarrier {
            seen_in_effect: in_effect,
            ..barrier
        },
        Some(_) => barrier,
    };
    let reached = barrier.lsn;
    ctx.mem.sync_barrier = Some(barrier);
    let Some(reached) = reached else {
        return Vec::new();
    };
    let confirmed: Vec<String> = wanted
        .iter()
        .filter(|name| !contains(&current, name))
        .filter(|name| {
            local.replication.iter().any(|r| {
                names_equal(&r.application_name, name)
                    && r.state == "streaming"
                    && r.flush_lsn.is_some_and(|f| f >= reached)
            })
        })
        .cloned()
        .collect();
    if confirmed.is_empty() {
        return Vec::new();
    }
    let mut all = current;
    all.extend(confirmed);
    vec![write_over(ctx, sync_state(me, &all))]
}

/// What a node does just before it promotes in synchronous mode: claim the
/// key with no standbys (conditional on the revision it read, so a stale
/// decision fails) and reset its own setting.
pub(crate) fn before_promotion(ctx: &Ctx<'_>) -> Vec<Action> {
    if ctx.cfg.synchronous_mode == SynchronousMode::Off {
        return Vec::new();
    }
    let value = ctx.cfg.synchronous_mode_strict.then(|| "*".to_string());
    vec![
        write_over(ctx, sync_state(ctx.me(), &[])),
        Action::SetSyncStandbyNames { value },
    ]
}

#[cfg(test)]
mod tests {
    use pgwarden_types::{Lsn, ReplicationRow, SyncState};
    use serde_json::json;

    use super::names::render_standby_names;
    use crate::testkit::{b, B};
    use crate::{Action, Decision, SyncBarrier, SyncWrite};

    /// n2 is the primary leader; the sync key (revision 8) lists `standbys`.
    fn leader(standbys: &str) -> B {
        b().leader("n2").primary().held_lock().sync("n2", standbys)
    }

    fn streaming(name: &str, flushed: u64) -> ReplicationRow {
        ReplicationRow {
            usename: "replicator".into(),
            application_name: name.into(),
            client_addr: None,
            state: "streaming".into(),
            sync_state: "async".into(),
            sync_priority: 0,
            write_lsn: Some(Lsn(flushed)),
            flush_lsn: Some(Lsn(flushed)),
            replay_lsn: Some(Lsn(flushed)),
        }
    }

    /// Managed and effective `synchronous_standby_names`, and the standbys seen.
    fn observed(b: B, setting: Option<&str>, rows: Vec<ReplicationRow>) -> B {
        b.local_mut(|l| {
            l.managed_sync_standby_names = setting.map(str::to_string);
            l.sync_standby_names = Some(setting.unwrap_or("").to_string());
            l.replication = rows;
        })
    }

    fn sync_actions(d: &Decision) -> Vec<Action> {
        d.actions
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    Action::WriteSync(_)
                        | Action::DeleteSync { .. }
                        | Action::SetSyncStandbyNames { .. }
                )
            })
            .cloned()
            .collect()
    }

    fn write(standbys: Option<&str>) -> Action {
        Action::WriteSync(SyncWrite {
            state: SyncState {
                leader: Some("n2".into()),
                quorum: 0,
                sync_standby: standbys.map(str::to_string),
            },
            mod_revision: Some(8),
        })
    }

    fn set(value: Option<&str>) -> Action {
        Action::SetSyncStandbyNames {
            value: value.map(str::to_string),
        }
    }

    #[test]
    fn a_standby_enters_postgres_first_then_the_key_after_the_barrier() {
        // Step 1: PostgreSQL's setting first; the key is untouched.
        let d = observed(leader(""), None, vec![streaming("n1", 900)]).run();
        assert_eq!(sync_actions(&d), vec![set(Some("n1"))]);
        assert_eq!(
            d.memory.sync_barrier,
            Some(SyncBarrier {
                value: "n1".into(),
                seen_in_effect: false,
                lsn: None
            })
        );
        // Step 2: the setting is in effect; one more cycle for every process
        // of PostgreSQL to apply it.
        let seen = observed(leader(""), Some("n1"), vec![streaming("n1", 900)])
            .memory(|m| m.sync_barrier = d.memory.sync_barrier.clone())
            .run();
        assert_eq!(sync_actions(&seen), vec![]);
        assert_eq!(
            seen.memory.sync_barrier,
            Some(SyncBarrier {
                value: "n1".into(),
                seen_in_effect: true,
                lsn: None
            })
        );
        // Step 3: the barrier is the flush position read now (1000); n1 has
        // not flushed that far yet.
        let step2 = observed(leader(""), Some("n1"), vec![streaming("n1", 900)])
            .memory(|m| m.sync_barrier = seen.memory.sync_barrier.clone());
        let d2 = step2.run();
        assert_eq!(sync_actions(&d2), vec![]);
        assert_eq!(
            d2.memory.sync_barrier,
            Some(SyncBarrier {
                value: "n1".into(),
                seen_in_effect: true,
                lsn: Some(Lsn(1000))
            })
        );
        // Later commits moved the primary on, but n1 passed the barrier: listed.
        let d3 = observed(leader(""), Some("n1"), vec![streaming("n1", 1000)])
            .local_mut(|l| l.write_lsn = Some(Lsn(1500)))
            .memory(|m| m.sync_barrier = d2.memory.sync_barrier.clone())
            .run();
        assert_eq!(sync_actions(&d3), vec![write(Some("n1"))]);
    }

    #[test]
    fn the_barrier_waits_until_postgres_reports_the_setting() {
        let d = observed(leader(""), Some("n1"), vec![streaming("n1", 5000)])
            .local_mut(|l| l.sync_standby_names = Some(String::new()))
            .run();
        assert_eq!(sync_actions(&d), vec![]);
        assert_eq!(d.memory.sync_barrier.and_then(|b| b.lsn), None);
    }

    #[test]
    fn a_lost_standby_leaves_the_key_first_then_postgres() {
        let d = observed(leader("n1"), Some("n1"), vec![]).run();
        assert_eq!(sync_actions(&d), vec![write(None)]);
        // Non-strict: asynchronous once the key says nobody is synchronous.
        let d = observed(leader(""), Some("n1"), vec![]).run();
        assert_eq!(sync_actions(&d), vec![set(None)]);
        // Strict: commits wait for any standby instead.
        let strict = observed(leader(""), Some("n1"), vec![])
            .config(json!({"synchronous_mode": true, "synchronous_mode_strict": true}));
        assert_eq!(sync_actions(&strict.run()), vec![set(Some("*"))]);
    }

    #[test]
    fn a_replaced_standby_is_removed_before_another_is_added() {
        // n1 is gone, n3 streams: n1 leaves the key; n3 is not added yet.
        let d = observed(leader("n1"), Some("n1"), vec![streaming("n3", 1000)]).run();
        assert_eq!(sync_actions(&d), vec![write(None)]);
    }

    #[test]
    fn a_key_naming_another_leader_is_claimed_empty() {
        let d = observed(
            b().leader("n2").primary().held_lock().sync("n1", "n2,n3"),
            Some("n3"),
            vec![streaming("n3", 1000)],
        )
        .run();
        assert_eq!(sync_actions(&d), vec![write(None)]);
    }

    #[test]
    fn nosync_members_and_lagging_standbys_are_not_candidates() {
        let d = observed(
            leader(""),
            None,
            vec![streaming("n1", 1000), streaming("n3", 1000)],
        )
        .member_mut("n1", |m| m.data.tags.nosync = true)
        .run();
        assert_eq!(sync_actions(&d), vec![set(Some("n3"))]);
        let lagging = observed(
            leader(""),
            None,
            vec![streaming("n1", 10), streaming("n3", 1000)],
        )
        .config(json!({"synchronous_mode": true, "maximum_lag_on_syncnode": 100}))
        .run();
        assert_eq!(sync_actions(&lagging), vec![set(Some("n3"))]);
    }

    #[test]
    fn node_count_picks_several_standbys_by_priority() {
        let d = observed(
            leader(""),
            None,
            vec![streaming("n1", 1000), streaming("n3", 900)],
        )
        .config(json!({"synchronous_mode": true, "synchronous_node_count": 2}))
        .run();
        assert_eq!(sync_actions(&d), vec![set(Some("2 (n1,n3)"))]);
        let one = observed(
            leader(""),
            None,
            vec![streaming("n1", 1000), streaming("n3", 900)],
        )
        .member_mut("n3", |m| m.data.tags.sync_priority = Some(5))
        .run();
        assert_eq!(sync_actions(&one), vec![set(Some("n3"))]);
    }

    #[test]
    fn turning_the_mode_off_deletes_the_key_and_the_setting() {
        let d = observed(leader("n1"), Some("n1"), vec![streaming("n1", 1000)])
            .config(json!({"synchronous_mode": false}))
            .run();
        assert_eq!(
            sync_actions(&d),
            vec![Action::DeleteSync { mod_revision: 8 }, set(None)]
        );
        assert_eq!(d.memory.sync_barrier, None);
    }

    #[test]
    fn a_steady_state_writes_nothing() {
        let d = observed(leader("n1"), Some("n1"), vec![streaming("n1", 1000)])
            .memory(|m| {
                m.sync_barrier = Some(SyncBarrier {
                    value: "n1".into(),
                    seen_in_effect: true,
                    lsn: Some(Lsn(900)),
                })
            })
            .run();
        assert_eq!(sync_actions(&d), vec![]);
    }

    #[test]
    fn standby_names_are_sorted_and_quoted_when_needed() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(render_standby_names(&names(&["node2"])), "node2");
        assert_eq!(
            render_standby_names(&names(&["node3", "node2"])),
            "2 (node2,node3)"
        );
        assert_eq!(
            render_standby_names(&names(&["pg-1", "Node", "any"])),
            "3 (\"Node\",\"any\",\"pg-1\")"
        );
        assert_eq!(render_standby_names(&names(&["a\"b"])), "\"a\"\"b\"");
    }
}
