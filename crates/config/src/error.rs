//! Errors of configuration loading.
//!
//! Every error is written for the operator who edits the file: it names the
//! file, the dotted key, the bad value and what is allowed. Validation
//! collects every problem before failing so one run shows all of them.
//! Messages must never contain a password.

use std::fmt;
use std::path::PathBuf;

/// One invalid or missing setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `postgresql.data_dir` or `bootstrap.dcs.ttl`.
    pub key: String,
    /// What is wrong, with the bad value and what is allowed.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration path does not exist.
    #[error(
        "configuration file {path} does not exist: pass the path of a Patroni-style YAML file \
         or of a directory of *.yml/*.yaml files"
    )]
    NotFound { path: PathBuf },

    /// The path exists but could not be read.
    #[error(
        "cannot read configuration {path}: {source} (check that the file is readable by this user)"
    )]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A configuration directory holds no `*.yml`/`*.yaml` file.
    #[error("configuration directory {path} contains no *.yml or *.yaml file")]
    EmptyDirectory { path: PathBuf },

    /// The text is not valid YAML.
    #[error("{origin}: YAML syntax error{}: {message}", location(*line, *column))]
    Yaml {
        origin: String,
        /// 1-based line, when the parser reported one.
        line: Option<usize>,
        /// 1-based column, when the parser reported one.
        column: Option<usize>,
        message: String,
    },

    /// The YAML parsed but settings are missing or invalid.
    #[error("{}", render_problems(origin, problems))]
    Invalid {
        origin: String,
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The problems of an `Invalid` error (empty for the other kinds).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" at line {l} column {c}"),
        (Some(l), None) => format!(" at line {l}"),
        _ => String::new(),
    }
}

fn render_problems(origin: &str, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("{origin}: {}: {}", p.key, p.message))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_renders_one_line_per_problem() {
        let err = ConfigError::Invalid {
            origin: "/etc/pgwarden.yml".into(),
            problems: vec![
                Problem {
                    key: "name".into(),
                    message: "required but missing".into(),
                },
                Problem {
                    key: "bootstrap.dcs.ttl".into(),
                    message: "must be at least 2".into(),
                },
            ],
        };
        assert_eq!(
            err.to_string(),
            "/etc/pgwarden.yml: name: required but missing\n\
             /etc/pgwarden.yml: bootstrap.dcs.ttl: must be at least 2"
        );
        assert_eq!(err.problems().len(), 2);
    }

    #[test]
    fn yaml_error_shows_location() {
        let err = ConfigError::Yaml {
            origin: "a.yml".into(),
            line: Some(3),
            column: Some(7),
            message: "did not find expected key".into(),
        };
        assert_eq!(
            err.to_string(),
            "a.yml: YAML syntax error at line 3 column 7: did not find expected key"
        );
    }
}
