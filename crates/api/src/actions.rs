//! Write endpoints: configuration changes, switchover and failover, restart,
//! reload, reinitialize and the failsafe handshake (patroni-compat §4.4).
//!
//! Cluster-wide actions (config, switchover, failover) are validated here
//! against a fresh snapshot and written to the store with a precondition;
//! the agents carry them out. Node actions (restart, reload, reinitialize)
//! are handed to this node's agent through [`ApiBackend::node_action`], which
//! decides and answers. A request that fails validation changes nothing and
//! gets a 4xx with a one-line reason.

// Validation helpers return the finished HTTP answer as their error: one
// allocation per refused request, far from any hot path.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, FixedOffset, Utc};
use pgwarden_dcs::{Dcs, Precondition};
use pgwarden_types::{
    ClusterSnapshot, DynamicConfig, FailoverRequest, Member, PgState, SynchronousMode,
};
use serde_json::{Map, Value};

use crate::server::{json_response, Backend};
use crate::status::NodeStatus;

/// What an operator asks of this node's agent.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeAction {
    /// Restart PostgreSQL now (the answer comes when it is back).
    Restart,
    /// Restart at `at`; `document` is what `/patroni` shows under `scheduled_restart`.
    ScheduleRestart {
        at: DateTime<FixedOffset>,
        document: Value,
    },
    /// Forget a scheduled restart (`Err` when none was scheduled).
    CancelScheduledRestart,
    /// Re-read the configuration file.
    Reload,
    /// Throw the data directory away and clone it again.
    Reinitialize { from_leader: bool },
}

/// Why a node refuses a leader's `POST /failsafe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailsafeRefusal {
    Disabled,
    RunningAsLeader,
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

fn bad_request(body: impl Into<String>) -> Response {
    text(StatusCode::BAD_REQUEST, body)
}

/// A JSON object body; an empty body counts as `{}`.
fn object_body(body: &Bytes) -> Result<Map<String, Value>, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(bad_request("the request body must be a JSON object")),
        Err(err) => Err(bad_request(format!(
            "malformed JSON in the request body: {err}"
        ))),
    }
}

fn store(backend: &Backend) -> Result<Arc<dyn Dcs>, Response> {
    backend.store().ok_or_else(|| {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "this agent cannot write to the store",
        )
    })
}

async fn fresh_snapshot(dcs: &dyn Dcs) -> Result<ClusterSnapshot, Response> {
    dcs.snapshot().await.map_err(|err| {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the cluster from the store: {err}"),
        )
    })
}

fn string_field(body: &Map<String, Value>, key: &str) -> Result<Option<String>, Response> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(bad_request(format!(
            "'{key}' must be a string, not {other}"
        ))),
    }
}

fn bool_field(body: &Map<String, Value>, key: &str) -> Result<bool, Response> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(v) => pgwarden_types::coerce_bool(v)
            .ok_or_else(|| bad_request(format!("'{key}' must be a boolean, not {v}"))),
    }
}

/// An ISO 8601 time with a time zone, in the future.
fn future_time(key: &str, text_value: &str) -> Result<DateTime<FixedOffset>, Response> {
    let at = DateTime::parse_from_rfc3339(text_value).map_err(|_| {
        bad_request(format!(
            "'{key}' must be an ISO 8601 time with a time zone, e.g. 2026-01-01T10:00:00+00:00; got '{text_value}'"
        ))
    })?;
    if at <= Utc::now() {
        return Err(bad_request(format!(
            "'{key}' ({text_value}) is not in the future"
        )));
    }
    Ok(at)
}

// ----- /config ----------------------------------------------------------------

/// RFC 7386 merge: objects merge recursively, `null` deletes a key.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(base), Some(changes)) => {
            for (key, value) in changes {
                if value.is_null() {
                    base.remove(key);
                } else {
                    merge_patch(base.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

fn validated(config: &Value) -> Result<(), Response> {
    DynamicConfig::from_json(config)
        .map(|_| ())
        .map_err(|err| bad_request(format!("invalid configuration: {err}")))
}

pub(crate) async fn patch_config(State(backend): State<Backend>, body: Bytes) -> Response {
    let patch = match object_body(&body) {
        Ok(map) => Value::Object(map),
        Err(response) => return response,
    };
    let dcs = match store(&backend) {
        Ok(dcs) => dcs,
        Err(response) => return response,
    };
    let snapshot = match fresh_snapshot(dcs.as_ref()).await {
        Ok(s) => s,
        Err(response) => return response,
    };
    let Some(current) = snapshot.config else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no configuration in the store yet",
        );
    };
    let mut config = current.value.clone();
    merge_patch(&mut config, &patch);
    if let Err(response) = validated(&config) {
        return response;
    }
    match dcs
        .set_config(&config, Precondition::ModRevision(current.mod_revision))
        .await
    {
        Ok(true) => json_response(200, &config),
        Ok(false) => text(
            StatusCode::CONFLICT,
            "the configuration was changed concurrently; read it again and retry",
        ),
        Err(err) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("writing the configuration failed: {err}"),
        ),
    }
}

pub(crate) async fn put_config(State(backend): State<Backend>, body: Bytes) -> Response {
    let config = match object_body(&body) {
        Ok(map) => Value::Object(map),
        Err(response) => return response,
    };
    if let Err(response) = validated(&config) {
        return response;
    }
    let dcs = match store(&backend) {
        Ok(dcs) => dcs,
        Err(response) => return response,
    };
    match dcs.set_config(&config, Precondition::Unconditional).await {
        Ok(_) => json_response(200, &config),
        Err(err) => text(
            StatusCode::BAD_GATEWAY,
            format!("writing the configuration failed: {err}"),
        ),
    }
}

// ----- switchover / failover --------------------------------------------------

/// Why `member` cannot take over now, judged from its member key.
fn unfit_candidate(
    snapshot: &ClusterSnapshot,
    member: &Member,
    switchover: bool,
) -> Option<String> {
    let name = &member.name;
    if !member.data.tags.can_be_promoted() {
        return Some(format!("candidate {name} is tagged nofailover"));
    }
    if member.data.state != PgState::Running {
        return Some(format!(
            "candidate {name} is not running (state {})",
            member.data.state.as_str()
        ));
    }
    if switchover && snapshot.dynamic_config().synchronous_mode != SynchronousMode::Off {
        let listed = snapshot.sync.as_ref().is_some_and(|s| s.value.lists(name));
        if !listed {
            return Some("candidate name does not match with sync_standby".into());
        }
    }
    None
}

struct Planned {
    leader: Option<String>,
    candidate: Option<String>,
}

/// Patroni's validation of a switchover or failover request.
fn plan(
    snapshot: &ClusterSnapshot,
    body: &Map<String, Value>,
    switchover: bool,
    force: bool,
) -> Result<Planned, Response> {
    let leader = string_field(body, "leader")?;
    let candidate = match string_field(body, "candidate")? {
        Some(c) => Some(c),
        None => string_field(body, "member")?,
    };
    let paused = snapshot.dynamic_config().pause;
    // A failover naming the leader is a switchover (Patroni).
    let switchover = switchover || leader.is_some();
    if switchover && leader.is_none() {
        return Err(bad_request(
            "Switchover could be performed only from a specific leader",
        ));
    }
    if !switchover && candidate.is_none() {
        return Err(bad_request(
            "Failover could be performed only to a specific candidate",
        ));
    }
    if paused && candidate.is_none() {
        return Err(bad_request(
            "Switchover is possible only to a specific candidate in a paused state",
        ));
    }
    if candidate.is_some() && candidate == leader {
        return Err(bad_request("Switchover target and source are the same"));
    }
    let current = snapshot.leader_name();
    let failed = |why: String| Err(text(StatusCode::PRECONDITION_FAILED, why));
    if let Some(named) = &leader {
        if current != Some(named.as_str()) {
            return failed("leader name does not match".into());
        }
    }
    if let Some(c) = &candidate {
        let Some(member) = snapshot.member(c) else {
            return failed("candidate does not exists".into());
        };
        if current == Some(c.as_str()) {
            return failed(format!("candidate {c} already is the leader"));
        }
        if let Some(why) = unfit_candidate(snapshot, member, switchover) {
            return failed(why);
        }
    } else {
        let others: Vec<&Member> = snapshot
            .members
            .iter()
            .filter(|m| Some(m.name.as_str()) != current)
            .collect();
        if others.is_empty() {
            return failed(
                "switchover is not possible: cluster does not have members except leader".into(),
            );
        }
        if others
            .iter()
            .all(|m| unfit_candidate(snapshot, m, switchover).is_some())
        {
            return failed("switchover is not possible: no good candidates have been found".into());
        }
    }
    if !switchover && !force {
        if let Some(l) = snapshot.leader_member() {
            if l.data.state == PgState::Running {
                return failed(format!(
                    "the cluster has a healthy leader ({}); use a switchover, or set \"force\": true to fail over anyway",
                    l.name
                ));
            }
        }
    }
    Ok(Planned { leader, candidate })
}

async fn switch(backend: Backend, body: Bytes, switchover: bool) -> Response {
    let body = match object_body(&body) {
        Ok(map) => map,
        Err(response) => return response,
    };
    let force = match bool_field(&body, "force") {
        Ok(f) => f,
        Err(response) => return response,
    };
    let scheduled_at = match string_field(&body, "scheduled_at") {
        Ok(s) => s,
        Err(response) => return response,
    };
    if !switchover && scheduled_at.is_some() && !body.contains_key("leader") {
        return bad_request("Failover can't be scheduled");
    }
    let dcs = match store(&backend) {
        Ok(dcs) => dcs,
        Err(response) => return response,
    };
    let snapshot = match fresh_snapshot(dcs.as_ref()).await {
        Ok(s) => s,
        Err(response) => return response,
    };
    let planned = match plan(&snapshot, &body, switchover, force) {
        Ok(p) => p,
        Err(response) => return response,
    };
    let scheduled = match &scheduled_at {
        None => None,
        Some(_) if snapshot.dynamic_config().pause => {
            return bad_request("Can't schedule switchover in the paused state")
        }
        Some(at) => match future_time("scheduled_at", at) {
            Ok(at) => Some(at.to_rfc3339()),
            Err(response) => return response,
        },
    };
    let request = FailoverRequest {
        leader: planned.leader.clone(),
        member: planned.candidate.clone(),
        scheduled_at: scheduled.clone(),
    };
    let pre = snapshot
        .failover
        .as_ref()
        .map_or(Precondition::Absent, |f| {
            Precondition::ModRevision(f.mod_revision)
        });
    match dcs.set_failover(&request, pre).await {
        Ok(true) => {}
        Ok(false) => {
            return text(
                StatusCode::CONFLICT,
                "another switchover or failover request was written concurrently",
            )
        }
        Err(err) => {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("writing the failover key failed: {err}"),
            )
        }
    }
    if scheduled.is_some() {
        return text(StatusCode::ACCEPTED, "Switchover scheduled");
    }
    let old = snapshot.leader_name().map(str::to_string);
    let loop_wait = backend.status().loop_wait;
    let bound = 2 * loop_wait.max(Duration::from_secs(10));
    wait_for_new_leader(dcs.as_ref(), old, planned.candidate, switchover, bound).await
}

/// Polls the store until someone other than `old` holds the leader key.
async fn wait_for_new_leader(
    dcs: &dyn Dcs,
    old: Option<String>,
    candidate: Option<String>,
    switchover: bool,
    bound: Duration,
) -> Response {
    let verb = if switchover {
        "switched over"
    } else {
        "failed over"
    };
    let deadline = tokio::time::Instant::now() + bound;
    let mut request_seen_cleared = false;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Ok(snapshot) = dcs.snapshot().await else {
            continue;
        };
        match snapshot.leader_name() {
            Some(new) if Some(new) != old.as_deref() => {
                return match candidate.as_deref() {
                    Some(c) if c != new => text(
                        StatusCode::OK,
                        format!("Switched over to \"{new}\" instead of \"{c}\""),
                    ),
                    _ => text(StatusCode::OK, format!("Successfully {verb} to \"{new}\"")),
                };
            }
            Some(_) if snapshot.failover_request().is_none() => {
                // The leader cleared the request and kept the key: refused.
                if request_seen_cleared {
                    return text(StatusCode::SERVICE_UNAVAILABLE, "Switchover failed");
                }
                request_seen_cleared = true;
            }
            _ => {}
        }
    }
    text(StatusCode::SERVICE_UNAVAILABLE, "Switchover status unknown")
}

pub(crate) async fn post_switchover(State(backend): State<Backend>, body: Bytes) -> Response {
    switch(backend, body, true).await
}

pub(crate) async fn post_failover(State(backend): State<Backend>, body: Bytes) -> Response {
    switch(backend, body, false).await
}

pub(crate) async fn delete_switchover(State(backend): State<Backend>) -> Response {
    let dcs = match store(&backend) {
        Ok(dcs) => dcs,
        Err(response) => return response,
    };
    let snapshot = match fresh_snapshot(dcs.as_ref()).await {
        Ok(s) => s,
        Err(response) => return response,
    };
    let scheduled = snapshot
        .failover
        .as_ref()
        .filter(|f| !f.value.is_empty() && f.value.scheduled_at.is_some());
    let Some(key) = scheduled else {
        return text(StatusCode::NOT_FOUND, "no switchover is scheduled");
    };
    match dcs
        .set_failover(
            &FailoverRequest::default(),
            Precondition::ModRevision(key.mod_revision),
        )
        .await
    {
        Ok(true) => text(StatusCode::OK, "scheduled switchover deleted"),
        Ok(false) => text(
            StatusCode::CONFLICT,
            "the switchover request changed concurrently",
        ),
        Err(err) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("deleting the switchover failed: {err}"),
        ),
    }
}

// ----- restart / reload / reinitialize ----------------------------------------

const RESTART_KEYS: &[&str] = &[
    "restart_pending",
    "role",
    "postgres_version",
    "timeout",
    "schedule",
];

/// `15.4` → 150004, `9.6.3` → 90603, `150004` → 150004.
fn parse_version(text_value: &str) -> Option<u32> {
    if let Ok(n) = text_value.parse::<u32>() {
        return Some(if n < 100 { n * 10000 } else { n });
    }
    let parts: Vec<u32> = text_value
        .split('.')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    match parts.as_slice() {
        [major, minor] if *major >= 10 => Some(major * 10000 + minor),
        [major, minor, patch] => Some(major * 10000 + minor * 100 + patch),
        _ => None,
    }
}

/// Whether the request's filters hold for this node (Patroni's conditions).
fn restart_conditions(status: &NodeStatus, body: &Map<String, Value>) -> Result<bool, Response> {
    if bool_field(body, "restart_pending")? && !status.pending_restart {
        return Ok(false);
    }
    if let Some(role) = string_field(body, "role")? {
        let mine = if status.has_lock {
            "primary"
        } else {
            "replica"
        };
        let wanted = match role.as_str() {
            "master" | "primary" | "leader" => "primary",
            "replica" | "standby" => "replica",
            "standby_leader" | "standby-leader" => "standby_leader",
            "any" => mine,
            other => {
                return Err(bad_request(format!(
                    "'role' must be primary, replica or standby_leader, not '{other}'"
                )))
            }
        };
        if wanted != mine {
            return Ok(false);
        }
    }
    if let Some(version) = string_field(body, "postgres_version")? {
        let Some(limit) = parse_version(&version) else {
            return Err(bad_request(format!(
                "'postgres_version' must look like 15.4, not '{version}'"
            )));
        };
        // Restart only servers older than the given version.
        if status.server_version.is_some_and(|v| v >= limit) {
            return Ok(false);
        }
    }
    Ok(true)
}

pub(crate) async fn post_restart(State(backend): State<Backend>, body: Bytes) -> Response {
    let body = match object_body(&body) {
        Ok(map) => map,
        Err(response) => return response,
    };
    if let Some(unknown) = body.keys().find(|k| !RESTART_KEYS.contains(&k.as_str())) {
        return bad_request(format!(
            "unknown restart option '{unknown}'; allowed: {}",
            RESTART_KEYS.join(", ")
        ));
    }
    let status = backend.status();
    let schedule = match string_field(&body, "schedule") {
        Ok(s) => s,
        Err(response) => return response,
    };
    if let Some(at) = schedule {
        if status.pause {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Can't schedule restart in the paused state",
            );
        }
        let at = match future_time("schedule", &at) {
            Ok(at) => at,
            Err(response) => return response,
        };
        let mut document = body.clone();
        document.insert("schedule".into(), Value::String(at.to_rfc3339()));
        return match backend
            .node_action(NodeAction::ScheduleRestart {
                at,
                document: Value::Object(document),
            })
            .await
        {
            Ok(_) => text(StatusCode::ACCEPTED, "Restart scheduled"),
            Err(_) => text(StatusCode::CONFLICT, "Another restart is already scheduled"),
        };
    }
    match restart_conditions(&status, &body) {
        Ok(true) => {}
        Ok(false) => {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "restart conditions are not satisfied",
            )
        }
        Err(response) => return response,
    }
    match backend.node_action(NodeAction::Restart).await {
        Ok(_) => text(StatusCode::OK, "restarted successfully"),
        Err(why) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("restart failed: {why}"),
        ),
    }
}

pub(crate) async fn delete_restart(State(backend): State<Backend>) -> Response {
    match backend
        .node_action(NodeAction::CancelScheduledRestart)
        .await
    {
        Ok(_) => text(StatusCode::OK, "scheduled restart deleted"),
        Err(_) => text(StatusCode::NOT_FOUND, "no restarts are scheduled"),
    }
}

pub(crate) async fn post_reload(State(backend): State<Backend>) -> Response {
    match backend.node_action(NodeAction::Reload).await {
        Ok(_) => text(StatusCode::ACCEPTED, "reload scheduled"),
        Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

pub(crate) async fn post_reinitialize(State(backend): State<Backend>, body: Bytes) -> Response {
    let body = match object_body(&body) {
        Ok(map) => map,
        Err(response) => return response,
    };
    let from_leader = match bool_field(&body, "from_leader") {
        Ok(b) => b,
        Err(response) => return response,
    };
    if let Err(response) = bool_field(&body, "force") {
        return response;
    }
    match backend
        .node_action(NodeAction::Reinitialize { from_leader })
        .await
    {
        Ok(message) => text(StatusCode::OK, message),
        Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

// ----- failsafe -----------------------------------------------------------------

pub(crate) async fn post_failsafe(State(backend): State<Backend>, body: Bytes) -> Response {
    let body = match object_body(&body) {
        Ok(map) => map,
        Err(response) => return response,
    };
    let name = match string_field(&body, "name") {
        Ok(Some(name)) => name,
        Ok(None) => return bad_request("'name' of the leader is required"),
        Err(response) => return response,
    };
    match backend.accept_failsafe(&name) {
        Ok(()) => {
            let status = backend.status();
            let lsn = status.pg.wal_position().map_or(0, |l| l.0).to_string();
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE.as_str(), "text/plain; charset=utf-8"),
                    ("lsn", lsn.as_str()),
                ],
                "Accepted",
            )
                .into_response()
        }
        Err(FailsafeRefusal::RunningAsLeader) => {
            text(StatusCode::INTERNAL_SERVER_ERROR, "Running as a leader")
        }
        Err(FailsafeRefusal::Disabled) => {
            text(StatusCode::BAD_GATEWAY, "Failsafe mode is disabled")
        }
    }
}

pub(crate) async fn get_failsafe(State(backend): State<Backend>) -> Response {
    match backend.cluster().await {
        Ok(ClusterSnapshot {
            failsafe: Some(members),
            ..
        }) => json_response(200, &serde_json::to_value(members).unwrap_or(Value::Null)),
        Ok(_) => crate::server::status_only_response(502),
        Err(err) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the cluster from the store: {err}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_merges_objects_and_deletes_nulls() {
        let mut config =
            json!({"ttl": 4, "postgresql": {"parameters": {"a": 1, "b": 2}}, "pause": true});
        merge_patch(
            &mut config,
            &json!({"ttl": 6, "postgresql": {"parameters": {"b": null, "c": 3}}, "pause": null}),
        );
        assert_eq!(
            config,
            json!({"ttl": 6, "postgresql": {"parameters": {"a": 1, "c": 3}}})
        );
    }

    #[test]
    fn versions_read_like_patroni() {
        assert_eq!(parse_version("15.4"), Some(150004));
        assert_eq!(parse_version("9.6.3"), Some(90603));
        assert_eq!(parse_version("15"), Some(150000));
        assert_eq!(parse_version("150004"), Some(150004));
        assert_eq!(parse_version("fifteen"), None);
    }
}
