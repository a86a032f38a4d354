//! Everything pgwarden does to the local PostgreSQL 15.
//!
//! [`Postgres`] wraps one data directory: it observes it ([`Postgres::observe`]),
//! creates it (`initdb`, `basebackup`), repairs it (`rewind`, `wipe_data_dir`),
//! runs it (`start`, `stop`, `promote`, `reload`, `follow`) and talks SQL to it
//! (`create_roles`, `sync_physical_slots`, `checkpoint`, `timeline_history`).
//!
//! # Guarantees
//! * **Bounded**: every call finishes or fails within a deadline: tool calls
//!   are killed (whole process group) at their deadline, SQL round trips and
//!   waits are wrapped in timeouts ([`Timeouts`], `pg_ctl_timeout`).
//! * **Typed errors**: [`PgError`] says what failed and carries the evidence:
//!   a failing tool's stderr tail, the postmaster log tail of a failed start.
//!   No error or log line carries a password.
//! * **Observation never fails**: [`Postgres::observe`] reports what it could
//!   learn; a postmaster counts as running only if the pid in
//!   `postmaster.pid` is a live, non-zombie `postgres` process working in this
//!   data directory (`/proc/<pid>/cwd`), so a stale pid file or a reused pid
//!   is not mistaken for a server.
//! * **Detached server**: the postmaster is started by `pg_ctl` in its own
//!   session with its output in `<data_dir>.postmaster.log` beside the data
//!   directory; no pipe or process-group ties it to the agent, so it survives
//!   the agent being killed and is re-adopted on the next `observe`.
//! * **Clean tool environment**: tools run with a cleared environment (only
//!   `LANG`/`LC_ALL=C`, a minimal `PATH`, and `PGPASSFILE`/`PGOPTIONS` where
//!   needed), argv without a shell, and as `run_as` via `runuser` when the
//!   agent is root.
//! * **Owned configuration**: `postgresql.conf` is rewritten from
//!   [`PgSettings`] for every role change (`include 'postgresql.base.conf'`
//!   first, then the managed parameters sorted, then the recovery block);
//!   `pg_hba.conf` from the settings when given; passwords live only in the
//!   0600 pgpass file. `standby.signal` exists exactly when the role is replica.
//! * **Destructive steps are guarded**: initdb, basebackup, rewind, wipe and
//!   move-aside refuse to run while a postmaster owns the data directory;
//!   a failed base backup leaves an empty data directory, never a partial one.
//!
//! It decides nothing: the engine chooses actions, the agent calls these methods.

mod command;
mod error;
mod files;
mod postgres;
mod render;
mod settings;
mod sql;

pub use command::{Tool, ToolOutput};
pub use error::PgError;
pub use files::{parse_controldata, proc_stat, PidFile, ProcStat};
pub use postgres::Postgres;
pub use render::{
    default_pg_hba, managed_parameters, parse_following, primary_conninfo, quote_conf,
    quote_conninfo, quote_ident, quote_literal, render_conninfo, render_pg_hba, render_pgpass,
    render_postgresql_conf, valid_slot_name,
};
pub use settings::{
    ConfigRole, Credentials, PgSettings, RewindOutcome, SlotChanges, StopMode, Timeouts, Upstream,
};
