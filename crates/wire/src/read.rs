//! A bounds-checked reader over a message body. Every accessor fails with a
//! [`WireError::Malformed`] naming the message instead of panicking.

use crate::WireError;

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    message: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], message: &'static str) -> Reader<'a> {
        Reader { buf, message }
    }

    fn err(&self, problem: &'static str) -> WireError {
        WireError::malformed(self.message, problem)
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        let (&b, rest) = self
            .buf
            .split_first()
            .ok_or_else(|| self.err("truncated"))?;
        self.buf = rest;
        Ok(b)
    }

    pub(crate) fn i16(&mut self) -> Result<i16, WireError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, WireError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(self.err("truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// A NUL-terminated UTF-8 string.
    pub(crate) fn cstr(&mut self) -> Result<&'a str, WireError> {
        let nul = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.err("string without terminating NUL"))?;
        let s = std::str::from_utf8(&self.buf[..nul]).map_err(|_| self.err("invalid UTF-8"))?;
        self.buf = &self.buf[nul + 1..];
        Ok(s)
    }

    pub(crate) fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.err("trailing bytes"))
        }
    }
}

/// Appends a NUL-terminated string.
pub(crate) fn put_cstr(dst: &mut bytes::BytesMut, s: &str) {
    dst.extend_from_slice(s.as_bytes());
    dst.extend_from_slice(&[0]);
}

/// Writes `tag`, a length placeholder, the body from `body`, then patches the length.
pub(crate) fn put_frame(
    dst: &mut bytes::BytesMut,
    tag: u8,
    body: impl FnOnce(&mut bytes::BytesMut),
) {
    dst.extend_from_slice(&[tag, 0, 0, 0, 0]);
    let start = dst.len() - 4;
    body(dst);
    let len = (dst.len() - start) as u32;
    dst[start..start + 4].copy_from_slice(&len.to_be_bytes());
}
