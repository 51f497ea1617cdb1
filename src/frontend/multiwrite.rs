//! The seam for writes that change rows on several nodes: UPDATE/DELETE
//! without the shard key (every node) and multi-row INSERTs whose rows
//! belong to several nodes (split per node by `merge::split`). With
//! two-phase commit on, each node's part is prepared and the statement
//! commits on all nodes or none (`catalog::twophase`); without it, the
//! parts commit one by one (documented as not atomic). Inside a
//! transaction the parts wait for its COMMIT, which prepares and commits
//! every node the transaction touched (`end_spanning`).

use std::sync::Arc;
use std::time::Instant;

use super::batch::{Msg, Prepared};
use super::error::FrontendError;
use super::execute::{Outcome, Work};
use super::route::{row_nodes, Decision, Dest};
use super::session::Session;
use crate::backend::{Checkout, ServerConn};
use crate::catalog::twophase;
use crate::merge::split::{split_insert, subset_params, subset_types, Part};
use crate::protocol::messages::{
    encode_parse, encode_query, error_response, parse_bind, parse_parse, parse_query,
    ready_for_query,
};
use crate::protocol::rows::encode_bind_portal;
use crate::protocol::{sqlstate, Frame};

fn refused(message: String) -> FrontendError {
    FrontendError::route(
        sqlstate::FEATURE_NOT_SUPPORTED,
        message,
        "send one statement per shard".into(),
    )
}

impl Session {
    pub(super) async fn multi_node_write(
        &mut self,
        d: &Decision,
        work: Work<'_>,
        started: Instant,
    ) -> Result<Outcome, FrontendError> {
        if let Work::Batch(_, false) = work {
            return Err(refused(
                "a statement that writes on several shards must end with Sync".into(),
            ));
        }
        // Inside a transaction the parts commit with it (at COMMIT).
        let gid = (self.shared.two_phase && !self.in_transaction()).then(twophase::new_gid);
        let n = self.shared.pools.len();
        self.shared.metrics.cross_shard(match d.dest {
            Dest::Split => "split_insert",
            _ => "multi_write",
        });
        let Dest::Split = &d.dest else {
            let works = vec![Some(work); n];
            return self.fanout_each(&works, gid.as_deref(), started).await;
        };
        let table = self.shared.routing.peek();
        match work {
            Work::Simple(f) => {
                let sql = parse_query(f)?;
                let analysis = self.shared.analyzer.analysis(sql).map_err(|e| {
                    FrontendError::route(e.sqlstate(), e.to_string(), String::new())
                })?;
                let nodes = match analysis.shapes.first() {
                    Some(shape) => row_nodes(shape, &analysis.values, None, &table)?,
                    None => Vec::new(),
                };
                let parts = split_insert(sql, &nodes, n).map_err(|r| refused(r.0))?;
                let frames: Vec<Option<Frame>> = parts
                    .into_iter()
                    .map(|p| p.map(|p| encode_query(&p.sql)))
                    .collect();
                let works: Vec<Option<Work<'_>>> = frames
                    .iter()
                    .map(|f| f.as_ref().map(Work::Simple))
                    .collect();
                self.fanout_each(&works, gid.as_deref(), started).await
            }
            Work::Batch(msgs, _) => {
                let per_node = split_batch(msgs, &table, n)?;
                let works: Vec<Option<Work<'_>>> = per_node
                    .iter()
                    .map(|m| m.as_ref().map(|m| Work::Batch(m, true)))
                    .collect();
                self.fanout_each(&works, gid.as_deref(), started).await
            }
        }
    }

    /// After every node ran its part inside `BEGIN … PREPARE TRANSACTION`:
    /// commit all if all succeeded, else roll back all; then the
    /// ReadyForQuery the merged replies held back.
    pub(super) async fn finish_two_phase(
        &mut self,
        conns: &mut [Checkout],
        works: &[Option<Work<'_>>],
        gid: &str,
        result: Result<Outcome, FrontendError>,
    ) -> Result<Outcome, FrontendError> {
        let (catalog, rest) = conns.split_first_mut().expect("at least one node");
        let mut parts: Vec<&mut ServerConn> = rest
            .iter_mut()
            .zip(&works[1..])
            .filter(|(_, w)| w.is_some())
            .map(|(c, _)| &mut **c)
            .collect();
        let catalog_takes_part = works[0].is_some();
        let outcome = match result {
            Ok(o) if !o.error => o,
            other => {
                if catalog_takes_part {
                    parts.push(&mut **catalog);
                }
                twophase::abort(&mut parts, gid).await;
                self.shared.metrics.two_phase("rolled_back");
                if other.is_ok() {
                    self.write(&ready_for_query(b'I'));
                }
                return other;
            }
        };
        let committed = twophase::commit(catalog, catalog_takes_part, &mut parts, gid).await;
        self.shared.metrics.two_phase(match &committed {
            Ok(()) => "committed",
            Err(twophase::CommitError::Decision(_)) => "rolled_back",
            Err(twophase::CommitError::Backend(_)) => "unknown",
        });
        match committed {
            Ok(()) => {
                self.write(&ready_for_query(b'I'));
                Ok(outcome)
            }
            Err(twophase::CommitError::Decision(e)) => {
                // No decision recorded: every part rolls back.
                if catalog_takes_part {
                    parts.push(&mut **catalog);
                }
                twophase::abort(&mut parts, gid).await;
                self.fail_write(
                    sqlstate::TRANSACTION_ROLLBACK,
                    format!("the write on several shards was rolled back on all of them: the commit decision could not be recorded ({e})"),
                );
                Ok(Outcome { error: true })
            }
            Err(twophase::CommitError::Backend(e)) => {
                // Whether the decision landed is unknown: leave every part
                // prepared; recovery resolves them all alike from the record.
                self.fail_write(
                    sqlstate::TRANSACTION_RESOLUTION_UNKNOWN,
                    format!("the catalog node was lost while the commit decision was recorded ({e}); the write will be committed or rolled back on all shards by recovery"),
                );
                Ok(Outcome { error: true })
            }
        }
    }

    fn fail_write(&mut self, code: &'static str, message: String) {
        self.shared.metrics.error(code, "proxy");
        self.write(&error_response("ERROR", code, &message, None));
        self.write(&ready_for_query(b'I'));
    }
}

impl Session {
    /// COMMIT or ROLLBACK of a transaction that spans nodes: two-phase
    /// commit of every part, or rollback of all. Returns the command tag
    /// for the client, or None when the commit failed (the error is written).
    pub(super) async fn end_spanning(
        &mut self,
        commit: bool,
    ) -> Result<Option<&'static str>, FrontendError> {
        let failed = self.status() == b'E';
        let mut all: Vec<Checkout> = self.attached.take().into_iter().collect();
        all.append(&mut self.joined);
        self.tx = super::session::Tx::None;
        self.tx_begin.clear();
        self.set_cancel(&[]);
        if !commit || failed {
            for c in all.iter_mut() {
                twophase::simple(c, "ROLLBACK").await?;
            }
            return Ok(Some("ROLLBACK"));
        }
        let catalog = self.shared.pools[0].clone();
        let r = twophase::prepare_and_commit(&mut all, &catalog).await?;
        self.shared.metrics.two_phase(if r.is_ok() {
            "committed"
        } else {
            "rolled_back"
        });
        match r {
            Ok(()) => Ok(Some("COMMIT")),
            Err(why) => {
                self.commit_failed(why);
                Ok(None)
            }
        }
    }

    fn commit_failed(&mut self, why: String) {
        self.shared
            .metrics
            .error(sqlstate::TRANSACTION_ROLLBACK, "proxy");
        self.write(&error_response(
            "ERROR",
            sqlstate::TRANSACTION_ROLLBACK,
            &format!("the transaction was rolled back on every shard: {why}"),
            None,
        ));
    }
}

/// One batch per node for a split INSERT in the extended protocol: the
/// node's rows, with only their parameters, under the unnamed statement.
fn split_batch(
    msgs: &[Msg],
    table: &crate::ring::RoutingTable,
    n: usize,
) -> Result<Vec<Option<Vec<Msg>>>, FrontendError> {
    let mut binds = msgs.iter().filter_map(|m| match m {
        Msg::Bind { stmt, frame } => Some((stmt, frame)),
        _ => None,
    });
    let (Some((stmt, bind_frame)), None) = (binds.next(), binds.next()) else {
        return Err(refused(
            "an INSERT whose rows belong to several shards must be bound once per Sync".into(),
        ));
    };
    let bind = parse_bind(bind_frame)?;
    let parse = parse_parse(&stmt.parse)?;
    let analysis = stmt
        .analysis
        .as_ref()
        .map_err(|e| FrontendError::route(e.sqlstate(), e.to_string(), String::new()))?;
    let row_nodes = match analysis.shapes.first() {
        Some(shape) => row_nodes(shape, &analysis.values, Some(&bind), table)?,
        None => Vec::new(),
    };
    let formats = bind.result_formats();
    let parts = split_insert(&stmt.sql, &row_nodes, n).map_err(|r| refused(r.0))?;
    let mut out = Vec::with_capacity(n);
    for part in parts {
        let Some(Part { sql, params }) = part else {
            out.push(None);
            continue;
        };
        let values = subset_params(bind.params_section(), &params)
            .ok_or_else(|| refused("the INSERT's parameters could not be split".into()))?;
        let node_stmt = Arc::new(Prepared {
            id: 0,
            server_name: String::new(),
            parse: encode_parse("", &sql, &subset_types(parse.param_types, &params)),
            sql,
            analysis: stmt.analysis.clone(),
            traits: stmt.traits,
        });
        let node_bind = encode_bind_portal(bind.portal, &values, &formats);
        let node_msgs = msgs
            .iter()
            .map(|m| match m {
                Msg::Parse(_) => Msg::Parse(node_stmt.clone()),
                Msg::Bind { .. } => Msg::Bind {
                    stmt: node_stmt.clone(),
                    frame: node_bind.clone(),
                },
                Msg::DescribeStmt(s) => Msg::DescribeStmt(s.clone()),
                Msg::CloseStmt => Msg::CloseStmt,
                Msg::Raw { frame, until } => Msg::Raw {
                    frame: frame.clone(),
                    until: *until,
                },
            })
            .collect();
        out.push(Some(node_msgs));
    }
    Ok(out)
}
