//! The simple query protocol: one `Query` message, one or more statements.

use std::time::Instant;

use super::deallocate::{is_discard_all, parse_deallocate};
use super::error::FrontendError;
use super::execute::Work;
use super::listen::{parse_listen, Listen};
use smallvec::SmallVec;

use super::route::{combine, decide, Decision};
use super::session::{Session, Tx};
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
                let was_failed = self.status() == b'E';
                let ended = self
                    .end_spanning(shapes[0].command == Command::Commit)
                    .await?;
                self.settle_settings(
                    None,
                    &[if ended == Some("COMMIT") {
                        Command::Commit
                    } else {
                        Command::Rollback
                    }],
                    true,
                    was_failed,
                    false,
                );
                if let Some(tag) = ended {
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
        // One statement the proxy may answer itself: not one the analyzer
        // read among others it has no shape for ("BEGIN; NOTIFY x").
        let alone = shapes.len() == 1
            && (!shapes[0].command.needs_no_table() || split_statements(sql).len() == 1);
        if self.attached.is_none()
            && alone
            && matches!(self.tx, Tx::Deferred { .. })
            && matches!(shapes[0].command, Command::Set | Command::Reset)
            && self.sets_reported(sql)
        {
            return self.probe_deferred_set(sql).await;
        }
        if self.attached.is_none() && alone {
            if let Some(tag) = self.local_transaction_control(shapes[0].command, sql).await {
                self.write(&command_complete(&tag));
                self.ready_now();
                return Ok(());
            }
        }
        if self.tx == Tx::Failed {
            self.failed_tx_error();
            return Ok(());
        }
        // LISTEN, DISCARD, DEALLOCATE and SQL EXECUTE are all `Other`: a
        // query or DML statement skips their readers.
        let other = shapes.len() == 1 && shapes[0].command == Command::Other;
        if other {
            if let Some(l) = parse_listen(sql) {
                return self.listen_command(l).await;
            }
        } else if shapes.len() > 1
            && (self.notes.is_some() || sql.to_ascii_lowercase().contains("listen"))
        {
            // LISTEN/UNLISTEN among other statements (a driver's reset):
            // the subscriptions follow; the server runs them too, harmlessly.
            for piece in split_statements(sql) {
                if let Some(l) = parse_listen(piece) {
                    self.apply_listen(l).await?;
                }
            }
        }
        let discard = other && is_discard_all(sql);
        let executes = match other && !self.statements.is_empty() {
            true => self.execute_sql_of(sql),
            false => None,
        };
        let f = executes.as_ref().unwrap_or(f);
        if other && self.status() != b'E' {
            if let Some(what) = parse_deallocate(sql) {
                if self.deallocate(what) {
                    return Ok(());
                }
            }
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
        // A session-level SET/RESET changes what the connection carries,
        // and what the client's next connections must carry.
        let plan = if shapes
            .iter()
            .any(|s| matches!(s.command, Command::Set | Command::Reset | Command::Other))
        {
            let pieces = if shapes.len() == 1 {
                vec![sql]
            } else {
                split_statements(sql)
            };
            let opens_tx = shapes.iter().any(|s| s.command == Command::Begin);
            self.plan_settings(pieces.into_iter(), opens_tx)
        } else {
            None
        };
        if shapes.iter().any(|s| s.command == Command::Other) {
            self.note_schema_changes(split_statements(sql).into_iter());
        }
        let pinned = self.before_statements(
            std::iter::once_with(|| super::pin::Traits::of(sql)),
            shapes
                .iter()
                .any(|s| matches!(s.command, Command::Select | Command::Other)),
        );
        let (was_in_tx, was_failed) = (self.in_transaction(), self.status() == b'E');
        let outcome = self
            .execute(
                decision,
                Work::Simple(f),
                started,
                plan.as_ref().map(|p| p.session_after()),
            )
            .await;
        self.after_statements(pinned, outcome.as_ref().map_or(true, |o| o.error));
        let outcome = outcome?;
        if discard && !outcome.error {
            self.forget_statements();
            self.apply_listen(Listen::Unlisten(None)).await?;
            self.unpin();
        }
        if plan.is_some() || was_in_tx {
            let commands: SmallVec<[Command; 4]> = shapes.iter().map(|s| s.command).collect();
            self.settle_settings(plan, &commands, was_in_tx, was_failed, outcome.error);
        }
        Ok(())
    }

    /// Transaction control the proxy answers itself while no server
    /// connection is attached; returns the command tag, or None when the
    /// statement must go to a server.
    async fn local_transaction_control(&mut self, command: Command, sql: &str) -> Option<String> {
        match (&self.tx, command) {
            (Tx::Deferred { .. } | Tx::Failed, Command::Commit | Command::Rollback) => {
                let failed = self.tx == Tx::Failed;
                self.tx = Tx::None;
                let commit = command == Command::Commit && !failed;
                self.end_local_tx(commit).await;
                return Some(if commit { "COMMIT" } else { "ROLLBACK" }.into());
            }
            (Tx::Deferred { .. }, Command::Set | Command::Reset) => {
                if let Some(plan) = self.plan_settings(std::iter::once(sql), true) {
                    self.pending = Some(plan.next);
                }
            }
            _ => {}
        }
        match (&mut self.tx, command) {
            (Tx::None, Command::Begin) => {
                self.tx = Tx::Deferred {
                    prelude: vec![sql.to_string()],
                };
                Some("BEGIN".into())
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
