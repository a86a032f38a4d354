//! Loading realistic files: the exact file the benchmark harness writes, a
//! minimal file, a full Patroni production file and a file with every kind of
//! mistake. Messages are user-facing, so tests assert on keys and wording.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use pgwarden_config::{load_path, load_str, AgentConfig, ConfigError, WatchdogMode};
use pgwarden_types::{DynamicConfig, SynchronousMode};
use serde_json::json;

fn no_env(_: &str) -> Option<String> {
    None
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The file `ha_write_config` in the benchmark harness (bl.py) writes, with
/// its values substituted: `timings` is one profile, `sync` the BL_SYNC mode.
fn harness_config(
    name: &str,
    api: u16,
    pg: u16,
    timings: &[(&str, u64)],
    sync: Option<(&str, bool)>,
) -> String {
    let base = "/tmp/baseline";
    let ndir = format!("{base}/{name}");
    let etcd_hosts: String = [2379, 2479, 2579]
        .iter()
        .map(|p| format!("  - 127.0.0.1:{p}\n"))
        .collect();
    let timings: String = timings
        .iter()
        .map(|(k, v)| format!("    {k}: {v}\n"))
        .collect();
    let sync = match sync {
        Some((mode, strict)) => format!(
            "    synchronous_mode: {}\n    synchronous_mode_strict: {}\n",
            if mode == "quorum" { "quorum" } else { "true" },
            if strict { "true" } else { "false" }
        ),
        None => String::new(),
    };
    format!(
        "scope: demo
namespace: /service/
name: {name}
log:
  level: INFO
restapi:
  listen: 127.0.0.1:{api}
  connect_address: 127.0.0.1:{api}
etcd3:
  hosts:
{etcd_hosts}bootstrap:
  dcs:
{timings}{sync}    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        max_connections: 200
        wal_level: replica
        hot_standby: 'on'
        wal_log_hints: 'on'
        max_wal_senders: 10
        max_replication_slots: 10
        wal_keep_size: 128MB
  initdb:
  - encoding: UTF8
  - data-checksums
postgresql:
  listen: 127.0.0.1:{pg}
  connect_address: 127.0.0.1:{pg}
  data_dir: {ndir}/data
  bin_dir: /usr/lib/postgresql/15/bin
  pgpass: {ndir}/pgpass
  authentication:
    superuser:
      username: postgres
      password: super-secret-pw
    replication:
      username: replicator
      password: repl-secret-pw
    rewind:
      username: rewind_user
      password: rewind-secret-pw
  parameters:
    unix_socket_directories: {base}/run
  pg_hba:
  - local all all peer
  - host replication replicator 127.0.0.1/32 scram-sha-256
  - host all all 127.0.0.1/32 scram-sha-256
tags:
  nofailover: false
  noloadbalance: false
  clonefrom: false
  nosync: false
"
    )
}

const PROFILES: &[&[(&str, u64)]] = &[
    &[("ttl", 30), ("loop_wait", 10), ("retry_timeout", 10)],
    &[("ttl", 10), ("loop_wait", 2), ("retry_timeout", 4)],
    &[("ttl", 5), ("loop_wait", 1), ("retry_timeout", 2)],
    &[],
];

#[test]
fn harness_file_loads_for_every_profile_and_sync_mode() {
    for timings in PROFILES {
        for sync in [
            None,
            Some(("on", false)),
            Some(("on", true)),
            Some(("quorum", true)),
        ] {
            let text = harness_config("pg1", 8009, 5433, timings, sync);
            let cfg = load_str(&text, "pg1.yml", &no_env)
                .unwrap_or_else(|e| panic!("profile {timings:?} sync {sync:?}:\n{e}"));
            let expected_ttl = timings
                .iter()
                .find(|(k, _)| *k == "ttl")
                .map_or(DynamicConfig::DEFAULT_TTL, |(_, v)| *v);
            assert_eq!(cfg.bootstrap.dcs.ttl, expected_ttl);
            let expected_sync = match sync {
                None => SynchronousMode::Off,
                Some(("quorum", _)) => SynchronousMode::Quorum,
                Some(_) => SynchronousMode::On,
            };
            assert_eq!(cfg.bootstrap.dcs.synchronous_mode, expected_sync);
            assert_eq!(
                cfg.bootstrap.dcs.synchronous_mode_strict,
                sync.is_some_and(|(_, s)| s)
            );
        }
    }
}

#[test]
fn harness_file_values() {
    let text = harness_config("pg2", 8010, 5434, PROFILES[1], None);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pg2.yml");
    std::fs::write(&path, &text).unwrap();
    let cfg: AgentConfig = load_path(&path, &no_env).unwrap();

    assert_eq!(
        (
            cfg.scope.as_str(),
            cfg.namespace.as_str(),
            cfg.name.as_str()
        ),
        ("demo", "/service/", "pg2")
    );
    assert_eq!(cfg.restapi.listen, "127.0.0.1:8010");
    assert_eq!(cfg.api_url(), "http://127.0.0.1:8010/patroni");
    assert_eq!(
        cfg.etcd.hosts,
        ["127.0.0.1:2379", "127.0.0.1:2479", "127.0.0.1:2579"]
    );
    assert_eq!(cfg.etcd.endpoints()[0], "http://127.0.0.1:2379");
    assert_eq!(
        cfg.bootstrap.initdb,
        ["--encoding=UTF8", "--data-checksums"]
    );
    assert!(cfg.bootstrap.present);
    assert_eq!(
        (
            cfg.bootstrap.dcs.ttl,
            cfg.bootstrap.dcs.loop_wait,
            cfg.bootstrap.dcs.retry_timeout
        ),
        (10, Duration::from_secs(2), Duration::from_secs(4))
    );
    assert!(cfg.bootstrap.dcs.use_pg_rewind && cfg.bootstrap.dcs.use_slots);
    assert_eq!(cfg.bootstrap.dcs.parameters["hot_standby"], "on");
    assert_eq!(
        cfg.bootstrap.dcs_raw["postgresql"]["parameters"]["wal_keep_size"],
        json!("128MB")
    );
    let pg = &cfg.postgresql;
    assert_eq!((pg.listen_addresses.as_str(), pg.port), ("127.0.0.1", 5434));
    assert_eq!(cfg.conn_url(), "postgres://127.0.0.1:5434/postgres");
    assert_eq!(pg.data_dir, Path::new("/tmp/baseline/pg2/data"));
    assert_eq!(pg.bin_dir, Path::new("/usr/lib/postgresql/15/bin"));
    assert_eq!(pg.pgpass, Path::new("/tmp/baseline/pg2/pgpass"));
    assert_eq!(pg.superuser.username, "postgres");
    assert_eq!(pg.superuser.password.as_deref(), Some("super-secret-pw"));
    assert_eq!(pg.replication.username, "replicator");
    assert_eq!(
        pg.rewind.as_ref().map(|r| r.username.as_str()),
        Some("rewind_user")
    );
    assert_eq!(
        pg.parameters["unix_socket_directories"],
        "/tmp/baseline/run"
    );
    assert_eq!(pg.pg_hba.as_ref().map(Vec::len), Some(3));
    assert_eq!(pg.pg_ctl_timeout.as_secs(), 60);
    assert!(!cfg.tags.nofailover && !cfg.tags.nosync);
    // `log` is the only setting the harness writes that pgwarden ignores.
    assert_eq!(
        cfg.warnings,
        ["these Patroni settings are not implemented by pgwarden yet and are ignored: log"]
    );
    // Passwords never appear in Debug output.
    assert!(!format!("{cfg:?}").contains("secret-pw"));
}

#[test]
fn minimal_file_gets_defaults_with_warnings() {
    let cfg = load_path(&fixture("minimal.yml"), &no_env).unwrap();
    assert_eq!(cfg.namespace, "/service/");
    assert_eq!(cfg.restapi.connect_address, "127.0.0.1:8008");
    assert_eq!(cfg.etcd.hosts, ["127.0.0.1:2379"]);
    assert_eq!(cfg.etcd.protocol, "http");
    assert_eq!(
        (
            cfg.postgresql.connect_host.as_str(),
            cfg.postgresql.connect_port
        ),
        ("127.0.0.1", 5432)
    );
    assert_eq!(
        cfg.postgresql.bin_dir,
        Path::new("/usr/lib/postgresql/15/bin")
    );
    assert_eq!(
        cfg.postgresql.pgpass,
        Path::new("/var/lib/postgresql/15/pgpass-node1")
    );
    assert_eq!(cfg.postgresql.database, "postgres");
    assert!(cfg.postgresql.superuser.password.is_none());
    assert!(cfg.postgresql.rewind.is_none());
    assert!(!cfg.bootstrap.present);
    assert_eq!(cfg.bootstrap.dcs, pgwarden_types::DynamicConfig::default());
    assert_eq!(cfg.watchdog.mode, WatchdogMode::Automatic);
    let warnings = cfg.warnings.join("\n");
    assert!(
        warnings
            .contains("restapi.connect_address is not set; using restapi.listen 127.0.0.1:8008"),
        "{warnings}"
    );
    assert!(
        warnings.contains("postgresql.connect_address is not set; using 127.0.0.1:5432"),
        "{warnings}"
    );
    assert!(
        warnings.contains("postgresql.bin_dir is not set; using /usr/lib/postgresql/15/bin"),
        "{warnings}"
    );
    assert!(!warnings.contains("not implemented"), "{warnings}");
}

#[test]
fn full_patroni_file_loads_with_one_unimplemented_warning() {
    let cfg = load_path(&fixture("patroni_full.yml"), &no_env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.namespace, "/db/");
    assert_eq!(cfg.api_url(), "https://10.0.1.11:8008/patroni");
    assert_eq!(cfg.restapi.verify_client.as_deref(), Some("optional"));
    assert_eq!(
        cfg.restapi
            .authentication
            .as_ref()
            .map(|a| a.username.as_str()),
        Some("admin")
    );
    assert_eq!(cfg.restapi.allowlist, ["10.0.0.0/16", "127.0.0.1"]);
    assert_eq!(
        cfg.etcd.hosts,
        ["10.0.0.1:2379", "10.0.0.2:2379", "[fd00::3]:2381"]
    );
    assert_eq!(cfg.etcd.protocol, "https");
    assert_eq!(cfg.etcd.endpoints()[2], "https://[fd00::3]:2381");
    // YAML 1.1 words read as booleans wherever a boolean is expected.
    let dcs = &cfg.bootstrap.dcs;
    assert_eq!(dcs.synchronous_mode, SynchronousMode::On);
    assert!(
        !dcs.synchronous_mode_strict && dcs.failsafe_mode && dcs.use_pg_rewind && dcs.use_slots
    );
    assert_eq!(dcs.member_slots_ttl, 1800);
    // ... and are written to the DCS as JSON booleans, as Patroni would.
    assert_eq!(cfg.bootstrap.dcs_raw["synchronous_mode"], json!(true));
    assert_eq!(cfg.bootstrap.dcs_raw["failsafe_mode"], json!(true));
    assert_eq!(
        cfg.bootstrap.dcs_raw["postgresql"]["use_pg_rewind"],
        json!(true)
    );
    assert_eq!(
        cfg.bootstrap.dcs_raw["slots"]["logical_slot"]["plugin"],
        json!("pgoutput")
    );
    assert_eq!(
        cfg.bootstrap.initdb,
        ["--encoding=UTF8", "--locale=C.UTF-8", "--data-checksums"]
    );
    assert_eq!(cfg.bootstrap.pg_hba.len(), 2);
    assert_eq!(cfg.postgresql.listen_addresses, "0.0.0.0,::");
    assert_eq!(
        cfg.postgresql.remove_data_directory_on_rewind_failure,
        Some(true)
    );
    assert_eq!(cfg.postgresql.pg_ctl_timeout.as_secs(), 120);
    assert_eq!(cfg.postgresql.parameters["log_checkpoints"], "on");
    assert_eq!(cfg.tags.failover_priority, Some(2));
    assert_eq!(cfg.tags.custom["dc"], json!("east"));
    assert_eq!(
        cfg.watchdog.device.as_deref(),
        Some(Path::new("/dev/watchdog"))
    );

    let unimplemented: Vec<&String> = cfg
        .warnings
        .iter()
        .filter(|w| w.contains("not implemented by pgwarden yet"))
        .collect();
    assert_eq!(unimplemented.len(), 1, "{:#?}", cfg.warnings);
    let line = unimplemented[0];
    for key in [
        "thread_pool_size",
        "log",
        "restapi.http_extra_headers",
        "restapi.request_queue_size",
        "ctl",
        "bootstrap.dcs.slots",
        "bootstrap.post_bootstrap",
        "postgresql.authentication.superuser.sslmode",
        "postgresql.callbacks",
        "postgresql.create_replica_methods",
        "postgresql.pgbackrest",
        "postgresql.basebackup",
        "postgresql.use_unix_socket",
        "watchdog.device",
        "watchdog.safety_margin",
    ] {
        assert!(
            line.split([':', ',']).any(|k| k.trim() == key),
            "{key} missing from: {line}"
        );
    }
    // pgwarden implements watchdog.mode with its own guard process.
    assert!(
        !line.split([':', ',']).any(|k| k.trim() == "watchdog.mode"),
        "watchdog.mode is implemented: {line}"
    );
    let all = cfg.warnings.join("\n");
    assert!(
        all.contains("postgresql.parameters: max_connections only come from dynamic configuration"),
        "{all}"
    );
    assert!(!all.contains("secret"), "{all}");
}

#[test]
fn every_error_is_reported_at_once() {
    let path = fixture("every_error.yml");
    let err = load_path(&path, &no_env).unwrap_err();
    let ConfigError::Invalid { origin, problems } = &err else {
        panic!("unexpected error {err}")
    };
    assert_eq!(origin, &path.display().to_string());
    let by_key: BTreeMap<&str, &str> = problems
        .iter()
        .map(|p| (p.key.as_str(), p.message.as_str()))
        .collect();
    let expect = |key: &str, parts: &[&str]| {
        let msg = by_key
            .get(key)
            .unwrap_or_else(|| panic!("no problem for {key} in {by_key:#?}"));
        for part in parts {
            assert!(msg.contains(part), "{key}: {msg:?} lacks {part:?}");
        }
    };
    expect("name", &["required but missing"]);
    expect("scope", &["'demo/prod'", "may not contain '/'"]);
    expect("restapi.listen", &["'127.0.0.1:99999'", "1 to 65535"]);
    expect("restapi.connect_address", &["'0.0.0.0:8008'", "wildcard"]);
    expect(
        "restapi.verify_client",
        &["'sometimes'", "none, optional, required"],
    );
    expect("etcd3.hosts[1]", &["'etcd2:client'", "1 to 65535"]);
    expect(
        "bootstrap.dcs.ttl",
        &["loop_wait + 2*retry_timeout", "15 > 10"],
    );
    expect(
        "bootstrap.dcs.synchronous_mode",
        &["sometimes", "on, off or quorum"],
    );
    expect(
        "bootstrap.dcs.loop_wiat",
        &["unknown key 'bootstrap.dcs.loop_wiat' (did you mean 'bootstrap.dcs.loop_wait'?)"],
    );
    expect(
        "bootstrap.initdb",
        &[
            "pgdata, nosync may not be given",
            "not allowed: pgdata, nosync, pwfile, sync-only, version",
        ],
    );
    expect("postgresql.listen", &["'localhost'", "no port"]);
    expect(
        "postgresql.dat_dir",
        &["unknown key 'postgresql.dat_dir' (did you mean 'postgresql.data_dir'?)"],
    );
    expect("postgresql.data_dir", &["required but missing"]);
    expect(
        "postgresql.authentication.replication.username",
        &["required but missing"],
    );
    expect("postgresql.use_pg_rewind", &["'maybe'", "on/off"]);
    expect("postgresql.pg_ctl_timeout", &["-5", "1 to 86400"]);
    expect("tags.nofailover", &["perhaps", "boolean"]);
    expect(
        "watchdog.mode",
        &["'always'", "off, automatic (auto), required (require)"],
    );
    assert_eq!(problems.len(), 18, "{err}");

    let text = err.to_string();
    assert_eq!(text.lines().count(), problems.len());
    for line in text.lines() {
        assert!(line.starts_with(&format!("{}: ", path.display())), "{line}");
    }
    assert!(text.contains(": postgresql.dat_dir: unknown key"), "{text}");
    assert!(!text.contains("do-not-print-me"));
}

#[test]
fn yaml11_booleans_everywhere_a_boolean_is_expected() {
    let text = std::fs::read_to_string(fixture("minimal.yml")).unwrap()
        + "  use_pg_rewind: ON\n  remove_data_directory_on_diverged_timelines: y\n\
           tags:\n  nofailover: Yes\n  nosync: 'off'\n  noloadbalance: n\n\
           bootstrap:\n  dcs:\n    pause: on\n    check_timeline: no\n";
    let cfg = load_str(&text, "t.yml", &no_env).unwrap();
    assert_eq!(cfg.postgresql.use_pg_rewind, Some(true));
    assert_eq!(
        cfg.postgresql.remove_data_directory_on_diverged_timelines,
        Some(true)
    );
    assert!(cfg.tags.nofailover && !cfg.tags.nosync && !cfg.tags.noloadbalance);
    assert!(cfg.bootstrap.dcs.pause && !cfg.bootstrap.dcs.check_timeline);
    assert_eq!(
        cfg.bootstrap.dcs_raw,
        json!({"pause": true, "check_timeline": false})
    );
}

#[test]
fn wildcard_listen_without_connect_address_is_an_error() {
    let text = "scope: s\nname: n\nrestapi: {listen: '0.0.0.0:8008'}\netcd3: {hosts: 'a:1'}\n\
                postgresql: {listen: '*:5432', data_dir: data, authentication: {superuser: {username: p}, replication: {username: r}}}\n";
    let err = load_str(text, "w.yml", &no_env).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("w.yml: restapi.connect_address: required because restapi.listen 0.0.0.0:8008 is a wildcard"), "{text}");
    assert!(text.contains("w.yml: postgresql.connect_address: required because postgresql.listen '*' is a wildcard"), "{text}");
    assert!(
        text.contains("w.yml: postgresql.data_dir: 'data' is not an absolute path"),
        "{text}"
    );
}

#[test]
fn missing_sections_name_what_to_write() {
    let err = load_str(
        "scope: s\nname: n\nconsul: {host: 'c:8500'}\n",
        "c.yml",
        &no_env,
    )
    .unwrap_err();
    let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["restapi.listen", "etcd3", "postgresql"]);
    assert!(err.to_string().contains("consul is not supported"), "{err}");
}

#[test]
fn tag_conflicts_warn_and_negative_priorities_fail() {
    let base = std::fs::read_to_string(fixture("minimal.yml")).unwrap();
    let cfg = load_str(
        &format!("{base}tags: {{nofailover: true, failover_priority: 3}}\n"),
        "t",
        &no_env,
    )
    .unwrap();
    assert!(
        cfg.warnings
            .iter()
            .any(|w| w.contains("nofailover: true and failover_priority: 3 contradict")),
        "{:?}",
        cfg.warnings
    );
    assert!(!cfg.tags.can_be_promoted());
    let err = load_str(
        &format!("{base}tags: {{failover_priority: -1}}\n"),
        "t",
        &no_env,
    )
    .unwrap_err();
    assert_eq!(err.problems()[0].key, "tags.failover_priority");
}

#[test]
fn directory_files_merge_in_sorted_order() {
    let dir = tempfile::tempdir().unwrap();
    let minimal = std::fs::read_to_string(fixture("minimal.yml")).unwrap();
    std::fs::write(dir.path().join("10-base.yml"), minimal).unwrap();
    std::fs::write(
        dir.path().join("20-node.yaml"),
        "name: node2\npostgresql:\n  listen: 127.0.0.1:5442\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("README.txt"), "not yaml: [").unwrap();
    let cfg = load_path(dir.path(), &no_env).unwrap();
    assert_eq!(cfg.name, "node2");
    assert_eq!(cfg.postgresql.port, 5442);
    // Merged, not replaced: the data_dir from the first file survives.
    assert_eq!(
        cfg.postgresql.data_dir,
        Path::new("/var/lib/postgresql/15/main")
    );
}

#[test]
fn file_errors_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.yml");
    let err = load_path(&missing, &no_env).unwrap_err();
    assert!(matches!(err, ConfigError::NotFound { .. }));
    assert!(err.to_string().contains("does not exist"), "{err}");

    let err = load_path(dir.path(), &no_env).unwrap_err();
    assert!(matches!(err, ConfigError::EmptyDirectory { .. }), "{err}");

    let bad = dir.path().join("bad.yml");
    std::fs::write(&bad, "scope: demo\nrestapi:\n  listen: [\n").unwrap();
    let err = load_path(&bad, &no_env).unwrap_err();
    let ConfigError::Yaml { line, .. } = &err else {
        panic!("{err}")
    };
    assert!(line.is_some());
    assert!(
        err.to_string()
            .starts_with(&format!("{}: YAML syntax error at line", bad.display())),
        "{err}"
    );

    let err = load_str("- just\n- a list\n", "list.yml", &no_env).unwrap_err();
    assert!(err.to_string().contains("must be a mapping"), "{err}");
}

#[test]
fn merged_parameters_and_effective_dynamic() {
    let text = harness_config("pg3", 8011, 5435, PROFILES[0], None)
        .replace("    unix_socket_directories: /tmp/baseline/run\n",
                 "    unix_socket_directories: /tmp/baseline/run\n    max_connections: 5\n    wal_keep_size: 1GB\n");
    let cfg = load_str(&text, "pg3.yml", &no_env).unwrap();
    let dynamic = cfg.effective_dynamic(None);
    assert_eq!(dynamic, cfg.bootstrap.dcs);
    let params = cfg.merged_parameters(&dynamic);
    assert_eq!(
        params["max_connections"], "200",
        "postmaster CLI parameters only come from dynamic config"
    );
    assert_eq!(
        params["wal_keep_size"], "1GB",
        "local wins for other parameters"
    );
    assert_eq!(params["unix_socket_directories"], "/tmp/baseline/run");
    assert_eq!(params["listen_addresses"], "127.0.0.1");
    assert_eq!(params["port"], "5435");
    assert_eq!(params["cluster_name"], "demo");

    let from_dcs = cfg.effective_dynamic(Some(
        &json!({"ttl": "20", "loop_wait": 5, "retry_timeout": 5, "pause": "on"}),
    ));
    assert_eq!(
        (from_dcs.ttl, from_dcs.loop_wait),
        (20, Duration::from_secs(5))
    );
    assert!(from_dcs.pause);
    // An invalid config key falls back to bootstrap.dcs rather than inventing values.
    let fallback = cfg.effective_dynamic(Some(
        &json!({"ttl": 5, "loop_wait": 10, "retry_timeout": 10}),
    ));
    assert_eq!(fallback, cfg.bootstrap.dcs);
    assert_eq!(
        cfg.effective_dynamic(Some(&serde_json::Value::Null)),
        cfg.bootstrap.dcs
    );
}

#[test]
fn ipv6_addresses() {
    let text = "scope: s\nname: n\nrestapi: {listen: '[::]:8008', connect_address: '[fd00::1]:8008'}\n\
                etcd3: {hosts: ['[fd00::2]']}\n\
                postgresql: {listen: '[::1]:5432', connect_address: '[fd00::1]:5432', data_dir: /d/data,\n\
                authentication: {superuser: {username: p}, replication: {username: r}}}\n";
    let cfg = load_str(text, "v6.yml", &no_env).unwrap();
    assert_eq!(cfg.restapi.listen, "[::]:8008");
    assert_eq!(cfg.api_url(), "http://[fd00::1]:8008/patroni");
    assert_eq!(cfg.etcd.hosts, ["[fd00::2]:2379"]);
    assert_eq!(cfg.postgresql.listen_addresses, "::1");
    assert_eq!(cfg.postgresql.connect_host, "fd00::1");
    assert_eq!(cfg.conn_url(), "postgres://[fd00::1]:5432/postgres");
    let err = load_str(
        &text.replace("'[fd00::1]:5432'", "'fd00::1:5432'"),
        "v6.yml",
        &no_env,
    )
    .unwrap_err();
    assert!(err.to_string().contains("postgresql.connect_address: 'fd00::1:5432' looks like an IPv6 address without brackets"), "{err}");
}
