//! The consistent-hash ring: PostgreSQL-compatible key hashing and the
//! routing table (epoch + sorted hash ranges), swapped atomically so that
//! readers on the hot path never block.

pub mod hash;
pub mod table;

pub use table::{NodeId, Partition, PartitionId, PartitionState, Routing, RoutingTable};
