//! Reading configuration text into one generic JSON tree.
//!
//! YAML is parsed with `serde_norway` (YAML 1.2) into a generic value and
//! converted to `serde_json::Value`, so the validator reads keys by hand and
//! controls every message. YAML 1.1 words such as `on`/`off` arrive as strings
//! and are coerced by the validator where a boolean is expected.
//! A directory is read as its `*.yml`/`*.yaml` files in sorted order, deep-merged.
//! This module only reads and merges: it never judges values.

use std::path::{Path, PathBuf};

use serde_json::{Map, Number, Value};

use crate::error::ConfigError;

/// Reads a file or a directory of YAML files; returns the merged tree and the origin label.
pub(crate) fn read_path(path: &Path) -> Result<(Value, String), ConfigError> {
    let meta = std::fs::metadata(path).map_err(|source| io_error(path, source))?;
    let origin = path.display().to_string();
    if !meta.is_dir() {
        let text = read_text(path)?;
        return Ok((parse_yaml(&text, &origin)?, origin));
    }
    let entries = std::fs::read_dir(path).map_err(|source| io_error(path, source))?;
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| io_error(path, source))?;
        let file = entry.path();
        let is_yaml = file
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e == "yml" || e == "yaml");
        if is_yaml && file.is_file() {
            files.push(file);
        }
    }
    if files.is_empty() {
        return Err(ConfigError::EmptyDirectory {
            path: path.to_path_buf(),
        });
    }
    files.sort();
    let mut merged = Value::Object(Map::new());
    for file in files {
        let text = read_text(&file)?;
        let tree = parse_yaml(&text, &file.display().to_string())?;
        deep_merge(&mut merged, tree);
    }
    Ok((merged, origin))
}

fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| io_error(path, source))
}

fn io_error(path: &Path, source: std::io::Error) -> ConfigError {
    if source.kind() == std::io::ErrorKind::NotFound {
        ConfigError::NotFound {
            path: path.to_path_buf(),
        }
    } else {
        ConfigError::Unreadable {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Parses one YAML document into JSON; an empty document is an empty mapping.
pub(crate) fn parse_yaml(text: &str, origin: &str) -> Result<Value, ConfigError> {
    let yaml_error = |e: serde_norway::Error| {
        let loc = e.location();
        ConfigError::Yaml {
            origin: origin.to_string(),
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
            message: e.to_string(),
        }
    };
    let mut value: serde_norway::Value = serde_norway::from_str(text).map_err(yaml_error)?;
    value.apply_merge().map_err(yaml_error)?;
    let json = yaml_to_json(value).map_err(|message| ConfigError::Yaml {
        origin: origin.to_string(),
        line: None,
        column: None,
        message,
    })?;
    Ok(if json.is_null() {
        Value::Object(Map::new())
    } else {
        json
    })
}

/// Converts a YAML value to JSON: scalar keys become strings, tags are dropped.
pub(crate) fn yaml_to_json(value: serde_norway::Value) -> Result<Value, String> {
    use serde_norway::Value as Y;
    Ok(match value {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Number(i.into())
            } else if let Some(u) = n.as_u64() {
                Value::Number(u.into())
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                Number::from_f64(f)
                    .map(Value::Number)
                    .unwrap_or_else(|| Value::String(n.to_string()))
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(
            items
                .into_iter()
                .map(yaml_to_json)
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let key = match k {
                    Y::String(s) => s,
                    Y::Bool(b) => b.to_string(),
                    Y::Number(n) => n.to_string(),
                    Y::Null => "null".to_string(),
                    other => {
                        return Err(format!("mapping keys must be plain scalars, got {other:?}"))
                    }
                };
                out.insert(key, yaml_to_json(v)?);
            }
            Value::Object(out)
        }
        Y::Tagged(tagged) => yaml_to_json(tagged.value)?,
    })
}

/// Merges `overlay` into `base`: mappings merge key by key, anything else
/// replaces; a null in the overlay removes the key (as Patroni does).
pub(crate) fn deep_merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                if value.is_null() {
                    base.remove(&key);
                    continue;
                }
                match base.get_mut(&key) {
                    Some(existing) if existing.is_object() && value.is_object() => {
                        deep_merge(existing, value)
                    }
                    _ => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, overlay) => *base = overlay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml12_scalars_and_keys() {
        let v = parse_yaml("a: on\nb: true\nc: 30\nd: '30'\n1: x\ne: 1.5\nf:\n", "t").unwrap();
        assert_eq!(
            v,
            json!({"a": "on", "b": true, "c": 30, "d": "30", "1": "x", "e": 1.5, "f": null})
        );
    }

    #[test]
    fn empty_document_is_an_empty_mapping() {
        assert_eq!(parse_yaml("", "t").unwrap(), json!({}));
        assert_eq!(parse_yaml("# only a comment\n", "t").unwrap(), json!({}));
    }

    #[test]
    fn merge_keys_are_applied() {
        let v = parse_yaml("base: &b {x: 1}\nuse:\n  <<: *b\n  y: 2\n", "t").unwrap();
        assert_eq!(v["use"], json!({"x": 1, "y": 2}));
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let err = parse_yaml("scope: demo\nrestapi:\n  listen: [unclosed\n", "f.yml").unwrap_err();
        match err {
            ConfigError::Yaml { origin, line, .. } => {
                assert_eq!(origin, "f.yml");
                assert!(line.is_some());
            }
            other => panic!("unexpected {other:?}"),
        }
        let err = parse_yaml("a: 1\na: 2\n", "f.yml").unwrap_err();
        assert!(err.to_string().contains("duplicate"), "{err}");
    }

    #[test]
    fn deep_merge_merges_mappings_and_replaces_scalars() {
        let mut base = json!({"a": {"x": 1, "y": [1]}, "b": 1, "c": 3});
        deep_merge(
            &mut base,
            json!({"a": {"y": [2], "z": 3}, "b": {"n": 1}, "c": null}),
        );
        assert_eq!(
            base,
            json!({"a": {"x": 1, "y": [2], "z": 3}, "b": {"n": 1}})
        );
    }
}
