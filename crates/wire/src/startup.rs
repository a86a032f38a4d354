//! The untyped packets a client may send before the regular protocol starts:
//! SSLRequest, GSSENCRequest, CancelRequest and StartupMessage (v3).
//!
//! Limits follow PostgreSQL: a length below 8 or above [`MAX_STARTUP_LEN`] is
//! rejected before buffering; only protocol major version 3 is accepted (a
//! newer minor is reported so the proxy can answer NegotiateProtocolVersion);
//! parameters are NUL-terminated UTF-8 pairs ending with an empty name, and
//! must not repeat.

use bytes::{BufMut, BytesMut};

use crate::read::{put_cstr, Reader};
use crate::{WireError, MAX_STARTUP_LEN};

pub const SSL_REQUEST_CODE: i32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// Protocol 3.0 as sent on the wire.
pub const PROTOCOL_3_0: i32 = 196_608;

/// One startup-phase packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    CancelRequest {
        process_id: i32,
        secret_key: i32,
    },
    Startup {
        /// Requested minor version of protocol 3 (0 for every current client).
        minor: u16,
        /// Parameters in the order sent (`user`, `database`, `options`, GUCs).
        params: Vec<(String, String)>,
    },
}

impl StartupPacket {
    /// A v3.0 StartupMessage.
    pub fn startup(params: &[(&str, &str)]) -> StartupPacket {
        StartupPacket::Startup {
            minor: 0,
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// The value of one parameter of a StartupMessage.
    pub fn param(&self, name: &str) -> Option<&str> {
        match self {
            StartupPacket::Startup { params, .. } => params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }

    /// Takes one packet off the front of `buf`; `Ok(None)` until it is complete.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<StartupPacket>, WireError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let raw = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if raw < 8 {
            return Err(WireError::TooShort {
                len: raw as i64 as u64,
                min: 8,
            });
        }
        let len = raw as usize;
        if len > MAX_STARTUP_LEN {
            return Err(WireError::TooLong {
                len: len as u64,
                max: MAX_STARTUP_LEN,
            });
        }
        if buf.len() < len {
            buf.reserve(len - buf.len());
            return Ok(None);
        }
        let packet = buf.split_to(len);
        decode_body(&packet[4..]).map(Some)
    }

    pub fn encode(&self, dst: &mut BytesMut) {
        let start = dst.len();
        dst.put_i32(0);
        match self {
            StartupPacket::SslRequest => dst.put_i32(SSL_REQUEST_CODE),
            StartupPacket::GssEncRequest => dst.put_i32(GSSENC_REQUEST_CODE),
            StartupPacket::CancelRequest {
                process_id,
                secret_key,
            } => {
                dst.put_i32(CANCEL_REQUEST_CODE);
                dst.put_i32(*process_id);
                dst.put_i32(*secret_key);
            }
            StartupPacket::Startup { minor, params } => {
                dst.put_i32(PROTOCOL_3_0 | i32::from(*minor));
                for (k, v) in params {
                    put_cstr(dst, k);
                    put_cstr(dst, v);
                }
                dst.put_u8(0);
            }
        }
        let len = (dst.len() - start) as i32;
        dst[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }
}

fn decode_body(body: &[u8]) -> Result<StartupPacket, WireError> {
    let mut r = Reader::new(body, "startup");
    let code = r.i32()?;
    match code {
        SSL_REQUEST_CODE => {
            r.finish()?;
            Ok(StartupPacket::SslRequest)
        }
        GSSENC_REQUEST_CODE => {
            r.finish()?;
            Ok(StartupPacket::GssEncRequest)
        }
        CANCEL_REQUEST_CODE => {
            let mut r = Reader::new(r.rest(), "CancelRequest");
            let process_id = r.i32()?;
            let secret_key = r.i32()?;
            r.finish()?;
            Ok(StartupPacket::CancelRequest {
                process_id,
                secret_key,
            })
        }
        _ => {
            let major = (code as u32 >> 16) as u16;
            let minor = (code as u32 & 0xffff) as u16;
            if major != 3 {
                return Err(WireError::UnsupportedProtocol { major, minor });
            }
            let mut r = Reader::new(r.rest(), "StartupMessage");
            let mut params: Vec<(String, String)> = Vec::new();
            loop {
                let name = r.cstr()?;
                if name.is_empty() {
                    break;
                }
                let value = r.cstr()?;
                if params.iter().any(|(k, _)| k == name) {
                    return Err(WireError::malformed(
                        "StartupMessage",
                        "parameter given twice",
                    ));
                }
                params.push((name.to_string(), value.to_string()));
            }
            r.finish()?;
            Ok(StartupPacket::Startup { minor, params })
        }
    }
}

/// Splits the `options` startup parameter into `(name, value)` settings the
/// way PostgreSQL does: words separated by spaces (a backslash escapes the
/// next character), each `-c name=value`, `-cname=value` or `--name=value`.
/// Dashes in names become underscores. Anything else is an error, so a
/// client cannot smuggle a setting the proxy did not see.
pub fn parse_options(options: &str) -> Result<Vec<(String, String)>, WireError> {
    let err = |problem| WireError::malformed("options", problem);
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cur.push(chars.next().ok_or_else(|| err("trailing backslash"))?);
                in_word = true;
            }
            c if c.is_ascii_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next().ok_or_else(|| err("-c without a setting"))?
        } else if let Some(s) = w.strip_prefix("--") {
            s.to_string()
        } else if let Some(s) = w.strip_prefix("-c") {
            s.to_string()
        } else {
            return Err(err("only -c name=value and --name=value are supported"));
        };
        let (name, value) = setting
            .split_once('=')
            .ok_or_else(|| err("setting without '='"))?;
        if name.is_empty() {
            return Err(err("empty setting name"));
        }
        out.push((name.replace('-', "_"), value.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn raw(len: i32, code: i32, rest: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_i32(len);
        b.put_i32(code);
        b.extend_from_slice(rest);
        b
    }

    #[test]
    fn ssl_gss_and_cancel_requests_decode() {
        for p in [
            StartupPacket::SslRequest,
            StartupPacket::GssEncRequest,
            StartupPacket::CancelRequest {
                process_id: 42,
                secret_key: -7,
            },
        ] {
            let mut b = BytesMut::new();
            p.encode(&mut b);
            assert_eq!(StartupPacket::decode(&mut b).unwrap(), Some(p));
            assert!(b.is_empty());
        }
    }

    #[test]
    fn incomplete_packets_wait() {
        let mut b = BytesMut::new();
        StartupPacket::startup(&[("user", "u")]).encode(&mut b);
        let mut part = BytesMut::from(&b[..b.len() - 1]);
        assert_eq!(StartupPacket::decode(&mut part).unwrap(), None);
        let mut short = BytesMut::from(&b[..3]);
        assert_eq!(StartupPacket::decode(&mut short).unwrap(), None);
    }

    #[test]
    fn length_below_eight_is_rejected() {
        for len in [i32::MIN, -1, 0, 4, 7] {
            let mut b = raw(len, PROTOCOL_3_0, b"");
            assert!(matches!(
                StartupPacket::decode(&mut b),
                Err(WireError::TooShort { .. })
            ));
        }
    }

    #[test]
    fn oversized_startup_is_rejected_before_buffering() {
        for len in [10_001, i32::MAX] {
            let mut b = raw(len, PROTOCOL_3_0, b"");
            assert!(matches!(
                StartupPacket::decode(&mut b),
                Err(WireError::TooLong { .. })
            ));
        }
    }

    #[test]
    fn unknown_protocol_versions_are_rejected() {
        for code in [0x0002_0000, 0x0004_0000, 1234 << 16 | 5677, 0] {
            let mut b = raw(8, code, b"");
            assert!(matches!(
                StartupPacket::decode(&mut b),
                Err(WireError::UnsupportedProtocol { .. })
            ));
        }
    }

    #[test]
    fn newer_minor_is_reported() {
        let mut b = raw(9, PROTOCOL_3_0 | 2, b"\0");
        assert_eq!(
            StartupPacket::decode(&mut b).unwrap(),
            Some(StartupPacket::Startup {
                minor: 2,
                params: vec![]
            })
        );
    }

    #[test]
    fn malformed_parameters_are_rejected() {
        let cases: &[&[u8]] = &[
            b"user\0u",              // value without NUL
            b"user\0u\0",            // no final NUL
            b"user\0u\0\0extra",     // trailing bytes
            b"user\0u\0user\0v\0\0", // repeated
            b"us\xffer\0u\0\0",      // invalid UTF-8
        ];
        for body in cases {
            let mut b = raw(8 + body.len() as i32, PROTOCOL_3_0, body);
            assert!(
                matches!(
                    StartupPacket::decode(&mut b),
                    Err(WireError::Malformed { .. })
                ),
                "{body:?}"
            );
        }
        // Cancel with a wrong length.
        let mut b = raw(12, CANCEL_REQUEST_CODE, &[0, 0, 0, 1]);
        assert!(StartupPacket::decode(&mut b).is_err());
        let mut b = raw(12, SSL_REQUEST_CODE, &[0, 0, 0, 1]);
        assert!(StartupPacket::decode(&mut b).is_err());
    }

    #[test]
    fn options_parse_like_postgres() {
        assert_eq!(
            parse_options("-c search_path=a,b --statement-timeout=5 -cwork_mem=1MB").unwrap(),
            vec![
                ("search_path".into(), "a,b".into()),
                ("statement_timeout".into(), "5".into()),
                ("work_mem".into(), "1MB".into())
            ]
        );
        assert_eq!(
            parse_options(r"-c application_name=a\ b").unwrap(),
            vec![("application_name".into(), "a b".into())]
        );
        assert_eq!(parse_options("  ").unwrap(), vec![]);
    }

    #[test]
    fn bad_options_are_errors() {
        for bad in ["-c", "-c ", "-c=", "-c x", "-D /tmp", "--=1", "-c a\\"] {
            assert!(parse_options(bad).is_err(), "{bad}");
        }
    }

    fn cstring() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_ ,.=-]{0,12}"
    }

    proptest! {
        #[test]
        fn startup_round_trips(
            minor in 0u16..3,
            params in proptest::collection::btree_map("[a-z_]{1,10}", cstring(), 0..6),
        ) {
            let p = StartupPacket::Startup { minor, params: params.into_iter().collect() };
            let mut b = BytesMut::new();
            p.encode(&mut b);
            prop_assert_eq!(StartupPacket::decode(&mut b).unwrap(), Some(p));
            prop_assert!(b.is_empty());
        }

        #[test]
        fn cancel_round_trips(pid in any::<i32>(), key in any::<i32>()) {
            let p = StartupPacket::CancelRequest { process_id: pid, secret_key: key };
            let mut b = BytesMut::new();
            p.encode(&mut b);
            prop_assert_eq!(StartupPacket::decode(&mut b).unwrap(), Some(p));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut b = BytesMut::from(&bytes[..]);
            let _ = StartupPacket::decode(&mut b);
            let _ = parse_options(&String::from_utf8_lossy(&bytes));
        }
    }
}
