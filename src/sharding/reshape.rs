//! Split and merge: changes of the routing table alone. Both halves of a
//! split, and both parts of a merge, are on one node, so no row moves and
//! a proxy still on the old epoch routes every key to the same node; the
//! new epoch is written under the epoch lock and journaled like a move.

use std::sync::Arc;

use tokio_postgres::Client;
use tracing::info;

use super::{busy, refuse, tables, unavailable, Refusal};
use crate::catalog::{epochs, journal};
use crate::frontend::Shared;
use crate::ring::{Partition, PartitionId, PartitionState};

/// A split or merge in the migration journal, done as it is recorded.
async fn journaled(
    tx: &impl tokio_postgres::GenericClient,
    kind: &str,
    partition: PartitionId,
    node: &str,
    (lo, hi): (i64, i64),
    detail: &str,
) -> Result<i64, Refusal> {
    let id = journal::create(tx, kind, partition, node, node, lo, hi, "")
        .await
        .map_err(unavailable)?;
    journal::finish(tx, id, "done", Some(detail))
        .await
        .map_err(unavailable)?;
    Ok(id)
}

/// The next unused partition id: above any the catalog ever held.
async fn next_id(c: &impl tokio_postgres::GenericClient) -> Result<u32, Refusal> {
    let row = c
        .query_one(
            "SELECT coalesce(max(id), -1) + 1 FROM shardcast.partitions",
            &[],
        )
        .await
        .map_err(unavailable)?;
    Ok(row.get::<_, i32>(0) as u32)
}

/// The median ring hash of the partition's rows across every sharded
/// table (so the halves hold about equal rows); None if it has no rows.
async fn median_hash(shared: &Shared, p: &Partition) -> Result<Option<i64>, Refusal> {
    let c = super::mover::node_client(shared, p.node, "owner")
        .await
        .map_err(|e| refuse(503, e))?;
    let parts: Vec<String> = tables(shared)
        .iter()
        .map(|t| {
            format!(
                "SELECT {} AS h FROM {} AS r WHERE {} BETWEEN {} AND {}",
                t.hash_of("r"),
                t.name(),
                t.hash_of("r"),
                p.lo,
                p.hi
            )
        })
        .collect();
    if parts.is_empty() {
        return Ok(None);
    }
    let sql = format!(
        "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY h) FROM ({}) s",
        parts.join(" UNION ALL ")
    );
    let row = c
        .query_one(&sql, &[])
        .await
        .map_err(|e| refuse(503, format!("median of partition {}: {e}", p.id)))?;
    Ok(row.get(0))
}

/// Splits `partition` at `at` (the upper half starts there; default: the
/// median hash of its rows). Returns the journal id and the halves' ids.
pub async fn split(
    shared: &Arc<Shared>,
    c: &mut Client,
    partition: PartitionId,
    at: Option<i64>,
) -> Result<(i64, [PartitionId; 2]), Refusal> {
    let table = shared.routing.load();
    let p = table
        .partitions()
        .iter()
        .find(|p| p.id == partition)
        .ok_or_else(|| refuse(404, format!("no partition {partition}")))?
        .clone();
    if p.lo == p.hi {
        return Err(refuse(
            400,
            format!("partition {partition} holds one hash value and cannot be split"),
        ));
    }
    let at = match at {
        Some(at) => at,
        None => match median_hash(shared, &p).await? {
            // The median row starts the upper half, unless it is the
            // first hash (then the lower half would be empty).
            Some(m) if m > p.lo => m,
            _ => p.lo + ((p.hi as i128 - p.lo as i128) / 2) as i64 + 1,
        },
    };
    if at <= p.lo || at > p.hi {
        return Err(refuse(
            400,
            format!(
                "split point {at} is outside partition {partition} ({}..={}); it must be in {}..={}",
                p.lo,
                p.hi,
                p.lo + 1,
                p.hi
            ),
        ));
    }
    let nodes = table.nodes().to_vec();
    let tx = c.transaction().await.map_err(unavailable)?;
    epochs::lock(&tx).await.map_err(unavailable)?;
    busy(&tx, &[partition]).await?;
    let first = next_id(&tx).await?;
    let halves = [first, first + 1];
    let next = epochs::change(
        &tx,
        &nodes,
        &format!("split partition {partition} at {at}"),
        |ps| {
            let i = ps
                .iter()
                .position(|x| x.id == partition && x.lo == p.lo && x.hi == p.hi)
                .ok_or(format!(
                    "partition {partition} changed meanwhile; try again"
                ))?;
            if ps[i].state != PartitionState::Serving {
                return Err(format!("partition {partition} is {}", ps[i].state.as_str()));
            }
            let node = ps[i].node;
            let half = |id, lo, hi| Partition {
                id,
                lo,
                hi,
                node,
                state: PartitionState::Serving,
                target: None,
            };
            ps[i] = half(halves[0], p.lo, at - 1);
            ps.push(half(halves[1], at, p.hi));
            Ok(())
        },
    )
    .await
    .map_err(|e| refuse(409, e))?;
    let detail = format!(
        "partition {partition} split at {at} into {} and {}",
        halves[0], halves[1]
    );
    let id = journaled(
        &tx,
        "split",
        partition,
        &nodes[p.node],
        (p.lo, p.hi),
        &detail,
    )
    .await?;
    tx.commit().await.map_err(unavailable)?;
    info!(
        partition,
        at,
        lower = halves[0],
        upper = halves[1],
        "partition split"
    );
    crate::catalog::follow::adopt(shared, next);
    Ok((id, halves))
}

/// Merges two adjacent partitions on one node into a new one.
pub async fn merge(
    shared: &Arc<Shared>,
    c: &mut Client,
    p: PartitionId,
    q: PartitionId,
) -> Result<i64, Refusal> {
    let nodes = shared.routing.peek().nodes().to_vec();
    let tx = c.transaction().await.map_err(unavailable)?;
    epochs::lock(&tx).await.map_err(unavailable)?;
    busy(&tx, &[p, q]).await?;
    let table = epochs::latest(&tx, &nodes)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| refuse(503, "the catalog has no routing table yet"))?;
    let find = |id| {
        table
            .partitions()
            .iter()
            .find(|x| x.id == id)
            .cloned()
            .ok_or_else(|| refuse(404, format!("no partition {id}")))
    };
    let (a, b) = (find(p)?, find(q)?);
    let (a, b) = if a.lo < b.lo { (a, b) } else { (b, a) };
    if a.hi.checked_add(1) != Some(b.lo) {
        return Err(refuse(
            400,
            format!(
                "partitions {p} and {q} are not adjacent ({}..={} and {}..={})",
                a.lo, a.hi, b.lo, b.hi
            ),
        ));
    }
    if a.node != b.node {
        return Err(refuse(
            400,
            format!(
                "partitions {} and {} are on different nodes ({} and {}); move one first",
                a.id, b.id, nodes[a.node], nodes[b.node]
            ),
        ));
    }
    for x in [&a, &b] {
        if x.state != PartitionState::Serving {
            return Err(refuse(
                409,
                format!("partition {} is {}", x.id, x.state.as_str()),
            ));
        }
    }
    let id_new = next_id(&tx).await?;
    let next = epochs::change(
        &tx,
        &nodes,
        &format!("merge partitions {} and {}", a.id, b.id),
        |ps| {
            ps.retain(|x| x.id != a.id && x.id != b.id);
            ps.push(Partition {
                id: id_new,
                lo: a.lo,
                hi: b.hi,
                node: a.node,
                state: PartitionState::Serving,
                target: None,
            });
            Ok(())
        },
    )
    .await
    .map_err(|e| refuse(409, e))?;
    let detail = format!("partitions {} and {} merged into {id_new}", a.id, b.id);
    let id = journaled(&tx, "merge", a.id, &nodes[a.node], (a.lo, b.hi), &detail).await?;
    tx.commit().await.map_err(unavailable)?;
    info!(a = a.id, b = b.id, into = id_new, "partitions merged");
    crate::catalog::follow::adopt(shared, next);
    Ok(id)
}
