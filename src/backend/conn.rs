//! One connection to a shard node: startup, authentication (trust,
//! cleartext, md5, SCRAM-SHA-256), then frames in and out.

use std::collections::HashSet;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::protocol::framing::whole_message;
use crate::protocol::framing::Reader;
use crate::protocol::messages::parse_error;
use crate::protocol::params::ParamSet;
use crate::protocol::startup::encode_startup;
use crate::protocol::{Frame, ProtocolError};

/// Where and as whom to connect to a node.
#[derive(Debug, Clone)]
pub struct NodeTarget {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
}

impl NodeTarget {
    /// From a `postgres://user[:password]@host[:port]/db` URL.
    pub fn from_url(name: &str, url: &str) -> Result<Self, String> {
        let cfg: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
        let host = match cfg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => return Err("a TCP host is required".into()),
        };
        Ok(Self {
            name: name.to_string(),
            host,
            port: cfg.get_ports().first().copied().unwrap_or(5432),
            user: cfg.get_user().unwrap_or("postgres").to_string(),
            password: cfg
                .get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            dbname: cfg.get_dbname().unwrap_or("postgres").to_string(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("node {node}: cannot connect to {addr}: {source}")]
    Connect {
        node: String,
        addr: String,
        source: std::io::Error,
    },
    #[error("node {node}: connection timed out")]
    Timeout { node: String },
    #[error("node {node}: authentication failed: {message}")]
    Auth { node: String, message: String },
    #[error("node {node}: server refused the connection: {code} {message}")]
    Refused {
        node: String,
        code: String,
        message: String,
    },
    #[error("node {node}: connection lost: {source}")]
    Io {
        node: String,
        source: std::io::Error,
    },
    #[error("node {node}: connection closed by the server")]
    Closed { node: String },
    #[error("node {node}: {source}")]
    Protocol { node: String, source: ProtocolError },
    #[error("node {node}: no server connection free within {waited_ms} ms (pool size {size})")]
    PoolTimeout {
        node: String,
        waited_ms: u64,
        size: usize,
    },
}

/// A live, authenticated server connection.
pub struct ServerConn {
    stream: TcpStream,
    rbuf: BytesMut,
    node_name: String,
    /// Backend process id and secret, for cancel requests.
    pub pid: i32,
    pub secret: i32,
    pub addr: std::sync::Arc<str>,
    /// The reported parameters' values, as the server last reported them
    /// (every ParameterStatus read is recorded, forwarded or not).
    pub params: ParamSet,
    /// Proxy-named prepared statements that exist on this connection.
    pub prepared: HashSet<u64>,
    /// Fingerprint of the client session settings applied here (0 = defaults).
    pub session: u64,
    /// False once the connection is in an unknown state; it is then dropped
    /// instead of returning to the pool.
    pub reusable: bool,
    /// The status of the last ReadyForQuery: `I`, `T` or `E`.
    pub status: u8,
    /// Proxy-named statements the server reported broken by a schema
    /// change, for the session to renew (see `frontend::names`).
    pub broken: Vec<u64>,
    /// A client's LISTEN ran here (among other statements): undone before
    /// the next use, as pooled connections must not listen.
    pub listens: bool,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl ServerConn {
    pub async fn connect(t: &NodeTarget) -> Result<Self, BackendError> {
        match tokio::time::timeout(CONNECT_TIMEOUT, Self::connect_inner(t)).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::Timeout {
                node: t.name.clone(),
            }),
        }
    }

    async fn connect_inner(t: &NodeTarget) -> Result<Self, BackendError> {
        let addr = format!("{}:{}", t.host, t.port);
        let stream = TcpStream::connect(&addr)
            .await
            .map_err(|source| BackendError::Connect {
                node: t.name.clone(),
                addr: addr.clone(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let mut conn = ServerConn {
            stream,
            rbuf: BytesMut::with_capacity(16 * 1024),
            node_name: t.name.clone(),
            pid: 0,
            secret: 0,
            addr: addr.into(),
            params: ParamSet::default(),
            prepared: HashSet::new(),
            session: 0,
            reusable: true,
            status: b'I',
            broken: Vec::new(),
            listens: false,
        };
        let startup = encode_startup(&[
            ("user", &t.user),
            ("database", &t.dbname),
            ("application_name", "shardcast"),
            ("client_encoding", "UTF8"),
        ]);
        conn.write_all(&startup).await?;
        conn.authenticate(t).await?;
        loop {
            let f = conn.read_frame().await?;
            match f.tag {
                b'K' => {
                    let mut r = Reader::new(b'K', f.body());
                    conn.pid = r.i32().unwrap_or(0);
                    conn.secret = r.i32().unwrap_or(0);
                }
                b'Z' => return Ok(conn),
                b'E' => return Err(conn.refused(&f)),
                _ => {}
            }
        }
    }

    fn refused(&self, f: &Frame) -> BackendError {
        let e = parse_error(f);
        BackendError::Refused {
            node: self.node_name.clone(),
            code: e.code,
            message: e.message,
        }
    }

    fn auth_err(&self, message: impl Into<String>) -> BackendError {
        BackendError::Auth {
            node: self.node_name.clone(),
            message: message.into(),
        }
    }

    async fn authenticate(&mut self, t: &NodeTarget) -> Result<(), BackendError> {
        let mut scram: Option<ScramSha256> = None;
        loop {
            let f = self.read_frame().await?;
            if f.tag == b'E' {
                return Err(self.refused(&f));
            }
            if f.tag != b'R' {
                return Err(self.auth_err(format!("unexpected message '{}'", f.tag as char)));
            }
            let mut r = Reader::new(b'R', f.body());
            let code = r.i32().map_err(|e| self.auth_err(e.to_string()))?;
            let password = || {
                t.password.clone().ok_or_else(|| {
                    self.auth_err("the server wants a password; put it in the node url")
                })
            };
            match code {
                0 => return Ok(()),
                3 => {
                    let pw = password()?;
                    self.send_password(pw.as_bytes()).await?;
                }
                5 => {
                    let salt: [u8; 4] = r
                        .bytes(4)
                        .map_err(|e| self.auth_err(e.to_string()))?
                        .try_into()
                        .unwrap();
                    let pw = password()?;
                    let hashed = postgres_protocol::authentication::md5_hash(
                        t.user.as_bytes(),
                        pw.as_bytes(),
                        salt,
                    );
                    self.send_password(hashed.as_bytes()).await?;
                }
                10 => {
                    let mechs = r.rest();
                    if !mechs.split(|&b| b == 0).any(|m| m == b"SCRAM-SHA-256") {
                        return Err(self.auth_err("server offers no SCRAM-SHA-256"));
                    }
                    let pw = password()?;
                    let s = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                    let first = s.message().to_vec();
                    scram = Some(s);
                    let mut body = Vec::new();
                    body.extend_from_slice(b"SCRAM-SHA-256\0");
                    body.extend_from_slice(&(first.len() as i32).to_be_bytes());
                    body.extend_from_slice(&first);
                    self.write_all(&Frame::new(b'p', &body).bytes).await?;
                }
                11 => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| self.auth_err("SASL continue before start"))?;
                    s.update(r.rest()).map_err(|e| BackendError::Auth {
                        node: self.node_name.clone(),
                        message: e.to_string(),
                    })?;
                    let msg = s.message().to_vec();
                    self.write_all(&Frame::new(b'p', &msg).bytes).await?;
                }
                12 => {
                    let mut s = scram
                        .take()
                        .ok_or_else(|| self.auth_err("SASL final before start"))?;
                    s.finish(r.rest()).map_err(|e| BackendError::Auth {
                        node: self.node_name.clone(),
                        message: e.to_string(),
                    })?;
                }
                other => {
                    return Err(self.auth_err(format!("unsupported authentication method {other}")))
                }
            }
        }
    }

    async fn send_password(&mut self, pw: &[u8]) -> Result<(), BackendError> {
        let mut body = pw.to_vec();
        body.push(0);
        self.write_all(&Frame::new(b'p', &body).bytes).await
    }

    /// The socket and whatever the server sent that was not read yet (to
    /// relay a session as it is).
    pub fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.stream, self.rbuf)
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), BackendError> {
        self.stream.write_all(bytes).await.map_err(|source| {
            self.reusable = false;
            BackendError::Io {
                node: self.node_name.clone(),
                source,
            }
        })
    }

    /// `read_frame` for work off the hot path (merges, two-phase commit,
    /// COPY): one call site for all of them, so that the hot path's
    /// message reading stays inlined into the exchange (measured: ~5% more
    /// instructions per transaction when it was not).
    pub async fn recv(&mut self) -> Result<Frame, BackendError> {
        self.read_frame().await
    }

    /// Whether the server closed this idle connection (it was terminated,
    /// or the server restarted): anything readable on an idle connection
    /// is its goodbye. Costs no system call unless the socket is readable.
    pub fn server_left(&mut self) -> bool {
        use futures_util::FutureExt;
        match self
            .stream
            .ready(tokio::io::Interest::READABLE)
            .now_or_never()
        {
            None => false,
            Some(Err(_)) => true,
            Some(Ok(r)) if r.is_read_closed() => true,
            Some(Ok(_)) => {
                let mut buf = [0u8; 1024];
                match self.stream.try_read(&mut buf) {
                    Ok(0) => true,
                    Ok(n) => {
                        self.rbuf.extend_from_slice(&buf[..n]);
                        // A FATAL ErrorResponse: the server is leaving.
                        self.rbuf.first() == Some(&b'E')
                    }
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                }
            }
        }
    }

    /// The tag and length of the next whole message, read from the socket
    /// as needed and seen by the connection's bookkeeping (as `read_frame`
    /// does), but left at the front of the read buffer: the hot path relays
    /// it from there (`front`, then `consume`) instead of splitting it off.
    pub async fn peek_message(&mut self) -> Result<(u8, usize), BackendError> {
        loop {
            let whole = whole_message(&mut self.rbuf).map_err(|source| {
                self.reusable = false;
                BackendError::Protocol {
                    node: self.node_name.clone(),
                    source,
                }
            })?;
            if let Some((tag, len)) = whole {
                match tag {
                    b'S' => self.params.observe_message(&self.rbuf[..len]),
                    b'C' if matches!(self.rbuf.get(5), Some(b'D' | b'L')) => {
                        let tag = crate::protocol::messages::command_tag_of(&self.rbuf[5..len]);
                        note_command_tag(&mut self.prepared, &mut self.listens, tag);
                    }
                    _ => {}
                }
                return Ok((tag, len));
            }
            self.fill().await?;
        }
    }

    /// The first `len` bytes of the read buffer (a message `peek_message` saw).
    #[inline]
    pub fn front(&self, len: usize) -> &[u8] {
        &self.rbuf[..len]
    }

    /// Drops the message `peek_message` saw.
    #[inline]
    pub fn consume(&mut self, len: usize) {
        bytes::Buf::advance(&mut self.rbuf, len);
    }

    /// Takes the message `peek_message` saw as a frame of its own.
    pub fn take_front(&mut self, len: usize) -> Frame {
        let bytes = self.rbuf.split_to(len).freeze();
        Frame {
            tag: bytes[0],
            bytes,
        }
    }

    /// Reads more from the socket into the read buffer.
    async fn fill(&mut self) -> Result<(), BackendError> {
        let n = self
            .stream
            .read_buf(&mut self.rbuf)
            .await
            .map_err(|source| {
                self.reusable = false;
                BackendError::Io {
                    node: self.node_name.clone(),
                    source,
                }
            })?;
        if n == 0 {
            self.reusable = false;
            return Err(BackendError::Closed {
                node: self.node_name.clone(),
            });
        }
        Ok(())
    }

    /// The next frame, reading from the socket as needed.
    pub async fn read_frame(&mut self) -> Result<Frame, BackendError> {
        let (_, len) = self.peek_message().await?;
        Ok(self.take_front(len))
    }
}

/// What a finished command means for a connection: `DISCARD ALL` and
/// `DEALLOCATE ALL` drop the statements the proxy prepared there; a
/// `LISTEN` must be undone.
fn note_command_tag(prepared: &mut HashSet<u64>, listens: &mut bool, tag: &str) {
    if tag == "DISCARD ALL" || tag == "DEALLOCATE ALL" {
        prepared.clear();
    }
    if tag == "DISCARD ALL" {
        *listens = false;
    }
    if tag == "LISTEN" {
        *listens = true;
    }
}
