//! A raw protocol client for tests that must control every message: a
//! pipeline with Flush between statements, a Sync after an error, what a
//! driver sends but a driver library hides. Reads time out, so a proxy
//! that hangs fails the test instead of stalling it; what was read is
//! summarised as text (`D[1]`, `E 42P01`, `Z I`) to compare a proxy's
//! answers with a direct server's.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use shardcast::protocol::messages::{encode_parse, encode_query};
use shardcast::protocol::Frame;

pub struct Wire {
    s: TcpStream,
    buf: Vec<u8>,
}

/// One message from the server.
#[derive(Debug, Clone)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    /// A short text form: the tag, with the SQLSTATE of an error, the
    /// values of a row, the status of a ReadyForQuery, a command's tag, a
    /// parameter's name and value.
    pub fn summary(&self) -> String {
        let t = self.tag as char;
        match self.tag {
            b'E' | b'N' => format!("{t} {}", self.field(b'C').unwrap_or_default()),
            b'Z' => format!("Z {}", self.body[0] as char),
            b'C' => format!("C {}", cstr(&self.body)),
            b'S' => {
                let mut parts = self.body.split(|b| *b == 0);
                let k = String::from_utf8_lossy(parts.next().unwrap_or_default());
                let v = String::from_utf8_lossy(parts.next().unwrap_or_default());
                format!("S {k}={v}")
            }
            b'D' => {
                let n = u16::from_be_bytes([self.body[0], self.body[1]]) as usize;
                let mut at = 2;
                let mut vals = Vec::new();
                for _ in 0..n {
                    let len = i32::from_be_bytes(self.body[at..at + 4].try_into().unwrap());
                    at += 4;
                    if len < 0 {
                        vals.push("NULL".to_string());
                    } else {
                        let end = at + len as usize;
                        vals.push(String::from_utf8_lossy(&self.body[at..end]).into_owned());
                        at = end;
                    }
                }
                format!("D[{}]", vals.join(","))
            }
            _ => t.to_string(),
        }
    }

    /// A field of an ErrorResponse or NoticeResponse.
    pub fn field(&self, code: u8) -> Option<String> {
        let mut at = 0;
        while at < self.body.len() && self.body[at] != 0 {
            let end = at + 1 + self.body[at + 1..].iter().position(|b| *b == 0)?;
            if self.body[at] == code {
                return Some(String::from_utf8_lossy(&self.body[at + 1..end]).into_owned());
            }
            at = end + 1;
        }
        None
    }
}

fn cstr(b: &[u8]) -> String {
    String::from_utf8_lossy(b.split(|c| *c == 0).next().unwrap_or_default()).into_owned()
}

impl Wire {
    /// Connects and completes startup (trust auth) as `postgres` to `db`.
    pub fn connect(port: u16, db: &str) -> Wire {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut w = Wire { s, buf: Vec::new() };
        w.send(&shardcast::protocol::startup::encode_startup(&[
            ("user", "postgres"),
            ("database", db),
        ]));
        w.until_ready();
        w
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write to server");
    }

    /// Parse (unnamed statement unless `name`), Bind, Execute of one statement.
    pub fn pbe(&mut self, name: &str, sql: &str) {
        self.parse(name, sql);
        self.bind("", name, &[]);
        self.execute("");
    }

    pub fn parse(&mut self, name: &str, sql: &str) {
        self.send(&encode_parse(name, sql, &[0, 0]).bytes);
    }

    /// Bind with text parameters (None: NULL), text results.
    pub fn bind(&mut self, portal: &str, stmt: &str, params: &[Option<&str>]) {
        let mut b = Vec::new();
        b.extend_from_slice(portal.as_bytes());
        b.push(0);
        b.extend_from_slice(stmt.as_bytes());
        b.push(0);
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(params.len() as i16).to_be_bytes());
        for p in params {
            match p {
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v.as_bytes());
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        b.extend_from_slice(&0i16.to_be_bytes());
        self.send(&Frame::new(b'B', &b).bytes);
    }

    pub fn execute(&mut self, portal: &str) {
        let mut b = portal.as_bytes().to_vec();
        b.push(0);
        b.extend_from_slice(&0i32.to_be_bytes());
        self.send(&Frame::new(b'E', &b).bytes);
    }

    pub fn flush(&mut self) {
        self.send(&Frame::new(b'H', &[]).bytes);
    }

    pub fn sync(&mut self) {
        self.send(&Frame::new(b'S', &[]).bytes);
    }

    pub fn query(&mut self, sql: &str) {
        self.send(&encode_query(sql).bytes);
    }

    /// The next message; panics if none comes within `limit`.
    pub fn recv_within(&mut self, limit: Duration) -> Option<Msg> {
        self.s.set_read_timeout(Some(limit)).unwrap();
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() > len {
                    let body = self.buf[5..1 + len].to_vec();
                    let tag = self.buf[0];
                    self.buf.drain(..1 + len);
                    return Some(Msg { tag, body });
                }
            }
            let mut chunk = [0u8; 8192];
            match self.s.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// The next message; a test fails (instead of hanging) if none comes.
    pub fn recv(&mut self) -> Msg {
        self.recv_within(Duration::from_secs(10))
            .expect("no answer within 10 s: the connection hangs")
    }

    /// Messages up to and including the next ReadyForQuery.
    pub fn until_ready(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        loop {
            let m = self.recv();
            let done = m.tag == b'Z';
            out.push(m);
            if done {
                return out;
            }
        }
    }

    /// Whatever arrives within `limit` (for "nothing more comes").
    pub fn drain(&mut self, limit: Duration) -> Vec<Msg> {
        let mut out = Vec::new();
        while let Some(m) = self.recv_within(limit) {
            out.push(m);
        }
        out
    }
}

/// The text form of messages, ParameterStatus and notices left out.
pub fn summary(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .filter(|m| !matches!(m.tag, b'S' | b'N'))
        .map(Msg::summary)
        .collect()
}

/// The text form of messages with ParameterStatus (application_name aside),
/// notices left out.
pub fn summary_with_params(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.tag != b'N')
        .map(Msg::summary)
        .filter(|s| !s.starts_with("S application_name="))
        .collect()
}
