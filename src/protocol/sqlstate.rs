//! SQLSTATE codes the proxy itself raises (PostgreSQL Appendix A).

pub const PROTOCOL_VIOLATION: &str = "08P01";
pub const CONNECTION_FAILURE: &str = "08006";
pub const CANNOT_CONNECT_NOW: &str = "57P03";
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
pub const INVALID_CATALOG_NAME: &str = "3D000";
pub const INVALID_PASSWORD: &str = "28P01";
pub const INVALID_AUTHORIZATION: &str = "28000";
pub const IN_FAILED_TRANSACTION: &str = "25P02";
pub const INVALID_PREPARED_STATEMENT: &str = "26000";
pub const DUPLICATE_PREPARED_STATEMENT: &str = "42P05";
pub const INVALID_TEXT_REPRESENTATION: &str = "22P02";
pub const SYNTAX_ERROR: &str = "42601";
pub const TOO_MANY_CONNECTIONS: &str = "53300";
pub const QUERY_CANCELED: &str = "57014";
pub const ADMIN_SHUTDOWN: &str = "57P01";
pub const INTERNAL_ERROR: &str = "XX000";
/// A write reached a partition that is being moved (class 55: object not in
/// prerequisite state); the client may retry once the move ends.
pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
/// Raised for a statement that needs a shard key it does not give: a write
/// with no key, or a transaction spanning shards. Class 0A: not supported.
pub const NEEDS_SHARD_KEY: &str = "0A000";

/// The transaction was rolled back (here: a multi-node write whose commit could not be decided).
pub const TRANSACTION_ROLLBACK: &str = "40000";
/// The outcome of a commit is not known yet (a multi-node write left to recovery).
pub const TRANSACTION_RESOLUTION_UNKNOWN: &str = "08007";
pub const BAD_COPY_FILE_FORMAT: &str = "22P04";
pub const NOT_NULL_VIOLATION: &str = "23502";
/// Drivers and ORMs retry a transaction that ends with this.
pub const SERIALIZATION_FAILURE: &str = "40001";
/// Raised by a node's fence trigger: this row's partition has moved to
/// another node (class SC is shardcast's own). A proxy that meets it
/// refreshes its routing table and retries, or fails the transaction with
/// `SERIALIZATION_FAILURE`.
pub const PARTITION_MOVED: &str = "SC001";
