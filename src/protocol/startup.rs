//! The untagged first message of a connection: a startup packet, an
//! SSL/GSS encryption request, or a cancel request.

use bytes::{Buf, BytesMut};

use super::framing::ProtocolError;

pub const PROTOCOL_V3: i32 = 196608;
const SSL_REQUEST: i32 = 80877103;
const GSSENC_REQUEST: i32 = 80877104;
const CANCEL_REQUEST: i32 = 80877102;
const MAX_STARTUP_LEN: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    Ssl,
    GssEnc,
    Cancel {
        pid: i32,
        secret: i32,
    },
    /// Protocol 3.x with its parameters (`user`, `database`, …) in order.
    Params {
        version: i32,
        params: Vec<(String, String)>,
    },
}

impl Startup {
    pub fn param(&self, name: &str) -> Option<&str> {
        match self {
            Startup::Params { params, .. } => params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }
}

/// Takes one startup-phase message off `buf`, if whole.
pub fn try_startup(buf: &mut BytesMut) -> Result<Option<Startup>, ProtocolError> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 || len as usize > MAX_STARTUP_LEN {
        return Err(ProtocolError::Startup("bad length"));
    }
    if buf.len() < len as usize {
        return Ok(None);
    }
    let mut msg = buf.split_to(len as usize);
    msg.advance(4);
    let code = msg.get_i32();
    match code {
        SSL_REQUEST => Ok(Some(Startup::Ssl)),
        GSSENC_REQUEST => Ok(Some(Startup::GssEnc)),
        CANCEL_REQUEST => {
            if msg.len() < 8 {
                return Err(ProtocolError::Startup("short cancel request"));
            }
            Ok(Some(Startup::Cancel {
                pid: msg.get_i32(),
                secret: msg.get_i32(),
            }))
        }
        v if v >> 16 == 3 => {
            let mut params = Vec::new();
            let mut parts = msg[..].split(|&b| b == 0);
            loop {
                let key = parts
                    .next()
                    .ok_or(ProtocolError::Startup("unterminated parameters"))?;
                if key.is_empty() {
                    break;
                }
                let value = parts
                    .next()
                    .ok_or(ProtocolError::Startup("parameter without value"))?;
                let key = std::str::from_utf8(key)
                    .map_err(|_| ProtocolError::Startup("non-UTF-8 key"))?;
                let value = std::str::from_utf8(value)
                    .map_err(|_| ProtocolError::Startup("non-UTF-8 value"))?;
                params.push((key.to_string(), value.to_string()));
            }
            Ok(Some(Startup::Params { version: v, params }))
        }
        _ => Err(ProtocolError::Startup("unsupported protocol version")),
    }
}

/// Encodes a v3 startup packet (used toward the backends).
pub fn encode_startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&PROTOCOL_V3.to_be_bytes());
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

pub fn encode_cancel(pid: i32, secret: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&16i32.to_be_bytes());
    out.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
    out.extend_from_slice(&pid.to_be_bytes());
    out.extend_from_slice(&secret.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_round_trip() {
        let raw = encode_startup(&[("user", "alice"), ("database", "app")]);
        let mut buf = BytesMut::from(&raw[..]);
        let s = try_startup(&mut buf).unwrap().unwrap();
        assert_eq!(s.param("user"), Some("alice"));
        assert_eq!(s.param("database"), Some("app"));
        assert!(buf.is_empty());
    }

    #[test]
    fn ssl_and_cancel() {
        let mut buf = BytesMut::from(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f][..]);
        assert_eq!(try_startup(&mut buf).unwrap(), Some(Startup::Ssl));
        let mut buf = BytesMut::from(&encode_cancel(7, 9)[..]);
        assert_eq!(
            try_startup(&mut buf).unwrap(),
            Some(Startup::Cancel { pid: 7, secret: 9 })
        );
    }

    #[test]
    fn garbage_is_refused() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0][..]);
        assert!(try_startup(&mut buf).is_err());
        let mut buf = BytesMut::from(&[0, 0, 0, 12, 0, 2, 0, 0, 1, 2, 3, 4][..]);
        assert!(try_startup(&mut buf).is_err());
        let mut buf = BytesMut::from(&[0, 0, 0, 10, 0, 3, 0, 0, b'u', b'x'][..]);
        assert!(try_startup(&mut buf).is_err());
    }
}
