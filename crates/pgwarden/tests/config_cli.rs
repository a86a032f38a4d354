//! `pgwarden validate`: documented errors for bad configuration files.

use std::process::Command;

fn validate(yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.yml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .arg("validate")
        .arg(&path)
        .env_clear()
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

const GOOD: &str = "scope: demo
name: node1
restapi:
  listen: 127.0.0.1:8008
  connect_address: 127.0.0.1:8008
etcd3:
  hosts: 127.0.0.1:2379
bootstrap:
  dcs:
    ttl: 30
    loop_wait: 10
    retry_timeout: 10
postgresql:
  listen: 127.0.0.1:5432
  connect_address: 127.0.0.1:5432
  data_dir: /var/lib/pgwarden/data
  authentication:
    superuser:
      username: postgres
      password: secret
    replication:
      username: replicator
      password: secret
";

#[test]
fn a_good_file_validates() {
    let (ok, text) = validate(GOOD);
    assert!(ok, "{text}");
    assert!(text.contains("configuration is valid"), "{text}");
}

#[test]
fn timing_rule_violation_is_rejected_naming_the_keys() {
    let (ok, text) = validate(&GOOD.replace("loop_wait: 10", "loop_wait: 20"));
    assert!(!ok);
    assert!(text.contains("bootstrap.dcs"), "{text}");
    assert!(text.contains("loop_wait + 2*retry_timeout"), "{text}");
}

#[test]
fn misspelt_key_gets_a_suggestion() {
    let (ok, text) = validate(&GOOD.replace("data_dir:", "dat_dir:"));
    assert!(!ok);
    assert!(text.contains("postgresql.dat_dir"), "{text}");
    assert!(text.contains("postgresql.data_dir"), "{text}");
}

#[test]
fn unimplemented_patroni_keys_warn_but_do_not_refuse() {
    let (ok, text) = validate(&format!(
        "{GOOD}log:\n  level: INFO\nwatchdog:\n  mode: off\n"
    ));
    assert!(ok, "{text}");
    assert!(text.contains("log"), "{text}");
}

#[test]
fn bad_port_names_the_key_and_value() {
    let (ok, text) =
        validate(&GOOD.replace("127.0.0.1:5432\n  connect", "127.0.0.1:99999\n  connect"));
    assert!(!ok);
    assert!(text.contains("postgresql.listen"), "{text}");
    assert!(text.contains("99999"), "{text}");
}

#[test]
fn missing_file_says_which_path() {
    let out = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args(["validate", "/nonexistent/pgwarden.yml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/pgwarden.yml"));
}
