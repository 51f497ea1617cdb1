//! The Resource Utilization Monitor: how loaded each node is, sampled every
//! few seconds, so the planner knows where load can go and the operator
//! sees it (`/api/nodes`, `/metrics`, the status page).
//!
//! Three views per node: the proxy's own (requests/s routed there, in-flight
//! statements, pool waits, mean latency against the lowest seen — its idle
//! baseline —, connection errors), the server's (`pg_stat_database`
//! commits, rollbacks and block reads, `pg_stat_activity` active and
//! lock-waiting backends, database size; `server.rs`), and optionally the
//! host's from a node_exporter (`exporter.rs`). One figure sums it up:
//! utilization = requests/s ÷ `capacity_qps`. Per partition it keeps the
//! request rate and an estimate of its bytes (its rows' share of each
//! sharded table on its node, from a sample). With several proxies each
//! sees its own requests; the servers' counters see them all.

pub mod calibrate;
mod exporter;
pub mod live;
mod server;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;
use tracing::info;

use crate::frontend::Shared;
use crate::ring::PartitionId;

pub use exporter::HostSample;
pub use server::ServerSample;

/// One node, as last sampled.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeSample {
    pub name: String,
    /// Requests per second the node serves before latency bends (config).
    pub capacity_qps: Option<f64>,
    /// Requests per second this proxy routed to the node.
    pub requests_per_sec: f64,
    /// Requests/s ÷ capacity (None without a capacity).
    pub utilization: Option<f64>,
    /// Server connections in use and clients waiting for one.
    pub in_flight: i64,
    pub pool_waiting: i64,
    /// Mean statement latency over the sample, and the lowest seen (the
    /// node's idle baseline), in milliseconds.
    pub latency_ms: Option<f64>,
    pub baseline_ms: Option<f64>,
    /// Connection errors and checkout timeouts per second.
    pub errors_per_sec: f64,
    /// The server's own counters (None while it does not answer).
    pub server: Option<ServerSample>,
    /// The host's, from a node_exporter.
    pub host: Option<HostSample>,
    /// The last sample reached the server.
    pub up: bool,
    /// Unix seconds of the sample.
    pub at: u64,
}

impl NodeSample {
    /// Latency over the idle baseline (1 = as fast as ever).
    pub fn latency_ratio(&self) -> Option<f64> {
        match (self.latency_ms, self.baseline_ms) {
            (Some(l), Some(b)) if b > 0.0 => Some(l / b),
            _ => None,
        }
    }
}

/// One partition, as last sampled.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PartitionSample {
    pub requests_per_sec: f64,
    /// Estimated bytes (None until sizes were sampled).
    pub bytes: Option<u64>,
}

/// The monitor's published state, read without locks.
#[derive(Default)]
pub struct Monitor {
    nodes: ArcSwap<Vec<NodeSample>>,
    partitions: ArcSwap<HashMap<PartitionId, PartitionSample>>,
    /// The planner's memory between rounds (windows, cooldowns).
    pub memory: Mutex<crate::planner::Memory>,
    /// The planner's last round.
    pub last_plan: ArcSwap<Option<crate::planner::Plan>>,
}

impl Monitor {
    pub fn nodes(&self) -> Arc<Vec<NodeSample>> {
        self.nodes.load_full()
    }

    pub fn partitions(&self) -> Arc<HashMap<PartitionId, PartitionSample>> {
        self.partitions.load_full()
    }
}

/// Counters at the previous sample, to turn into rates.
#[derive(Default, Clone)]
struct Previous {
    latency_count: u64,
    latency_sum: f64,
    errors: u64,
    baseline_ms: Option<f64>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Samples every node every `[monitor] interval`, sizes every
/// `sizes_interval`, until `stop`.
pub async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_secs(shared.config.monitor.interval.max(1));
    let sizes_every = Duration::from_secs(shared.config.monitor.sizes_interval.max(1));
    info!(interval_secs = every.as_secs(), "resource monitor started");
    let mut servers = server::Servers::new(shared.pools.len());
    let mut hosts = exporter::Exporters::new(&shared.config.nodes);
    let mut prev: Vec<Previous> = vec![Previous::default(); shared.pools.len()];
    let mut prev_parts: HashMap<PartitionId, u64> = HashMap::new();
    let mut last = Instant::now();
    let mut sizes: HashMap<PartitionId, u64> = HashMap::new();
    let mut sizes_at: Option<Instant> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let secs = last.elapsed().as_secs_f64().max(1e-3);
        last = Instant::now();
        let table = shared.routing.load();
        // Per partition and per node: requests since the last sample (summed
        // per node from the partitions' increases, so a partition that just
        // moved does not bring its whole history with it).
        let totals = shared.recorder.totals();
        let mut parts = HashMap::with_capacity(totals.len());
        let mut node_requests = vec![0u64; shared.pools.len()];
        for (id, b) in totals {
            let n = b.requests();
            let delta = n.saturating_sub(prev_parts.insert(id, n).unwrap_or(n));
            if let Some(p) = table.index_of(id).map(|i| &table.partitions()[i]) {
                if let Some(slot) = node_requests.get_mut(p.node) {
                    *slot += delta;
                }
            }
            parts.insert(
                id,
                PartitionSample {
                    requests_per_sec: delta as f64 / secs,
                    bytes: sizes.get(&id).copied(),
                },
            );
        }
        if sizes_at.is_none_or(|t| t.elapsed() >= sizes_every) {
            sizes = server::partition_bytes(&shared, &mut servers).await;
            sizes_at = Some(Instant::now());
            for (id, p) in parts.iter_mut() {
                p.bytes = sizes.get(id).copied();
            }
        }
        let mut out = Vec::with_capacity(shared.pools.len());
        for (n, pool) in shared.pools.iter().enumerate() {
            let cfg = shared.config.nodes.get(n);
            let p = &mut prev[n];
            let hist = &shared.metrics.latency[n];
            let (count, sum) = (hist.get_sample_count(), hist.get_sample_sum());
            let latency_ms = (count > p.latency_count)
                .then(|| 1000.0 * (sum - p.latency_sum) / (count - p.latency_count) as f64);
            if let Some(l) = latency_ms {
                p.baseline_ms = Some(p.baseline_ms.map_or(l, |b| b.min(l)));
            }
            let stats = &pool.stats;
            let errors = stats
                .connect_errors
                .load(std::sync::atomic::Ordering::Relaxed)
                + stats
                    .checkout_timeouts
                    .load(std::sync::atomic::Ordering::Relaxed);
            let requests_per_sec = node_requests[n] as f64 / secs;
            let server = servers.sample(n, pool, secs).await;
            let capacity_qps = cfg.and_then(|c| c.capacity_qps);
            out.push(NodeSample {
                name: pool.target.name.clone(),
                capacity_qps,
                requests_per_sec,
                utilization: capacity_qps.map(|c| requests_per_sec / c),
                in_flight: stats.in_use.load(std::sync::atomic::Ordering::Relaxed),
                pool_waiting: stats.waiting.load(std::sync::atomic::Ordering::Relaxed),
                latency_ms,
                baseline_ms: p.baseline_ms,
                errors_per_sec: errors.saturating_sub(p.errors) as f64 / secs,
                up: server.is_some(),
                server,
                host: hosts.sample(n, secs).await,
                at: unix_now(),
            });
            p.latency_count = count;
            p.latency_sum = sum;
            p.errors = errors;
        }
        shared.monitor.nodes.store(Arc::new(out));
        shared.monitor.partitions.store(Arc::new(parts));
    }
    info!("resource monitor stopped");
}
