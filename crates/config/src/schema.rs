//! The table of configuration keys: what pgwarden implements, which Patroni
//! keys it knows but ignores, and the unknown-key check with suggestions.
//!
//! Invariants: every key Patroni documents for the supported sections is in
//! this table, either implemented or [`Kind::Unimplemented`], so a valid
//! Patroni file never fails because of a key; a key in neither is a typo and
//! fails with a did-you-mean suggestion naming the full dotted path.
//! This module checks key names only; values are judged in `validate`.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::Problem;

/// How pgwarden treats one key.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    /// Implemented; the value is read by the validator.
    Value,
    /// Implemented mapping whose keys are checked against this table.
    Section(&'static [Field]),
    /// Implemented mapping with arbitrary keys (tags, PostgreSQL parameters).
    FreeForm,
    /// A Patroni key pgwarden does not implement yet: warned about, ignored.
    Unimplemented,
    /// A Patroni key pgwarden ignores at this place on purpose; the text says why.
    Ignored(&'static str),
}

/// One key of a section.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Field {
    pub name: &'static str,
    pub kind: Kind,
}

const fn v(name: &'static str) -> Field {
    Field {
        name,
        kind: Kind::Value,
    }
}
const fn sec(name: &'static str, fields: &'static [Field]) -> Field {
    Field {
        name,
        kind: Kind::Section(fields),
    }
}
const fn free(name: &'static str) -> Field {
    Field {
        name,
        kind: Kind::FreeForm,
    }
}
const fn unimpl(name: &'static str) -> Field {
    Field {
        name,
        kind: Kind::Unimplemented,
    }
}
const fn ignored(name: &'static str, why: &'static str) -> Field {
    Field {
        name,
        kind: Kind::Ignored(why),
    }
}

const TIMING_LOCAL: &str =
    "is only a fallback Patroni uses before the DCS config exists; pgwarden \
     ignores it here: set it under bootstrap.dcs";
const LOCAL_ONLY: &str =
    "is a local-only setting and is ignored in dynamic configuration (Patroni drops it too)";

const BASIC_AUTH: &[Field] = &[v("username"), v("password")];

const RESTAPI: &[Field] = &[
    v("listen"),
    v("connect_address"),
    sec("authentication", BASIC_AUTH),
    v("certfile"),
    v("keyfile"),
    v("cafile"),
    v("verify_client"),
    v("allowlist"),
    unimpl("keyfile_password"),
    unimpl("ciphers"),
    v("allowlist_include_members"),
    unimpl("http_extra_headers"),
    unimpl("https_extra_headers"),
    unimpl("request_queue_size"),
    unimpl("thread_pool_size"),
    unimpl("server_tokens"),
];

const ETCD: &[Field] = &[
    v("hosts"),
    v("host"),
    v("protocol"),
    v("username"),
    v("password"),
    v("cacert"),
    v("cert"),
    v("key"),
    unimpl("url"),
    unimpl("proxy"),
    unimpl("srv"),
    unimpl("srv_suffix"),
    unimpl("use_proxies"),
    unimpl("key_password"),
    unimpl("verify"),
];

/// `postgresql` keys that may appear in dynamic configuration.
const DCS_POSTGRESQL: &[Field] = &[
    v("use_pg_rewind"),
    v("use_slots"),
    free("parameters"),
    v("pg_hba"),
    v("remove_data_directory_on_rewind_failure"),
    v("remove_data_directory_on_diverged_timelines"),
    unimpl("pg_ident"),
    unimpl("recovery_conf"),
    unimpl("callbacks"),
    unimpl("create_replica_methods"),
    unimpl("basebackup"),
    unimpl("custom_conf"),
    unimpl("use_unix_socket"),
    unimpl("use_unix_socket_repl"),
    unimpl("pg_ctl_timeout"),
    unimpl("bin_dir"),
    unimpl("bin_name"),
    unimpl("pre_promote"),
    unimpl("before_stop"),
    unimpl("database"),
    unimpl("rewind"),
    unimpl("config_base_name"),
    unimpl("parameters_primary"),
    unimpl("parameters_replica"),
    unimpl("parameters_standby_leader"),
    unimpl("pg_hba_primary"),
    unimpl("pg_hba_replica"),
    unimpl("pg_hba_standby_leader"),
    ignored("listen", LOCAL_ONLY),
    ignored("connect_address", LOCAL_ONLY),
    ignored("proxy_address", LOCAL_ONLY),
    ignored("data_dir", LOCAL_ONLY),
    ignored("config_dir", LOCAL_ONLY),
    ignored("pgpass", LOCAL_ONLY),
    ignored("authentication", LOCAL_ONLY),
];

/// Top-level keys of the dynamic configuration (`bootstrap.dcs`, the DCS `config` key).
///
/// Together the implemented and unimplemented keys are exactly
/// `pgwarden_types::DYNAMIC_KEYS` (checked by a test).
pub(crate) const DCS: &[Field] = &[
    v("ttl"),
    v("loop_wait"),
    v("retry_timeout"),
    v("maximum_lag_on_failover"),
    v("maximum_lag_on_syncnode"),
    v("primary_start_timeout"),
    v("master_start_timeout"),
    v("primary_stop_timeout"),
    v("master_stop_timeout"),
    v("synchronous_mode"),
    v("synchronous_mode_strict"),
    v("synchronous_node_count"),
    v("failsafe_mode"),
    v("check_timeline"),
    v("pause"),
    v("max_timelines_history"),
    v("member_slots_ttl"),
    sec("postgresql", DCS_POSTGRESQL),
    unimpl("slots"),
    unimpl("permanent_slots"),
    unimpl("permanent_replication_slots"),
    unimpl("ignore_slots"),
    unimpl("standby_cluster"),
    unimpl("primary_race_backoff"),
];

const BOOTSTRAP: &[Field] = &[
    sec("dcs", DCS),
    v("initdb"),
    v("pg_hba"),
    v("method"),
    unimpl("post_bootstrap"),
    unimpl("post_init"),
    unimpl("users"),
];

const PG_USER: &[Field] = &[
    v("username"),
    v("password"),
    unimpl("sslmode"),
    unimpl("sslcert"),
    unimpl("sslkey"),
    unimpl("sslpassword"),
    unimpl("sslrootcert"),
    unimpl("sslcrl"),
    unimpl("sslcrldir"),
    unimpl("sslnegotiation"),
    unimpl("gssencmode"),
    unimpl("channel_binding"),
];

const PG_AUTH: &[Field] = &[
    sec("superuser", PG_USER),
    sec("replication", PG_USER),
    sec("rewind", PG_USER),
];

const POSTGRESQL: &[Field] = &[
    v("listen"),
    v("connect_address"),
    v("data_dir"),
    v("bin_dir"),
    v("pgpass"),
    sec("authentication", PG_AUTH),
    free("parameters"),
    v("pg_hba"),
    v("use_pg_rewind"),
    v("remove_data_directory_on_rewind_failure"),
    v("remove_data_directory_on_diverged_timelines"),
    v("pg_ctl_timeout"),
    v("database"),
    ignored(
        "use_slots",
        "is only read from dynamic configuration; set bootstrap.dcs.postgresql.use_slots instead",
    ),
    unimpl("proxy_address"),
    unimpl("config_dir"),
    unimpl("bin_name"),
    unimpl("pg_ident"),
    unimpl("callbacks"),
    unimpl("create_replica_methods"),
    unimpl("basebackup"),
    unimpl("recovery_conf"),
    unimpl("custom_conf"),
    unimpl("use_unix_socket"),
    unimpl("use_unix_socket_repl"),
    unimpl("pre_promote"),
    unimpl("before_stop"),
    unimpl("config_base_name"),
    unimpl("rewind"),
    unimpl("parameters_primary"),
    unimpl("parameters_replica"),
    unimpl("parameters_standby_leader"),
    unimpl("pg_hba_primary"),
    unimpl("pg_hba_replica"),
    unimpl("pg_hba_standby_leader"),
    unimpl("pg_ident_primary"),
    unimpl("pg_ident_replica"),
    unimpl("pg_ident_standby_leader"),
];

const WATCHDOG: &[Field] = &[v("mode"), v("device"), v("safety_margin")];

/// The whole local configuration file.
pub(crate) const ROOT: &[Field] = &[
    v("name"),
    v("scope"),
    v("namespace"),
    sec("restapi", RESTAPI),
    sec("etcd3", ETCD),
    sec("etcd", ETCD),
    sec("bootstrap", BOOTSTRAP),
    sec("postgresql", POSTGRESQL),
    free("tags"),
    sec("watchdog", WATCHDOG),
    unimpl("log"),
    unimpl("ctl"),
    unimpl("citus"),
    unimpl("consul"),
    unimpl("zookeeper"),
    unimpl("kubernetes"),
    unimpl("raft"),
    unimpl("exhibitor"),
    unimpl("thread_pool_size"),
    unimpl("thread_stack_size"),
    ignored("ttl", TIMING_LOCAL),
    ignored("loop_wait", TIMING_LOCAL),
    ignored("retry_timeout", TIMING_LOCAL),
];

/// Result of the key check.
#[derive(Debug, Default)]
pub(crate) struct KeyReport {
    /// Keys neither Patroni nor pgwarden know.
    pub unknown: Vec<Problem>,
    /// Dotted paths of Patroni keys pgwarden ignores for now.
    pub unimplemented: Vec<String>,
    /// One warning per key ignored on purpose.
    pub ignored: Vec<String>,
}

/// Checks every key of `root` against [`ROOT`].
pub(crate) fn check_keys(root: &Value) -> KeyReport {
    let mut report = KeyReport::default();
    let extra = custom_method_sections(root);
    walk(root, ROOT, "", &extra, &mut report);
    report
}

/// Sections named after custom bootstrap / replica-creation methods are Patroni
/// keys too (`bootstrap.method: pgbackrest` + `bootstrap.pgbackrest: {...}`).
fn custom_method_sections(root: &Value) -> BTreeMap<String, Vec<String>> {
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Some(m) = root.pointer("/bootstrap/method").and_then(Value::as_str) {
        if m != "initdb" {
            extra
                .entry("bootstrap".into())
                .or_default()
                .push(m.to_string());
        }
    }
    if let Some(Value::Array(methods)) = root.pointer("/postgresql/create_replica_methods") {
        for m in methods.iter().filter_map(Value::as_str) {
            if m != "basebackup" {
                extra
                    .entry("postgresql".into())
                    .or_default()
                    .push(m.to_string());
            }
        }
    }
    extra
}

fn walk(
    value: &Value,
    fields: &[Field],
    prefix: &str,
    extra: &BTreeMap<String, Vec<String>>,
    report: &mut KeyReport,
) {
    let Some(map) = value.as_object() else { return };
    let here = prefix.trim_end_matches('.');
    for (key, child) in map {
        let path = format!("{prefix}{key}");
        match fields.iter().find(|f| f.name == key) {
            Some(Field {
                kind: Kind::Section(sub),
                ..
            }) => walk(child, sub, &format!("{path}."), extra, report),
            Some(Field {
                kind: Kind::Value | Kind::FreeForm,
                ..
            }) => {}
            Some(Field {
                kind: Kind::Unimplemented,
                ..
            }) => report.unimplemented.push(path),
            Some(Field {
                kind: Kind::Ignored(why),
                ..
            }) => report.ignored.push(format!("{path} {why}")),
            None if extra.get(here).is_some_and(|names| names.contains(key)) => {
                report.unimplemented.push(path)
            }
            None => {
                let message = match suggest(key, fields, prefix) {
                    Some(s) => format!("unknown key '{path}' (did you mean '{s}'?)"),
                    None => format!(
                        "unknown key '{path}' (known keys here: {})",
                        implemented_names(fields).join(", ")
                    ),
                };
                report.unknown.push(Problem { key: path, message });
            }
        }
    }
}

fn implemented_names(fields: &[Field]) -> Vec<&'static str> {
    fields
        .iter()
        .filter(|f| matches!(f.kind, Kind::Value | Kind::Section(_) | Kind::FreeForm))
        .map(|f| f.name)
        .collect()
}

fn normalize(key: &str) -> String {
    key.to_ascii_lowercase().replace('-', "_")
}

/// The closest sibling key, else the same key at another place in the schema.
fn suggest(key: &str, fields: &[Field], prefix: &str) -> Option<String> {
    let wanted = normalize(key);
    let best = fields
        .iter()
        .map(|f| (strsim::damerau_levenshtein(&wanted, f.name), f.name))
        .min_by_key(|(d, _)| *d);
    if let Some((distance, name)) = best {
        let allowed = if wanted.len() <= 4 {
            1
        } else {
            2.max(wanted.len() / 4)
        };
        if distance <= allowed {
            return Some(format!("{prefix}{name}"));
        }
    }
    // A key written in the wrong section (`postgresql.ttl`, top-level `data_dir`).
    let mut elsewhere = Vec::new();
    collect_paths(ROOT, "", &mut elsewhere);
    elsewhere
        .into_iter()
        .find(|path| path.rsplit('.').next() == Some(wanted.as_str()))
}

/// Every implemented dotted path, depth first in table order.
pub(crate) fn collect_paths(fields: &[Field], prefix: &str, out: &mut Vec<String>) {
    for f in fields {
        let path = format!("{prefix}{}", f.name);
        match f.kind {
            Kind::Section(sub) => collect_paths(sub, &format!("{path}."), out),
            Kind::Value | Kind::FreeForm => out.push(path),
            Kind::Unimplemented | Kind::Ignored(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dcs_table_covers_dynamic_keys_exactly() {
        let mut ours: Vec<&str> = DCS.iter().map(|f| f.name).collect();
        let mut theirs: Vec<&str> = pgwarden_types::DYNAMIC_KEYS.to_vec();
        ours.sort_unstable();
        theirs.sort_unstable();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn no_duplicate_names_in_a_section() {
        fn check(fields: &[Field], at: &str) {
            let mut names: Vec<&str> = fields.iter().map(|f| f.name).collect();
            names.sort_unstable();
            let before = names.len();
            names.dedup();
            assert_eq!(before, names.len(), "duplicate key in {at}");
            for f in fields {
                if let Kind::Section(sub) = f.kind {
                    check(sub, f.name);
                }
            }
        }
        check(ROOT, "root");
    }

    #[test]
    fn typo_gets_sibling_suggestion() {
        let r = check_keys(&json!({"postgresql": {"dat_dir": "/x"}}));
        assert_eq!(r.unknown.len(), 1);
        assert_eq!(r.unknown[0].key, "postgresql.dat_dir");
        assert_eq!(
            r.unknown[0].message,
            "unknown key 'postgresql.dat_dir' (did you mean 'postgresql.data_dir'?)"
        );
    }

    #[test]
    fn misplaced_key_gets_its_real_path() {
        let r = check_keys(&json!({"postgresql": {"ttl": 30}, "data_dir": "/x"}));
        let msgs: Vec<&str> = r.unknown.iter().map(|p| p.message.as_str()).collect();
        assert!(
            msgs.contains(&"unknown key 'postgresql.ttl' (did you mean 'bootstrap.dcs.ttl'?)"),
            "{msgs:?}"
        );
        assert!(
            msgs.contains(&"unknown key 'data_dir' (did you mean 'postgresql.data_dir'?)"),
            "{msgs:?}"
        );
    }

    #[test]
    fn hopeless_key_lists_known_keys() {
        let r = check_keys(&json!({"restapi": {"zzzzzzzzzz": 1}}));
        assert!(
            r.unknown[0]
                .message
                .contains("known keys here: listen, connect_address"),
            "{:?}",
            r.unknown
        );
    }

    #[test]
    fn patroni_keys_are_unimplemented_not_unknown() {
        let r = check_keys(&json!({
            "log": {"level": "INFO"},
            "postgresql": {"callbacks": {}, "create_replica_methods": ["pgbackrest", "basebackup"],
                           "pgbackrest": {"command": "x"}, "use_slots": true,
                           "authentication": {"superuser": {"username": "p", "sslmode": "require"}}},
            "bootstrap": {"method": "restore", "restore": {"command": "x"},
                          "dcs": {"standby_cluster": {}, "postgresql": {"data_dir": "/x"}}},
            "tags": {"anything": 1},
            "ttl": 30,
        }));
        assert!(r.unknown.is_empty(), "{:?}", r.unknown);
        for key in [
            "log",
            "postgresql.callbacks",
            "postgresql.create_replica_methods",
            "postgresql.pgbackrest",
            "postgresql.authentication.superuser.sslmode",
            "bootstrap.restore",
            "bootstrap.dcs.standby_cluster",
        ] {
            assert!(
                r.unimplemented.iter().any(|k| k == key),
                "{key} missing in {:?}",
                r.unimplemented
            );
        }
        assert_eq!(r.ignored.len(), 3, "{:?}", r.ignored);
        assert!(r
            .ignored
            .iter()
            .any(|w| w.starts_with("postgresql.use_slots ")));
    }
}
