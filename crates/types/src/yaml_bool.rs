//! Lenient scalar coercion for values written by Patroni users.
//!
//! Patroni reads YAML 1.1, where `on`, `off`, `yes` and `no` are booleans, and
//! its dynamic configuration accepts strings such as `"true"` or `"30"`.
//! pgwarden parses YAML 1.2 and JSON, so these helpers accept both spellings.

use serde_json::Value;

/// Interprets a JSON value as a boolean the way Patroni does.
///
/// Returns `None` when the value is neither a boolean nor a recognised word.
pub fn coerce_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_i64().map(|n| n != 0),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "on" | "true" | "yes" | "y" | "1" => Some(true),
            "off" | "false" | "no" | "n" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// Interprets a JSON value as an integer, accepting numeric strings.
pub fn coerce_i64(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Interprets a JSON value as a number of seconds, fractions allowed, accepting
/// numeric strings (`"0.5"`).
pub fn coerce_seconds(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml11_words_are_booleans() {
        for word in ["on", "ON", "yes", "true", "1"] {
            assert_eq!(coerce_bool(&json!(word)), Some(true), "{word}");
        }
        for word in ["off", "no", "False", "0"] {
            assert_eq!(coerce_bool(&json!(word)), Some(false), "{word}");
        }
        assert_eq!(coerce_bool(&json!("maybe")), None);
        assert_eq!(coerce_bool(&json!([1])), None);
    }

    #[test]
    fn integers_from_strings() {
        assert_eq!(coerce_i64(&json!("30")), Some(30));
        assert_eq!(coerce_i64(&json!(12)), Some(12));
        assert_eq!(coerce_i64(&json!("x")), None);
    }
}
