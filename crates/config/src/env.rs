//! Environment overrides in Patroni's style (`PATRONI_<SECTION>_<KEY>`).
//!
//! Each variable also exists with a `PGWARDEN_` prefix, which wins over the
//! `PATRONI_` one. Values are written into the configuration tree before
//! validation, so they are checked like file values, and the path → variable
//! map lets messages say where a bad value came from.
//! The environment is an injected lookup: this module never reads the process
//! environment and never modifies it.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::Problem;

/// The prefixes pgwarden reads, in increasing priority.
pub(crate) const PREFIXES: [&str; 2] = ["PATRONI_", "PGWARDEN_"];

/// How a variable's text becomes a value.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Text,
    /// A YAML list, brackets optional: `'h1:2379','h2:2379'`.
    List,
}

/// `(variable suffix, dotted path, shape)` for everything but the DCS sections.
const VARIABLES: &[(&str, &str, Shape)] = &[
    ("NAME", "name", Shape::Text),
    ("SCOPE", "scope", Shape::Text),
    ("NAMESPACE", "namespace", Shape::Text),
    ("THREAD_POOL_SIZE", "thread_pool_size", Shape::Text),
    ("THREAD_STACK_SIZE", "thread_stack_size", Shape::Text),
    ("LOG_TYPE", "log.type", Shape::Text),
    ("LOG_LEVEL", "log.level", Shape::Text),
    ("LOGLEVEL", "log.level", Shape::Text),
    ("LOG_FORMAT", "log.format", Shape::Text),
    ("LOGFORMAT", "log.format", Shape::Text),
    ("LOG_DATEFORMAT", "log.dateformat", Shape::Text),
    ("LOG_DATEFMT", "log.dateformat", Shape::Text),
    ("LOG_DIR", "log.dir", Shape::Text),
    ("LOG_FILE_NUM", "log.file_num", Shape::Text),
    ("LOG_FILE_SIZE", "log.file_size", Shape::Text),
    ("LOG_TRACEBACK_LEVEL", "log.traceback_level", Shape::Text),
    ("RESTAPI_LISTEN", "restapi.listen", Shape::Text),
    (
        "RESTAPI_CONNECT_ADDRESS",
        "restapi.connect_address",
        Shape::Text,
    ),
    (
        "RESTAPI_USERNAME",
        "restapi.authentication.username",
        Shape::Text,
    ),
    (
        "RESTAPI_PASSWORD",
        "restapi.authentication.password",
        Shape::Text,
    ),
    ("RESTAPI_CERTFILE", "restapi.certfile", Shape::Text),
    ("RESTAPI_KEYFILE", "restapi.keyfile", Shape::Text),
    (
        "RESTAPI_KEYFILE_PASSWORD",
        "restapi.keyfile_password",
        Shape::Text,
    ),
    ("RESTAPI_CAFILE", "restapi.cafile", Shape::Text),
    ("RESTAPI_CIPHERS", "restapi.ciphers", Shape::Text),
    (
        "RESTAPI_VERIFY_CLIENT",
        "restapi.verify_client",
        Shape::Text,
    ),
    ("RESTAPI_ALLOWLIST", "restapi.allowlist", Shape::List),
    (
        "RESTAPI_ALLOWLIST_INCLUDE_MEMBERS",
        "restapi.allowlist_include_members",
        Shape::Text,
    ),
    (
        "RESTAPI_HTTP_EXTRA_HEADERS",
        "restapi.http_extra_headers",
        Shape::Text,
    ),
    (
        "RESTAPI_HTTPS_EXTRA_HEADERS",
        "restapi.https_extra_headers",
        Shape::Text,
    ),
    (
        "RESTAPI_REQUEST_QUEUE_SIZE",
        "restapi.request_queue_size",
        Shape::Text,
    ),
    (
        "RESTAPI_SERVER_TOKENS",
        "restapi.server_tokens",
        Shape::Text,
    ),
    ("CTL_INSECURE", "ctl.insecure", Shape::Text),
    ("CTL_CACERT", "ctl.cacert", Shape::Text),
    ("CTL_CERTFILE", "ctl.certfile", Shape::Text),
    ("CTL_KEYFILE", "ctl.keyfile", Shape::Text),
    ("CTL_KEYFILE_PASSWORD", "ctl.keyfile_password", Shape::Text),
    ("CTL_USERNAME", "ctl.authentication.username", Shape::Text),
    ("CTL_PASSWORD", "ctl.authentication.password", Shape::Text),
    ("POSTGRESQL_LISTEN", "postgresql.listen", Shape::Text),
    (
        "POSTGRESQL_CONNECT_ADDRESS",
        "postgresql.connect_address",
        Shape::Text,
    ),
    (
        "POSTGRESQL_PROXY_ADDRESS",
        "postgresql.proxy_address",
        Shape::Text,
    ),
    (
        "POSTGRESQL_CONFIG_DIR",
        "postgresql.config_dir",
        Shape::Text,
    ),
    ("POSTGRESQL_DATA_DIR", "postgresql.data_dir", Shape::Text),
    ("POSTGRESQL_PGPASS", "postgresql.pgpass", Shape::Text),
    ("POSTGRESQL_BIN_DIR", "postgresql.bin_dir", Shape::Text),
    (
        "POSTGRESQL_BIN_PG_CTL",
        "postgresql.bin_name.pg_ctl",
        Shape::Text,
    ),
    (
        "POSTGRESQL_BIN_INITDB",
        "postgresql.bin_name.initdb",
        Shape::Text,
    ),
    (
        "POSTGRESQL_BIN_PG_CONTROLDATA",
        "postgresql.bin_name.pg_controldata",
        Shape::Text,
    ),
    (
        "POSTGRESQL_BIN_PG_BASEBACKUP",
        "postgresql.bin_name.pg_basebackup",
        Shape::Text,
    ),
    (
        "POSTGRESQL_BIN_POSTGRES",
        "postgresql.bin_name.postgres",
        Shape::Text,
    ),
    (
        "POSTGRESQL_BIN_PG_ISREADY",
        "postgresql.bin_name.pg_isready",
        Shape::Text,
    ),
    (
        "POSTGRESQL_BIN_PG_REWIND",
        "postgresql.bin_name.pg_rewind",
        Shape::Text,
    ),
];

/// Connection settings of each PostgreSQL user (`PATRONI_SUPERUSER_USERNAME`...).
const PG_USERS: [&str; 3] = ["SUPERUSER", "REPLICATION", "REWIND"];
const PG_USER_KEYS: &[&str] = &[
    "USERNAME",
    "PASSWORD",
    "SSLMODE",
    "SSLCERT",
    "SSLKEY",
    "SSLPASSWORD",
    "SSLROOTCERT",
    "SSLCRL",
    "SSLCRLDIR",
    "SSLNEGOTIATION",
    "GSSENCMODE",
    "CHANNEL_BINDING",
];

/// Settings of the etcd sections (`PATRONI_ETCD3_HOSTS`...).
const ETCD_KEYS: &[(&str, Shape)] = &[
    ("HOST", Shape::Text),
    ("HOSTS", Shape::List),
    ("PROTOCOL", Shape::Text),
    ("USERNAME", Shape::Text),
    ("PASSWORD", Shape::Text),
    ("CACERT", Shape::Text),
    ("CERT", Shape::Text),
    ("KEY", Shape::Text),
    ("KEY_PASSWORD", Shape::Text),
    ("URL", Shape::Text),
    ("PROXY", Shape::Text),
    ("SRV", Shape::Text),
    ("SRV_SUFFIX", Shape::Text),
    ("USE_PROXIES", Shape::Text),
];

/// Every override variable suffix, for warning that they are ignored when the
/// whole configuration comes from `PATRONI_CONFIGURATION`.
pub(crate) fn all_suffixes() -> Vec<String> {
    let mut out: Vec<String> = VARIABLES.iter().map(|(s, _, _)| s.to_string()).collect();
    for user in PG_USERS {
        out.extend(PG_USER_KEYS.iter().map(|k| format!("{user}_{k}")));
    }
    for section in ["ETCD", "ETCD3"] {
        out.extend(ETCD_KEYS.iter().map(|(k, _)| format!("{section}_{k}")));
    }
    out
}

/// Looks a suffix up under both prefixes; returns the winning variable and value.
pub(crate) fn lookup(
    env: &dyn Fn(&str) -> Option<String>,
    suffix: &str,
) -> Option<(String, String)> {
    PREFIXES.iter().rev().find_map(|prefix| {
        let var = format!("{prefix}{suffix}");
        env(&var).map(|value| (var, value))
    })
}

/// What applying the environment did.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// Dotted path → the variable that set it.
    pub sources: BTreeMap<String, String>,
    /// Variables whose text could not be read.
    pub problems: Vec<Problem>,
}

/// Writes every set override variable into `tree` (a mapping).
pub(crate) fn apply(tree: &mut Value, env: &dyn Fn(&str) -> Option<String>) -> Applied {
    let mut applied = Applied::default();
    for (suffix, path, shape) in VARIABLES {
        set_from(tree, env, suffix, path, *shape, &mut applied);
    }
    for user in PG_USERS {
        for key in PG_USER_KEYS {
            let path = format!(
                "postgresql.authentication.{}.{}",
                user.to_ascii_lowercase(),
                key.to_ascii_lowercase()
            );
            set_from(
                tree,
                env,
                &format!("{user}_{key}"),
                &path,
                Shape::Text,
                &mut applied,
            );
        }
    }
    // PATRONI_ETCD_* (v2 section name) go into whichever etcd section the file
    // already uses, so that the environment wins over the file either way;
    // ETCD3 comes last and wins over ETCD.
    for section in ["ETCD", "ETCD3"] {
        let target =
            if section == "ETCD" && tree.get("etcd3").is_some() && tree.get("etcd").is_none() {
                "etcd3".to_string()
            } else {
                section.to_ascii_lowercase()
            };
        for (key, shape) in ETCD_KEYS {
            let path = format!("{target}.{}", key.to_ascii_lowercase());
            if set_from(
                tree,
                env,
                &format!("{section}_{key}"),
                &path,
                *shape,
                &mut applied,
            ) {
                // host and hosts are alternatives: the variable replaces the file's choice.
                let sibling = match *key {
                    "HOST" => Some("hosts"),
                    "HOSTS" => Some("host"),
                    _ => None,
                };
                if let Some(Value::Object(sec)) = tree.get_mut(target.as_str()) {
                    if let Some(sibling) = sibling {
                        sec.remove(sibling);
                    }
                }
            }
        }
    }
    applied
}

fn set_from(
    tree: &mut Value,
    env: &dyn Fn(&str) -> Option<String>,
    suffix: &str,
    path: &str,
    shape: Shape,
    applied: &mut Applied,
) -> bool {
    let Some((var, text)) = lookup(env, suffix) else {
        return false;
    };
    let value = match shape {
        Shape::Text => Value::String(text),
        Shape::List => match parse_list(&text) {
            Ok(v) => v,
            Err(why) => {
                applied.problems.push(Problem {
                    key: path.to_string(),
                    message: format!(
                        "environment variable {var} must be a YAML list like 'h1:2379','h2:2379' (brackets optional): {why}"
                    ),
                });
                return false;
            }
        },
    };
    set_path(tree, path, value);
    applied.sources.insert(path.to_string(), var);
    true
}

/// Patroni's list syntax: YAML, wrapped in brackets unless it already is a list.
pub(crate) fn parse_list(text: &str) -> Result<Value, String> {
    let trimmed = text.trim();
    let doc = if trimmed.starts_with('-') || trimmed.contains('[') {
        trimmed.to_string()
    } else {
        format!("[{trimmed}]")
    };
    let parsed: serde_norway::Value = serde_norway::from_str(&doc).map_err(|e| e.to_string())?;
    let json = crate::source::yaml_to_json(parsed)?;
    match json {
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::String(s) => Ok(Value::String(s)),
                Value::Number(n) => Ok(Value::String(n.to_string())),
                other => Err(format!("list items must be strings, got {other}")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        other => Err(format!("got {other}")),
    }
}

/// Sets a dotted path, creating (or replacing non-mapping) intermediate sections.
fn set_path(tree: &mut Value, path: &str, value: Value) {
    let mut node = tree;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let Value::Object(map) = node else { return };
        if parts.peek().is_none() {
            map.insert(part.to_string(), value);
            return;
        }
        node = map
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    #[test]
    fn lists_with_and_without_brackets() {
        assert_eq!(
            parse_list("'h1:2379','h2:2379'").unwrap(),
            json!(["h1:2379", "h2:2379"])
        );
        assert_eq!(
            parse_list("[h1:2379, h2:2379]").unwrap(),
            json!(["h1:2379", "h2:2379"])
        );
        assert_eq!(parse_list("h1:2379").unwrap(), json!(["h1:2379"]));
        assert_eq!(parse_list("- a\n- b").unwrap(), json!(["a", "b"]));
        assert!(parse_list("[a, {b: 1}]").is_err());
    }

    #[test]
    fn pgwarden_prefix_wins_and_paths_are_recorded() {
        let mut tree = json!({"name": "file"});
        let env = env_of(&[
            ("PATRONI_NAME", "patroni"),
            ("PGWARDEN_NAME", "pgwarden"),
            ("PATRONI_SUPERUSER_PASSWORD", "pw"),
            ("PATRONI_RESTAPI_USERNAME", "u"),
        ]);
        let applied = apply(&mut tree, &env);
        assert_eq!(tree["name"], "pgwarden");
        assert_eq!(
            tree["postgresql"]["authentication"]["superuser"]["password"],
            "pw"
        );
        assert_eq!(tree["restapi"]["authentication"]["username"], "u");
        assert_eq!(applied.sources["name"], "PGWARDEN_NAME");
    }

    #[test]
    fn etcd_variables_follow_the_section_in_use_and_replace_host() {
        let mut tree = json!({"etcd3": {"host": "old:2379"}});
        let env = env_of(&[("PATRONI_ETCD_HOSTS", "'a:1','b:2'")]);
        let applied = apply(&mut tree, &env);
        assert_eq!(tree, json!({"etcd3": {"hosts": ["a:1", "b:2"]}}));
        assert_eq!(applied.sources["etcd3.hosts"], "PATRONI_ETCD_HOSTS");
    }

    #[test]
    fn bad_list_is_a_problem_naming_the_variable() {
        let mut tree = json!({});
        let applied = apply(
            &mut tree,
            &env_of(&[("PATRONI_ETCD3_HOSTS", "[a, {b: 1}]")]),
        );
        assert_eq!(applied.problems.len(), 1);
        assert!(applied.problems[0].message.contains("PATRONI_ETCD3_HOSTS"));
        assert_eq!(tree, json!({}));
    }
}
