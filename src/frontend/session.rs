//! One client connection after startup: reads messages, keeps the
//! transaction state, and hands each unit of work (a simple query, or an
//! extended-protocol batch up to Sync/Flush) to the executor.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::batch::Prepared;
use super::cancel::{CancelSlot, CancelTarget};
use super::error::FrontendError;
use super::pipeline::IN_PIPELINE;
use super::settings::Settings;
use super::Shared;
use crate::analyzer::recorder::SourceId;
use crate::backend::Checkout;
use crate::protocol::messages::{error_response, ready_for_query};
use crate::protocol::params::ParamSet;
use crate::protocol::{sqlstate, try_frame, Frame};

/// The proxy's view of the client's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tx {
    /// No transaction, or one running on the attached server connection
    /// (its ReadyForQuery status is then the truth).
    None,
    /// `BEGIN` was answered by the proxy; the server sees it, with any queued
    /// statements, once the first routed statement picks the node.
    Deferred { prelude: Vec<String> },
    /// The proxy refused a statement inside a transaction: everything but
    /// COMMIT/ROLLBACK fails until the client ends it.
    Failed,
}

pub struct Session {
    pub(super) shared: Arc<Shared>,
    pub(super) rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    pub(super) rbuf: BytesMut,
    pub(super) wbuf: BytesMut,
    /// The server connection of the running transaction, if any.
    pub(super) attached: Option<Checkout>,
    /// Other nodes' connections that joined the running transaction
    /// (two-phase commit at COMMIT); empty for a one-node transaction.
    pub(super) joined: Vec<Checkout>,
    /// The statements that began the running transaction (BEGIN and what
    /// was queued with it), replayed on a node that joins it.
    pub(super) tx_begin: Vec<String>,
    /// The node a transaction that spans nodes started on.
    pub(super) home: crate::ring::NodeId,
    /// The attached connection joined a running transaction and still
    /// needs its BEGIN (sent with its first statement).
    pub(super) begin_pending: bool,
    pub(super) tx: Tx,
    pub(super) statements: HashMap<String, Arc<Prepared>>,
    pub(super) unnamed: Option<Arc<Prepared>>,
    pub(super) batch: Vec<Frame>,
    /// Bytes of the client messages in `batch`.
    pub(super) batch_bytes: usize,
    pub(super) decoded: super::batch::Decoded,
    /// Scratch space reused by every round (bytes to a server, expectations).
    pub(super) sbuf: BytesMut,
    pub(super) exchange: super::exchange::Exchange,
    pub(super) settings: Settings,
    /// Settings as they will be if the running transaction commits.
    pub(super) pending: Option<Settings>,
    /// The reported parameters' values as the client was told them.
    pub(super) reported: ParamSet,
    /// The running deferred transaction reported a parameter change.
    pub(super) told_in_tx: bool,
    /// ParameterStatus for the proxy's next own ReadyForQuery.
    pub(super) held_reports: Vec<Frame>,
    /// Channels the client listens on, and its notifications (see `listen`).
    pub(super) notes: Option<super::listen::Notes>,
    /// The process id the client was given (BackendKeyData).
    pub(super) key_pid: i32,
    /// The process id of the server connection the client last used.
    pub(super) last_pid: std::sync::atomic::AtomicI32,
    /// Why the client keeps its server connection between transactions
    /// (see `pin`).
    pub(super) pin: Option<&'static str>,
    /// A protocol statement SQL `EXECUTE` needs on the next connection.
    pub(super) ensure_stmt: Option<Arc<Prepared>>,
    /// The running statements may send notifications (see `listen`).
    pub(super) may_notify: bool,
    cancel: CancelSlot,
    /// The client's (application_name, user), interned for the recorder.
    pub(super) source: SourceId,
    /// A node answered the last unit of work with the fence's
    /// `PARTITION_MOVED` (rewritten to `40001` for the client).
    pub(super) moved: bool,
    /// Flushes to the client so far: a unit of work can be run again only
    /// if nothing of its reply has left.
    pub(super) flushes: u64,
    /// Whether an error ended the running pipeline before its Sync.
    pub(super) pipeline: super::pipeline::Pipeline,
}

/// Flush to the client once this much output is buffered.
pub(super) const FLUSH_AT: usize = 64 * 1024;

/// An extended-protocol pipeline is sent on (with a Flush) once this much
/// of it is buffered, before its Sync.
const STREAM_AT: usize = 256 * 1024;

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shared: Arc<Shared>,
        rd: OwnedReadHalf,
        wr: OwnedWriteHalf,
        rbuf: BytesMut,
        settings: Settings,
        reported: ParamSet,
        cancel: (i32, CancelSlot),
        source: SourceId,
    ) -> Self {
        let (key_pid, cancel) = cancel;
        Self {
            shared,
            rd,
            wr,
            rbuf,
            // Small at first (an idle client costs little); it grows once to
            // what the client's replies need and keeps that capacity.
            wbuf: BytesMut::with_capacity(1024),
            attached: None,
            joined: Vec::new(),
            tx_begin: Vec::new(),
            home: 0,
            begin_pending: false,
            tx: Tx::None,
            statements: HashMap::new(),
            unnamed: None,
            batch: Vec::new(),
            batch_bytes: 0,
            decoded: Default::default(),
            sbuf: BytesMut::new(),
            exchange: Default::default(),
            moved: false,
            flushes: 0,
            pipeline: Default::default(),
            settings,
            pending: None,
            reported,
            told_in_tx: false,
            held_reports: Vec::new(),
            notes: None,
            key_pid,
            last_pid: Default::default(),
            pin: None,
            ensure_stmt: None,
            may_notify: false,
            cancel,
            source,
        }
    }

    /// The query loop; returns when the client leaves or breaks the protocol.
    pub async fn run(mut self) -> Result<(), FrontendError> {
        loop {
            let f = match self.next_frame().await {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => {
                    if let FrontendError::Protocol(_) = e {
                        self.shared.metrics.error(e.sqlstate(), "proxy");
                        let _ = self.send_now(&e.to_frame()).await;
                    }
                    return Err(e);
                }
            };
            let mut tag = f.tag;
            let r = match f.tag {
                // After an error, as a server: nothing runs until Sync.
                b'S' if self.skipping() => {
                    self.sync_skipped().await;
                    Ok(())
                }
                b'Q' | b'P' | b'B' | b'D' | b'E' | b'C' | b'H' if self.skipping() => Ok(()),
                b'Q' => {
                    let mut tries = 0;
                    loop {
                        let epoch = self.shared.routing.peek().epoch();
                        match self.simple_query(&f).await {
                            Err(FrontendError::Moved { .. })
                                if tries < 3 && self.await_move(epoch).await =>
                            {
                                tries += 1
                            }
                            r => break r,
                        }
                    }
                }
                b'P' | b'B' | b'D' | b'E' | b'C' => {
                    self.batch_bytes += f.bytes.len();
                    self.batch.push(f);
                    if self.batch_bytes < STREAM_AT {
                        Ok(())
                    } else {
                        // A long pipeline (a driver's executemany): sent on
                        // with a Flush of the proxy's, so that the client
                        // hears of an error while it is still writing.
                        tag = b'H';
                        self.batch.push(Frame::new(b'H', &[]));
                        self.run_batch().await
                    }
                }
                b'H' | b'S' => {
                    self.batch.push(f);
                    self.run_batch().await
                }
                b'X' => return Ok(()),
                // Stray COPY messages after a failed COPY are ignored, as the server does.
                b'd' | b'c' | b'f' => Ok(()),
                other => Err(FrontendError::Protocol(
                    crate::protocol::ProtocolError::Unexpected {
                        tag: other as char,
                        when: "in the query loop",
                    },
                )),
            };
            if let Err(e) = r {
                if e.is_fatal() {
                    let _ = self.send_now(&e.to_frame()).await;
                    return Err(e);
                }
                self.report(&e);
                self.after_error(tag, false).await;
            }
            self.flush().await?;
        }
    }

    /// Sends an error for a refused unit of work. Inside a transaction the
    /// transaction is aborted, as PostgreSQL would on any error.
    pub(super) fn report(&mut self, e: &FrontendError) {
        self.shared.metrics.error(e.sqlstate(), "proxy");
        self.write(&e.to_frame());
        if matches!(e, FrontendError::Backend(_)) {
            // The server connection is gone; so is any transaction on it
            // (other nodes' parts are dropped, which rolls them back).
            let had_joined = !self.joined.is_empty();
            self.joined.clear();
            // Whatever pinned the client died with its connection.
            self.pin = None;
            self.begin_pending = false;
            if self.attached.take().is_some() || self.tx != Tx::None || had_joined {
                self.tx = Tx::Failed;
            }
            self.set_cancel(&[]);
            return;
        }
        // A connection inside a pipeline stays: the pipeline's Sync fails
        // it there (see `pipeline`), as the server would have.
        let pipelined = self
            .attached
            .as_ref()
            .is_some_and(|c| c.status == IN_PIPELINE);
        let in_tx = self.tx != Tx::None || self.attached.as_ref().is_some_and(|c| c.status != b'I');
        if in_tx && !pipelined {
            self.tx = Tx::Failed;
            for mut c in self.joined.drain(..) {
                tokio::spawn(async move {
                    let _ = rollback(&mut c).await;
                });
            }
            if let Some(mut c) = self.attached.take() {
                // Roll back in the background; the connection returns to the
                // pool once the server confirms.
                tokio::spawn(async move {
                    let _ = rollback(&mut c).await;
                });
                self.set_cancel(&[]);
            }
        }
    }

    /// What routing may do with statements that need several nodes.
    pub(super) fn policy(&self) -> super::route::Policy {
        super::route::Policy {
            default_node: self.shared.default_node,
            multi_shard_writes: self.shared.config.routing.allow_multi_shard_writes,
            hold_writes: self.tx == Tx::None && self.attached.is_none() && self.joined.is_empty(),
        }
    }

    /// The ReadyForQuery status the client should see now.
    pub(super) fn status(&self) -> u8 {
        match (&self.tx, &self.attached) {
            (Tx::Failed, _) => b'E',
            (Tx::Deferred { .. }, _) => b'T',
            (Tx::None, Some(_)) if self.joined.iter().any(|j| j.status == b'E') => b'E',
            (Tx::None, Some(c)) if c.status == b'T' || c.status == b'E' => c.status,
            _ => b'I',
        }
    }

    /// Error for statements sent inside a transaction the proxy aborted.
    pub(super) fn failed_tx_error(&mut self) {
        self.shared
            .metrics
            .error(sqlstate::IN_FAILED_TRANSACTION, "proxy");
        self.write(&error_response(
            "ERROR",
            sqlstate::IN_FAILED_TRANSACTION,
            "current transaction is aborted, commands ignored until end of transaction block",
            None,
        ));
        self.write(&ready_for_query(b'E'));
    }

    #[inline]
    pub(super) fn write(&mut self, f: &Frame) {
        // What the client is told of parameters, whoever tells it.
        self.reported.observe(f);
        self.wbuf.extend_from_slice(&f.bytes);
    }

    /// `write` for a whole message's bytes (header included).
    #[inline]
    pub(super) fn write_message(&mut self, m: &[u8]) {
        self.reported.observe_message(m);
        self.wbuf.extend_from_slice(m);
    }

    pub(super) async fn flush(&mut self) -> Result<(), FrontendError> {
        if !self.wbuf.is_empty() {
            self.wr.write_all(&self.wbuf).await?;
            self.wbuf.clear();
            self.flushes += 1;
        }
        Ok(())
    }

    async fn send_now(&mut self, f: &Frame) -> Result<(), FrontendError> {
        self.write(f);
        self.flush().await
    }

    /// The next client message; None at a clean end of stream.
    pub(super) async fn read_frame(&mut self) -> Result<Option<Frame>, FrontendError> {
        loop {
            if let Some(f) = try_frame(&mut self.rbuf)? {
                return Ok(Some(f));
            }
            if self.rd.read_buf(&mut self.rbuf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Points the client's cancel slot at the connections now working for it.
    pub(super) fn set_cancel(&self, conns: &[&Checkout]) {
        if let Some(c) = conns.first() {
            self.last_pid
                .store(c.pid, std::sync::atomic::Ordering::Relaxed);
            if self.may_notify {
                // Before the statement runs: its notification may reach
                // the listeners before the statement's reply reaches us.
                self.shared.notifier.sent_by(c.pid, self.key_pid);
            }
        }
        let mut slot = self.cancel.lock();
        slot.clear();
        slot.extend(conns.iter().map(|c| CancelTarget {
            addr: c.addr.clone(),
            pid: c.pid,
            secret: c.secret,
        }));
    }

    /// A write met a partition in cut-over or a node's fence: waits (at most
    /// `[migration] hold_timeout`) for a routing table newer than `epoch`,
    /// asking the catalog for it; true if one came and the work may run again.
    pub(super) async fn await_move(&self, epoch: u64) -> bool {
        if let Some(catalog) = &self.shared.catalog {
            catalog.refresh_soon(&self.shared);
        }
        let limit = std::time::Duration::from_secs(self.shared.config.migration.hold_timeout);
        self.shared.routing.wait_newer(epoch, limit).await
    }

    /// Returns the attached connection to its pool once its transaction ended.
    pub(super) fn release_if_idle(&mut self) {
        if self.pin.is_none()
            && self.joined.is_empty()
            && self.attached.as_ref().is_some_and(|c| c.status == b'I')
        {
            self.attached = None;
            self.set_cancel(&[]);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.forget_listens();
    }
}

/// Ends whatever transaction a connection is in, so it can be pooled again.
async fn rollback(c: &mut Checkout) -> Result<(), crate::backend::BackendError> {
    if c.status == IN_PIPELINE {
        super::pipeline::sync_pipeline(c, true).await?;
    }
    c.write_all(&crate::protocol::messages::encode_query("ROLLBACK").bytes)
        .await?;
    loop {
        let f = c.read_frame().await?;
        if f.tag == b'Z' {
            c.status = crate::protocol::messages::ready_status(&f);
            return Ok(());
        }
    }
}
