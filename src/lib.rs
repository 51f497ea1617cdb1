//! shardcast: a sidecar proxy for sharded PostgreSQL.
//!
//! Applications connect with their ordinary Postgres driver; the proxy routes
//! each statement to the shard node that owns the row, records every request
//! and forecasts each partition's load. Each folder below is one component
//! (see `DESIGN.md` in the shared docs): the wire codec knows nothing of
//! routing, the router nothing of sockets, the ring nothing of SQL.

pub mod admin;
pub mod admin_client;
pub mod analyzer;
pub mod backend;
pub mod catalog;
pub mod config;
pub mod demo;
pub mod frontend;
pub mod merge;
pub mod metrics;
pub mod monitor;
pub mod planner;
pub mod protocol;
pub mod proxy;
pub mod ring;
pub mod router;
pub mod sharding;
pub mod sim;
pub mod validation;
