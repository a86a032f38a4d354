//! Ownership of child processes started by tests.
//!
//! A [`ChildGuard`] owns one spawned process. Its stdout and stderr go to log
//! files (appended, so a restarted process keeps the earlier output next to the
//! new one); pipes are never used because an undrained pipe can block the child.
//! On drop the guard sends SIGKILL to the child's PID and reaps it, so a failing
//! test leaves nothing behind. It only ever signals the PID it spawned.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A spawned process that is SIGKILLed and reaped when the guard is dropped.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    pid: u32,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl ChildGuard {
    /// Spawns `cmd` with stdin closed and output appended to
    /// `<log_dir>/<name>.stdout.log` and `<log_dir>/<name>.stderr.log`.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> std::io::Result<ChildGuard> {
        std::fs::create_dir_all(log_dir)?;
        let stdout_path = log_dir.join(format!("{name}.stdout.log"));
        let stderr_path = log_dir.join(format!("{name}.stderr.log"));
        let open = |p: &Path| OpenOptions::new().create(true).append(true).open(p);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(open(&stdout_path)?))
            .stderr(Stdio::from(open(&stderr_path)?));
        let child = cmd.spawn()?;
        tracing::debug!(name, pid = child.id(), "spawned child process");
        Ok(ChildGuard {
            name: name.to_string(),
            pid: child.id(),
            child: Some(child),
            stdout_path,
            stderr_path,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// Sends `signal` to the child's PID (only while it has not been reaped).
    pub fn signal(&self, signal: Signal) -> Result<(), String> {
        if self.child.is_none() {
            return Err(format!(
                "{} (pid {}) was already reaped",
                self.name, self.pid
            ));
        }
        let pid = i32::try_from(self.pid).map_err(|e| e.to_string())?;
        kill(Pid::from_raw(pid), signal)
            .map_err(|e| format!("kill({}, {signal}) for {}: {e}", self.pid, self.name))
    }

    /// Freezes the process (SIGSTOP); it keeps its sockets open but answers nothing.
    pub fn pause(&self) -> Result<(), String> {
        self.signal(Signal::SIGSTOP)
    }

    /// Thaws a process frozen by [`ChildGuard::pause`].
    pub fn resume(&self) -> Result<(), String> {
        self.signal(Signal::SIGCONT)
    }

    /// Whether the process has not exited yet (reaps it if it has).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL by PID, then wait for it. Idempotent. Returns the exit status if
    /// the process was still owned.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(None) = child.try_wait() {
            if let Ok(pid) = i32::try_from(self.pid) {
                // SIGKILL also ends a SIGSTOPped process; ESRCH only if it already exited.
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        let status = child.wait().ok();
        tracing::debug!(name = %self.name, pid = self.pid, ?status, "child process reaped");
        status
    }

    /// The last `max_bytes` of the stderr log, for failure messages.
    pub fn stderr_tail(&self, max_bytes: u64) -> String {
        tail(&self.stderr_path, max_bytes)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `max_bytes` of a file, lossily decoded; empty when unreadable.
pub fn tail(path: &Path, max_bytes: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max_bytes)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_output_and_kills_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("echo hello; echo oops >&2; exec sleep 600");
        let mut guard = ChildGuard::spawn("sh", cmd, dir.path()).unwrap();
        assert!(guard.is_running());
        crate::wait::wait_until_blocking(
            "stderr log to contain the child's output",
            std::time::Duration::from_secs(10),
            std::time::Duration::from_millis(10),
            || guard.stderr_tail(100).contains("oops"),
        )
        .unwrap();
        let pid = guard.pid();
        guard.pause().unwrap();
        guard.resume().unwrap();
        drop(guard);
        // The PID was reaped, so signal 0 must fail (ESRCH) unless the PID was reused.
        let alive = kill(Pid::from_raw(pid as i32), None).is_ok();
        let stdout = std::fs::read_to_string(dir.path().join("sh.stdout.log")).unwrap();
        assert_eq!(stdout, "hello\n");
        assert!(
            !alive
                || std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .map_or(true, |c| !c.contains("sleep"))
        );
    }
}
