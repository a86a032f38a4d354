//! PgBouncer's `userlist.txt`: one `"user" "secret"` pair per line, a doubled
//! quote (`""`) inside a field stands for one quote, lines starting with `;`
//! or `#` and blank lines are ignored. The secret is a SCRAM verifier, an md5
//! hash or a plain password ([`Secret::parse`]). Unlike PgBouncer, a line that
//! does not parse is an error naming its number instead of being skipped, so a
//! typo cannot silently lock a user out.

use std::collections::HashMap;
use std::path::Path;

use crate::{AuthError, Secret};

/// Users and their stored secrets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserList {
    users: HashMap<String, Secret>,
}

impl UserList {
    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<UserList, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        UserList::parse(&text)
    }

    /// Parses the file's text. A user listed twice keeps its last secret, as
    /// in PgBouncer.
    pub fn parse(text: &str) -> Result<UserList, AuthError> {
        let mut users = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let line_no = index + 1;
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with(';') || trimmed.starts_with('#') {
                continue;
            }
            let bad = |reason: &str| AuthError::UserList {
                line: line_no,
                reason: reason.to_string(),
            };
            let (user, rest) = quoted(trimmed).ok_or_else(|| {
                bad("expected \"user\" \"password\" (the user name must be in double quotes)")
            })?;
            let (secret, _) = quoted(rest.trim_start())
                .ok_or_else(|| bad("expected the password in double quotes after the user"))?;
            if user.is_empty() {
                return Err(bad("empty user name"));
            }
            let secret = Secret::parse(&secret).map_err(|e| bad(&e.to_string()))?;
            users.insert(user, secret);
        }
        Ok(UserList { users })
    }

    pub fn get(&self, user: &str) -> Option<&Secret> {
        self.users.get(user)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// One `"..."` field at the start of `s` with `""` unescaped, and the rest.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut chars = s.char_indices();
    if chars.next()?.1 != '"' {
        return None;
    }
    let mut out = String::new();
    let mut pending_quote = false;
    for (i, c) in chars {
        if pending_quote {
            if c == '"' {
                out.push('"');
                pending_quote = false;
                continue;
            }
            return Some((out, &s[i..]));
        }
        if c == '"' {
            pending_quote = true;
        } else {
            out.push(c);
        }
    }
    pending_quote.then_some((out, ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_users_comments_and_escaped_quotes() {
        let list = UserList::parse(
            "; a comment\n\n# another\n\"alice\" \"secret\"\n\"bo\"\"b\" \"md5aabbccddeeff00112233445566778899\" extra\n",
        )
        .unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list.get("alice"), Some(&Secret::Plain("secret".into())));
        assert!(matches!(list.get("bo\"b"), Some(Secret::Md5(_))));
        assert_eq!(list.get("carol"), None);
    }

    #[test]
    fn the_last_entry_of_a_user_wins() {
        let list = UserList::parse("\"a\" \"one\"\n\"a\" \"two\"\n").unwrap();
        assert_eq!(list.get("a"), Some(&Secret::Plain("two".into())));
    }

    #[test]
    fn bad_lines_name_their_number() {
        let err = UserList::parse("\"a\" \"x\"\nalice secret\n").unwrap_err();
        assert!(matches!(err, AuthError::UserList { line: 2, .. }), "{err}");
        let err = UserList::parse("\"a\" \"unterminated\n").unwrap_err();
        assert!(matches!(err, AuthError::UserList { line: 1, .. }), "{err}");
        let err = UserList::parse("\"\" \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("empty user name"), "{err}");
        let err = UserList::parse("\"a\" \"SCRAM-SHA-256$broken\"\n").unwrap_err();
        assert!(matches!(err, AuthError::UserList { line: 1, .. }), "{err}");
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let err = UserList::load(Path::new("/nonexistent/userlist.txt")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/userlist.txt"),
            "{err}"
        );
    }
}
