//! The dynamic configuration stored in the `config` key (seeded from `bootstrap.dcs`).
//!
//! The raw JSON stays the source of truth (unknown keys are kept for Patroni
//! peers); `DynamicConfig` is the typed view pgwarden acts on. Parsing rejects
//! bad values with an error that names the key and the allowed range instead of
//! silently correcting them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::yaml_bool::{coerce_bool, coerce_i64, coerce_seconds};

/// `synchronous_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SynchronousMode {
    #[default]
    Off,
    On,
    Quorum,
}

/// A dynamic configuration value that is out of range or of the wrong kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct DynamicConfigError {
    /// Dotted key path, e.g. `ttl` or `postgresql.use_slots`.
    pub key: String,
    pub problem: String,
}

/// Timing rule checks shared by local config validation and `PATCH /config`.
pub struct TimingRules;

impl TimingRules {
    /// `loop_wait + 2 * retry_timeout <= ttl`: guarantees a primary that cannot
    /// reach the store demotes before its leader key can expire.
    pub fn check(
        ttl: u64,
        loop_wait: Duration,
        retry_timeout: Duration,
    ) -> Result<(), DynamicConfigError> {
        let needed = loop_wait + 2 * retry_timeout;
        if needed > Duration::from_secs(ttl) {
            let needed_secs = needed.as_secs() + u64::from(needed.subsec_nanos() > 0);
            return Err(DynamicConfigError {
                key: "ttl".into(),
                problem: format!(
                    "loop_wait + 2*retry_timeout must not exceed ttl, but {} + 2*{} = {} > {ttl}; \
                     raise ttl to at least {needed_secs} or lower loop_wait/retry_timeout",
                    display_seconds(loop_wait),
                    display_seconds(retry_timeout),
                    display_seconds(needed),
                ),
            });
        }
        Ok(())
    }
}

/// Renders a duration in seconds the way the `config` key spells it: `1`, `0.5`.
pub fn display_seconds(duration: Duration) -> String {
    seconds_value(duration).to_string()
}

/// A duration as a JSON number of seconds: an integer when whole (what Patroni
/// peers expect), a fraction otherwise (pgwarden's sub-second timings).
pub fn seconds_value(duration: Duration) -> Value {
    if duration.subsec_millis() == 0 {
        Value::from(duration.as_secs())
    } else {
        Value::from(duration.as_millis() as f64 / 1000.0)
    }
}

/// Typed view of the dynamic configuration with Patroni's defaults.
///
/// pgwarden's own defaults for timing are tighter than Patroni's (ttl 30,
/// loop_wait 10, retry_timeout 10) because the agent reacts to watches and
/// fences on its own monotonic clock; see `docs/configuration.md`.
#[derive(Debug, Clone, PartialEq)]
pub struct DynamicConfig {
    pub ttl: u64,
    /// Seconds between cycles; fractions (`0.5`) are a pgwarden extension
    /// that lets the fast profile run at a `ttl` of 2 s.
    pub loop_wait: Duration,
    /// Timeout of one store request; fractions allowed as for `loop_wait`.
    pub retry_timeout: Duration,
    pub maximum_lag_on_failover: u64,
    pub maximum_lag_on_syncnode: i64,
    pub primary_start_timeout: u64,
    pub primary_stop_timeout: u64,
    pub synchronous_mode: SynchronousMode,
    pub synchronous_mode_strict: bool,
    pub synchronous_node_count: u32,
    pub failsafe_mode: bool,
    pub check_timeline: bool,
    pub pause: bool,
    pub max_timelines_history: u64,
    pub member_slots_ttl: u64,
    pub use_pg_rewind: bool,
    pub use_slots: bool,
    pub remove_data_directory_on_rewind_failure: bool,
    pub remove_data_directory_on_diverged_timelines: bool,
    /// `postgresql.parameters`, values rendered as strings.
    pub parameters: BTreeMap<String, String>,
    /// `postgresql.pg_hba` lines, when set dynamically.
    pub pg_hba: Option<Vec<String>>,
}

impl Default for DynamicConfig {
    fn default() -> Self {
        DynamicConfig {
            ttl: Self::DEFAULT_TTL,
            loop_wait: Self::DEFAULT_LOOP_WAIT,
            retry_timeout: Self::DEFAULT_RETRY_TIMEOUT,
            maximum_lag_on_failover: 1_048_576,
            maximum_lag_on_syncnode: -1,
            primary_start_timeout: 300,
            primary_stop_timeout: 0,
            synchronous_mode: SynchronousMode::Off,
            synchronous_mode_strict: false,
            synchronous_node_count: 1,
            failsafe_mode: false,
            check_timeline: false,
            pause: false,
            max_timelines_history: 0,
            member_slots_ttl: 1800,
            use_pg_rewind: false,
            use_slots: true,
            remove_data_directory_on_rewind_failure: false,
            remove_data_directory_on_diverged_timelines: false,
            parameters: BTreeMap::new(),
            pg_hba: None,
        }
    }
}

/// Keys of the dynamic configuration pgwarden understands (top level).
pub const DYNAMIC_KEYS: &[&str] = &[
    "ttl",
    "loop_wait",
    "retry_timeout",
    "maximum_lag_on_failover",
    "maximum_lag_on_syncnode",
    "primary_start_timeout",
    "master_start_timeout",
    "primary_stop_timeout",
    "master_stop_timeout",
    "synchronous_mode",
    "synchronous_mode_strict",
    "synchronous_node_count",
    "failsafe_mode",
    "check_timeline",
    "pause",
    "max_timelines_history",
    "member_slots_ttl",
    "postgresql",
    "slots",
    "permanent_slots",
    "permanent_replication_slots",
    "ignore_slots",
    "standby_cluster",
    "primary_race_backoff",
];

impl DynamicConfig {
    /// pgwarden's default `ttl` in seconds.
    pub const DEFAULT_TTL: u64 = 4;
    /// pgwarden's default `loop_wait`.
    pub const DEFAULT_LOOP_WAIT: Duration = Duration::from_secs(1);
    /// pgwarden's default `retry_timeout`.
    pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(1);
    /// The shortest `loop_wait` and `retry_timeout` accepted.
    pub const MIN_SUBSECOND: Duration = Duration::from_millis(100);

    /// Parses and validates a `config` JSON object.
    pub fn from_json(value: &Value) -> Result<DynamicConfig, DynamicConfigError> {
        let mut cfg = DynamicConfig::default();
        let Some(map) = value.as_object() else {
            if value.is_null() {
                return Ok(cfg);
            }
            return Err(err("config", format!("must be a mapping, got {value}")));
        };
        let int = |key: &str, min: i64| -> Result<Option<i64>, DynamicConfigError> {
            match map.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => {
                    let n = coerce_i64(v)
                        .ok_or_else(|| err(key, format!("expected an integer, got {v}")))?;
                    if n < min {
                        return Err(err(key, format!("must be at least {min}, got {n}")));
                    }
                    Ok(Some(n))
                }
            }
        };
        let boolean = |key: &str| -> Result<Option<bool>, DynamicConfigError> {
            match map.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => coerce_bool(v).map(Some).ok_or_else(|| {
                    err(
                        key,
                        format!("expected a boolean (true/false/on/off), got {v}"),
                    )
                }),
            }
        };
        let unsigned = |n: i64| u64::try_from(n).unwrap_or(0);
        let seconds = |key: &str| -> Result<Option<Duration>, DynamicConfigError> {
            match map.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => {
                    let secs = coerce_seconds(v).ok_or_else(|| {
                        err(
                            key,
                            format!("expected a number of seconds (1, 0.5), got {v}"),
                        )
                    })?;
                    let duration = Duration::from_millis((secs * 1000.0).round() as u64);
                    if !(secs.is_finite() && duration >= Self::MIN_SUBSECOND) || secs > 86_400.0 {
                        return Err(err(
                            key,
                            format!("must be between 0.1 and 86400 seconds, got {v}"),
                        ));
                    }
                    Ok(Some(duration))
                }
            }
        };

        if let Some(n) = int("ttl", 2)? {
            cfg.ttl = unsigned(n);
        }
        if let Some(d) = seconds("loop_wait")? {
            cfg.loop_wait = d;
        }
        if let Some(d) = seconds("retry_timeout")? {
            cfg.retry_timeout = d;
        }
        if let Some(n) = int("maximum_lag_on_failover", 0)? {
            cfg.maximum_lag_on_failover = unsigned(n);
        }
        if let Some(n) = int("maximum_lag_on_syncnode", -1)? {
            cfg.maximum_lag_on_syncnode = n;
        }
        if let Some(n) = int("master_start_timeout", 0)? {
            cfg.primary_start_timeout = unsigned(n);
        }
        if let Some(n) = int("primary_start_timeout", 0)? {
            cfg.primary_start_timeout = unsigned(n);
        }
        if let Some(n) = int("master_stop_timeout", 0)? {
            cfg.primary_stop_timeout = unsigned(n);
        }
        if let Some(n) = int("primary_stop_timeout", 0)? {
            cfg.primary_stop_timeout = unsigned(n);
        }
        if let Some(n) = int("synchronous_node_count", 1)? {
            cfg.synchronous_node_count = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some(n) = int("max_timelines_history", 0)? {
            cfg.max_timelines_history = unsigned(n);
        }
        if let Some(v) = map.get("member_slots_ttl") {
            cfg.member_slots_ttl = parse_seconds(v).ok_or_else(|| {
                err(
                    "member_slots_ttl",
                    format!("expected seconds or a duration like 30min, got {v}"),
                )
            })?;
        }
        if let Some(v) = map.get("synchronous_mode") {
            cfg.synchronous_mode = match v {
                Value::String(s) if s.eq_ignore_ascii_case("quorum") => SynchronousMode::Quorum,
                Value::Null => SynchronousMode::Off,
                other => match coerce_bool(other) {
                    Some(true) => SynchronousMode::On,
                    Some(false) => SynchronousMode::Off,
                    None => {
                        return Err(err(
                            "synchronous_mode",
                            format!("expected on, off or quorum, got {other}"),
                        ))
                    }
                },
            };
        }
        if let Some(b) = boolean("synchronous_mode_strict")? {
            cfg.synchronous_mode_strict = b;
        }
        if let Some(b) = boolean("failsafe_mode")? {
            cfg.failsafe_mode = b;
        }
        if let Some(b) = boolean("check_timeline")? {
            cfg.check_timeline = b;
        }
        if let Some(b) = boolean("pause")? {
            cfg.pause = b;
        }
        if let Some(pg) = map.get("postgresql") {
            cfg.read_postgresql_section(pg)?;
        }
        TimingRules::check(cfg.ttl, cfg.loop_wait, cfg.retry_timeout)?;
        Ok(cfg)
    }

    fn read_postgresql_section(&mut self, pg: &Value) -> Result<(), DynamicConfigError> {
        let Some(pg) = pg.as_object() else {
            if pg.is_null() {
                return Ok(());
            }
            return Err(err("postgresql", format!("must be a mapping, got {pg}")));
        };
        let flag = |key: &str| -> Result<Option<bool>, DynamicConfigError> {
            match pg.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => coerce_bool(v).map(Some).ok_or_else(|| {
                    err(
                        &format!("postgresql.{key}"),
                        format!("expected a boolean (true/false/on/off), got {v}"),
                    )
                }),
            }
        };
        if let Some(b) = flag("use_pg_rewind")? {
            self.use_pg_rewind = b;
        }
        if let Some(b) = flag("use_slots")? {
            self.use_slots = b;
        }
        if let Some(b) = flag("remove_data_directory_on_rewind_failure")? {
            self.remove_data_directory_on_rewind_failure = b;
        }
        if let Some(b) = flag("remove_data_directory_on_diverged_timelines")? {
            self.remove_data_directory_on_diverged_timelines = b;
        }
        if let Some(params) = pg.get("parameters") {
            self.parameters = parameters_from_json(params)
                .map_err(|problem| err("postgresql.parameters", problem))?;
        }
        if let Some(hba) = pg.get("pg_hba") {
            self.pg_hba =
                Some(string_list(hba).map_err(|problem| err("postgresql.pg_hba", problem))?);
        }
        Ok(())
    }

    /// Timing used to fence: the latest moment after the last successful lease
    /// renewal (by send time) at which a primary must already have stopped
    /// accepting writes.
    ///
    /// etcd cannot expire the lease before `send time + ttl`, and a successor
    /// needs the expiry, a watch event, a race and a promotion before it can
    /// acknowledge a write. The margin below `ttl` covers the fence itself
    /// (signalling the postmaster) with room to spare: a fifth of `ttl`, at
    /// least 0.5 s and at most 1 s.
    pub fn fence_deadline_ms(&self) -> u64 {
        let ttl_ms = self.ttl.saturating_mul(1000);
        let margin = (ttl_ms / 5).clamp(500, 1000);
        ttl_ms.saturating_sub(margin).max(500)
    }
}

fn err(key: &str, problem: String) -> DynamicConfigError {
    DynamicConfigError {
        key: key.to_string(),
        problem,
    }
}

/// Renders PostgreSQL parameters from JSON: booleans as on/off, numbers as text.
pub fn parameters_from_json(value: &Value) -> Result<BTreeMap<String, String>, String> {
    let Some(map) = value.as_object() else {
        if value.is_null() {
            return Ok(BTreeMap::new());
        }
        return Err(format!(
            "must be a mapping of parameter names to values, got {value}"
        ));
    };
    let mut out = BTreeMap::new();
    for (name, v) in map {
        let text = match v {
            Value::Bool(true) => "on".to_string(),
            Value::Bool(false) => "off".to_string(),
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            Value::Null => continue,
            other => return Err(format!("{name}: expected a scalar value, got {other}")),
        };
        out.insert(name.clone(), text);
    }
    Ok(out)
}

fn string_list(value: &Value) -> Result<Vec<String>, String> {
    match value {
        Value::Array(items) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("expected a list of strings, got item {item}"))
            })
            .collect(),
        other => Err(format!("expected a list of strings, got {other}")),
    }
}

/// Parses a number of seconds, or a duration with a unit (`30min`, `2h`, `90s`).
fn parse_seconds(value: &Value) -> Option<u64> {
    if let Some(n) = coerce_i64(value) {
        return u64::try_from(n).ok();
    }
    let text = value.as_str()?.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let factor = match unit.trim() {
        "ms" => return Some(n / 1000),
        "s" => 1,
        "min" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    Some(n * factor)
}

pub use parameters_from_json as render_parameters;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_when_empty() {
        let cfg = DynamicConfig::from_json(&json!({})).unwrap();
        assert_eq!(cfg, DynamicConfig::default());
        assert_eq!(cfg.ttl, 4);
        assert_eq!(cfg.fence_deadline_ms(), 3200);
    }

    #[test]
    fn reads_patroni_style_values() {
        let cfg = DynamicConfig::from_json(&json!({
            "ttl": "30", "loop_wait": 10, "retry_timeout": 10,
            "synchronous_mode": "on", "pause": "yes",
            "master_start_timeout": 0, "member_slots_ttl": "30min",
            "postgresql": {"use_pg_rewind": "on", "use_slots": false,
                           "parameters": {"hot_standby": true, "max_connections": 200, "wal_keep_size": "128MB"}}
        }))
        .unwrap();
        assert_eq!(cfg.ttl, 30);
        assert_eq!(cfg.synchronous_mode, SynchronousMode::On);
        assert!(cfg.pause);
        assert_eq!(cfg.primary_start_timeout, 0);
        assert_eq!(cfg.member_slots_ttl, 1800);
        assert!(cfg.use_pg_rewind);
        assert!(!cfg.use_slots);
        assert_eq!(cfg.parameters["hot_standby"], "on");
        assert_eq!(cfg.parameters["max_connections"], "200");
    }

    #[test]
    fn rejects_timing_rule_violation_naming_keys() {
        let e = DynamicConfig::from_json(&json!({"ttl": 10, "loop_wait": 5, "retry_timeout": 5}))
            .unwrap_err();
        assert_eq!(e.key, "ttl");
        assert!(e.problem.contains("loop_wait + 2*retry_timeout"), "{e}");
    }

    #[test]
    fn sub_second_timings_for_the_fast_profile() {
        let cfg =
            DynamicConfig::from_json(&json!({"ttl": 2, "loop_wait": 0.5, "retry_timeout": "0.75"}))
                .unwrap();
        assert_eq!(cfg.loop_wait, Duration::from_millis(500));
        assert_eq!(cfg.retry_timeout, Duration::from_millis(750));
        assert_eq!(seconds_value(cfg.loop_wait), json!(0.5));
        assert_eq!(seconds_value(Duration::from_secs(2)), json!(2));
        assert_eq!(display_seconds(cfg.retry_timeout), "0.75");
        // 0.5 + 2*0.8 = 2.1 > 2: the rule holds with fractions too.
        let e =
            DynamicConfig::from_json(&json!({"ttl": 2, "loop_wait": 0.5, "retry_timeout": 0.8}))
                .unwrap_err();
        assert_eq!(e.key, "ttl");
        assert!(e.problem.contains("0.5 + 2*0.8 = 2.1 > 2"), "{e}");
        assert!(e.problem.contains("at least 3"), "{e}");
        for bad in [
            json!(0.05),
            json!(0),
            json!(-1),
            json!("nan"),
            json!(100_000),
        ] {
            let e = DynamicConfig::from_json(&json!({"loop_wait": bad})).unwrap_err();
            assert_eq!(e.key, "loop_wait");
            assert!(e.problem.contains("between 0.1 and 86400"), "{e}");
        }
    }

    #[test]
    fn fence_margin_scales_with_ttl() {
        let with_ttl = |ttl| {
            DynamicConfig {
                ttl,
                ..DynamicConfig::default()
            }
            .fence_deadline_ms()
        };
        assert_eq!(with_ttl(30), 29_000);
        assert_eq!(with_ttl(10), 9_000);
        assert_eq!(with_ttl(3), 2_400);
        assert_eq!(with_ttl(2), 1_500);
    }

    #[test]
    fn rejects_wrong_kinds() {
        let e = DynamicConfig::from_json(&json!({"loop_wait": "soon"})).unwrap_err();
        assert_eq!(e.key, "loop_wait");
        let e =
            DynamicConfig::from_json(&json!({"postgresql": {"use_slots": "maybe"}})).unwrap_err();
        assert_eq!(e.key, "postgresql.use_slots");
        let e = DynamicConfig::from_json(&json!({"synchronous_mode": "sometimes"})).unwrap_err();
        assert_eq!(e.key, "synchronous_mode");
        let e = DynamicConfig::from_json(&json!({"ttl": 1})).unwrap_err();
        assert!(e.problem.contains("at least"), "{e}");
    }
}
