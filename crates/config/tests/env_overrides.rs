//! Environment overrides: `PATRONI_*` and `PGWARDEN_*` variables over a file,
//! the whole configuration from `PATRONI_CONFIGURATION`, and environment-only
//! configuration. The environment is a map passed in; nothing touches the
//! process environment.

use std::collections::BTreeMap;
use std::path::Path;

use pgwarden_config::{load_env, load_path, load_str, ConfigError};

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k: &str| map.get(k).cloned()
}

fn minimal() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minimal.yml")
}

#[test]
fn environment_wins_over_the_file_and_pgwarden_over_patroni() {
    let env = env_of(&[
        ("PATRONI_NAME", "from-patroni"),
        ("PGWARDEN_NAME", "from-pgwarden"),
        ("PATRONI_SCOPE", "other"),
        ("PATRONI_NAMESPACE", "/ns/"),
        ("PATRONI_RESTAPI_LISTEN", "127.0.0.2:9008"),
        ("PATRONI_RESTAPI_CONNECT_ADDRESS", "127.0.0.2:9008"),
        ("PATRONI_RESTAPI_USERNAME", "api"),
        ("PATRONI_RESTAPI_PASSWORD", "api-pw"),
        ("PATRONI_ETCD3_HOSTS", "'10.0.0.1:2379','10.0.0.2:2379'"),
        ("PATRONI_POSTGRESQL_LISTEN", "127.0.0.2:6432"),
        ("PATRONI_POSTGRESQL_CONNECT_ADDRESS", "127.0.0.2:6432"),
        ("PATRONI_POSTGRESQL_DATA_DIR", "/srv/pg/data"),
        ("PATRONI_POSTGRESQL_BIN_DIR", "/opt/pg/bin"),
        ("PATRONI_POSTGRESQL_PGPASS", "/srv/pg/pgpass"),
        ("PATRONI_SUPERUSER_USERNAME", "admin"),
        ("PATRONI_SUPERUSER_PASSWORD", "su-pw"),
        ("PATRONI_REPLICATION_PASSWORD", "repl-pw"),
        ("PGWARDEN_REWIND_USERNAME", "rewinder"),
    ]);
    let cfg = load_path(&minimal(), &env).unwrap();
    assert_eq!(cfg.name, "from-pgwarden");
    assert_eq!(cfg.scope, "other");
    assert_eq!(cfg.namespace, "/ns/");
    assert_eq!(cfg.restapi.listen, "127.0.0.2:9008");
    let auth = cfg.restapi.authentication.as_ref().unwrap();
    assert_eq!(
        (auth.username.as_str(), auth.password.as_str()),
        ("api", "api-pw")
    );
    // The file's `host` is replaced, not merged, by the variable's `hosts`.
    assert_eq!(cfg.etcd.hosts, ["10.0.0.1:2379", "10.0.0.2:2379"]);
    assert_eq!(
        (
            cfg.postgresql.listen_addresses.as_str(),
            cfg.postgresql.port
        ),
        ("127.0.0.2", 6432)
    );
    assert_eq!(cfg.conn_url(), "postgres://127.0.0.2:6432/postgres");
    assert_eq!(cfg.postgresql.data_dir, Path::new("/srv/pg/data"));
    assert_eq!(cfg.postgresql.bin_dir, Path::new("/opt/pg/bin"));
    assert_eq!(cfg.postgresql.pgpass, Path::new("/srv/pg/pgpass"));
    assert_eq!(cfg.postgresql.superuser.username, "admin");
    assert_eq!(cfg.postgresql.superuser.password.as_deref(), Some("su-pw"));
    // Only the password came from the environment; the username stays the file's.
    assert_eq!(cfg.postgresql.replication.username, "replicator");
    assert_eq!(
        cfg.postgresql.replication.password.as_deref(),
        Some("repl-pw")
    );
    assert_eq!(
        cfg.postgresql.rewind.as_ref().map(|r| r.username.as_str()),
        Some("rewinder")
    );
}

#[test]
fn etcd_host_variants() {
    for (var, value, expected) in [
        (
            "PATRONI_ETCD3_HOSTS",
            "[h1:2379, h2]",
            vec!["h1:2379", "h2:2379"],
        ),
        (
            "PATRONI_ETCD3_HOSTS",
            "h1:2379,h2:2380",
            vec!["h1:2379", "h2:2380"],
        ),
        ("PATRONI_ETCD3_HOST", "h3:2381", vec!["h3:2381"]),
        ("PATRONI_ETCD_HOSTS", "'h4:2379'", vec!["h4:2379"]),
        ("PGWARDEN_ETCD_HOST", "h5", vec!["h5:2379"]),
    ] {
        let cfg = load_path(&minimal(), &env_of(&[(var, value)]))
            .unwrap_or_else(|e| panic!("{var}={value}: {e}"));
        assert_eq!(cfg.etcd.hosts, expected, "{var}={value}");
    }
}

#[test]
fn bad_environment_values_name_the_variable() {
    let env = env_of(&[
        ("PATRONI_POSTGRESQL_LISTEN", "127.0.0.1:0"),
        ("PATRONI_ETCD3_HOSTS", "[a, {b: 1}]"),
    ]);
    let err = load_path(&minimal(), &env).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("postgresql.listen: '127.0.0.1:0' has port '0'; the port must be a number from 1 to 65535 \
                       (value from environment variable PATRONI_POSTGRESQL_LISTEN)"),
        "{text}"
    );
    assert!(
        text.contains("etcd3.hosts: environment variable PATRONI_ETCD3_HOSTS must be a YAML list"),
        "{text}"
    );
}

#[test]
fn environment_only_configuration() {
    let env = env_of(&[
        ("PATRONI_SCOPE", "envscope"),
        ("PATRONI_NAME", "envnode"),
        ("PATRONI_RESTAPI_LISTEN", "127.0.0.1:8008"),
        ("PATRONI_RESTAPI_CONNECT_ADDRESS", "127.0.0.1:8008"),
        ("PATRONI_ETCD3_HOSTS", "127.0.0.1:2379"),
        ("PATRONI_POSTGRESQL_LISTEN", "127.0.0.1:5432"),
        ("PATRONI_POSTGRESQL_CONNECT_ADDRESS", "127.0.0.1:5432"),
        ("PATRONI_POSTGRESQL_DATA_DIR", "/srv/data"),
        ("PATRONI_POSTGRESQL_BIN_DIR", "/usr/lib/postgresql/15/bin"),
        ("PATRONI_SUPERUSER_USERNAME", "postgres"),
        ("PATRONI_REPLICATION_USERNAME", "replicator"),
        ("PATRONI_LOG_LEVEL", "DEBUG"),
    ]);
    let cfg = load_env(&env).unwrap();
    assert_eq!(
        (cfg.scope.as_str(), cfg.name.as_str()),
        ("envscope", "envnode")
    );
    assert!(!cfg.bootstrap.present);
    assert_eq!(cfg.warnings, ["these Patroni settings are not implemented by pgwarden yet and are ignored: log (from PATRONI_LOG_LEVEL)"]);

    let err = load_env(&env_of(&[("PATRONI_NAME", "n")])).unwrap_err();
    let ConfigError::Invalid { origin, problems } = &err else {
        panic!("{err}")
    };
    assert_eq!(origin, "environment");
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["scope", "restapi.listen", "etcd3", "postgresql"]);
}

#[test]
fn whole_configuration_from_a_variable_ignores_other_variables() {
    let yaml = std::fs::read_to_string(minimal()).unwrap();
    let env = env_of(&[
        ("PATRONI_CONFIGURATION", yaml.as_str()),
        ("PATRONI_NAME", "ignored"),
    ]);
    let cfg = load_env(&env).unwrap();
    assert_eq!(cfg.name, "node1");
    assert!(
        cfg.warnings.iter().any(|w| w
            == "PATRONI_NAME ignored because the configuration comes from PATRONI_CONFIGURATION"),
        "{:?}",
        cfg.warnings
    );
    let env = env_of(&[("PGWARDEN_CONFIGURATION", "scope: [")]);
    let err = load_env(&env).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("PGWARDEN_CONFIGURATION: YAML syntax error"),
        "{err}"
    );
}

#[test]
fn injected_path_finds_pg_ctl() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("pgbin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(bin.join("pg_ctl"), "").unwrap();
    let text = std::fs::read_to_string(minimal()).unwrap();
    let path_var = format!("/nonexistent:{}", bin.display());
    let cfg = load_str(&text, "m.yml", &env_of(&[("PATH", path_var.as_str())])).unwrap();
    assert_eq!(cfg.postgresql.bin_dir, std::fs::canonicalize(&bin).unwrap());
    assert!(
        cfg.warnings
            .iter()
            .any(|w| w.contains("found pg_ctl on PATH")),
        "{:?}",
        cfg.warnings
    );
}
