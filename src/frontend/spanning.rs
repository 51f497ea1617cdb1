//! Connections for work that needs every node. Outside a transaction they
//! are checked out for the statement; inside one (with two-phase commit)
//! every node joins the transaction — the missing ones with its BEGIN —
//! and they stay with it until COMMIT or ROLLBACK (see `multiwrite`).

use bytes::BytesMut;

use super::error::FrontendError;
use super::exchange::{Exchange, Expect, Until};
use super::session::{Session, Tx};
use crate::backend::Checkout;
use crate::protocol::messages::encode_query;
use crate::protocol::sqlstate;
use crate::ring::NodeId;

/// The ReadyForQuery status of a set of connections: failed if any failed.
pub fn status_of(conns: &[Checkout]) -> u8 {
    if conns.iter().any(|c| c.status == b'E') {
        b'E'
    } else if conns.iter().any(|c| c.status == b'T') {
        b'T'
    } else {
        b'I'
    }
}

impl Session {
    pub(super) fn in_transaction(&self) -> bool {
        // A pinned connection between transactions is not one.
        self.attached
            .as_ref()
            .is_some_and(|c| self.pin.is_none() || c.status != b'I')
            || !self.joined.is_empty()
            || self.tx != Tx::None
    }

    /// Refuses work on every node inside a transaction that cannot span nodes.
    pub(super) fn may_span(&self) -> Result<(), FrontendError> {
        if !self.in_transaction() {
            return Ok(());
        }
        if !self.shared.two_phase {
            return Err(FrontendError::route(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "a statement without the shard key would need every shard, which a transaction cannot span without two-phase commit"
                    .into(),
                "filter on the shard key, or run it outside the transaction".into(),
            ));
        }
        self.refuse_if_spanning_failed()
    }

    /// A statement in a transaction whose part on some node failed.
    #[cold]
    pub(super) fn refuse_if_spanning_failed(&self) -> Result<(), FrontendError> {
        if self.status() == b'E' {
            return Err(FrontendError::route(
                sqlstate::IN_FAILED_TRANSACTION,
                "current transaction is aborted, commands ignored until end of transaction block"
                    .into(),
                "end it with ROLLBACK".into(),
            ));
        }
        Ok(())
    }

    /// Makes `node`'s connection the attached one for a statement that
    /// joins the running transaction from another node (the previous one
    /// waits in `joined`); a new participant gets the BEGIN with its first
    /// statement (`begin_pending`).
    #[cold]
    pub(super) async fn swap_in(&mut self, node: NodeId) -> Result<(), FrontendError> {
        if !self.shared.two_phase {
            let home = self.attached.as_ref().map(|c| c.node()).unwrap_or(node);
            let names = self.shared.routing.peek();
            return Err(FrontendError::route(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!(
                    "this transaction runs on shard node \"{}\"; a statement for node \"{}\" cannot join it (two-phase commit is off)",
                    names.nodes()[home],
                    names.nodes()[node]
                ),
                "keep each transaction on one shard key, or commit before switching".into(),
            ));
        }
        self.refuse_if_spanning_failed()?;
        let c = match self.joined.iter().position(|j| j.node() == node) {
            Some(i) => self.joined.swap_remove(i),
            None => {
                let c = self.shared.pools[node].checkout().await?;
                self.begin_pending = true;
                c
            }
        };
        self.set_cancel(&[&c]);
        if let Some(prev) = self.attached.replace(c) {
            self.joined.push(prev);
        }
        Ok(())
    }

    /// The transaction's BEGIN (and what was queued with it) on a node
    /// that joins it.
    #[cold]
    pub(super) fn begin_here(&self, out: &mut BytesMut, ex: &mut Exchange) {
        for sql in &self.tx_begin {
            out.extend_from_slice(&encode_query(sql).bytes);
            ex.push(Expect::swallow(Until::Query));
        }
    }

    /// One connection per node, in node order: fresh ones outside a
    /// transaction, the transaction's (all nodes joined) inside one.
    pub(super) async fn every_node(&mut self) -> Result<Vec<Checkout>, FrontendError> {
        let n = self.shared.pools.len();
        if !self.in_transaction() {
            // (A query string that opens a transaction on every node leaves
            // them joined to it, with this node as its home.)
            self.home = self.shared.default_node;
            let mut conns = Vec::with_capacity(n);
            // Pools are taken in node order so two fan-outs cannot deadlock.
            for pool in self.shared.pools.clone().iter() {
                conns.push(pool.checkout().await?);
            }
            return Ok(conns);
        }
        if let Tx::Deferred { prelude } = std::mem::replace(&mut self.tx, Tx::None) {
            self.tx_begin = prelude;
        }
        let mut have: Vec<Option<Checkout>> = (0..n).map(|_| None).collect();
        if let Some(c) = self.attached.take() {
            self.home = c.node();
            let i = c.node();
            have[i] = Some(c);
        } else {
            self.home = self.shared.default_node;
        }
        for c in self.joined.drain(..) {
            let i = c.node();
            have[i] = Some(c);
        }
        for (i, slot) in have.iter_mut().enumerate() {
            if slot.is_some() {
                continue;
            }
            let mut c = self.shared.pools[i].checkout().await?;
            self.sync_session(&mut c, true).await?;
            *slot = Some(c);
        }
        Ok(have.into_iter().flatten().collect())
    }

    /// Brings a connection off the hot path up to the client's session
    /// settings (and, with `begin`, into the running transaction) and
    /// waits for it; an error reaches the client. (The single-node path
    /// has its own, inlined, exchange.)
    pub(super) async fn sync_session(
        &mut self,
        c: &mut Checkout,
        begin: bool,
    ) -> Result<(), FrontendError> {
        let mut out = BytesMut::new();
        let mut ex = Exchange::default();
        self.prelude(c, &mut out, &mut ex);
        if begin {
            self.begin_here(&mut out, &mut ex);
        }
        // Only swallowed simple queries: one ReadyForQuery each.
        let mut left = ex.len();
        if left == 0 {
            return Ok(());
        }
        c.write_all(&out).await?;
        while left > 0 {
            let f = c.recv().await?;
            match f.tag {
                b'E' => self.write(&f),
                b'Z' => {
                    c.status = crate::protocol::messages::ready_status(&f);
                    left -= 1;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// After work on every node: connections in an unknown state (`broken`)
    /// are dropped, the others given back; the fan-out's latency recorded.
    pub(super) fn end_fanout(
        &mut self,
        mut conns: Vec<Checkout>,
        broken: bool,
        started: std::time::Instant,
    ) {
        if broken {
            for c in &mut conns {
                c.reusable = false;
            }
        } else {
            self.give_back(conns);
        }
        self.shared
            .metrics
            .fanout_latency
            .observe(started.elapsed().as_secs_f64());
    }

    /// Gives connections from `every_node` back: to their pools, or to the
    /// transaction they joined.
    pub(super) fn give_back(&mut self, conns: Vec<Checkout>) {
        if !conns.iter().any(|c| c.status == b'T' || c.status == b'E') {
            return;
        }
        for c in conns {
            if c.node() == self.home {
                self.attached = Some(c);
            } else {
                self.joined.push(c);
            }
        }
        if let Some(c) = &self.attached {
            self.set_cancel(&[c]);
        }
    }
}
