//! Decoding the messages the proxy must look inside, and encoding the ones it
//! writes itself. Everything else passes through as an opaque [`Frame`].

use bytes::{BufMut, BytesMut};
use smallvec::SmallVec;

use super::framing::{Frame, ProtocolError, Reader};

/// `Parse`: a statement name, its text and declared parameter types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parse<'a> {
    pub name: &'a str,
    pub query: &'a str,
    /// The raw parameter-type section (`i16 count, i32 oids…`), kept as bytes
    /// so a rename can re-emit it untouched.
    pub param_types: &'a [u8],
}

pub fn parse_parse(f: &Frame) -> Result<Parse<'_>, ProtocolError> {
    let mut r = Reader::new(b'P', f.body());
    let name = r.cstr()?;
    let query = r.cstr()?;
    let param_types = r.rest();
    let mut check = Reader::new(b'P', param_types);
    let n = check.i16()?;
    if n < 0 || check.rest().len() != n as usize * 4 {
        return Err(ProtocolError::Malformed {
            tag: 'P',
            what: "parameter type count",
        });
    }
    Ok(Parse {
        name,
        query,
        param_types,
    })
}

/// `Parse` under another statement name.
pub fn encode_parse(name: &str, query: &str, param_types: &[u8]) -> Frame {
    let mut body = Vec::with_capacity(name.len() + query.len() + param_types.len() + 2);
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    body.extend_from_slice(query.as_bytes());
    body.push(0);
    body.extend_from_slice(param_types);
    Frame::new(b'P', &body)
}

/// `Bind`, decoded just enough to route: names and the parameter values.
#[derive(Debug, Clone)]
pub struct Bind<'a> {
    pub portal: &'a str,
    pub statement: &'a str,
    // Inline for the usual few parameters: no allocation per Bind.
    formats: SmallVec<[i16; 4]>,
    params: SmallVec<[Option<&'a [u8]>; 4]>,
    /// Everything after the statement name, to re-emit on rename.
    after_names: &'a [u8],
    /// Where the result-format section starts in `after_names`.
    results_at: usize,
}

impl<'a> Bind<'a> {
    /// Parameter formats and values as sent (without the result formats),
    /// to bind the same values to another statement.
    pub fn params_section(&self) -> &'a [u8] {
        &self.after_names[..self.results_at]
    }

    /// The result format codes the client asked for.
    pub fn result_formats(&self) -> SmallVec<[i16; 4]> {
        self.after_names[self.results_at + 2..]
            .chunks(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]))
            .collect()
    }

    pub fn param_count(&self) -> usize {
        self.params.len()
    }

    /// The 1-based parameter `$n`: its bytes (None for NULL) and whether it
    /// is in binary format. None if `n` is out of range.
    pub fn param(&self, n: usize) -> Option<(Option<&'a [u8]>, bool)> {
        let value = *self.params.get(n.checked_sub(1)?)?;
        let binary = match self.formats.len() {
            0 => false,
            1 => self.formats[0] == 1,
            _ => self.formats.get(n - 1).copied() == Some(1),
        };
        Some((value, binary))
    }
}

pub fn parse_bind(f: &Frame) -> Result<Bind<'_>, ProtocolError> {
    let mut r = Reader::new(b'B', f.body());
    let portal = r.cstr()?;
    let statement = r.cstr()?;
    let after_names = r.rest();
    let nf = r.i16()?;
    if nf < 0 {
        return Err(ProtocolError::Malformed {
            tag: 'B',
            what: "negative format count",
        });
    }
    let mut formats = SmallVec::with_capacity(nf as usize);
    for _ in 0..nf {
        formats.push(r.i16()?);
    }
    let np = r.i16()?;
    if np < 0 {
        return Err(ProtocolError::Malformed {
            tag: 'B',
            what: "negative parameter count",
        });
    }
    let mut params = SmallVec::with_capacity(np as usize);
    for _ in 0..np {
        let len = r.i32()?;
        if len < -1 {
            return Err(ProtocolError::Malformed {
                tag: 'B',
                what: "negative parameter length",
            });
        }
        params.push(if len == -1 {
            None
        } else {
            Some(r.bytes(len as usize)?)
        });
    }
    let results_at = after_names.len() - r.rest().len();
    let nr = r.i16()?;
    if nr < 0 || r.rest().len() != nr as usize * 2 {
        return Err(ProtocolError::Malformed {
            tag: 'B',
            what: "result format count",
        });
    }
    Ok(Bind {
        portal,
        statement,
        formats,
        params,
        after_names,
        results_at,
    })
}

/// The same `Bind` naming another prepared statement.
pub fn rename_bind(b: &Bind<'_>, statement: &str) -> Frame {
    let mut body = Vec::with_capacity(b.portal.len() + statement.len() + 2 + b.after_names.len());
    body.extend_from_slice(b.portal.as_bytes());
    body.push(0);
    body.extend_from_slice(statement.as_bytes());
    body.push(0);
    body.extend_from_slice(b.after_names);
    Frame::new(b'B', &body)
}

/// `Describe` or `Close`: `S` (statement) or `P` (portal) and a name.
pub fn parse_target(f: &Frame) -> Result<(u8, &str), ProtocolError> {
    let mut r = Reader::new(f.tag, f.body());
    let kind = r.u8()?;
    if kind != b'S' && kind != b'P' {
        return Err(ProtocolError::Malformed {
            tag: f.tag as char,
            what: "target must be 'S' or 'P'",
        });
    }
    Ok((kind, r.cstr()?))
}

pub fn encode_target(tag: u8, kind: u8, name: &str) -> Frame {
    let mut body = Vec::with_capacity(name.len() + 2);
    body.push(kind);
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    Frame::new(tag, &body)
}

/// The SQL text of a `Query`.
pub fn parse_query(f: &Frame) -> Result<&str, ProtocolError> {
    Reader::new(b'Q', f.body()).cstr()
}

pub fn encode_query(sql: &str) -> Frame {
    let mut body = Vec::with_capacity(sql.len() + 1);
    body.extend_from_slice(sql.as_bytes());
    body.push(0);
    Frame::new(b'Q', &body)
}

/// The transaction status of a `ReadyForQuery`: `I`, `T` or `E`.
pub fn ready_status(f: &Frame) -> u8 {
    f.body().first().copied().unwrap_or(b'I')
}

/// The tag of a `CommandComplete`, e.g. `SELECT 3`.
pub fn command_tag(f: &Frame) -> &str {
    command_tag_of(f.body())
}

/// `command_tag` of a CommandComplete's body.
pub fn command_tag_of(body: &[u8]) -> &str {
    Reader::new(b'C', body).cstr().unwrap_or("")
}

/// The row count at the end of a command tag (`INSERT 0 5` → 5).
pub fn tag_rows(tag: &str) -> u64 {
    // Once per statement on the hot path: read the trailing digits by hand.
    let b = tag.as_bytes();
    let digits = b.iter().rev().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 19 || (digits < b.len() && b[b.len() - digits - 1] != b' ') {
        return 0;
    }
    b[b.len() - digits..].iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add((d - b'0') as u64)
    })
}

/// Fields of an `ErrorResponse` or `NoticeResponse`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

pub fn parse_error(f: &Frame) -> ErrorFields {
    let mut out = ErrorFields::default();
    let mut r = Reader::new(f.tag, f.body());
    while let Ok(field) = r.u8() {
        if field == 0 {
            break;
        }
        let Ok(v) = r.cstr() else { break };
        match field {
            b'S' => out.severity = v.to_string(),
            b'C' => out.code = v.to_string(),
            b'M' => out.message = v.to_string(),
            _ => {}
        }
    }
    out
}

/// An `ErrorResponse` of severity ERROR (or FATAL), with an optional hint.
pub fn error_response(severity: &str, code: &str, message: &str, hint: Option<&str>) -> Frame {
    let mut body = BytesMut::with_capacity(64 + message.len());
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        body.put_u8(field);
        body.put_slice(value.as_bytes());
        body.put_u8(0);
    }
    if let Some(h) = hint {
        body.put_u8(b'H');
        body.put_slice(h.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    Frame::new(b'E', &body)
}

pub fn ready_for_query(status: u8) -> Frame {
    Frame::new(b'Z', &[status])
}

pub fn command_complete(tag: &str) -> Frame {
    let mut body = Vec::with_capacity(tag.len() + 1);
    body.extend_from_slice(tag.as_bytes());
    body.push(0);
    Frame::new(b'C', &body)
}

pub fn parameter_status(name: &str, value: &str) -> Frame {
    let mut body = Vec::with_capacity(name.len() + value.len() + 2);
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    body.extend_from_slice(value.as_bytes());
    body.push(0);
    Frame::new(b'S', &body)
}

pub fn backend_key_data(pid: i32, secret: i32) -> Frame {
    let mut body = [0u8; 8];
    body[..4].copy_from_slice(&pid.to_be_bytes());
    body[4..].copy_from_slice(&secret.to_be_bytes());
    Frame::new(b'K', &body)
}

/// `AuthenticationOk` (0) or `AuthenticationMD5Password` (5, with salt).
pub fn authentication(code: i32, extra: &[u8]) -> Frame {
    let mut body = Vec::with_capacity(4 + extra.len());
    body.extend_from_slice(&code.to_be_bytes());
    body.extend_from_slice(extra);
    Frame::new(b'R', &body)
}

pub fn parse_complete() -> Frame {
    Frame::new(b'1', &[])
}

pub fn bind_complete() -> Frame {
    Frame::new(b'2', &[])
}

pub fn close_complete() -> Frame {
    Frame::new(b'3', &[])
}

pub fn no_data() -> Frame {
    Frame::new(b'n', &[])
}

pub fn empty_query_response() -> Frame {
    Frame::new(b'I', &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind_frame(stmt: &str, formats: &[i16], params: &[Option<&[u8]>]) -> Frame {
        let mut b = Vec::new();
        b.extend_from_slice(b"portal\0");
        b.extend_from_slice(stmt.as_bytes());
        b.push(0);
        b.extend_from_slice(&(formats.len() as i16).to_be_bytes());
        for f in formats {
            b.extend_from_slice(&f.to_be_bytes());
        }
        b.extend_from_slice(&(params.len() as i16).to_be_bytes());
        for p in params {
            match p {
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
            }
        }
        b.extend_from_slice(&0i16.to_be_bytes());
        Frame::new(b'B', &b)
    }

    #[test]
    fn bind_params_and_formats() {
        let f = bind_frame(
            "s1",
            &[0, 1],
            &[Some(b"42"), Some(&7i64.to_be_bytes()), None],
        );
        let b = parse_bind(&f).unwrap();
        assert_eq!(b.portal, "portal");
        assert_eq!(b.statement, "s1");
        assert_eq!(b.param(1), Some((Some(&b"42"[..]), false)));
        assert_eq!(b.param(2), Some((Some(&7i64.to_be_bytes()[..]), true)));
        assert_eq!(b.param(3), Some((None, false)));
        assert_eq!(b.param(4), None);
        assert_eq!(b.param(0), None);
    }

    #[test]
    fn bind_rename_keeps_the_rest() {
        let f = bind_frame("client_name", &[1], &[Some(b"\0\0\0\x05")]);
        let b = parse_bind(&f).unwrap();
        let renamed = rename_bind(&b, "sc_0123");
        let b2 = parse_bind(&renamed).unwrap();
        assert_eq!(b2.statement, "sc_0123");
        assert_eq!(b2.portal, "portal");
        assert_eq!(b2.param(1), b.param(1));
    }

    #[test]
    fn malformed_bind_is_an_error_not_a_panic() {
        let f = bind_frame("s", &[0], &[Some(b"1")]);
        for cut in 5..f.bytes.len() - 1 {
            let short = Frame::new(b'B', &f.bytes[5..cut]);
            assert!(parse_bind(&short).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn parse_round_trip() {
        let f = encode_parse("s", "SELECT $1", &[0, 1, 0, 0, 0, 20]);
        let p = parse_parse(&f).unwrap();
        assert_eq!((p.name, p.query), ("s", "SELECT $1"));
        assert_eq!(p.param_types, &[0, 1, 0, 0, 0, 20]);
        assert!(parse_parse(&Frame::new(b'P', b"s\0q\0\0\x02\0\0\0\x17")).is_err());
    }

    #[test]
    fn error_fields_round_trip() {
        let f = error_response("ERROR", "0A000", "no key", Some("add WHERE id = ..."));
        let e = parse_error(&f);
        assert_eq!(
            (e.severity.as_str(), e.code.as_str(), e.message.as_str()),
            ("ERROR", "0A000", "no key")
        );
    }

    #[test]
    fn tags() {
        assert_eq!(tag_rows("INSERT 0 5"), 5);
        assert_eq!(tag_rows("SELECT 12"), 12);
        assert_eq!(tag_rows("BEGIN"), 0);
        assert_eq!(tag_rows("SELECT"), 0);
        assert_eq!(tag_rows("COPY 1234567"), 1_234_567);
        assert_eq!(tag_rows("X1"), 0);
    }
}
