//! The startup phase: whatever a client sends before the regular protocol
//! (SSLRequest, GSSENCRequest, CancelRequest, StartupMessage), cut into reads
//! at points the input chooses. Decoding in pieces must give exactly what
//! decoding the whole stream gives, every packet must account for the bytes
//! it took, and every error must be the one its header or body calls for.

#![no_main]

use std::ops::Range;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgwarden_wire::startup::StartupPacket;
use pgwarden_wire::{WireError, MAX_STARTUP_LEN};
use pgwarden_wire_fuzz::{check_options, Plan};

fn declared(bytes: &[u8]) -> i32 {
    i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// Appends each read to one buffer and takes packets off it until one is
/// incomplete, as the proxy's accept loop does. Stops at the first error:
/// the proxy closes the connection there.
fn decode_stream(data: &[u8], reads: &[Range<usize>]) -> Vec<Result<StartupPacket, WireError>> {
    let mut buf = BytesMut::new();
    let mut log = Vec::new();
    // Bytes of `data` taken off as packets so far; `buf` must always be
    // data[consumed..fed].
    let mut consumed = 0;
    for r in reads {
        buf.extend_from_slice(&data[r.clone()]);
        let fed = r.end;
        loop {
            let avail = buf.len();
            assert_eq!(avail, fed - consumed);
            match StartupPacket::decode(&mut buf) {
                Ok(None) => {
                    assert_eq!(buf.len(), avail, "an incomplete packet consumed bytes");
                    if avail >= 4 {
                        let len = declared(&data[consumed..]);
                        assert!(
                            (8..=MAX_STARTUP_LEN as i32).contains(&len) && len as usize > avail,
                            "waited for a packet of length {len} with {avail} bytes there"
                        );
                    }
                    break;
                }
                Ok(Some(p)) => {
                    let used = avail - buf.len();
                    assert_eq!(used as i32, declared(&data[consumed..]));
                    assert!((8..=MAX_STARTUP_LEN).contains(&used));
                    // The decoder keeps nothing it does not understand, so
                    // encoding must give back the client's bytes exactly.
                    let mut enc = BytesMut::new();
                    p.encode(&mut enc);
                    assert_eq!(&enc[..], &data[consumed..consumed + used], "{p:?}");
                    check_packet(&p);
                    consumed += used;
                    log.push(Ok(p));
                }
                Err(e) => {
                    assert!(avail >= 4, "error {e} before a length was there");
                    let len = declared(&data[consumed..]);
                    if len < 8 {
                        assert!(matches!(e, WireError::TooShort { min: 8, .. }), "{e}");
                    } else if len as usize > MAX_STARTUP_LEN {
                        assert!(matches!(e, WireError::TooLong { .. }), "{e}");
                    } else {
                        assert!(len as usize <= avail, "{e} before the body was complete");
                        assert!(
                            matches!(
                                e,
                                WireError::Malformed { .. } | WireError::UnsupportedProtocol { .. }
                            ),
                            "{e}"
                        );
                    }
                    log.push(Err(e));
                    return log;
                }
            }
        }
    }
    assert_eq!(&buf[..], &data[consumed..]);
    log
}

fn check_packet(p: &StartupPacket) {
    if let StartupPacket::Startup { params, .. } = p {
        for (i, (name, value)) in params.iter().enumerate() {
            assert!(!name.is_empty());
            assert!(!name.contains('\0') && !value.contains('\0'));
            assert!(
                params[..i].iter().all(|(k, _)| k != name),
                "{name:?} given twice"
            );
        }
        if let Some(options) = p.param("options") {
            check_options(options);
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let Some(plan) = Plan::parse(input) else {
        return;
    };
    let whole = decode_stream(plan.data, &plan.whole());
    let pieces = decode_stream(plan.data, &plan.reads());
    assert_eq!(whole, pieces, "reads {:?}", plan.reads());
});
