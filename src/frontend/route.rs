//! From statement shapes (and Bind parameters) to the node(s) that must run
//! them, against one snapshot of the routing table.

use crate::config::KeyType;
use crate::protocol::messages::Bind;
use crate::protocol::sqlstate;
use crate::ring::{NodeId, PartitionId, RoutingTable};
use crate::router::sql::{hash_key, key_from_param};
use crate::router::{Command, KeyRef, KeyValue, Shape, Target};

use super::error::FrontendError;

/// Where a statement (or a query string's statements) runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// No table involved: any node will do (the transaction's, else the default).
    Anywhere,
    /// One node; `partition` is set when a shard key picked it.
    Node {
        node: NodeId,
        partition: Option<PartitionId>,
        mirror: Option<NodeId>,
    },
    /// Every node; only reads get here.
    AllNodes,
}

/// The routing decision for one unit of work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub dest: Dest,
    pub write: bool,
}

/// Decides one statement. `bind` supplies `$n` parameters (extended protocol).
pub fn decide(
    shape: &Shape,
    bind: Option<&Bind<'_>>,
    table: &RoutingTable,
    default_node: NodeId,
) -> Result<Decision, FrontendError> {
    let write = shape.command.is_write() || matches!(shape.command, Command::Other);
    let dest = match &shape.target {
        Target::NoTable => Dest::Anywhere,
        Target::Unsharded => Dest::Node {
            node: default_node,
            partition: None,
            mirror: None,
        },
        Target::AllShards {
            table: t,
            key_column,
        } => {
            // Reads fan out; DDL (`Other`) runs on every node so the shards'
            // schemas stay alike; a DML write without its key is refused.
            if shape.command.is_write()
                || !matches!(shape.command, Command::Select | Command::Other)
            {
                return Err(FrontendError::route(
                    sqlstate::NEEDS_SHARD_KEY,
                    format!(
                        "{} on sharded table \"{t}\" needs its shard key \"{key_column}\"",
                        command_name(shape.command)
                    ),
                    format!(
                        "add \"WHERE {key_column} = ...\" (or list \"{key_column}\" in the INSERT columns) so the statement goes to one shard"
                    ),
                ));
            }
            Dest::AllNodes
        }
        Target::Keys {
            table: t,
            key_type,
            keys,
        } => {
            let mut chosen: Option<(NodeId, PartitionId, Option<NodeId>)> = None;
            let mut spread = false;
            for k in keys {
                let value = resolve(k, bind, *key_type, t)?;
                let Some(h) = hash_key(&value, *key_type) else {
                    // NULL never matches `key = NULL`; an INSERT of a NULL key
                    // is refused by the NOT NULL it should carry. Either way
                    // no shard owns it: send it to the first key's owner.
                    continue;
                };
                let p = table.lookup(h);
                let mirror = if write { p.write_nodes().nth(1) } else { None };
                match chosen {
                    None => chosen = Some((p.node, p.id, mirror)),
                    Some((n, _, _)) if n == p.node => {}
                    Some(_) => spread = true,
                }
            }
            match (chosen, spread) {
                (None, _) => Dest::Node { node: default_node, partition: None, mirror: None },
                (Some((node, partition, mirror)), false) => {
                    Dest::Node { node, partition: Some(partition), mirror }
                }
                (Some(_), true) if !write => Dest::AllNodes,
                (Some(_), true) => {
                    return Err(FrontendError::route(
                        sqlstate::NEEDS_SHARD_KEY,
                        format!("this {} on \"{t}\" touches rows on several shards", command_name(shape.command)),
                        "send one statement per shard key (e.g. one INSERT per row) or group rows by shard".into(),
                    ))
                }
            }
        }
    };
    Ok(Decision { dest, write })
}

fn resolve(
    k: &KeyRef,
    bind: Option<&Bind<'_>>,
    key_type: KeyType,
    table: &str,
) -> Result<KeyValue, FrontendError> {
    match k {
        KeyRef::Value(v) => Ok(v.clone()),
        KeyRef::Param(n) => {
            let Some((bytes, binary)) = bind.and_then(|b| b.param(*n)) else {
                return Err(FrontendError::route(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!(
                        "shard key of \"{table}\" is parameter ${n}, but no value was bound for it"
                    ),
                    "bind a value for every parameter".into(),
                ));
            };
            key_from_param(bytes, binary, key_type).map_err(|e| {
                FrontendError::route(
                    sqlstate::INVALID_TEXT_REPRESENTATION,
                    format!("shard key of \"{table}\" in ${n}: {e}"),
                    "bind a value of the shard key's type".into(),
                )
            })
        }
    }
}

/// Combines the decisions of several statements that must run together
/// (one query string, or one extended-protocol batch).
pub fn combine(decisions: &[Decision]) -> Result<Decision, FrontendError> {
    let mut out = Decision {
        dest: Dest::Anywhere,
        write: false,
    };
    for d in decisions {
        out.write |= d.write;
        out.dest = match (&out.dest, &d.dest) {
            (Dest::Anywhere, x) | (x, Dest::Anywhere) => x.clone(),
            (Dest::Node { node: a, .. }, Dest::Node { node: b, .. }) if a == b => out.dest.clone(),
            (Dest::AllNodes, Dest::AllNodes) if decisions.len() == 1 => Dest::AllNodes,
            _ => {
                return Err(FrontendError::route(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "statements sent together target different shards".into(),
                    "send them as separate queries, or in separate transactions per shard".into(),
                ))
            }
        };
    }
    Ok(out)
}

pub fn command_name(c: Command) -> &'static str {
    match c {
        Command::Insert => "INSERT",
        Command::Update => "UPDATE",
        Command::Delete => "DELETE",
        Command::Copy => "COPY",
        Command::Select => "SELECT",
        _ => "statement",
    }
}
