//! Frames of the regular protocol: one type byte, a big-endian i32 length that
//! counts itself (so at least 4) and the body.
//!
//! Two ways to consume a stream:
//! - [`split_frame`] takes one complete frame off a `BytesMut` (zero-copy: the
//!   body is split off, not copied); used where whole messages are needed
//!   (startup/auth phase, admin console);
//! - [`FrameScanner`] walks bytes as they arrive, never buffering bodies, and
//!   reports frame starts plus the complete bodies of only the tags a caller
//!   asks for; used on the forwarding hot path, where the proxy passes whole
//!   read buffers through and only needs to see e.g. ReadyForQuery.
//!
//! Lengths below 4 or above the configured maximum are errors, checked before
//! anything is allocated.

use std::ops::ControlFlow;

use bytes::BytesMut;

use crate::WireError;

/// Header of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub tag: u8,
    /// Length of the body (the wire length minus the 4 bytes of the length field).
    pub body_len: usize,
}

impl FrameHeader {
    /// Total bytes of the frame on the wire.
    pub fn frame_len(&self) -> usize {
        self.body_len + 5
    }
}

/// Checks a raw wire length (which includes itself) against `max`.
pub fn check_length(raw: i32, max: usize) -> Result<usize, WireError> {
    if raw < 4 {
        return Err(WireError::TooShort {
            len: raw as i64 as u64,
            min: 4,
        });
    }
    let len = raw as usize;
    if len > max {
        return Err(WireError::TooLong {
            len: len as u64,
            max,
        });
    }
    Ok(len - 4)
}

/// Reads a frame header from the start of `buf`; `Ok(None)` when fewer than 5
/// bytes are there.
pub fn parse_header(buf: &[u8], max: usize) -> Result<Option<FrameHeader>, WireError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let raw = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    let body_len = check_length(raw, max)?;
    Ok(Some(FrameHeader {
        tag: buf[0],
        body_len,
    }))
}

/// The most [`split_frame`] reserves ahead of bytes that have not arrived.
pub const RESERVE_AHEAD: usize = 64 * 1024;

/// Takes one complete frame off the front of `buf`: `(tag, body)`. `Ok(None)`
/// when the frame is not complete yet (nothing is consumed then).
pub fn split_frame(buf: &mut BytesMut, max: usize) -> Result<Option<(u8, BytesMut)>, WireError> {
    let Some(h) = parse_header(buf, max)? else {
        return Ok(None);
    };
    if buf.len() < h.frame_len() {
        // Room for what is announced, but never more than a bounded step: a
        // header costs a peer five bytes and may announce up to `max`; the
        // buffer grows further only as the bytes really arrive.
        buf.reserve((h.frame_len() - buf.len()).min(RESERVE_AHEAD));
        return Ok(None);
    }
    let mut frame = buf.split_to(h.frame_len());
    let body = frame.split_off(5);
    Ok(Some((h.tag, body)))
}

/// What [`FrameScanner::feed`] reports.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameEvent<'a> {
    /// A frame header was read. `start` is the offset of the frame's first
    /// byte in the current chunk, or `None` when the header began in an
    /// earlier chunk. Returning `ControlFlow::Break` stops the scan before
    /// this frame (only honoured when `start` is `Some`).
    Begin {
        tag: u8,
        body_len: usize,
        start: Option<usize>,
    },
    /// The complete body of a frame whose tag the caller wanted.
    Body { tag: u8, body: &'a [u8] },
}

/// Incremental frame walker that keeps at most one header and the bodies of
/// wanted frames (which the caller chooses to be small, e.g. ReadyForQuery).
#[derive(Debug, Clone)]
pub struct FrameScanner {
    max: usize,
    header: [u8; 5],
    header_len: usize,
    tag: u8,
    body_left: usize,
    capturing: bool,
    captured: Vec<u8>,
}

impl FrameScanner {
    pub fn new(max: usize) -> FrameScanner {
        FrameScanner {
            max,
            header: [0; 5],
            header_len: 0,
            tag: 0,
            body_left: 0,
            capturing: false,
            captured: Vec::new(),
        }
    }

    /// True when the scanner stands exactly between two frames.
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.body_left == 0 && !self.capturing
    }

    /// Walks `chunk`. `want(tag)` says whose bodies to report. Returns how many
    /// bytes were consumed: `chunk.len()` unless `on` broke at a frame start.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        want: impl Fn(u8) -> bool,
        mut on: impl FnMut(FrameEvent<'_>) -> ControlFlow<()>,
    ) -> Result<usize, WireError> {
        let mut pos = 0;
        while pos < chunk.len() {
            if self.body_left == 0 && !self.capturing {
                // Reading a header.
                let header_start = pos;
                let need = 5 - self.header_len;
                let take = need.min(chunk.len() - pos);
                self.header[self.header_len..self.header_len + take]
                    .copy_from_slice(&chunk[pos..pos + take]);
                let began_here = self.header_len == 0;
                self.header_len += take;
                pos += take;
                if self.header_len < 5 {
                    continue;
                }
                self.header_len = 0;
                let h = parse_header(&self.header, self.max)?.expect("five header bytes");
                let start = began_here.then_some(header_start);
                if on(FrameEvent::Begin {
                    tag: h.tag,
                    body_len: h.body_len,
                    start,
                })
                .is_break()
                {
                    if let Some(s) = start {
                        return Ok(s);
                    }
                }
                self.tag = h.tag;
                self.body_left = h.body_len;
                if want(h.tag) {
                    // Zero-copy when the whole body is in this chunk.
                    if chunk.len() - pos >= h.body_len {
                        let body = &chunk[pos..pos + h.body_len];
                        pos += h.body_len;
                        self.body_left = 0;
                        let _ = on(FrameEvent::Body { tag: h.tag, body });
                        continue;
                    }
                    self.capturing = true;
                    self.captured.clear();
                }
                continue;
            }
            let take = self.body_left.min(chunk.len() - pos);
            if self.capturing {
                self.captured.extend_from_slice(&chunk[pos..pos + take]);
            }
            pos += take;
            self.body_left -= take;
            if self.body_left == 0 && self.capturing {
                self.capturing = false;
                let _ = on(FrameEvent::Body {
                    tag: self.tag,
                    body: &self.captured,
                });
            }
        }
        Ok(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn split_frame_waits_for_complete_frames() {
        let mut buf = BytesMut::from(&frame(b'Q', b"select 1\0")[..6]);
        assert_eq!(split_frame(&mut buf, 100).unwrap(), None);
        buf.extend_from_slice(&frame(b'Q', b"select 1\0")[6..]);
        let (tag, body) = split_frame(&mut buf, 100).unwrap().unwrap();
        assert_eq!((tag, &body[..]), (b'Q', &b"select 1\0"[..]));
        assert!(buf.is_empty());
    }

    #[test]
    fn a_large_announced_frame_reserves_only_a_bounded_step() {
        let huge = 1 << 30;
        let mut v = vec![b'Q'];
        v.extend_from_slice(&(huge as i32).to_be_bytes());
        let mut buf = BytesMut::from(&v[..]);
        assert_eq!(split_frame(&mut buf, huge).unwrap(), None);
        assert!(buf.capacity() <= 5 + RESERVE_AHEAD, "{}", buf.capacity());
        assert_eq!(buf.len(), 5, "nothing consumed");
    }

    #[test]
    fn lengths_below_four_are_rejected() {
        for raw in [-1i32, 0, 3, i32::MIN] {
            let mut v = vec![b'Q'];
            v.extend_from_slice(&raw.to_be_bytes());
            let mut buf = BytesMut::from(&v[..]);
            assert!(matches!(
                split_frame(&mut buf, 100),
                Err(WireError::TooShort { .. })
            ));
        }
    }

    #[test]
    fn lengths_above_the_limit_are_rejected_before_buffering() {
        let mut v = vec![b'Q'];
        v.extend_from_slice(&0x7fff_ffffi32.to_be_bytes());
        let mut buf = BytesMut::from(&v[..]);
        assert_eq!(
            split_frame(&mut buf, crate::MAX_MESSAGE_LEN),
            Err(WireError::TooLong {
                len: 0x7fff_ffff,
                max: crate::MAX_MESSAGE_LEN
            })
        );
        // Same through the scanner.
        let mut s = FrameScanner::new(crate::MAX_MESSAGE_LEN);
        assert!(s.feed(&v, |_| true, |_| ControlFlow::Continue(())).is_err());
    }

    #[test]
    fn scanner_breaks_before_a_frame() {
        let mut stream = frame(b'Q', b"x\0");
        let x_at = stream.len();
        stream.extend(frame(b'X', b""));
        let mut s = FrameScanner::new(100);
        let used = s
            .feed(
                &stream,
                |_| false,
                |e| match e {
                    FrameEvent::Begin { tag: b'X', .. } => ControlFlow::Break(()),
                    _ => ControlFlow::Continue(()),
                },
            )
            .unwrap();
        assert_eq!(used, x_at);
    }

    proptest! {
        /// However a stream of frames is cut into chunks, the scanner reports
        /// every frame once, in order, with the bodies of wanted tags intact.
        #[test]
        fn scanner_sees_every_frame_under_any_chunking(
            frames in proptest::collection::vec((prop::sample::select(vec![b'Z', b'D', b'C', b'T']), proptest::collection::vec(any::<u8>(), 0..40)), 0..20),
            cuts in proptest::collection::vec(1usize..17, 1..50),
        ) {
            let mut stream = Vec::new();
            for (t, b) in &frames { stream.extend(frame(*t, b)); }
            let mut s = FrameScanner::new(1000);
            let mut begins = Vec::new();
            let mut bodies = Vec::new();
            let mut pos = 0;
            let mut i = 0;
            while pos < stream.len() {
                let n = cuts[i % cuts.len()].min(stream.len() - pos);
                i += 1;
                let used = s.feed(&stream[pos..pos + n], |t| t == b'Z', |e| {
                    match e {
                        FrameEvent::Begin { tag, .. } => begins.push(tag),
                        FrameEvent::Body { tag, body } => bodies.push((tag, body.to_vec())),
                    }
                    ControlFlow::Continue(())
                }).unwrap();
                prop_assert_eq!(used, n);
                pos += n;
            }
            prop_assert!(s.at_boundary());
            prop_assert_eq!(begins, frames.iter().map(|f| f.0).collect::<Vec<_>>());
            let want: Vec<_> = frames.iter().filter(|f| f.0 == b'Z').cloned().collect();
            prop_assert_eq!(bodies, want);
        }
    }
}
