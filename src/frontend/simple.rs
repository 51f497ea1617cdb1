//! The simple query protocol: one `Query` message, one or more statements.

use std::time::Instant;

use super::error::FrontendError;
use super::execute::Work;
use smallvec::SmallVec;

use super::route::{combine, decide, Decision};
use super::session::{Session, Tx};
use super::settings::UNKNOWN;
use crate::protocol::messages::{
    command_complete, empty_query_response, parse_query, ready_for_query,
};
use crate::protocol::Frame;
use crate::router::lexer::split_statements;
use crate::router::Command;

impl Session {
    pub(super) async fn simple_query(&mut self, f: &Frame) -> Result<(), FrontendError> {
        let started = Instant::now();
        let sql = parse_query(f)?;
        if self.attached.is_none() && sql.bytes().all(|b| b.is_ascii_whitespace() || b == b';') {
            self.write(&empty_query_response());
            self.write(&ready_for_query(self.status()));
            return Ok(());
        }
        let analysis = self.shared.analyzer.analysis(sql).map_err(|e| {
            FrontendError::route(
                e.sqlstate(),
                e.to_string(),
                "see the shard-key rules in the README".into(),
            )
        })?;
        let shapes = &analysis.shapes;
        if !self.joined.is_empty() {
            // A transaction that spans nodes ends on all of them together.
            if shapes.len() == 1 && matches!(shapes[0].command, Command::Commit | Command::Rollback)
            {
                if let Some(tag) = self
                    .end_spanning(shapes[0].command == Command::Commit)
                    .await?
                {
                    self.write(&command_complete(tag));
                }
                self.write(&ready_for_query(self.status()));
                return Ok(());
            }
            if shapes.iter().any(|s| s.command == Command::Savepoint) {
                return Err(FrontendError::route(
                    crate::protocol::sqlstate::FEATURE_NOT_SUPPORTED,
                    "savepoints in a transaction that spans shards".into(),
                    "use savepoints in transactions on one shard key".into(),
                ));
            }
        }
        if self.attached.is_none() && shapes.len() == 1 {
            if let Some(tag) = self.local_transaction_control(shapes[0].command, sql) {
                self.write(&command_complete(&tag));
                self.write(&ready_for_query(self.status()));
                return Ok(());
            }
        }
        if self.tx == Tx::Failed {
            self.failed_tx_error();
            return Ok(());
        }
        if shapes.len() == 1
            && shapes[0].command == Command::Copy
            && matches!(shapes[0].target, crate::router::Target::AllShards { .. })
        {
            if self.attached.is_some() || self.tx != Tx::None {
                return Err(FrontendError::route(
                    crate::protocol::sqlstate::FEATURE_NOT_SUPPORTED,
                    "COPY on a sharded table without its key runs on every shard, which a transaction cannot span".into(),
                    "run the COPY outside the transaction".into(),
                ));
            }
            return self.sharded_copy(f, sql, started).await;
        }
        let decision = {
            let table = self.shared.routing.peek();
            let mut each = SmallVec::<[Decision; 2]>::new();
            for s in shapes.iter() {
                each.push(decide(s, &analysis.values, None, &table, self.policy())?);
            }
            combine(&each)?
        };
        // A session-level SET/RESET changes what the connection carries;
        // inside a transaction its fate is unknown, so force a reset later.
        let mut next_settings = None;
        let mut session_after = None;
        if shapes
            .iter()
            .any(|s| matches!(s.command, Command::Set | Command::Reset | Command::Other))
        {
            let mut s = self.settings.clone();
            let mut changed = false;
            let pieces = if shapes.len() == 1 {
                vec![sql]
            } else {
                split_statements(sql)
            };
            for piece in pieces {
                changed |= s.apply(piece);
            }
            if changed {
                let in_tx = self.tx != Tx::None
                    || self.attached.is_some()
                    || shapes.iter().any(|s| s.command == Command::Begin);
                session_after = Some(if in_tx { UNKNOWN } else { s.fingerprint() });
                if !in_tx {
                    next_settings = Some(s);
                }
            }
        }
        let outcome = self
            .execute(decision, Work::Simple(f), started, session_after)
            .await?;
        if let (Some(s), false) = (next_settings, outcome.error) {
            self.settings = s;
        }
        Ok(())
    }

    /// Transaction control the proxy answers itself while no server
    /// connection is attached; returns the command tag, or None when the
    /// statement must go to a server.
    fn local_transaction_control(&mut self, command: Command, sql: &str) -> Option<String> {
        match (&mut self.tx, command) {
            (Tx::None, Command::Begin) => {
                self.tx = Tx::Deferred {
                    prelude: vec![sql.to_string()],
                };
                Some("BEGIN".into())
            }
            (Tx::Deferred { .. }, Command::Commit | Command::Rollback) => {
                self.tx = Tx::None;
                Some(
                    if command == Command::Commit {
                        "COMMIT"
                    } else {
                        "ROLLBACK"
                    }
                    .into(),
                )
            }
            (Tx::Failed, Command::Commit | Command::Rollback) => {
                self.tx = Tx::None;
                Some("ROLLBACK".into())
            }
            (Tx::Deferred { prelude }, Command::Set | Command::Savepoint | Command::Reset) => {
                // Queued until the transaction picks its node.
                prelude.push(sql.to_string());
                let first = sql
                    .split_whitespace()
                    .next()
                    .unwrap_or("SET")
                    .to_ascii_uppercase();
                Some(first.trim_end_matches(';').to_string())
            }
            (Tx::None, Command::Commit | Command::Rollback) => {
                // PostgreSQL warns and succeeds; do the same without a server.
                Some(
                    if command == Command::Commit {
                        "COMMIT"
                    } else {
                        "ROLLBACK"
                    }
                    .into(),
                )
            }
            _ => None,
        }
    }
}
