//! Pure rendering of the files pgwarden owns in the data directory
//! (`postgresql.conf`, `pg_hba.conf`, the pgpass file, connection strings)
//! and the quoting rules of each format.
//!
//! Invariants: every value is quoted for the format it lands in (GUC file,
//! libpq conninfo, pgpass, SQL identifier/literal), so role names, passwords
//! and member names may contain quotes, backslashes or colons. Recovery
//! parameters are never taken from `PgSettings::parameters`: they follow the
//! role. This module does no I/O.

use std::collections::BTreeMap;

use crate::settings::{ConfigRole, PgSettings, Upstream};

/// First line of the managed `postgresql.conf`.
pub const INCLUDE_BASE: &str = "include 'postgresql.base.conf'";
/// The file initdb's `postgresql.conf` is renamed to.
pub const BASE_CONF: &str = "postgresql.base.conf";
/// The include file holding `synchronous_standby_names` while pgwarden manages
/// synchronous replication. Kept apart from `postgresql.conf` so that changing
/// the synchronous standbys never rewrites (or races with) the main file.
pub const SYNC_CONF: &str = "pgwarden.sync.conf";
/// Last line of the rendered `postgresql.conf`: the sync file overrides the
/// user's own `synchronous_standby_names` only while it exists.
pub const INCLUDE_SYNC: &str = "include_if_exists 'pgwarden.sync.conf'";
/// Comment key recording the member a replica was configured to follow.
const FOLLOWING_MARK: &str = "# pgwarden-following: ";

/// Parameters that follow the role or that a config file cannot set.
const NOT_FROM_PARAMETERS: &[&str] = &[
    "primary_conninfo",
    "primary_slot_name",
    "recovery_target",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
    "recovery_target_timeline",
    "config_file",
    "data_directory",
];

/// Recovery targets forced empty on replicas so that a stray setting in an
/// included file cannot stop replay early.
const EMPTY_TARGETS: &[&str] = &[
    "recovery_target",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
];

/// The server parameters pgwarden writes: the merged parameters plus the
/// settings every member needs (forced) and HA-friendly defaults.
pub fn managed_parameters(settings: &PgSettings) -> BTreeMap<String, String> {
    let mut params: BTreeMap<String, String> = settings
        .parameters
        .iter()
        .filter(|(k, _)| !NOT_FROM_PARAMETERS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (key, default) in [
        ("wal_level", "replica"),
        ("max_wal_senders", "10"),
        ("max_replication_slots", "10"),
        ("max_connections", "100"),
        ("wal_keep_size", "128MB"),
        // A replica whose upstream went away (failover, switchover) retries
        // every 5 s by default; a new primary is usually there within one.
        ("wal_retrieve_retry_interval", "1s"),
    ] {
        params
            .entry(key.to_string())
            .or_insert_with(|| default.to_string());
    }
    // Forced: they identify this node or make replication and pg_rewind possible.
    for (key, value) in [
        ("listen_addresses", settings.listen_addresses.clone()),
        ("port", settings.port.to_string()),
        ("cluster_name", settings.scope.clone()),
        ("hot_standby", "on".to_string()),
        ("wal_log_hints", "on".to_string()),
        (
            "unix_socket_directories",
            settings.socket_dir().display().to_string(),
        ),
    ] {
        params.insert(key.to_string(), value);
    }
    params
}

/// The managed `postgresql.conf` for `role`.
pub fn render_postgresql_conf(settings: &PgSettings, role: &ConfigRole) -> String {
    let mut out = String::new();
    out.push_str(INCLUDE_BASE);
    out.push('\n');
    out.push_str("# Written by pgwarden; edits are overwritten. Set parameters in the pgwarden configuration.\n");
    for (key, value) in managed_parameters(settings) {
        out.push_str(&format!("{key} = {}\n", quote_conf(&value)));
    }
    if let ConfigRole::Replica { upstream } = role {
        out.push_str("# recovery\n");
        if let Some(up) = upstream {
            // JSON keeps any member name on one line, unambiguously.
            out.push_str(&format!(
                "{FOLLOWING_MARK}{}\n",
                serde_json::Value::from(up.member.as_str())
            ));
            out.push_str(&format!(
                "primary_conninfo = {}\n",
                quote_conf(&primary_conninfo(settings, up))
            ));
            if let Some(slot) = &up.slot {
                out.push_str(&format!("primary_slot_name = {}\n", quote_conf(slot)));
            }
        }
        out.push_str("recovery_target_timeline = 'latest'\n");
        for key in EMPTY_TARGETS {
            out.push_str(&format!("{key} = ''\n"));
        }
    }
    out.push_str(INCLUDE_SYNC);
    out.push('\n');
    out
}

/// The content of [`SYNC_CONF`] for a `synchronous_standby_names` value.
pub fn render_sync_conf(value: &str) -> String {
    format!(
        "# Written by pgwarden while synchronous_mode is on; do not edit.\nsynchronous_standby_names = {}\n",
        quote_conf(value)
    )
}

/// The value written by [`render_sync_conf`]; `None` when the text has no
/// such line (a damaged file counts as absent and is rewritten).
pub fn parse_sync_conf(text: &str) -> Option<String> {
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("synchronous_standby_names = "))?;
    let inner = line.strip_prefix('\'')?.strip_suffix('\'')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars().peekable();
    while let Some(ch) = chars.next() {
        match (ch, chars.peek()) {
            ('\'', Some('\'')) | ('\\', Some('\\')) => {
                out.push(ch);
                chars.next();
            }
            ('\\', Some('n')) => {
                out.push('\n');
                chars.next();
            }
            ('\\', Some('r')) => {
                out.push('\r');
                chars.next();
            }
            _ => out.push(ch),
        }
    }
    Some(out)
}

/// The member name recorded by [`render_postgresql_conf`], if any.
pub fn parse_following(conf: &str) -> Option<String> {
    conf.lines()
        .find_map(|line| line.strip_prefix(FOLLOWING_MARK))
        .and_then(|json| serde_json::from_str::<String>(json.trim()).ok())
}

/// `primary_conninfo` for streaming from `upstream` (password via passfile).
pub fn primary_conninfo(settings: &PgSettings, upstream: &Upstream) -> String {
    render_conninfo(&[
        ("host", upstream.host.clone()),
        ("port", upstream.port.to_string()),
        ("user", settings.replication.username.clone()),
        ("passfile", settings.pgpass.display().to_string()),
        ("dbname", settings.database.clone()),
        ("application_name", settings.member_name.clone()),
        ("sslmode", "prefer".to_string()),
        ("gssencmode", "prefer".to_string()),
        ("channel_binding", "prefer".to_string()),
        ("connect_timeout", "2".to_string()),
        ("keepalives", "1".to_string()),
        ("keepalives_idle", "5".to_string()),
        ("keepalives_interval", "2".to_string()),
        ("keepalives_count", "3".to_string()),
    ])
}

/// A libpq connection string from key/value pairs, every value quoted.
pub fn render_conninfo(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", quote_conninfo(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A libpq conninfo value: single quotes, `\` and `'` backslash-escaped.
pub fn quote_conninfo(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for ch in value.chars() {
        if ch == '\\' || ch == '\'' {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('\'');
    out
}

/// A postgresql.conf value: single quotes, `'` doubled, `\` and line breaks escaped.
pub fn quote_conf(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for ch in value.chars() {
        match ch {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            other => out.push(other),
        }
    }
    out.push('\'');
    out
}

/// `pg_hba.conf` from the settings, or the safe default when none are given.
pub fn render_pg_hba(settings: &PgSettings) -> String {
    let lines: Vec<String> = if settings.pg_hba.is_empty() {
        default_pg_hba(&settings.replication.username)
    } else {
        settings.pg_hba.clone()
    };
    let mut out = String::from("# Written by pgwarden; edits are overwritten.\n");
    for line in lines {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Peer auth on the socket, passwords (SCRAM) on loopback TCP.
pub fn default_pg_hba(replication_user: &str) -> Vec<String> {
    vec![
        "local all all peer".to_string(),
        "host all all 127.0.0.1/32 scram-sha-256".to_string(),
        format!(
            "host replication {} 127.0.0.1/32 scram-sha-256",
            quote_hba(replication_user)
        ),
    ]
}

fn quote_hba(name: &str) -> String {
    if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// The pgpass file: one wildcard entry per distinct role with a password.
/// Wildcard host/port because a replica's upstream changes with failovers.
pub fn render_pgpass(settings: &PgSettings) -> String {
    let mut out = String::new();
    let mut seen = Vec::new();
    for cred in [
        Some(&settings.replication),
        Some(&settings.superuser),
        settings.rewind.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        let Some(password) = &cred.password else {
            continue;
        };
        if seen.contains(&cred.username) {
            continue;
        }
        seen.push(cred.username.clone());
        out.push_str(&format!(
            "*:*:*:{}:{}\n",
            escape_pgpass(&cred.username),
            escape_pgpass(password)
        ));
    }
    out
}

fn escape_pgpass(value: &str) -> String {
    value.replace('\\', "\\\\").replace(':', "\\:")
}

/// A SQL identifier, always double-quoted.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A SQL string literal that means the same under either
/// `standard_conforming_strings` setting.
pub fn quote_literal(value: &str) -> String {
    if value.contains('\\') {
        format!("E'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", value.replace('\'', "''"))
    }
}

/// Physical slot names PostgreSQL accepts.
pub fn valid_slot_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_conf_round_trips_awkward_names() {
        for value in [
            "",
            "*",
            "node1",
            "2 (\"node-2\",node3)",
            "ANY 1 (a,\"it's\")",
            "x\\y",
        ] {
            let text = render_sync_conf(value);
            assert_eq!(parse_sync_conf(&text).as_deref(), Some(value), "{text}");
        }
        assert_eq!(parse_sync_conf("garbage"), None);
    }

    #[test]
    fn postgresql_conf_includes_the_sync_file_last() {
        let conf = render_postgresql_conf(&settings(), &ConfigRole::Primary);
        assert_eq!(conf.lines().last(), Some(INCLUDE_SYNC));
    }
    use crate::settings::Credentials;
    use std::path::PathBuf;
    use std::time::Duration;

    fn settings() -> PgSettings {
        PgSettings {
            data_dir: PathBuf::from("/srv/pg/data"),
            bin_dir: PathBuf::from("/usr/lib/postgresql/15/bin"),
            listen_addresses: "127.0.0.1".into(),
            port: 5433,
            connect_host: "127.0.0.1".into(),
            connect_port: 5433,
            socket_dir: None,
            scope: "demo".into(),
            member_name: "node-1".into(),
            database: "postgres".into(),
            superuser: Credentials {
                username: "postgres".into(),
                password: Some("su:p\\w".into()),
            },
            replication: Credentials {
                username: "repl".into(),
                password: Some("r'p".into()),
            },
            rewind: None,
            pgpass: PathBuf::from("/srv/pg/pgpass"),
            parameters: [
                ("max_connections".to_string(), "50".to_string()),
                ("primary_conninfo".into(), "x".into()),
            ]
            .into_iter()
            .collect(),
            pg_hba: Vec::new(),
            initdb_options: Vec::new(),
            pg_ctl_timeout: Duration::from_secs(30),
            run_as: None,
        }
    }

    #[test]
    fn managed_parameters_force_identity_and_keep_given_values() {
        let p = managed_parameters(&settings());
        assert_eq!(p["max_connections"], "50");
        assert_eq!(p["port"], "5433");
        assert_eq!(p["cluster_name"], "demo");
        assert_eq!(p["unix_socket_directories"], "/srv/pg");
        assert_eq!(p["wal_log_hints"], "on");
        assert_eq!(p["wal_keep_size"], "128MB");
        assert_eq!(p["wal_retrieve_retry_interval"], "1s");
        assert!(!p.contains_key("primary_conninfo"));
    }

    #[test]
    fn replica_conf_records_upstream() {
        let up = Upstream {
            member: "node \"2\"".into(),
            host: "127.0.0.1".into(),
            port: 6000,
            slot: Some("node_1".into()),
        };
        let conf = render_postgresql_conf(&settings(), &ConfigRole::Replica { upstream: Some(up) });
        assert!(conf.starts_with("include 'postgresql.base.conf'\n"));
        assert_eq!(parse_following(&conf).as_deref(), Some("node \"2\""));
        assert!(conf.contains("primary_slot_name = 'node_1'"));
        assert!(conf.contains("host=''127.0.0.1'' port=''6000'' user=''repl''"));
        assert!(conf.contains("recovery_target_timeline = 'latest'"));
        let primary = render_postgresql_conf(&settings(), &ConfigRole::Primary);
        assert_eq!(parse_following(&primary), None);
        assert!(!primary.contains("primary_conninfo"));
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_conninfo(r"a'b\c"), r"'a\'b\\c'");
        assert_eq!(quote_conf(r"a'b\c"), r"'a''b\\c'");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\'"), r"E'a\\'''");
        assert_eq!(escape_pgpass(r"a:b\c"), r"a\:b\\c");
    }

    #[test]
    fn pgpass_has_one_line_per_role() {
        let text = render_pgpass(&settings());
        assert_eq!(text, "*:*:*:repl:r'p\n*:*:*:postgres:su\\:p\\\\w\n");
    }

    #[test]
    fn default_hba_is_not_trust() {
        let hba = render_pg_hba(&settings());
        assert!(!hba.contains("trust"));
        assert!(hba.contains("host replication repl 127.0.0.1/32 scram-sha-256"));
    }

    #[test]
    fn slot_names() {
        assert!(valid_slot_name("node_1"));
        assert!(!valid_slot_name("Node-1"));
        assert!(!valid_slot_name(""));
    }
}
