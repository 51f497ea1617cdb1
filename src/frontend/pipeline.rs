//! An extended-protocol pipeline after an error.
//!
//! A server that fails a message skips everything the client sends until
//! Sync, answers that Sync with ReadyForQuery and goes on. Drivers that
//! pipeline (several Parse/Bind/Execute with Flush in between, one Sync:
//! libpq, psycopg, pgx, tokio-postgres) rely on it. The proxy does the same
//! whichever side failed. A server's error leaves that server skipping too,
//! so the proxy must not send it more work, only the Sync. An error of the
//! proxy's own (a refused statement) is carried to the server connection
//! that is still inside the pipeline by a Parse that cannot succeed: the
//! server then rolls back the pipeline's implicit transaction (or aborts
//! the explicit one) exactly as if it had failed itself, and its
//! ReadyForQuery status is the client's.

use bytes::BytesMut;

use super::error::FrontendError;
use super::session::Session;
use crate::backend::{BackendError, ServerConn};
use crate::protocol::messages::{encode_parse, ready_for_query, ready_status};
use crate::protocol::Frame;

/// Where the client's pipeline stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pipeline {
    #[default]
    Open,
    /// An error ended it before its Sync: client messages are dropped
    /// until Sync. `server_failed`: the error came from the server, which
    /// is skipping as well.
    Skipping { server_failed: bool },
}

/// Not SQL: fails at Parse on any server, aborting its pipeline.
const ABORT_SQL: &str = "shardcast: a statement of this pipeline was refused by the proxy";

/// A connection's status while a round that ended with Flush awaits its Sync.
pub const IN_PIPELINE: u8 = b'?';

impl Session {
    /// True while client messages are skipped until Sync.
    #[inline]
    pub(super) fn skipping(&self) -> bool {
        self.pipeline != Pipeline::Open
    }

    /// After an error in a unit of work that the client ended with `tag`
    /// (the error was already written): after a Flush the pipeline is
    /// skipped to its Sync; after a Sync or a Query it ends now.
    pub(super) async fn after_error(&mut self, tag: u8, server_failed: bool) {
        if tag == b'H' {
            self.pipeline = Pipeline::Skipping { server_failed };
        } else {
            self.end_pipeline(server_failed).await;
        }
    }

    /// The client's Sync while skipping.
    pub(super) async fn sync_skipped(&mut self) {
        let server_failed = matches!(
            self.pipeline,
            Pipeline::Skipping {
                server_failed: true
            }
        );
        self.batch.clear();
        self.end_pipeline(server_failed).await;
    }

    /// A Sync the proxy answers itself: a connection still inside the
    /// pipeline (an earlier round ended with Flush) gets it too, and goes
    /// back to the pool if idle.
    pub(super) async fn end_open_pipeline(&mut self) {
        let mut lost = None;
        let conns = self.attached.iter_mut().chain(self.joined.iter_mut());
        for c in conns.filter(|c| c.status == IN_PIPELINE) {
            if let Err(e) = sync_pipeline(c, false).await {
                lost = Some(e);
            }
        }
        if let Some(e) = lost {
            self.report(&FrontendError::Backend(e));
        }
        self.release_if_idle();
    }

    /// Ends the pipeline on every connection still inside one (its last
    /// round ended with Flush), failing it there first unless the server
    /// failed already, then answers ReadyForQuery.
    async fn end_pipeline(&mut self, server_failed: bool) {
        self.pipeline = Pipeline::Open;
        let mut lost = None;
        let conns = self.attached.iter_mut().chain(self.joined.iter_mut());
        for c in conns.filter(|c| c.status == IN_PIPELINE) {
            if let Err(e) = sync_pipeline(c, !server_failed).await {
                lost = Some(e);
            }
        }
        if let Some(e) = lost {
            // The connection and its transaction are gone: say so.
            self.report(&FrontendError::Backend(e));
        }
        if let Some(c) = self.attached.take() {
            self.report_params(&c);
            self.attached = Some(c);
        }
        self.write(&ready_for_query(self.status()));
        self.release_if_idle();
    }
}

/// Sends Sync to a connection inside a pipeline (after a Parse that fails,
/// with `abort`) and waits for its ReadyForQuery; its other replies were
/// either relayed already or belong to the skipped part.
pub async fn sync_pipeline(c: &mut ServerConn, abort: bool) -> Result<(), BackendError> {
    let mut out = BytesMut::with_capacity(128);
    if abort {
        out.extend_from_slice(&encode_parse("", ABORT_SQL, &[0, 0]).bytes);
    }
    out.extend_from_slice(&Frame::new(b'S', &[]).bytes);
    c.write_all(&out).await?;
    loop {
        let f = c.recv().await?;
        if f.tag == b'Z' {
            c.status = ready_status(&f);
            return Ok(());
        }
    }
}
