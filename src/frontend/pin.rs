//! Session state a transaction pooler cannot move: a `WITH HOLD` cursor, a
//! session-level advisory lock, a temporary table, a statement of SQL
//! `PREPARE`. They live in one server connection, so once a client makes
//! one, it keeps that connection — pinned — until `DISCARD ALL` or the end
//! of its session, instead of losing them silently on the next checkout.
//! (The proxy cannot tell when the last of them is gone: `CLOSE`, `DROP`
//! or an unlock leave the pin in place.) On several nodes, a pinned client's
//! statements for another node are refused with `0A000`, naming the pin.

use super::error::FrontendError;
use super::session::Session;
use crate::protocol::sqlstate;

/// What a statement's text says about session state. Read once per text
/// (a prepared statement keeps its own), with one lower-cased copy and
/// fast substring searches: it runs for every statement.
#[derive(Debug, Clone, Copy, Default)]
pub struct Traits {
    /// What in it must stay on its server connection, if anything.
    pub pin: Option<&'static str>,
    /// It may send a notification (NOTIFY, pg_notify).
    pub notifies: bool,
}

impl Traits {
    pub fn of(sql: &str) -> Self {
        let mut low = smallvec::SmallVec::<[u8; 256]>::from_slice(sql.as_bytes());
        low.make_ascii_lowercase();
        Self {
            pin: pin_reason(&low),
            notifies: has(&low, NOTIFY),
        }
    }
}

/// What `has` looks for, by index.
const NEEDLES: [&str; 5] = [
    "notify",
    "advisory_lock",
    "advisory_lock_all",
    " into temp",
    "with hold",
];
const NOTIFY: usize = 0;
const ADVISORY_LOCK: usize = 1;
const ADVISORY_LOCK_ALL: usize = 2;
const INTO_TEMP: usize = 3;
const WITH_HOLD: usize = 4;

fn has(low: &[u8], needle: usize) -> bool {
    use memchr::memmem::Finder;
    use std::sync::LazyLock;
    // Built once: a searcher's set-up costs more than a short search.
    static FINDERS: LazyLock<Vec<Finder<'static>>> =
        LazyLock::new(|| NEEDLES.iter().map(Finder::new).collect());
    FINDERS[needle].find(low).is_some()
}

/// `low`: the statement, lower-cased.
fn pin_reason(low: &[u8]) -> Option<&'static str> {
    let mut words = low
        .split(|&c| c.is_ascii_whitespace() || c == b'(')
        .filter(|w| !w.is_empty());
    let first = words.next().unwrap_or(b"");
    let second = words.next().unwrap_or(b"");
    let third = words.next().unwrap_or(b"");
    if first == b"declare" && has(low, WITH_HOLD) {
        return Some("a WITH HOLD cursor");
    }
    if first == b"prepare" && second != b"transaction" {
        return Some("a statement of SQL PREPARE");
    }
    let temp = |w: &[u8]| w == b"temp" || w == b"temporary";
    if first == b"create"
        && (temp(second) || ((second == b"local" || second == b"global") && temp(third)))
    {
        return Some("a temporary table");
    }
    if first == b"select" && has(low, INTO_TEMP) {
        return Some("a temporary table");
    }
    if has(low, ADVISORY_LOCK) && !has(low, ADVISORY_LOCK_ALL) {
        // pg_advisory_lock, pg_try_advisory_lock and their _shared forms;
        // pg_advisory_xact_lock ends with its transaction.
        return Some("a session-level advisory lock");
    }
    None
}

impl Session {
    /// Before statements run: pins the client to the connection they run
    /// on if they make session state; true if this pinned it (the caller
    /// unpins if they fail).
    fn pin_for(&mut self, pin: Option<&'static str>) -> bool {
        if self.pin.is_some() {
            return false;
        }
        self.pin = pin;
        self.pin.is_some()
    }

    /// Before statements that may read or act (`acts`): notes them as a
    /// possible NOTIFY's sender and pins the client if they make session
    /// state; true if this pinned it (pass it to `after_statements`).
    pub(super) fn before_statements(
        &mut self,
        statements: impl Iterator<Item = Traits>,
        acts: bool,
    ) -> bool {
        if !acts {
            return false;
        }
        let (pin, notifies) = statements.fold((None, false), |(pin, notifies), t| {
            (pin.or(t.pin), notifies || t.notifies)
        });
        self.note_sender(notifies);
        self.pin_for(pin)
    }

    /// After them: a pin they took is dropped again if they failed.
    pub(super) fn after_statements(&mut self, pinned: bool, failed: bool) {
        self.may_notify = false;
        if pinned && failed {
            self.unpin();
        }
    }

    /// `DISCARD ALL` dropped whatever pinned the client.
    pub(super) fn unpin(&mut self) {
        if self.pin.take().is_some() {
            self.release_if_idle();
        }
    }

    /// A pinned client's statement for another node than its pin's.
    pub(super) fn refuse_other_node(&self, node: crate::ring::NodeId) -> Result<(), FrontendError> {
        let (Some(reason), Some(c)) = (self.pin, self.attached.as_ref()) else {
            return Ok(());
        };
        if c.node() == node || c.status != b'I' {
            return Ok(());
        }
        let names = self.shared.routing.peek();
        Err(FrontendError::route(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "this session keeps its connection to shard node \"{}\" for {reason}; a statement for node \"{}\" cannot run in it",
                names.nodes()[c.node()],
                names.nodes()[node]
            ),
            "run DISCARD ALL to release it, or use another session for other shard keys".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    fn session_feature(sql: &str) -> Option<&'static str> {
        super::Traits::of(sql).pin
    }

    #[test]
    fn recognises_what_must_stay_on_a_connection() {
        assert!(session_feature("DECLARE c CURSOR WITH HOLD FOR SELECT 1").is_some());
        assert!(session_feature("declare c cursor for select 1").is_none());
        assert!(session_feature("SELECT pg_advisory_lock(1)").is_some());
        assert!(session_feature("select pg_try_advisory_lock_shared(1, 2)").is_some());
        assert!(session_feature("SELECT pg_advisory_xact_lock(1)").is_none());
        assert!(session_feature("SELECT pg_advisory_unlock_all()").is_none());
        assert!(session_feature("CREATE TEMP TABLE t (a int)").is_some());
        assert!(session_feature("create local temporary table t (a int)").is_some());
        assert!(session_feature("CREATE TABLE t (a int)").is_none());
        assert!(session_feature("SELECT 1 INTO TEMP t").is_some());
        assert!(session_feature("PREPARE p AS SELECT 1").is_some());
        assert!(session_feature("PREPARE TRANSACTION 'x'").is_none());
        assert!(session_feature("SELECT * FROM accounts WHERE id = 1").is_none());
        assert!(super::Traits::of("SELECT pg_notify('c', 'x')").notifies);
        assert!(super::Traits::of("Notify c").notifies);
        assert!(!super::Traits::of("SELECT 1").notifies);
    }
}
