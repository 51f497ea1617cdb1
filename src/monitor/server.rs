//! The server's own view of its load: `pg_stat_database`, `pg_stat_activity`,
//! the database's size, and each partition's bytes — its rows' share (from
//! a sample of the shard keys' hashes) of each sharded table on its node.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

use crate::backend::Pool;
use crate::frontend::Shared;
use crate::ring::{PartitionId, PartitionState};

/// Longest a sampling query may take before the node counts as down.
const TIMEOUT: Duration = Duration::from_secs(3);
/// Pages read per table to estimate partition shares (about 8 MB).
const SAMPLE_PAGES: f64 = 1000.0;

#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerSample {
    pub commits_per_sec: f64,
    pub rollbacks_per_sec: f64,
    /// Blocks read from disk per second, and the share found in shared buffers.
    pub blocks_read_per_sec: f64,
    pub cache_hit_ratio: Option<f64>,
    /// Backends running a statement, and those waiting on a lock.
    pub active_backends: i64,
    pub lock_waiting_backends: i64,
    pub database_bytes: i64,
}

#[derive(Default, Clone, Copy)]
struct Counters {
    commits: i64,
    rollbacks: i64,
    read: i64,
    hit: i64,
}

/// One monitoring connection per node, opened on demand.
pub(super) struct Servers {
    clients: Vec<Option<tokio_postgres::Client>>,
    prev: Vec<Option<Counters>>,
}

impl Servers {
    pub(super) fn new(nodes: usize) -> Self {
        Self {
            clients: (0..nodes).map(|_| None).collect(),
            prev: vec![None; nodes],
        }
    }

    async fn client(&mut self, n: usize, pool: &Pool) -> Option<&tokio_postgres::Client> {
        if self.clients[n].as_ref().is_none_or(|c| c.is_closed()) {
            let c = tokio::time::timeout(
                TIMEOUT,
                crate::catalog::connect(&pool.target, "shardcast-monitor"),
            )
            .await
            .ok()?
            .ok()?;
            self.clients[n] = Some(c);
        }
        self.clients[n].as_ref()
    }

    /// The node's counters as rates over `secs`; None if it does not answer.
    pub(super) async fn sample(
        &mut self,
        n: usize,
        pool: &Pool,
        secs: f64,
    ) -> Option<ServerSample> {
        let sql = "SELECT d.xact_commit, d.xact_rollback, d.blks_read, d.blks_hit, \
                          pg_database_size(d.datid), \
                          (SELECT count(*) FROM pg_stat_activity a WHERE a.datid = d.datid \
                             AND a.state = 'active' AND a.pid <> pg_backend_pid()), \
                          (SELECT count(*) FROM pg_stat_activity a WHERE a.datid = d.datid \
                             AND a.wait_event_type = 'Lock') \
                   FROM pg_stat_database d WHERE d.datname = current_database()";
        let client = self.client(n, pool).await?;
        let row = match tokio::time::timeout(TIMEOUT, client.query_one(sql, &[])).await {
            Ok(Ok(r)) => r,
            _ => {
                self.clients[n] = None;
                return None;
            }
        };
        let now = Counters {
            commits: row.get(0),
            rollbacks: row.get(1),
            read: row.get(2),
            hit: row.get(3),
        };
        let rate = |a: i64, b: i64| (a - b).max(0) as f64 / secs.max(1e-3);
        let out = match self.prev[n] {
            Some(p) => {
                let (read, hit) = (now.read - p.read, now.hit - p.hit);
                ServerSample {
                    commits_per_sec: rate(now.commits, p.commits),
                    rollbacks_per_sec: rate(now.rollbacks, p.rollbacks),
                    blocks_read_per_sec: rate(now.read, p.read),
                    cache_hit_ratio: (read + hit > 0).then(|| hit as f64 / (read + hit) as f64),
                    ..Default::default()
                }
            }
            None => ServerSample::default(),
        };
        self.prev[n] = Some(now);
        Some(ServerSample {
            database_bytes: row.get(4),
            active_backends: row.get(5),
            lock_waiting_backends: row.get(6),
            ..out
        })
    }
}

/// Estimated bytes of every serving partition: for each sharded table on
/// each node, its total size times the share of a sample of its rows whose
/// key hashes into the partition.
pub(super) async fn partition_bytes(
    shared: &Shared,
    servers: &mut Servers,
) -> HashMap<PartitionId, u64> {
    let table = shared.routing.load();
    let mut out: HashMap<PartitionId, u64> = HashMap::new();
    for (n, pool) in shared.pools.iter().enumerate() {
        let mine: Vec<_> = table
            .partitions()
            .iter()
            .filter(|p| p.node == n && p.state == PartitionState::Serving)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let Some(client) = servers.client(n, pool).await else {
            continue;
        };
        for t in &shared.config.tables {
            let size = "SELECT pg_total_relation_size(c.oid), c.relpages FROM pg_class c WHERE c.oid = to_regclass($1)";
            let Ok(Ok(Some(row))) =
                tokio::time::timeout(TIMEOUT, client.query_opt(size, &[&t.name])).await
            else {
                continue;
            };
            let (bytes, pages): (i64, i32) = (row.get(0), row.get(1));
            if bytes <= 0 {
                continue;
            }
            let (_, hash) = t.key_type.sql();
            let sample = if pages as f64 > SAMPLE_PAGES {
                format!(
                    " TABLESAMPLE SYSTEM ({:.4})",
                    100.0 * SAMPLE_PAGES / pages as f64
                )
            } else {
                String::new()
            };
            let ranges: Vec<String> = mine
                .iter()
                .map(|p| format!("count(*) FILTER (WHERE h BETWEEN {} AND {})", p.lo, p.hi))
                .collect();
            let sql = format!(
                "SELECT count(*), {} FROM (SELECT {hash}({}, 0) AS h FROM {}{sample}) s",
                ranges.join(", "),
                quote_ident(&t.shard_key),
                t.name
            );
            let Ok(Ok(row)) = tokio::time::timeout(TIMEOUT, client.query_one(&sql, &[])).await
            else {
                continue;
            };
            let total: i64 = row.get(0);
            for (i, p) in mine.iter().enumerate() {
                let n: i64 = row.get(i + 1);
                let share = if total > 0 {
                    n as f64 / total as f64
                } else {
                    (p.hi as f64 - p.lo as f64) / (u64::MAX as f64) / mine.len().max(1) as f64
                };
                *out.entry(p.id).or_default() += (bytes as f64 * share) as u64;
            }
        }
    }
    out
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}
