//! Running one unit of work on the node(s) a decision names, and relaying
//! the replies: on one node, replies stream through; on all nodes (a read
//! with no shard key), rows are concatenated under one RowDescription and
//! one CommandComplete whose count is the sum.

use std::time::Instant;

use bytes::BytesMut;

use super::batch::Msg;
use super::error::FrontendError;
use super::exchange::{At, Exchange, Expect, Item, Until};
use super::pipeline::{sync_pipeline, IN_PIPELINE};
use super::route::{Decision, Dest};
use super::server_batch::build_batch;
use super::session::{Session, Tx, FLUSH_AT};
use super::settings::UNKNOWN;
use crate::analyzer::{Request, RequestKind};
use crate::backend::{Checkout, ServerConn};
use crate::catalog::twophase;
use crate::protocol::messages::{
    command_complete, command_tag, command_tag_of, encode_query, parse_error, ready_for_query,
    tag_rows,
};
use crate::protocol::{sqlstate, Frame};

/// What to send.
#[derive(Clone, Copy)]
pub enum Work<'a> {
    Simple(&'a Frame),
    /// Buffered extended-protocol messages; true if they end with Sync.
    Batch(&'a [Msg], bool),
}

impl Work<'_> {
    fn bytes_in(&self) -> u64 {
        match self {
            Work::Simple(f) => f.bytes.len() as u64,
            Work::Batch(msgs, _) => msgs
                .iter()
                .map(|m| match m {
                    Msg::Bind { frame, .. } | Msg::Raw { frame, .. } => frame.bytes.len() as u64,
                    Msg::Parse(p) => p.parse.bytes.len() as u64,
                    _ => 0,
                })
                .sum(),
        }
    }
}

/// How a unit of work ended, for the caller's bookkeeping.
pub struct Outcome {
    /// The server (or a node in a fan-out) answered with an error.
    pub error: bool,
}

impl Session {
    pub(super) async fn execute(
        &mut self,
        d: Decision,
        work: Work<'_>,
        started: Instant,
        session_after: Option<u64>,
    ) -> Result<Outcome, FrontendError> {
        let (node, partition) = match d.dest {
            Dest::AllNodes | Dest::Split => {
                // Boxed: a large, rarer future that would otherwise bloat (and be
                // copied with) every single-node statement's future.
                return Box::pin(self.execute_wide(d, work, started)).await;
            }
            Dest::Anywhere => (
                self.attached
                    .as_ref()
                    .map(|c| c.node())
                    .unwrap_or(self.shared.default_node),
                None,
            ),
            Dest::Node { node, partition } => (node, partition),
        };
        // A statement for another node than the transaction's: that node
        // joins the transaction (two-phase commit) or it is refused. Out
        // of line, so this path stays small enough to inline its exchange.
        if self.attached.as_ref().is_some_and(|c| c.node() != node) {
            self.refuse_other_node(node)?;
            Box::pin(self.swap_in(node)).await?;
        }
        let mut conn = match self.attached.take() {
            Some(c) => c,
            None => {
                let c = self.shared.pools[node].checkout().await?;
                self.set_cancel(&[&c]);
                c
            }
        };
        let in_tx =
            conn.status != b'I' || matches!(self.tx, Tx::Deferred { .. }) || self.begin_pending;
        // Reused across rounds: no allocation per statement.
        let mut out = std::mem::take(&mut self.sbuf);
        let mut ex = std::mem::take(&mut self.exchange);
        out.clear();
        ex.clear();
        self.prelude(&mut conn, &mut out, &mut ex);
        match work {
            Work::Simple(f) => {
                out.extend_from_slice(&f.bytes);
                ex.push(Expect::forward(Until::Query));
            }
            Work::Batch(msgs, _) => build_batch(msgs, &conn, &mut out, &mut ex),
        }
        let out_before = self.wbuf.len() as u64;
        let flushes = self.flushes;
        let result = async {
            conn.write_all(&out).await?;
            self.pump(&mut conn, &mut ex).await
        }
        .await;
        self.sbuf = out;
        self.exchange = ex;
        let (rows, error) = match result {
            Ok(r) => r,
            Err(e) => {
                conn.reusable = false;
                if in_tx {
                    // The transaction died with its connection.
                    self.tx = Tx::Failed;
                }
                return Err(e);
            }
        };
        if let (Some(fp), false) = (session_after, error) {
            conn.session = fp;
        }
        let latency = started.elapsed();
        let m = &self.shared.metrics;
        m.latency[node].observe(latency.as_secs_f64());
        self.shared.recorder.record(
            partition,
            self.source,
            &Request {
                kind: if d.write {
                    RequestKind::Write
                } else {
                    RequestKind::Read
                },
                rows,
                bytes_in: work.bytes_in(),
                bytes_out: (self.wbuf.len() as u64).saturating_sub(out_before),
                latency_us: latency.as_micros() as u64,
                error,
            },
        );
        self.attached = Some(conn);
        self.release_if_idle();
        if std::mem::take(&mut self.moved) {
            // A node's fence: the partition moved under a stale table. Run
            // again on its new home if nothing of the reply has left and no
            // transaction is at stake; else the client has its 40001.
            let whole = match work {
                Work::Simple(_) => true,
                Work::Batch(_, sync) => sync,
            };
            if !in_tx && whole && self.flushes == flushes && self.attached.is_none() {
                self.wbuf.truncate(out_before as usize);
                return Err(FrontendError::Moved {
                    partition: partition.unwrap_or(0),
                });
            }
            if let Some(catalog) = &self.shared.catalog {
                catalog.refresh_soon(&self.shared);
            }
        }
        Ok(Outcome { error })
    }

    /// Work for several nodes: a read without the key (merged or
    /// concatenated), DDL, a write on several nodes. Out of line: the
    /// single-node path above stays small enough to inline its exchange.
    #[cold]
    async fn execute_wide(
        &mut self,
        d: Decision,
        work: Work<'_>,
        started: Instant,
    ) -> Result<Outcome, FrontendError> {
        self.may_span()?;
        if d.multi_write || matches!(d.dest, Dest::Split) {
            return self.multi_node_write(&d, work, started).await;
        }
        if !d.write {
            return self.fanout_read(work, started).await;
        }
        self.fanout(work, started).await
    }

    /// What a connection needs before the client's work: the client's
    /// session settings, and a deferred BEGIN with its queued statements.
    pub(super) fn prelude(&mut self, conn: &mut ServerConn, out: &mut BytesMut, ex: &mut Exchange) {
        if conn.listens && conn.status == b'I' {
            // Notifications reach clients through the notifier only.
            out.extend_from_slice(&encode_query("UNLISTEN *").bytes);
            ex.push(Expect::swallow(Until::Query));
            conn.listens = false;
        }
        let fp = self.settings.fingerprint();
        // Only between transactions: inside one the connection is the
        // client's own and carries whatever it SET there.
        if conn.session != fp && conn.status == b'I' {
            out.extend_from_slice(&encode_query(&self.settings.sync_sql()).bytes);
            ex.push(Expect::swallow(Until::Query));
            conn.session = fp;
        }
        if self.begin_pending {
            self.begin_pending = false;
            self.begin_here(out, ex);
        }
        if let Some(stmt) = self.ensure_stmt.take() {
            if !conn.prepared.contains(&stmt.id) {
                out.extend_from_slice(&stmt.parse.bytes);
                ex.push(Expect {
                    until: Until::Parse,
                    action: super::exchange::Action::Swallow,
                    prepares: Some(stmt.id),
                    uses: None,
                });
            }
        }
        if let Tx::Deferred { prelude } = std::mem::replace(&mut self.tx, Tx::None) {
            self.told_in_tx = false;
            for sql in &prelude {
                out.extend_from_slice(&encode_query(sql).bytes);
                ex.push(Expect::swallow(Until::Query));
            }
            if prelude.len() > 1 {
                // Deferred SETs: what the connection carries after the
                // transaction depends on how it ends.
                conn.session = UNKNOWN;
            }
            // Kept for nodes that join the transaction later.
            self.tx_begin = prelude;
        }
    }

    /// Relays replies until the exchange is done; returns (rows, saw error).
    /// The hot path's only caller: keep it so, so that it stays inlined.
    async fn pump(
        &mut self,
        conn: &mut ServerConn,
        ex: &mut Exchange,
    ) -> Result<(u64, bool), FrontendError> {
        let mut rows = 0;
        let mut error = false;
        loop {
            // Replies are relayed from the server's read buffer where they
            // are (errors, rarer, as frames of their own).
            let item = match ex.next_at(conn).await? {
                At::Front(tag, len) if tag != b'E' => {
                    let m = conn.front(len);
                    if tag == b'C' {
                        rows += tag_rows(command_tag_of(&m[5..]));
                    }
                    self.write_message(m);
                    conn.consume(len);
                    if self.wbuf.len() >= FLUSH_AT {
                        self.flush().await?;
                    }
                    continue;
                }
                At::Front(_, len) => Item::Msg(conn.take_front(len)),
                At::Own(f) => Item::Msg(f),
                At::CopyIn(f) => Item::CopyIn(f),
                At::Done(Some(len)) => {
                    if !conn.broken.is_empty() {
                        self.renew_broken(conn);
                    }
                    self.report_params(conn);
                    self.write_message(conn.front(len));
                    conn.consume(len);
                    return Ok((rows, error));
                }
                At::Done(None) => Item::Done(None),
            };
            match item {
                Item::Msg(f) => {
                    match f.tag {
                        b'C' => rows += tag_rows(command_tag(&f)),
                        b'E' => {
                            error = true;
                            let e = parse_error(&f);
                            self.shared.metrics.error(&e.code, "server");
                            if e.code == sqlstate::PARTITION_MOVED {
                                self.moved = true;
                                self.write(&moved_error(&e.message));
                                continue;
                            }
                        }
                        _ => {}
                    }
                    self.write(&f);
                    if self.wbuf.len() >= FLUSH_AT {
                        self.flush().await?;
                    }
                }
                Item::CopyIn(f) => {
                    self.write(&f);
                    self.flush().await?;
                    self.copy_in(conn).await?;
                }
                // (`At::Done(Some(..))`, the round's ReadyForQuery, is relayed above.)
                Item::Done(_) => {
                    if !conn.broken.is_empty() {
                        self.renew_broken(conn);
                    }
                    // After a Flush the server owes a Sync: not poolable yet.
                    conn.status = IN_PIPELINE;
                    return Ok((rows, error));
                }
            }
        }
    }

    /// Statements a server reported broken get new names (see `names`).
    #[cold]
    fn renew_broken(&self, conn: &mut ServerConn) {
        for id in conn.broken.drain(..) {
            self.shared.renewals.renew(id);
        }
    }

    /// Streams COPY data from the client to the server until CopyDone/Fail.
    async fn copy_in(&mut self, conn: &mut ServerConn) -> Result<(), FrontendError> {
        let mut chunk = BytesMut::with_capacity(64 * 1024);
        loop {
            let Some(f) = self.read_frame().await? else {
                return Err(FrontendError::ClientIo(
                    std::io::ErrorKind::UnexpectedEof.into(),
                ));
            };
            match f.tag {
                b'd' => chunk.extend_from_slice(&f.bytes),
                b'c' | b'f' => {
                    chunk.extend_from_slice(&f.bytes);
                    conn.write_all(&chunk).await?;
                    return Ok(());
                }
                b'H' | b'S' => {}
                other => {
                    return Err(FrontendError::Protocol(
                        crate::protocol::ProtocolError::Unexpected {
                            tag: other as char,
                            when: "during COPY FROM STDIN",
                        },
                    ))
                }
            }
            if chunk.len() >= FLUSH_AT {
                conn.write_all(&chunk).await?;
                chunk.clear();
            }
        }
    }

    /// Runs the same work on every node and merges the replies.
    pub(super) async fn fanout(
        &mut self,
        work: Work<'_>,
        started: Instant,
    ) -> Result<Outcome, FrontendError> {
        let works = vec![Some(work); self.shared.pools.len()];
        self.fanout_each(&works, None, started).await
    }

    /// Runs `works[n]` on node `n` (None: node `n` takes no part) and
    /// merges the replies. With a gid, each node's part runs in a
    /// transaction that is prepared, then committed on all or none.
    pub(super) async fn fanout_each(
        &mut self,
        works: &[Option<Work<'_>>],
        gid: Option<&str>,
        started: Instant,
    ) -> Result<Outcome, FrontendError> {
        let mut conns = self.every_node().await?;
        self.set_cancel(&conns.iter().collect::<Vec<_>>());
        let mut result = self.fanout_run(&mut conns, works, gid).await;
        if result.is_ok() {
            // A round that ended with Flush: end each node's part of the
            // pipeline now, so that the connections can be pooled (a
            // statement on every node is its own unit of work).
            for c in conns.iter_mut().filter(|c| c.status == IN_PIPELINE) {
                if let Err(e) = sync_pipeline(c, false).await {
                    result = Err(e.into());
                }
            }
        }
        self.set_cancel(&[]);
        if let Some(gid) = gid {
            result = self.finish_two_phase(&mut conns, works, gid, result).await;
        }
        self.end_fanout(conns, result.is_err(), started);
        result
    }

    async fn fanout_run(
        &mut self,
        conns: &mut [Checkout],
        works: &[Option<Work<'_>>],
        gid: Option<&str>,
    ) -> Result<Outcome, FrontendError> {
        let mut exs: Vec<Exchange> = Vec::with_capacity(conns.len());
        for (c, work) in conns.iter_mut().zip(works) {
            let mut ex = Exchange::default();
            let Some(work) = work else {
                exs.push(ex);
                continue;
            };
            let mut out = BytesMut::with_capacity(256);
            self.prelude(c, &mut out, &mut ex);
            if gid.is_some() {
                out.extend_from_slice(&encode_query(twophase::begin_sql()).bytes);
                ex.push(Expect::swallow(Until::Query));
            }
            match work {
                Work::Simple(f) => {
                    out.extend_from_slice(&f.bytes);
                    ex.push(Expect::forward(Until::Query));
                }
                Work::Batch(msgs, _) => build_batch(msgs, c, &mut out, &mut ex),
            }
            if let Some(gid) = gid {
                // In a transaction that failed, PREPARE rolls it back instead.
                out.extend_from_slice(&encode_query(&twophase::prepare_sql(gid)).bytes);
                ex.push(Expect::swallow(Until::Query));
            }
            c.write_all(&out).await?;
            exs.push(ex);
        }
        let n = conns.len();
        let lead = works.iter().position(Option::is_some).unwrap_or(0);
        let mut done: Vec<bool> = works.iter().map(Option::is_none).collect();
        let mut error: Option<Frame> = None;
        let mut last_z: Option<Frame> = None;
        // Segment by segment: the first node's replies pass through (its
        // RowDescription, its rows); the others contribute rows only; the
        // segment's end (CommandComplete etc.) is emitted once, with the sum.
        while !done.iter().all(|d| *d) {
            let mut end: Option<Frame> = None;
            let mut rows = 0u64;
            // COPY … TO STDOUT: every node's data, then one CopyDone.
            let mut copy_done: Option<Frame> = None;
            for i in 0..n {
                while !done[i] {
                    match exs[i].next_fanout(&mut conns[i]).await? {
                        Item::Msg(f) => match f.tag {
                            b'C' | b'I' | b's' => {
                                rows += tag_rows(command_tag(&f));
                                if i == lead {
                                    end = Some(f);
                                }
                                break;
                            }
                            b'E' => {
                                error.get_or_insert(f);
                                break;
                            }
                            b'D' | b'd' if error.is_none() => self.write(&f),
                            b'c' => copy_done = Some(f),
                            b'Z' => {}
                            _ if i == lead && error.is_none() => self.write(&f),
                            _ => {}
                        },
                        Item::CopyIn(_) => {
                            conns[i].reusable = false;
                            return Err(FrontendError::route(
                                sqlstate::FEATURE_NOT_SUPPORTED,
                                "COPY cannot run on every shard at once".into(),
                                "COPY into one shard's rows at a time".into(),
                            ));
                        }
                        Item::Done(z) => {
                            done[i] = true;
                            if z.is_none() {
                                // After a Flush the server owes a Sync.
                                conns[i].status = IN_PIPELINE;
                            }
                            if i == lead {
                                last_z = z;
                            }
                        }
                    }
                    if self.wbuf.len() >= FLUSH_AT {
                        self.flush().await?;
                    }
                }
            }
            if error.is_none() {
                if let Some(c) = copy_done {
                    self.write(&c);
                }
                if let Some(end) = end {
                    if end.tag == b'C' {
                        self.write(&command_complete(&merged_tag(command_tag(&end), rows)));
                    } else {
                        self.write(&end);
                    }
                }
            }
        }
        let failed = error.is_some();
        if let Some(e) = error {
            self.shared.metrics.error(&parse_error(&e).code, "server");
            self.write(&e);
        }
        // With two-phase commit the ReadyForQuery waits for the outcome.
        if last_z.is_some() && gid.is_none() {
            self.report_params(&conns[lead]);
            self.write(&ready_for_query(super::spanning::status_of(conns)));
        }
        Ok(Outcome { error: failed })
    }
}

/// A node's fence error as the client sees it: a serialization failure,
/// which drivers and ORMs retry.
#[cold]
fn moved_error(message: &str) -> Frame {
    crate::protocol::messages::error_response(
        "ERROR",
        sqlstate::SERIALIZATION_FAILURE,
        message,
        Some("the row's partition moved to another node during this transaction; retry the transaction"),
    )
}

/// `SELECT 3` from one node becomes `SELECT <sum>`; tags without a count stay.
fn merged_tag(tag: &str, rows: u64) -> String {
    match tag.rsplit_once(' ') {
        Some((head, n)) if n.parse::<u64>().is_ok() => format!("{head} {rows}"),
        _ => tag.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn merged_tags_sum_counts() {
        assert_eq!(super::merged_tag("SELECT 3", 10), "SELECT 10");
        assert_eq!(super::merged_tag("CREATE INDEX", 0), "CREATE INDEX");
        assert_eq!(super::merged_tag("INSERT 0 1", 3), "INSERT 0 3");
    }
}
