//! The checker: a pure verdict over a run's operation history and the final
//! state read from every node after healing.
//!
//! Invariants (reliability-plan.md §4):
//! - I1 acknowledged writes missing from the final primary (`lost`);
//! - I2 dual-ack evidence: an acknowledged write on an older timeline whose
//!   invoke is later than the completion of an acknowledged write on a newer
//!   timeline proves two primaries acked at once (one monotonic clock, so no
//!   false positives). Counted separately for writes that went through the
//!   proxy, which must never show it: the proxy drops the old primary when
//!   the leader key changes;
//! - I3 every node's timeline history is a prefix of the final primary's;
//! - I6 every node back, streaming, with the primary's rows;
//! - I5 unavailability: the longest gap between consecutive acknowledgements
//!   after the first fault.
//!
//! No I/O, no clock: everything comes in as arguments, so it is unit-tested
//! with synthetic histories. It never weakens a verdict by timing tolerance.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::history::{Op, Outcome};
use crate::workload::PROXY_NODE;

/// One line of a PostgreSQL `NNNNNNNN.history` file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub parent_tl: u32,
    pub switchpoint: String,
}

/// Parses the text of a timeline history file (`1\t0/3000060\treason`).
pub fn parse_history(text: &str) -> Vec<HistoryEntry> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let tl = f.next()?.parse().ok()?;
            let lsn = f.next()?;
            Some(HistoryEntry {
                parent_tl: tl,
                switchpoint: lsn.to_string(),
            })
        })
        .collect()
}

/// What was read from one node after healing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFinal {
    pub name: String,
    pub reachable: bool,
    pub is_primary: bool,
    pub timeline: Option<u32>,
    /// Entries of the node's newest history file (empty on timeline 1).
    pub history: Vec<HistoryEntry>,
    /// A replica's WAL receiver is `streaming` (ignored for the primary).
    pub streaming: bool,
    /// Ids present in the workload table, when the node could be read.
    pub ids: Option<BTreeSet<i64>>,
}

/// A window during which two primaries acknowledged writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DualAck {
    /// Acknowledged writes on an older timeline invoked after a newer timeline acked.
    pub stale_acks: usize,
    /// `max invoke(stale) - min complete(newer)`, in nanoseconds.
    pub window_ns: u64,
}

/// The checker's findings. `violations()` lists what breaks an invariant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
    pub final_primary: Option<String>,
    /// Acknowledged ids missing from the final primary (I1).
    pub lost: Vec<i64>,
    /// Ids reported `failed` that are present anyway (classification or server bug).
    pub failed_but_present: Vec<i64>,
    /// Ids present that no client ever tried to write.
    pub phantom: Vec<i64>,
    /// Unknown outcomes that did commit.
    pub unknown_recovered: usize,
    /// I2 evidence, if any.
    pub dual_ack: Option<DualAck>,
    /// I2 evidence among writes that went through the proxy (never allowed).
    pub proxied_dual_ack: Option<DualAck>,
    /// Writes the proxy acknowledged.
    pub proxied_ok: usize,
    /// Nodes whose history is not a prefix of the final primary's (I3).
    pub history_inconsistent: Vec<String>,
    /// Nodes unreachable, not streaming, or with rows different from the primary (I6).
    pub not_converged: Vec<String>,
    /// Timelines that acknowledged writes.
    pub timelines_with_acks: Vec<u32>,
    /// Longest gap between consecutive acknowledgements after the first fault (I5).
    pub unavailability_ns: u64,
    /// The same, counting only writes through the proxy.
    pub proxied_unavailability_ns: u64,
}

impl Report {
    /// Invariant violations given what the scenario allows.
    pub fn violations(&self, allow_loss: bool, allow_dual_ack: bool) -> Vec<String> {
        let mut v = Vec::new();
        if self.final_primary.is_none() {
            v.push("no single final primary".to_string());
        }
        if !self.lost.is_empty() && !allow_loss {
            v.push(format!(
                "{} acknowledged writes lost (e.g. {:?})",
                self.lost.len(),
                &self.lost[..self.lost.len().min(5)]
            ));
        }
        if let Some(d) = &self.dual_ack {
            if !allow_dual_ack {
                v.push(format!(
                    "two primaries acknowledged writes: {} stale acks over {} ms",
                    d.stale_acks,
                    d.window_ns / 1_000_000
                ));
            }
        }
        if let Some(d) = &self.proxied_dual_ack {
            v.push(format!(
                "the proxy sent writes to an old primary after the new one acknowledged: {} stale acks over {} ms",
                d.stale_acks,
                d.window_ns / 1_000_000
            ));
        }
        if !self.failed_but_present.is_empty() {
            v.push(format!(
                "{} writes reported failed are present (e.g. {:?})",
                self.failed_but_present.len(),
                &self.failed_but_present[..self.failed_but_present.len().min(5)]
            ));
        }
        if !self.phantom.is_empty() {
            v.push(format!("{} phantom rows", self.phantom.len()));
        }
        if !self.history_inconsistent.is_empty() {
            v.push(format!(
                "timeline history not a prefix of the primary's on {:?}",
                self.history_inconsistent
            ));
        }
        if !self.not_converged.is_empty() {
            v.push(format!("not converged: {:?}", self.not_converged));
        }
        v
    }
}

/// Node `n`'s history is a prefix of the primary's `p`: same entries up to
/// its length, and it sits either on the primary's timeline or on the parent
/// timeline of the primary's next entry.
pub fn history_is_prefix(
    n_tl: u32,
    n_hist: &[HistoryEntry],
    p_tl: u32,
    p_hist: &[HistoryEntry],
) -> bool {
    if n_hist.len() > p_hist.len() || p_hist[..n_hist.len()] != *n_hist {
        return false;
    }
    if n_hist.len() == p_hist.len() {
        n_tl == p_tl
    } else {
        p_hist[n_hist.len()].parent_tl == n_tl
    }
}

/// Dual-ack evidence over the acknowledged operations (see module docs).
pub fn dual_ack(ops: &[Op]) -> Option<DualAck> {
    dual_ack_among(ops, |_| true)
}

/// Dual-ack evidence where the stale write is one `suspect` selects; the
/// newer timeline's first acknowledgement may come from any path.
pub fn dual_ack_among(ops: &[Op], suspect: impl Fn(&Op) -> bool) -> Option<DualAck> {
    // Earliest acknowledgement per timeline, then the earliest on any newer timeline.
    let mut first_ack: BTreeMap<u32, u64> = BTreeMap::new();
    for op in ops.iter().filter(|o| o.outcome == Outcome::Ok) {
        if let Some(tl) = op.timeline {
            let e = first_ack.entry(tl).or_insert(op.complete_ns);
            *e = (*e).min(op.complete_ns);
        }
    }
    let mut newer_min: BTreeMap<u32, u64> = BTreeMap::new();
    let mut running = u64::MAX;
    for (tl, t) in first_ack.iter().rev() {
        newer_min.insert(*tl, running);
        running = running.min(*t);
    }
    let mut stale = 0usize;
    let mut max_invoke = 0u64;
    let mut min_complete = u64::MAX;
    for op in ops
        .iter()
        .filter(|o| o.outcome == Outcome::Ok && suspect(o))
    {
        let Some(tl) = op.timeline else { continue };
        let newer = newer_min.get(&tl).copied().unwrap_or(u64::MAX);
        if newer != u64::MAX && op.invoke_ns > newer {
            stale += 1;
            max_invoke = max_invoke.max(op.invoke_ns);
            min_complete = min_complete.min(newer);
        }
    }
    (stale > 0).then(|| DualAck {
        stale_acks: stale,
        window_ns: max_invoke.saturating_sub(min_complete),
    })
}

/// Longest gap between consecutive acknowledgements after `from_ns`
/// (counting from `from_ns` itself up to `until_ns` when nothing is acked).
pub fn unavailability(ops: &[Op], from_ns: u64, until_ns: u64) -> u64 {
    let mut acks: Vec<u64> = ops
        .iter()
        .filter(|o| o.outcome == Outcome::Ok && o.complete_ns >= from_ns)
        .map(|o| o.complete_ns)
        .collect();
    acks.sort_unstable();
    let mut prev = from_ns;
    let mut gap = 0;
    for t in acks {
        gap = gap.max(t - prev);
        prev = t;
    }
    gap.max(until_ns.saturating_sub(prev))
}

/// The full verdict. `fault_ns`/`end_ns` bound the unavailability measurement.
pub fn check(ops: &[Op], nodes: &[NodeFinal], fault_ns: u64, end_ns: u64) -> Report {
    let mut r = Report::default();
    for op in ops {
        match op.outcome {
            Outcome::Ok => r.ok += 1,
            Outcome::Failed => r.failed += 1,
            Outcome::Unknown => r.unknown += 1,
        }
    }
    let primaries: Vec<&NodeFinal> = nodes
        .iter()
        .filter(|n| n.reachable && n.is_primary)
        .collect();
    let primary = (primaries.len() == 1).then(|| primaries[0]);
    r.final_primary = primary.map(|p| p.name.clone());
    let empty = BTreeSet::new();
    let final_ids = primary.and_then(|p| p.ids.as_ref()).unwrap_or(&empty);
    let attempted: BTreeSet<i64> = ops.iter().map(|o| o.id).collect();
    for op in ops {
        let present = final_ids.contains(&op.id);
        match op.outcome {
            Outcome::Ok if !present => r.lost.push(op.id),
            Outcome::Failed if present => r.failed_but_present.push(op.id),
            Outcome::Unknown if present => r.unknown_recovered += 1,
            _ => {}
        }
    }
    r.lost.sort_unstable();
    r.failed_but_present.sort_unstable();
    r.phantom = final_ids.difference(&attempted).copied().collect();
    r.dual_ack = dual_ack(ops);
    let proxied = |o: &Op| o.node == PROXY_NODE;
    r.proxied_dual_ack = dual_ack_among(ops, proxied);
    r.proxied_ok = ops
        .iter()
        .filter(|o| o.outcome == Outcome::Ok && proxied(o))
        .count();
    let tls: BTreeSet<u32> = ops
        .iter()
        .filter(|o| o.outcome == Outcome::Ok)
        .filter_map(|o| o.timeline)
        .collect();
    r.timelines_with_acks = tls.into_iter().collect();
    if let Some(p) = primary {
        let p_tl = p.timeline.unwrap_or(0);
        for n in nodes {
            if !n.reachable {
                r.not_converged.push(format!("{}: unreachable", n.name));
                continue;
            }
            let n_tl = n.timeline.unwrap_or(0);
            if !history_is_prefix(n_tl, &n.history, p_tl, &p.history) {
                r.history_inconsistent.push(n.name.clone());
            }
            if n.name == p.name {
                continue;
            }
            if !n.streaming {
                r.not_converged.push(format!("{}: not streaming", n.name));
            } else if n.ids.as_ref() != Some(final_ids) {
                r.not_converged
                    .push(format!("{}: rows differ from the primary", n.name));
            }
        }
    }
    r.unavailability_ns = unavailability(ops, fault_ns, end_ns);
    let via_proxy: Vec<Op> = ops.iter().filter(|o| proxied(o)).cloned().collect();
    if !via_proxy.is_empty() {
        r.proxied_unavailability_ns = unavailability(&via_proxy, fault_ns, end_ns);
    }
    r
}

/// F20 (a): the proxy, cut from etcd at `cut_ns`, must stop acknowledging
/// writes once its own deadline (`ttl_ns` after its last confirmation, plus
/// `grace_ns` for its confirmation interval) has passed, until `heal_ns`; and
/// it must serve writes again after the heal.
pub fn proxy_fails_closed(
    ops: &[Op],
    cut_ns: u64,
    heal_ns: u64,
    ttl_ns: u64,
    grace_ns: u64,
) -> Result<(), String> {
    let proxied_ok = |o: &&Op| o.node == PROXY_NODE && o.outcome == Outcome::Ok;
    let closed_from = cut_ns + ttl_ns + grace_ns;
    let late: Vec<&Op> = ops
        .iter()
        .filter(proxied_ok)
        .filter(|o| o.invoke_ns >= closed_from && o.complete_ns <= heal_ns)
        .collect();
    if let Some(first) = late.first() {
        return Err(format!(
            "the proxy acknowledged {} writes while cut from etcd past its ttl (first invoked {} ms after the cut)",
            late.len(),
            first.invoke_ns.saturating_sub(cut_ns) / 1_000_000
        ));
    }
    if !ops.iter().filter(proxied_ok).any(|o| o.invoke_ns > heal_ns) {
        return Err("the proxy served no write after it could reach etcd again".into());
    }
    Ok(())
}

/// F20 (b): how long after the first direct acknowledgement on a timeline
/// newer than `old_tl` the proxy acknowledged its first write there.
pub fn proxy_switch_delay_ns(ops: &[Op], old_tl: u32) -> Result<u64, String> {
    let first = |via_proxy: bool| {
        ops.iter()
            .filter(|o| o.outcome == Outcome::Ok && (o.node == PROXY_NODE) == via_proxy)
            .filter(|o| o.timeline.is_some_and(|t| t > old_tl))
            .map(|o| o.complete_ns)
            .min()
    };
    match (first(false), first(true)) {
        (Some(direct), Some(proxied)) => Ok(proxied.saturating_sub(direct)),
        (None, _) => Err(format!(
            "no direct write acknowledged after timeline {old_tl}"
        )),
        (_, None) => Err(format!(
            "the proxy acknowledged no write after timeline {old_tl}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn via_proxy(mut o: Op) -> Op {
        o.node = PROXY_NODE.into();
        o
    }

    #[test]
    fn proxied_dual_ack_counts_only_proxied_stale_writes() {
        let ops = vec![
            op(1, 0, 10, Outcome::Ok, 1),
            op(2, 100, 110, Outcome::Ok, 2),
            // A direct write to the old primary after the new one acked.
            op(3, 120, 130, Outcome::Ok, 1),
        ];
        let r = check(&ops, &healthy_nodes(&[1, 2, 3]), 0, 200);
        assert!(r.dual_ack.is_some());
        assert_eq!(r.proxied_dual_ack, None);
        let mut ops = ops;
        ops.push(via_proxy(op(4, 140, 150, Outcome::Ok, 1)));
        let r = check(&ops, &healthy_nodes(&[1, 2, 3, 4]), 0, 200);
        assert_eq!(r.proxied_dual_ack.as_ref().map(|d| d.stale_acks), Some(1));
        assert_eq!(r.proxied_ok, 1);
        // Never allowed, whatever the scenario allows for direct writes.
        assert!(r
            .violations(true, true)
            .iter()
            .any(|v| v.contains("the proxy sent writes to an old primary")));
    }

    #[test]
    fn proxy_must_fail_closed_while_cut_from_etcd() {
        let ttl = 1000;
        // Acks before the deadline and after the heal are fine.
        let good = vec![
            via_proxy(op(1, 100, 110, Outcome::Ok, 1)),
            via_proxy(op(2, 1_500, 1_900, Outcome::Unknown, 1)),
            via_proxy(op(3, 3_100, 3_110, Outcome::Ok, 1)),
        ];
        assert_eq!(proxy_fails_closed(&good, 0, 3_000, ttl, 200), Ok(()));
        let mut late = good.clone();
        late.push(via_proxy(op(4, 2_000, 2_010, Outcome::Ok, 1)));
        assert!(proxy_fails_closed(&late, 0, 3_000, ttl, 200)
            .unwrap_err()
            .contains("1 writes"));
        let never_back = &good[..2];
        assert!(proxy_fails_closed(never_back, 0, 3_000, ttl, 200)
            .unwrap_err()
            .contains("no write after"));
    }

    #[test]
    fn switch_delay_is_measured_from_the_first_direct_ack() {
        let ops = vec![
            op(1, 0, 10, Outcome::Ok, 1),
            op(2, 500, 600, Outcome::Ok, 2),
            via_proxy(op(3, 700, 900, Outcome::Ok, 2)),
            via_proxy(op(4, 950, 1_000, Outcome::Ok, 2)),
        ];
        assert_eq!(proxy_switch_delay_ns(&ops, 1), Ok(300));
        assert!(proxy_switch_delay_ns(&ops[..2], 1).is_err());
    }

    fn op(id: i64, inv: u64, comp: u64, outcome: Outcome, tl: u32) -> Op {
        Op {
            id,
            client: 0,
            invoke_ns: inv,
            complete_ns: comp,
            outcome,
            node: "n".into(),
            timeline: Some(tl),
            lsn: None,
            error: None,
        }
    }

    fn node(name: &str, primary: bool, tl: u32, hist: &[(u32, &str)], ids: &[i64]) -> NodeFinal {
        NodeFinal {
            name: name.into(),
            reachable: true,
            is_primary: primary,
            timeline: Some(tl),
            history: hist
                .iter()
                .map(|(t, l)| HistoryEntry {
                    parent_tl: *t,
                    switchpoint: l.to_string(),
                })
                .collect(),
            streaming: !primary,
            ids: Some(ids.iter().copied().collect()),
        }
    }

    fn healthy_nodes(ids: &[i64]) -> Vec<NodeFinal> {
        let h = [(1, "0/5000000")];
        vec![
            node("h1", false, 2, &h, ids),
            node("h2", true, 2, &h, ids),
            node("h3", false, 2, &h, ids),
        ]
    }

    #[test]
    fn clean_run_has_no_violations() {
        let ops = vec![
            op(1, 0, 10, Outcome::Ok, 1),
            op(2, 20, 30, Outcome::Unknown, 1),
            op(3, 40, 50, Outcome::Failed, 1),
            op(4, 100, 110, Outcome::Ok, 2),
        ];
        let r = check(&ops, &healthy_nodes(&[1, 4]), 0, 120);
        assert_eq!(r.violations(false, false), Vec::<String>::new());
        assert_eq!((r.ok, r.failed, r.unknown), (2, 1, 1));
        assert_eq!(r.final_primary.as_deref(), Some("h2"));
        assert_eq!(r.timelines_with_acks, vec![1, 2]);
        // Gaps after fault at 0: 0->10, 10->110, 110->end 120.
        assert_eq!(r.unavailability_ns, 100);
    }

    #[test]
    fn catches_a_lost_acknowledged_write() {
        let ops = vec![op(1, 0, 10, Outcome::Ok, 1), op(2, 20, 30, Outcome::Ok, 1)];
        let r = check(&ops, &healthy_nodes(&[1]), 0, 40);
        assert_eq!(r.lost, vec![2]);
        assert_eq!(r.violations(false, false).len(), 1);
        assert!(r.violations(true, false).is_empty(), "async may lose");
    }

    #[test]
    fn catches_failed_but_present_and_phantoms() {
        let ops = vec![op(1, 0, 10, Outcome::Failed, 1)];
        let r = check(&ops, &healthy_nodes(&[1, 99]), 0, 20);
        assert_eq!(r.failed_but_present, vec![1]);
        assert_eq!(r.phantom, vec![99]);
        assert_eq!(r.violations(true, true).len(), 2);
    }

    #[test]
    fn catches_a_double_primary_overlap() {
        // TL2 acked at t=100; the old primary (TL1) acked a write invoked at 150 and 170.
        let ops = vec![
            op(1, 0, 10, Outcome::Ok, 1),
            op(2, 90, 100, Outcome::Ok, 2),
            op(3, 150, 160, Outcome::Ok, 1),
            op(4, 170, 180, Outcome::Ok, 1),
            // Invoked before TL2 acked: concurrent, not evidence.
            op(5, 95, 200, Outcome::Ok, 1),
        ];
        let d = dual_ack(&ops).expect("overlap detected");
        assert_eq!(d.stale_acks, 2);
        assert_eq!(d.window_ns, 70);
        let r = check(&ops, &healthy_nodes(&[1, 2, 3, 4, 5]), 0, 200);
        assert_eq!(r.violations(false, false).len(), 1);
        assert!(r.violations(false, true).is_empty());
    }

    #[test]
    fn no_dual_ack_when_old_timeline_stops_first() {
        let ops = vec![op(1, 0, 10, Outcome::Ok, 1), op(2, 20, 30, Outcome::Ok, 2)];
        assert_eq!(dual_ack(&ops), None);
    }

    #[test]
    fn catches_a_non_prefix_history() {
        let ids = [1];
        let nodes = vec![
            node("h1", true, 3, &[(1, "0/5000000"), (2, "0/6000000")], &ids),
            // Forked from TL1 at another point: not a prefix.
            node("h2", false, 2, &[(1, "0/5100000")], &ids),
            // On TL2 but the primary left TL2 for TL3: a prefix (catching up).
            node("h3", false, 2, &[(1, "0/5000000")], &ids),
        ];
        let r = check(&[op(1, 0, 1, Outcome::Ok, 3)], &nodes, 0, 2);
        assert_eq!(r.history_inconsistent, vec!["h2".to_string()]);
    }

    #[test]
    fn prefix_rule() {
        let e = |t, l: &str| HistoryEntry {
            parent_tl: t,
            switchpoint: l.into(),
        };
        assert!(history_is_prefix(1, &[], 1, &[]));
        assert!(history_is_prefix(1, &[], 2, &[e(1, "0/1")]));
        assert!(!history_is_prefix(2, &[], 2, &[e(1, "0/1")]));
        assert!(!history_is_prefix(3, &[e(1, "0/1")], 2, &[e(1, "0/1")]));
    }

    #[test]
    fn catches_unconverged_nodes() {
        let mut nodes = healthy_nodes(&[1]);
        nodes[0].streaming = false;
        nodes[2].ids = Some([1, 2].into_iter().collect());
        let r = check(&[op(1, 0, 1, Outcome::Ok, 2)], &nodes, 0, 2);
        assert_eq!(r.not_converged.len(), 2);
        nodes[0].reachable = false;
        nodes[1].reachable = false;
        let r = check(&[op(1, 0, 1, Outcome::Ok, 2)], &nodes, 0, 2);
        assert!(r.final_primary.is_none());
        assert_eq!(r.lost, vec![1]);
    }

    #[test]
    fn parses_history_files() {
        let h = parse_history("1\t0/3000060\tno recovery target specified\n\n2\t0/5000000\tx\n");
        assert_eq!(h.len(), 2);
        assert_eq!(h[1].parent_tl, 2);
        assert_eq!(h[0].switchpoint, "0/3000060");
    }
}
