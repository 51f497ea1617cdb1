//! The server side: connections to the shard nodes and a pool per node.
//!
//! Pooling is per transaction: a client holds a server connection only while
//! a statement or transaction runs, so thousands of clients share tens of
//! server connections. Server connections speak raw protocol frames so the
//! frontend can forward bytes without re-encoding.

pub mod conn;
pub mod pool;

pub use conn::{BackendError, NodeTarget, ServerConn};
pub use pool::{Checkout, Pool, PoolStats};
