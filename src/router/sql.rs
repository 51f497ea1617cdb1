//! Shard-key extraction from SQL text (sqlparser, PostgreSQL dialect).

use std::sync::Arc;

use crate::config::{KeyType, TableConfig};

/// What a statement does, as far as routing and transactions care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Begin,
    Commit,
    Rollback,
    /// SAVEPOINT, RELEASE, ROLLBACK TO: stay on the transaction's node.
    Savepoint,
    Set,
    Reset,
    Show,
    Select,
    Insert,
    Update,
    Delete,
    Copy,
    /// DDL and everything else.
    Other,
}

impl Command {
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Command::Insert | Command::Update | Command::Delete | Command::Copy
        )
    }
}

/// A shard-key value, already in the type of its table's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyValue {
    Int(i64),
    Text(String),
    Uuid([u8; 16]),
    Null,
}

/// Where a key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    Value(KeyValue),
    /// The 1-based `$n` parameter of the extended protocol.
    Param(usize),
}

/// Where a statement must go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// No table at all (`SELECT 1`, `SET`, `BEGIN`, `SHOW`).
    NoTable,
    /// Only unsharded tables: the default node.
    Unsharded,
    /// One sharded table, with the key of every row it touches (an `IN` list
    /// or a multi-row `INSERT` gives several).
    Keys {
        table: Arc<str>,
        key_type: KeyType,
        keys: Vec<KeyRef>,
    },
    /// A sharded table with no usable key: reads fan out, writes are refused.
    AllShards {
        table: Arc<str>,
        key_column: Arc<str>,
    },
}

/// The routing-relevant shape of one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub command: Command,
    pub target: Target,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("syntax error: {0}")]
    Syntax(String),
    #[error("{0}")]
    Unsupported(String),
}

/// Analyses statements against the sharded tables; shared by all connections.
pub struct Analyzer {
    #[allow(dead_code)]
    tables: Vec<TableConfig>,
}

impl Analyzer {
    pub fn new(tables: &[TableConfig]) -> Self {
        Self {
            tables: tables.to_vec(),
        }
    }

    /// The shape of every statement in `sql` (a simple query may hold several).
    pub fn analyze(&self, sql: &str) -> Result<Arc<[Shape]>, RouteError> {
        // Temporary: classify by first keyword until the real router lands.
        let first = sql
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let command = match first.trim_end_matches(';') {
            "begin" | "start" => Command::Begin,
            "commit" | "end" => Command::Commit,
            "rollback" | "abort" => Command::Rollback,
            "set" => Command::Set,
            "show" => Command::Show,
            "select" => Command::Select,
            "insert" => Command::Insert,
            "update" => Command::Update,
            "delete" => Command::Delete,
            _ => Command::Other,
        };
        Ok(vec![Shape {
            command,
            target: Target::Unsharded,
        }]
        .into())
    }
}

/// Placeholder until the router lands.
pub fn key_from_param(
    _bytes: Option<&[u8]>,
    _binary: bool,
    _key_type: KeyType,
) -> Result<KeyValue, RouteError> {
    todo!()
}

/// Placeholder until the router lands.
pub fn hash_key(_key: &KeyValue, _key_type: KeyType) -> Option<i64> {
    todo!()
}
