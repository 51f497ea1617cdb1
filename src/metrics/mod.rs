//! Proxy-wide metrics: latency histograms per node (resolved once, so the
//! hot path skips label lookup), errors by SQLSTATE, connections, epoch.
//! Per-partition request counts live in the analyzer's recorder. Rendered in the Prometheus
//! text format on demand by the admin server.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

/// Latency buckets in seconds: 50 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

pub struct Metrics {
    pub registry: Registry,
    /// Statement latency as seen by the proxy, one histogram per node
    /// (index = node id), resolved once so the hot path skips label lookup.
    pub latency: Vec<Histogram>,
    pub fanout_latency: Histogram,
    /// How long checkouts waited for a pooled connection, one histogram per
    /// node (index = node id); fine buckets, so that the longest wait can
    /// be told from the mean (FIFO fairness, `client_scaling.py`).
    pub pool_wait: Vec<Histogram>,
    pub errors: IntCounterVec,
    pub client_connections: IntGauge,
    pub routing_epoch: IntGauge,
    /// Statements that needed several nodes, by how they were answered.
    pub cross_shard: IntCounterVec,
    /// Two-phase commits by outcome.
    pub two_phase: IntCounterVec,
    /// Migration steps entered (this proxy's), by state.
    pub migration_steps: IntCounterVec,
    pub migration_rows: prometheus::IntCounter,
    pub migration_bytes: prometheus::IntCounter,
    /// How long writes to a partition were held at its cut-over.
    pub migration_pause: Histogram,
    /// What the planner decided, by kind (move, split, merge).
    pub planner_decisions: IntCounterVec,
}

impl Metrics {
    pub fn new(nodes: &[String]) -> Self {
        let registry = Registry::new();
        let lat = prometheus::HistogramVec::new(
            HistogramOpts::new(
                "shardcast_router_request_duration_seconds",
                "Time from a statement's arrival to the server's last reply, by node",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["node"],
        )
        .expect("valid metric");
        let latency = nodes
            .iter()
            .map(|n| lat.with_label_values(&[n.as_str()]))
            .collect();
        let fanout_latency = lat.with_label_values(&["*fanout*"]);
        let wait = prometheus::HistogramVec::new(
            HistogramOpts::new(
                "shardcast_backend_pool_wait_seconds",
                "Time a checkout waited for a pooled server connection (those that waited), by node",
            )
            // 100 µs to ~7 s, each bucket 1.25x the one before.
            .buckets(prometheus::exponential_buckets(0.0001, 1.25, 50).expect("valid buckets")),
            &["node"],
        )
        .expect("valid metric");
        let pool_wait = nodes
            .iter()
            .map(|n| wait.with_label_values(&[n.as_str()]))
            .collect();
        let errors = IntCounterVec::new(
            Opts::new(
                "shardcast_frontend_errors_total",
                "Errors sent to clients, by SQLSTATE and origin",
            ),
            &["sqlstate", "origin"],
        )
        .expect("valid metric");
        let client_connections = IntGauge::new(
            "shardcast_frontend_client_connections",
            "Open client connections",
        )
        .expect("valid metric");
        let routing_epoch = IntGauge::new(
            "shardcast_ring_routing_epoch",
            "Epoch of the routing table in use",
        )
        .expect("valid metric");
        let cross_shard = IntCounterVec::new(
            Opts::new(
                "shardcast_merge_statements_total",
                "Statements that needed several nodes, by kind (concat, merged, nested, refused, split_insert, multi_write, copy_in)",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let two_phase = IntCounterVec::new(
            Opts::new(
                "shardcast_twophase_transactions_total",
                "Two-phase commits by outcome (committed, rolled_back, unknown)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let migration_steps = IntCounterVec::new(
            Opts::new(
                "shardcast_migration_steps_total",
                "Migration steps entered by migrations this proxy ran, by state (capturing ... done, aborted)",
            ),
            &["state"],
        )
        .expect("valid metric");
        let migration_rows = prometheus::IntCounter::new(
            "shardcast_migration_copied_rows_total",
            "Rows copied by migrations this proxy ran",
        )
        .expect("valid metric");
        let migration_bytes = prometheus::IntCounter::new(
            "shardcast_migration_copied_bytes_total",
            "Bytes copied by migrations this proxy ran",
        )
        .expect("valid metric");
        let migration_pause = Histogram::with_opts(
            HistogramOpts::new(
                "shardcast_migration_cutover_pause_seconds",
                "How long writes to a moving partition were held at its cut-over",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .expect("valid metric");
        let planner_decisions = IntCounterVec::new(
            Opts::new(
                "shardcast_planner_decisions_total",
                "What the planner decided (not yet carried out), by kind",
            ),
            &["kind"],
        )
        .expect("valid metric");
        for c in [
            Box::new(lat) as Box<dyn prometheus::core::Collector>,
            Box::new(wait),
            Box::new(planner_decisions.clone()),
            Box::new(migration_steps.clone()),
            Box::new(migration_rows.clone()),
            Box::new(migration_bytes.clone()),
            Box::new(migration_pause.clone()),
            Box::new(cross_shard.clone()),
            Box::new(two_phase.clone()),
            Box::new(errors.clone()),
            Box::new(client_connections.clone()),
            Box::new(routing_epoch.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        Self {
            registry,
            latency,
            fanout_latency,
            pool_wait,
            errors,
            client_connections,
            routing_epoch,
            cross_shard,
            two_phase,
            migration_steps,
            migration_rows,
            migration_bytes,
            migration_pause,
            planner_decisions,
        }
    }

    /// Counts a statement that needed several nodes.
    pub fn cross_shard(&self, kind: &str) {
        self.cross_shard.with_label_values(&[kind]).inc();
    }

    /// Counts a two-phase commit's outcome.
    pub fn two_phase(&self, outcome: &str) {
        self.two_phase.with_label_values(&[outcome]).inc();
    }

    /// Counts an error sent to a client. `origin` is `proxy` or `server`.
    pub fn error(&self, sqlstate: &str, origin: &str) {
        self.errors.with_label_values(&[sqlstate, origin]).inc();
    }
}
