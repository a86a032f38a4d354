//! The `pgwarden` binary: the agent, the demo cluster and the CLI verbs.
//!
//! This is the only place that uses `anyhow`: library crates return typed
//! errors, and here they become a message on stderr and a non-zero exit.

mod demo;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pgwarden",
    version,
    about = "Highly-available PostgreSQL with etcd: agent, CLI and demo cluster",
    long_about = "pgwarden keeps a PostgreSQL cluster available: one agent per node elects a primary \
through etcd, keeps streaming replicas, fails over automatically and fences a primary that lost its lease.\n\n\
It reads Patroni's YAML configuration, uses Patroni's etcd key layout and serves Patroni's REST API, \
so existing tooling keeps working."
)]
struct Cli {
    #[command(flatten)]
    global: pgwarden_cli::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent for one PostgreSQL node.
    #[command(
        after_help = "Examples:\n  pgwarden agent /etc/pgwarden/node1.yml\n  PATRONI_NAME=node2 pgwarden agent node.yml\n\n\
The file uses Patroni's YAML schema; PATRONI_* and PGWARDEN_* environment variables override it.\n\
SIGTERM stops PostgreSQL cleanly and hands leadership to a replica at once."
    )]
    Agent {
        /// Configuration file (or a directory of *.yml files merged in order).
        config: PathBuf,
    },
    /// Check a configuration file without starting anything.
    #[command(
        after_help = "Exit status 0 when the file is valid; otherwise every problem is printed with its key.\n\n\
Example:\n  pgwarden validate /etc/pgwarden/node1.yml"
    )]
    Validate {
        /// Configuration file (or directory) to check.
        config: PathBuf,
        /// Print the effective configuration after validation.
        #[arg(long)]
        print: bool,
    },
    /// Run the proxy and connection pooler that follows the leader through etcd.
    #[command(after_help = "Example:\n  pgwarden proxy /etc/pgwarden/proxy.yml\n\n\
The file names the cluster like the agents' files (scope, namespace, etcd3.hosts) and holds the proxy's \
settings under `proxy:` (see docs/proxy.md). The read-write port follows the leader key; the read-only \
port balances over replicas. SIGHUP reloads the user list, TLS files and pool settings without dropping \
clients. Connect to database `pgwarden` as an admin user for SHOW POOLS, PAUSE, RESUME, RELOAD.")]
    Proxy {
        /// Proxy configuration file.
        config: PathBuf,
        /// Check the file and exit.
        #[arg(long)]
        check: bool,
    },
    /// Start a whole cluster on this machine: 3 etcd members and 3 PostgreSQL nodes on loopback.
    Demo(demo::DemoArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(
        after_help = "Example:\n  pgwarden completion bash > /etc/bash_completion.d/pgwarden"
    )]
    Completion { shell: clap_complete::Shell },
    #[command(flatten)]
    Cluster(pgwarden_cli::Verb),
    /// The watchdog guard a primary's agent runs (internal).
    #[command(hide = true)]
    WatchdogGuard(pgwarden_watchdog::GuardArgs),
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PGWARDEN_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

fn env_lookup(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Agent { config } => run_agent(config),
        Command::Validate { config, print } => validate(config, print),
        Command::Proxy { config, check } => run_proxy(config, check),
        Command::Demo(args) => demo::run(args),
        Command::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "pgwarden",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Cluster(verb) => return run_cli(cli.global, verb),
        Command::WatchdogGuard(args) => {
            return match pgwarden_watchdog::run_guard(&args, std::io::stdin()) {
                pgwarden_watchdog::GuardOutcome::Disarmed => ExitCode::SUCCESS,
                pgwarden_watchdog::GuardOutcome::Fenced(_) => ExitCode::from(3),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// A cluster verb; its exit code is the process's.
fn run_cli(global: pgwarden_cli::GlobalArgs, verb: pgwarden_cli::Verb) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(pgwarden_cli::run(global, verb)) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn validate(path: PathBuf, print: bool) -> anyhow::Result<()> {
    let config = pgwarden_config::load_path(&path, &env_lookup)?;
    for warning in &config.warnings {
        eprintln!("warning: {warning}");
    }
    if print {
        println!("{config:#?}");
    }
    println!("{}: configuration is valid", path.display());
    Ok(())
}

fn run_agent(path: PathBuf) -> anyhow::Result<()> {
    init_logging();
    let config = pgwarden_config::load_path(&path, &env_lookup)?;
    // One thread: the agent is idle nearly all the time, and a second worker
    // costs a cross-thread wake-up for most timer ticks and network answers
    // (the larger part of its idle CPU). Nothing in it blocks for long:
    // external tools run as child processes, slow file work goes to the
    // blocking pool, and the watchdog guard is a separate process that
    // fences even if this thread stalls.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let shutdown = shutdown_signal();
        let reload_path = path.clone();
        let reload: pgwarden_agent::ReloadSource = std::sync::Arc::new(move || {
            pgwarden_config::load_path(&reload_path, &env_lookup).map_err(|e| e.to_string())
        });
        pgwarden_agent::run_with_reload(config, Some(reload), shutdown).await
    })?;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn run_proxy(path: PathBuf, check: bool) -> anyhow::Result<()> {
    let config = pgwarden_proxy::config::ProxyConfig::load(&path)?;
    if check {
        println!("{}: proxy configuration is valid", path.display());
        return Ok(());
    }
    init_logging();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = match config.proxy.runtime_threads(cpus) {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
    .context("starting the async runtime")?;
    runtime.block_on(async move {
        let shutdown = shutdown_signal();
        pgwarden_proxy::run(config, Some(path), shutdown).await
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::{CommandFactory, Parser};

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn config_flag_goes_before_or_after_the_verb() {
        // The form the shared benchmark harness uses.
        let before = Cli::try_parse_from([
            "pgwarden",
            "-c",
            "n1.yml",
            "switchover",
            "--leader",
            "a",
            "--candidate",
            "b",
            "--force",
        ])
        .unwrap();
        assert_eq!(
            before.global.config.as_deref(),
            Some(std::path::Path::new("n1.yml"))
        );
        let after =
            Cli::try_parse_from(["pgwarden", "list", "-c", "n1.yml", "-f", "json"]).unwrap();
        assert_eq!(
            after.global.config.as_deref(),
            Some(std::path::Path::new("n1.yml"))
        );
        assert_eq!(after.global.format, pgwarden_cli::Format::Json);
        assert!(Cli::try_parse_from(["pgwarden", "list", "-f", "xml"]).is_err());
    }
}
