//! From statement shapes (and Bind parameters) to the node(s) that must run
//! them, against one snapshot of the routing table.

use std::borrow::Cow;

use crate::config::KeyType;
use crate::protocol::messages::Bind;
use crate::protocol::sqlstate;
use crate::ring::{NodeId, PartitionId, PartitionState, RoutingTable};
use crate::router::sql::{hash_key, key_from_param};
use crate::router::{Command, KeyRef, KeyValue, Shape, Target};

use super::error::FrontendError;

/// Where a statement (or a query string's statements) runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// No table involved: any node will do (the transaction's, else the default).
    Anywhere,
    /// One node; `partition` is set when a shard key picked it.
    Node {
        node: NodeId,
        partition: Option<PartitionId>,
    },
    /// Every node: a read (merged or concatenated), DDL, or an
    /// UPDATE/DELETE without the shard key.
    AllNodes,
    /// A multi-row INSERT whose rows belong to several nodes (which row
    /// goes where: `row_nodes`). Carries no data, so that a decision stays
    /// `Copy` on the hot path.
    Split,
}

/// The routing decision for one unit of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub dest: Dest,
    pub write: bool,
    /// Data changes on several nodes: committed with two-phase commit
    /// when it is on.
    pub multi_write: bool,
}

/// What routing may do with statements that need several nodes.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub default_node: NodeId,
    /// `[routing] allow_multi_shard_writes`.
    pub multi_shard_writes: bool,
    /// Outside a transaction, a write to a partition in cut-over waits
    /// (`FrontendError::Moved`); inside one it goes to the old home,
    /// whose fence decides.
    pub hold_writes: bool,
}

/// Decides one statement. `values` are the statement text's literal keys
/// (`Analysis::values`); `bind` supplies `$n` parameters (extended protocol).
pub fn decide(
    shape: &Shape,
    values: &[KeyValue],
    bind: Option<&Bind<'_>>,
    table: &RoutingTable,
    policy: Policy,
) -> Result<Decision, FrontendError> {
    let default_node = policy.default_node;
    let write = shape.command.is_write() || matches!(shape.command, Command::Other);
    let dml = matches!(shape.command, Command::Update | Command::Delete);
    let mut multi_write = false;
    let dest = match &shape.target {
        Target::NoTable => Dest::Anywhere,
        Target::Unsharded => Dest::Node {
            node: default_node,
            partition: None,
        },
        Target::AllShards {
            table: t,
            key_column,
        } => {
            // Reads fan out; DDL (`Other`) runs on every node so the shards'
            // schemas stay alike; UPDATE/DELETE run on every node when
            // allowed; INSERT and COPY without their key are refused.
            if table.moving() && dml {
                return Err(refuse_while_moving(shape.command, t, table));
            }
            if dml {
                if !policy.multi_shard_writes {
                    return Err(refuse_multi(shape.command, t));
                }
                multi_write = true;
                return Ok(Decision {
                    dest: Dest::AllNodes,
                    write,
                    multi_write,
                });
            }
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
            let mut chosen: Option<(NodeId, PartitionId)> = None;
            let mut spread = false;
            for k in keys {
                let value = resolve(k, values, bind, *key_type, t)?;
                let Some(h) = hash_key(&value, *key_type) else {
                    // NULL never matches `key = NULL`; an INSERT of a NULL key
                    // is refused by the NOT NULL it should carry. Either way
                    // no shard owns it: send it to the first key's owner.
                    continue;
                };
                let p = table.lookup(h);
                if write && policy.hold_writes && p.state == PartitionState::CuttingOver {
                    return Err(FrontendError::Moved { partition: p.id });
                }
                match chosen {
                    None => chosen = Some((p.node, p.id)),
                    Some((n, _)) if n == p.node => {}
                    Some(_) => spread = true,
                }
            }
            match (chosen, spread) {
                (None, _) => Dest::Node {
                    node: default_node,
                    partition: None,
                },
                (Some((node, partition)), false) => Dest::Node {
                    node,
                    partition: Some(partition),
                },
                (Some(_), true) if table.moving() && dml => {
                    return Err(refuse_while_moving(shape.command, t, table))
                }
                (Some(_), true) if !write => Dest::AllNodes,
                (Some(_), true) if !policy.multi_shard_writes => {
                    return Err(refuse_multi(shape.command, t))
                }
                (Some(_), true) if dml => {
                    multi_write = true;
                    Dest::AllNodes
                }
                (Some(_), true) if shape.command == Command::Insert => {
                    // Split per node at execution (`row_nodes`).
                    multi_write = true;
                    Dest::Split
                }
                (Some(_), true) => {
                    return Err(FrontendError::route(
                        sqlstate::NEEDS_SHARD_KEY,
                        format!(
                            "this {} on \"{t}\" touches rows on several shards",
                            command_name(shape.command)
                        ),
                        "send one statement per shard key or group rows by shard".into(),
                    ))
                }
            }
        }
    };
    Ok(Decision {
        dest,
        write,
        multi_write,
    })
}

/// The node of each row of a multi-row INSERT (a NULL key goes with the
/// first row's node, where its NOT NULL refuses it).
pub fn row_nodes(
    shape: &Shape,
    values: &[KeyValue],
    bind: Option<&Bind<'_>>,
    table: &RoutingTable,
) -> Result<Vec<NodeId>, FrontendError> {
    let Target::Keys {
        table: t,
        key_type,
        keys,
    } = &shape.target
    else {
        return Ok(Vec::new());
    };
    let mut nodes: Vec<Option<NodeId>> = Vec::with_capacity(keys.len());
    for k in keys {
        let value = resolve(k, values, bind, *key_type, t)?;
        nodes.push(hash_key(&value, *key_type).map(|h| table.lookup(h).node));
    }
    let first = nodes.iter().flatten().next().copied().unwrap_or(0);
    Ok(nodes.into_iter().map(|n| n.unwrap_or(first)).collect())
}

/// A statement every node would answer while a partition's rows are on
/// two nodes would see them twice: refused, not answered wrongly.
#[cold]
pub(super) fn refuse_while_moving(
    command: Command,
    t: &str,
    table: &RoutingTable,
) -> FrontendError {
    let moving: Vec<String> = table
        .moves()
        .map(|p| format!("{} ({})", p.id, p.state.as_str()))
        .collect();
    FrontendError::route(
        sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!(
            "this {} on \"{t}\" needs every shard, and partition {} is moving between nodes, so its rows are on two nodes",
            command_name(command),
            moving.join(", ")
        ),
        "filter on the shard key, or retry once the move has finished (GET /api/migrations)".into(),
    )
}

#[cold]
fn refuse_multi(command: Command, table: &str) -> FrontendError {
    FrontendError::route(
        sqlstate::NEEDS_SHARD_KEY,
        format!(
            "this {} on sharded table \"{table}\" touches rows on several shards, and [routing] allow_multi_shard_writes is off",
            command_name(command)
        ),
        "filter on the shard key so the statement goes to one shard".into(),
    )
}

#[inline(always)]
fn resolve<'a>(
    k: &'a KeyRef,
    values: &'a [KeyValue],
    bind: Option<&Bind<'_>>,
    key_type: KeyType,
    table: &str,
) -> Result<Cow<'a, KeyValue>, FrontendError> {
    match k {
        KeyRef::Value(v) => Ok(Cow::Borrowed(v)),
        KeyRef::Literal(i) => values.get(*i).map(Cow::Borrowed).ok_or_else(|| {
            FrontendError::route(
                sqlstate::INTERNAL_ERROR,
                format!("literal key {i} of \"{table}\" is missing"),
                "report this statement as a bug".into(),
            )
        }),
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
            key_from_param(bytes, binary, key_type)
                .map(Cow::Owned)
                .map_err(|e| {
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
        multi_write: false,
    };
    for d in decisions {
        out.write |= d.write;
        out.multi_write |= d.multi_write;
        out.dest = match (&out.dest, &d.dest) {
            (Dest::Anywhere, x) | (x, Dest::Anywhere) => *x,
            (Dest::Node { node: a, .. }, Dest::Node { node: b, .. }) if a == b => out.dest,
            (Dest::AllNodes, Dest::AllNodes) if decisions.len() == 1 => Dest::AllNodes,
            (Dest::Split, Dest::Split) if decisions.len() == 1 => Dest::Split,
            _ => {
                return Err(FrontendError::route(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "statements sent together target different shards".into(),
                    "send them as separate queries, or in separate transactions per shard".into(),
                ))
            }
        };
    }
    if matches!(out.dest, Dest::Split) && decisions.len() > 1 {
        return Err(FrontendError::route(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "an INSERT whose rows belong to several shards must be sent alone".into(),
            "send it as its own query".into(),
        ));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TableConfig;
    use crate::router::sql::Analyzer;

    fn shape(sql: &str) -> Shape {
        let a = Analyzer::new(&[TableConfig {
            name: "accounts".into(),
            shard_key: "id".into(),
            key_type: KeyType::Bigint,
        }]);
        a.analyze(sql).unwrap()[0].clone()
    }

    fn decide_sql(sql: &str, t: &RoutingTable) -> Result<Decision, FrontendError> {
        let policy = Policy {
            default_node: 0,
            multi_shard_writes: true,
            hold_writes: true,
        };
        decide(&shape(sql), &[], None, t, policy)
    }

    /// Two partitions on two nodes; the one owning id 1 is in `state`.
    fn moving_table(state: PartitionState) -> RoutingTable {
        let nodes = vec!["a".to_string(), "b".to_string()];
        let h = hash_key(&KeyValue::Int(1), KeyType::Bigint).unwrap();
        let mut ps = RoutingTable::even(1, 2, nodes.clone())
            .unwrap()
            .partitions()
            .to_vec();
        let p = ps.iter_mut().find(|p| p.lo <= h && h <= p.hi).unwrap();
        p.state = state;
        p.target = Some(1 - p.node);
        RoutingTable::new(2, ps, nodes).unwrap()
    }

    #[test]
    fn writes_in_cut_over_are_held_and_keyless_writes_refused() {
        let t = moving_table(PartitionState::CuttingOver);
        let e = decide_sql("UPDATE accounts SET v = 1 WHERE id = 1", &t).unwrap_err();
        assert!(matches!(e, FrontendError::Moved { .. }));
        // Reads still go to the owner.
        let d = decide_sql("SELECT * FROM accounts WHERE id = 1", &t).unwrap();
        assert!(matches!(d.dest, Dest::Node { .. }));
        let e = decide_sql("DELETE FROM accounts WHERE v = 1", &t).unwrap_err();
        assert_eq!(e.sqlstate(), sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE);
        // A keyless read runs on every node (each answers for what it owns).
        let d = decide_sql("SELECT count(*) FROM accounts", &t).unwrap();
        assert_eq!(d.dest, Dest::AllNodes);
        // While copying, writes go to the owner (its change log has them).
        let t = moving_table(PartitionState::Copying);
        let d = decide_sql("UPDATE accounts SET v = 1 WHERE id = 1", &t).unwrap();
        assert!(matches!(d.dest, Dest::Node { .. }));
    }
}
