//! decode → encode → decode for every codec the crate has. The first input
//! byte picks the codec, the rest is its input. Whatever decodes must encode
//! back to the same bytes (the proxy forwards what it re-encodes) and decode
//! again to the same value.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgwarden_wire::backend::BackendMessage;
use pgwarden_wire::frame::split_frame;
use pgwarden_wire::frontend::{
    encode_password, encode_sasl_initial_response, password_text, sasl_initial_response,
    FrontendMessage,
};
use pgwarden_wire::startup::StartupPacket;
use pgwarden_wire::MAX_MESSAGE_LEN;
use pgwarden_wire_fuzz::check_options;

/// The one frame in `enc`, which must be exactly `tag` and `body`.
fn only_frame(mut enc: BytesMut, tag: u8, body: &[u8]) -> BytesMut {
    let (t, b) = split_frame(&mut enc, MAX_MESSAGE_LEN)
        .expect("encoder wrote a bad header")
        .expect("encoder wrote an incomplete frame");
    assert!(enc.is_empty(), "encoder wrote more than one frame");
    assert_eq!(t, tag);
    assert_eq!(&b[..], body);
    b
}

fn startup(bytes: &[u8]) {
    let mut buf = BytesMut::from(bytes);
    let Ok(Some(p)) = StartupPacket::decode(&mut buf) else {
        return;
    };
    let used = bytes.len() - buf.len();
    let mut enc = BytesMut::new();
    p.encode(&mut enc);
    assert_eq!(&enc[..], &bytes[..used], "{p:?}");
    assert_eq!(StartupPacket::decode(&mut enc), Ok(Some(p)));
    assert!(enc.is_empty());
}

fn frontend(tag: u8, body: &[u8]) {
    let Ok(m) = FrontendMessage::decode(tag, body) else {
        return;
    };
    let mut enc = BytesMut::new();
    m.encode(&mut enc);
    let b = only_frame(enc, tag, body);
    assert_eq!(FrontendMessage::decode(tag, &b), Ok(m));
}

fn backend(tag: u8, body: &[u8]) {
    let Ok(m) = BackendMessage::decode(tag, body) else {
        return;
    };
    let mut enc = BytesMut::new();
    m.encode(&mut enc);
    let b = only_frame(enc, tag, body);
    assert_eq!(BackendMessage::decode(tag, &b), Ok(m));
}

fn sasl(body: &[u8]) {
    let Ok((mechanism, data)) = sasl_initial_response(body) else {
        return;
    };
    let mut enc = BytesMut::new();
    encode_sasl_initial_response(&mut enc, mechanism, data);
    let (t, b) = split_frame(&mut enc, MAX_MESSAGE_LEN).unwrap().unwrap();
    assert_eq!(t, b'p');
    // A data length of -1 ("no data") is written back as 0: same value,
    // other bytes.
    let no_data = body[mechanism.len() + 1..] == [0xff; 4];
    if !no_data {
        assert_eq!(&b[..], body);
    }
    assert_eq!(sasl_initial_response(&b), Ok((mechanism, data)));
}

fn password(body: &[u8]) {
    let Ok(text) = password_text(body) else {
        return;
    };
    let mut enc = BytesMut::new();
    encode_password(&mut enc, text);
    let b = only_frame(enc, b'p', body);
    assert_eq!(password_text(&b), Ok(text));
}

fuzz_target!(|input: &[u8]| {
    let Some((&which, rest)) = input.split_first() else {
        return;
    };
    match which % 6 {
        0 => startup(rest),
        1 | 2 => {
            let Some((&tag, body)) = rest.split_first() else {
                return;
            };
            if which % 6 == 1 {
                frontend(tag, body)
            } else {
                backend(tag, body)
            }
        }
        3 => sasl(rest),
        4 => password(rest),
        _ => {
            if let Ok(options) = std::str::from_utf8(rest) {
                check_options(options);
            }
        }
    }
});
