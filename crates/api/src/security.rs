//! Access control for the write endpoints (patroni-compat §4.5).
//!
//! Every request other than GET, HEAD and OPTIONS passes, in order: the
//! allowlist of client networks (`restapi.allowlist`, plus the members' REST
//! API hosts with `allowlist_include_members`) → 403 `Access is denied`;
//! HTTP Basic authentication when `restapi.authentication` is set → 401
//! without credentials (with `WWW-Authenticate`), 403 with wrong ones.
//! Reads are never restricted: load balancers and monitoring probe them.
//!
//! Deliberate difference from Patroni: wrong credentials answer 403 (Patroni
//! answers 401 to both), so that a client can tell "ask for a password" from
//! "this password is wrong". Allowlist entries are IP addresses or CIDR
//! networks; host names are refused at load (Patroni resolves them once).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use crate::server::Backend;

/// One allowlist entry: an address or a network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// `10.0.0.0/8`, `192.168.1.7`, `::1`, `fd00::/8`.
    pub fn parse(text: &str) -> Result<Network, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| {
            format!(
                "'{text}' is not an IP address or a CIDR network (host names are not supported)"
            )
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("'{text}' has an invalid prefix length"))?,
        };
        Ok(Network { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            _ => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// How write endpoints are protected.
#[derive(Debug, Clone, Default)]
pub struct ApiSecurity {
    /// `restapi.authentication`: user name and password.
    pub basic_auth: Option<(String, String)>,
    /// `restapi.allowlist`; empty admits every client (unless members are included).
    pub allowlist: Vec<Network>,
    /// `restapi.allowlist_include_members`.
    pub allowlist_include_members: bool,
}

impl ApiSecurity {
    fn restricts_clients(&self) -> bool {
        !self.allowlist.is_empty() || self.allowlist_include_members
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

fn denied(status: StatusCode, body: &str) -> Response {
    let mut response = (status, body.to_string()).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"pgwarden\""),
        );
    }
    response
}

/// The members' REST API hosts that are IP literals, from the store.
async fn member_addresses(backend: &Backend) -> Vec<IpAddr> {
    let Ok(snapshot) = backend.cluster().await else {
        return Vec::new();
    };
    snapshot
        .members
        .iter()
        .filter_map(|m| m.data.api_base())
        .filter_map(|url| {
            let authority = url.split("://").nth(1)?.split('/').next()?.to_string();
            let host = match authority.rsplit_once(':') {
                Some((h, _)) => h.to_string(),
                None => authority,
            };
            host.trim_matches(|c| c == '[' || c == ']').parse().ok()
        })
        .collect()
}

/// The middleware: applies [`ApiSecurity`] to every unsafe request.
pub(crate) async fn guard(
    State((backend, security)): State<(Backend, Arc<ApiSecurity>)>,
    request: Request<Body>,
    next: Next,
) -> Response {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return next.run(request).await;
    }
    if security.restricts_clients() {
        let client = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let mut allowed =
            client.is_some_and(|ip| security.allowlist.iter().any(|n| n.contains(ip)));
        if !allowed && security.allowlist_include_members {
            if let Some(ip) = client {
                allowed = member_addresses(&backend).await.contains(&ip);
            }
        }
        if !allowed {
            return denied(StatusCode::FORBIDDEN, "Access is denied");
        }
    }
    if let Some((user, password)) = &security.basic_auth {
        let Some(value) = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return denied(StatusCode::UNAUTHORIZED, "no auth header received");
        };
        let expected =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let given = value.strip_prefix("Basic ").unwrap_or("").trim();
        if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            return denied(StatusCode::FORBIDDEN, "not authenticated");
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_match_addresses() {
        let net = Network::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one = Network::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        assert!(Network::parse("::1")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(Network::parse("0.0.0.0/0")
            .unwrap()
            .contains("192.0.2.1".parse().unwrap()));
        assert!(Network::parse("db.example")
            .unwrap_err()
            .contains("host names"));
        assert!(Network::parse("10.0.0.0/33").is_err());
    }

    #[test]
    fn comparison_needs_equal_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }
}
