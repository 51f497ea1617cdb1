//! Proxy-wide names of prepared statements, and their renewal.
//!
//! Server connections are shared, so a client's named statement is prepared
//! on them under a name derived from its text and parameter types
//! (`sc_<id>`), once per connection, whichever client asked first. A schema
//! change can break such a statement on the server ("cached plan must not
//! change result type", or a parameter type that no longer exists). On a
//! server, only a new Parse gives the client a working statement, and
//! statements prepared before stay broken. The same here: once a server
//! reports a statement broken, its text gets a new id, so a client that
//! prepares it again gets a new statement on every connection, while the
//! broken one fails for the clients still using it — as each of their
//! sessions would on a server.
//!
//! Two things a server would take into account at Parse are part of the id
//! as well: the client's session settings (a `search_path` decides which
//! table a name means), and the schema changes that went through the proxy
//! since (a statement prepared after an `ALTER TABLE` is a new statement,
//! not the one prepared before it).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

/// The id of a statement's text and parameter types under the client's
/// session settings (their fingerprint) and a schema epoch (never 0: that
/// is the unnamed statement).
pub fn statement_id(sql: &str, types: &[u8], settings: u64, schema: u64) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    sql.hash(&mut h);
    types.hash(&mut h);
    settings.hash(&mut h);
    schema.hash(&mut h);
    h.finish().max(1)
}

/// Whether a statement may change what prepared statements mean
/// (`CREATE`, `ALTER`, `DROP`, or a `DO` block that may do the same).
pub fn changes_schema(sql: &str) -> bool {
    let first = sql
        .trim_start_matches(|c: char| c.is_whitespace() || c == '(')
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("");
    ["create", "alter", "drop", "do"]
        .iter()
        .any(|k| first.eq_ignore_ascii_case(k))
}

/// The name a statement has on every server connection.
pub fn server_name(id: u64) -> String {
    format!("sc_{id:016x}")
}

/// Broken statement ids and the ids their texts use now, and the schema
/// epoch.
#[derive(Debug, Default)]
pub struct Renewals {
    /// Nothing renewed yet: the usual case costs no lock.
    any: AtomicBool,
    next: Mutex<HashMap<u64, u64>>,
    schema: AtomicU64,
}

impl Renewals {
    /// Schema changes seen so far (part of every new statement's id).
    pub fn schema_epoch(&self) -> u64 {
        self.schema.load(Ordering::Relaxed)
    }

    /// A statement that may change the schema went through the proxy.
    pub fn schema_changed(&self) {
        self.schema.fetch_add(1, Ordering::Relaxed);
    }

    /// The id a new Parse of a text with this id uses.
    pub fn current(&self, id: u64) -> u64 {
        if !self.any.load(Ordering::Relaxed) {
            return id;
        }
        let next = self.next.lock();
        let mut id = id;
        while let Some(n) = next.get(&id) {
            id = *n;
        }
        id
    }

    /// A server reported the statement `id` broken.
    pub fn renew(&self, id: u64) {
        let mut next = self.next.lock();
        if next.contains_key(&id) {
            return;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (id, "renewed").hash(&mut h);
        next.insert(id, h.finish().max(1));
        self.any.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewed_text_gets_a_new_id_each_time() {
        let r = Renewals::default();
        let a = statement_id("SELECT * FROM t", &[0, 0], 0, 0);
        assert_ne!(a, statement_id("SELECT * FROM t", &[0, 0], 1, 0));
        assert_ne!(a, statement_id("SELECT * FROM t", &[0, 0], 0, 1));
        assert_eq!(r.current(a), a);
        r.renew(a);
        let b = r.current(a);
        assert_ne!(b, a);
        r.renew(a);
        assert_eq!(r.current(a), b, "renewing an old id again changes nothing");
        r.renew(b);
        let c = r.current(a);
        assert!(c != a && c != b);
        assert_eq!(server_name(1), "sc_0000000000000001");
    }

    #[test]
    fn schema_changes_are_recognised() {
        assert!(changes_schema("ALTER TABLE t ADD c int"));
        assert!(changes_schema("  create type x as (a int)"));
        assert!(changes_schema("DO $$ BEGIN END $$"));
        assert!(!changes_schema("SELECT 1"));
        assert!(!changes_schema("DOUBLE"));
    }
}
