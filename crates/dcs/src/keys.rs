//! The Patroni key layout: `/<namespace>/<scope>/<key>` with repeated slashes
//! collapsed (namespace defaults to `/service`).
//!
//! Invariant: every key this crate reads or writes is built here, and every key
//! under the prefix maps back to exactly one [`ClusterKey`].

/// A key of one cluster, relative to its prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClusterKey {
    Leader,
    Member(String),
    Config,
    Failover,
    Sync,
    Status,
    Initialize,
    History,
    Failsafe,
    /// Anything else under the prefix (e.g. `optime/leader`), relative path.
    Other(String),
}

impl ClusterKey {
    /// The path of this key relative to the cluster prefix.
    pub fn relative(&self) -> String {
        match self {
            ClusterKey::Leader => "leader".into(),
            ClusterKey::Member(name) => format!("members/{name}"),
            ClusterKey::Config => "config".into(),
            ClusterKey::Failover => "failover".into(),
            ClusterKey::Sync => "sync".into(),
            ClusterKey::Status => "status".into(),
            ClusterKey::Initialize => "initialize".into(),
            ClusterKey::History => "history".into(),
            ClusterKey::Failsafe => "failsafe".into(),
            ClusterKey::Other(rest) => rest.clone(),
        }
    }

    /// Classifies a path relative to the cluster prefix.
    pub fn from_relative(rel: &str) -> ClusterKey {
        match rel {
            "leader" => ClusterKey::Leader,
            "config" => ClusterKey::Config,
            "failover" => ClusterKey::Failover,
            "sync" => ClusterKey::Sync,
            "status" => ClusterKey::Status,
            "initialize" => ClusterKey::Initialize,
            "history" => ClusterKey::History,
            "failsafe" => ClusterKey::Failsafe,
            other => match other.strip_prefix("members/") {
                Some(name) if !name.is_empty() && !name.contains('/') => {
                    ClusterKey::Member(name.to_string())
                }
                _ => ClusterKey::Other(other.to_string()),
            },
        }
    }
}

/// The prefix of one cluster's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLayout {
    prefix: String,
}

impl KeyLayout {
    /// `namespace` empty means the default `/service`.
    pub fn new(namespace: &str, scope: &str) -> KeyLayout {
        let namespace = if namespace.is_empty() {
            "/service"
        } else {
            namespace
        };
        let raw = format!("/{namespace}/{scope}/");
        let mut prefix = String::with_capacity(raw.len());
        for ch in raw.chars() {
            if ch == '/' && prefix.ends_with('/') {
                continue;
            }
            prefix.push(ch);
        }
        KeyLayout { prefix }
    }

    /// The cluster prefix, always ending in `/` (e.g. `/service/batman/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Exclusive end of the prefix range: the prefix with its last byte + 1.
    pub fn range_end(&self) -> Vec<u8> {
        let mut end = self.prefix.as_bytes().to_vec();
        // The prefix ends in '/', so the increment cannot overflow.
        *end.last_mut().expect("prefix is never empty") += 1;
        end
    }

    pub fn key(&self, key: &ClusterKey) -> String {
        format!("{}{}", self.prefix, key.relative())
    }

    /// The [`ClusterKey`] of a full key, or None if it is outside the prefix.
    pub fn classify(&self, full: &str) -> Option<ClusterKey> {
        full.strip_prefix(&self.prefix)
            .map(ClusterKey::from_relative)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_collapses_slashes_and_defaults_namespace() {
        assert_eq!(
            KeyLayout::new("/service", "batman").prefix(),
            "/service/batman/"
        );
        assert_eq!(
            KeyLayout::new("/service/", "batman").prefix(),
            "/service/batman/"
        );
        assert_eq!(KeyLayout::new("", "batman").prefix(), "/service/batman/");
        assert_eq!(KeyLayout::new("ns", "b").prefix(), "/ns/b/");
        assert_eq!(
            KeyLayout::new("//a//b", "c").range_end(),
            b"/a/b/c0".to_vec()
        );
    }

    #[test]
    fn keys_round_trip() {
        let layout = KeyLayout::new("/service", "batman");
        for key in [
            ClusterKey::Leader,
            ClusterKey::Member("node-1".into()),
            ClusterKey::Config,
            ClusterKey::Failover,
            ClusterKey::Sync,
            ClusterKey::Status,
            ClusterKey::Initialize,
            ClusterKey::History,
            ClusterKey::Failsafe,
            ClusterKey::Other("optime/leader".into()),
        ] {
            assert_eq!(layout.classify(&layout.key(&key)), Some(key));
        }
        assert_eq!(layout.key(&ClusterKey::Leader), "/service/batman/leader");
        assert_eq!(layout.classify("/service/other/leader"), None);
    }
}
