//! `host:port` syntax shared by the REST API, PostgreSQL and etcd settings.
//!
//! Hosts are kept without brackets (what sockets and libpq want); [`HostPort::render`]
//! adds brackets back for IPv6. Parsing never resolves names: loading a
//! configuration must not depend on DNS.

/// A parsed `host:port`; `host` is unbracketed and may be empty (wildcard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// `host:port`, with brackets around IPv6 hosts.
    pub fn render(&self) -> String {
        format!("{}:{}", bracket(&self.host), self.port)
    }
}

/// Brackets an IPv6 literal so that `host:port` stays unambiguous.
pub(crate) fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// True for hosts that mean "every interface" and cannot be dialled by peers.
pub(crate) fn is_wildcard(host: &str) -> bool {
    matches!(host, "" | "*" | "0.0.0.0" | "::" | "0:0:0:0:0:0:0:0")
}

/// Parses `host:port` or `[v6]:port`; `default_port` fills in a missing port.
///
/// The error text completes a sentence starting with the quoted value.
pub(crate) fn parse_host_port(text: &str, default_port: Option<u16>) -> Result<HostPort, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("is empty; expected host:port, e.g. 127.0.0.1:5432".into());
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err("has an opening '[' without ']'; write IPv6 hosts as [::1]:5432".into());
        };
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(format!("has unexpected text '{after}' after ']'")),
            },
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err(
                    "looks like an IPv6 address without brackets; write it as [::1]:5432".into(),
                )
            }
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    check_host(host)?;
    let port = match (port, default_port) {
        (Some(p), _) => parse_port(p)?,
        (None, Some(p)) => p,
        (None, None) if host.chars().all(|c| c.is_ascii_digit()) => {
            return Err(format!(
                "has no host; write 0.0.0.0:{host} to use every interface"
            ))
        }
        (None, None) => return Err("has no port; expected host:port, e.g. 127.0.0.1:5432".into()),
    };
    Ok(HostPort {
        host: host.to_string(),
        port,
    })
}

/// Parses PostgreSQL's `host1,host2:port` listen syntax into hosts and port.
///
/// Like Patroni, the port is whatever follows the last colon, so unbracketed
/// IPv6 hosts are accepted in the list (`::1,127.0.0.1:5432`).
pub(crate) fn parse_listen_list(text: &str) -> Result<(Vec<String>, u16), String> {
    let text = text.trim();
    let Some((hosts, port)) = text.rsplit_once(':') else {
        if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!(
                "has no host; write 0.0.0.0:{text} to use every interface"
            ));
        }
        return Err("has no port; expected host[,host2]:port, e.g. 127.0.0.1:5432".into());
    };
    let port = parse_port(port)?;
    let mut out = Vec::new();
    for host in hosts.split(',') {
        let host = host.trim();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(
                "has an empty host; expected host[,host2]:port, e.g. 127.0.0.1:5432 or *:5432"
                    .into(),
            );
        }
        check_host(host)?;
        out.push(host.to_string());
    }
    Ok((out, port))
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.trim().parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(format!(
            "has port '{text}'; the port must be a number from 1 to 65535"
        )),
    }
}

fn check_host(host: &str) -> Result<(), String> {
    match host
        .chars()
        .find(|c| c.is_whitespace() || matches!(c, '/' | '@' | ',' | '[' | ']' | '?' | '#'))
    {
        Some(c) => Err(format!(
            "has host '{host}' containing {c:?}, which is not allowed in a host name or address"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(host: &str, port: u16) -> HostPort {
        HostPort {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn parses_hosts_ports_and_ipv6() {
        assert_eq!(
            parse_host_port("127.0.0.1:8008", None),
            Ok(hp("127.0.0.1", 8008))
        );
        assert_eq!(
            parse_host_port(" db1.example:5432 ", None),
            Ok(hp("db1.example", 5432))
        );
        assert_eq!(parse_host_port("[::1]:5432", None), Ok(hp("::1", 5432)));
        assert_eq!(parse_host_port("[::1]", Some(2379)), Ok(hp("::1", 2379)));
        assert_eq!(parse_host_port("etcd1", Some(2379)), Ok(hp("etcd1", 2379)));
        assert_eq!(parse_host_port(":8008", None), Ok(hp("", 8008)));
        assert_eq!(hp("::1", 5432).render(), "[::1]:5432");
        assert_eq!(hp("h", 1).render(), "h:1");
    }

    #[test]
    fn rejects_bad_addresses_with_reasons() {
        assert!(parse_host_port("h:0", None)
            .unwrap_err()
            .contains("1 to 65535"));
        assert!(parse_host_port("h:70000", None)
            .unwrap_err()
            .contains("1 to 65535"));
        assert!(parse_host_port("h:http", None)
            .unwrap_err()
            .contains("1 to 65535"));
        assert!(parse_host_port("::1:5432", None)
            .unwrap_err()
            .contains("brackets"));
        assert!(parse_host_port("localhost", None)
            .unwrap_err()
            .contains("no port"));
        assert!(parse_host_port("8008", None)
            .unwrap_err()
            .contains("0.0.0.0:8008"));
        assert!(parse_host_port("a b:1", None)
            .unwrap_err()
            .contains("not allowed"));
        assert!(parse_host_port("", None).unwrap_err().contains("empty"));
        assert!(parse_host_port("[::1", None).unwrap_err().contains("']'"));
    }

    #[test]
    fn parses_listen_lists() {
        assert_eq!(
            parse_listen_list("127.0.0.1:5432"),
            Ok((vec!["127.0.0.1".into()], 5432))
        );
        assert_eq!(
            parse_listen_list("127.0.0.1, [::1]:5433"),
            Ok((vec!["127.0.0.1".into(), "::1".into()], 5433))
        );
        assert_eq!(parse_listen_list("*:5432"), Ok((vec!["*".into()], 5432)));
        assert!(parse_listen_list("5432")
            .unwrap_err()
            .contains("0.0.0.0:5432"));
        assert!(parse_listen_list("a,,b:5432")
            .unwrap_err()
            .contains("empty host"));
        assert!(parse_listen_list("a:99999")
            .unwrap_err()
            .contains("1 to 65535"));
    }

    #[test]
    fn wildcards() {
        for w in ["", "*", "0.0.0.0", "::"] {
            assert!(is_wildcard(w), "{w}");
        }
        assert!(!is_wildcard("127.0.0.1"));
    }
}
