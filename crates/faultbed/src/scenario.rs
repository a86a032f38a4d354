//! The fault matrix F01-F20 (reliability-plan.md §3) and its runner.
//!
//! A run: build a bed, wait for one primary and streaming replicas, start the
//! workload, inject the scenario's faults, heal everything, wait (bounded) for
//! convergence, stop the workload, read every node and run the checker. The
//! expectations per scenario and mode are data ([`expectation`]); a safety
//! verdict is never relaxed by timing. On failure the operation history, the
//! fault events, the etcd dump, the report and every log are kept in a folder
//! whose path is printed. Randomness (soak, flapping, restart order) comes
//! from one seed that is printed and can be replayed.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::bed::{
    in_netns, BedError, BedSpec, Capabilities, Testbed, API_PORT, PG_PORT, PROXY_PORT, SCOPE,
};
use crate::checker::{check, proxy_fails_closed, proxy_switch_delay_ns, NodeFinal, Report};
use crate::history::{write_jsonl, FaultEvent, Op, Outcome};
use crate::workload::{connect, probe, query, read_ids, Workload, WorkloadSpec, CREATE_TABLE};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Async,
    Sync,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Async => "async",
            Mode::Sync => "sync",
        })
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "async" => Ok(Mode::Async),
            "sync" => Ok(Mode::Sync),
            o => Err(format!("unknown mode {o} (async|sync)")),
        }
    }
}

/// One row of the matrix.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    pub id: &'static str,
    pub name: &'static str,
    /// Part of the per-merge CI subset (async mode).
    pub ci: bool,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        id: "F01",
        name: "kill -9 primary host",
        ci: true,
    },
    Scenario {
        id: "F02",
        name: "SIGSTOP primary agent for 2*ttl",
        ci: true,
    },
    Scenario {
        id: "F03",
        name: "freeze primary host for 2*ttl",
        ci: true,
    },
    Scenario {
        id: "F04",
        name: "postmaster crash, agent alive",
        ci: false,
    },
    Scenario {
        id: "F05",
        name: "primary isolated from the other hosts",
        ci: true,
    },
    Scenario {
        id: "F06",
        name: "primary cut from replicas only (5432, 8008)",
        ci: false,
    },
    Scenario {
        id: "F07",
        name: "primary cut from etcd only (2379, 2380)",
        ci: false,
    },
    Scenario {
        id: "F08",
        name: "etcd member of the primary's host killed",
        ci: true,
    },
    Scenario {
        id: "F09",
        name: "etcd quorum loss (2 members SIGSTOPped 3*ttl)",
        ci: true,
    },
    Scenario {
        id: "F10",
        name: "etcd leader killed 3 times",
        ci: false,
    },
    Scenario {
        id: "F11",
        name: "agent wall clock +300s then -300s (libfaketime)",
        ci: false,
    },
    Scenario {
        id: "F12",
        name: "disk full on the primary (tmpfs)",
        ci: false,
    },
    Scenario {
        id: "F13",
        name: "slow replica (tbf 256kbit)",
        ci: false,
    },
    Scenario {
        id: "F14",
        name: "replica beyond maximum_lag_on_failover, then primary killed",
        ci: false,
    },
    Scenario {
        id: "F15",
        name: "primary and a replica killed together",
        ci: false,
    },
    Scenario {
        id: "F16",
        name: "flapping isolation of the primary",
        ci: false,
    },
    Scenario {
        id: "F17",
        name: "switchover under load",
        ci: true,
    },
    Scenario {
        id: "F18",
        name: "kill -9 of every host, restart in random order",
        ci: false,
    },
    Scenario {
        id: "F19",
        name: "diverged timeline: replication cut, primary killed, rejoin",
        ci: false,
    },
    Scenario {
        id: "F20",
        name: "proxy faults",
        ci: true,
    },
];

pub fn scenario(id: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.id.eq_ignore_ascii_case(id))
}

/// What a scenario allows and requires in a mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Expectation {
    /// Acknowledged writes may be lost (async failover: recorded, not failed).
    pub loss_allowed: bool,
    /// Two primaries may both acknowledge (async pause/freeze without a fence).
    pub dual_ack_allowed: bool,
    /// The primary and its timeline must not change.
    pub same_leader: bool,
}

pub fn expectation(id: &str, mode: Mode) -> Expectation {
    let async_mode = mode == Mode::Async;
    let (loss, dual, same) = match id {
        "F01" | "F05" | "F07" | "F12" | "F14" | "F15" | "F16" | "F19" => (async_mode, false, false),
        // The watchdog fences a primary whose agent is stopped (F02), so only a
        // frozen host, watchdog included, may show two primaries in async mode.
        "F02" | "F20" => (async_mode, false, false),
        "F03" => (async_mode, async_mode, false),
        "F04" | "F06" | "F08" | "F10" | "F11" | "F13" => (false, false, true),
        _ => (false, false, false),
    };
    Expectation {
        loss_allowed: loss,
        dual_ack_allowed: dual,
        same_leader: same,
    }
}

/// The outcome of one run.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioResult {
    pub id: String,
    pub mode: Mode,
    pub seed: u64,
    /// Set when the scenario could not run here (and why).
    pub skipped: Option<String>,
    pub passed: bool,
    pub violations: Vec<String>,
    pub notes: Vec<String>,
    pub report: Option<Report>,
    pub initial_primary: Option<String>,
    pub artifacts: Option<PathBuf>,
    pub duration_s: u64,
}

impl ScenarioResult {
    /// One line for the results table.
    pub fn row(&self) -> String {
        let status = if self.skipped.is_some() {
            "SKIP"
        } else if self.passed {
            "PASS"
        } else {
            "FAIL"
        };
        let (acks, lost, dual, unavail) = match &self.report {
            Some(r) => (
                r.ok.to_string(),
                r.lost.len().to_string(),
                r.dual_ack.as_ref().map_or("0".into(), |d| {
                    format!("{} acks / {} ms", d.stale_acks, d.window_ns / 1_000_000)
                }),
                format!(
                    "{:.1} s / {:.1} s",
                    r.unavailability_ns as f64 / 1e9,
                    r.proxied_unavailability_ns as f64 / 1e9
                ),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        let detail = self
            .skipped
            .clone()
            .unwrap_or_else(|| self.violations.join("; "));
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            self.id,
            self.mode,
            status,
            acks,
            lost,
            dual,
            unavail,
            detail.replace('|', "/")
        )
    }
}

pub const TABLE_HEADER: &str = "| scenario | mode | result | acked writes | acked lost | double-primary (stale acks / window) | unavailability (any path / proxy) | notes |\n|---|---|---|---|---|---|---|---|";

/// Runner settings.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub pgwarden_bin: PathBuf,
    pub artifacts_root: PathBuf,
    /// Keep artifacts even when the run passes.
    pub keep_artifacts: bool,
    /// Faults in one soak run.
    pub soak_steps: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            pgwarden_bin: crate::bed::default_pgwarden_bin(),
            artifacts_root: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/faultbed-artifacts"),
            keep_artifacts: false,
            soak_steps: 8,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error(transparent)]
    Bed(#[from] BedError),
    #[error("{0}")]
    Msg(String),
}

type Res<T> = Result<T, RunError>;

fn msg(s: impl Into<String>) -> RunError {
    RunError::Msg(s.into())
}

/// Pacing between fault steps. Not an assertion: the checker decides afterwards.
fn hold(d: Duration) {
    std::thread::sleep(d);
}

/// Probes every host from the client namespace.
fn probe_all(bed: &Testbed) -> Res<Vec<crate::workload::NodeProbe>> {
    let ips: Vec<String> = bed.hosts.iter().map(|h| h.ip.clone()).collect();
    Ok(in_netns(&bed.client_ns, || async move {
        let mut v = Vec::new();
        for ip in &ips {
            v.push(probe(ip).await);
        }
        v
    })?)
}

/// Waits for exactly one primary and every other host streaming on its timeline.
pub fn wait_ready(bed: &Testbed, within: Duration) -> Result<usize, String> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < within {
        match probe_all(bed) {
            Ok(p) => {
                let prim: Vec<usize> = (0..p.len())
                    .filter(|i| p[*i].reachable && !p[*i].in_recovery)
                    .collect();
                if prim.len() == 1 {
                    let tl = p[prim[0]].timeline;
                    let ok = (0..p.len()).filter(|i| *i != prim[0]).all(|i| {
                        p[i].reachable && p[i].in_recovery && p[i].streaming && p[i].timeline == tl
                    });
                    if ok {
                        return Ok(prim[0]);
                    }
                }
                last = format!("{p:?}");
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(format!(
        "cluster not ready after {within:?}; last probe: {last}"
    ))
}

/// Waits until some host other than `not` accepts writes; returns it.
fn wait_new_primary(bed: &Testbed, not: &[usize], within: Duration) -> Option<usize> {
    let start = Instant::now();
    while start.elapsed() < within {
        if let Ok(p) = probe_all(bed) {
            if let Some(i) =
                (0..p.len()).find(|i| !not.contains(i) && p[*i].reachable && !p[*i].in_recovery)
            {
                return Some(i);
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    None
}

fn sql_on(bed: &Testbed, i: usize, sql: &str) -> Res<Vec<Vec<Option<String>>>> {
    let ip = bed.hosts[i].ip.clone();
    let sql = sql.to_string();
    in_netns(&bed.client_ns, || async move {
        let c = connect(&ip).await?;
        query(&c, &sql).await
    })?
    .map_err(msg)
}

/// Waits until every replica replayed the primary's current WAL position.
fn wait_caught_up(bed: &Testbed, primary: usize, within: Duration) -> Res<()> {
    let lsn = sql_on(bed, primary, "select pg_current_wal_insert_lsn()::text")?
        .first()
        .and_then(|r| r[0].clone())
        .ok_or_else(|| msg("no lsn"))?;
    let start = Instant::now();
    for i in (0..bed.hosts.len()).filter(|i| *i != primary) {
        loop {
            let done = sql_on(
                bed,
                i,
                &format!("select (pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn)::text"),
            )
            .ok()
            .and_then(|r| r.first().and_then(|r| r[0].clone()))
                == Some("true".into());
            if done {
                break;
            }
            if start.elapsed() > within {
                return Err(msg(format!(
                    "{} did not replay up to {lsn}",
                    bed.hosts[i].name
                )));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    Ok(())
}

fn final_state(bed: &Testbed) -> Res<Vec<NodeFinal>> {
    let ips: Vec<(String, String)> = bed
        .hosts
        .iter()
        .map(|h| (h.name.clone(), h.ip.clone()))
        .collect();
    Ok(in_netns(&bed.client_ns, || async move {
        let mut v = Vec::new();
        for (name, ip) in &ips {
            let p = probe(ip).await;
            let ids = if p.reachable {
                read_ids(ip).await
            } else {
                None
            };
            v.push(NodeFinal {
                name: name.clone(),
                reachable: p.reachable && ids.is_some(),
                is_primary: p.reachable && !p.in_recovery,
                timeline: p.timeline,
                history: p.history,
                streaming: p.streaming,
                ids,
            });
        }
        v
    })?)
}

/// Brings every host back: network healed, nothing frozen or stopped, every process running.
fn heal_all(bed: &mut Testbed) -> Res<()> {
    bed.heal();
    for i in 0..bed.hosts.len() {
        bed.release(i);
        if bed.hosts[i].etcd_pid().is_none() {
            bed.start_etcd(i)?;
        }
        if bed.hosts[i].agent_pid().is_none() {
            bed.start_agent(i, None)?;
        }
    }
    Ok(())
}

fn name_of(bed: &Testbed, i: usize) -> String {
    bed.hosts[i].name.clone()
}

/// The fault script of scenario `id`; returns extra violations and notes.
fn inject(
    id: &str,
    mode: Mode,
    bed: &mut Testbed,
    p: usize,
    rng: &mut StdRng,
) -> Res<(Vec<String>, Vec<String>)> {
    let ttl = Duration::from_secs(bed.spec.ttl);
    let n = bed.hosts.len();
    let replicas: Vec<usize> = (0..n).filter(|i| *i != p).collect();
    let (r1, r2) = (replicas[0], replicas[1]);
    let mut bad = Vec::new();
    let mut notes = Vec::new();
    let failover_wait = ttl * 3 + Duration::from_secs(20);
    match id {
        "F01" => {
            bed.kill_host(p);
            match wait_new_primary(bed, &[p], failover_wait) {
                Some(i) => notes.push(format!("{} promoted", name_of(bed, i))),
                None => notes.push("no failover within the wait".into()),
            }
            hold(Duration::from_secs(5));
            bed.start_host(p)?;
        }
        "F02" => {
            bed.stop_agent(p)?;
            hold(ttl * 2);
            bed.cont_agent(p)?;
        }
        "F03" => {
            bed.freeze_host(p)?;
            hold(ttl * 2);
            bed.thaw_host(p)?;
        }
        "F04" => {
            bed.kill_postmaster(p)?;
            hold(Duration::from_secs(20));
        }
        "F05" => {
            bed.isolate(p)?;
            hold(ttl * 2 + Duration::from_secs(10));
        }
        "F06" => {
            bed.block(p, &replicas, Some(&[PG_PORT, API_PORT]), false)?;
            hold(Duration::from_secs(25));
        }
        "F07" => {
            bed.block(p, &replicas, Some(&[2379, 2380]), false)?;
            hold(ttl * 2 + Duration::from_secs(10));
        }
        "F08" => {
            bed.kill_etcd(p);
            hold(Duration::from_secs(20));
            bed.start_etcd(p)?;
            hold(Duration::from_secs(5));
        }
        "F09" => {
            bed.stop_etcd(r1)?;
            bed.stop_etcd(r2)?;
            hold(ttl * 3);
            bed.cont_etcd(r1)?;
            bed.cont_etcd(r2)?;
        }
        "F10" => {
            for _ in 0..3 {
                let Some(l) = bed.etcd_leader() else {
                    notes.push("etcd leader unknown".into());
                    hold(Duration::from_secs(3));
                    continue;
                };
                bed.kill_etcd(l);
                hold(Duration::from_secs(3));
                bed.start_etcd(l)?;
                hold(Duration::from_secs(5));
            }
        }
        "F11" => {
            bed.skew_agent_clock(p, "+300s")?;
            hold(Duration::from_secs(15));
            bed.skew_agent_clock(p, "-300s")?;
            hold(Duration::from_secs(15));
            bed.kill_agent(p);
            bed.start_agent(p, None)?;
        }
        "F12" => {
            bed.fill_disk(p)?;
            hold(Duration::from_secs(40));
            let probes = probe_all(bed)?;
            if probes[p].reachable && !probes[p].in_recovery {
                notes.push("full primary still primary after 40 s".into());
            }
            bed.clear_disk(p)?;
        }
        "F13" => {
            bed.slow_link(r1)?;
            let _ = sql_on(bed, p, "create table if not exists filler(g int, t text); insert into filler select g, repeat('x', 200) from generate_series(1, 20000) g");
            hold(Duration::from_secs(25));
        }
        "F14" => {
            // In sync mode the laggard is the replica that is not the sync
            // standby: blocking the sync standby would hold every commit
            // (strictly correct, but then nothing lags).
            let sync = (mode == Mode::Sync).then(|| sync_standby(bed)).flatten();
            let r1 = match sync {
                Some(s) if s == r1 => r2,
                _ => r1,
            };
            bed.block(p, &[r1], Some(&[PG_PORT]), false)?;
            sql_on(bed, p, "create table if not exists filler(g int, t text); insert into filler select g, repeat('x', 200) from generate_series(1, 30000) g")?;
            // Let the members publish their lag before the primary dies.
            hold(Duration::from_secs(5));
            bed.kill_host(p);
            match wait_new_primary(bed, &[p], failover_wait) {
                Some(i) if i == r1 => bad.push(format!(
                    "{} promoted although it lagged beyond maximum_lag_on_failover",
                    name_of(bed, i)
                )),
                Some(i) => notes.push(format!("{} promoted", name_of(bed, i))),
                None => bad.push("no failover to the healthy replica".into()),
            }
            bed.heal();
            bed.start_host(p)?;
        }
        "F15" => {
            // In sync mode, kill the primary together with its sync standby.
            let victim = if mode == Mode::Sync {
                sync_standby(bed).unwrap_or(r1)
            } else {
                r1
            };
            let survivor = if victim == r1 { r2 } else { r1 };
            bed.kill_host(p);
            bed.kill_host(victim);
            let promoted = wait_new_primary(bed, &[p, victim], failover_wait);
            match (mode, promoted) {
                (Mode::Sync, Some(i)) => bad.push(format!(
                    "{} (not the sync standby) promoted after primary and sync standby died",
                    name_of(bed, i)
                )),
                (Mode::Async, None) => {
                    notes.push(format!("{} did not promote", name_of(bed, survivor)))
                }
                _ => {}
            }
            bed.start_host(p)?;
            bed.start_host(victim)?;
        }
        "F16" => {
            let end = Instant::now() + Duration::from_secs(40);
            while Instant::now() < end {
                bed.isolate(p)?;
                hold(Duration::from_millis(rng.gen_range(500..5000)));
                bed.heal();
                hold(Duration::from_millis(rng.gen_range(500..5000)));
            }
        }
        "F17" => {
            let out = bed.switchover(p, r1)?;
            notes.push(format!("switchover answer: {}", out.trim()));
            hold(Duration::from_secs(20));
        }
        "F18" => {
            for i in 0..n {
                bed.kill_host(i);
            }
            let mut order: Vec<usize> = (0..n).collect();
            for k in (1..n).rev() {
                order.swap(k, rng.gen_range(0..=k));
            }
            for i in order {
                bed.start_host(i)?;
                hold(Duration::from_millis(rng.gen_range(0..3000)));
            }
        }
        "F19" => {
            bed.block(p, &replicas, Some(&[PG_PORT]), false)?;
            hold(Duration::from_secs(5));
            bed.kill_host(p);
            match wait_new_primary(bed, &[p], failover_wait) {
                Some(i) => notes.push(format!("{} promoted", name_of(bed, i))),
                None => notes.push("no promotion (stale replicas not eligible)".into()),
            }
            hold(Duration::from_secs(5));
            bed.heal();
            bed.start_host(p)?;
        }
        "F20" => {
            // (a) The proxy alone loses etcd: it must fail closed after its ttl.
            bed.cut_proxy_from_etcd()?;
            hold(ttl + Duration::from_secs(6));
            bed.heal();
            hold(Duration::from_secs(5));
            // (b) A failover behind the proxy: it must follow the new leader.
            bed.kill_host(p);
            match wait_new_primary(bed, &[p], failover_wait) {
                Some(i) => notes.push(format!("{} promoted", name_of(bed, i))),
                None => bad.push("no failover after the primary host died".into()),
            }
            hold(Duration::from_secs(5));
            bed.start_host(p)?;
        }
        other => return Err(msg(format!("no fault script for {other}"))),
    }
    Ok((bad, notes))
}

/// Waits until the primary's `synchronous_standby_names` names a standby.
fn wait_sync_standby(bed: &Testbed, p: usize, within: Duration) -> Res<String> {
    let start = Instant::now();
    loop {
        let v = sql_on(bed, p, "show synchronous_standby_names")
            .ok()
            .and_then(|r| r.first().and_then(|r| r[0].clone()))
            .unwrap_or_default();
        if !v.trim().is_empty() {
            return Ok(v);
        }
        if start.elapsed() > within {
            return Err(msg(format!(
                "synchronous mode not in effect: synchronous_standby_names still empty after {within:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The member named in the `/sync` key, if any.
fn sync_standby(bed: &Testbed) -> Option<usize> {
    let v = bed
        .etcdctl(&[
            "get",
            &format!("/service/{SCOPE}/sync"),
            "--print-value-only",
        ])
        .ok()?;
    let v: serde_json::Value = serde_json::from_str(v.trim()).ok()?;
    let name = v["sync_standby"].as_str()?.split(',').next()?.to_string();
    bed.index_of(&name)
}

/// Why a scenario cannot run on this machine or in this mode, if so.
pub fn skip_reason(id: &str, _mode: Mode, caps: &Capabilities) -> Option<String> {
    if let Some(m) = caps.missing() {
        return Some(format!("testbed needs {m}"));
    }
    match id {
        "F11" if caps.faketime.is_none() => {
            Some("libfaketime not installed (apt-get install faketime)".into())
        }
        _ => None,
    }
}

/// Runs one scenario in one mode. Never panics on a scenario failure: the
/// verdict is in the result (and artifacts are kept).
pub fn run_scenario(id: &str, mode: Mode, seed: u64, opts: &RunOptions) -> ScenarioResult {
    let started = Instant::now();
    let mut result = ScenarioResult {
        id: id.to_string(),
        mode,
        seed,
        skipped: None,
        passed: false,
        violations: Vec::new(),
        notes: Vec::new(),
        report: None,
        initial_primary: None,
        artifacts: None,
        duration_s: 0,
    };
    let caps = Capabilities::probe();
    let no_bin = (!opts.pgwarden_bin.exists()).then(|| {
        format!(
            "pgwarden binary {} missing (cargo build -p pgwarden, or set PGWARDEN_BIN)",
            opts.pgwarden_bin.display()
        )
    });
    if let Some(why) = skip_reason(id, mode, &caps).or(no_bin) {
        eprintln!("SKIP {id} {mode}: {why}");
        result.skipped = Some(why);
        return result;
    }
    let mut spec = BedSpec::new(opts.pgwarden_bin.clone());
    spec.synchronous_mode = mode == Mode::Sync;
    if id == "F12" {
        spec.tmpfs_mib = Some(400);
    }
    let mut ops: Vec<Op> = Vec::new();
    let mut bed_slot: Option<Testbed> = None;
    let outcome = run_inner(id, spec, opts, &mut bed_slot, &mut ops, &mut result);
    if let Err(e) = outcome {
        result.violations.push(format!("run error: {e}"));
    }
    result.passed = result.violations.is_empty();
    result.duration_s = started.elapsed().as_secs();
    if let Some(bed) = &bed_slot {
        if !result.passed || opts.keep_artifacts {
            result.artifacts = save_artifacts(bed, &ops, &result, opts);
        }
    }
    drop(bed_slot);
    eprintln!(
        "{} {id} {mode} seed={seed} in {} s{}",
        if result.passed { "PASS" } else { "FAIL" },
        result.duration_s,
        result
            .artifacts
            .as_ref()
            .map(|p| format!("; artifacts kept in {}", p.display()))
            .unwrap_or_default()
    );
    result
}

fn run_inner(
    id: &str,
    spec: BedSpec,
    opts: &RunOptions,
    bed_slot: &mut Option<Testbed>,
    ops: &mut Vec<Op>,
    result: &mut ScenarioResult,
) -> Res<()> {
    let (mode, seed) = (result.mode, result.seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let bed = bed_slot.insert(Testbed::build(spec)?);
    let p = wait_ready(bed, Duration::from_secs(180)).map_err(msg)?;
    result.initial_primary = Some(name_of(bed, p));
    sql_on(bed, p, CREATE_TABLE)?;
    // The table must exist on the replicas before a failover can happen.
    wait_caught_up(bed, p, Duration::from_secs(60))?;
    if mode == Mode::Sync {
        // Sync-mode verdicts mean nothing unless the primary really waits for a standby.
        let standby = wait_sync_standby(bed, p, Duration::from_secs(60))?;
        result
            .notes
            .push(format!("synchronous_standby_names = {standby}"));
    }
    let ips: Vec<String> = bed.hosts.iter().map(|h| h.ip.clone()).collect();
    let spec = WorkloadSpec {
        proxy: Some((bed.proxy.ip.clone(), PROXY_PORT)),
        ..WorkloadSpec::default()
    };
    let workload = Workload::start(&bed.client_ns, ips, bed.origin, spec);
    hold(Duration::from_secs(3));
    let fault_ns = bed.now_ns();
    let injected = if id == "SOAK" {
        soak(bed, &mut rng, opts.soak_steps)
    } else {
        inject(id, mode, bed, p, &mut rng)
    };
    let heal = heal_all(bed);
    let (bad, notes) = match injected {
        Ok(v) => v,
        Err(e) => (vec![format!("fault injection failed: {e}")], Vec::new()),
    };
    result.violations.extend(bad);
    result.notes.extend(notes);
    heal?;
    bed.event("healed");
    let ready = wait_ready(bed, Duration::from_secs(240));
    // A few seconds of writes on the converged cluster, then stop.
    hold(Duration::from_secs(3));
    let end_ns = bed.now_ns();
    *ops = workload.stop();
    let primary = ready.map_err(msg)?;
    wait_caught_up(bed, primary, Duration::from_secs(60))?;
    let nodes = final_state(bed)?;
    let report = check(ops, &nodes, fault_ns, end_ns);
    let exp = expectation(id, mode);
    // The soak pauses and kills primaries: in async mode loss and dual acks are measured, not failed.
    let soak_async = id == "SOAK" && mode == Mode::Async;
    result.violations.extend(report.violations(
        exp.loss_allowed || soak_async,
        exp.dual_ack_allowed || soak_async,
    ));
    if exp.same_leader {
        if result.initial_primary.as_deref() != Some(&name_of(bed, primary)) {
            result.violations.push(format!(
                "leader changed from {:?} to {}",
                result.initial_primary,
                name_of(bed, primary)
            ));
        }
        if report.timelines_with_acks.len() > 1 {
            result.violations.push(format!(
                "timeline changed: acks on {:?}",
                report.timelines_with_acks
            ));
        }
    }
    if report.ok == 0 {
        result
            .violations
            .push("the workload got no acknowledgement at all".into());
    }
    if report.proxied_ok == 0 {
        result
            .violations
            .push("no write through the proxy was acknowledged".into());
    }
    if id == "F20" {
        let ttl_ns = bed.spec.ttl * 1_000_000_000;
        match check_proxy_faults(ops, &bed.events, ttl_ns) {
            Ok(note) => result.notes.push(note),
            Err(e) => result.violations.push(e),
        }
    }
    result.report = Some(report);
    Ok(())
}

/// The proxy may need one confirmation interval past its ttl to notice it
/// lost etcd (it re-reads the leader every second).
const PROXY_FENCE_GRACE_NS: u64 = 1_500_000_000;

/// The plan's bound for new proxied writes reaching a new primary.
const PROXY_SWITCH_BOUND_NS: u64 = 2_000_000_000;

/// F20's verdicts, from the recorded fault events and operations.
fn check_proxy_faults(ops: &[Op], events: &[FaultEvent], ttl_ns: u64) -> Result<String, String> {
    let at = |what: &str, after: u64| {
        events
            .iter()
            .find(|e| e.at_ns >= after && e.what.starts_with(what))
            .map(|e| e.at_ns)
    };
    let cut = at("cut proxy from etcd", 0).ok_or("no proxy cut was recorded")?;
    let heal = at("heal network", cut).ok_or("the proxy cut was never healed")?;
    proxy_fails_closed(ops, cut, heal, ttl_ns, PROXY_FENCE_GRACE_NS)?;
    let kill = at("kill host", heal).ok_or("no primary kill was recorded")?;
    let old_tl = ops
        .iter()
        .filter(|o| o.outcome == Outcome::Ok && o.complete_ns < kill)
        .filter_map(|o| o.timeline)
        .max()
        .ok_or("no write acknowledged before the kill")?;
    let delay = proxy_switch_delay_ns(ops, old_tl)?;
    if delay > PROXY_SWITCH_BOUND_NS {
        return Err(format!(
            "the proxy reached the new primary {} ms after it first acknowledged a direct write (bound {} ms)",
            delay / 1_000_000,
            PROXY_SWITCH_BOUND_NS / 1_000_000
        ));
    }
    Ok(format!(
        "proxy failed closed while cut from etcd; reached the new primary {} ms after its first direct write",
        delay / 1_000_000
    ))
}

/// A seeded random sequence of faults on the current primary (or a random
/// host), each held 5-15 s and fully healed before the next.
fn soak(bed: &mut Testbed, rng: &mut StdRng, steps: usize) -> Res<(Vec<String>, Vec<String>)> {
    let mut notes = Vec::new();
    for step in 0..steps {
        let p = wait_ready(bed, Duration::from_secs(240)).map_err(msg)?;
        let n = bed.hosts.len();
        let other = (p + 1 + rng.gen_range(0..n - 1)) % n;
        let held = Duration::from_millis(rng.gen_range(5000..15000));
        let kind = rng.gen_range(0..8);
        notes.push(format!(
            "step {step}: fault {kind} on primary {} for {held:?}",
            name_of(bed, p)
        ));
        match kind {
            0 => bed.kill_host(p),
            1 => bed.stop_agent(p)?,
            2 => bed.freeze_host(p)?,
            3 => bed.isolate(p)?,
            4 => {
                let others: Vec<usize> = (0..n).filter(|i| *i != p).collect();
                bed.block(p, &others, Some(&[2379, 2380]), false)?
            }
            5 => bed.kill_etcd(other),
            6 => bed.kill_postmaster(p)?,
            _ => bed.slow_link(other)?,
        }
        hold(held);
        heal_all(bed)?;
    }
    Ok((Vec::new(), notes))
}

/// Runs the seeded soak (a random fault sequence) in one mode.
pub fn run_soak(mode: Mode, seed: u64, opts: &RunOptions) -> ScenarioResult {
    run_scenario("SOAK", mode, seed, opts)
}

fn save_artifacts(
    bed: &Testbed,
    ops: &[Op],
    result: &ScenarioResult,
    opts: &RunOptions,
) -> Option<PathBuf> {
    let dir = opts.artifacts_root.join(format!(
        "{}-{}-seed{}-{}",
        result.id, result.mode, result.seed, bed.prefix
    ));
    let save = || -> Result<(), BedError> {
        std::fs::create_dir_all(&dir)?;
        write_jsonl(std::fs::File::create(dir.join("history.jsonl"))?, ops)?;
        write_jsonl(
            std::fs::File::create(dir.join("faults.jsonl"))?,
            &bed.events,
        )?;
        std::fs::write(dir.join("etcd-dump.txt"), bed.etcd_dump())?;
        std::fs::write(
            dir.join("result.json"),
            serde_json::to_string_pretty(result).unwrap_or_default(),
        )?;
        bed.collect_logs(&dir.join("logs"))
    };
    match save() {
        Ok(()) => Some(dir),
        Err(e) => {
            eprintln!("could not save artifacts in {}: {e}", dir.display());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_has_a_script_or_a_skip() {
        assert_eq!(SCENARIOS.len(), 20);
        for s in SCENARIOS {
            assert!(scenario(s.id).is_some());
            let e = expectation(s.id, Mode::Sync);
            assert!(!e.loss_allowed, "{}: sync mode never allows loss", s.id);
            assert!(
                !e.dual_ack_allowed,
                "{}: sync mode never allows dual ack",
                s.id
            );
        }
        assert!(expectation("F01", Mode::Async).loss_allowed);
        assert!(expectation("F08", Mode::Async).same_leader);
        assert!(!expectation("F05", Mode::Async).dual_ack_allowed);
    }

    #[test]
    fn mode_parses() {
        assert_eq!("sync".parse::<Mode>(), Ok(Mode::Sync));
        assert!("both".parse::<Mode>().is_err());
    }
}
