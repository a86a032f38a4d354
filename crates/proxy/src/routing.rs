//! Where connections go, computed from one snapshot of the cluster's keys.
//!
//! Pure: no I/O, no clock. The follower task feeds it snapshots and applies
//! the deadline; clients only read the result.
//!
//! Rules:
//! - read-write goes to the member holding the leader key, and only once its
//!   member key says it runs as primary (a leader still promoting would
//!   refuse writes). The leader key's `create_revision` is the fencing token:
//!   a new holder, or the same member winning again, is a new token, and
//!   every server connection of an older token is closed;
//! - read-only goes to running replicas within `max_replica_lag` bytes of the
//!   leader's last published WAL position, excluding `noloadbalance` members;
//! - a non-empty, unscheduled `failover` key means a switchover or manual
//!   failover is under way: new transactions are held, not failed.

use pgwarden_types::{ClusterSnapshot, PgState, Role};

/// A node a connection can be routed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRoute {
    pub name: String,
    /// `host:port` from the member's `conn_url`.
    pub address: String,
}

/// The read-write target and its fencing token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderRoute {
    pub node: NodeRoute,
    /// `create_revision` of the leader key.
    pub token: i64,
}

/// A replica that may take read-only clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRoute {
    pub node: NodeRoute,
    /// Bytes behind the leader, when both positions are known.
    pub lag: Option<u64>,
}

/// The routing table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Routing {
    pub leader: Option<LeaderRoute>,
    pub replicas: Vec<ReplicaRoute>,
    /// A switchover/failover request is pending: hold new transactions.
    pub switchover_pending: bool,
    /// The cluster's `ttl` in seconds (from the `config` key).
    pub ttl_secs: u64,
    /// Store revision of the snapshot.
    pub revision: i64,
}

impl Routing {
    /// The routing computed from one snapshot.
    pub fn from_snapshot(snapshot: &ClusterSnapshot, max_replica_lag: u64) -> Routing {
        let leader_member = snapshot.leader_member();
        let leader = snapshot.leader.as_ref().and_then(|key| {
            let member = leader_member?;
            let serving =
                member.data.role == Role::Primary && member.data.state == PgState::Running;
            let address = address_of(&member.data.conn_url)?;
            serving.then(|| LeaderRoute {
                node: NodeRoute {
                    name: key.name.clone(),
                    address,
                },
                token: key.create_revision,
            })
        });
        let reference = leader_member
            .and_then(|m| m.data.xlog_location)
            .or(snapshot.status.optime);
        let replicas = snapshot
            .members
            .iter()
            .filter(|m| Some(m.name.as_str()) != snapshot.leader_name())
            .filter(|m| m.data.role == Role::Replica && m.data.state == PgState::Running)
            .filter(|m| !m.data.tags.noloadbalance)
            .filter_map(|m| {
                let lag = match (reference, m.data.xlog_location) {
                    (Some(r), Some(x)) => Some(r.saturating_sub(x)),
                    _ => None,
                };
                if lag.is_some_and(|l| l > max_replica_lag) {
                    return None;
                }
                Some(ReplicaRoute {
                    node: NodeRoute {
                        name: m.name.clone(),
                        address: address_of(&m.data.conn_url)?,
                    },
                    lag,
                })
            })
            .collect();
        let switchover_pending = snapshot
            .failover
            .as_ref()
            .is_some_and(|f| !f.value.is_empty() && f.value.scheduled_at.is_none());
        Routing {
            leader,
            replicas,
            switchover_pending,
            ttl_secs: snapshot.dynamic_config().ttl,
            revision: snapshot.revision,
        }
    }

    /// The same routing without a read-write target (the deadline passed).
    pub fn fenced(mut self) -> Routing {
        self.leader = None;
        self
    }

    /// The fencing token of the read-write target, if any.
    pub fn leader_token(&self) -> Option<i64> {
        self.leader.as_ref().map(|l| l.token)
    }
}

/// `host:port` of a `postgres://host:port/db` URL (IPv6 hosts keep their brackets).
pub fn address_of(conn_url: &str) -> Option<String> {
    let rest = conn_url
        .strip_prefix("postgres://")
        .or_else(|| conn_url.strip_prefix("postgresql://"))?;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit('@').next()?;
    if host_port.is_empty() {
        return None;
    }
    let has_port = match host_port.rfind(']') {
        Some(close) => host_port[close..].contains(':'),
        None => host_port.contains(':'),
    };
    Some(if has_port {
        host_port.to_string()
    } else {
        format!("{host_port}:5432")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwarden_types::{FailoverRequest, LeaderKey, Member, MemberData, Tags, Versioned};

    fn member(name: &str, role: Role, port: u16, xlog: u64) -> Member {
        let mut data = MemberData::parse_lenient(&format!(
            r#"{{"conn_url":"postgres://127.0.0.1:{port}/postgres","state":"running","role":"replica"}}"#
        ));
        data.role = role;
        data.state = PgState::Running;
        data.xlog_location = Some(xlog);
        Member {
            name: name.into(),
            data,
            mod_revision: 1,
            lease: 1,
        }
    }

    fn snapshot(leader: Option<(&str, i64)>, members: Vec<Member>) -> ClusterSnapshot {
        ClusterSnapshot {
            revision: 42,
            leader: leader.map(|(name, rev)| LeaderKey {
                name: name.into(),
                create_revision: rev,
                mod_revision: rev,
                lease: 7,
            }),
            members,
            ..ClusterSnapshot::default()
        }
    }

    #[test]
    fn routes_writes_to_the_leader_once_it_runs_as_primary() {
        let s = snapshot(
            Some(("a", 10)),
            vec![
                member("a", Role::Primary, 5432, 1000),
                member("b", Role::Replica, 5433, 1000),
            ],
        );
        let r = Routing::from_snapshot(&s, 100);
        let leader = r.leader.unwrap();
        assert_eq!(leader.node.address, "127.0.0.1:5432");
        assert_eq!(leader.token, 10);
        assert_eq!(r.replicas.len(), 1);
        assert_eq!(r.replicas[0].node.name, "b");

        // Leader key taken, promotion not published yet: no write target.
        let s = snapshot(
            Some(("b", 11)),
            vec![member("b", Role::Replica, 5433, 1000)],
        );
        assert_eq!(Routing::from_snapshot(&s, 100).leader, None);
        // No leader key at all.
        let s = snapshot(None, vec![member("a", Role::Primary, 5432, 1000)]);
        assert_eq!(Routing::from_snapshot(&s, 100).leader, None);
    }

    #[test]
    fn replicas_too_far_behind_or_noloadbalance_take_no_reads() {
        let mut tagged = member("d", Role::Replica, 5435, 1000);
        tagged.data.tags = Tags {
            noloadbalance: true,
            ..Tags::default()
        };
        let mut stopped = member("e", Role::Replica, 5436, 1000);
        stopped.data.state = PgState::Stopped;
        let s = snapshot(
            Some(("a", 10)),
            vec![
                member("a", Role::Primary, 5432, 10_000),
                member("b", Role::Replica, 5433, 9_950),
                member("c", Role::Replica, 5434, 5_000),
                tagged,
                stopped,
            ],
        );
        let r = Routing::from_snapshot(&s, 100);
        let names: Vec<&str> = r.replicas.iter().map(|x| x.node.name.as_str()).collect();
        assert_eq!(names, vec!["b"]);
        assert_eq!(r.replicas[0].lag, Some(50));
    }

    #[test]
    fn an_unscheduled_failover_key_holds_transactions() {
        let mut s = snapshot(Some(("a", 10)), vec![member("a", Role::Primary, 5432, 1)]);
        assert!(!Routing::from_snapshot(&s, 100).switchover_pending);
        let request = FailoverRequest {
            leader: Some("a".into()),
            member: Some("b".into()),
            scheduled_at: None,
        };
        s.failover = Some(Versioned {
            value: request.clone(),
            mod_revision: 3,
        });
        assert!(Routing::from_snapshot(&s, 100).switchover_pending);
        s.failover = Some(Versioned {
            value: FailoverRequest {
                scheduled_at: Some("2030-01-01T00:00:00+00:00".into()),
                ..request
            },
            mod_revision: 4,
        });
        assert!(!Routing::from_snapshot(&s, 100).switchover_pending);
        s.failover = Some(Versioned {
            value: FailoverRequest::default(),
            mod_revision: 5,
        });
        assert!(!Routing::from_snapshot(&s, 100).switchover_pending);
    }

    #[test]
    fn fencing_drops_only_the_write_target() {
        let s = snapshot(
            Some(("a", 10)),
            vec![
                member("a", Role::Primary, 5432, 1),
                member("b", Role::Replica, 5433, 1),
            ],
        );
        let r = Routing::from_snapshot(&s, 100).fenced();
        assert_eq!(r.leader_token(), None);
        assert_eq!(r.replicas.len(), 1);
    }

    #[test]
    fn addresses_come_from_conn_urls() {
        assert_eq!(
            address_of("postgres://10.0.0.1:5433/postgres").as_deref(),
            Some("10.0.0.1:5433")
        );
        assert_eq!(
            address_of("postgresql://[::1]:5433/db").as_deref(),
            Some("[::1]:5433")
        );
        assert_eq!(
            address_of("postgres://[::1]/db").as_deref(),
            Some("[::1]:5432")
        );
        assert_eq!(address_of("postgres://u:p@h:1/db").as_deref(), Some("h:1"));
        assert_eq!(address_of("http://h:1").as_deref(), None);
        assert_eq!(address_of("postgres:///db").as_deref(), None);
    }
}
