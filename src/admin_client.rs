//! The operator's side of `/api/migrations`: what the `migrate`, `split`,
//! `merge`, `drain` and `migrations` subcommands do. They post a request to
//! a running proxy's admin API, then (with `--wait`) follow each migration
//! it started until it is done or aborted, or list the latest migrations.
//!
//! The admin API is plain HTTP on a private address and the CLI makes a
//! handful of requests, so this speaks just enough HTTP/1.1 over a
//! [`TcpStream`] (one request per connection, `Connection: close`) rather
//! than pulling an HTTP client into the proxy's dependencies.
//!
//! Exit codes: 0 when everything was accepted (and, with `--wait`, done),
//! 1 when a followed migration aborted, 2 when the request was refused or
//! the admin API could not be reached (`error: <message>` on stderr).

use std::io::{IsTerminal, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Where `--admin` points unless told otherwise (the sample config's
/// `admin_listen`).
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:9187";

/// Every migration accepted (and, when followed, done).
pub const EXIT_OK: i32 = 0;
/// A followed migration aborted.
pub const EXIT_ABORTED: i32 = 1;
/// The request was refused, or the admin API could not be reached.
pub const EXIT_ERROR: i32 = 2;

/// How often `--wait` asks for a migration's progress.
const POLL: Duration = Duration::from_millis(300);
/// How often, at most, `--wait` prints copy progress when stdout is not a
/// terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(1);
/// How long `--wait` keeps retrying while the admin API does not answer
/// (a proxy restarting, the catalog briefly unavailable).
const UNREACHABLE_GRACE: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Width of the progress bar between its brackets.
const BAR_WIDTH: usize = 20;
/// Longest reason the `migrations` table shows.
const REASON_WIDTH: usize = 60;

/// A request as `POST /api/migrations` takes it.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Move `partition` to node `to`.
    Move { partition: u32, to: String },
    /// Split `partition` at hash `at` (the server picks the middle when
    /// absent), then move the upper half to `to` if given.
    Split {
        partition: u32,
        at: Option<i64>,
        to: Option<String>,
    },
    /// Merge two adjacent partitions on one node.
    Merge { partitions: Vec<u32> },
    /// Move every partition off `node`.
    Drain { node: String },
}

impl Request {
    /// The JSON body; optional fields are left out rather than sent as null.
    pub fn body(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Request::Move { partition, to } => {
                json!({ "kind": "move", "partition": partition, "to": to })
            }
            Request::Split { partition, at, to } => {
                let mut body = json!({ "kind": "split", "partition": partition });
                if let Some(at) = at {
                    body["at"] = json!(at);
                }
                if let Some(to) = to {
                    body["to"] = json!(to);
                }
                body
            }
            Request::Merge { partitions } => json!({ "kind": "merge", "partitions": partitions }),
            Request::Drain { node } => json!({ "kind": "drain", "node": node }),
        }
    }
}

pub use crate::catalog::journal::Migration;

/// `move p3 a→b`, or `split p3 on a` when source and target are one node.
fn describe(m: &Migration) -> String {
    let route = if m.source == m.target {
        format!("on {}", m.source)
    } else {
        format!("{}→{}", m.source, m.target)
    };
    format!("{} p{} {route}", m.kind, m.partition)
}

/// Seconds from `started` to `finished`, when both parse.
fn elapsed_secs(m: &Migration) -> Option<f64> {
    let start = parse_timestamp(&m.started)?;
    let end = parse_timestamp(m.finished.as_deref()?)?;
    Some((end - start).max(0.0))
}

// ---------------------------------------------------------------------------
// The subcommands

/// `migrate`, `split`, `merge`, `drain`: posts `request`; with `wait`,
/// follows every migration it started. Returns the exit code.
pub fn submit(admin: &str, request: &Request, wait: bool) -> i32 {
    let admin = match Admin::parse(admin) {
        Ok(a) => a,
        Err(e) => return fail(&e),
    };
    let body = request.body().to_string();
    let reply = match admin.json("POST", "/api/migrations", Some(&body)) {
        Ok(v) => v,
        Err(e) => return fail(&e.to_string()),
    };
    let ids = match accepted_ids(&reply) {
        Some(ids) => ids,
        None => {
            return fail(&format!(
                "the admin API accepted the request but named no migration: {reply}"
            ))
        }
    };
    let mut out = std::io::stdout();
    for id in &ids {
        // Ignored, like every write here: a closed pipe must not panic.
        let _ = writeln!(out, "migration {id} accepted");
    }
    if !wait {
        return EXIT_OK;
    }
    let tty = std::io::stdout().is_terminal();
    let mut aborted = false;
    for id in ids {
        match follow(&admin, id, tty) {
            Ok(m) => aborted |= m.state == "aborted",
            Err(e) => return fail(&e),
        }
    }
    if aborted {
        EXIT_ABORTED
    } else {
        EXIT_OK
    }
}

/// `migrations`: the latest migrations as a table, or the API's JSON as is.
pub fn list(admin: &str, json: bool) -> i32 {
    let admin = match Admin::parse(admin) {
        Ok(a) => a,
        Err(e) => return fail(&e),
    };
    let response = match admin.call("GET", "/api/migrations", None) {
        Ok(r) => r,
        Err(e) => return fail(&e.to_string()),
    };
    if let Some(e) = response.error() {
        return fail(&e.to_string());
    }
    if json {
        let body = String::from_utf8_lossy(&response.body);
        let _ = writeln!(std::io::stdout(), "{}", body.trim_end());
        return EXIT_OK;
    }
    match serde_json::from_slice::<Vec<Migration>>(&response.body) {
        Ok(list) => {
            let _ = write!(std::io::stdout(), "{}", render_table(&list));
            EXIT_OK
        }
        Err(e) => fail(&format!(
            "the admin API's migration list is not what this CLI expects: {e}"
        )),
    }
}

fn fail(message: &str) -> i32 {
    eprintln!("error: {message}");
    EXIT_ERROR
}

/// The ids in a `202` reply: `ids`, or `id` alone.
fn accepted_ids(reply: &serde_json::Value) -> Option<Vec<i64>> {
    if let Some(ids) = reply.get("ids").and_then(|v| v.as_array()) {
        let ids: Vec<i64> = ids.iter().filter_map(|v| v.as_i64()).collect();
        if !ids.is_empty() {
            return Some(ids);
        }
    }
    reply.get("id").and_then(|v| v.as_i64()).map(|id| vec![id])
}

/// Polls migration `id` until it is done or aborted, drawing its progress,
/// and prints its final line.
fn follow(admin: &Admin, id: i64, tty: bool) -> Result<Migration, String> {
    let mut out = std::io::stdout();
    let path = format!("/api/migrations/{id}");
    let width = terminal_width();
    let mut drawn = false;
    let mut last_state: Option<String> = None;
    let mut last_print = Instant::now();
    let mut last_rows = -1;
    let mut failing_since: Option<Instant> = None;
    loop {
        let got = admin
            .json("GET", &path, None)
            .and_then(|v| serde_json::from_value::<Migration>(v).map_err(ApiError::decode));
        match got {
            Ok(m) => {
                failing_since = None;
                if m.finished() {
                    if drawn {
                        let _ = write!(out, "\r\x1b[K");
                    }
                    let _ = writeln!(out, "{}", final_line(&m));
                    let _ = out.flush();
                    return Ok(m);
                }
                if tty {
                    let line = fit(&progress_line(&m, BAR_WIDTH), width);
                    let _ = write!(out, "\r{line}\x1b[K");
                    let _ = out.flush();
                    drawn = true;
                } else {
                    let changed = last_state.as_deref() != Some(m.state.as_str());
                    let copying = m.state == "copying"
                        && m.rows_copied != last_rows
                        && last_print.elapsed() >= PLAIN_EVERY;
                    if changed || copying {
                        let mut line = plain_line(&m);
                        if last_state.is_none() {
                            line.push_str(&format!(" ({})", describe(&m)));
                        }
                        let _ = writeln!(out, "{line}");
                        let _ = out.flush();
                        last_print = Instant::now();
                        last_rows = m.rows_copied;
                        last_state = Some(m.state.clone());
                    }
                }
            }
            Err(e) if e.transient() => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= UNREACHABLE_GRACE {
                    if drawn {
                        let _ = writeln!(out);
                    }
                    return Err(format!(
                        "{e} (gave up following migration {id} after {}s)",
                        UNREACHABLE_GRACE.as_secs()
                    ));
                }
            }
            Err(e) => {
                if drawn {
                    let _ = writeln!(out);
                }
                return Err(e.to_string());
            }
        }
        std::thread::sleep(POLL);
    }
}

/// `COLUMNS` when the shell exports it; the progress line is cut to fit so
/// that `\r` redraws one line rather than a wrapped pair.
fn terminal_width() -> Option<usize> {
    std::env::var("COLUMNS")
        .ok()?
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|w| *w > 1)
}

fn fit(line: &str, width: Option<usize>) -> String {
    match width {
        Some(w) if line.chars().count() >= w => line.chars().take(w - 1).collect(),
        _ => line.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Rendering

/// The live line on a terminal:
/// `migration 7 move p3 a→b  copying  [#########-----------] 45%  12,345/27,000 rows  3.1 MB  1.2 MB/s  ETA 4s`.
/// Outside the copy the percentage means nothing, so it shows the step.
pub fn progress_line(m: &Migration, bar_width: usize) -> String {
    let mut line = format!("migration {} {}  {}", m.id, describe(m), m.state);
    if m.state == "copying" {
        let fraction = fraction(m.rows_copied, m.rows_total);
        line.push_str(&format!(
            "  {} {:>3}%  {}/{} rows  {}",
            bar(fraction, bar_width),
            (fraction * 100.0).floor() as u32,
            fmt_count(m.rows_copied),
            fmt_count(m.rows_total),
            fmt_bytes(m.bytes_copied as f64),
        ));
        if m.rate > 0.0 {
            line.push_str(&format!("  {}/s", fmt_bytes(m.rate)));
        }
        if let Some(eta) = m.eta_secs {
            line.push_str(&format!("  ETA {}", fmt_secs(eta)));
        }
    } else if m.rows_copied > 0 {
        line.push_str(&format!(
            "  {} rows  {} copied",
            fmt_count(m.rows_copied),
            fmt_bytes(m.bytes_copied as f64)
        ));
    }
    line
}

/// One line per state change (or per second of copying) when stdout is not
/// a terminal: `migration 7: copying 12345/27000 rows, 3.1 MB, 1.2 MB/s, ETA 4s`.
pub fn plain_line(m: &Migration) -> String {
    let mut line = format!("migration {}: {}", m.id, m.state);
    if m.state == "copying" {
        line.push_str(&format!(
            " {}/{} rows, {}",
            m.rows_copied,
            m.rows_total,
            fmt_bytes(m.bytes_copied as f64)
        ));
        if m.rate > 0.0 {
            line.push_str(&format!(", {}/s", fmt_bytes(m.rate)));
        }
        if let Some(eta) = m.eta_secs {
            line.push_str(&format!(", ETA {}", fmt_secs(eta)));
        }
    }
    line
}

/// `migration 7 done in 2.3s (27000 rows, 3.1 MB; writes held 85 ms)`, or
/// `migration 7 aborted: <reason>`. A split or merge (no rows copied) says
/// what it did instead.
pub fn final_line(m: &Migration) -> String {
    if m.state == "aborted" {
        return format!(
            "migration {} aborted: {}",
            m.id,
            m.reason.as_deref().unwrap_or("no reason recorded")
        );
    }
    let mut line = format!("migration {} {}", m.id, m.state);
    if let Some(secs) = elapsed_secs(m) {
        line.push_str(&format!(" in {}", fmt_duration(secs)));
    }
    match m.reason.as_deref() {
        Some(reason) if m.kind != "move" && m.rows_copied == 0 => {
            line.push_str(&format!(": {reason}"));
        }
        _ => {
            line.push_str(&format!(
                " ({} rows, {}",
                m.rows_copied,
                fmt_bytes(m.bytes_copied as f64)
            ));
            if let Some(ms) = m.pause_ms {
                line.push_str(&format!("; writes held {}", fmt_ms(ms)));
            }
            line.push(')');
        }
    }
    line
}

/// The `migrations` table, newest first as the API lists them.
pub fn render_table(list: &[Migration]) -> String {
    if list.is_empty() {
        return "no migrations\n".to_string();
    }
    let header = [
        "ID",
        "KIND",
        "PARTITION",
        "SOURCE→TARGET",
        "STATE",
        "ROWS",
        "BYTES",
        "PAUSE MS",
        "REASON",
    ];
    // Numbers right-aligned, text left.
    let right = [true, false, true, false, false, true, true, true, false];
    let rows: Vec<[String; 9]> = list
        .iter()
        .map(|m| {
            [
                m.id.to_string(),
                m.kind.clone(),
                m.partition.to_string(),
                format!("{}→{}", m.source, m.target),
                m.state.clone(),
                format!("{}/{}", fmt_count(m.rows_copied), fmt_count(m.rows_total)),
                fmt_bytes(m.bytes_copied as f64),
                m.pause_ms
                    .map_or_else(|| "-".to_string(), |ms| format!("{ms:.0}")),
                m.reason
                    .as_deref()
                    .map_or_else(|| "-".to_string(), |r| truncate(r, REASON_WIDTH)),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = header.map(str::to_string);
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = " ".repeat(widths[i] - cell.chars().count());
            if right[i] {
                line.push_str(&pad);
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&pad);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `[#########-----------]` for `fraction` of `width`.
pub fn bar(fraction: f64, width: usize) -> String {
    let filled = ((fraction.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

fn fraction(done: i64, total: i64) -> f64 {
    if total <= 0 {
        0.0
    } else {
        (done as f64 / total as f64).clamp(0.0, 1.0)
    }
}

/// Bytes with one decimal in B, kB, MB, GB or TB (powers of 1000).
pub fn fmt_bytes(bytes: f64) -> String {
    if !bytes.is_finite() || bytes < 999.5 {
        return format!("{} B", bytes.max(0.0).round() as u64);
    }
    let mut value = bytes;
    for unit in ["kB", "MB", "GB"] {
        value /= 1000.0;
        // 999.96 kB would print as 1000.0 kB: call that 1.0 MB.
        if value < 999.95 {
            return format!("{value:.1} {unit}");
        }
    }
    format!("{:.1} TB", value / 1000.0)
}

/// `12,345`.
pub fn fmt_count(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

/// An ETA: `4s`, `2m05s`, `1h03m`.
pub fn fmt_secs(secs: f64) -> String {
    let s = secs.max(0.0).ceil() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// How long a migration took: `2.3s` under a minute, then as [`fmt_secs`].
pub fn fmt_duration(secs: f64) -> String {
    if secs < 59.95 {
        format!("{:.1}s", secs.max(0.0))
    } else {
        fmt_secs(secs)
    }
}

/// `85 ms`, or `0.4 ms` for very short holds.
fn fmt_ms(ms: f64) -> String {
    if ms < 9.95 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

fn truncate(s: &str, max: usize) -> String {
    let s = s.replace(['\n', '\r'], " ");
    if s.chars().count() <= max {
        s
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

/// Seconds since the epoch of a timestamp as Postgres prints a
/// `timestamptz` (`2024-05-01 12:34:56.123456+00`, offsets like `+05:30`;
/// an ISO `T` and `Z` are taken too). `None` for anything else.
pub fn parse_timestamp(s: &str) -> Option<f64> {
    let s = s.trim();
    let num = |t: &str| -> Option<i64> {
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
    };
    let (date, rest) = (s.get(..10)?, s.get(10..)?);
    let mut d = date.split('-');
    let (y, mo, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&day) {
        return None;
    }
    let rest = rest.strip_prefix([' ', 'T'])?;
    let (time, offset) = match rest.find(['+', '-', 'Z']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let mut t = time.split(':');
    let (h, mi) = (num(t.next()?)?, num(t.next()?)?);
    let sec: f64 = match t.next() {
        Some(sec) if sec.bytes().all(|b| b.is_ascii_digit() || b == b'.') => sec.parse().ok()?,
        Some(_) => return None,
        None => 0.0,
    };
    if t.next().is_some() {
        return None;
    }
    let offset_secs = match offset {
        "" | "Z" => 0,
        o => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let o = &o[1..];
            let parts: Vec<&str> = if o.contains(':') {
                o.split(':').collect()
            } else if o.len() == 4 {
                vec![&o[..2], &o[2..]]
            } else {
                vec![o]
            };
            let mut secs = 0;
            for (part, unit) in parts.iter().zip([3600, 60, 1]) {
                secs += num(part)? * unit;
            }
            if parts.len() > 3 {
                return None;
            }
            sign * secs
        }
    };
    let days = days_from_civil(y, mo, day);
    Some((days * 86_400 + h * 3600 + mi * 60 - offset_secs) as f64 + sec)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = (if y >= 0 { y } else { y - 399 }) / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

// ---------------------------------------------------------------------------
// HTTP

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
    fn decode(e: impl std::fmt::Display) -> ApiError {
        ApiError::Decode(format!("the admin API answered something unexpected: {e}"))
    }

    /// Worth retrying while following: the proxy or its catalog may be back
    /// in a moment.
    fn transient(&self) -> bool {
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
    fn error(&self) -> Option<ApiError> {
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

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copying() -> Migration {
        Migration {
            id: 7,
            kind: "move".into(),
            partition: 3,
            source: "a".into(),
            target: "b".into(),
            state: "copying".into(),
            rows_total: 27_000,
            rows_copied: 12_345,
            bytes_copied: 3_100_000,
            rate: 1_200_000.0,
            eta_secs: Some(3.2),
            started: "2024-05-01 12:00:00.000000+00".into(),
            ..Migration::default()
        }
    }

    #[test]
    fn bar_fills_in_proportion() {
        assert_eq!(bar(0.0, 10), "[----------]");
        assert_eq!(bar(0.45, 20), "[#########-----------]");
        assert_eq!(bar(1.0, 10), "[##########]");
        assert_eq!(bar(1.7, 4), "[####]");
        assert_eq!(bar(-1.0, 4), "[----]");
        assert_eq!(bar(f64::NAN, 4).len(), 6);
    }

    #[test]
    fn progress_line_while_copying() {
        assert_eq!(
            progress_line(&copying(), 20),
            "migration 7 move p3 a→b  copying  [#########-----------]  45%  \
             12,345/27,000 rows  3.1 MB  1.2 MB/s  ETA 4s"
        );
    }

    #[test]
    fn progress_line_shows_the_step_outside_the_copy() {
        let mut m = copying();
        m.state = "catching_up".into();
        m.rows_copied = 27_000;
        assert_eq!(
            progress_line(&m, 20),
            "migration 7 move p3 a→b  catching_up  27,000 rows  3.1 MB copied"
        );
        m.state = "planned".into();
        m.rows_copied = 0;
        assert_eq!(progress_line(&m, 20), "migration 7 move p3 a→b  planned");
        // No rows known yet: an empty bar, not a division by zero.
        m.state = "copying".into();
        m.rows_total = 0;
        m.rate = 0.0;
        m.eta_secs = None;
        assert!(progress_line(&m, 4).contains("[----]   0%  0/0 rows  3.1 MB"));
    }

    #[test]
    fn plain_lines() {
        assert_eq!(
            plain_line(&copying()),
            "migration 7: copying 12345/27000 rows, 3.1 MB, 1.2 MB/s, ETA 4s"
        );
        let mut m = copying();
        m.state = "cutting_over".into();
        assert_eq!(plain_line(&m), "migration 7: cutting_over");
    }

    #[test]
    fn final_lines() {
        let mut m = copying();
        m.state = "done".into();
        m.rows_copied = 27_000;
        m.pause_ms = Some(85.2);
        m.finished = Some("2024-05-01 12:00:02.300000+00".into());
        assert_eq!(
            final_line(&m),
            "migration 7 done in 2.3s (27000 rows, 3.1 MB; writes held 85 ms)"
        );
        m.pause_ms = None;
        m.finished = None;
        assert_eq!(final_line(&m), "migration 7 done (27000 rows, 3.1 MB)");

        m.state = "aborted".into();
        m.reason = Some("target node b unreachable".into());
        assert_eq!(
            final_line(&m),
            "migration 7 aborted: target node b unreachable"
        );

        let split = Migration {
            id: 8,
            kind: "split".into(),
            state: "done".into(),
            reason: Some("partition 3 split at 0 into 9 and 10".into()),
            started: "2024-05-01 12:00:00+00".into(),
            finished: Some("2024-05-01 12:00:00.04+00".into()),
            ..Migration::default()
        };
        assert_eq!(
            final_line(&split),
            "migration 8 done in 0.0s: partition 3 split at 0 into 9 and 10"
        );
    }

    #[test]
    fn describe_split_and_move() {
        let mut m = copying();
        assert_eq!(describe(&m), "move p3 a→b");
        m.kind = "split".into();
        m.target = "a".into();
        assert_eq!(describe(&m), "split p3 on a");
    }

    #[test]
    fn byte_units() {
        assert_eq!(fmt_bytes(0.0), "0 B");
        assert_eq!(fmt_bytes(999.0), "999 B");
        assert_eq!(fmt_bytes(1_000.0), "1.0 kB");
        assert_eq!(fmt_bytes(1_234.0), "1.2 kB");
        assert_eq!(fmt_bytes(3_100_000.0), "3.1 MB");
        assert_eq!(fmt_bytes(999_960.0), "1.0 MB");
        assert_eq!(fmt_bytes(2_500_000_000.0), "2.5 GB");
        assert_eq!(fmt_bytes(4.2e12), "4.2 TB");
        assert_eq!(fmt_bytes(-5.0), "0 B");
    }

    #[test]
    fn counts_and_durations() {
        assert_eq!(fmt_count(0), "0");
        assert_eq!(fmt_count(999), "999");
        assert_eq!(fmt_count(1_000), "1,000");
        assert_eq!(fmt_count(12_345), "12,345");
        assert_eq!(fmt_count(1_234_567), "1,234,567");
        assert_eq!(fmt_count(-1_234), "-1,234");
        assert_eq!(fmt_secs(3.2), "4s");
        assert_eq!(fmt_secs(125.0), "2m05s");
        assert_eq!(fmt_secs(3_780.0), "1h03m");
        assert_eq!(fmt_duration(2.34), "2.3s");
        assert_eq!(fmt_duration(65.0), "1m05s");
        assert_eq!(fmt_ms(85.2), "85 ms");
        assert_eq!(fmt_ms(0.42), "0.4 ms");
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:00+00"), Some(0.0));
        assert_eq!(
            parse_timestamp("2024-05-01 12:34:56.5+00"),
            Some(1_714_566_896.5)
        );
        assert_eq!(
            parse_timestamp("2024-05-01 14:34:56.5+02"),
            parse_timestamp("2024-05-01T12:34:56.5Z")
        );
        assert_eq!(
            parse_timestamp("2024-05-01 07:04:56-05:30"),
            parse_timestamp("2024-05-01 12:34:56+00")
        );
        assert_eq!(
            parse_timestamp("2000-02-29 00:00:00+00"),
            Some(951_782_400.0)
        );
        assert_eq!(parse_timestamp("infinity"), None);
        assert_eq!(parse_timestamp("2024-13-01 00:00:00+00"), None);
        assert_eq!(parse_timestamp(""), None);
    }

    #[test]
    fn table_lists_and_truncates() {
        let mut m = copying();
        m.pause_ms = Some(12.0);
        m.reason = Some("x".repeat(100));
        let other = Migration {
            id: 12,
            kind: "split".into(),
            partition: 10,
            source: "a".into(),
            target: "a".into(),
            state: "done".into(),
            ..Migration::default()
        };
        let table = render_table(&[other, m]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ID  KIND   PARTITION  SOURCE→TARGET  STATE"));
        assert!(lines[1].starts_with("12  split         10  a→a            done"));
        assert!(lines[2].contains("12,345/27,000"));
        assert!(lines[2].contains("3.1 MB"));
        let reason = lines[2].rsplit("  ").next().unwrap();
        assert_eq!(reason.chars().count(), REASON_WIDTH);
        assert!(reason.ends_with('…'));
        assert_eq!(render_table(&[]), "no migrations\n");
    }

    #[test]
    fn request_bodies() {
        let split = Request::Split {
            partition: 3,
            at: None,
            to: Some("b".into()),
        };
        assert_eq!(
            split.body(),
            serde_json::json!({"kind": "split", "partition": 3, "to": "b"})
        );
        let split = Request::Split {
            partition: 3,
            at: Some(-42),
            to: None,
        };
        assert_eq!(
            split.body(),
            serde_json::json!({"kind": "split", "partition": 3, "at": -42})
        );
        assert_eq!(
            Request::Merge {
                partitions: vec![3, 4]
            }
            .body(),
            serde_json::json!({"kind": "merge", "partitions": [3, 4]})
        );
        assert_eq!(
            Request::Drain { node: "a".into() }.body(),
            serde_json::json!({"kind": "drain", "node": "a"})
        );
        assert_eq!(
            Request::Move {
                partition: 1,
                to: "b".into()
            }
            .body(),
            serde_json::json!({"kind": "move", "partition": 1, "to": "b"})
        );
    }

    #[test]
    fn accepted_ids_from_reply() {
        let reply = serde_json::json!({"id": 4, "ids": [4, 5]});
        assert_eq!(accepted_ids(&reply), Some(vec![4, 5]));
        assert_eq!(accepted_ids(&serde_json::json!({"id": 9})), Some(vec![9]));
        assert_eq!(accepted_ids(&serde_json::json!({})), None);
    }

    #[test]
    fn admin_urls() {
        let a = Admin::parse("http://127.0.0.1:9187").unwrap();
        assert_eq!(a.authority, "127.0.0.1:9187");
        assert_eq!(a.prefix, "");
        let a = Admin::parse("HTTP://proxy/admin/").unwrap();
        assert_eq!(a.authority, "proxy:80");
        assert_eq!(a.prefix, "/admin");
        assert_eq!(
            Admin::parse("localhost:9187").unwrap().authority,
            "localhost:9187"
        );
        assert_eq!(
            Admin::parse("http://[::1]:9187").unwrap().authority,
            "[::1]:9187"
        );
        assert_eq!(Admin::parse("http://[::1]").unwrap().authority, "[::1]:80");
        assert!(Admin::parse("https://127.0.0.1:9187").is_err());
        assert!(Admin::parse("http://").is_err());
    }

    #[test]
    fn request_text() {
        let r = build_request("POST", "h:1", "/api/migrations", Some("{}"));
        assert!(r.starts_with("POST /api/migrations HTTP/1.1\r\nHost: h:1\r\n"));
        assert!(r.contains("\r\nConnection: close\r\n"));
        assert!(r.contains("\r\nContent-Type: application/json\r\n"));
        assert!(r.ends_with("\r\nContent-Length: 2\r\n\r\n{}"));
        let r = build_request("GET", "h:1", "/api/migrations/3", None);
        assert!(r.ends_with("\r\nContent-Length: 0\r\n\r\n"));
        assert!(!r.contains("Content-Type"));
    }

    #[test]
    fn response_with_content_length() {
        let raw = b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\n\
                    content-length: 19\r\n\r\n{\"id\":4,\"ids\":[4]}\n";
        let r = parse_response(raw, false).unwrap().unwrap();
        assert_eq!(r.status, 202);
        assert_eq!(r.body, b"{\"id\":4,\"ids\":[4]}\n");
        // Short of the length: wait for more.
        assert_eq!(parse_response(&raw[..raw.len() - 3], false), Ok(None));
        // Headers not complete yet.
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\nconte", false), Ok(None));
    }

    #[test]
    fn chunked_response() {
        let raw = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n\
                    5\r\n{\"err\r\n14;ext=1\r\nor\":\"no migration 9\"\r\n1\r\n}\r\n0\r\n\r\n";
        let r = parse_response(raw, false).unwrap().unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.body, b"{\"error\":\"no migration 9\"}");
        // Every prefix short of the final empty line is incomplete.
        for cut in 0..raw.len() {
            assert_eq!(parse_response(&raw[..cut], false), Ok(None), "cut at {cut}");
        }
        // Trailers after the last chunk.
        let trailers = b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n\
                         2\r\n[]\r\n0\r\nx-a: b\r\n\r\n";
        let r = parse_response(trailers, false).unwrap().unwrap();
        assert_eq!(r.body, b"[]");
        assert!(decode_chunked(b"zz\r\n").is_err());
        assert!(decode_chunked(b"2\r\nabcd\r\n").is_err());
    }

    #[test]
    fn response_until_eof_and_interim() {
        let raw = b"HTTP/1.0 200 OK\r\n\r\n[]";
        assert_eq!(parse_response(raw, false), Ok(None));
        assert_eq!(parse_response(raw, true).unwrap().unwrap().body, b"[]");
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]";
        let r = parse_response(raw, false).unwrap().unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"[]"[..]));
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n", false).is_err());
    }

    #[test]
    fn error_messages_from_bodies() {
        let r = Response {
            status: 409,
            body: br#"{"error":"partition 3 is already migrating"}"#.to_vec(),
        };
        let e = r.error().unwrap();
        assert_eq!(e.to_string(), "partition 3 is already migrating");
        assert!(!e.transient());
        let r = Response {
            status: 503,
            body: b"upstream down".to_vec(),
        };
        let e = r.error().unwrap();
        assert_eq!(
            e.to_string(),
            "the admin API answered HTTP 503: upstream down"
        );
        assert!(e.transient());
        assert!(Response {
            status: 202,
            body: vec![]
        }
        .error()
        .is_none());
    }

    #[test]
    fn migration_json_from_the_api() {
        let v = serde_json::json!({
            "id": 7, "kind": "move", "partition": 3, "source": "a", "target": "b",
            "lo": -5, "hi": 5, "state": "done", "rows_total": 10, "rows_copied": 10,
            "bytes_copied": 2048, "rate": 100.5, "eta_secs": null, "pause_ms": 3.5,
            "reason": null, "owner": "p1", "started": "2024-05-01 12:00:00+00",
            "finished": "2024-05-01 12:00:01.5+00"
        });
        let m: Migration = serde_json::from_value(v).unwrap();
        assert!(m.finished());
        assert_eq!(elapsed_secs(&m), Some(1.5));
        assert_eq!(
            final_line(&m),
            "migration 7 done in 1.5s (10 rows, 2.0 kB; writes held 3.5 ms)"
        );
    }
}
