//! The routing table: an epoch plus partitions sorted by the start of their
//! hash range. A change (move, split, merge) builds a whole new table and
//! publishes it with one atomic pointer swap, so a lookup on the hot path is a
//! lock-free load plus a binary search and can never see half a change.

use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;

/// Index of a node in the configured node list.
pub type NodeId = usize;
/// Stable identifier of a partition (survives moves; split creates new ids).
pub type PartitionId = u32;

/// Where a partition is in its life. A move walks `Serving` (on A) →
/// `Copying` → `CuttingOver` → `Cleaning` (on B) → `Serving` (on B).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionState {
    /// Reads and writes go to `node`.
    Serving,
    /// Being copied to `target`; reads and writes still go to `node`, whose
    /// change log records every write for the catch-up.
    Copying,
    /// Writes are held in every proxy (and fenced on `node`) while the
    /// last changes reach `target`; reads still go to `node`.
    CuttingOver,
    /// Moved: `node` serves it; `target` is the old home, whose rows are
    /// being deleted (writes to them there are fenced).
    Cleaning,
}

impl PartitionState {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "serving" => Self::Serving,
            "copying" => Self::Copying,
            "cutting_over" => Self::CuttingOver,
            "cleaning" => Self::Cleaning,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Serving => "serving",
            Self::Copying => "copying",
            Self::CuttingOver => "cutting_over",
            Self::Cleaning => "cleaning",
        }
    }
}

/// One contiguous, inclusive range `lo..=hi` of the signed 64-bit hash space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub id: PartitionId,
    pub lo: i64,
    pub hi: i64,
    pub node: NodeId,
    pub state: PartitionState,
    /// The other node of a move in progress: where the partition goes
    /// (copying, cutting over), or where it came from (cleaning).
    pub target: Option<NodeId>,
}

impl Partition {
    pub fn contains(&self, hash: i64) -> bool {
        self.lo <= hash && hash <= self.hi
    }
}

/// Why a table was refused: the invariants every published table keeps.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    #[error("routing table has no partitions")]
    Empty,
    #[error("partition {id} starts at {lo}, expected {expected} (ranges must cover the hash space without gaps or overlaps)")]
    Gap {
        id: PartitionId,
        lo: i64,
        expected: i64,
    },
    #[error("partition {id} has lo {lo} > hi {hi}")]
    Inverted { id: PartitionId, lo: i64, hi: i64 },
    #[error("the last partition ends at {hi}, not at i64::MAX")]
    Short { hi: i64 },
    #[error("partition {id} names node {node}, but only {nodes} nodes exist")]
    UnknownNode {
        id: PartitionId,
        node: NodeId,
        nodes: usize,
    },
    #[error("partition id {id} appears twice")]
    DuplicateId { id: PartitionId },
}

/// An immutable routing table. Build a new one to change anything.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    epoch: u64,
    partitions: Vec<Partition>,
    nodes: Vec<String>,
    /// Some partition is not `Serving`: its rows may be on two nodes.
    moving: bool,
}

impl RoutingTable {
    /// Checks the invariants (sorted, gap-free, covering all of i64, known
    /// nodes, unique ids) and builds the table.
    pub fn new(
        epoch: u64,
        mut partitions: Vec<Partition>,
        nodes: Vec<String>,
    ) -> Result<Self, TableError> {
        partitions.sort_by_key(|p| p.lo);
        let mut expected = i64::MIN;
        let mut ids = std::collections::HashSet::new();
        let Some(last) = partitions.last() else {
            return Err(TableError::Empty);
        };
        if last.hi != i64::MAX {
            return Err(TableError::Short { hi: last.hi });
        }
        for (i, p) in partitions.iter().enumerate() {
            if p.lo > p.hi {
                return Err(TableError::Inverted {
                    id: p.id,
                    lo: p.lo,
                    hi: p.hi,
                });
            }
            if p.lo != expected {
                return Err(TableError::Gap {
                    id: p.id,
                    lo: p.lo,
                    expected,
                });
            }
            for n in std::iter::once(p.node).chain(p.target) {
                if n >= nodes.len() {
                    return Err(TableError::UnknownNode {
                        id: p.id,
                        node: n,
                        nodes: nodes.len(),
                    });
                }
            }
            if !ids.insert(p.id) {
                return Err(TableError::DuplicateId { id: p.id });
            }
            if i + 1 < partitions.len() {
                expected = p.hi + 1;
            }
        }
        let moving = partitions
            .iter()
            .any(|p| p.state != PartitionState::Serving);
        Ok(Self {
            epoch,
            partitions,
            nodes,
            moving,
        })
    }

    /// `count` equal ranges of the hash space, assigned round-robin to the
    /// nodes so each node gets an even share.
    pub fn even(epoch: u64, count: u32, nodes: Vec<String>) -> Result<Self, TableError> {
        if count == 0 || nodes.is_empty() {
            return Err(TableError::Empty);
        }
        let span = (u64::MAX as u128 + 1) / count as u128;
        let partitions = (0..count)
            .map(|i| {
                let lo = i64::MIN as i128 + (span * i as u128) as i128;
                let hi = if i + 1 == count {
                    i64::MAX as i128
                } else {
                    lo + span as i128 - 1
                };
                Partition {
                    id: i,
                    lo: lo as i64,
                    hi: hi as i64,
                    node: i as usize % nodes.len(),
                    state: PartitionState::Serving,
                    target: None,
                }
            })
            .collect();
        Self::new(epoch, partitions, nodes)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn partitions(&self) -> &[Partition] {
        &self.partitions
    }

    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// A partition is being moved: some rows exist on two nodes, so a
    /// statement without the shard key cannot be answered by every node.
    #[inline]
    pub fn moving(&self) -> bool {
        self.moving
    }

    /// The moving partitions, for error messages.
    pub fn moves(&self) -> impl Iterator<Item = &Partition> {
        self.partitions
            .iter()
            .filter(|p| p.state != PartitionState::Serving)
    }

    /// The partition whose range holds `hash`. Total: the ranges cover i64.
    #[inline]
    pub fn lookup(&self, hash: i64) -> &Partition {
        let i = self.partitions.partition_point(|p| p.lo <= hash);
        &self.partitions[i - 1]
    }

    /// Position of the partition with this id, for updates.
    pub fn index_of(&self, id: PartitionId) -> Option<usize> {
        self.partitions.iter().position(|p| p.id == id)
    }
}

/// The live routing table, shared by every connection.
pub struct Routing {
    current: ArcSwap<RoutingTable>,
    /// Woken on every publish: writes held for a cut-over wait on it.
    changed: tokio::sync::Notify,
}

impl Routing {
    pub fn new(table: RoutingTable) -> Self {
        Self {
            current: ArcSwap::from_pointee(table),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// A consistent snapshot; cheap (no lock, one atomic increment).
    #[inline]
    pub fn load(&self) -> Arc<RoutingTable> {
        self.current.load_full()
    }

    /// A guard for one short lookup on the hot path (no refcount traffic).
    #[inline]
    pub fn peek(&self) -> arc_swap::Guard<Arc<RoutingTable>> {
        self.current.load()
    }

    /// Publishes a new table. Its epoch must be newer than the current one.
    pub fn publish(&self, table: RoutingTable) -> Result<(), u64> {
        let cur = self.current.load();
        if table.epoch <= cur.epoch {
            return Err(cur.epoch);
        }
        self.current.store(Arc::new(table));
        self.changed.notify_waiters();
        Ok(())
    }

    /// Waits until a table newer than `epoch` is published, or `limit`
    /// passes; true if one was.
    pub async fn wait_newer(&self, epoch: u64, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            if self.current.load().epoch > epoch {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.current.load().epoch > epoch;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("n{i}")).collect()
    }

    #[test]
    fn even_split_covers_the_space() {
        for count in [1u32, 2, 3, 7, 16, 1000] {
            let t = RoutingTable::even(1, count, nodes(3)).unwrap();
            assert_eq!(t.partitions().len(), count as usize);
            assert_eq!(t.partitions()[0].lo, i64::MIN);
            assert_eq!(t.partitions().last().unwrap().hi, i64::MAX);
            assert_eq!(t.lookup(i64::MIN).id, 0);
            assert_eq!(t.lookup(i64::MAX).id, count - 1);
        }
    }

    #[test]
    fn lookup_finds_the_owning_range() {
        let t = RoutingTable::even(1, 16, nodes(2)).unwrap();
        for p in t.partitions() {
            assert_eq!(t.lookup(p.lo).id, p.id);
            assert_eq!(t.lookup(p.hi).id, p.id);
            assert_eq!(t.lookup(p.lo / 2 + p.hi / 2).id, p.id);
        }
    }

    #[test]
    fn gaps_and_unknown_nodes_are_refused() {
        let mut ps = RoutingTable::even(1, 4, nodes(2))
            .unwrap()
            .partitions()
            .to_vec();
        ps[2].lo += 1;
        assert!(matches!(
            RoutingTable::new(1, ps.clone(), nodes(2)),
            Err(TableError::Gap { id: 2, .. })
        ));
        ps[2].lo -= 1;
        ps[1].node = 5;
        assert!(matches!(
            RoutingTable::new(1, ps, nodes(2)),
            Err(TableError::UnknownNode { id: 1, .. })
        ));
    }

    #[test]
    fn publish_requires_a_newer_epoch() {
        let r = Routing::new(RoutingTable::even(3, 4, nodes(1)).unwrap());
        assert_eq!(
            r.publish(RoutingTable::even(3, 8, nodes(1)).unwrap()),
            Err(3)
        );
        r.publish(RoutingTable::even(4, 8, nodes(1)).unwrap())
            .unwrap();
        assert_eq!(r.load().partitions().len(), 8);
    }

    #[test]
    fn a_moving_partition_marks_the_table() {
        let mut ps = RoutingTable::even(1, 2, nodes(2))
            .unwrap()
            .partitions()
            .to_vec();
        assert!(!RoutingTable::new(2, ps.clone(), nodes(2)).unwrap().moving());
        ps[0].state = PartitionState::Copying;
        ps[0].target = Some(1);
        let t = RoutingTable::new(2, ps, nodes(2)).unwrap();
        assert!(t.moving());
        assert_eq!(t.moves().map(|p| p.id).collect::<Vec<_>>(), vec![0]);
    }

    /// Many readers look up while a writer publishes tables whose every
    /// partition carries the epoch in its node field pattern; a reader must
    /// always see a table whose partitions agree with its epoch.
    #[test]
    fn concurrent_swaps_are_never_torn() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let make = |epoch: u64| {
            let count = 4 + (epoch % 13) as u32;
            let mut ps = RoutingTable::even(epoch, count, nodes(5))
                .unwrap()
                .partitions()
                .to_vec();
            for p in &mut ps {
                p.node = (epoch % 5) as usize;
            }
            RoutingTable::new(epoch, ps, nodes(5)).unwrap()
        };
        let routing = Arc::new(Routing::new(make(1)));
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..8)
            .map(|r| {
                let routing = routing.clone();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut seen = 0u64;
                    let mut h = r as i64;
                    while !stop.load(Ordering::Relaxed) {
                        let t = routing.peek();
                        let want = (t.epoch() % 5) as usize;
                        assert_eq!(t.partitions().len() as u64, 4 + t.epoch() % 13);
                        h = h
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        assert_eq!(t.lookup(h).node, want, "torn table at epoch {}", t.epoch());
                        seen = seen.max(t.epoch());
                    }
                    seen
                })
            })
            .collect();
        for epoch in 2..5000 {
            routing.publish(make(epoch)).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            assert!(r.join().unwrap() >= 1);
        }
        assert_eq!(routing.load().epoch(), 4999);
    }
}
