//! Session settings under transaction pooling.
//!
//! A client's `SET` (and the parameters it sent at startup) must follow it
//! from one pooled server connection to the next, and must not leak to the
//! next client. Each client keeps its settings as `SET` statements plus a
//! fingerprint; each server connection remembers the fingerprint it last
//! applied. On checkout, a mismatch costs one pipelined `RESET ALL; SET …`.

use std::hash::{Hash, Hasher};

/// Startup parameters that are not session settings.
const NOT_SETTINGS: &[&str] = &[
    "user",
    "database",
    "options",
    "replication",
    "application_name",
    "fallback_application_name",
];

#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `(lower-cased name, SET statement)`, in the order set.
    vars: Vec<(String, String)>,
    fingerprint: u64,
}

/// A fingerprint no connection has: forces a reset before the next use.
pub const UNKNOWN: u64 = u64::MAX;

impl Settings {
    /// Settings implied by a client's startup parameters, skipping those
    /// equal to the server's defaults.
    pub fn from_startup(client: &[(String, String)], server: &[(String, String)]) -> Self {
        let mut s = Settings::default();
        for (k, v) in client {
            if NOT_SETTINGS.contains(&k.as_str()) {
                continue;
            }
            let same = server
                .iter()
                .any(|(sk, sv)| sk.eq_ignore_ascii_case(k) && same_value(k, sv, v));
            if !same {
                s.put(
                    k.to_ascii_lowercase(),
                    format!("SET {} = '{}'", quote_ident(k), v.replace('\'', "''")),
                );
            }
        }
        s
    }

    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The statement that brings a connection from defaults to these settings.
    pub fn sync_sql(&self) -> String {
        let mut sql = String::from("RESET ALL");
        for (_, stmt) in &self.vars {
            sql.push_str("; ");
            sql.push_str(stmt);
        }
        sql
    }

    fn put(&mut self, name: String, stmt: String) {
        self.vars.retain(|(n, _)| *n != name);
        self.vars.push((name, stmt));
        self.rehash();
    }

    fn rehash(&mut self) {
        if self.vars.is_empty() {
            self.fingerprint = 0;
            return;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.vars.hash(&mut h);
        self.fingerprint = h.finish().clamp(1, UNKNOWN - 1);
    }

    /// Records a successful session-level `SET`/`RESET`/`DISCARD` statement.
    /// Returns false if the statement is not one (e.g. `SET LOCAL`).
    pub fn apply(&mut self, sql: &str) -> bool {
        let words: Vec<String> = sql
            .split_whitespace()
            .take(4)
            .map(|w| w.trim_end_matches(';').to_ascii_lowercase())
            .collect();
        let w = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
        match (w(0), w(1)) {
            ("set", "local") | ("set", "transaction") | ("set", "constraints") => false,
            ("reset", "all") | ("discard", "all") => {
                self.vars.clear();
                self.rehash();
                true
            }
            ("reset", name) => {
                let name = name.to_string();
                self.vars.retain(|(n, _)| *n != name);
                self.rehash();
                true
            }
            ("set", "session") if w(2) != "authorization" && w(2) != "characteristics" => {
                let name = setting_name(w(2));
                self.put(name, sql.trim().trim_end_matches(';').to_string());
                true
            }
            ("set", name) if !name.is_empty() && name != "session" && name != "role" => {
                let name = setting_name(name);
                self.put(name, sql.trim().trim_end_matches(';').to_string());
                true
            }
            _ => false,
        }
    }
}

fn setting_name(word: &str) -> String {
    word.split(['=', ' ']).next().unwrap_or(word).to_string()
}

/// Whether a client's startup value means the server's (`'utf-8'` is UTF8).
pub fn same_value(name: &str, server: &str, client: &str) -> bool {
    let norm = |v: &str| v.to_ascii_lowercase().replace(['-', '_', ' ', '\''], "");
    if name.eq_ignore_ascii_case("client_encoding") {
        let c = norm(client);
        return norm(server) == c || (norm(server) == "utf8" && c == "unicode");
    }
    norm(server) == norm(client)
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn startup_params_equal_to_server_defaults_cost_nothing() {
        let server = p(&[("client_encoding", "UTF8"), ("DateStyle", "ISO, MDY")]);
        let s = Settings::from_startup(&p(&[("user", "u"), ("client_encoding", "utf8")]), &server);
        assert_eq!(s.fingerprint(), 0);
        let s = Settings::from_startup(
            &p(&[("extra_float_digits", "2"), ("DateStyle", "ISO")]),
            &server,
        );
        assert_ne!(s.fingerprint(), 0);
        assert_eq!(
            s.sync_sql(),
            "RESET ALL; SET \"extra_float_digits\" = '2'; SET \"DateStyle\" = 'ISO'"
        );
    }

    #[test]
    fn set_and_reset_track_the_session() {
        let mut s = Settings::default();
        assert!(s.apply("SET search_path TO app"));
        let fp = s.fingerprint();
        assert!(s.apply("set search_path = other;"));
        assert_ne!(s.fingerprint(), fp);
        assert_eq!(s.sync_sql(), "RESET ALL; set search_path = other");
        assert!(!s.apply("SET LOCAL statement_timeout = 5"));
        assert!(s.apply("RESET search_path"));
        assert_eq!(s.fingerprint(), 0);
        s.apply("SET a.b = 1");
        assert!(s.apply("DISCARD ALL"));
        assert_eq!(s.fingerprint(), 0);
    }
}
