//! Member tags (`tags:` in the config file, `tags` in the member key).
//!
//! The well-known tags steer elections and load balancing; any other tag is
//! kept and published unchanged so that operators can filter on it
//! (`/replica?tag_dc=east`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::yaml_bool::{coerce_bool, coerce_i64};

/// Tags of one member, with Patroni's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tags {
    /// Never promote this member automatically.
    pub nofailover: bool,
    /// Exclude this member from read-only load balancing (`/replica` answers 503).
    pub noloadbalance: bool,
    /// Prefer this member as the source of new replicas.
    pub clonefrom: bool,
    /// Never choose this member as a synchronous standby.
    pub nosync: bool,
    /// Do not stream from anyone (archive recovery only).
    pub nostream: bool,
    /// Election tie-break among equally advanced members; 0 means never promote.
    pub failover_priority: Option<i64>,
    /// Preference when choosing synchronous standbys; 0 means never sync.
    pub sync_priority: Option<i64>,
    /// Cascade from this member instead of the leader.
    pub replicatefrom: Option<String>,
    /// Any other tag, published unchanged.
    pub custom: BTreeMap<String, Value>,
}

impl Tags {
    /// Reads tags from a JSON object, accepting YAML 1.1 booleans and numeric strings.
    ///
    /// Unknown keys become custom tags. Returns an error naming the tag when a
    /// well-known tag has a value of the wrong kind.
    pub fn from_json(value: &Value) -> Result<Tags, String> {
        let mut tags = Tags::default();
        let Some(map) = value.as_object() else {
            if value.is_null() {
                return Ok(tags);
            }
            return Err(format!("tags must be a mapping, got {value}"));
        };
        for (key, val) in map {
            let want_bool = |v: &Value| {
                coerce_bool(v).ok_or_else(|| {
                    format!("tags.{key}: expected a boolean (true/false/on/off), got {v}")
                })
            };
            let want_int = |v: &Value| {
                coerce_i64(v).ok_or_else(|| format!("tags.{key}: expected an integer, got {v}"))
            };
            match key.as_str() {
                "nofailover" => tags.nofailover = want_bool(val)?,
                "noloadbalance" => tags.noloadbalance = want_bool(val)?,
                "clonefrom" => tags.clonefrom = want_bool(val)?,
                "nosync" => tags.nosync = want_bool(val)?,
                "nostream" => tags.nostream = want_bool(val)?,
                "failover_priority" => tags.failover_priority = Some(want_int(val)?),
                "sync_priority" => tags.sync_priority = Some(want_int(val)?),
                "replicatefrom" => {
                    tags.replicatefrom = match val {
                        Value::Null => None,
                        Value::String(s) => Some(s.clone()),
                        other => Some(other.to_string()),
                    }
                }
                _ => {
                    tags.custom.insert(key.clone(), val.clone());
                }
            }
        }
        Ok(tags)
    }

    /// Whether automatic failover may promote this member.
    pub fn can_be_promoted(&self) -> bool {
        !self.nofailover && self.failover_priority.is_none_or(|p| p > 0)
    }

    /// Whether this member may be chosen as a synchronous standby.
    pub fn can_be_sync(&self) -> bool {
        !self.nosync && self.sync_priority.is_none_or(|p| p > 0)
    }

    /// Election priority; Patroni's default is 1.
    pub fn effective_failover_priority(&self) -> i64 {
        if self.nofailover {
            0
        } else {
            self.failover_priority.unwrap_or(1)
        }
    }

    /// The tags Patroni publishes: non-default values only, custom tags always.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        let mut flag = |name: &str, on: bool| {
            if on {
                map.insert(name.to_string(), Value::Bool(true));
            }
        };
        flag("clonefrom", self.clonefrom);
        flag("nofailover", self.nofailover);
        flag("noloadbalance", self.noloadbalance);
        flag("nosync", self.nosync);
        flag("nostream", self.nostream);
        if let Some(p) = self.failover_priority {
            map.insert("failover_priority".into(), p.into());
        }
        if let Some(p) = self.sync_priority {
            map.insert("sync_priority".into(), p.into());
        }
        if let Some(r) = &self.replicatefrom {
            map.insert("replicatefrom".into(), Value::String(r.clone()));
        }
        for (k, v) in &self.custom {
            map.insert(k.clone(), v.clone());
        }
        Value::Object(map)
    }

    /// True when nothing would be published.
    pub fn is_empty(&self) -> bool {
        self.to_json().as_object().is_none_or(|m| m.is_empty())
    }
}

impl Serialize for Tags {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Tags {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Tags::from_json(&value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_yaml11_words_and_custom_tags() {
        let tags = Tags::from_json(&json!({
            "nofailover": "on", "noloadbalance": "no", "failover_priority": "3", "dc": "east"
        }))
        .unwrap();
        assert!(tags.nofailover);
        assert!(!tags.noloadbalance);
        assert_eq!(tags.failover_priority, Some(3));
        assert_eq!(tags.custom["dc"], json!("east"));
    }

    #[test]
    fn wrong_kind_names_the_tag() {
        let err = Tags::from_json(&json!({"nosync": "perhaps"})).unwrap_err();
        assert!(err.contains("tags.nosync"), "{err}");
    }

    #[test]
    fn publishes_only_non_defaults() {
        let tags = Tags::from_json(&json!({"nofailover": false, "clonefrom": true})).unwrap();
        assert_eq!(tags.to_json(), json!({"clonefrom": true}));
        assert!(Tags::default().is_empty());
    }

    #[test]
    fn promotion_rules() {
        assert!(Tags::default().can_be_promoted());
        let zero = Tags {
            failover_priority: Some(0),
            ..Tags::default()
        };
        assert!(!zero.can_be_promoted());
        let nofo = Tags {
            nofailover: true,
            ..Tags::default()
        };
        assert!(!nofo.can_be_promoted());
        assert_eq!(nofo.effective_failover_priority(), 0);
    }
}
