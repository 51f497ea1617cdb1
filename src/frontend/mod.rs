//! The client side of the proxy: the PostgreSQL server protocol as
//! applications' drivers expect it — startup and auth, the simple and
//! extended query protocols, COPY, cancel — with each unit of work routed
//! to the shard(s) that own it and run on a pooled server connection.
//! Work for several nodes leaves through narrow seams: `merged` (reads,
//! to the query engine in `crate::merge`), `multiwrite` (writes and
//! transactions across nodes, two-phase commit), `copy` (sharded COPY),
//! `spanning` (connections for every node).

pub mod batch;
pub mod cancel;
pub mod copy;
pub mod deallocate;
pub mod error;
pub mod exchange;
pub mod execute;
pub mod listen;
pub mod merged;
pub mod multiwrite;
pub mod names;
pub mod notify;
pub mod passthrough;
pub mod pin;
pub mod pipeline;
pub mod reported;
pub mod route;
pub mod server_batch;
pub mod session;
pub mod settings;
pub mod simple;
pub mod spanning;
pub mod startup;

use std::sync::Arc;

use crate::backend::Pool;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::ring::{NodeId, Routing};
use crate::router::Analyzer;

pub use cancel::CancelRegistry;
pub use error::FrontendError;
pub use startup::handle_client;

/// What every client connection shares.
pub struct Shared {
    pub config: Config,
    pub routing: Arc<Routing>,
    pub pools: Vec<Arc<Pool>>,
    pub analyzer: Analyzer,
    pub default_node: NodeId,
    /// ParameterStatus values reported to clients (from the first node that answered).
    pub server_params: Vec<(String, String)>,
    pub metrics: Arc<Metrics>,
    pub recorder: Arc<crate::analyzer::Recorder>,
    pub forecaster: Arc<crate::analyzer::Forecaster>,
    pub cancels: CancelRegistry,
    /// What the cross-shard query engine knows of tables and aggregates.
    pub merge_catalog: crate::merge::Catalog,
    /// Type names for the engine's final queries, learned from the nodes.
    pub type_names: crate::merge::TypeNames,
    /// Multi-node writes commit with two-phase commit.
    pub two_phase: bool,
    /// The cluster's shared state: routing epochs, migrations, heartbeats.
    pub catalog: Option<crate::catalog::Catalog>,
    /// Node and partition load samples, and the planner's memory.
    pub monitor: crate::monitor::Monitor,
    /// Prepared statements' texts that need a new server name.
    pub renewals: names::Renewals,
    /// The listening connections behind clients' LISTEN.
    pub notifier: notify::Notifier,
}
