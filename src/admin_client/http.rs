//! Just enough HTTP/1.1 over a `TcpStream` for the admin API: one
//! request per connection, Content-Length or chunked replies.

use super::*;

/// The admin API's address, from `--admin`.
#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    /// `host:port`, as connected to and sent in `Host`.
    pub authority: String,
    /// A path prefix before `/api/...` (normally empty).
    pub prefix: String,
}

/// Why a call to the admin API failed.
#[derive(Debug)]
pub enum ApiError {
    /// No connection, or no complete answer.
    Transport(String),
    /// An HTTP error status with the API's message.
    Status { status: u16, message: String },
    /// A success whose body is not the JSON expected.
    Decode(String),
}

impl ApiError {
    pub(super) fn decode(e: impl std::fmt::Display) -> ApiError {
        ApiError::Decode(format!("the admin API answered something unexpected: {e}"))
    }

    /// Worth retrying while following: the proxy or its catalog may be back
    /// in a moment.
    pub(super) fn transient(&self) -> bool {
        match self {
            ApiError::Transport(_) => true,
            ApiError::Status { status, .. } => matches!(status, 502..=504),
            ApiError::Decode(_) => false,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Transport(m) | ApiError::Decode(m) | ApiError::Status { message: m, .. } => {
                f.write_str(m)
            }
        }
    }
}

impl Admin {
    /// `http://host:port[/prefix]`; the scheme may be left out, the port
    /// defaults to 80. `https` is refused: the admin API has no TLS.
    pub fn parse(url: &str) -> Result<Admin, String> {
        let url = url.trim();
        let rest = match url.find("://") {
            Some(i) if url[..i].eq_ignore_ascii_case("http") => &url[i + 3..],
            Some(i) => {
                return Err(format!(
                    "--admin {url:?}: the admin API speaks plain http, not {}",
                    &url[..i]
                ))
            }
            None => url,
        };
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains(['@', '?', '#', ' ']) {
            return Err(format!("--admin {url:?} is not a URL like {DEFAULT_ADMIN}"));
        }
        let has_port = if authority.starts_with('[') {
            authority.contains("]:")
        } else {
            authority.contains(':')
        };
        let authority = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Admin {
            authority,
            prefix: prefix.to_string(),
        })
    }

    fn url(&self) -> String {
        format!("http://{}{}", self.authority, self.prefix)
    }

    /// One request; any status comes back as a [`Response`].
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<Response, ApiError> {
        let unreachable = |e: &dyn std::fmt::Display| {
            ApiError::Transport(format!("admin API at {}: {e}", self.url()))
        };
        let addrs = self
            .authority
            .to_socket_addrs()
            .map_err(|e| unreachable(&e))?;
        let mut last: Option<std::io::Error> = None;
        let mut stream = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let mut stream = match (stream, last) {
            (Some(s), _) => s,
            (None, Some(e)) => return Err(unreachable(&e)),
            (None, None) => return Err(unreachable(&"no address")),
        };
        let io = |e: std::io::Error| unreachable(&e);
        stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        let request = build_request(
            method,
            &self.authority,
            &format!("{}{path}", self.prefix),
            body,
        );
        stream.write_all(request.as_bytes()).map_err(io)?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let n = stream.read(&mut buf).map_err(io)?;
            if n > 0 {
                raw.extend_from_slice(&buf[..n]);
            }
            // Done once the response is complete, even if the server keeps
            // the connection open despite `Connection: close`.
            match parse_response(&raw, n == 0) {
                Ok(Some(r)) => return Ok(r),
                Ok(None) if n > 0 => continue,
                Ok(None) => return Err(unreachable(&"connection closed mid-response")),
                Err(e) => return Err(unreachable(&e)),
            }
        }
    }

    /// One request whose success body is JSON; an error status becomes
    /// [`ApiError::Status`] with the API's `error` message.
    pub fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<serde_json::Value, ApiError> {
        let response = self.call(method, path, body)?;
        if let Some(e) = response.error() {
            return Err(e);
        }
        serde_json::from_slice(&response.body).map_err(ApiError::decode)
    }
}

/// The request text: `Connection: close`, and always a `Content-Length`.
pub fn build_request(method: &str, authority: &str, path: &str, body: Option<&str>) -> String {
    let content_type = if body.is_some() {
        "Content-Type: application/json\r\n"
    } else {
        ""
    };
    let body = body.unwrap_or("");
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: shardcast/{}\r\n\
         Accept: application/json\r\nConnection: close\r\n{content_type}Content-Length: {}\r\n\r\n{body}",
        env!("CARGO_PKG_VERSION"),
        body.len()
    )
}

/// A complete HTTP response: its status and (de-chunked) body.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    /// For a 4xx/5xx: the API's `{"error": ...}` message, or the body text.
    pub(super) fn error(&self) -> Option<ApiError> {
        if self.status < 400 {
            return None;
        }
        let message = serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_string))
            .unwrap_or_else(|| {
                let text = String::from_utf8_lossy(&self.body);
                let text = text.trim();
                if text.is_empty() {
                    format!("the admin API answered HTTP {}", self.status)
                } else {
                    format!(
                        "the admin API answered HTTP {}: {}",
                        self.status,
                        truncate(text, 200)
                    )
                }
            });
        Some(ApiError::Status {
            status: self.status,
            message,
        })
    }
}

/// Parses what has arrived so far. `Ok(None)` means incomplete: more bytes
/// are needed (`eof` says none will come, which only completes a body that
/// has neither a length nor chunks). Interim `1xx` responses are skipped.
pub fn parse_response(raw: &[u8], eof: bool) -> Result<Option<Response>, String> {
    let mut raw = raw;
    loop {
        let Some(end) = find(raw, b"\r\n\r\n") else {
            return Ok(None);
        };
        let head = std::str::from_utf8(&raw[..end])
            .map_err(|_| "response headers are not UTF-8".to_string())?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let mut parts = status_line.split_whitespace();
        let status = match (parts.next(), parts.next()) {
            (Some(v), Some(code)) if v.starts_with("HTTP/") => code
                .parse::<u16>()
                .map_err(|_| format!("bad status line {status_line:?}"))?,
            _ => return Err(format!("not an HTTP response: {status_line:?}")),
        };
        let rest = &raw[end + 4..];
        if (100..200).contains(&status) && status != 101 {
            raw = rest;
            continue;
        }
        let mut length = None;
        let mut chunked = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| format!("bad Content-Length {value:?}"))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value
                    .rsplit(',')
                    .next()
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            }
        }
        let body = if status == 204 || status == 304 {
            Some(Vec::new())
        } else if chunked {
            decode_chunked(rest)?
        } else if let Some(n) = length {
            (rest.len() >= n).then(|| rest[..n].to_vec())
        } else {
            eof.then(|| rest.to_vec())
        };
        return Ok(body.map(|body| Response { status, body }));
    }
}

/// A chunked body; `Ok(None)` until the last chunk (and trailers) arrived.
pub fn decode_chunked(mut data: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let Some(eol) = find(data, b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&data[..eol]).map_err(|_| "bad chunk size".to_string())?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            // Trailers, if any, end with an empty line.
            return Ok(
                (data.starts_with(b"\r\n") || find(data, b"\r\n\r\n").is_some()).then_some(body),
            );
        }
        if data.len() < size + 2 {
            return Ok(None);
        }
        if &data[size..size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".to_string());
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

pub(super) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
