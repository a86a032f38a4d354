//! A stored credential, in the forms `pg_authid.rolpassword` and PgBouncer's
//! user list use.
//!
//! Recognition follows PostgreSQL: `SCRAM-SHA-256$...` is a SCRAM verifier
//! (and must parse, a typo must not silently become a plain password), `md5`
//! followed by 32 hex digits is an md5 hash, anything else a plain password.
//! `Debug` never shows the secret.

use std::fmt;

use crate::scram::{ScramVerifier, SCRAM_SHA_256};
use crate::AuthError;

/// A stored password, hashed or not.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// A SCRAM-SHA-256 verifier.
    Scram(ScramVerifier),
    /// `"md5" + hex(md5(password ++ user))`, lower-case hex.
    Md5(String),
    /// A plain-text password.
    Plain(String),
}

impl Secret {
    /// Recognises a stored secret (see the module header).
    pub fn parse(text: &str) -> Result<Secret, AuthError> {
        if text.starts_with(SCRAM_SHA_256) && text[SCRAM_SHA_256.len()..].starts_with('$') {
            return ScramVerifier::parse(text).map(Secret::Scram);
        }
        if let Some(hex) = text.strip_prefix("md5") {
            if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(Secret::Md5(format!("md5{}", hex.to_ascii_lowercase())));
            }
        }
        Ok(Secret::Plain(text.to_string()))
    }

    /// The md5 form of a plain password for `user`, as PostgreSQL stores it.
    pub fn md5_of(password: &str, user: &str) -> Secret {
        Secret::Md5(crate::md5auth::md5_hash(password, user))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Scram(v) => f.debug_tuple("Scram").field(v).finish(),
            Secret::Md5(_) => f.write_str("Md5(<redacted>)"),
            Secret::Plain(_) => f.write_str("Plain(<redacted>)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_three_forms() {
        let v = ScramVerifier::from_password("pw", b"0123456789abcdef", 4096).to_string();
        assert!(matches!(Secret::parse(&v).unwrap(), Secret::Scram(_)));
        let md5 = "md5AABBCCDDEEFF00112233445566778899";
        assert_eq!(
            Secret::parse(md5).unwrap(),
            Secret::Md5("md5aabbccddeeff00112233445566778899".into())
        );
        // Not 32 hex digits: a plain password that happens to start with md5.
        assert_eq!(
            Secret::parse("md5short").unwrap(),
            Secret::Plain("md5short".into())
        );
        assert_eq!(
            Secret::parse("hunter2").unwrap(),
            Secret::Plain("hunter2".into())
        );
    }

    #[test]
    fn a_broken_scram_verifier_is_an_error_not_a_password() {
        let err = Secret::parse("SCRAM-SHA-256$4096:abc").unwrap_err();
        assert!(matches!(err, AuthError::BadVerifier(_)), "{err}");
    }

    #[test]
    fn debug_hides_secrets() {
        let shown = format!(
            "{:?} {:?}",
            Secret::Plain("hunter2".into()),
            Secret::md5_of("hunter2", "bob")
        );
        assert!(
            !shown.contains("hunter2") && !shown.contains("md5"),
            "{shown}"
        );
    }
}
