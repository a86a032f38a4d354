//! Typed bodies of the server-to-client messages the proxy itself produces or
//! must understand (authentication, session parameters, errors, the admin
//! console's result sets). Everything else passes through as raw frames.
//!
//! `encode` appends a whole frame (tag, length, body); `decode` takes the tag
//! and the body as [`crate::frame::split_frame`] returns them. The two
//! round-trip for every variant.

use bytes::{BufMut, BytesMut};

use crate::read::{put_cstr, put_frame, Reader};
use crate::WireError;

/// Transaction status carried by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    Idle,
    InTransaction,
    Failed,
}

impl TxStatus {
    pub fn byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }

    pub fn from_byte(b: u8) -> Option<TxStatus> {
        match b {
            b'I' => Some(TxStatus::Idle),
            b'T' => Some(TxStatus::InTransaction),
            b'E' => Some(TxStatus::Failed),
            _ => None,
        }
    }
}

/// The `R` message family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    Ok,
    CleartextPassword,
    Md5Password { salt: [u8; 4] },
    Sasl { mechanisms: Vec<String> },
    SaslContinue { data: Vec<u8> },
    SaslFinal { data: Vec<u8> },
}

/// One field of an ErrorResponse or NoticeResponse (`S`everity, `C`ode,
/// `M`essage, ...), in the order sent.
pub type ErrorFields = Vec<(u8, String)>;

/// Column of a RowDescription; the proxy only describes text columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub table_oid: i32,
    pub column: i16,
    pub type_oid: i32,
    pub type_len: i16,
    pub type_mod: i32,
    pub format: i16,
}

impl Column {
    /// A text column of type `text` (OID 25).
    pub fn text(name: &str) -> Column {
        Column::typed(name, 25, -1)
    }

    /// A text-format column of a given type (e.g. int8 = 20, len 8).
    pub fn typed(name: &str, type_oid: i32, type_len: i16) -> Column {
        Column {
            name: name.to_string(),
            table_oid: 0,
            column: 0,
            type_oid,
            type_len,
            type_mod: -1,
            format: 0,
        }
    }
}

/// A server-to-client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendMessage {
    Authentication(Authentication),
    ParameterStatus {
        name: String,
        value: String,
    },
    BackendKeyData {
        process_id: i32,
        secret_key: i32,
    },
    ReadyForQuery(TxStatus),
    ErrorResponse(ErrorFields),
    NoticeResponse(ErrorFields),
    RowDescription(Vec<Column>),
    /// Values in text format; `None` is SQL NULL.
    DataRow(Vec<Option<Vec<u8>>>),
    CommandComplete(String),
    EmptyQueryResponse,
    ParseComplete,
    BindComplete,
    CloseComplete,
    NoData,
    NegotiateProtocolVersion {
        newest_minor: i32,
        unrecognized: Vec<String>,
    },
}

/// Tags of the messages above.
pub mod tag {
    pub const AUTHENTICATION: u8 = b'R';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const ROW_DESCRIPTION: u8 = b'T';
    pub const DATA_ROW: u8 = b'D';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const NO_DATA: u8 = b'n';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
}

impl BackendMessage {
    /// An ErrorResponse as PostgreSQL sends it (severity, code, message).
    pub fn error(severity: &str, code: &str, message: &str) -> BackendMessage {
        BackendMessage::ErrorResponse(vec![
            (b'S', severity.to_string()),
            (b'V', severity.to_string()),
            (b'C', code.to_string()),
            (b'M', message.to_string()),
        ])
    }

    pub fn encode(&self, dst: &mut BytesMut) {
        use BackendMessage as M;
        match self {
            M::Authentication(a) => put_frame(dst, tag::AUTHENTICATION, |b| match a {
                Authentication::Ok => b.put_i32(0),
                Authentication::CleartextPassword => b.put_i32(3),
                Authentication::Md5Password { salt } => {
                    b.put_i32(5);
                    b.put_slice(salt);
                }
                Authentication::Sasl { mechanisms } => {
                    b.put_i32(10);
                    for m in mechanisms {
                        put_cstr(b, m);
                    }
                    b.put_u8(0);
                }
                Authentication::SaslContinue { data } => {
                    b.put_i32(11);
                    b.put_slice(data);
                }
                Authentication::SaslFinal { data } => {
                    b.put_i32(12);
                    b.put_slice(data);
                }
            }),
            M::ParameterStatus { name, value } => put_frame(dst, tag::PARAMETER_STATUS, |b| {
                put_cstr(b, name);
                put_cstr(b, value);
            }),
            M::BackendKeyData {
                process_id,
                secret_key,
            } => put_frame(dst, tag::BACKEND_KEY_DATA, |b| {
                b.put_i32(*process_id);
                b.put_i32(*secret_key);
            }),
            M::ReadyForQuery(s) => put_frame(dst, tag::READY_FOR_QUERY, |b| b.put_u8(s.byte())),
            M::ErrorResponse(fields) => {
                put_frame(dst, tag::ERROR_RESPONSE, |b| put_fields(b, fields))
            }
            M::NoticeResponse(fields) => {
                put_frame(dst, tag::NOTICE_RESPONSE, |b| put_fields(b, fields))
            }
            M::RowDescription(columns) => put_frame(dst, tag::ROW_DESCRIPTION, |b| {
                b.put_i16(columns.len() as i16);
                for c in columns {
                    put_cstr(b, &c.name);
                    b.put_i32(c.table_oid);
                    b.put_i16(c.column);
                    b.put_i32(c.type_oid);
                    b.put_i16(c.type_len);
                    b.put_i32(c.type_mod);
                    b.put_i16(c.format);
                }
            }),
            M::DataRow(values) => put_frame(dst, tag::DATA_ROW, |b| {
                b.put_i16(values.len() as i16);
                for v in values {
                    match v {
                        None => b.put_i32(-1),
                        Some(bytes) => {
                            b.put_i32(bytes.len() as i32);
                            b.put_slice(bytes);
                        }
                    }
                }
            }),
            M::CommandComplete(t) => put_frame(dst, tag::COMMAND_COMPLETE, |b| put_cstr(b, t)),
            M::EmptyQueryResponse => put_frame(dst, tag::EMPTY_QUERY_RESPONSE, |_| {}),
            M::ParseComplete => put_frame(dst, tag::PARSE_COMPLETE, |_| {}),
            M::BindComplete => put_frame(dst, tag::BIND_COMPLETE, |_| {}),
            M::CloseComplete => put_frame(dst, tag::CLOSE_COMPLETE, |_| {}),
            M::NoData => put_frame(dst, tag::NO_DATA, |_| {}),
            M::NegotiateProtocolVersion {
                newest_minor,
                unrecognized,
            } => put_frame(dst, tag::NEGOTIATE_PROTOCOL_VERSION, |b| {
                b.put_i32(*newest_minor);
                b.put_i32(unrecognized.len() as i32);
                for o in unrecognized {
                    put_cstr(b, o);
                }
            }),
        }
    }

    /// Decodes one body; the whole body must be consumed.
    pub fn decode(tag: u8, body: &[u8]) -> Result<BackendMessage, WireError> {
        use BackendMessage as M;
        let msg = match tag {
            tag::AUTHENTICATION => {
                let mut r = Reader::new(body, "Authentication");
                let a = match r.i32()? {
                    0 => Authentication::Ok,
                    3 => Authentication::CleartextPassword,
                    5 => {
                        let s = r.bytes(4)?;
                        Authentication::Md5Password {
                            salt: [s[0], s[1], s[2], s[3]],
                        }
                    }
                    10 => {
                        let mut mechanisms = Vec::new();
                        loop {
                            let m = r.cstr()?;
                            if m.is_empty() {
                                break;
                            }
                            mechanisms.push(m.to_string());
                        }
                        Authentication::Sasl { mechanisms }
                    }
                    11 => Authentication::SaslContinue {
                        data: r.rest().to_vec(),
                    },
                    12 => Authentication::SaslFinal {
                        data: r.rest().to_vec(),
                    },
                    _ => {
                        return Err(WireError::malformed(
                            "Authentication",
                            "unsupported authentication request",
                        ))
                    }
                };
                r.finish()?;
                M::Authentication(a)
            }
            tag::PARAMETER_STATUS => {
                let mut r = Reader::new(body, "ParameterStatus");
                let name = r.cstr()?.to_string();
                let value = r.cstr()?.to_string();
                r.finish()?;
                M::ParameterStatus { name, value }
            }
            tag::BACKEND_KEY_DATA => {
                let mut r = Reader::new(body, "BackendKeyData");
                let process_id = r.i32()?;
                let secret_key = r.i32()?;
                r.finish()?;
                M::BackendKeyData {
                    process_id,
                    secret_key,
                }
            }
            tag::READY_FOR_QUERY => {
                let mut r = Reader::new(body, "ReadyForQuery");
                let s = TxStatus::from_byte(r.u8()?).ok_or_else(|| {
                    WireError::malformed("ReadyForQuery", "unknown transaction status")
                })?;
                r.finish()?;
                M::ReadyForQuery(s)
            }
            tag::ERROR_RESPONSE => M::ErrorResponse(read_fields(body, "ErrorResponse")?),
            tag::NOTICE_RESPONSE => M::NoticeResponse(read_fields(body, "NoticeResponse")?),
            tag::ROW_DESCRIPTION => {
                let mut r = Reader::new(body, "RowDescription");
                let n = r.i16()?;
                if n < 0 {
                    return Err(WireError::malformed("RowDescription", "negative count"));
                }
                let mut columns = Vec::new();
                for _ in 0..n {
                    columns.push(Column {
                        name: r.cstr()?.to_string(),
                        table_oid: r.i32()?,
                        column: r.i16()?,
                        type_oid: r.i32()?,
                        type_len: r.i16()?,
                        type_mod: r.i32()?,
                        format: r.i16()?,
                    });
                }
                r.finish()?;
                M::RowDescription(columns)
            }
            tag::DATA_ROW => {
                let mut r = Reader::new(body, "DataRow");
                let n = r.i16()?;
                if n < 0 {
                    return Err(WireError::malformed("DataRow", "negative count"));
                }
                let mut values = Vec::new();
                for _ in 0..n {
                    let len = r.i32()?;
                    values.push(match len {
                        -1 => None,
                        l if l < 0 => {
                            return Err(WireError::malformed("DataRow", "negative length"))
                        }
                        l => Some(r.bytes(l as usize)?.to_vec()),
                    });
                }
                r.finish()?;
                M::DataRow(values)
            }
            tag::COMMAND_COMPLETE => {
                let mut r = Reader::new(body, "CommandComplete");
                let t = r.cstr()?.to_string();
                r.finish()?;
                M::CommandComplete(t)
            }
            tag::EMPTY_QUERY_RESPONSE => empty(body, "EmptyQueryResponse", M::EmptyQueryResponse)?,
            tag::PARSE_COMPLETE => empty(body, "ParseComplete", M::ParseComplete)?,
            tag::BIND_COMPLETE => empty(body, "BindComplete", M::BindComplete)?,
            tag::CLOSE_COMPLETE => empty(body, "CloseComplete", M::CloseComplete)?,
            tag::NO_DATA => empty(body, "NoData", M::NoData)?,
            tag::NEGOTIATE_PROTOCOL_VERSION => {
                let mut r = Reader::new(body, "NegotiateProtocolVersion");
                let newest_minor = r.i32()?;
                let n = r.i32()?;
                if n < 0 {
                    return Err(WireError::malformed(
                        "NegotiateProtocolVersion",
                        "negative count",
                    ));
                }
                let mut unrecognized = Vec::new();
                for _ in 0..n {
                    unrecognized.push(r.cstr()?.to_string());
                }
                r.finish()?;
                M::NegotiateProtocolVersion {
                    newest_minor,
                    unrecognized,
                }
            }
            other => {
                return Err(WireError::UnexpectedTag {
                    tag: char::from(other),
                })
            }
        };
        Ok(msg)
    }
}

fn empty(
    body: &[u8],
    name: &'static str,
    msg: BackendMessage,
) -> Result<BackendMessage, WireError> {
    Reader::new(body, name).finish()?;
    Ok(msg)
}

fn put_fields(dst: &mut BytesMut, fields: &ErrorFields) {
    for (code, value) in fields {
        dst.put_u8(*code);
        put_cstr(dst, value);
    }
    dst.put_u8(0);
}

fn read_fields(body: &[u8], name: &'static str) -> Result<ErrorFields, WireError> {
    let mut r = Reader::new(body, name);
    let mut fields = Vec::new();
    loop {
        let code = r.u8()?;
        if code == 0 {
            break;
        }
        fields.push((code, r.cstr()?.to_string()));
    }
    r.finish()?;
    Ok(fields)
}

/// The value of one field (`b'C'` for the SQLSTATE, `b'M'` for the message).
pub fn error_field(fields: &ErrorFields, code: u8) -> Option<&str> {
    fields
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::split_frame;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        "[^\u{0}]{0,12}"
    }

    fn fields() -> impl Strategy<Value = ErrorFields> {
        proptest::collection::vec((1u8..=255, text()), 0..5)
    }

    fn column() -> impl Strategy<Value = Column> {
        (
            text(),
            any::<i32>(),
            any::<i16>(),
            any::<i32>(),
            any::<i16>(),
            any::<i32>(),
            0i16..2,
        )
            .prop_map(
                |(name, table_oid, column, type_oid, type_len, type_mod, format)| Column {
                    name,
                    table_oid,
                    column,
                    type_oid,
                    type_len,
                    type_mod,
                    format,
                },
            )
    }

    fn message() -> impl Strategy<Value = BackendMessage> {
        use BackendMessage as M;
        let bytes = proptest::collection::vec(any::<u8>(), 0..24);
        prop_oneof![
            Just(M::Authentication(Authentication::Ok)),
            Just(M::Authentication(Authentication::CleartextPassword)),
            any::<[u8; 4]>()
                .prop_map(|salt| M::Authentication(Authentication::Md5Password { salt })),
            proptest::collection::vec("[^\u{0}]{1,12}", 0..3)
                .prop_map(|mechanisms| M::Authentication(Authentication::Sasl { mechanisms })),
            bytes
                .clone()
                .prop_map(|data| M::Authentication(Authentication::SaslContinue { data })),
            bytes
                .clone()
                .prop_map(|data| M::Authentication(Authentication::SaslFinal { data })),
            (text(), text()).prop_map(|(name, value)| M::ParameterStatus { name, value }),
            (any::<i32>(), any::<i32>()).prop_map(|(process_id, secret_key)| M::BackendKeyData {
                process_id,
                secret_key
            }),
            prop_oneof![
                Just(TxStatus::Idle),
                Just(TxStatus::InTransaction),
                Just(TxStatus::Failed)
            ]
            .prop_map(M::ReadyForQuery),
            fields().prop_map(M::ErrorResponse),
            fields().prop_map(M::NoticeResponse),
            proptest::collection::vec(column(), 0..4).prop_map(M::RowDescription),
            proptest::collection::vec(proptest::option::of(bytes), 0..4).prop_map(M::DataRow),
            text().prop_map(M::CommandComplete),
            Just(M::EmptyQueryResponse),
            Just(M::ParseComplete),
            Just(M::BindComplete),
            Just(M::CloseComplete),
            Just(M::NoData),
            (any::<i32>(), proptest::collection::vec(text(), 0..3)).prop_map(
                |(newest_minor, unrecognized)| M::NegotiateProtocolVersion {
                    newest_minor,
                    unrecognized
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn every_message_round_trips(msg in message()) {
            let mut buf = BytesMut::new();
            msg.encode(&mut buf);
            let (tag, body) = split_frame(&mut buf, crate::MAX_MESSAGE_LEN).unwrap().unwrap();
            prop_assert!(buf.is_empty());
            prop_assert_eq!(BackendMessage::decode(tag, &body).unwrap(), msg);
        }

        #[test]
        fn arbitrary_bodies_never_panic(tag in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = BackendMessage::decode(tag, &body);
        }
    }

    #[test]
    fn error_fields_are_found_by_code() {
        let BackendMessage::ErrorResponse(f) = BackendMessage::error("FATAL", "28P01", "no") else {
            panic!("not an error");
        };
        assert_eq!(error_field(&f, b'C'), Some("28P01"));
        assert_eq!(error_field(&f, b'M'), Some("no"));
        assert_eq!(error_field(&f, b'D'), None);
    }

    #[test]
    fn truncated_bodies_are_errors() {
        assert!(BackendMessage::decode(b'K', &[0, 0, 0, 1]).is_err());
        assert!(BackendMessage::decode(b'Z', b"X").is_err());
        assert!(BackendMessage::decode(b'D', &[0, 1, 0, 0, 0, 9, 1]).is_err());
        assert!(BackendMessage::decode(b'1', &[0]).is_err());
    }
}
