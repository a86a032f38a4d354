//! `pgwarden demo`: one command gives a ready cluster, and stopping it leaves nothing behind.

use std::process::Command;

use pgwarden_testbed::ports::free_port;

/// Processes whose command line mentions `needle` (the demo's private directory).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if entry.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(needle) {
            found.push(text);
        }
    }
    found
}

#[test]
fn demo_starts_a_ready_cluster_and_leaves_no_process_behind() {
    let dir = tempfile::Builder::new()
        .prefix("pgwarden-demo-test-")
        .tempdir()
        .unwrap();
    let cluster_dir = dir.path().join("cluster");
    // The demo uses consecutive ports from each base (etcd: base + 10*i and
    // + 1): pick bases whose whole ranges are free right now.
    let pg = free_base(&[0, 1, 2]);
    let api = free_base(&[0, 1, 2]);
    let etcd = free_base(&[0, 1, 10, 11, 20, 21]);
    let proxy = free_base(&[0, 1, 2]);
    let out = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args(["demo", "--exit-when-ready", "--dir"])
        .arg(&cluster_dir)
        .args([
            "--pg-port",
            &pg.to_string(),
            "--api-port",
            &api.to_string(),
            "--etcd-port",
            &etcd.to_string(),
            "--proxy-port",
            &proxy.to_string(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("cluster ready"), "{stdout}");
    assert!(
        stdout.contains("target_session_attrs=read-write"),
        "{stdout}"
    );
    assert!(
        stdout.contains("proxy ready: read-write port reaches the primary"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("read-write: psql 'host=127.0.0.1 port={proxy} ")),
        "{stdout}"
    );
    let leaders = stdout.lines().filter(|l| l.contains(" Leader ")).count();
    let streaming = stdout
        .lines()
        .filter(|l| l.contains(" Replica ") && l.contains("streaming"))
        .count();
    assert_eq!((leaders, streaming), (1, 2), "{stdout}");
    let left = processes_mentioning(&cluster_dir.display().to_string());
    assert!(left.is_empty(), "processes left behind: {left:#?}");
}

#[test]
fn demo_names_the_missing_binary_and_the_install_command() {
    let out = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args(["demo", "--pg-bin", "/nonexistent/bin"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/bin"), "{stderr}");
    assert!(stderr.contains("apt-get install postgresql-15"), "{stderr}");
}

/// A base port from which every `offset` is free to bind on 127.0.0.1.
fn free_base(offsets: &[u16]) -> u16 {
    for _ in 0..200 {
        let base = free_port();
        if base > u16::MAX - 32 {
            continue;
        }
        let all_free = offsets
            .iter()
            .all(|o| std::net::TcpListener::bind(("127.0.0.1", base + o)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no free port range found on 127.0.0.1");
}

/// Ctrl-C in a terminal signals the whole foreground process group: the demo
/// must stop everything in order (agents while etcd still runs, then etcd)
/// and leave nothing behind.
#[test]
fn ctrl_c_to_the_terminal_group_stops_the_demo_and_leaves_nothing() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::CommandExt;

    let dir = tempfile::Builder::new()
        .prefix("pgwarden-demo-ctrlc-")
        .tempdir()
        .unwrap();
    let cluster_dir = dir.path().join("cluster");
    let ports = [
        ("--pg-port", free_base(&[0, 1, 2])),
        ("--api-port", free_base(&[0, 1, 2])),
        ("--etcd-port", free_base(&[0, 1, 10, 11, 20, 21])),
        ("--proxy-port", free_base(&[0, 1, 2])),
    ];
    let mut command = Command::new(env!("CARGO_BIN_EXE_pgwarden"));
    command.args(["demo", "--dir"]).arg(&cluster_dir);
    for (flag, port) in ports {
        command.args([flag, &port.to_string()]);
    }
    // Its own process group stands in for the terminal's foreground group.
    let mut demo = command
        .process_group(0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let group = nix::unistd::Pid::from_raw(-i32::try_from(demo.id()).unwrap());
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("the demo ended before it was ready:\n{seen}"))
            .unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("Press Ctrl-C") {
            break;
        }
    }
    nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGINT).unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = demo.wait().unwrap();
    assert!(status.success(), "demo exit {status}: {}", rest.join("\n"));
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:?}");
    // Every agent ended by itself: one killed at the demo's deadline (the
    // stop hanging without etcd) never logs this line.
    for node in ["node1", "node2", "node3"] {
        let log = std::fs::read_to_string(cluster_dir.join(format!("{node}.log"))).unwrap();
        assert!(
            log.contains("pgwarden agent stopped"),
            "{node} did not stop by itself:\n{log}"
        );
        // etcd is stopped after the agents, not under them.
        let after = log.split("received shutdown request").nth(1).unwrap_or("");
        assert!(
            !after.contains("etcd is not accessible"),
            "{node} lost etcd while stopping:\n{log}"
        );
    }
    let left = processes_mentioning(&cluster_dir.display().to_string());
    assert!(left.is_empty(), "processes left behind: {left:#?}");
}
