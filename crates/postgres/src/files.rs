//! File-system facts and edits: writing owned files atomically, the data
//! directory's emptiness, `postmaster.pid` and the process table, and
//! `pg_controldata` output.
//!
//! Invariants: files are written to a temporary name, fsynced, given their
//! mode and owner, then renamed, so PostgreSQL never reads a half-written
//! config. When the agent is root and `run_as` names a user, everything
//! written here is chowned to that user (PostgreSQL must read it). A pid
//! counts as our postmaster only if the process exists, is not a zombie, is a
//! `postgres`/`postmaster` executable and works in this data directory:
//! `postmaster.pid` alone proves nothing (stale files, reused pids).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid, User};

use crate::error::PgError;

/// The uid/gid files must belong to, when the agent is root and `run_as` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner {
    uid: Uid,
    gid: Gid,
}

pub(crate) fn owner_for(run_as: Option<&str>) -> Result<Option<Owner>, PgError> {
    let Some(user) = crate::command::effective_run_as(run_as) else {
        return Ok(None);
    };
    match User::from_name(user) {
        Ok(Some(u)) => Ok(Some(Owner {
            uid: u.uid,
            gid: u.gid,
        })),
        _ => Err(PgError::UnknownUser {
            user: user.to_string(),
        }),
    }
}

pub(crate) fn chown(path: &Path, owner: Option<Owner>) -> Result<(), PgError> {
    if let Some(o) = owner {
        nix::unistd::chown(path, Some(o.uid), Some(o.gid))
            .map_err(|e| PgError::io("change the owner of", path, std::io::Error::from(e)))?;
    }
    Ok(())
}

/// Writes `contents` to `path` atomically with `mode`, owned by `owner`.
pub(crate) fn write_file(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<Owner>,
) -> Result<(), PgError> {
    let tmp = tmp_name(path);
    let result = (|| {
        let _ = fs::remove_file(&tmp);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| PgError::io("create", &tmp, e))?;
        file.write_all(contents)
            .map_err(|e| PgError::io("write", &tmp, e))?;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| PgError::io("chmod", &tmp, e))?;
        file.sync_all().map_err(|e| PgError::io("fsync", &tmp, e))?;
        chown(&tmp, owner)?;
        fs::rename(&tmp, path).map_err(|e| PgError::io("rename into place", path, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn tmp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.pgwarden-tmp"))
}

/// Removes `path` if present.
pub(crate) fn remove_file(path: &Path) -> Result<(), PgError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(PgError::io("remove", path, e)),
        _ => Ok(()),
    }
}

/// True when `path` does not exist or is an empty directory.
pub(crate) fn dir_is_empty(path: &Path) -> Result<bool, PgError> {
    match fs::read_dir(path) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(PgError::io("list", path, e)),
    }
}

/// Creates `dir` (0700, owned) if missing, empties it otherwise, keeping mode 0700.
pub(crate) fn reset_dir(dir: &Path, owner: Option<Owner>) -> Result<(), PgError> {
    match fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(|e| PgError::io("list", dir, e))?;
                let path = entry.path();
                let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
                let removed = if is_dir {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                removed.map_err(|e| PgError::io("remove", &path, e))?;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(|e| PgError::io("create", dir, e))?;
        }
        Err(e) => return Err(PgError::io("list", dir, e)),
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| PgError::io("chmod", dir, e))?;
    chown(dir, owner)
}

/// The interesting lines of `postmaster.pid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidFile {
    /// Negative in the file for a single-user backend; stored as its absolute value.
    pub pid: u32,
    pub data_dir: PathBuf,
    /// Start time in seconds since the epoch.
    pub start_epoch: Option<i64>,
    pub port: Option<u16>,
    /// `starting`, `stopping`, `ready` or `standby` (line 8), once written.
    pub status: Option<String>,
}

pub(crate) fn read_pid_file(data_dir: &Path) -> Option<PidFile> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    parse_pid_file(&text)
}

pub(crate) fn parse_pid_file(text: &str) -> Option<PidFile> {
    let lines: Vec<&str> = text.lines().collect();
    let pid = lines.first()?.trim().parse::<i64>().ok()?.unsigned_abs();
    let pid = u32::try_from(pid).ok().filter(|p| *p > 1)?;
    Some(PidFile {
        pid,
        data_dir: PathBuf::from(lines.get(1).map_or("", |l| l.trim())),
        start_epoch: lines.get(2).and_then(|l| l.trim().parse().ok()),
        port: lines.get(3).and_then(|l| l.trim().parse().ok()),
        status: lines
            .get(7)
            .map(|l| l.trim().to_string())
            .filter(|s| !s.is_empty()),
    })
}

/// `/proc/<pid>/stat` fields this crate uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub ppid: u32,
    pub session: u32,
    /// Clock ticks after boot at which the process started: with the pid it
    /// names one process, even after the pid is reused.
    pub start_ticks: u64,
}

impl ProcStat {
    /// Running, sleeping or stopped; not a zombie waiting to be reaped.
    pub fn is_live(&self) -> bool {
        self.state != 'Z' && self.state != 'X'
    }
}

/// Reads `/proc/<pid>/stat`; `None` when the process does not exist.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let _pgrp = fields.next()?;
    let session = fields.next()?.parse().ok()?;
    // Field 22 of the file; `session` was field 6.
    let start_ticks = fields.nth(15)?.parse().ok()?;
    Some(ProcStat {
        state,
        ppid,
        session,
        start_ticks,
    })
}

/// The pid of the live postmaster (or single-user backend) that owns `data_dir`.
pub(crate) fn live_postmaster(data_dir: &Path) -> Option<u32> {
    let pid_file = read_pid_file(data_dir)?;
    is_postgres_for(pid_file.pid, data_dir).then_some(pid_file.pid)
}

/// The process exists and is not a zombie (a killed postmaster whose parent
/// has not reaped it yet must count as dead).
pub(crate) fn process_is_live(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|stat| stat.is_live())
}

/// Removes `<socket_dir>/.s.PGSQL.<port>.lock` when the process named in it
/// is gone or a zombie: postgres itself only checks `kill(pid, 0)`, which
/// succeeds for an unreaped zombie, and would refuse to start. A lock held by
/// any live process (another cluster on the port) is left alone.
pub(crate) fn remove_stale_socket_lock(socket_dir: &Path, port: u16) -> Result<bool, PgError> {
    let lock = socket_dir.join(format!(".s.PGSQL.{port}.lock"));
    let Ok(text) = fs::read_to_string(&lock) else {
        return Ok(false);
    };
    let pid = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i64>().ok())
        .map(i64::unsigned_abs);
    match pid.and_then(|p| u32::try_from(p).ok()) {
        Some(pid) if process_is_live(pid) => Ok(false),
        _ => {
            remove_file(&lock)?;
            Ok(true)
        }
    }
}

fn is_postgres_for(pid: u32, data_dir: &Path) -> bool {
    if !process_is_live(pid) {
        return false;
    }
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let argv: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let Some(argv0) = argv.first() else {
        return false;
    };
    // A running postmaster rewrites its title ("postgres: 15/main: ..." for
    // children); the postmaster itself keeps argv[0] = the executable path.
    let exe_name = argv0
        .split_whitespace()
        .next()
        .unwrap_or("")
        .rsplit('/')
        .next()
        .unwrap_or("");
    let exe_name = exe_name.trim_end_matches(':');
    if exe_name != "postgres" && exe_name != "postmaster" {
        return false;
    }
    let wanted = canonical(data_dir);
    // The postmaster chdirs into its data directory.
    if let Ok(cwd) = fs::read_link(format!("/proc/{pid}/cwd")) {
        return canonical(&cwd) == wanted;
    }
    // No permission to read cwd (not root, other uid): fall back to `-D <dir>`.
    match argv.iter().position(|a| a == "-D") {
        Some(i) => argv
            .get(i + 1)
            .is_some_and(|d| canonical(Path::new(d)) == wanted),
        None => true,
    }
}

fn canonical(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The system identifier from `global/pg_control` (its first 8 bytes, native
/// endian), without running a tool; `None` when unreadable.
pub(crate) fn read_system_identifier(data_dir: &Path) -> Option<String> {
    let bytes = fs::read(data_dir.join("global").join("pg_control")).ok()?;
    let head: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some(u64::from_ne_bytes(head).to_string())
}

/// `pg_controldata` output as key → value.
pub fn parse_controldata(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The last `max` bytes of a log file, cut at a line start.
pub(crate) fn file_tail(path: &Path, max: usize) -> String {
    let Ok(bytes) = fs::read(path) else {
        return format!("(no log at {})", path.display());
    };
    let start = bytes.len().saturating_sub(max);
    let text = String::from_utf8_lossy(&bytes[start..]).into_owned();
    match (start > 0, text.find('\n')) {
        (true, Some(i)) => text[i + 1..].to_string(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_file_lines() {
        let text =
            "4242\n/srv/pg/data\n1700000000\n5433\n/srv/pg\n127.0.0.1\n  1234   5678\nready   \n";
        let p = parse_pid_file(text).unwrap();
        assert_eq!(p.pid, 4242);
        assert_eq!(p.port, Some(5433));
        assert_eq!(p.status.as_deref(), Some("ready"));
        assert_eq!(parse_pid_file("-77\n/x\n").unwrap().pid, 77);
        assert_eq!(parse_pid_file("garbage"), None);
    }

    #[test]
    fn own_process_is_not_a_postmaster() {
        let me = std::process::id();
        assert!(proc_stat(me).is_some());
        assert!(!is_postgres_for(me, Path::new("/")));
    }

    #[test]
    fn start_ticks_tell_a_process_from_a_later_one() {
        let me = proc_stat(std::process::id()).expect("own stat");
        assert!(me.is_live());
        // Field 22 counted plainly (this binary's name has no spaces).
        let text = fs::read_to_string("/proc/self/stat").expect("own stat file");
        let field22: u64 = text.split_whitespace().nth(21).unwrap().parse().unwrap();
        assert_eq!(me.start_ticks, field22);
        let child = std::process::Command::new("sleep")
            .arg("0.1")
            .spawn()
            .expect("spawn sleep");
        let other = proc_stat(child.id()).expect("child stat");
        assert!(other.start_ticks >= me.start_ticks);
        let _ = child.wait_with_output();
    }

    #[test]
    fn controldata_keys() {
        let map = parse_controldata("Database system identifier:           7312\nDatabase cluster state:               in production\nLatest checkpoint's TimeLineID:       3\n");
        assert_eq!(map["Database system identifier"], "7312");
        assert_eq!(map["Latest checkpoint's TimeLineID"], "3");
    }
}
