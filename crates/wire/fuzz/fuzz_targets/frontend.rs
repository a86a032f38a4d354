//! The regular protocol from the client side: a byte stream cut into reads at
//! points the input chooses, taken apart by `split_frame` (login phase, admin
//! console, statement rewriting) and by `FrameScanner` (the forwarding path),
//! each whole frame then decoded as a `FrontendMessage`.
//!
//! Properties: reading in pieces gives exactly what one read gives; a frame
//! never takes more bytes than arrived nor more than its header claims; the
//! two framers agree on every frame and on every error; a decoded message
//! encodes back to the client's bytes; an unknown tag (the zero first byte
//! of a StartupMessage sent again after startup among them) is an error.
//!
//! Flags (high bits of the first input byte): 0x80 selects the smaller of two
//! message limits; 0x40 inverts which tags the scanner captures; 0x20 makes
//! the scanner stop before each Terminate and resume, as a caller that must
//! act before a frame does.

#![no_main]

use std::ops::{ControlFlow, Range};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgwarden_wire::frame::{check_length, split_frame, FrameEvent, FrameScanner};
use pgwarden_wire::frontend::{tag, FrontendMessage};
use pgwarden_wire::WireError;
use pgwarden_wire_fuzz::Plan;

/// The login phase's limit: small enough that libFuzzer's inputs exceed it.
const SMALL_MAX: usize = 8192;
/// Stands in for `MAX_MESSAGE_LEN` (1 GiB), which takes the same code paths:
/// `split_frame` reserves room for the frame a header announces, and under
/// ASan every 1 GiB reservation costs a 128 MiB shadow-memory update, which
/// slowed this target to a few hundred runs a second.
const LARGE_MAX: usize = 1 << 20;

const KNOWN_TAGS: &[u8] = &[
    tag::QUERY,
    tag::PARSE,
    tag::BIND,
    tag::DESCRIBE,
    tag::EXECUTE,
    tag::CLOSE,
    tag::SYNC,
    tag::FLUSH,
    tag::TERMINATE,
    tag::PASSWORD,
    tag::FUNCTION_CALL,
    tag::COPY_DATA,
    tag::COPY_DONE,
    tag::COPY_FAIL,
];

fn header_len(bytes: &[u8]) -> i32 {
    i32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]])
}

#[derive(Debug, PartialEq)]
struct Split {
    /// Tag and body of every complete frame, in order.
    frames: Vec<(u8, Vec<u8>)>,
    /// Bytes left over after the last complete frame, or the framing error
    /// that ended the stream.
    end: Result<usize, WireError>,
}

fn split_stream(data: &[u8], reads: &[Range<usize>], max: usize) -> Split {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut consumed = 0;
    for r in reads {
        buf.extend_from_slice(&data[r.clone()]);
        let fed = r.end;
        loop {
            let avail = buf.len();
            assert_eq!(avail, fed - consumed);
            match split_frame(&mut buf, max) {
                Ok(Some((t, body))) => {
                    let used = avail - buf.len();
                    assert_eq!(used, body.len() + 5, "frame took bytes beyond its body");
                    assert!(body.len() + 4 <= max);
                    let at = &data[consumed..consumed + used];
                    assert_eq!(t, at[0]);
                    assert_eq!(header_len(at) as usize, body.len() + 4);
                    assert_eq!(&body[..], &at[5..]);
                    consumed += used;
                    frames.push((t, body.to_vec()));
                }
                Ok(None) => {
                    assert_eq!(buf.len(), avail, "an incomplete frame consumed bytes");
                    if avail >= 5 {
                        let len = header_len(&data[consumed..]);
                        assert!(
                            len >= 4 && len as usize <= max && len as usize + 1 > avail,
                            "waited for a frame of length {len} with {avail} bytes there"
                        );
                    }
                    break;
                }
                Err(e) => {
                    assert!(avail >= 5, "error {e} before a header was there");
                    let raw = header_len(&data[consumed..]);
                    assert_eq!(Err(e.clone()), check_length(raw, max));
                    return Split {
                        frames,
                        end: Err(e),
                    };
                }
            }
        }
    }
    assert_eq!(&buf[..], &data[consumed..]);
    Split {
        frames,
        end: Ok(buf.len()),
    }
}

fn check_message(t: u8, body: &[u8]) {
    match FrontendMessage::decode(t, body) {
        Ok(m) => {
            assert!(KNOWN_TAGS.contains(&t), "decoded unknown tag {t}: {m:?}");
            // The proxy re-encodes what it decodes and forwards the result;
            // anything but the client's own bytes would change the query.
            let mut enc = BytesMut::new();
            m.encode(&mut enc);
            assert_eq!(enc[0], t);
            assert_eq!(header_len(&enc) as usize, body.len() + 4);
            assert_eq!(&enc[5..], body, "{m:?}");
        }
        Err(e) => {
            if !KNOWN_TAGS.contains(&t) {
                assert_eq!(e, WireError::UnexpectedTag { tag: char::from(t) });
            }
        }
    }
}

struct Scanned {
    begins: Vec<(u8, usize)>,
    bodies: Vec<(u8, Vec<u8>)>,
    error: Option<WireError>,
    at_boundary: bool,
}

fn scan_stream(
    data: &[u8],
    reads: &[Range<usize>],
    max: usize,
    want: impl Fn(u8) -> bool + Copy,
    stop_at_terminate: bool,
) -> Scanned {
    let mut s = FrameScanner::new(max);
    let mut begins = Vec::new();
    let mut bodies = Vec::new();
    for r in reads {
        let mut chunk = &data[r.clone()];
        // Re-armed per read: after a stop the caller resumes at the same
        // frame, which must then pass.
        let mut stop = stop_at_terminate;
        loop {
            let mut stopped = false;
            let res = s.feed(chunk, want, |ev| {
                match ev {
                    FrameEvent::Begin {
                        tag: t,
                        body_len,
                        start,
                    } => {
                        if stop && t == tag::TERMINATE && start.is_some() {
                            stopped = true;
                            return ControlFlow::Break(());
                        }
                        begins.push((t, body_len));
                    }
                    FrameEvent::Body { tag: t, body } => bodies.push((t, body.to_vec())),
                }
                ControlFlow::Continue(())
            });
            match res {
                Err(e) => {
                    return Scanned {
                        begins,
                        bodies,
                        error: Some(e),
                        at_boundary: s.at_boundary(),
                    }
                }
                Ok(n) if stopped => {
                    assert!(n < chunk.len());
                    assert_eq!(chunk[n], tag::TERMINATE, "stopped off a frame start");
                    assert!(s.at_boundary(), "stopped inside a frame");
                    chunk = &chunk[n..];
                    stop = false;
                }
                Ok(n) => {
                    assert_eq!(n, chunk.len(), "scanner left bytes without a stop");
                    break;
                }
            }
        }
    }
    Scanned {
        begins,
        bodies,
        error: None,
        at_boundary: s.at_boundary(),
    }
}

fuzz_target!(|input: &[u8]| {
    let Some(plan) = Plan::parse(input) else {
        return;
    };
    let max = if plan.flags & 0x80 != 0 {
        SMALL_MAX
    } else {
        LARGE_MAX
    };
    let invert = plan.flags & 0x40 != 0;
    let want = move |t: u8| (t & 1 == 0) != invert;
    let reads = plan.reads();

    let whole = split_stream(plan.data, &plan.whole(), max);
    let pieces = split_stream(plan.data, &reads, max);
    assert_eq!(whole, pieces, "reads {reads:?}");
    for (t, body) in &whole.frames {
        check_message(*t, body);
    }

    let scanned = scan_stream(plan.data, &reads, max, want, plan.flags & 0x20 != 0);
    let n = whole.frames.len();
    assert_eq!(scanned.error.as_ref(), whole.end.as_ref().err());
    assert!(scanned.begins.len() == n || scanned.begins.len() == n + 1);
    for ((t, len), (ft, body)) in scanned.begins.iter().zip(&whole.frames) {
        assert_eq!((*t, *len), (*ft, body.len()));
    }
    let wanted: Vec<_> = whole
        .frames
        .iter()
        .filter(|(t, _)| want(*t))
        .cloned()
        .collect();
    assert_eq!(scanned.bodies, wanted);
    if let Ok(left) = whole.end {
        // One header more than split_frame means a frame whose body is
        // still on its way, so at least its header is left over.
        assert_eq!(scanned.begins.len() == n + 1, left >= 5);
        assert_eq!(scanned.at_boundary, left == 0);
    } else {
        assert_eq!(scanned.begins.len(), n);
    }
});
