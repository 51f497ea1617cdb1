//! Per-partition request counters: reads, writes, rows, bytes, latency sum.
//!
//! Indexed by partition id in a table that only ever grows (a split adds
//! ids); growth swaps in a larger table, so a lookup is one atomic load and
//! an index, and counting is a handful of relaxed atomic adds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::ring::PartitionId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Read,
    Write,
}

#[derive(Debug, Default)]
pub struct PartitionCounters {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub rows: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub latency_us: AtomicU64,
    pub errors: AtomicU64,
}

/// Cumulative counters for every partition id seen so far.
pub struct RequestStats {
    table: ArcSwap<Vec<Arc<PartitionCounters>>>,
}

/// One request's figures, as recorded.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub kind: RequestKind,
    pub rows: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub latency_us: u64,
    pub error: bool,
}

impl Default for RequestStats {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestStats {
    pub fn new() -> Self {
        Self {
            table: ArcSwap::from_pointee(Vec::new()),
        }
    }

    /// Makes sure ids `0..n` have counters (called when a table is published).
    pub fn ensure(&self, n: usize) {
        let cur = self.table.load();
        if cur.len() >= n {
            return;
        }
        let mut next: Vec<_> = cur.iter().cloned().collect();
        next.resize_with(n, Default::default);
        self.table.store(Arc::new(next));
    }

    #[inline]
    pub fn record(&self, partition: PartitionId, r: Request) {
        let table = self.table.load();
        let Some(c) = table.get(partition as usize) else {
            return;
        };
        match r.kind {
            RequestKind::Read => c.reads.fetch_add(1, Ordering::Relaxed),
            RequestKind::Write => c.writes.fetch_add(1, Ordering::Relaxed),
        };
        c.rows.fetch_add(r.rows, Ordering::Relaxed);
        c.bytes_in.fetch_add(r.bytes_in, Ordering::Relaxed);
        c.bytes_out.fetch_add(r.bytes_out, Ordering::Relaxed);
        c.latency_us.fetch_add(r.latency_us, Ordering::Relaxed);
        if r.error {
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A snapshot of all counters: `(partition id, counters)`.
    pub fn snapshot(&self) -> Arc<Vec<Arc<PartitionCounters>>> {
        self.table.load_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_grows() {
        let s = RequestStats::new();
        s.ensure(4);
        let r = Request {
            kind: RequestKind::Write,
            rows: 2,
            bytes_in: 10,
            bytes_out: 5,
            latency_us: 7,
            error: false,
        };
        s.record(3, r);
        s.record(9, r); // unknown id: ignored, not a panic
        s.ensure(10);
        s.record(
            9,
            Request {
                kind: RequestKind::Read,
                ..r
            },
        );
        let snap = s.snapshot();
        assert_eq!(snap[3].writes.load(Ordering::Relaxed), 1);
        assert_eq!(snap[3].rows.load(Ordering::Relaxed), 2);
        assert_eq!(snap[9].reads.load(Ordering::Relaxed), 1);
        assert_eq!(snap.len(), 10);
    }
}
