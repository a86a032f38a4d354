//! Turning the generic configuration tree into a typed, validated [`AgentConfig`].
//!
//! Every value is read by hand so each message names the dotted key, shows
//! the bad value (never a password) and says what is allowed. Problems are
//! collected, not returned at the first one: the operator sees them all.
//! Values are never silently corrected; defaults that Patroni would refuse to
//! guess (a connect address) are applied with a warning.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pgwarden_types::{coerce_bool, coerce_i64, render_parameters, DynamicConfig, Tags};
use serde_json::{Map, Value};

use crate::address::{bracket, is_wildcard, parse_host_port, parse_listen_list};
use crate::error::Problem;
use crate::{
    AgentConfig, BasicAuth, BootstrapConfig, Credentials, EtcdConfig, PostgresqlConfig,
    RestApiConfig, WatchdogConfig, WatchdogMode, DEFAULT_BIN_DIR, DEFAULT_NAMESPACE,
    POSTMASTER_CLI_PARAMETERS,
};

/// `bootstrap.initdb` switches pgwarden sets itself.
const FORBIDDEN_INITDB: &[&str] = &["pgdata", "nosync", "pwfile", "sync-only", "version"];

/// Dynamic keys validated together because of the timing rule.
const TIMING_KEYS: &[&str] = &["ttl", "loop_wait", "retry_timeout"];

/// State of one validation run.
pub(crate) struct Ctx<'a> {
    root: &'a Value,
    sources: &'a BTreeMap<String, String>,
    env: &'a dyn Fn(&str) -> Option<String>,
    pub problems: Vec<Problem>,
    pub warnings: Vec<String>,
    pub unimplemented: Vec<String>,
}

/// Renders a value for a message; secrets are never shown.
fn show(path: &str, value: &Value) -> String {
    if path.ends_with("password") {
        return "<hidden>".into();
    }
    match value {
        Value::String(s) => format!("'{s}'"),
        Value::Object(_) => "a mapping".into(),
        other => other.to_string(),
    }
}

impl<'a> Ctx<'a> {
    pub fn new(
        root: &'a Value,
        sources: &'a BTreeMap<String, String>,
        env: &'a dyn Fn(&str) -> Option<String>,
    ) -> Self {
        Ctx {
            root,
            sources,
            env,
            problems: Vec::new(),
            warnings: Vec::new(),
            unimplemented: Vec::new(),
        }
    }

    /// The value at a dotted path; null counts as absent.
    fn raw(&self, path: &str) -> Option<&'a Value> {
        let mut node = self.root;
        for part in path.split('.') {
            node = node.as_object()?.get(part)?;
        }
        (!node.is_null()).then_some(node)
    }

    fn problem(&mut self, key: &str, message: impl Into<String>) {
        let mut message = message.into();
        let source = self.sources.iter().find(|(path, _)| {
            key == path.as_str()
                || key
                    .strip_prefix(path.as_str())
                    .is_some_and(|rest| rest.starts_with(['.', '[']))
        });
        if let Some((_, var)) = source {
            message.push_str(&format!(" (value from environment variable {var})"));
        }
        self.problems.push(Problem {
            key: key.to_string(),
            message,
        });
    }

    /// A mapping section; a scalar where a mapping belongs is a problem.
    fn section(&mut self, path: &str) -> Option<&'a Map<String, Value>> {
        match self.raw(path)? {
            Value::Object(map) => Some(map),
            other => {
                self.problem(
                    path,
                    format!("must be a mapping of settings, got {}", show(path, other)),
                );
                None
            }
        }
    }

    /// A scalar as text; empty text counts as absent.
    fn string(&mut self, path: &str) -> Option<String> {
        let text = match self.raw(path)? {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                self.problem(
                    path,
                    format!("expected a single value, got {}", show(path, other)),
                );
                return None;
            }
        };
        (!text.trim().is_empty()).then_some(text)
    }

    fn required(&mut self, path: &str, example: &str) -> Option<String> {
        let value = self.string(path);
        if value.is_none() && !self.problems.iter().any(|p| p.key == path) {
            self.problem(path, format!("required but missing (e.g. {example})"));
        }
        value
    }

    fn boolean(&mut self, path: &str) -> Option<bool> {
        let value = self.raw(path)?;
        match coerce_bool(value) {
            Some(b) => Some(b),
            None => {
                self.problem(
                    path,
                    format!(
                        "expected a boolean (true/false, on/off, yes/no), got {}",
                        show(path, value)
                    ),
                );
                None
            }
        }
    }

    fn integer(&mut self, path: &str, min: i64, max: i64) -> Option<i64> {
        let value = self.raw(path)?;
        match coerce_i64(value) {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                self.problem(
                    path,
                    format!("{n} is out of range; allowed: {min} to {max}"),
                );
                None
            }
            None => {
                self.problem(
                    path,
                    format!("expected an integer, got {}", show(path, value)),
                );
                None
            }
        }
    }

    fn path(&mut self, path: &str) -> Option<PathBuf> {
        self.string(path).map(PathBuf::from)
    }

    /// A list of scalars; a comma-separated string is accepted as a list.
    fn strings(&mut self, path: &str) -> Option<Vec<String>> {
        let value = self.raw(path)?;
        match value {
            Value::String(s) => Some(
                s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
            ),
            Value::Array(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        Value::Number(n) => out.push(n.to_string()),
                        other => {
                            self.problem(
                                &format!("{path}[{i}]"),
                                format!("expected a string, got {}", show(path, other)),
                            );
                            return None;
                        }
                    }
                }
                Some(out)
            }
            other => {
                self.problem(
                    path,
                    format!("expected a list of strings, got {}", show(path, other)),
                );
                None
            }
        }
    }

    /// A list of lines (pg_hba); unlike [`Ctx::strings`], commas are not separators.
    fn lines(&mut self, path: &str) -> Option<Vec<String>> {
        match self.raw(path)? {
            Value::Array(_) => self.strings(path),
            other => {
                self.problem(
                    path,
                    format!("expected a list of lines, got {}", show(path, other)),
                );
                None
            }
        }
    }
}

/// Validates the whole tree. `unimplemented` comes from the key check.
pub(crate) fn build(mut ctx: Ctx<'_>) -> (Option<AgentConfig>, Vec<Problem>, Vec<String>) {
    let scope = key_component(&mut ctx, "scope", "scope: demo");
    let name = key_component(&mut ctx, "name", "name: node1");
    let namespace = ctx
        .string("namespace")
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    let restapi = restapi(&mut ctx);
    let etcd = etcd(&mut ctx);
    let bootstrap = bootstrap(&mut ctx);
    let postgresql = postgresql(&mut ctx, name.as_deref().unwrap_or("node"));
    let tags = tags(&mut ctx);
    let watchdog = watchdog(&mut ctx);

    let mut warnings = Vec::new();
    let mut unimplemented = std::mem::take(&mut ctx.unimplemented);
    let mut seen = std::collections::BTreeSet::new();
    unimplemented.retain(|k| seen.insert(k.clone()));
    if !unimplemented.is_empty() {
        // Name the variables behind keys that came from the environment.
        let described: Vec<String> = unimplemented
            .iter()
            .map(|key| {
                let vars: Vec<&str> = ctx
                    .sources
                    .iter()
                    .filter(|(path, _)| {
                        path.as_str() == key
                            || path
                                .strip_prefix(key.as_str())
                                .is_some_and(|rest| rest.starts_with('.'))
                    })
                    .map(|(_, var)| var.as_str())
                    .collect();
                if vars.is_empty() {
                    key.clone()
                } else {
                    format!("{key} (from {})", vars.join(", "))
                }
            })
            .collect();
        warnings.push(format!(
            "these Patroni settings are not implemented by pgwarden yet and are ignored: {}",
            described.join(", ")
        ));
    }
    warnings.append(&mut ctx.warnings);
    if !ctx.problems.is_empty() {
        return (None, ctx.problems, warnings);
    }
    let config = AgentConfig {
        scope: scope.unwrap_or_default(),
        namespace,
        name: name.unwrap_or_default(),
        restapi,
        etcd,
        bootstrap,
        postgresql,
        tags,
        watchdog,
        warnings: warnings.clone(),
    };
    (Some(config), Vec::new(), warnings)
}

/// `scope` and `name` become etcd key components, so they cannot hold `/`.
fn key_component(ctx: &mut Ctx<'_>, key: &str, example: &str) -> Option<String> {
    let value = ctx.required(key, example)?;
    if value.contains('/') || value.trim() != value {
        ctx.problem(
            key,
            format!(
                "'{value}' may not contain '/' or surrounding spaces: it becomes part of the etcd key \
                 <namespace>/<scope>/members/<name>"
            ),
        );
        return None;
    }
    Some(value)
}

fn restapi(ctx: &mut Ctx<'_>) -> RestApiConfig {
    let mut out = RestApiConfig {
        listen: String::new(),
        connect_address: String::new(),
        authentication: None,
        certfile: None,
        keyfile: None,
        cafile: None,
        verify_client: None,
        allowlist: Vec::new(),
        allowlist_include_members: false,
    };
    ctx.section("restapi");
    let listen = ctx
        .required("restapi.listen", "restapi.listen: 0.0.0.0:8008")
        .and_then(|text| match parse_host_port(&text, None) {
            Ok(mut hp) => {
                if hp.host.is_empty() || hp.host == "*" {
                    hp.host = "0.0.0.0".into();
                }
                Some(hp)
            }
            Err(why) => {
                ctx.problem("restapi.listen", format!("'{text}' {why}"));
                None
            }
        });
    if let Some(hp) = &listen {
        out.listen = hp.render();
    }
    out.connect_address = match ctx.string("restapi.connect_address") {
        Some(text) => connect_address(ctx, "restapi.connect_address", &text).unwrap_or_default(),
        None => match &listen {
            Some(hp) if !is_wildcard(&hp.host) => {
                ctx.warnings.push(format!(
                    "restapi.connect_address is not set; using restapi.listen {} (Patroni requires it: \
                     peers and clients reach this node's REST API there)",
                    hp.render()
                ));
                hp.render()
            }
            Some(hp) => {
                ctx.problem(
                    "restapi.connect_address",
                    format!(
                        "required because restapi.listen {} is a wildcard address; give the address \
                         peers should use (e.g. 10.0.0.11:{})",
                        hp.render(),
                        hp.port
                    ),
                );
                String::new()
            }
            None => String::new(),
        },
    };
    if ctx.section("restapi.authentication").is_some() {
        let username = ctx.string("restapi.authentication.username");
        let password = ctx.string("restapi.authentication.password");
        match (username, password) {
            (Some(username), Some(password)) => {
                out.authentication = Some(BasicAuth { username, password })
            }
            (None, None) => {}
            (Some(_), None) => ctx.problem(
                "restapi.authentication.password",
                "required when restapi.authentication.username is set",
            ),
            (None, Some(_)) => ctx.problem(
                "restapi.authentication.username",
                "required when restapi.authentication.password is set",
            ),
        }
    }
    out.certfile = ctx.path("restapi.certfile");
    out.keyfile = ctx.path("restapi.keyfile");
    out.cafile = ctx.path("restapi.cafile");
    if out.keyfile.is_some() && out.certfile.is_none() {
        ctx.problem(
            "restapi.keyfile",
            "is set but restapi.certfile is not; HTTPS needs a certificate",
        );
    }
    if let Some(mode) = ctx.string("restapi.verify_client") {
        let lower = mode.to_ascii_lowercase();
        match lower.as_str() {
            "none" => {}
            "optional" | "required" => {
                if out.cafile.is_none() || out.certfile.is_none() {
                    ctx.problem(
                        "restapi.verify_client",
                        format!("'{mode}' needs restapi.certfile and restapi.cafile (client certificates are checked over HTTPS against the CA)"),
                    );
                }
            }
            _ => ctx.problem(
                "restapi.verify_client",
                format!("'{mode}' is not allowed; allowed: none, optional, required"),
            ),
        }
        out.verify_client = Some(lower);
    }
    out.allowlist = ctx.strings("restapi.allowlist").unwrap_or_default();
    out.allowlist_include_members = ctx
        .boolean("restapi.allowlist_include_members")
        .unwrap_or(false);
    out
}

/// A `host:port` that other machines dial: wildcards are refused.
fn connect_address(ctx: &mut Ctx<'_>, key: &str, text: &str) -> Option<String> {
    match parse_host_port(text, None) {
        Ok(hp) if is_wildcard(&hp.host) => {
            ctx.problem(
                key,
                format!(
                    "'{text}' is a wildcard address; give the concrete host other nodes connect to"
                ),
            );
            None
        }
        Ok(hp) => Some(hp.render()),
        Err(why) => {
            ctx.problem(key, format!("'{text}' {why}"));
            None
        }
    }
}

fn etcd(ctx: &mut Ctx<'_>) -> EtcdConfig {
    let mut out = EtcdConfig {
        hosts: Vec::new(),
        protocol: "http".into(),
        username: None,
        password: None,
        cacert: None,
        cert: None,
        key: None,
    };
    let has3 = ctx.raw("etcd3").is_some();
    let has2 = ctx.raw("etcd").is_some();
    let section = match (has3, has2) {
        (true, true) => {
            ctx.warnings.push(
                "both etcd and etcd3 sections are present; pgwarden uses etcd3 and ignores etcd"
                    .into(),
            );
            "etcd3"
        }
        (true, false) => "etcd3",
        (false, true) => {
            ctx.warnings.push(
                "the etcd section is read as etcd3: pgwarden speaks only the etcd v3 API, whose keys \
                 Patroni nodes configured with `etcd:` (v2 API) do not see; rename the section to etcd3"
                    .into(),
            );
            "etcd"
        }
        (false, false) => {
            let others: Vec<&str> = ["consul", "zookeeper", "kubernetes", "raft", "exhibitor"]
                .into_iter()
                .filter(|k| ctx.raw(k).is_some())
                .collect();
            let note = if others.is_empty() {
                String::new()
            } else {
                format!(
                    " ({} is not supported: pgwarden stores cluster state in etcd v3 only)",
                    others.join(", ")
                )
            };
            ctx.problem(
                "etcd3",
                format!("required but missing: give the etcd members, e.g. etcd3: {{hosts: [10.0.0.1:2379, 10.0.0.2:2379]}}{note}"),
            );
            return out;
        }
    };
    if ctx.section(section).is_none() {
        return out;
    }
    let key = |k: &str| format!("{section}.{k}");
    let (hosts_key, list) = if ctx.raw(&key("hosts")).is_some() {
        if ctx.raw(&key("host")).is_some() {
            ctx.warnings.push(format!(
                "{} is ignored because {} is set",
                key("host"),
                key("hosts")
            ));
        }
        (key("hosts"), ctx.strings(&key("hosts")))
    } else if ctx.raw(&key("host")).is_some() {
        (key("host"), ctx.string(&key("host")).map(|h| vec![h]))
    } else {
        let alternative = ["url", "proxy", "srv", "srv_suffix"]
            .into_iter()
            .find(|k| ctx.raw(&key(k)).is_some());
        let message = match alternative {
            Some(alt) => format!(
                "required: {} is not supported by pgwarden yet; list the etcd members in {} (host:port, default port 2379)",
                key(alt),
                key("hosts")
            ),
            None => "required but missing (e.g. hosts: [10.0.0.1:2379, 10.0.0.2:2379], or a comma-separated string)".into(),
        };
        ctx.problem(&key("hosts"), message);
        (key("hosts"), None)
    };
    let mut schemes = Vec::new();
    if let Some(list) = list {
        if list.is_empty() {
            ctx.problem(
                &hosts_key,
                "is empty; list at least one etcd member as host:port",
            );
        }
        for (i, entry) in list.iter().enumerate() {
            let item_key = if list.len() > 1 {
                format!("{hosts_key}[{i}]")
            } else {
                hosts_key.clone()
            };
            let (scheme, rest) = match entry.trim().split_once("://") {
                Some((s, rest)) => (Some(s.to_ascii_lowercase()), rest.trim_end_matches('/')),
                None => (None, entry.trim()),
            };
            if let Some(s) = scheme {
                if s != "http" && s != "https" {
                    ctx.problem(
                        &item_key,
                        format!("'{entry}' has scheme '{s}'; allowed: http, https"),
                    );
                    continue;
                }
                schemes.push(s);
            }
            match parse_host_port(rest, Some(2379)) {
                Ok(hp) if is_wildcard(&hp.host) => ctx.problem(
                    &item_key,
                    format!("'{entry}' is a wildcard address; give a concrete etcd member address"),
                ),
                Ok(hp) => out.hosts.push(hp.render()),
                Err(why) => ctx.problem(&item_key, format!("'{entry}' {why}")),
            }
        }
    }
    schemes.dedup();
    match ctx.string(&key("protocol")) {
        Some(p) => {
            let lower = p.to_ascii_lowercase();
            if lower != "http" && lower != "https" {
                ctx.problem(
                    &key("protocol"),
                    format!("'{p}' is not allowed; allowed: http, https"),
                );
            } else if schemes.iter().any(|s| *s != lower) {
                ctx.problem(
                    &hosts_key,
                    format!(
                        "has URLs whose scheme differs from {} '{lower}'",
                        key("protocol")
                    ),
                );
            }
            out.protocol = lower;
        }
        None => match schemes.as_slice() {
            [] => {}
            [one] => out.protocol = one.clone(),
            _ => ctx.problem(
                &hosts_key,
                "mixes http:// and https:// members; use one protocol",
            ),
        },
    }
    out.username = ctx.string(&key("username"));
    out.password = ctx.string(&key("password"));
    if out.username.is_some() != out.password.is_some() {
        let (missing, given) = if out.username.is_some() {
            ("password", "username")
        } else {
            ("username", "password")
        };
        ctx.problem(
            &key(missing),
            format!("required when {} is set", key(given)),
        );
    }
    out.cacert = ctx.path(&key("cacert"));
    out.cert = ctx.path(&key("cert"));
    out.key = ctx.path(&key("key"));
    if out.cert.is_some() != out.key.is_some() {
        let (missing, given) = if out.cert.is_some() {
            ("key", "cert")
        } else {
            ("cert", "key")
        };
        ctx.problem(
            &key(missing),
            format!(
                "required when {} is set (client certificate and its key go together)",
                key(given)
            ),
        );
    }
    if (out.cacert.is_some() || out.cert.is_some()) && out.protocol == "http" {
        ctx.warnings.push(format!(
            "{} / {} are set but {} is http, so TLS is not used; set protocol: https",
            key("cacert"),
            key("cert"),
            key("protocol")
        ));
    }
    out
}

fn bootstrap(ctx: &mut Ctx<'_>) -> BootstrapConfig {
    let present = ctx.raw("bootstrap").is_some();
    let mut out = BootstrapConfig {
        dcs_raw: Value::Object(Map::new()),
        dcs: DynamicConfig::default(),
        initdb: Vec::new(),
        pg_hba: Vec::new(),
        present,
    };
    if !present || ctx.section("bootstrap").is_none() {
        return out;
    }
    if let Some(dcs) = ctx.section("bootstrap.dcs") {
        let mut raw = Value::Object(dcs.clone());
        normalize_dynamic(&mut raw);
        out.dcs = dynamic(ctx, &raw);
        out.dcs_raw = raw;
    }
    out.initdb = initdb(ctx);
    out.pg_hba = ctx.lines("bootstrap.pg_hba").unwrap_or_default();
    if let Some(method) = ctx.string("bootstrap.method") {
        if method != "initdb" {
            ctx.unimplemented.push("bootstrap.method".into());
            ctx.warnings.push(format!(
                "bootstrap.method '{method}' is not implemented by pgwarden: a new cluster is created with initdb"
            ));
        }
    }
    out
}

/// Rewrites YAML 1.1 booleans and numeric strings of known dynamic keys into
/// JSON booleans and numbers, so the `config` key pgwarden writes reads the
/// same to Patroni peers as the one Patroni itself would write.
pub(crate) fn normalize_dynamic(raw: &mut Value) {
    const BOOLS: &[&str] = &[
        "synchronous_mode_strict",
        "failsafe_mode",
        "check_timeline",
        "pause",
    ];
    // Seconds that may be fractions (a pgwarden extension); whole values stay integers.
    const SECONDS: &[&str] = &["loop_wait", "retry_timeout"];
    const INTS: &[&str] = &[
        "ttl",
        "maximum_lag_on_failover",
        "maximum_lag_on_syncnode",
        "primary_start_timeout",
        "master_start_timeout",
        "primary_stop_timeout",
        "master_stop_timeout",
        "synchronous_node_count",
        "max_timelines_history",
    ];
    const PG_BOOLS: &[&str] = &[
        "use_pg_rewind",
        "use_slots",
        "remove_data_directory_on_rewind_failure",
        "remove_data_directory_on_diverged_timelines",
    ];
    fn fix_bools(map: &mut Map<String, Value>, keys: &[&str]) {
        for key in keys {
            if let Some(v @ Value::String(_)) = map.get_mut(*key) {
                if let Some(b) = coerce_bool(v) {
                    *v = Value::Bool(b);
                }
            }
        }
    }
    let Some(map) = raw.as_object_mut() else {
        return;
    };
    fix_bools(map, BOOLS);
    for key in INTS {
        if let Some(v @ Value::String(_)) = map.get_mut(*key) {
            if let Some(n) = v.as_str().and_then(|s| s.trim().parse::<i64>().ok()) {
                *v = Value::from(n);
            }
        }
    }
    for key in SECONDS {
        if let Some(v @ Value::String(_)) = map.get_mut(*key) {
            if let Some(secs) = v.as_str().and_then(|s| s.trim().parse::<f64>().ok()) {
                if (0.0..1e9).contains(&secs) {
                    *v = pgwarden_types::seconds_value(std::time::Duration::from_secs_f64(secs));
                }
            }
        }
    }
    if let Some(v @ Value::String(_)) = map.get_mut("synchronous_mode") {
        if !v.as_str().is_some_and(|s| s.eq_ignore_ascii_case("quorum")) {
            if let Some(b) = coerce_bool(v) {
                *v = Value::Bool(b);
            }
        }
    }
    if let Some(Value::Object(pg)) = map.get_mut("postgresql") {
        fix_bools(pg, PG_BOOLS);
    }
}

/// Validates `bootstrap.dcs` key by key so every bad key is reported, then as a whole.
fn dynamic(ctx: &mut Ctx<'_>, raw: &Value) -> DynamicConfig {
    let Some(map) = raw.as_object() else {
        return DynamicConfig::default();
    };
    let mut failed = false;
    let report = |ctx: &mut Ctx<'_>, e: pgwarden_types::DynamicConfigError| {
        ctx.problem(&format!("bootstrap.dcs.{}", e.key), e.problem);
    };
    let timing: Map<String, Value> = map
        .iter()
        .filter(|(k, _)| TIMING_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Err(e) = DynamicConfig::from_json(&Value::Object(timing)) {
        report(ctx, e);
        failed = true;
    }
    for (key, value) in map {
        if TIMING_KEYS.contains(&key.as_str()) {
            continue;
        }
        let singles: Vec<Value> = match (key.as_str(), value) {
            ("postgresql", Value::Object(pg)) => pg
                .iter()
                .map(|(k, v)| serde_json::json!({ "postgresql": { k.clone(): v.clone() } }))
                .collect(),
            _ => vec![serde_json::json!({ key.clone(): value.clone() })],
        };
        for single in singles {
            if let Err(e) = DynamicConfig::from_json(&single) {
                report(ctx, e);
                failed = true;
            }
        }
    }
    if failed {
        return DynamicConfig::default();
    }
    DynamicConfig::from_json(raw).unwrap_or_else(|e| {
        report(ctx, e);
        DynamicConfig::default()
    })
}

fn initdb(ctx: &mut Ctx<'_>) -> Vec<String> {
    let Some(value) = ctx.raw("bootstrap.initdb") else {
        return Vec::new();
    };
    // A list of switches; a plain mapping is accepted too (Patroni does).
    let items: Vec<(String, Value)> = match value {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| (format!("bootstrap.initdb[{i}]"), item.clone()))
            .collect(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                (
                    "bootstrap.initdb".to_string(),
                    serde_json::json!({ k.clone(): v.clone() }),
                )
            })
            .collect(),
        other => {
            ctx.problem(
                "bootstrap.initdb",
                format!(
                    "expected a list of initdb switches (e.g. [data-checksums, {{encoding: UTF8}}]), got {}",
                    show("", other)
                ),
            );
            return Vec::new();
        }
    };
    let mut switches = Vec::new();
    let mut forbidden = Vec::new();
    for (key, item) in items {
        let (name, arg) = match &item {
            Value::String(s) => (s.trim().trim_start_matches('-').to_string(), None),
            Value::Object(map) if map.len() == 1 => {
                let (k, v) = map
                    .iter()
                    .next()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .unwrap_or_default();
                let arg = match v {
                    Value::String(s) => s,
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    other => {
                        ctx.problem(
                            &key,
                            format!(
                                "value of '{k}' must be a single value, got {}",
                                show("", &other)
                            ),
                        );
                        continue;
                    }
                };
                (k.trim().trim_start_matches('-').to_string(), Some(arg))
            }
            other => {
                ctx.problem(
                    &key,
                    format!(
                        "expected a switch like data-checksums or a one-key mapping like encoding: UTF8, got {}",
                        show("", other)
                    ),
                );
                continue;
            }
        };
        if name.is_empty() || name.contains(char::is_whitespace) {
            ctx.problem(&key, format!("'{name}' is not an initdb option name"));
            continue;
        }
        if FORBIDDEN_INITDB.contains(&name.as_str()) {
            forbidden.push(name);
            continue;
        }
        switches.push(match arg {
            Some(arg) => format!("--{name}={arg}"),
            None => format!("--{name}"),
        });
    }
    if !forbidden.is_empty() {
        ctx.problem(
            "bootstrap.initdb",
            format!(
                "{} may not be given: pgwarden sets them itself (not allowed: {})",
                forbidden.join(", "),
                FORBIDDEN_INITDB.join(", ")
            ),
        );
    }
    switches
}

fn postgresql(ctx: &mut Ctx<'_>, name: &str) -> PostgresqlConfig {
    let mut out = PostgresqlConfig {
        listen_addresses: String::new(),
        port: 5432,
        connect_host: String::new(),
        connect_port: 5432,
        data_dir: PathBuf::new(),
        bin_dir: PathBuf::from(DEFAULT_BIN_DIR),
        pgpass: PathBuf::new(),
        superuser: Credentials {
            username: String::new(),
            password: None,
        },
        replication: Credentials {
            username: String::new(),
            password: None,
        },
        rewind: None,
        parameters: BTreeMap::new(),
        pg_hba: None,
        use_pg_rewind: None,
        remove_data_directory_on_rewind_failure: None,
        remove_data_directory_on_diverged_timelines: None,
        pg_ctl_timeout: Duration::from_secs(60),
        database: "postgres".into(),
    };
    if ctx.raw("postgresql").is_none() {
        ctx.problem(
            "postgresql",
            "required but missing: give at least listen, data_dir and authentication.{superuser,replication}.username",
        );
        return out;
    }
    if ctx.section("postgresql").is_none() {
        return out;
    }
    let mut first_listen_host = None;
    if let Some(text) = ctx.required("postgresql.listen", "postgresql.listen: 0.0.0.0:5432") {
        match parse_listen_list(&text) {
            Ok((hosts, port)) => {
                out.listen_addresses = hosts.join(",");
                out.port = port;
                first_listen_host = hosts.into_iter().next();
            }
            Err(why) => ctx.problem("postgresql.listen", format!("'{text}' {why}")),
        }
    }
    match ctx.string("postgresql.connect_address") {
        Some(text) => {
            if let Some(addr) = connect_address(ctx, "postgresql.connect_address", &text) {
                if let Ok(hp) = parse_host_port(&addr, None) {
                    out.connect_host = hp.host;
                    out.connect_port = hp.port;
                }
            }
        }
        None => match first_listen_host {
            Some(host) if !is_wildcard(&host) => {
                ctx.warnings.push(format!(
                    "postgresql.connect_address is not set; using {}:{} from postgresql.listen (Patroni \
                     requires it: replicas and clients connect there)",
                    bracket(&host),
                    out.port
                ));
                out.connect_host = host;
                out.connect_port = out.port;
            }
            Some(_) => ctx.problem(
                "postgresql.connect_address",
                format!(
                    "required because postgresql.listen '{}' is a wildcard address; give the address \
                     other nodes connect to (e.g. 10.0.0.11:{})",
                    out.listen_addresses, out.port
                ),
            ),
            None => {}
        },
    }
    if let Some(dir) = ctx.required(
        "postgresql.data_dir",
        "postgresql.data_dir: /var/lib/postgresql/15/main",
    ) {
        let path = PathBuf::from(&dir);
        if path.is_absolute() {
            out.data_dir = path;
        } else {
            ctx.problem(
                "postgresql.data_dir",
                format!("'{dir}' is not an absolute path; write it from the root, e.g. /var/lib/postgresql/15/main"),
            );
        }
    }
    out.bin_dir = match ctx.path("postgresql.bin_dir") {
        Some(dir) => dir,
        None => {
            let (dir, how) = match find_on_path(ctx.env) {
                Some(dir) => (dir, "found pg_ctl on PATH"),
                None => (PathBuf::from(DEFAULT_BIN_DIR), "the PostgreSQL 15 default"),
            };
            ctx.warnings.push(format!(
                "postgresql.bin_dir is not set; using {} ({how})",
                dir.display()
            ));
            dir
        }
    };
    out.pgpass = ctx
        .path("postgresql.pgpass")
        .unwrap_or_else(|| default_pgpass(&out.data_dir, name));

    ctx.section("postgresql.authentication");
    if let Some(c) = credentials(ctx, "superuser", true) {
        out.superuser = c;
    }
    if let Some(c) = credentials(ctx, "replication", true) {
        out.replication = c;
    }
    out.rewind = credentials(ctx, "rewind", false);

    if let Some(params) = ctx.raw("postgresql.parameters") {
        match render_parameters(params) {
            Ok(params) => {
                let cli: Vec<&str> = params
                    .keys()
                    .map(String::as_str)
                    .filter(|k| POSTMASTER_CLI_PARAMETERS.contains(k))
                    .collect();
                if !cli.is_empty() {
                    ctx.warnings.push(format!(
                        "postgresql.parameters: {} only come from dynamic configuration \
                         (bootstrap.dcs.postgresql.parameters; listen_addresses and port from postgresql.listen); \
                         the local values are ignored",
                        cli.join(", ")
                    ));
                }
                out.parameters = params;
            }
            Err(why) => ctx.problem("postgresql.parameters", why),
        }
    }
    out.pg_hba = ctx.lines("postgresql.pg_hba");
    out.use_pg_rewind = ctx.boolean("postgresql.use_pg_rewind");
    out.remove_data_directory_on_rewind_failure =
        ctx.boolean("postgresql.remove_data_directory_on_rewind_failure");
    out.remove_data_directory_on_diverged_timelines =
        ctx.boolean("postgresql.remove_data_directory_on_diverged_timelines");
    if let Some(secs) = ctx.integer("postgresql.pg_ctl_timeout", 1, 86_400) {
        out.pg_ctl_timeout = Duration::from_secs(secs.unsigned_abs());
    }
    if let Some(db) = ctx.string("postgresql.database") {
        out.database = db;
    }
    out
}

fn credentials(ctx: &mut Ctx<'_>, role: &str, required: bool) -> Option<Credentials> {
    let base = format!("postgresql.authentication.{role}");
    if ctx.raw(&base).is_none() {
        if required {
            ctx.problem(
                &format!("{base}.username"),
                format!("required but missing (e.g. authentication: {{{role}: {{username: ..., password: ...}}}})"),
            );
        }
        return None;
    }
    ctx.section(&base)?;
    let username = ctx.required(&format!("{base}.username"), "username: postgres")?;
    let password = ctx.string(&format!("{base}.password"));
    Some(Credentials { username, password })
}

/// The directory of the first `pg_ctl` on the injected PATH, symlinks
/// resolved: a `/usr/local/bin/pg_ctl` link must lead to the directory that
/// also holds initdb, pg_basebackup and pg_rewind.
fn find_on_path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let path = env("PATH")?;
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join("pg_ctl"))
        .find(|exe| exe.is_file())
        .and_then(|exe| std::fs::canonicalize(exe).ok())
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
}

/// Beside the data directory, named per member so nodes sharing a parent never collide.
fn default_pgpass(data_dir: &Path, name: &str) -> PathBuf {
    match data_dir.parent() {
        Some(parent) if parent != Path::new("/") && !parent.as_os_str().is_empty() => {
            parent.join(format!("pgpass-{name}"))
        }
        _ => PathBuf::from(format!("/tmp/pgpass-{name}")),
    }
}

fn tags(ctx: &mut Ctx<'_>) -> Tags {
    let Some(raw) = ctx.raw("tags") else {
        return Tags::default();
    };
    let tags = match Tags::from_json(raw) {
        Ok(t) => t,
        Err(msg) => {
            // Tags::from_json says "tags.<tag>: <problem>" or "tags must be ...".
            match msg.split_once(": ") {
                Some((key, rest)) if key.starts_with("tags.") => ctx.problem(key, rest.to_string()),
                _ => ctx.problem("tags", msg),
            }
            return Tags::default();
        }
    };
    for (key, value) in [
        ("tags.failover_priority", tags.failover_priority),
        ("tags.sync_priority", tags.sync_priority),
    ] {
        if let Some(p) = value.filter(|p| *p < 0) {
            ctx.problem(
                key,
                format!("{p} is negative; allowed: 0 (never) or a positive priority"),
            );
        }
    }
    if let Some(p) = tags.failover_priority {
        if tags.nofailover == (p > 0) {
            ctx.warnings.push(format!(
                "tags: nofailover: {} and failover_priority: {p} contradict each other (Patroni treats them as \
                 mutually exclusive); nofailover wins: this member {} be promoted",
                tags.nofailover,
                if tags.nofailover { "will never" } else { "may" }
            ));
        }
    }
    if let Some(p) = tags.sync_priority {
        if tags.nosync == (p > 0) {
            ctx.warnings.push(format!(
                "tags: nosync: {} and sync_priority: {p} contradict each other (Patroni treats them as mutually \
                 exclusive); nosync wins",
                tags.nosync
            ));
        }
    }
    tags
}

fn watchdog(ctx: &mut Ctx<'_>) -> WatchdogConfig {
    let mut out = WatchdogConfig::default();
    if ctx.raw("watchdog").is_none() || ctx.section("watchdog").is_none() {
        return out;
    }
    if let Some(value) = ctx.raw("watchdog.mode") {
        let mode = match value {
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "automatic" | "auto" => Some(WatchdogMode::Automatic),
                "required" | "require" => Some(WatchdogMode::Required),
                "off" | "false" | "no" | "n" | "disabled" => Some(WatchdogMode::Off),
                _ => None,
            },
            Value::Bool(false) => Some(WatchdogMode::Off),
            Value::Bool(true) => Some(WatchdogMode::Automatic),
            _ => None,
        };
        match mode {
            Some(mode) => out.mode = mode,
            None => ctx.problem(
                "watchdog.mode",
                format!(
                    "{} is not allowed; allowed: off, automatic (auto), required (require)",
                    show("", value)
                ),
            ),
        }
    }
    out.device = ctx.path("watchdog.device");
    if let Some(m) = ctx.integer("watchdog.safety_margin", -1, 3600) {
        out.safety_margin = m;
    }
    // pgwarden's watchdog is its own guard process: the kernel device and its
    // safety margin do not apply (the guard fires at the fence deadline).
    if out.device.is_some() {
        ctx.unimplemented.push("watchdog.device".into());
    }
    if ctx.raw("watchdog.safety_margin").is_some() {
        ctx.unimplemented.push("watchdog.safety_margin".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn normalize_dynamic_writes_json_types_for_known_keys_only() {
        let mut raw = json!({
            "ttl": "30", "pause": "off", "synchronous_mode": "on", "failsafe_mode": "maybe",
            "custom": "on", "postgresql": {"use_slots": "no", "parameters": {"hot_standby": "on"}}
        });
        normalize_dynamic(&mut raw);
        assert_eq!(
            raw,
            json!({
                "ttl": 30, "pause": false, "synchronous_mode": true, "failsafe_mode": "maybe",
                "custom": "on", "postgresql": {"use_slots": false, "parameters": {"hot_standby": "on"}}
            })
        );
        let mut quorum = json!({"synchronous_mode": "quorum"});
        normalize_dynamic(&mut quorum);
        assert_eq!(quorum, json!({"synchronous_mode": "quorum"}));
        let mut fast = json!({"ttl": "2", "loop_wait": "0.5", "retry_timeout": "1", "x": "0.5"});
        normalize_dynamic(&mut fast);
        assert_eq!(
            fast,
            json!({"ttl": 2, "loop_wait": 0.5, "retry_timeout": 1, "x": "0.5"})
        );
    }

    #[test]
    fn default_pgpass_is_per_member() {
        assert_eq!(
            default_pgpass(Path::new("/srv/pg/data"), "n1"),
            Path::new("/srv/pg/pgpass-n1")
        );
        assert_eq!(
            default_pgpass(Path::new("/data"), "n1"),
            Path::new("/tmp/pgpass-n1")
        );
    }

    #[test]
    fn every_bad_dynamic_key_is_reported() {
        let root = json!({});
        let sources = BTreeMap::new();
        let env = |_: &str| None;
        let mut ctx = Ctx::new(&root, &sources, &env);
        let raw = json!({"ttl": 10, "loop_wait": 9, "pause": "sometimes",
                         "postgresql": {"use_slots": "x", "use_pg_rewind": "y?"}});
        assert_eq!(dynamic(&mut ctx, &raw), DynamicConfig::default());
        let keys: Vec<&str> = ctx.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "bootstrap.dcs.ttl",
                "bootstrap.dcs.pause",
                "bootstrap.dcs.postgresql.use_slots",
                "bootstrap.dcs.postgresql.use_pg_rewind"
            ]
        );
    }
}
