//! A software watchdog for a primary's PostgreSQL, in its own process.
//!
//! Why: the agent fences its primary when its lease renewal gets too old, but
//! a frozen (SIGSTOP, paused VM) or killed agent fences nothing, and its
//! PostgreSQL would go on acknowledging writes after a replica was promoted.
//! The kernel's softdog may not exist. So while a node is primary, the agent
//! runs a small guard process and keeps telling it until when the lease is
//! certainly valid. The guard stops PostgreSQL when that time passes without
//! a newer word, or at once when the agent's end of the pipe closes without
//! the disarm byte (the agent died).
//!
//! Protocol on the guard's stdin: `F` followed by a big-endian `u32`: "valid
//! for that many more milliseconds from now"; `V`: disarm and exit. The guard
//! measures on CLOCK_MONOTONIC, which keeps running while a process is stopped
//! or frozen, so a guard that was frozen itself fires as soon as it thaws if
//! the deadline passed meanwhile.
//!
//! Fencing: the postmaster is read from `postmaster.pid` of the guarded data
//! directory and checked (its line for the data directory, its command line);
//! it is stopped with SIGSTOP so it cannot start new backends, every child is
//! killed with SIGKILL, then the postmaster. No backend survives to
//! acknowledge another commit. Nothing else is ever signalled.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Byte that announces a validity extension.
const FEED: u8 = b'F';
/// Byte that disarms the guard.
const DISARM: u8 = b'V';

#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    #[error("cannot start the watchdog guard {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the watchdog guard is gone: {0}")]
    Gone(std::io::Error),
}

/// What ended a guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardOutcome {
    /// The agent disarmed it.
    Disarmed,
    /// PostgreSQL was fenced; the text says why and what was killed.
    Fenced(String),
}

/// The guard's command line (mounted by the `pgwarden` binary as a hidden subcommand).
#[derive(Debug, Clone, clap::Args)]
pub struct GuardArgs {
    /// Data directory whose postmaster is guarded.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Validity before the first word from the agent, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub initial_ms: u64,
}

/// The agent's end: spawns the guard and keeps it fed.
pub struct WatchdogHandle {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl WatchdogHandle {
    /// Starts `program args... --data-dir D --initial-ms N` with a pipe on its stdin.
    pub fn spawn(
        program: &Path,
        args: &[&str],
        data_dir: &Path,
        initial: Duration,
    ) -> Result<WatchdogHandle, WatchdogError> {
        let mut child = Command::new(program)
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--initial-ms")
            .arg(initial.as_millis().to_string())
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|source| WatchdogError::Spawn {
                program: program.display().to_string(),
                source,
            })?;
        let stdin = child.stdin.take();
        Ok(WatchdogHandle { child, stdin })
    }

    /// PostgreSQL may run as primary for `valid_for` more (the lease is certainly ours until then).
    pub fn feed(&mut self, valid_for: Duration) -> Result<(), WatchdogError> {
        let ms = u32::try_from(valid_for.as_millis()).unwrap_or(u32::MAX);
        let mut message = [FEED, 0, 0, 0, 0];
        message[1..].copy_from_slice(&ms.to_be_bytes());
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| WatchdogError::Gone(std::io::ErrorKind::BrokenPipe.into()))?;
        stdin
            .write_all(&message)
            .and_then(|()| stdin.flush())
            .map_err(WatchdogError::Gone)
    }

    /// Whether the guard process still runs.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops the guard without fencing (the node stopped being primary cleanly).
    pub fn disarm(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(&[DISARM]);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WatchdogHandle {
    /// Dropped without `disarm`: closing the pipe makes the guard fence at
    /// once; the guard is then reaped so no zombie stays behind.
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

enum Word {
    ValidFor(Duration),
    Disarm,
    Closed,
}

/// Reads the agent's words from `input` on a thread (blocking reads).
fn words(mut input: impl Read + Send + 'static) -> mpsc::Receiver<Word> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || loop {
        let mut kind = [0u8; 1];
        let word = match input.read_exact(&mut kind) {
            Err(_) => Word::Closed,
            Ok(()) if kind[0] == DISARM => Word::Disarm,
            Ok(()) if kind[0] == FEED => {
                let mut ms = [0u8; 4];
                match input.read_exact(&mut ms) {
                    Ok(()) => {
                        Word::ValidFor(Duration::from_millis(u64::from(u32::from_be_bytes(ms))))
                    }
                    Err(_) => Word::Closed,
                }
            }
            // Anything else is a broken agent: treat it like a closed pipe.
            Ok(()) => Word::Closed,
        };
        let last = matches!(word, Word::Closed | Word::Disarm);
        if tx.send(word).is_err() || last {
            return;
        }
    });
    rx
}

/// The guard's loop: returns when disarmed or after fencing.
pub fn run_guard(args: &GuardArgs, input: impl Read + Send + 'static) -> GuardOutcome {
    let words = words(input);
    let mut deadline = Instant::now() + Duration::from_millis(args.initial_ms);
    loop {
        let now = Instant::now();
        if now >= deadline {
            let late = now.duration_since(deadline);
            return GuardOutcome::Fenced(fence(
                &args.data_dir,
                &format!(
                    "the agent's lease validity ran out {} ms ago",
                    late.as_millis()
                ),
            ));
        }
        match words.recv_timeout((deadline - now).min(Duration::from_millis(50))) {
            Ok(Word::ValidFor(d)) => deadline = Instant::now() + d,
            Ok(Word::Disarm) => return GuardOutcome::Disarmed,
            Ok(Word::Closed) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                return GuardOutcome::Fenced(fence(
                    &args.data_dir,
                    "the agent closed the watchdog pipe without disarming it (it died)",
                ))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

/// The postmaster of `data_dir`, if `postmaster.pid` names a live process
/// that really is that data directory's postmaster.
fn postmaster_of(data_dir: &Path) -> Result<i32, String> {
    let pid_file = data_dir.join("postmaster.pid");
    let text = std::fs::read_to_string(&pid_file)
        .map_err(|e| format!("no postmaster to fence ({}: {e})", pid_file.display()))?;
    let mut lines = text.lines();
    let pid: i32 = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .filter(|p| *p > 1)
        .ok_or_else(|| format!("{} names no process", pid_file.display()))?;
    let recorded = lines.next().map(str::trim).unwrap_or("");
    let same_dir = std::fs::canonicalize(recorded).ok() == std::fs::canonicalize(data_dir).ok();
    if !same_dir {
        return Err(format!(
            "{} names data directory '{recorded}', not {}; not touching pid {pid}",
            pid_file.display(),
            data_dir.display()
        ));
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map_err(|_| format!("postmaster {pid} is not running"))?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    if !cmdline.contains("postgres") && !cmdline.contains("postmaster") {
        return Err(format!(
            "pid {pid} from {} is not a PostgreSQL process ({}); not touching it",
            pid_file.display(),
            cmdline.replace('\0', " ").trim()
        ));
    }
    Ok(pid)
}

/// Direct children of `pid`, from `/proc/*/stat`.
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    // pid (comm) state ppid ...: comm may contain spaces, so split after ')'.
                    let rest = stat.rsplit_once(')')?.1;
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// Stops the postmaster of `data_dir` and every child at once; returns what happened.
pub fn fence(data_dir: &Path, why: &str) -> String {
    let pid = match postmaster_of(data_dir) {
        Ok(pid) => pid,
        Err(nothing) => {
            let line = format!("watchdog: {why}; {nothing}");
            eprintln!("{line}");
            return line;
        }
    };
    // Frozen, the postmaster starts no new backend while its children die.
    let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
    let children = children_of(pid);
    for child in &children {
        let _ = kill(Pid::from_raw(*child), Signal::SIGKILL);
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    let line = format!(
        "watchdog: {why}; killed PostgreSQL postmaster {pid} and its {} processes",
        children.len()
    );
    eprintln!("{line}");
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_file_for_another_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("postmaster.pid"),
            format!("{}\n{}\n", std::process::id(), other.path().display()),
        )
        .unwrap();
        let err = postmaster_of(dir.path()).unwrap_err();
        assert!(err.contains("not touching"), "{err}");
    }

    #[test]
    fn a_pid_file_naming_a_non_postgres_process_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("postmaster.pid"),
            format!("{}\n{}\n", std::process::id(), dir.path().display()),
        )
        .unwrap();
        let err = postmaster_of(dir.path()).unwrap_err();
        assert!(err.contains("not a PostgreSQL process"), "{err}");
    }

    #[test]
    fn no_pid_file_means_nothing_to_fence() {
        let dir = tempfile::tempdir().unwrap();
        let text = fence(dir.path(), "test");
        assert!(text.contains("no postmaster to fence"), "{text}");
    }

    #[test]
    fn words_are_decoded() {
        let bytes: Vec<u8> = vec![FEED, 0, 0, 1, 0, DISARM];
        let rx = words(std::io::Cursor::new(bytes));
        assert!(matches!(rx.recv().unwrap(), Word::ValidFor(d) if d == Duration::from_millis(256)));
        assert!(matches!(rx.recv().unwrap(), Word::Disarm));
    }

    #[test]
    fn the_guard_fires_on_a_closed_pipe_and_after_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let args = GuardArgs {
            data_dir: dir.path().to_path_buf(),
            initial_ms: 60_000,
        };
        let closed = run_guard(&args, std::io::Cursor::new(Vec::new()));
        assert!(
            matches!(closed, GuardOutcome::Fenced(ref t) if t.contains("closed the watchdog pipe")),
            "{closed:?}"
        );
        let short = GuardArgs {
            data_dir: dir.path().to_path_buf(),
            initial_ms: 50,
        };
        // A reader that never answers: only the deadline can end the guard.
        let (_keep, reader) = std::os::unix::net::UnixStream::pair().unwrap();
        let expired = run_guard(&short, reader);
        assert!(
            matches!(expired, GuardOutcome::Fenced(ref t) if t.contains("ran out")),
            "{expired:?}"
        );
        let disarmed = run_guard(&args, std::io::Cursor::new(vec![DISARM]));
        assert_eq!(disarmed, GuardOutcome::Disarmed);
    }
}
