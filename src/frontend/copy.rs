//! COPY on a sharded table without a shard key. `COPY t FROM STDIN`
//! (text, CSV, binary) reads each row's key from the stream
//! (`protocol::copy`) and sends the row to its node; every node runs the
//! same COPY inside a transaction, so a bad row — or a node's error —
//! leaves nothing committed anywhere (two-phase commit when it is on).
//! `COPY t TO STDOUT` and `COPY (query) TO STDOUT` return every node's rows.

use std::time::Instant;

use bytes::{BufMut, BytesMut};
use sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Statement,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::error::FrontendError;
use super::execute::Work;
use super::session::{Session, FLUSH_AT};
use crate::backend::{BackendError, Checkout, ServerConn};
use crate::catalog::twophase;
use crate::merge::{self, Fanout};
use crate::protocol::copy::{CopyError, Format, Key, Options, Piece, Splitter};
use crate::protocol::messages::{
    command_complete, encode_query, error_response, parse_error, ready_for_query, tag_rows,
};
use crate::protocol::{sqlstate, Frame};
use crate::ring::PartitionState;
use crate::router::sql::{hash_key, key_from_param};

fn refused(message: String) -> FrontendError {
    FrontendError::route(
        sqlstate::FEATURE_NOT_SUPPORTED,
        message,
        "use COPY … FROM STDIN / TO STDOUT (psql's \\copy) on a sharded table".into(),
    )
}

/// What a COPY FROM STDIN on a sharded table needs to know.
struct CopyIn {
    options: Options,
    key_index: usize,
    key_type: crate::config::KeyType,
    table: String,
}

impl Session {
    /// COPY naming a sharded table (or a query over one) with no key.
    pub(super) async fn sharded_copy(
        &mut self,
        f: &Frame,
        sql: &str,
        started: Instant,
    ) -> Result<(), FrontendError> {
        let stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|e| {
            refused(format!(
                "this COPY on a sharded table could not be read: {e}"
            ))
        })?;
        let [Statement::Copy {
            source,
            to,
            target,
            options,
            legacy_options,
            ..
        }] = stmts.as_slice()
        else {
            return Err(refused(
                "send COPY on a sharded table as its own query".into(),
            ));
        };
        if *to {
            let table = self.shared.routing.load();
            if table.moving() {
                let name = match source {
                    CopySource::Table { table_name, .. } => table_name.to_string(),
                    CopySource::Query(_) => "(query)".to_string(),
                };
                return Err(super::route::refuse_while_moving(
                    crate::router::Command::Copy,
                    &name,
                    &table,
                ));
            }
            if *target != CopyTarget::Stdout {
                return Err(refused(
                    "COPY … TO a server file or program on a sharded table".into(),
                ));
            }
            if let CopySource::Query(q) = source {
                match merge::plan(&q.to_string(), &self.shared.merge_catalog) {
                    Ok(Fanout::Concat) => {}
                    Ok(Fanout::Merge(_) | Fanout::Nested(_)) => {
                        return Err(refused("COPY (query) TO STDOUT where the query sorts, groups, limits or de-duplicates across shards; run the query itself".into()))
                    }
                    Err(r) => return Err(refused(r.0)),
                }
            }
            self.fanout(Work::Simple(f), started).await?;
            return Ok(());
        }
        if *target != CopyTarget::Stdin {
            return Err(refused(
                "COPY … FROM a server file or program into a sharded table".into(),
            ));
        }
        let CopySource::Table {
            table_name,
            columns,
        } = source
        else {
            return Err(refused("COPY FROM needs a table".into()));
        };
        let table = table_name.to_string();
        let name = table.rsplit('.').next().unwrap_or(&table).trim_matches('"');
        let Some((key, key_type, position)) = self.shared.analyzer.sharded_table(name) else {
            return Err(refused(format!(
                "COPY into \"{table}\": not a sharded table"
            )));
        };
        let key_index = if columns.is_empty() {
            position
        } else {
            columns
                .iter()
                .position(|c| c.value.eq_ignore_ascii_case(key))
        };
        let Some(key_index) = key_index else {
            return Err(FrontendError::route(
                sqlstate::NEEDS_SHARD_KEY,
                format!("COPY into sharded table \"{table}\" needs its shard key \"{key}\" among the columns"),
                format!("list \"{key}\" in the COPY column list"),
            ));
        };
        let spec = CopyIn {
            options: copy_options(options, legacy_options)?,
            key_index,
            key_type,
            table,
        };
        self.shared.metrics.cross_shard("copy_in");
        Box::pin(self.sharded_copy_in(sql, spec)).await
    }

    async fn sharded_copy_in(&mut self, sql: &str, spec: CopyIn) -> Result<(), FrontendError> {
        let mut conns: Vec<Checkout> = Vec::with_capacity(self.shared.pools.len());
        for pool in self.shared.pools.clone().iter() {
            conns.push(pool.checkout().await?);
        }
        self.set_cancel(&conns.iter().collect::<Vec<_>>());
        let r = self.copy_in_on(&mut conns, sql, spec).await;
        self.set_cancel(&[]);
        if r.is_err() {
            for c in &mut conns {
                c.reusable = false;
            }
        }
        r
    }

    async fn copy_in_on(
        &mut self,
        conns: &mut [Checkout],
        sql: &str,
        spec: CopyIn,
    ) -> Result<(), FrontendError> {
        // Every node: the client's settings, BEGIN, the same COPY.
        for c in conns.iter_mut() {
            self.sync_session(c, false).await?;
            let mut out = BytesMut::new();
            out.extend_from_slice(&encode_query("BEGIN").bytes);
            out.extend_from_slice(&encode_query(sql).bytes);
            c.write_all(&out).await?;
        }
        let mut copy_in_response = None;
        let mut failure: Option<Frame> = None;
        for c in conns.iter_mut() {
            match until_copy_in(c).await? {
                Ok(g) => {
                    copy_in_response.get_or_insert(g);
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        let Some(g) = copy_in_response.filter(|_| failure.is_none()) else {
            // A node refused the COPY before any data: end it everywhere.
            for c in conns.iter_mut() {
                if c.status == b'?' {
                    c.write_all(&copy_fail("another shard refused this COPY").bytes)
                        .await?;
                    let _ = copy_result(c).await?;
                }
                twophase::simple(c, "ROLLBACK").await?;
            }
            let e = failure.expect("a node failed");
            self.shared.metrics.error(&parse_error(&e).code, "server");
            self.write(&e);
            self.write(&ready_for_query(b'I'));
            return Ok(());
        };
        self.write(&g);
        self.flush().await?;

        // The rows, each to its node.
        let table = self.shared.routing.peek();
        let n = conns.len();
        let mut bufs: Vec<BytesMut> = (0..n)
            .map(|_| BytesMut::with_capacity(FLUSH_AT + 1024))
            .collect();
        let mut splitter = Splitter::new(spec.options.clone(), spec.key_index);
        let mut bad: Option<(String, &'static str)> = None;
        let client_failed = loop {
            let Some(f) = self.read_frame().await? else {
                return Err(FrontendError::ClientIo(
                    std::io::ErrorKind::UnexpectedEof.into(),
                ));
            };
            match f.tag {
                b'd' if bad.is_none() => {
                    bad = route_rows(&mut splitter, Some(f.body()), &mut bufs, &spec, &table);
                    for (c, buf) in conns.iter_mut().zip(bufs.iter_mut()) {
                        if buf.len() >= FLUSH_AT {
                            send_copy_data(c, buf).await?;
                        }
                    }
                }
                b'd' => {}
                b'c' => {
                    if bad.is_none() {
                        bad = route_rows(&mut splitter, None, &mut bufs, &spec, &table);
                    }
                    break None;
                }
                b'f' => {
                    break Some(
                        String::from_utf8_lossy(f.body())
                            .trim_end_matches('\0')
                            .to_string(),
                    )
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
        };

        // End the COPY on every node: done, or failed.
        let fail_reason = match (&client_failed, &bad) {
            (Some(m), _) => Some(format!("COPY from stdin failed: {m}")),
            (None, Some((m, _))) => Some(m.clone()),
            _ => None,
        };
        let mut rows = 0u64;
        let mut node_error: Option<Frame> = None;
        for (c, buf) in conns.iter_mut().zip(bufs.iter_mut()) {
            if fail_reason.is_none() {
                send_copy_data(c, buf).await?;
                c.write_all(&Frame::new(b'c', &[]).bytes).await?;
            } else {
                c.write_all(&copy_fail("the COPY failed on another shard or in the proxy").bytes)
                    .await?;
            }
            let (n, e) = copy_result(c).await?;
            rows += n;
            if fail_reason.is_none() {
                if let Some(e) = e {
                    node_error.get_or_insert(e);
                }
            }
        }
        if fail_reason.is_some() || node_error.is_some() {
            for c in conns.iter_mut() {
                twophase::simple(c, "ROLLBACK").await?;
            }
            match (node_error, client_failed, bad) {
                (Some(e), _, _) => {
                    self.shared.metrics.error(&parse_error(&e).code, "server");
                    self.write(&e);
                }
                (None, Some(m), _) => self.copy_error(
                    sqlstate::QUERY_CANCELED,
                    &format!("COPY from stdin failed: {m}"),
                ),
                (None, None, Some((m, code))) => self.copy_error(code, &m),
                (None, None, None) => unreachable!("a failure has a reason"),
            }
            self.write(&ready_for_query(b'I'));
            return Ok(());
        }
        // Commit on every node: two-phase when it is on.
        if let Err(message) = self.commit_copy(conns).await? {
            self.copy_error(sqlstate::TRANSACTION_ROLLBACK, &message);
            self.write(&ready_for_query(b'I'));
            return Ok(());
        }
        self.write(&command_complete(&format!("COPY {rows}")));
        self.write(&ready_for_query(b'I'));
        Ok(())
    }

    fn copy_error(&mut self, code: &'static str, message: &str) {
        self.shared.metrics.error(code, "proxy");
        self.write(&error_response("ERROR", code, message, None));
    }

    /// Ok(Ok(())) committed everywhere; Ok(Err(why)) rolled back everywhere.
    async fn commit_copy(
        &mut self,
        conns: &mut [Checkout],
    ) -> Result<Result<(), String>, BackendError> {
        if !self.shared.two_phase {
            for c in conns.iter_mut() {
                if let Some(e) = twophase::simple(c, "COMMIT").await? {
                    return Ok(Err(format!(
                        "COMMIT failed on node {}: {e} (not atomic: two-phase commit is off)",
                        c.node_name()
                    )));
                }
            }
            return Ok(Ok(()));
        }
        let catalog = self.shared.pools[0].clone();
        let r = twophase::prepare_and_commit(conns, &catalog).await?;
        self.shared.metrics.two_phase(if r.is_ok() {
            "committed"
        } else {
            "rolled_back"
        });
        Ok(r.map_err(|why| format!("the COPY was rolled back on every shard: {why}")))
    }
}

/// Feeds a chunk of COPY data (None: the end of the stream) and appends
/// each row to its node's buffer; the first bad row's message and SQLSTATE.
fn route_rows(
    splitter: &mut Splitter,
    data: Option<&[u8]>,
    bufs: &mut [BytesMut],
    spec: &CopyIn,
    table: &crate::ring::RoutingTable,
) -> Option<(String, &'static str)> {
    let mut route_err = None;
    let mut sink = |p: Piece<'_>| match p {
        Piece::Everyone(b) => bufs.iter_mut().for_each(|buf| buf.extend_from_slice(b)),
        Piece::Row { bytes, key, line } => {
            if route_err.is_some() {
                return;
            }
            match node_of(&key, spec.key_type, table) {
                Ok(node) => bufs[node].extend_from_slice(bytes),
                Err((m, code)) => route_err = Some((m, code, line)),
            }
        }
    };
    let r = match data {
        Some(d) => splitter.feed(d, &mut sink),
        None => splitter.finish(&mut sink),
    };
    match (r, route_err) {
        (Err(CopyError { line, message }), _) => Some((
            format!("COPY {}, line {line}: {message}", spec.table),
            sqlstate::BAD_COPY_FILE_FORMAT,
        )),
        (Ok(()), Some((message, code, line))) => {
            Some((format!("COPY {}, line {line}: {message}", spec.table), code))
        }
        (Ok(()), None) => None,
    }
}

/// The node of one row's key.
fn node_of(
    key: &Key<'_>,
    key_type: crate::config::KeyType,
    table: &crate::ring::RoutingTable,
) -> Result<usize, (String, &'static str)> {
    let value = match key {
        Key::Null => return Err(("the shard key is NULL".into(), sqlstate::NOT_NULL_VIOLATION)),
        Key::Text(t) => {
            let text = std::str::from_utf8(t).map_err(|_| {
                (
                    "the shard key is not valid UTF-8".to_string(),
                    sqlstate::INVALID_TEXT_REPRESENTATION,
                )
            })?;
            crate::router::keys::key_from_text(text, key_type).map_err(|e| {
                (
                    format!("shard key: {e}"),
                    sqlstate::INVALID_TEXT_REPRESENTATION,
                )
            })?
        }
        Key::Binary(b) => key_from_param(Some(b), true, key_type).map_err(|e| {
            (
                format!("shard key: {e}"),
                sqlstate::INVALID_TEXT_REPRESENTATION,
            )
        })?,
    };
    let h = hash_key(&value, key_type).ok_or_else(|| {
        (
            "the shard key is NULL".to_string(),
            sqlstate::NOT_NULL_VIOLATION,
        )
    })?;
    let p = table.lookup(h);
    if p.state != PartitionState::Serving {
        return Err((
            format!("partition {} is being moved; writes to it are paused", p.id),
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
        ));
    }
    Ok(p.node)
}

async fn send_copy_data(c: &mut ServerConn, buf: &mut BytesMut) -> Result<(), BackendError> {
    if buf.is_empty() {
        return Ok(());
    }
    let mut msg = BytesMut::with_capacity(buf.len() + 5);
    msg.put_u8(b'd');
    msg.put_u32(buf.len() as u32 + 4);
    msg.extend_from_slice(buf);
    buf.clear();
    c.write_all(&msg).await
}

fn copy_fail(reason: &str) -> Frame {
    let mut b = reason.as_bytes().to_vec();
    b.push(0);
    Frame::new(b'f', &b)
}

/// Reads up to the CopyInResponse; Err(error frame) if the node refused.
async fn until_copy_in(c: &mut ServerConn) -> Result<Result<Frame, Frame>, BackendError> {
    let mut err = None;
    loop {
        let f = c.recv().await?;
        match f.tag {
            b'G' => {
                // In COPY mode until CopyDone/CopyFail.
                c.status = b'?';
                return Ok(Ok(f));
            }
            b'E' => err = Some(f),
            b'Z' => {
                c.status = crate::protocol::messages::ready_status(&f);
                if let Some(e) = err.take() {
                    return Ok(Err(e));
                }
            }
            _ => {}
        }
    }
}

/// Reads a COPY's end: the row count, or the node's error.
async fn copy_result(c: &mut ServerConn) -> Result<(u64, Option<Frame>), BackendError> {
    let mut rows = 0;
    let mut err = None;
    loop {
        let f = c.recv().await?;
        match f.tag {
            b'C' => rows += tag_rows(crate::protocol::messages::command_tag(&f)),
            b'E' => {
                err.get_or_insert(f);
            }
            b'Z' => {
                c.status = crate::protocol::messages::ready_status(&f);
                return Ok((rows, err));
            }
            _ => {}
        }
    }
}

/// The data options of a COPY statement (new and legacy syntax).
fn copy_options(
    options: &[CopyOption],
    legacy: &[CopyLegacyOption],
) -> Result<Options, FrontendError> {
    let mut format = Format::Text;
    for o in options {
        if let CopyOption::Format(f) = o {
            format = match f.value.to_ascii_lowercase().as_str() {
                "text" => Format::Text,
                "csv" => Format::Csv,
                "binary" => Format::Binary,
                other => return Err(refused(format!("COPY format \"{other}\""))),
            };
        }
    }
    for o in legacy {
        match o {
            CopyLegacyOption::Binary => format = Format::Binary,
            CopyLegacyOption::Csv(_) => format = Format::Csv,
            _ => {}
        }
    }
    let mut opts = Options::new(format);
    let one_byte = |c: char, what: &str| -> Result<u8, FrontendError> {
        u8::try_from(c as u32)
            .ok()
            .filter(|b| b.is_ascii())
            .ok_or_else(|| refused(format!("COPY {what} must be a single one-byte character")))
    };
    let mut escape_set = false;
    for o in options {
        match o {
            CopyOption::Delimiter(c) => opts.delimiter = one_byte(*c, "DELIMITER")?,
            CopyOption::Null(s) => opts.null = s.as_bytes().to_vec(),
            CopyOption::Header(h) => opts.header = *h,
            CopyOption::Quote(c) => opts.quote = one_byte(*c, "QUOTE")?,
            CopyOption::Escape(c) => {
                opts.escape = one_byte(*c, "ESCAPE")?;
                escape_set = true;
            }
            _ => {}
        }
    }
    for o in legacy {
        match o {
            CopyLegacyOption::Delimiter(c) => opts.delimiter = one_byte(*c, "DELIMITER")?,
            CopyLegacyOption::Null(s) => opts.null = s.as_bytes().to_vec(),
            CopyLegacyOption::Header => opts.header = true,
            CopyLegacyOption::Csv(csv) => {
                for c in csv {
                    match c {
                        CopyLegacyCsvOption::Header => opts.header = true,
                        CopyLegacyCsvOption::Quote(q) => opts.quote = one_byte(*q, "QUOTE")?,
                        CopyLegacyCsvOption::Escape(e) => {
                            opts.escape = one_byte(*e, "ESCAPE")?;
                            escape_set = true;
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if !escape_set {
        opts.escape = opts.quote;
    }
    Ok(opts)
}
