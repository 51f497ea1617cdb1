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

pub(crate) mod http;
mod plan;

pub use plan::plan;
mod render;

pub use crate::catalog::journal::Migration;
pub use http::*;
pub use render::*;

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

/// GETs `path` from the admin API; with `json` prints the body as it is.
/// `Err` holds the exit code when nothing is left to do (printed, or failed).
fn get_or_print(admin: &str, path: &str, json: bool) -> Result<Vec<u8>, i32> {
    let admin = Admin::parse(admin).map_err(|e| fail(&e))?;
    let response = admin
        .call("GET", path, None)
        .map_err(|e| fail(&e.to_string()))?;
    if let Some(e) = response.error() {
        return Err(fail(&e.to_string()));
    }
    if json {
        let body = String::from_utf8_lossy(&response.body);
        let _ = writeln!(std::io::stdout(), "{}", body.trim_end());
        return Err(EXIT_OK);
    }
    Ok(response.body)
}

/// `migrations`: the latest migrations as a table, or the API's JSON as is.
pub fn list(admin: &str, json: bool) -> i32 {
    let body = match get_or_print(admin, "/api/migrations", json) {
        Ok(b) => b,
        Err(code) => return code,
    };
    match serde_json::from_slice::<Vec<Migration>>(&body) {
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

#[cfg(test)]
mod tests;
