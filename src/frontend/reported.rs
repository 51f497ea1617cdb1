//! What a unit of work does to the client's session: its settings (which
//! follow it across pooled connections) and the reported parameters it
//! has been told of with ParameterStatus.
//!
//! A server reports a changed parameter (DateStyle, TimeZone,
//! client_encoding, IntervalStyle, …) just before the ReadyForQuery of the
//! statement or transaction end that changed it; drivers decode dates,
//! text and intervals by those values. Under transaction pooling the proxy
//! sends statements the client never sent (a pooled connection brought to
//! the client's settings, a deferred `BEGIN; SET …`), whose reports it
//! swallows; so before each ReadyForQuery it compares what the server
//! connection now holds with what the client was told and reports the
//! difference. A `SET` of a reported parameter inside a transaction the
//! proxy has deferred is tried on a pooled connection in a transaction
//! rolled back at once, so the client hears the value (or the error) at
//! once, as from a server.
//!
//! Settings changed inside a transaction only become the client's when it
//! commits (`pending` until then); `SET LOCAL` never does.

use bytes::BytesMut;

use super::error::FrontendError;
use super::exchange::{Exchange, Expect, Item, Until};
use super::session::{Session, Tx};
use super::settings::{Settings, UNKNOWN};
use crate::backend::ServerConn;
use crate::protocol::messages::{encode_query, parameter_status, ready_for_query};
use crate::router::Command;

/// Settings a unit of work will leave, decided before it runs.
pub struct SettingPlan {
    pub(super) next: Settings,
    /// The work runs inside a transaction (or opens one).
    in_tx: bool,
}

impl SettingPlan {
    /// The fingerprint the server connection carries once the work ran.
    pub fn session_after(&self) -> u64 {
        if self.in_tx {
            UNKNOWN
        } else {
            self.next.fingerprint()
        }
    }
}

impl Session {
    /// Reports the reported parameters whose values on `conn` differ from
    /// what the client was told. Called just before a ReadyForQuery.
    #[inline]
    pub(super) fn report_params(&mut self, conn: &ServerConn) {
        if conn.params.fingerprint() != self.reported.fingerprint() {
            self.report_changes(conn);
        }
    }

    #[cold]
    fn report_changes(&mut self, conn: &ServerConn) {
        for f in self.changes_from(conn) {
            self.write(&f);
        }
    }

    fn changes_from(&self, conn: &ServerConn) -> Vec<crate::protocol::Frame> {
        self.reported
            .changes_to(&conn.params)
            .into_iter()
            .map(|(k, v)| parameter_status(k, v))
            .collect()
    }

    /// ReadyForQuery from the proxy itself, after the reports a server
    /// would send with it.
    pub(super) fn ready_now(&mut self) {
        for f in std::mem::take(&mut self.held_reports) {
            self.write(&f);
        }
        self.write(&ready_for_query(self.status()));
    }

    /// The settings after `statements` run, if they change any.
    pub(super) fn plan_settings<'a>(
        &self,
        statements: impl Iterator<Item = &'a str>,
        opens_tx: bool,
    ) -> Option<SettingPlan> {
        let in_tx = opens_tx || self.in_transaction();
        let mut next = match (&self.pending, in_tx) {
            (Some(p), true) => p.clone(),
            _ => self.settings.clone(),
        };
        let mut changed = false;
        for sql in statements {
            changed |= next.apply(sql);
        }
        changed.then_some(SettingPlan { next, in_tx })
    }

    /// After a unit of work: settings it changed become the client's (or
    /// wait for the transaction's COMMIT); a transaction that ended takes
    /// its pending settings with it, or drops them.
    pub(super) fn settle_settings(
        &mut self,
        plan: Option<SettingPlan>,
        commands: &[Command],
        was_in_tx: bool,
        was_failed: bool,
        error: bool,
    ) {
        let now_in_tx = self.in_transaction();
        if was_in_tx && !now_in_tx {
            let committed = !error
                && !was_failed
                && commands.contains(&Command::Commit)
                && !commands.contains(&Command::Rollback);
            let pending = self.pending.take();
            if committed {
                if let Some(s) = plan.map(|p| p.next).or(pending) {
                    self.settings = s;
                }
            }
            return;
        }
        let Some(plan) = plan.filter(|_| !error) else {
            return;
        };
        if now_in_tx {
            self.pending = Some(plan.next);
        } else {
            self.settings = plan.next;
        }
    }

    /// A transaction the proxy answered alone (it never reached a server)
    /// ends: its session `SET`s stay on COMMIT; the parameters it reported
    /// go back to what they now are.
    pub(super) async fn end_local_tx(&mut self, commit: bool) {
        let pending = self.pending.take();
        if commit {
            if let Some(s) = pending {
                self.settings = s;
            }
        }
        if std::mem::take(&mut self.told_in_tx) {
            // What a connection with the client's settings reports now.
            let node = self.shared.default_node;
            if let Ok(mut c) = self.shared.pools[node].checkout().await {
                if self.sync_session(&mut c, false).await.is_ok() {
                    // Sent with the ReadyForQuery (`ready_now`).
                    self.held_reports = self.changes_from(&c);
                }
            }
        }
    }

    /// Whether a `SET`/`RESET` inside a deferred transaction changes a
    /// parameter the client is told of.
    pub(super) fn sets_reported(&self, sql: &str) -> bool {
        let words: Vec<String> = sql
            .split(|c: char| c.is_whitespace() || c == '=' || c == ';')
            .filter(|w| !w.is_empty())
            .take(4)
            .map(|w| w.trim_matches('"').to_ascii_lowercase())
            .collect();
        let mut i = 1;
        if matches!(words.get(1).map(String::as_str), Some("local" | "session")) {
            i = 2;
        }
        let name = match words.get(i).map(String::as_str) {
            Some("all" | "role" | "authorization") => return true,
            Some("time") => "timezone",
            Some("names") => "client_encoding",
            Some(n) => n,
            None => return false,
        };
        self.reported
            .pairs()
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
    }

    /// A `SET` of a reported parameter inside a deferred transaction: tried
    /// on a pooled connection of the default node (the client's settings,
    /// the transaction so far, the `SET`, then `ROLLBACK`), so that its
    /// ParameterStatus or its error reaches the client now. On success the
    /// statement joins the deferred transaction.
    pub(super) async fn probe_deferred_set(&mut self, sql: &str) -> Result<(), FrontendError> {
        let Tx::Deferred { prelude } = &self.tx else {
            return Ok(());
        };
        let prelude = prelude.clone();
        let mut c = self.shared.pools[self.shared.default_node]
            .checkout()
            .await?;
        let mut out = BytesMut::new();
        let mut ex = Exchange::default();
        // The client's settings (not `prelude`: that would start the
        // deferred transaction here).
        let fp = self.settings.fingerprint();
        if c.session != fp {
            out.extend_from_slice(&encode_query(&self.settings.sync_sql()).bytes);
            ex.push(Expect::swallow(Until::Query));
            c.session = fp;
        }
        for s in &prelude {
            out.extend_from_slice(&encode_query(s).bytes);
            ex.push(Expect::swallow(Until::Query));
        }
        out.extend_from_slice(&encode_query(sql).bytes);
        ex.push(Expect::forward(Until::Query));
        out.extend_from_slice(&encode_query("ROLLBACK").bytes);
        ex.push(Expect::swallow(Until::Query));
        c.write_all(&out).await?;
        let mut failed = false;
        loop {
            match ex.next(&mut c).await? {
                Item::Msg(f) if f.tag == b'Z' => {}
                Item::Msg(f) => {
                    failed |= f.tag == b'E';
                    self.write(&f);
                }
                Item::CopyIn(_) => {
                    c.reusable = false;
                    break;
                }
                Item::Done(_) => break,
            }
        }
        if failed {
            self.tx = Tx::Failed;
        } else {
            if let Some(plan) = self.plan_settings(std::iter::once(sql), true) {
                self.pending = Some(plan.next);
            }
            if let Tx::Deferred { prelude } = &mut self.tx {
                prelude.push(sql.to_string());
            }
            self.told_in_tx = true;
        }
        self.ready_now();
        Ok(())
    }
}
