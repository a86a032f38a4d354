//! Typed bodies of the client-to-server messages the proxy must look into:
//! the statement names of the extended protocol (to keep named prepared
//! statements working in transaction pooling), simple queries (the admin
//! console), and the password messages of authentication. Parts the proxy
//! never interprets (parameter values, formats) stay raw bytes so that
//! re-encoding reproduces the client's bytes exactly.

use bytes::{BufMut, BytesMut};

use crate::read::{put_cstr, put_frame, Reader};
use crate::WireError;

/// Tags of the frontend messages.
pub mod tag {
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const CLOSE: u8 = b'C';
    pub const SYNC: u8 = b'S';
    pub const FLUSH: u8 = b'H';
    pub const TERMINATE: u8 = b'X';
    pub const PASSWORD: u8 = b'p';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
}

/// What a Describe or Close names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Statement,
    Portal,
}

impl Target {
    fn byte(self) -> u8 {
        match self {
            Target::Statement => b'S',
            Target::Portal => b'P',
        }
    }

    fn from_byte(b: u8, message: &'static str) -> Result<Target, WireError> {
        match b {
            b'S' => Ok(Target::Statement),
            b'P' => Ok(Target::Portal),
            _ => Err(WireError::malformed(
                message,
                "target is neither 'S' nor 'P'",
            )),
        }
    }
}

/// A client-to-server message of the regular protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendMessage {
    Query(String),
    Parse {
        statement: String,
        query: String,
        /// The parameter type count and OIDs, as sent.
        param_types: Vec<i32>,
    },
    Bind {
        portal: String,
        statement: String,
        /// Formats, values and result formats, as sent.
        rest: Vec<u8>,
    },
    Describe {
        target: Target,
        name: String,
    },
    Execute {
        portal: String,
        max_rows: i32,
    },
    Close {
        target: Target,
        name: String,
    },
    Sync,
    Flush,
    Terminate,
    /// `p`: a password, SASLInitialResponse or SASLResponse; which one depends
    /// on the authentication request it answers (see the `password_*` helpers).
    Password(Vec<u8>),
    /// Anything else (FunctionCall, Copy*): forwarded untouched.
    Other {
        tag: u8,
        body: Vec<u8>,
    },
}

impl FrontendMessage {
    pub fn encode(&self, dst: &mut BytesMut) {
        use FrontendMessage as M;
        match self {
            M::Query(q) => put_frame(dst, tag::QUERY, |b| put_cstr(b, q)),
            M::Parse {
                statement,
                query,
                param_types,
            } => put_frame(dst, tag::PARSE, |b| {
                put_cstr(b, statement);
                put_cstr(b, query);
                b.put_i16(param_types.len() as i16);
                for t in param_types {
                    b.put_i32(*t);
                }
            }),
            M::Bind {
                portal,
                statement,
                rest,
            } => put_frame(dst, tag::BIND, |b| {
                put_cstr(b, portal);
                put_cstr(b, statement);
                b.put_slice(rest);
            }),
            M::Describe { target, name } => put_frame(dst, tag::DESCRIBE, |b| {
                b.put_u8(target.byte());
                put_cstr(b, name);
            }),
            M::Execute { portal, max_rows } => put_frame(dst, tag::EXECUTE, |b| {
                put_cstr(b, portal);
                b.put_i32(*max_rows);
            }),
            M::Close { target, name } => put_frame(dst, tag::CLOSE, |b| {
                b.put_u8(target.byte());
                put_cstr(b, name);
            }),
            M::Sync => put_frame(dst, tag::SYNC, |_| {}),
            M::Flush => put_frame(dst, tag::FLUSH, |_| {}),
            M::Terminate => put_frame(dst, tag::TERMINATE, |_| {}),
            M::Password(data) => put_frame(dst, tag::PASSWORD, |b| b.put_slice(data)),
            M::Other { tag, body } => put_frame(dst, *tag, |b| b.put_slice(body)),
        }
    }

    /// Decodes one body; the whole body must be consumed.
    pub fn decode(tag: u8, body: &[u8]) -> Result<FrontendMessage, WireError> {
        use FrontendMessage as M;
        let msg = match tag {
            tag::QUERY => {
                let mut r = Reader::new(body, "Query");
                let q = r.cstr()?.to_string();
                r.finish()?;
                M::Query(q)
            }
            tag::PARSE => {
                let mut r = Reader::new(body, "Parse");
                let statement = r.cstr()?.to_string();
                let query = r.cstr()?.to_string();
                let n = r.i16()?;
                if n < 0 {
                    return Err(WireError::malformed("Parse", "negative parameter count"));
                }
                let mut param_types =
                    Vec::with_capacity(usize::from(n as u16).min(r.remaining() / 4));
                for _ in 0..n {
                    param_types.push(r.i32()?);
                }
                r.finish()?;
                M::Parse {
                    statement,
                    query,
                    param_types,
                }
            }
            tag::BIND => {
                let mut r = Reader::new(body, "Bind");
                let portal = r.cstr()?.to_string();
                let statement = r.cstr()?.to_string();
                M::Bind {
                    portal,
                    statement,
                    rest: r.rest().to_vec(),
                }
            }
            tag::DESCRIBE | tag::CLOSE => {
                let name_of = if tag == tag::DESCRIBE {
                    "Describe"
                } else {
                    "Close"
                };
                let mut r = Reader::new(body, name_of);
                let target = Target::from_byte(r.u8()?, name_of)?;
                let name = r.cstr()?.to_string();
                r.finish()?;
                if tag == tag::DESCRIBE {
                    M::Describe { target, name }
                } else {
                    M::Close { target, name }
                }
            }
            tag::EXECUTE => {
                let mut r = Reader::new(body, "Execute");
                let portal = r.cstr()?.to_string();
                let max_rows = r.i32()?;
                r.finish()?;
                M::Execute { portal, max_rows }
            }
            tag::SYNC => no_body(body, "Sync", M::Sync)?,
            tag::FLUSH => no_body(body, "Flush", M::Flush)?,
            tag::TERMINATE => no_body(body, "Terminate", M::Terminate)?,
            tag::PASSWORD => M::Password(body.to_vec()),
            tag::FUNCTION_CALL | tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL => M::Other {
                tag,
                body: body.to_vec(),
            },
            other => {
                return Err(WireError::UnexpectedTag {
                    tag: char::from(other),
                })
            }
        };
        Ok(msg)
    }
}

fn no_body(
    body: &[u8],
    name: &'static str,
    msg: FrontendMessage,
) -> Result<FrontendMessage, WireError> {
    Reader::new(body, name).finish()?;
    Ok(msg)
}

/// A cleartext or md5 PasswordMessage: the NUL-terminated string.
pub fn password_text(body: &[u8]) -> Result<&str, WireError> {
    let mut r = Reader::new(body, "PasswordMessage");
    let s = r.cstr()?;
    r.finish()?;
    Ok(s)
}

/// A SASLInitialResponse: `(mechanism, initial data)`; data length -1 means none.
pub fn sasl_initial_response(body: &[u8]) -> Result<(&str, &[u8]), WireError> {
    let mut r = Reader::new(body, "SASLInitialResponse");
    let mechanism = r.cstr()?;
    let len = r.i32()?;
    let data = match len {
        -1 => &[][..],
        l if l < 0 => {
            return Err(WireError::malformed(
                "SASLInitialResponse",
                "negative data length",
            ))
        }
        l => r.bytes(l as usize)?,
    };
    r.finish()?;
    Ok((mechanism, data))
}

/// Encodes a SASLInitialResponse (what the proxy sends a server).
pub fn encode_sasl_initial_response(dst: &mut BytesMut, mechanism: &str, data: &[u8]) {
    put_frame(dst, tag::PASSWORD, |b| {
        put_cstr(b, mechanism);
        b.put_i32(data.len() as i32);
        b.put_slice(data);
    });
}

/// Encodes a cleartext/md5 PasswordMessage.
pub fn encode_password(dst: &mut BytesMut, password: &str) {
    put_frame(dst, tag::PASSWORD, |b| put_cstr(b, password));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::split_frame;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        "[^\u{0}]{0,12}"
    }

    fn target() -> impl Strategy<Value = Target> {
        prop_oneof![Just(Target::Statement), Just(Target::Portal)]
    }

    fn message() -> impl Strategy<Value = FrontendMessage> {
        use FrontendMessage as M;
        let bytes = proptest::collection::vec(any::<u8>(), 0..24);
        prop_oneof![
            text().prop_map(M::Query),
            (
                text(),
                text(),
                proptest::collection::vec(any::<i32>(), 0..4)
            )
                .prop_map(|(statement, query, param_types)| M::Parse {
                    statement,
                    query,
                    param_types
                }),
            (text(), text(), bytes.clone()).prop_map(|(portal, statement, rest)| M::Bind {
                portal,
                statement,
                rest
            }),
            (target(), text()).prop_map(|(target, name)| M::Describe { target, name }),
            (text(), any::<i32>()).prop_map(|(portal, max_rows)| M::Execute { portal, max_rows }),
            (target(), text()).prop_map(|(target, name)| M::Close { target, name }),
            Just(M::Sync),
            Just(M::Flush),
            Just(M::Terminate),
            bytes.clone().prop_map(M::Password),
            (
                prop_oneof![Just(b'F'), Just(b'd'), Just(b'c'), Just(b'f')],
                bytes
            )
                .prop_map(|(tag, body)| M::Other { tag, body }),
        ]
    }

    proptest! {
        #[test]
        fn every_message_round_trips(msg in message()) {
            let mut buf = BytesMut::new();
            msg.encode(&mut buf);
            let (tag, body) = split_frame(&mut buf, crate::MAX_MESSAGE_LEN).unwrap().unwrap();
            prop_assert!(buf.is_empty());
            prop_assert_eq!(FrontendMessage::decode(tag, &body).unwrap(), msg);
        }

        #[test]
        fn sasl_initial_response_round_trips(mech in "[A-Z0-9-]{1,16}", data in proptest::collection::vec(any::<u8>(), 0..40)) {
            let mut buf = BytesMut::new();
            encode_sasl_initial_response(&mut buf, &mech, &data);
            let (tag, body) = split_frame(&mut buf, crate::MAX_MESSAGE_LEN).unwrap().unwrap();
            prop_assert_eq!(tag, b'p');
            let (m, d) = sasl_initial_response(&body).unwrap();
            prop_assert_eq!(m, mech.as_str());
            prop_assert_eq!(d, &data[..]);
        }

        #[test]
        fn arbitrary_bodies_never_panic(tag in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = FrontendMessage::decode(tag, &body);
            let _ = sasl_initial_response(&body);
            let _ = password_text(&body);
        }
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert!(
            FrontendMessage::decode(b'Q', b"select 1").is_err(),
            "no NUL"
        );
        assert!(
            FrontendMessage::decode(b'D', b"Xname\0").is_err(),
            "bad target"
        );
        assert!(
            FrontendMessage::decode(b'P', b"s\0q\0\xff\xff").is_err(),
            "negative count"
        );
        assert!(
            FrontendMessage::decode(b'S', b"x").is_err(),
            "Sync with a body"
        );
        assert!(FrontendMessage::decode(b'?', b"").is_err(), "unknown tag");
        assert!(
            sasl_initial_response(b"SCRAM-SHA-256\0\0\0\0\x09abc").is_err(),
            "short data"
        );
    }
}
