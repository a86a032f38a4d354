//! SQL connections to the local server as the superuser.
//!
//! Invariants: every connection is made for one operation and closed when
//! the [`Conn`] is dropped (its driver task is aborted), so no connection
//! outlives a cycle or holds a backend across a restart — except the probe
//! connection of `observe`, which is kept while the same postmaster runs
//! (forking a backend and a SCRAM exchange every second would be most of the
//! agent's idle cost) and dropped on any error, on a new postmaster or on new
//! settings. The leader's per-cycle slot maintenance shares it. Every round trip is
//! wrapped in a deadline by the caller ([`bounded`]). With a superuser
//! password the connection uses TCP to `connect_host:connect_port`;
//! without one it uses the unix socket (peer or trust auth).

use std::future::Future;
use std::time::Duration;

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::error::PgError;
use crate::settings::PgSettings;

/// One open connection; dropped = closed.
pub(crate) struct Conn {
    pub(crate) client: Client,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Runs `fut` with a deadline, naming `action` on expiry.
pub(crate) async fn bounded<T>(
    action: &str,
    after: Duration,
    fut: impl Future<Output = Result<T, PgError>>,
) -> Result<T, PgError> {
    match tokio::time::timeout(after, fut).await {
        Ok(result) => result,
        Err(_) => Err(PgError::Timeout {
            action: action.to_string(),
            after,
        }),
    }
}

pub(crate) async fn connect(settings: &PgSettings, timeout: Duration) -> Result<Conn, PgError> {
    let mut config = tokio_postgres::Config::new();
    config
        .user(&settings.superuser.username)
        .dbname(&settings.database)
        .application_name("pgwarden")
        .connect_timeout(timeout);
    match &settings.superuser.password {
        Some(password) => {
            config
                .host(&settings.connect_host)
                .port(settings.connect_port)
                .password(password);
        }
        None => {
            config.host_path(settings.socket_dir()).port(settings.port);
        }
    }
    let action = "connect to the local PostgreSQL";
    let (client, connection) = bounded(action, timeout, async {
        config
            .connect(NoTls)
            .await
            .map_err(|e| PgError::sql(action, e))
    })
    .await?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(Conn { client, driver })
}

/// Rows of a simple-protocol query, every value as text (`None` = NULL).
pub(crate) async fn simple_rows(
    client: &Client,
    sql: &str,
    action: &str,
) -> Result<Vec<Vec<Option<String>>>, PgError> {
    let messages = client
        .simple_query(sql)
        .await
        .map_err(|e| PgError::sql(action, e))?;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}
