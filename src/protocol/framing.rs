//! Splitting a byte stream into whole protocol messages.

use bytes::{Buf, Bytes, BytesMut};

/// Larger messages are refused: a malformed length must not make the proxy
/// buffer gigabytes. PostgreSQL itself caps most messages at 1 GB.
pub const MAX_MESSAGE_LEN: usize = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("invalid message length {len} for message type '{tag}'")]
    BadLength { tag: char, len: i64 },
    #[error("malformed '{tag}' message: {what}")]
    Malformed { tag: char, what: &'static str },
    #[error("unexpected message type '{tag}' {when}")]
    Unexpected { tag: char, when: &'static str },
    #[error("invalid startup packet: {0}")]
    Startup(&'static str),
}

/// One whole message: type byte, length, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    /// The whole message, header included, ready to forward.
    pub bytes: Bytes,
}

impl Frame {
    /// The message body after the 5-byte header.
    #[inline]
    pub fn body(&self) -> &[u8] {
        &self.bytes[5..]
    }

    /// Builds a frame from a tag and body.
    pub fn new(tag: u8, body: &[u8]) -> Frame {
        let mut b = BytesMut::with_capacity(5 + body.len());
        b.extend_from_slice(&[tag]);
        b.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        b.extend_from_slice(body);
        Frame {
            tag,
            bytes: b.freeze(),
        }
    }
}

/// Takes one whole message off the front of `buf`, if one is there.
#[inline]
pub fn try_frame(buf: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
    Ok(whole_message(buf)?.map(|(tag, total)| Frame {
        tag,
        bytes: buf.split_to(total).freeze(),
    }))
}

/// The tag and length (header included) of the whole message at the front
/// of `buf`, if one is there; left in place (room is reserved for the rest
/// of an incomplete one).
#[inline]
pub fn whole_message(buf: &mut BytesMut) -> Result<Option<(u8, usize)>, ProtocolError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 || len as usize > MAX_MESSAGE_LEN {
        return Err(ProtocolError::BadLength {
            tag: tag as char,
            len: len as i64,
        });
    }
    let total = len as usize + 1;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    Ok(Some((tag, total)))
}

/// A cursor over a message body for decoding fields.
pub struct Reader<'a> {
    buf: &'a [u8],
    tag: u8,
}

impl<'a> Reader<'a> {
    pub fn new(tag: u8, buf: &'a [u8]) -> Self {
        Self { buf, tag }
    }

    fn err(&self, what: &'static str) -> ProtocolError {
        ProtocolError::Malformed {
            tag: self.tag as char,
            what,
        }
    }

    pub fn cstr(&mut self) -> Result<&'a str, ProtocolError> {
        let raw = self.cstr_bytes()?;
        std::str::from_utf8(raw).map_err(|_| self.err("string is not valid UTF-8"))
    }

    pub fn cstr_bytes(&mut self) -> Result<&'a [u8], ProtocolError> {
        // CStr's search for the terminator is word-at-a-time.
        let s = std::ffi::CStr::from_bytes_until_nul(self.buf)
            .map_err(|_| self.err("missing string terminator"))?
            .to_bytes();
        self.buf = &self.buf[s.len() + 1..];
        Ok(s)
    }

    pub fn u8(&mut self) -> Result<u8, ProtocolError> {
        if self.buf.is_empty() {
            return Err(self.err("truncated"));
        }
        let v = self.buf[0];
        self.buf = &self.buf[1..];
        Ok(v)
    }

    pub fn i16(&mut self) -> Result<i16, ProtocolError> {
        if self.buf.len() < 2 {
            return Err(self.err("truncated"));
        }
        let v = (&self.buf[..2]).get_i16();
        self.buf = &self.buf[2..];
        Ok(v)
    }

    pub fn i32(&mut self) -> Result<i32, ProtocolError> {
        if self.buf.len() < 4 {
            return Err(self.err("truncated"));
        }
        let v = (&self.buf[..4]).get_i32();
        self.buf = &self.buf[4..];
        Ok(v)
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(self.err("truncated"));
        }
        let v = &self.buf[..n];
        self.buf = &self.buf[n..];
        Ok(v)
    }

    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_at_message_boundaries() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&Frame::new(b'Q', b"SELECT 1\0").bytes);
        buf.extend_from_slice(&Frame::new(b'S', b"").bytes[..3]);
        let f = try_frame(&mut buf).unwrap().unwrap();
        assert_eq!(f.tag, b'Q');
        assert_eq!(f.body(), b"SELECT 1\0");
        assert_eq!(try_frame(&mut buf).unwrap(), None);
        buf.extend_from_slice(&[0, 4]);
        assert_eq!(try_frame(&mut buf).unwrap().unwrap().tag, b'S');
        assert!(buf.is_empty());
    }

    #[test]
    fn bad_lengths_are_refused() {
        let mut buf = BytesMut::from(&[b'Q', 0, 0, 0, 3][..]);
        assert!(matches!(
            try_frame(&mut buf),
            Err(ProtocolError::BadLength { .. })
        ));
        let mut buf = BytesMut::from(&[b'Q', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            try_frame(&mut buf),
            Err(ProtocolError::BadLength { .. })
        ));
    }

    #[test]
    fn reader_rejects_truncated_fields() {
        let mut r = Reader::new(b'P', b"abc");
        assert!(r.cstr().is_err());
        let mut r = Reader::new(b'B', &[0, 1]);
        assert_eq!(r.i16().unwrap(), 1);
        assert!(r.i32().is_err());
    }
}
