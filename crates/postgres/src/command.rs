//! The one runner for every external PostgreSQL tool.
//!
//! Invariants:
//! * the environment is cleared; only `LANG`/`LC_ALL=C`, a minimal `PATH` and
//!   the variables the caller adds explicitly (`PGPASSFILE`, `PGOPTIONS`) reach
//!   the tool, so nothing from the agent's environment (`PGHOST`, `PGDATA`,
//!   `PGPASSWORD`, ...) changes what a tool does;
//! * arguments are passed as an argv vector, never through a shell;
//! * every call has a deadline; on expiry the tool's whole process group is
//!   killed with SIGKILL (a postmaster started by `pg_ctl` is not in that group:
//!   `pg_ctl` puts it in its own session);
//! * stdout and stderr are captured, and the tail of stderr is part of the
//!   error, because that is where PostgreSQL tools explain themselves;
//! * reading the pipes is bounded too, so a detached grandchild that kept a
//!   pipe open cannot hang the caller.
//!
//! With `run_as` set and the agent running as root, the tool runs as
//! `runuser -u <user> -- <tool> ...` (PostgreSQL refuses to run as root).
//! When the agent is not root, `run_as` is ignored: the tool runs as the
//! agent's own user, which is what production (agent = postgres user) wants.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tracing::debug;

use crate::error::PgError;

/// `PATH` given to tools: enough for `pg_ctl` to find `/bin/sh`.
const MINIMAL_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// How long the pipes may stay open after the tool exited.
const PIPE_DRAIN_LIMIT: Duration = Duration::from_secs(3);

/// How many trailing lines of output an error keeps.
const TAIL_LINES: usize = 20;

/// What a successful tool printed.
#[derive(Debug, Clone, Default)]
pub struct ToolOutput {
    pub stdout: String,
    pub stderr: String,
}

/// One invocation of an external tool; build it, then [`Tool::run`] it.
#[derive(Debug, Clone)]
pub struct Tool {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    timeout: Duration,
    run_as: Option<String>,
}

impl Tool {
    /// A tool at an absolute path, with a default deadline of 60 s.
    pub fn new(program: impl Into<PathBuf>) -> Tool {
        Tool {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            timeout: Duration::from_secs(60),
            run_as: None,
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Tool {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Tool
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Adds one variable to the otherwise empty environment.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Tool {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Tool {
        self.timeout = timeout;
        self
    }

    /// Runs the tool as this OS user (only takes effect when the agent is root).
    pub fn run_as(mut self, user: Option<&str>) -> Tool {
        self.run_as = user.map(str::to_string);
        self
    }

    /// The tool's file name, for messages.
    pub fn name(&self) -> String {
        self.program.file_name().map_or_else(
            || self.program.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    }

    /// Runs the tool to completion (or its deadline).
    pub async fn run(self) -> Result<ToolOutput, PgError> {
        let name = self.name();
        let mut command = match effective_run_as(self.run_as.as_deref()) {
            Some(user) => {
                let mut c = tokio::process::Command::new(runuser_path());
                c.arg("-u").arg(user).arg("--").arg(&self.program);
                c
            }
            None => tokio::process::Command::new(&self.program),
        };
        command
            .args(&self.args)
            .env_clear()
            .env("LANG", "C")
            .env("LC_ALL", "C")
            .env("PATH", MINIMAL_PATH)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group, so a timeout kills the tool and its helpers
            // (runuser's child included) with one signal.
            .process_group(0);
        debug!(tool = %name, args = ?self.args, "running");
        let mut child = command.spawn().map_err(|source| PgError::Spawn {
            tool: name.clone(),
            source,
        })?;
        let pid = child.id();
        let stdout_buf = Arc::new(Mutex::new(Vec::new()));
        let stderr_buf = Arc::new(Mutex::new(Vec::new()));
        let readers = [
            child
                .stdout
                .take()
                .map(|pipe| spawn_reader(pipe, stdout_buf.clone())),
            child
                .stderr
                .take()
                .map(|pipe| spawn_reader(pipe, stderr_buf.clone())),
        ];

        let status = match tokio::time::timeout(self.timeout, child.wait()).await {
            Ok(Ok(status)) => Some(status),
            Ok(Err(source)) => return Err(PgError::Spawn { tool: name, source }),
            Err(_) => {
                if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
                let _ = tokio::time::timeout(PIPE_DRAIN_LIMIT, child.wait()).await;
                None
            }
        };
        for reader in readers.into_iter().flatten() {
            if tokio::time::timeout(PIPE_DRAIN_LIMIT, reader)
                .await
                .is_err()
            {
                debug!(tool = %name, "output pipe still open after the tool exited; not waiting for it");
            }
        }
        let stdout = String::from_utf8_lossy(&take(&stdout_buf)).into_owned();
        let stderr = String::from_utf8_lossy(&take(&stderr_buf)).into_owned();
        let tail = || {
            if stderr.trim().is_empty() {
                tail_lines(&stdout)
            } else {
                tail_lines(&stderr)
            }
        };
        match status {
            None => Err(PgError::ToolTimeout {
                tool: name,
                args: self.args,
                after: self.timeout,
                stderr_tail: tail(),
            }),
            Some(status) if status.success() => Ok(ToolOutput { stdout, stderr }),
            Some(status) => Err(PgError::ToolFailed {
                tool: name,
                args: self.args,
                exit: status.code(),
                stderr_tail: tail(),
            }),
        }
    }
}

fn take(buf: &Mutex<Vec<u8>>) -> Vec<u8> {
    std::mem::take(&mut *buf.lock().unwrap_or_else(|e| e.into_inner()))
}

fn spawn_reader<R>(mut pipe: R, buf: Arc<Mutex<Vec<u8>>>) -> tokio::task::JoinHandle<()>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut chunk = [0u8; 8192];
        loop {
            match pipe.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&chunk[..n]),
            }
        }
    })
}

/// The last lines of a tool's output, trimmed.
pub(crate) fn tail_lines(text: &str) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let start = lines.len().saturating_sub(TAIL_LINES);
    lines[start..].join("\n")
}

/// `run_as` only matters when we are root; otherwise the tool runs as us.
pub(crate) fn effective_run_as(run_as: Option<&str>) -> Option<&str> {
    run_as.filter(|_| nix::unistd::geteuid().is_root())
}

fn runuser_path() -> &'static Path {
    [
        "/usr/sbin/runuser",
        "/sbin/runuser",
        "/usr/bin/runuser",
        "/bin/runuser",
    ]
    .iter()
    .map(Path::new)
    .find(|p| p.exists())
    .unwrap_or(Path::new("/usr/sbin/runuser"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failure_carries_stderr() {
        let err = Tool::new("/bin/ls")
            .arg("/definitely/not/here")
            .run()
            .await
            .unwrap_err();
        match err {
            PgError::ToolFailed {
                tool,
                exit,
                stderr_tail,
                ..
            } => {
                assert_eq!(tool, "ls");
                assert_ne!(exit, Some(0));
                assert!(
                    stderr_tail.contains("/definitely/not/here"),
                    "{stderr_tail}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn environment_is_cleared() {
        let out = Tool::new("/usr/bin/env")
            .env("PGOPTIONS", "-c x=1")
            .run()
            .await
            .unwrap();
        let mut keys: Vec<&str> = out
            .stdout
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["LANG", "LC_ALL", "PATH", "PGOPTIONS"]);
    }

    #[tokio::test]
    async fn timeout_kills_the_tool() {
        let err = Tool::new("/bin/sleep")
            .arg("30")
            .timeout(Duration::from_millis(100))
            .run()
            .await
            .unwrap_err();
        assert!(matches!(err, PgError::ToolTimeout { .. }), "{err:?}");
    }

    #[test]
    fn tail_keeps_last_lines() {
        let text: String = (0..50).map(|i| format!("line {i}\n")).collect();
        let tail = tail_lines(&text);
        assert!(tail.starts_with("line 30"));
        assert!(tail.ends_with("line 49"));
    }
}
