//! Dynamic Sharding Manager: changes where data lives while clients keep
//! reading and writing through any number of proxies. Requests (move,
//! split, merge, drain) arrive from the admin API; each becomes a row in
//! the catalog's migration journal, and whichever proxy holds that row's
//! advisory lock runs it — the one that accepted it, or, after a crash,
//! any proxy's `resume` loop, which finishes or rolls back from the
//! journal. The data path sees only the routing table this publishes.

pub mod copy;
pub mod mover;
pub mod reshape;
pub mod schema;
pub mod triggers;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;
use tokio_postgres::Client;
use tracing::{info, warn};

use crate::catalog::epochs;
use crate::catalog::journal::{self, Migration};
use crate::frontend::Shared;
use crate::ring::PartitionState;
use mover::{Move, Stop};
use triggers::Table;

/// First key of the advisory lock a migration's runner holds (the second
/// is the migration id).
const RUNNER_LOCK: i32 = 0x5343;

/// A request as `POST /api/migrations` takes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub kind: String,
    #[serde(default)]
    pub partition: Option<u32>,
    #[serde(default)]
    pub partitions: Option<Vec<u32>>,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub at: Option<i64>,
    #[serde(default)]
    pub node: Option<String>,
}

/// A request refused before anything changed: an HTTP status and why.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

pub(crate) fn refuse(status: u16, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

fn unavailable(e: impl std::fmt::Display) -> Refusal {
    refuse(503, format!("catalog: {e}"))
}

/// The sharded tables, as the triggers and checks see them.
pub fn tables(shared: &Shared) -> Vec<Table<'_>> {
    shared
        .config
        .tables
        .iter()
        .enumerate()
        .map(|(index, config)| Table { index, config })
        .collect()
}

/// Accepts a request; returns the ids of the migrations it started.
pub async fn submit(shared: &Arc<Shared>, req: Request) -> Result<Vec<i64>, Refusal> {
    let catalog = shared
        .catalog
        .as_ref()
        .ok_or_else(|| refuse(503, "no catalog configured"))?;
    let mut c = catalog.connect().await.map_err(unavailable)?;
    let need_partition = || {
        req.partition
            .ok_or_else(|| refuse(400, format!("a {} needs \"partition\"", req.kind)))
    };
    let ids = match req.kind.as_str() {
        "move" => {
            let to = req
                .to
                .as_deref()
                .ok_or_else(|| refuse(400, "a move needs \"to\": the target node"))?;
            vec![create_move(shared, &mut c, need_partition()?, to).await?]
        }
        "split" => {
            let (id, halves) = reshape::split(shared, &mut c, need_partition()?, req.at).await?;
            let mut ids = vec![id];
            if let Some(to) = req.to.as_deref() {
                ids.push(create_move(shared, &mut c, halves[1], to).await?);
            }
            ids
        }
        "merge" => {
            let ps = req.partitions.as_deref().unwrap_or_default();
            let [p, q] = ps else {
                return Err(refuse(
                    400,
                    "a merge needs \"partitions\": [P, Q], two adjacent partitions on one node",
                ));
            };
            vec![reshape::merge(shared, &mut c, *p, *q).await?]
        }
        "drain" => {
            let node = req
                .node
                .as_deref()
                .or(req.to.as_deref())
                .ok_or_else(|| refuse(400, "a drain needs \"node\""))?;
            drain(shared, &mut c, node).await?
        }
        other => {
            return Err(refuse(
                400,
                format!("unknown kind \"{other}\"; use move, split, merge or drain"),
            ))
        }
    };
    Ok(ids)
}

/// Index of a configured node by name, or a refusal listing the names.
pub(crate) fn node_index(shared: &Shared, name: &str) -> Result<usize, Refusal> {
    let nodes = shared.routing.peek().nodes().to_vec();
    nodes.iter().position(|n| n == name).ok_or_else(|| {
        refuse(
            400,
            format!("unknown node \"{name}\" (nodes: {})", nodes.join(", ")),
        )
    })
}

/// Records a move of `partition` to `to` and starts running it.
async fn create_move(
    shared: &Arc<Shared>,
    c: &mut Client,
    partition: u32,
    to: &str,
) -> Result<i64, Refusal> {
    let target = node_index(shared, to)?;
    let nodes = shared.routing.peek().nodes().to_vec();
    let owner = shared
        .catalog
        .as_ref()
        .map(|c| c.proxy_id.clone())
        .unwrap_or_default();
    let tx = c.transaction().await.map_err(unavailable)?;
    epochs::lock(&tx).await.map_err(unavailable)?;
    let table = epochs::latest(&tx, &nodes)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| refuse(503, "the catalog has no routing table yet"))?;
    let p = table
        .partitions()
        .iter()
        .find(|p| p.id == partition)
        .ok_or_else(|| {
            refuse(
                404,
                format!("no partition {partition} in epoch {}", table.epoch()),
            )
        })?;
    busy(&tx, &[partition]).await?;
    if p.state != PartitionState::Serving {
        return Err(refuse(
            409,
            format!("partition {partition} is {} already", p.state.as_str()),
        ));
    }
    if p.node == target {
        return Err(refuse(
            400,
            format!("partition {partition} is already on node {to}"),
        ));
    }
    let id = journal::create(
        &tx,
        "move",
        partition,
        &nodes[p.node],
        to,
        p.lo,
        p.hi,
        &owner,
    )
    .await
    .map_err(unavailable)?;
    tx.commit().await.map_err(unavailable)?;
    info!(migration = id, partition, to, "move accepted");
    let shared = shared.clone();
    tokio::spawn(async move { claim_and_run(shared, id).await });
    Ok(id)
}

/// Refuses if one of `partitions` has a migration that has not finished.
pub(crate) async fn busy(
    c: &impl tokio_postgres::GenericClient,
    partitions: &[u32],
) -> Result<(), Refusal> {
    let ids: Vec<i32> = partitions.iter().map(|p| *p as i32).collect();
    let rows = c
        .query(
            "SELECT id, partition_id, state FROM shardcast.migrations
             WHERE partition_id = ANY($1) AND state NOT IN ('done', 'aborted')",
            &[&ids],
        )
        .await
        .map_err(unavailable)?;
    if let Some(r) = rows.first() {
        return Err(refuse(
            409,
            format!(
                "partition {} is already migrating (migration {}, {})",
                r.get::<_, i32>(1),
                r.get::<_, i64>(0),
                r.get::<_, String>(2)
            ),
        ));
    }
    Ok(())
}

/// Moves every partition off `node`, each to the other node with the
/// least recorded load so far (partitions heaviest first).
async fn drain(shared: &Arc<Shared>, c: &mut Client, node: &str) -> Result<Vec<i64>, Refusal> {
    let from = node_index(shared, node)?;
    let table = shared.routing.load();
    let n = table.nodes().len();
    if n < 2 {
        return Err(refuse(
            400,
            "draining needs another node to move partitions to",
        ));
    }
    let load: std::collections::HashMap<u32, u64> = shared
        .recorder
        .totals()
        .into_iter()
        .map(|(id, b)| (id, b.requests()))
        .collect();
    let weight = |id: u32| load.get(&id).copied().unwrap_or(0) + 1;
    let mut per_node = vec![0u64; n];
    for p in table.partitions() {
        per_node[p.node] += weight(p.id);
    }
    per_node[from] = u64::MAX;
    let mut moving: Vec<_> = table
        .partitions()
        .iter()
        .filter(|p| p.node == from)
        .collect();
    if moving.is_empty() {
        return Err(refuse(400, format!("node {node} holds no partitions")));
    }
    moving.sort_by_key(|p| std::cmp::Reverse(weight(p.id)));
    let mut ids = Vec::new();
    for p in moving {
        let to = (0..n).min_by_key(|i| per_node[*i]).unwrap_or(0);
        per_node[to] += weight(p.id);
        ids.push(create_move(shared, c, p.id, &table.nodes()[to]).await?);
    }
    Ok(ids)
}

/// Takes migration `id`'s runner lock on a fresh catalog connection and
/// runs it; does nothing if another proxy holds it.
async fn claim_and_run(shared: Arc<Shared>, id: i64) {
    let Some(catalog) = shared.catalog.as_ref() else {
        return;
    };
    let Ok(c) = catalog.connect().await else {
        return;
    };
    let locked: bool = match c
        .query_one(
            "SELECT pg_try_advisory_lock($1, $2)",
            &[&RUNNER_LOCK, &(id as i32)],
        )
        .await
    {
        Ok(r) => r.get(0),
        Err(_) => false,
    };
    if !locked {
        return;
    }
    match journal::get(&c, id).await {
        Ok(Some(m)) if !m.finished() => drive(&shared, c, m).await,
        _ => {}
    }
}

/// Runs (or resumes) one migration on its runner connection.
async fn drive(shared: &Arc<Shared>, mut catalog: Client, m: Migration) {
    let owner = shared
        .catalog
        .as_ref()
        .map(|c| c.proxy_id.clone())
        .unwrap_or_default();
    let _ = catalog
        .execute(
            "UPDATE shardcast.migrations SET owner = $2 WHERE id = $1",
            &[&m.id, &owner],
        )
        .await;
    let (source, target) = match (node_index(shared, &m.source), node_index(shared, &m.target)) {
        (Ok(s), Ok(t)) => (s, t),
        (Err(e), _) | (_, Err(e)) => {
            let _ = journal::finish(&catalog, m.id, "aborted", Some(&e.message)).await;
            return;
        }
    };
    let state = m.state.clone();
    let max = shared.config.migration.max_concurrent as i64;
    let mut mv = Move {
        shared,
        catalog: &mut catalog,
        m,
        source,
        target,
        tables: tables(shared),
    };
    let result = match state.as_str() {
        "planned" => match wait_for_slot(mv.catalog, mv.m.id, max).await {
            Ok(()) => mv.run().await,
            Err(e) => Err(Stop {
                reason: e,
                committed: false,
            }),
        },
        "cleaning_up" => mv.clean_up().await,
        other => Err(Stop {
            reason: format!(
                "interrupted while {other} (the proxy running it stopped); rolled back"
            ),
            committed: false,
        }),
    };
    match result {
        Ok(()) => {}
        Err(s) if s.committed => {
            warn!(migration = mv.m.id, reason = %s.reason, "clean-up failed; it is retried");
        }
        Err(s) => {
            mv.roll_back(&s.reason).await;
            shared
                .metrics
                .migration_steps
                .with_label_values(&["aborted"])
                .inc();
        }
    }
}

/// Waits until fewer than `max` moves are running across the cluster,
/// then marks this one started (under the epoch lock, so two runners
/// cannot both take the last slot).
async fn wait_for_slot(c: &mut Client, id: i64, max: i64) -> Result<(), String> {
    loop {
        let tx = c.transaction().await.map_err(|e| e.to_string())?;
        epochs::lock(&tx).await?;
        let active: i64 = tx
            .query_one(
                "SELECT count(*) FROM shardcast.migrations
                 WHERE kind = 'move' AND state NOT IN ('planned', 'done', 'aborted')",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        if active < max {
            tx.execute(
                "UPDATE shardcast.migrations SET state = 'capturing' WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(|e| e.to_string())?;
            return tx.commit().await.map_err(|e| e.to_string());
        }
        drop(tx);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every proxy, every two seconds: unfinished migrations whose runner
/// lock is free (their proxy died, or never took it) are taken over.
pub async fn resume(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let Some(catalog) = shared.catalog.as_ref() else {
        return;
    };
    info!("migration resumer started");
    loop {
        if let Ok(c) = catalog.connect().await {
            if let Ok(list) = journal::unfinished(&c).await {
                for m in list {
                    let shared = shared.clone();
                    tokio::spawn(async move { claim_and_run(shared, m.id).await });
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.changed() => break,
        }
    }
    info!("migration resumer stopped");
}

/// Test hook: `SHARDCAST_FAULT=<point>` aborts the process there, as a
/// `kill -9` would.
pub(crate) fn fault(point: &str) {
    if std::env::var("SHARDCAST_FAULT").is_ok_and(|f| f == point) {
        eprintln!("SHARDCAST_FAULT={point}: aborting");
        std::process::abort();
    }
}
