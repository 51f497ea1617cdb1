//! The seam between the frontend and the query engine (`crate::merge`):
//! a read that runs on every node is concatenated when that is exact,
//! merged when it must be, refused (`0A000`) when it cannot be done
//! exactly. This file only translates between the client's messages and
//! the engine's request and answer.

use std::time::Instant;

use super::batch::Msg;
use super::error::FrontendError;
use super::execute::{Outcome, Work};
use super::session::Session;
use super::spanning::status_of;
use crate::backend::Checkout;
use crate::merge::{self, Fanout, MergeError, Merged, Request};
use crate::protocol::framing::Reader;
use crate::protocol::messages::{
    bind_complete, close_complete, command_complete, parse_bind, parse_complete, parse_error,
    parse_parse, parse_query, ready_for_query,
};
use crate::protocol::rows::with_formats;
use crate::protocol::{sqlstate, Frame};

fn refused(message: String) -> FrontendError {
    FrontendError::route(
        sqlstate::FEATURE_NOT_SUPPORTED,
        message,
        "add the shard key to the WHERE clause so the query runs on one shard, or simplify it"
            .into(),
    )
}

impl Session {
    /// A read with no shard key: every node's rows, exactly combined.
    pub(super) async fn fanout_read(
        &mut self,
        work: Work<'_>,
        started: Instant,
    ) -> Result<Outcome, FrontendError> {
        let sql = match &work {
            Work::Simple(f) => parse_query(f)?,
            Work::Batch(msgs, _) => match msgs.iter().find_map(|m| match m {
                Msg::Bind { stmt, .. } => Some(stmt.sql.as_str()),
                _ => None,
            }) {
                Some(sql) => sql,
                // A prepare (Describe without Bind): any node describes it.
                None => return self.fanout(work, started).await,
            },
        };
        // While a partition moves its rows are on two nodes: every node
        // answers for the ranges it owns only, through the engine.
        let table = self.shared.routing.load();
        let hidden: Option<Vec<Vec<(i64, i64)>>> = table.moving().then(|| {
            (0..self.shared.pools.len())
                .map(|n| merge::hide::hidden_ranges(&table, n))
                .collect()
        });
        let plan = match merge::plan(sql, &self.shared.merge_catalog) {
            Ok(Fanout::Concat) if hidden.is_some() => match merge::row_wise(sql) {
                Some(p) => Fanout::Merge(p),
                None => {
                    return Err(super::route::refuse_while_moving(
                        crate::router::Command::Select,
                        "(every node)",
                        &table,
                    ))
                }
            },
            Ok(Fanout::Concat) => {
                self.shared.metrics.cross_shard("concat");
                return self.fanout(work, started).await;
            }
            Ok(job) => job,
            Err(r) => {
                self.shared.metrics.cross_shard("refused");
                return Err(refused(r.0));
            }
        };
        self.shared.metrics.cross_shard(match plan {
            Fanout::Nested(_) => "nested",
            _ => "merged",
        });
        if let Work::Batch(msgs, _) = &work {
            if executed_statement(msgs).is_none() {
                // Never concatenate what must be merged.
                return Err(refused("a cross-shard query that needs merging must be bound and executed once per Sync, for all its rows (no row limit on Execute)".into()));
            }
        }
        let mut conns = self.every_node().await?;
        self.set_cancel(&conns.iter().collect::<Vec<_>>());
        let shared = self.shared.clone();
        let hidden = hidden.as_deref().map(|h| (&shared.merge_catalog, h));
        let result = self.merge_on(&mut conns, &plan, work, hidden).await;
        self.set_cancel(&[]);
        self.end_fanout(
            conns,
            matches!(result, Err(FrontendError::Backend(_))),
            started,
        );
        result
    }

    async fn merge_on(
        &mut self,
        conns: &mut [Checkout],
        plan: &Fanout,
        work: Work<'_>,
        hidden: merge::hide::Hidden<'_>,
    ) -> Result<Outcome, FrontendError> {
        // The client's session settings on every connection first.
        for c in conns.iter_mut() {
            self.sync_session(c, false).await?;
        }
        let max = self.shared.config.routing.merge_max_rows;
        match work {
            Work::Simple(f) => {
                let sql = parse_query(f)?;
                let mut req = Request::simple(sql);
                req.hidden = hidden;
                let r = run_job(plan, &req, conns, &self.shared.type_names, max).await;
                match r {
                    Ok(m) => {
                        self.write(&m.description);
                        self.write_rows(&m);
                        self.write(&ready_for_query(status_of(conns)));
                        Ok(Outcome { error: false })
                    }
                    Err(e) => self.merge_failed(e).map(|_| {
                        self.write(&ready_for_query(status_of(conns)));
                        Outcome { error: true }
                    }),
                }
            }
            Work::Batch(msgs, _) => self.merge_batch(conns, plan, msgs, max, hidden).await,
        }
    }

    fn write_rows(&mut self, m: &Merged) {
        for r in &m.rows {
            self.write(r);
        }
        self.write(&command_complete(&format!("SELECT {}", m.rows.len())));
    }

    /// A node's error reaches the client as sent; a refusal becomes 0A000;
    /// a lost node is the caller's to report.
    fn merge_failed(&mut self, e: MergeError) -> Result<(), FrontendError> {
        match e {
            MergeError::Server(f) => {
                self.shared.metrics.error(&parse_error(&f).code, "server");
                self.write(&f);
                Ok(())
            }
            MergeError::Refused(r) => {
                let e = refused(r.0);
                self.shared.metrics.error(e.sqlstate(), "proxy");
                self.write(&e.to_frame());
                Ok(())
            }
            MergeError::Backend(b) => Err(b.into()),
        }
    }

    /// The extended protocol: one statement bound and executed, with any
    /// Parse, Describe, Close, Flush and Sync around it, answered in order
    /// as a server would.
    async fn merge_batch(
        &mut self,
        conns: &mut [Checkout],
        plan: &Fanout,
        msgs: &[Msg],
        max: usize,
        hidden: merge::hide::Hidden<'_>,
    ) -> Result<Outcome, FrontendError> {
        let Some((sql, bind)) = executed_statement(msgs) else {
            return Err(refused(
                "a cross-shard query that needs merging must be bound and executed once per Sync"
                    .into(),
            ));
        };
        let b = parse_bind(bind)?;
        let stmt = msgs.iter().find_map(|m| match m {
            Msg::Bind { stmt, .. } => Some(stmt.clone()),
            _ => None,
        });
        let stmt = stmt.expect("executed_statement found a Bind");
        let parse = parse_parse(&stmt.parse)?;
        let formats = b.result_formats();
        let req = Request {
            sql,
            param_types: parse.param_types,
            params: b.params_section(),
            result_formats: &formats,
            hidden,
        };
        let r = run_job(plan, &req, conns, &self.shared.type_names, max).await;
        let (merged, failure) = match r {
            Ok(m) => (Some(m), None),
            Err(e) => (None, Some(e)),
        };
        let failed = failure.is_some();
        let mut failure = failure;
        let mut skipping = false;
        for m in msgs {
            let tag = match m {
                Msg::Parse(_) => b'P',
                Msg::Bind { .. } => b'B',
                Msg::DescribeStmt(_) => b'd',
                Msg::CloseStmt => b'C',
                Msg::Raw { frame, .. } => frame.tag,
            };
            if tag == b'S' {
                skipping = false;
                self.write(&ready_for_query(status_of(conns)));
                continue;
            }
            if skipping {
                continue;
            }
            match (tag, &merged) {
                (b'P', _) => self.write(&parse_complete()),
                (b'B', _) => self.write(&bind_complete()),
                (b'C', _) => self.write(&close_complete()),
                (b'd', Some(m)) => {
                    self.write(&m.parameters);
                    self.write(&with_formats(&m.description, &[])?);
                }
                (b'D', Some(m)) => self.write(&m.description),
                (b'E', Some(m)) => self.write_rows(m),
                (b'd' | b'D' | b'E', None) => {
                    // Where a server would fail: at Describe or Execute.
                    if let Some(e) = failure.take() {
                        self.merge_failed(e)?;
                    }
                    skipping = true;
                }
                _ => {}
            }
        }
        Ok(Outcome { error: failed })
    }
}

/// Runs a merge job (see `merge::plan`).
async fn run_job(
    job: &Fanout,
    req: &Request<'_>,
    conns: &mut [Checkout],
    types: &merge::TypeNames,
    max: usize,
) -> Result<Merged, MergeError> {
    match job {
        Fanout::Merge(p) => merge::run(p, req, conns, types, max).await,
        Fanout::Nested(n) => merge::run_nested(n, req, conns, types, max).await,
        Fanout::Concat => Err(merge::Refusal("nothing to merge".into()).into()),
    }
}

/// The SQL and Bind frame of the one statement a batch executes, if the
/// batch is one Bind + one Execute (with Parse/Describe/Close around).
fn executed_statement(msgs: &[Msg]) -> Option<(&str, &Frame)> {
    let mut bind = None;
    let mut executes = 0;
    for m in msgs {
        match m {
            Msg::Bind { stmt, frame } => {
                if bind.is_some() {
                    return None;
                }
                bind = Some((stmt.sql.as_str(), frame));
            }
            Msg::Raw { frame, .. } if frame.tag == b'E' => {
                executes += 1;
                // All rows at once: a row-limited Execute would need a
                // suspended portal the merge does not keep.
                let mut r = Reader::new(b'E', frame.body());
                let _ = r.cstr();
                if r.i32().ok() != Some(0) {
                    return None;
                }
            }
            _ => {}
        }
    }
    (executes == 1).then_some(bind?)
}
