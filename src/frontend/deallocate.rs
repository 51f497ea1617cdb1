//! `DEALLOCATE`, `DISCARD ALL` and `EXECUTE` for the client's prepared
//! statements.
//!
//! A client's protocol-level statements live in the session (on servers
//! they have proxy-wide names, see `batch`), so SQL that names them must be
//! answered here: `DEALLOCATE name` forgets the client's name as a server
//! would drop its statement; `DEALLOCATE ALL` and `DISCARD ALL` forget them
//! all and still go to the server, which drops what the session created
//! there with SQL `PREPARE`. SQL `EXECUTE name` of a statement the client
//! prepared by the protocol runs the statement under its server name, made
//! on the connection first if missing.

use super::session::Session;
use crate::protocol::messages::{command_complete, ready_for_query};

/// What a `DEALLOCATE` statement names.
#[derive(Debug, PartialEq, Eq)]
pub enum Deallocate {
    All,
    Name(String),
}

/// Reads `DEALLOCATE [PREPARE] { name | ALL }`; None for anything else.
pub fn parse_deallocate(sql: &str) -> Option<Deallocate> {
    let sql = sql.trim().trim_end_matches(';').trim();
    let mut words = sql.split_whitespace();
    if !words.next()?.eq_ignore_ascii_case("deallocate") {
        return None;
    }
    let mut name = words.next()?;
    if name.eq_ignore_ascii_case("prepare") {
        name = words.next()?;
    }
    if words.next().is_some() {
        return None;
    }
    if name.eq_ignore_ascii_case("all") {
        return Some(Deallocate::All);
    }
    // An identifier: quoted as is, unquoted folded to lower case.
    let name = match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        Some(q) => q.replace("\"\"", "\""),
        None => name.to_ascii_lowercase(),
    };
    Some(Deallocate::Name(name))
}

/// Whether `sql` is `DISCARD ALL`.
pub fn is_discard_all(sql: &str) -> bool {
    let mut w = sql.trim().trim_end_matches(';').split_whitespace();
    matches!((w.next(), w.next(), w.next()), (Some(a), Some(b), None)
        if a.eq_ignore_ascii_case("discard") && b.eq_ignore_ascii_case("all"))
}

/// `EXECUTE name[(args)]`: the name and the text after it.
pub fn parse_execute(sql: &str) -> Option<(&str, &str)> {
    let sql = sql.trim_start();
    let rest = sql.get(7..)?;
    if !sql[..7].eq_ignore_ascii_case("execute") || !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let rest = rest.trim_start();
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '(' || c == ';')
        .unwrap_or(rest.len());
    Some((&rest[..end], &rest[end..]))
}

impl Session {
    /// The same for a Parse of `EXECUTE name` (the extended protocol): the
    /// Parse under the statement's server name.
    pub(super) fn execute_parse_of(
        &mut self,
        f: &crate::protocol::Frame,
    ) -> Option<crate::protocol::Frame> {
        if self.statements.is_empty() {
            return None;
        }
        let p = crate::protocol::messages::parse_parse(f).ok()?;
        let (name, rest) = parse_execute(p.query)?;
        let stmt = self.statements.get(name)?.clone();
        let query = format!("EXECUTE {}{rest}", stmt.server_name);
        let parse = crate::protocol::messages::encode_parse(p.name, &query, p.param_types);
        self.ensure_stmt = Some(stmt);
        Some(parse)
    }

    /// SQL `EXECUTE` of one of the client's protocol statements: the query
    /// under the statement's server name, and the statement to make on the
    /// connection first (see `prelude`).
    pub(super) fn execute_sql_of(&mut self, sql: &str) -> Option<crate::protocol::Frame> {
        let (name, rest) = parse_execute(sql)?;
        let stmt = self.statements.get(name)?.clone();
        let query = format!("EXECUTE {}{rest}", stmt.server_name);
        self.ensure_stmt = Some(stmt);
        Some(crate::protocol::messages::encode_query(&query))
    }

    /// `DEALLOCATE name` of one of the client's statements: answered here
    /// (true). Anything else goes to the server (false), after `ALL` has
    /// forgotten the client's statements.
    pub(super) fn deallocate(&mut self, what: Deallocate) -> bool {
        match what {
            Deallocate::All => {
                self.forget_statements();
                false
            }
            Deallocate::Name(name) => {
                if self.statements.remove(&name).is_none() {
                    // Perhaps a statement of SQL PREPARE: the server knows.
                    return false;
                }
                self.write(&command_complete("DEALLOCATE"));
                self.write(&ready_for_query(self.status()));
                true
            }
        }
    }

    /// The client's protocol-level statements are gone (`DISCARD ALL`,
    /// `DEALLOCATE ALL`).
    pub(super) fn forget_statements(&mut self) {
        self.statements.clear();
        self.unnamed = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_deallocate_forms() {
        assert_eq!(parse_deallocate("DEALLOCATE ALL"), Some(Deallocate::All));
        assert_eq!(
            parse_deallocate("deallocate prepare Foo;"),
            Some(Deallocate::Name("foo".into()))
        );
        assert_eq!(
            parse_deallocate("DEALLOCATE \"Foo\"\"x\""),
            Some(Deallocate::Name("Foo\"x".into()))
        );
        assert_eq!(parse_deallocate("DEALLOCATE"), None);
        assert_eq!(parse_deallocate("SELECT 1"), None);
        assert!(is_discard_all(" discard ALL; "));
        assert!(!is_discard_all("DISCARD PLANS"));
        assert_eq!(parse_execute("EXECUTE foo(1, 2)"), Some(("foo", "(1, 2)")));
        assert_eq!(parse_execute("execute foo"), Some(("foo", "")));
        assert_eq!(parse_execute("EXECUTED"), None);
    }
}
