//! SCRAM-SHA-256 as PostgreSQL does it (RFC 5802, RFC 7677), both sides.
//!
//! Scope and choices:
//! - no channel binding: the gs2 headers `n,,` and `y,,` are accepted, `p=`
//!   is refused with [`AuthError::ChannelBindingNotSupported`], `a=` with
//!   [`AuthError::AuthzidNotSupported`] (as PostgreSQL does);
//! - the user name inside the messages is ignored (PostgreSQL takes it from
//!   the startup packet), and the client sends `n=` empty like libpq;
//! - passwords go through SASLprep (`stringprep` crate); when SASLprep
//!   fails (prohibited characters, e.g. ASCII control characters) the raw
//!   bytes are used, exactly like PostgreSQL's `pg_saslprep` fallback;
//! - the server never runs PBKDF2 (it checks the proof with HMACs only), so a
//!   fake verifier for an unknown user costs the same as a real one;
//! - proofs and signatures are compared in constant time.
//!
//! A [`ScramServer`] recovers the client's `ClientKey` on success; with the
//! verifier's `ServerKey` that is enough for a [`ScramClient`] to log in to
//! PostgreSQL as that user without knowing the password ("SCRAM
//! pass-through", as PgBouncer does).

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{AuthError, Secret};

/// The SASL mechanism name.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// PostgreSQL's default `scram_iterations`.
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// Length of random nonces in bytes before base64 (PostgreSQL uses 18).
const NONCE_BYTES: usize = 18;
/// Length of a generated salt (PostgreSQL uses 16).
const SALT_BYTES: usize = 16;

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// SASLprep, or the raw password when SASLprep refuses it (PostgreSQL's rule).
fn normalize(password: &str) -> Cow<'_, str> {
    stringprep::saslprep(password).unwrap_or(Cow::Borrowed(password))
}

fn random_nonce() -> String {
    let mut bytes = [0u8; NONCE_BYTES];
    rand::thread_rng().fill_bytes(&mut bytes);
    B64.encode(bytes)
}

/// ClientKey and ServerKey of a password.
fn keys_of(password: &str, salt: &[u8], iterations: u32) -> ([u8; 32], [u8; 32]) {
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(
        normalize(password).as_bytes(),
        salt,
        iterations,
        &mut salted,
    );
    (
        hmac(&salted, &[b"Client Key"]),
        hmac(&salted, &[b"Server Key"]),
    )
}

/// A stored SCRAM-SHA-256 verifier (`pg_authid.rolpassword`).
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl ScramVerifier {
    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64).
    pub fn parse(text: &str) -> Result<Self, AuthError> {
        let bad = |reason: &str| AuthError::BadVerifier(reason.to_string());
        let rest = text
            .strip_prefix(SCRAM_SHA_256)
            .and_then(|r| r.strip_prefix('$'))
            .ok_or_else(|| bad("does not start with SCRAM-SHA-256$"))?;
        let (params, keys) = rest
            .split_once('$')
            .ok_or_else(|| bad("expected <iterations>:<salt>$<StoredKey>:<ServerKey>"))?;
        let (iterations, salt) = params
            .split_once(':')
            .ok_or_else(|| bad("expected <iterations>:<salt> before the second '$'"))?;
        let iterations: u32 = iterations
            .parse()
            .ok()
            .filter(|i| *i > 0)
            .ok_or_else(|| bad("the iteration count is not a positive integer"))?;
        let salt = B64
            .decode(salt)
            .map_err(|e| bad(&format!("the salt is not base64: {e}")))?;
        if salt.is_empty() {
            return Err(bad("the salt is empty"));
        }
        let (stored, server) = keys
            .split_once(':')
            .ok_or_else(|| bad("expected <StoredKey>:<ServerKey> after the second '$'"))?;
        let key = |what: &str, b64: &str| -> Result<[u8; 32], AuthError> {
            let bytes = B64
                .decode(b64)
                .map_err(|e| bad(&format!("{what} is not base64: {e}")))?;
            <[u8; 32]>::try_from(bytes.as_slice())
                .map_err(|_| bad(&format!("{what} is {} bytes, not 32", bytes.len())))
        };
        Ok(ScramVerifier {
            iterations,
            salt,
            stored_key: key("StoredKey", stored)?,
            server_key: key("ServerKey", server)?,
        })
    }

    /// The verifier PostgreSQL would store for `password` with this salt and
    /// iteration count.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Self {
        let (client_key, server_key) = keys_of(password, salt, iterations);
        ScramVerifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key,
        }
    }

    /// A verifier with a fresh random 16-byte salt and 4096 iterations (what
    /// `CREATE ROLE ... PASSWORD` does with PostgreSQL's defaults).
    pub fn generate(password: &str) -> Self {
        let mut salt = [0u8; SALT_BYTES];
        rand::thread_rng().fill_bytes(&mut salt);
        Self::from_password(password, &salt, DEFAULT_ITERATIONS)
    }

    /// A made-up verifier for a user that does not exist: stable for a user
    /// name within this process, unpredictable from outside, and no password
    /// matches it (its StoredKey is not a hash of any known ClientKey).
    fn fake_for(user: &str) -> Self {
        // Written once, never changed: a per-process secret, not mutable state.
        static MOCK_KEY: OnceLock<[u8; 32]> = OnceLock::new();
        let key = MOCK_KEY.get_or_init(|| {
            let mut k = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut k);
            k
        });
        let user = user.as_bytes();
        ScramVerifier {
            iterations: DEFAULT_ITERATIONS,
            salt: hmac(key, &[b"salt\0", user])[..SALT_BYTES].to_vec(),
            stored_key: hmac(key, &[b"stored\0", user]),
            server_key: hmac(key, &[b"server\0", user]),
        }
    }
}

impl fmt::Display for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCRAM_SHA_256}${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .field("salt", &B64.encode(&self.salt))
            .finish_non_exhaustive()
    }
}

/// `name=value` attributes of a SCRAM message, in order.
struct Attributes<'a> {
    message: &'static str,
    parts: std::iter::Peekable<std::str::Split<'a, char>>,
}

impl<'a> Attributes<'a> {
    fn new(message: &'static str, text: &'a str) -> Self {
        Attributes {
            message,
            parts: text.split(',').peekable(),
        }
    }

    fn missing(&self, attribute: char) -> AuthError {
        AuthError::BadAttribute {
            message: self.message,
            attribute,
            reason: "missing".into(),
        }
    }

    /// The value of the next attribute, which must be `name`.
    fn expect(&mut self, name: char) -> Result<&'a str, AuthError> {
        let part = self.parts.next().ok_or_else(|| self.missing(name))?;
        let mut chars = part.chars();
        match (chars.next(), chars.next()) {
            (Some(c), Some('=')) if c == name => Ok(&part[2..]),
            _ => Err(AuthError::BadAttribute {
                message: self.message,
                attribute: name,
                reason: format!("expected '{name}=' but found '{}'", truncate(part)),
            }),
        }
    }

    /// Whether the next attribute is `name` (without consuming it).
    fn next_is(&mut self, name: char) -> bool {
        self.parts
            .peek()
            .is_some_and(|p| p.starts_with(name) && p[name.len_utf8()..].starts_with('='))
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(32).collect()
}

fn utf8<'a>(message: &'static str, bytes: &'a [u8]) -> Result<&'a str, AuthError> {
    std::str::from_utf8(bytes).map_err(|_| AuthError::Malformed {
        message,
        reason: "not valid UTF-8".into(),
    })
}

/// A nonce: printable ASCII except ',' (RFC 5802 `printable`).
fn check_nonce(message: &'static str, nonce: &str) -> Result<(), AuthError> {
    if nonce.is_empty()
        || !nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
    {
        return Err(AuthError::BadAttribute {
            message,
            attribute: 'r',
            reason: "the nonce must be non-empty printable ASCII without ','".into(),
        });
    }
    Ok(())
}

fn decode_b64(message: &'static str, attribute: char, value: &str) -> Result<Vec<u8>, AuthError> {
    B64.decode(value).map_err(|e| AuthError::BadAttribute {
        message,
        attribute,
        reason: format!("not base64: {e}"),
    })
}

enum ServerState {
    Initial,
    FirstSent {
        gs2_header: String,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
    Done {
        client_key: [u8; 32],
    },
    Failed,
}

/// The server side of one SCRAM-SHA-256 exchange.
pub struct ScramServer {
    verifier: ScramVerifier,
    server_nonce: String,
    state: ServerState,
}

impl ScramServer {
    /// An exchange against `verifier`, with a random server nonce.
    pub fn new(verifier: ScramVerifier) -> ScramServer {
        Self::with_nonce(verifier, &random_nonce())
    }

    /// An exchange with a chosen server nonce (for test vectors only).
    #[doc(hidden)]
    pub fn with_nonce(verifier: ScramVerifier, server_nonce: &str) -> ScramServer {
        ScramServer {
            verifier,
            server_nonce: server_nonce.to_string(),
            state: ServerState::Initial,
        }
    }

    /// An exchange for a user that does not exist: it looks like a real one
    /// (stable salt, default iterations) and fails with
    /// [`AuthError::WrongProof`] exactly where a wrong password does.
    pub fn for_unknown_user(user: &str) -> ScramServer {
        Self::new(ScramVerifier::fake_for(user))
    }

    /// An exchange for a stored secret: a SCRAM verifier as is, a plain
    /// password through a fresh verifier (PBKDF2 runs once here); `None` for an
    /// md5 hash, which cannot do SCRAM.
    pub fn for_secret(secret: &Secret) -> Option<ScramServer> {
        match secret {
            Secret::Scram(v) => Some(Self::new(v.clone())),
            Secret::Plain(p) => Some(Self::new(ScramVerifier::generate(p))),
            Secret::Md5(_) => None,
        }
    }

    /// Takes client-first-message, returns server-first-message.
    pub fn handle_client_first(&mut self, client_first: &[u8]) -> Result<Vec<u8>, AuthError> {
        if !matches!(self.state, ServerState::Initial) {
            return Err(AuthError::OutOfOrder(
                "client-first-message after the exchange started",
            ));
        }
        self.state = ServerState::Failed;
        const MSG: &str = "client-first-message";
        let text = utf8(MSG, client_first)?;
        let malformed = |reason: &str| AuthError::Malformed {
            message: MSG,
            reason: reason.to_string(),
        };
        let (flag, rest) = text
            .split_once(',')
            .ok_or_else(|| malformed("no gs2 header"))?;
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => {
                return Err(AuthError::ChannelBindingNotSupported(f[2..].to_string()))
            }
            _ => return Err(malformed("the gs2 header must start with 'n', 'y' or 'p='")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or_else(|| malformed("the gs2 header must end with ','"))?;
        if authzid.starts_with("a=") {
            return Err(AuthError::AuthzidNotSupported);
        }
        if !authzid.is_empty() {
            return Err(malformed("unexpected text in the gs2 header"));
        }
        let gs2_header = &text[..text.len() - bare.len()];
        let mut attrs = Attributes::new(MSG, bare);
        if attrs.next_is('m') {
            return Err(AuthError::MandatoryExtension);
        }
        // The user name is ignored: PostgreSQL authenticates the startup user.
        attrs.expect('n')?;
        let client_nonce = attrs.expect('r')?;
        check_nonce(MSG, client_nonce)?;
        let nonce = format!("{client_nonce}{}", self.server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        self.state = ServerState::FirstSent {
            gs2_header: gs2_header.to_string(),
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
            nonce,
        };
        Ok(server_first.into_bytes())
    }

    /// Takes client-final-message, checks the proof, returns
    /// server-final-message (`v=<ServerSignature>`).
    pub fn handle_client_final(&mut self, client_final: &[u8]) -> Result<Vec<u8>, AuthError> {
        let ServerState::FirstSent {
            gs2_header,
            client_first_bare,
            server_first,
            nonce,
        } = std::mem::replace(&mut self.state, ServerState::Failed)
        else {
            return Err(AuthError::OutOfOrder(
                "client-final-message before client-first-message or after the end",
            ));
        };
        const MSG: &str = "client-final-message";
        let text = utf8(MSG, client_final)?;
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or(AuthError::BadAttribute {
            message: MSG,
            attribute: 'p',
            reason: "missing".into(),
        })?;
        let mut attrs = Attributes::new(MSG, without_proof);
        let binding = decode_b64(MSG, 'c', attrs.expect('c')?)?;
        if binding.starts_with(b"p=") {
            return Err(AuthError::ChannelBindingNotSupported(
                String::from_utf8_lossy(&binding[2..])
                    .split(',')
                    .next()
                    .unwrap_or("")
                    .to_string(),
            ));
        }
        if binding != gs2_header.as_bytes() {
            return Err(AuthError::ChannelBindingMismatch);
        }
        if !bool::from(attrs.expect('r')?.as_bytes().ct_eq(nonce.as_bytes())) {
            return Err(AuthError::NonceMismatch);
        }
        let proof: [u8; 32] = decode_b64(MSG, 'p', proof)?
            .as_slice()
            .try_into()
            .map_err(|_| AuthError::BadAttribute {
                message: MSG,
                attribute: 'p',
                reason: "the proof must be 32 bytes".into(),
            })?;
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac(&self.verifier.stored_key, &[auth_message.as_bytes()]);
        let client_key = xor(&proof, &signature);
        if !bool::from(sha256(&client_key).ct_eq(&self.verifier.stored_key)) {
            return Err(AuthError::WrongProof);
        }
        let server_signature = hmac(&self.verifier.server_key, &[auth_message.as_bytes()]);
        self.state = ServerState::Done { client_key };
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }

    /// The client's ClientKey, once the exchange succeeded.
    pub fn client_key(&self) -> Option<[u8; 32]> {
        match self.state {
            ServerState::Done { client_key } => Some(client_key),
            _ => None,
        }
    }
}

/// What a [`ScramClient`] proves it knows.
#[derive(Clone)]
pub enum ScramCredential {
    /// The password (PBKDF2 with the server's salt and iterations).
    Password(String),
    /// Keys recovered by a [`ScramServer`] (pass-through): any salt and
    /// iteration count the server names are then irrelevant.
    Keys {
        client_key: [u8; 32],
        server_key: [u8; 32],
    },
}

impl fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScramCredential::Password(_) => f.write_str("Password(<redacted>)"),
            ScramCredential::Keys { .. } => f.write_str("Keys(<redacted>)"),
        }
    }
}

enum ClientState {
    Initial,
    FirstSent { client_first_bare: String },
    FinalSent { server_signature: [u8; 32] },
    Failed,
}

/// The client side of one SCRAM-SHA-256 exchange (without channel binding).
pub struct ScramClient {
    credential: ScramCredential,
    user: String,
    nonce: String,
    state: ClientState,
}

impl ScramClient {
    /// An exchange with a random client nonce.
    pub fn new(credential: ScramCredential) -> ScramClient {
        Self::with_nonce(credential, "", &random_nonce())
    }

    /// An exchange with a chosen user name and nonce (for test vectors only).
    #[doc(hidden)]
    pub fn with_nonce(credential: ScramCredential, user: &str, nonce: &str) -> ScramClient {
        ScramClient {
            credential,
            user: user.to_string(),
            nonce: nonce.to_string(),
            state: ClientState::Initial,
        }
    }

    /// client-first-message: `n,,n=,r=<nonce>`.
    pub fn client_first(&mut self) -> Vec<u8> {
        let client_first_bare = format!("n={},r={}", self.user, self.nonce);
        let message = format!("n,,{client_first_bare}");
        self.state = ClientState::FirstSent { client_first_bare };
        message.into_bytes()
    }

    /// Takes server-first-message, returns client-final-message.
    pub fn handle_server_first(&mut self, server_first: &[u8]) -> Result<Vec<u8>, AuthError> {
        let ClientState::FirstSent { client_first_bare } =
            std::mem::replace(&mut self.state, ClientState::Failed)
        else {
            return Err(AuthError::OutOfOrder(
                "server-first-message before client-first-message or after it was handled",
            ));
        };
        const MSG: &str = "server-first-message";
        let text = utf8(MSG, server_first)?;
        if let Some(error) = text.strip_prefix("e=") {
            return Err(AuthError::ServerError(error.to_string()));
        }
        let mut attrs = Attributes::new(MSG, text);
        if attrs.next_is('m') {
            return Err(AuthError::MandatoryExtension);
        }
        let nonce = attrs.expect('r')?;
        check_nonce(MSG, nonce)?;
        if nonce.len() <= self.nonce.len() || !nonce.starts_with(&self.nonce) {
            return Err(AuthError::NonceMismatch);
        }
        let salt = decode_b64(MSG, 's', attrs.expect('s')?)?;
        let iterations: u32 =
            attrs
                .expect('i')?
                .parse()
                .ok()
                .filter(|i| *i > 0)
                .ok_or(AuthError::BadAttribute {
                    message: MSG,
                    attribute: 'i',
                    reason: "not a positive integer".into(),
                })?;
        let (client_key, server_key) = match &self.credential {
            ScramCredential::Password(password) => keys_of(password, &salt, iterations),
            ScramCredential::Keys {
                client_key,
                server_key,
            } => (*client_key, *server_key),
        };
        // "biws" is base64("n,,"): no channel binding, no authzid.
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{client_first_bare},{text},{without_proof}");
        let signature = hmac(&sha256(&client_key), &[auth_message.as_bytes()]);
        let proof = xor(&client_key, &signature);
        self.state = ClientState::FinalSent {
            server_signature: hmac(&server_key, &[auth_message.as_bytes()]),
        };
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks server-final-message: the server proves it knows the verifier.
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), AuthError> {
        let ClientState::FinalSent { server_signature } = &self.state else {
            return Err(AuthError::OutOfOrder(
                "server-final-message before client-final-message",
            ));
        };
        const MSG: &str = "server-final-message";
        let text = utf8(MSG, server_final)?;
        if let Some(error) = text.strip_prefix("e=") {
            return Err(AuthError::ServerError(error.to_string()));
        }
        let mut attrs = Attributes::new(MSG, text);
        let got = decode_b64(MSG, 'v', attrs.expect('v')?)?;
        if bool::from(got.as_slice().ct_eq(server_signature)) {
            Ok(())
        } else {
            Err(AuthError::WrongServerSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677 section 3.
    const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_verifier() -> ScramVerifier {
        ScramVerifier::from_password(
            "pencil",
            &B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap(),
            4096,
        )
    }

    #[test]
    fn rfc7677_client_side() {
        let mut client = ScramClient::with_nonce(
            ScramCredential::Password("pencil".into()),
            "user",
            CLIENT_NONCE,
        );
        assert_eq!(client.client_first(), CLIENT_FIRST.as_bytes());
        let fin = client.handle_server_first(SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(fin).unwrap(), CLIENT_FINAL);
        client.verify_server_final(SERVER_FINAL.as_bytes()).unwrap();
        let forged = "v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        assert!(matches!(
            client.verify_server_final(forged.as_bytes()),
            Err(AuthError::WrongServerSignature)
        ));
    }

    #[test]
    fn rfc7677_server_side() {
        let mut server = ScramServer::with_nonce(rfc_verifier(), SERVER_NONCE);
        let first = server.handle_client_first(CLIENT_FIRST.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(first).unwrap(), SERVER_FIRST);
        assert_eq!(server.client_key(), None);
        let fin = server.handle_client_final(CLIENT_FINAL.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(fin).unwrap(), SERVER_FINAL);
        let (client_key, _) = keys_of("pencil", &rfc_verifier().salt, 4096);
        assert_eq!(server.client_key(), Some(client_key));
    }

    #[test]
    fn verifier_text_round_trips() {
        let v = rfc_verifier();
        let text = v.to_string();
        assert!(
            text.starts_with("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"),
            "{text}"
        );
        assert_eq!(ScramVerifier::parse(&text).unwrap(), v);
        assert!(!format!("{v:?}").contains(&B64.encode(v.stored_key)));
    }

    #[test]
    fn bad_verifier_texts_say_what_is_wrong() {
        let good = rfc_verifier().to_string();
        let (head, keys) = good.rsplit_once('$').unwrap();
        let (stored, _) = keys.split_once(':').unwrap();
        for (text, expect) in [
            ("md5abc", "does not start"),
            ("SCRAM-SHA-256$4096:abc", "expected <iterations>"),
            ("SCRAM-SHA-256$0:W22Z$a:b", "iteration count"),
            ("SCRAM-SHA-256$x:W22Z$a:b", "iteration count"),
            ("SCRAM-SHA-256$4096:!!$a:b", "salt is not base64"),
            (
                &format!("{head}${stored}"),
                "expected <StoredKey>:<ServerKey>",
            ),
            (&format!("{head}${stored}:AAAA"), "ServerKey is 3 bytes"),
        ] {
            let err = ScramVerifier::parse(text).unwrap_err().to_string();
            assert!(err.contains(expect), "{text}: {err}");
        }
    }

    fn exchange(server: &mut ScramServer, client: &mut ScramClient) -> Result<(), AuthError> {
        let first = server.handle_client_first(&client.client_first())?;
        let fin = server.handle_client_final(&client.handle_server_first(&first)?)?;
        client.verify_server_final(&fin)
    }

    #[test]
    fn round_trip_with_password_then_pass_through_keys() {
        let verifier = ScramVerifier::generate("s3cret");
        let mut server = ScramServer::new(verifier.clone());
        let mut client = ScramClient::new(ScramCredential::Password("s3cret".into()));
        exchange(&mut server, &mut client).unwrap();
        let client_key = server.client_key().unwrap();
        // The recovered keys log in again without the password.
        let mut server2 = ScramServer::new(verifier.clone());
        let mut client2 = ScramClient::new(ScramCredential::Keys {
            client_key,
            server_key: verifier.server_key,
        });
        exchange(&mut server2, &mut client2).unwrap();
        assert_eq!(server2.client_key(), Some(client_key));
    }

    #[test]
    fn wrong_password_and_unknown_user_fail_alike() {
        let verifier = ScramVerifier::from_password("right", b"0123456789abcdef", 64);
        let mut server = ScramServer::new(verifier);
        let mut client = ScramClient::new(ScramCredential::Password("wrong".into()));
        let err = exchange(&mut server, &mut client).unwrap_err();
        assert!(matches!(err, AuthError::WrongProof), "{err}");
        assert_eq!(server.client_key(), None);

        let mut ghost = ScramServer::for_unknown_user("ghost");
        let mut client = ScramClient::new(ScramCredential::Password("right".into()));
        let first = ghost.handle_client_first(&client.client_first()).unwrap();
        let text = String::from_utf8(first.clone()).unwrap();
        assert!(text.ends_with(",i=4096"), "{text}");
        // Same salt every time for the same name, as a real user would have.
        let mut again = ScramServer::for_unknown_user("ghost");
        let text2 = String::from_utf8(again.handle_client_first(b"n,,n=,r=abc").unwrap()).unwrap();
        let salt = |t: &str| t.split(',').nth(1).unwrap().to_string();
        assert_eq!(salt(&text), salt(&text2));
        let fin = client.handle_server_first(&first).unwrap();
        let err = ghost.handle_client_final(&fin).unwrap_err();
        assert!(matches!(err, AuthError::WrongProof), "{err}");
    }

    #[test]
    fn gs2_headers() {
        let verifier = ScramVerifier::from_password("pw", b"salt", 16);
        // y,, (client supports binding, thinks the server does not) is fine.
        let mut server = ScramServer::with_nonce(verifier.clone(), "SRV");
        server.handle_client_first(b"y,,n=,r=abc").unwrap();
        // ... but then c= must repeat exactly "y,,".
        let err = server
            .handle_client_final(b"c=biws,r=abcSRV,p=AAAA")
            .unwrap_err();
        assert!(matches!(err, AuthError::ChannelBindingMismatch), "{err}");

        let mut server = ScramServer::new(verifier.clone());
        let err = server
            .handle_client_first(b"p=tls-server-end-point,,n=,r=abc")
            .unwrap_err();
        assert!(
            matches!(err, AuthError::ChannelBindingNotSupported(ref m) if m == "tls-server-end-point"),
            "{err}"
        );
        let mut server = ScramServer::new(verifier.clone());
        let err = server
            .handle_client_first(b"n,a=admin,n=,r=abc")
            .unwrap_err();
        assert!(matches!(err, AuthError::AuthzidNotSupported), "{err}");
        let mut server = ScramServer::new(verifier);
        let err = server
            .handle_client_first(b"n,,m=ext,n=,r=abc")
            .unwrap_err();
        assert!(matches!(err, AuthError::MandatoryExtension), "{err}");
    }

    #[test]
    fn malformed_messages_name_the_attribute() {
        let verifier = ScramVerifier::from_password("pw", b"salt", 16);
        for (msg, attribute) in [
            (&b"n,,r=abc"[..], 'n'),
            (b"n,,n=", 'r'),
            (b"n,,n=,r=", 'r'),
            (b"n,,n=,x=abc", 'r'),
        ] {
            let err = ScramServer::new(verifier.clone())
                .handle_client_first(msg)
                .unwrap_err();
            assert!(
                matches!(err, AuthError::BadAttribute { attribute: a, .. } if a == attribute),
                "{}: {err}",
                String::from_utf8_lossy(msg)
            );
        }
        for msg in [&b"nope"[..], b"q,,n=,r=x", b"n,", b"\xff,,"] {
            let err = ScramServer::new(verifier.clone())
                .handle_client_first(msg)
                .unwrap_err();
            assert!(matches!(err, AuthError::Malformed { .. }), "{err}");
        }
        let started = || {
            let mut s = ScramServer::with_nonce(verifier.clone(), "SRV");
            s.handle_client_first(b"n,,n=,r=abc").unwrap();
            s
        };
        for (msg, attribute) in [
            (&b"c=biws,r=abcSRV"[..], 'p'),
            (b"r=abcSRV,p=AAAA", 'c'),
            (b"c=!!,r=abcSRV,p=AAAA", 'c'),
            (b"c=biws,r=abcSRV,p=AAAA", 'p'),
            (b"c=biws,p=AAAA", 'r'),
        ] {
            let err = started().handle_client_final(msg).unwrap_err();
            assert!(
                matches!(err, AuthError::BadAttribute { attribute: a, .. } if a == attribute),
                "{}: {err}",
                String::from_utf8_lossy(msg)
            );
        }
        let err = started()
            .handle_client_final(b"c=biws,r=abcOTHER,p=AAAA")
            .unwrap_err();
        assert!(matches!(err, AuthError::NonceMismatch), "{err}");
    }

    #[test]
    fn client_checks_the_server() {
        let mut client = ScramClient::with_nonce(ScramCredential::Password("pw".into()), "", "abc");
        assert!(matches!(
            client.handle_server_first(b"r=abcd,s=AAAA,i=1"),
            Err(AuthError::OutOfOrder(_))
        ));
        client.client_first();
        let err = client.handle_server_first(b"r=xyz,s=AAAA,i=1").unwrap_err();
        assert!(matches!(err, AuthError::NonceMismatch), "{err}");
        client.client_first();
        // The server must add its own part to the nonce.
        let err = client.handle_server_first(b"r=abc,s=AAAA,i=1").unwrap_err();
        assert!(matches!(err, AuthError::NonceMismatch), "{err}");
        client.client_first();
        let err = client
            .handle_server_first(b"r=abcd,s=AAAA,i=0")
            .unwrap_err();
        assert!(
            matches!(err, AuthError::BadAttribute { attribute: 'i', .. }),
            "{err}"
        );
        client.client_first();
        let err = client.handle_server_first(b"e=other-error").unwrap_err();
        assert!(matches!(err, AuthError::ServerError(ref e) if e == "other-error"));
    }

    #[test]
    fn saslprep_is_applied_and_falls_back_to_raw() {
        let salt = b"0123456789abcdef";
        // U+00A0 (no-break space) maps to a plain space under SASLprep.
        assert_eq!(
            ScramVerifier::from_password("a\u{a0}b", salt, 16),
            ScramVerifier::from_password("a b", salt, 16)
        );
        // A control character is prohibited: the raw password is used, so it
        // still differs from the same password without it.
        assert_ne!(
            ScramVerifier::from_password("a\u{7}b", salt, 16),
            ScramVerifier::from_password("ab", salt, 16)
        );
        assert_eq!(normalize("a\u{7}b"), "a\u{7}b");
    }

    #[test]
    fn for_secret_covers_the_three_forms() {
        assert!(ScramServer::for_secret(&Secret::md5_of("pw", "u")).is_none());
        let mut from_plain = ScramServer::for_secret(&Secret::Plain("pw".into())).unwrap();
        let mut client = ScramClient::new(ScramCredential::Password("pw".into()));
        exchange(&mut from_plain, &mut client).unwrap();
    }
}
