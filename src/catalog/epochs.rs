//! Routing epochs in the catalog: every table the cluster has served, with
//! its partitions. The config's `[sharding] partitions` seeds an empty
//! catalog; after that a change (move, split, merge) is one catalog
//! transaction that takes the epoch lock, reads the latest table, writes
//! epoch + 1 and notifies every proxy — so two migrators can never build on
//! the same epoch.

use tokio_postgres::{Client, GenericClient, Transaction};

use crate::ring::{Partition, PartitionState, RoutingTable};

/// Advisory lock key that serialises epoch changes and fence rebuilds.
pub const EPOCH_LOCK: i64 = 0x5348_4152_4443_0001;

/// Epochs older than the latest by more than this are pruned.
const KEEP_EPOCHS: i64 = 1000;

/// The newest epoch in the catalog, if any.
pub async fn latest_epoch(c: &impl GenericClient) -> Result<Option<u64>, String> {
    let row = c
        .query_one("SELECT max(epoch) FROM shardcast.epochs", &[])
        .await
        .map_err(|e| format!("reading the latest epoch: {e}"))?;
    Ok(row.get::<_, Option<i64>>(0).map(|e| e as u64))
}

/// The newest table, with node names mapped to indexes of `nodes` (the
/// config's node list).
pub async fn latest(
    c: &impl GenericClient,
    nodes: &[String],
) -> Result<Option<RoutingTable>, String> {
    match latest_epoch(c).await? {
        Some(e) => load(c, e, nodes).await.map(Some),
        None => Ok(None),
    }
}

/// One epoch's table.
pub async fn load(
    c: &impl GenericClient,
    epoch: u64,
    nodes: &[String],
) -> Result<RoutingTable, String> {
    let rows = c
        .query(
            "SELECT id, lo, hi, node, state, target FROM shardcast.partitions WHERE epoch = $1 ORDER BY lo",
            &[&(epoch as i64)],
        )
        .await
        .map_err(|e| format!("reading epoch {epoch}: {e}"))?;
    let index = |name: &str| {
        nodes.iter().position(|n| n == name).ok_or_else(|| {
            format!("epoch {epoch} places a partition on node \"{name}\", which is not in this proxy's [[nodes]]")
        })
    };
    let mut parts = Vec::with_capacity(rows.len());
    for r in &rows {
        let state: &str = r.get(4);
        parts.push(Partition {
            id: r.get::<_, i32>(0) as u32,
            lo: r.get(1),
            hi: r.get(2),
            node: index(r.get(3))?,
            state: PartitionState::parse(state)
                .ok_or_else(|| format!("epoch {epoch}: unknown partition state {state}"))?,
            target: r.get::<_, Option<&str>>(5).map(index).transpose()?,
        });
    }
    RoutingTable::new(epoch, parts, nodes.to_vec()).map_err(|e| format!("epoch {epoch}: {e}"))
}

/// Writes `table` as the first epoch if the catalog has none; returns the
/// catalog's latest table either way (another proxy may have seeded it).
pub async fn seed(c: &mut Client, table: &RoutingTable) -> Result<RoutingTable, String> {
    let tx = c.transaction().await.map_err(|e| e.to_string())?;
    lock(&tx).await?;
    if let Some(t) = latest(&tx, table.nodes()).await? {
        return Ok(t);
    }
    write(&tx, table, "seeded from the config").await?;
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(table.clone())
}

/// Takes the epoch lock for the rest of the transaction.
pub async fn lock(tx: &Transaction<'_>) -> Result<(), String> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&EPOCH_LOCK])
        .await
        .map(|_| ())
        .map_err(|e| format!("taking the epoch lock: {e}"))
}

/// Builds epoch latest + 1 from the latest table with `f` and writes it
/// (with a NOTIFY sent at commit). The caller holds the epoch lock and
/// commits, so other catalog changes can join the same transaction.
pub async fn change<F>(
    tx: &Transaction<'_>,
    nodes: &[String],
    reason: &str,
    f: F,
) -> Result<RoutingTable, String>
where
    F: FnOnce(&mut Vec<Partition>) -> Result<(), String>,
{
    let cur = latest(tx, nodes)
        .await?
        .ok_or("the catalog has no routing table yet")?;
    let mut parts = cur.partitions().to_vec();
    f(&mut parts)?;
    let next = RoutingTable::new(cur.epoch() + 1, parts, nodes.to_vec())
        .map_err(|e| format!("the changed table is invalid: {e}"))?;
    write(tx, &next, reason).await?;
    Ok(next)
}

async fn write(tx: &Transaction<'_>, t: &RoutingTable, reason: &str) -> Result<(), String> {
    let epoch = t.epoch() as i64;
    let ps = t.partitions();
    let name = |n: usize| t.nodes()[n].clone();
    let ids: Vec<i32> = ps.iter().map(|p| p.id as i32).collect();
    let los: Vec<i64> = ps.iter().map(|p| p.lo).collect();
    let his: Vec<i64> = ps.iter().map(|p| p.hi).collect();
    let nodes: Vec<String> = ps.iter().map(|p| name(p.node)).collect();
    let states: Vec<&str> = ps.iter().map(|p| p.state.as_str()).collect();
    let targets: Vec<Option<String>> = ps.iter().map(|p| p.target.map(name)).collect();
    let err = |e: tokio_postgres::Error| format!("writing epoch {epoch}: {e}");
    tx.execute(
        "INSERT INTO shardcast.epochs (epoch, reason) VALUES ($1, $2)",
        &[&epoch, &reason],
    )
    .await
    .map_err(err)?;
    tx.execute(
        "INSERT INTO shardcast.partitions (epoch, id, lo, hi, node, state, target)
         SELECT $1, * FROM unnest($2::int4[], $3::int8[], $4::int8[], $5::text[], $6::text[], $7::text[])",
        &[&epoch, &ids, &los, &his, &nodes, &states, &targets],
    )
    .await
    .map_err(err)?;
    tx.execute(
        "DELETE FROM shardcast.epochs WHERE epoch < $1",
        &[&(epoch - KEEP_EPOCHS)],
    )
    .await
    .map_err(err)?;
    tx.execute(
        &format!("SELECT pg_notify('{}', $1)", super::CHANNEL),
        &[&epoch.to_string()],
    )
    .await
    .map_err(err)?;
    Ok(())
}
