//! PostgreSQL's md5 password authentication.
//!
//! The stored form is `"md5" + hex(md5(password ++ user))`; on the wire the
//! client answers a 4-byte salt with `"md5" + hex(md5(stored_hex ++ salt))`,
//! where `stored_hex` is the stored form without its prefix. A SCRAM verifier
//! cannot answer (nor check) an md5 challenge. Comparisons are constant-time.

use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

use crate::Secret;

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// `"md5" + hex(md5(password ++ user))`.
pub(crate) fn md5_hash(password: &str, user: &str) -> String {
    let mut h = Md5::new();
    h.update(password.as_bytes());
    h.update(user.as_bytes());
    format!("md5{}", hex(&h.finalize()))
}

/// The response to an md5 challenge with `salt` (also what a client sends),
/// or `None` when the secret is a SCRAM verifier (which cannot produce it).
pub fn md5_response(user: &str, secret: &Secret, salt: [u8; 4]) -> Option<String> {
    let stored = match secret {
        Secret::Scram(_) => return None,
        Secret::Md5(stored) => stored.clone(),
        Secret::Plain(password) => md5_hash(password, user),
    };
    let inner = stored.strip_prefix("md5").unwrap_or(&stored);
    let mut h = Md5::new();
    h.update(inner.as_bytes());
    h.update(salt);
    Some(format!("md5{}", hex(&h.finalize())))
}

/// Whether `response` answers the md5 challenge `salt` for `user`. Always
/// false for a SCRAM verifier and for an empty plain password (PostgreSQL
/// never accepts an empty password).
pub fn verify_md5_response(secret: &Secret, user: &str, salt: [u8; 4], response: &str) -> bool {
    if matches!(secret, Secret::Plain(p) if p.is_empty()) {
        return false;
    }
    match md5_response(user, secret, salt) {
        Some(expected) => bool::from(expected.as_bytes().ct_eq(response.as_bytes())),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_form_is_md5_of_password_then_user() {
        // RFC 1321 test vector: md5("abc"); PostgreSQL's own output is
        // checked against a real server in tests/real_postgres.rs.
        assert_eq!(md5_hash("ab", "c"), "md5900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(hex(&[0x00, 0xff, 0x1a]), "00ff1a");
    }

    #[test]
    fn plain_and_md5_secrets_answer_alike() {
        let salt = [1, 2, 3, 4];
        let plain = Secret::Plain("secret".into());
        let hashed = Secret::md5_of("secret", "alice");
        let a = md5_response("alice", &plain, salt).unwrap();
        assert_eq!(Some(a.clone()), md5_response("alice", &hashed, salt));
        assert!(a.starts_with("md5") && a.len() == 35);
        assert!(verify_md5_response(&hashed, "alice", salt, &a));
        assert!(verify_md5_response(&plain, "alice", salt, &a));
        assert!(!verify_md5_response(&hashed, "alice", [4, 3, 2, 1], &a));
        assert!(!verify_md5_response(&plain, "bob", salt, &a));
        let wrong = md5_response("alice", &Secret::Plain("other".into()), salt).unwrap();
        assert!(!verify_md5_response(&hashed, "alice", salt, &wrong));
    }

    #[test]
    fn scram_and_empty_secrets_cannot_do_md5() {
        let v = crate::ScramVerifier::from_password("x", b"salt", 16);
        assert_eq!(md5_response("u", &Secret::Scram(v.clone()), [0; 4]), None);
        assert!(!verify_md5_response(&Secret::Scram(v), "u", [0; 4], "md5"));
        let empty = Secret::Plain(String::new());
        let r = md5_response("u", &empty, [0; 4]).unwrap();
        assert!(!verify_md5_response(&empty, "u", [0; 4], &r));
    }
}
