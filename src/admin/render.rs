//! The numbers behind the admin endpoints.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use prometheus::Encoder;
use serde_json::{json, Value};

use crate::frontend::Shared;

pub fn routing_json(shared: &Shared) -> Value {
    let t = shared.routing.load();
    let parts: Vec<Value> = t
        .partitions()
        .iter()
        .map(|p| {
            json!({
                "id": p.id,
                "lo": p.lo,
                "hi": p.hi,
                "node": t.nodes()[p.node],
                "state": p.state,
                "target": p.target.map(|n| t.nodes()[n].clone()),
            })
        })
        .collect();
    json!({ "epoch": t.epoch(), "nodes": t.nodes(), "partitions": parts })
}

pub fn nodes_json(shared: &Shared) -> Value {
    let samples = shared.monitor.nodes();
    let nodes: Vec<Value> = shared
        .pools
        .iter()
        .enumerate()
        .map(|(n, p)| {
            let s = &p.stats;
            let m = samples.get(n);
            json!({
                "utilization": m.and_then(|m| m.utilization),
                "capacity_qps": m.and_then(|m| m.capacity_qps),
                "requests_per_sec": m.map(|m| m.requests_per_sec),
                "latency_ratio": m.and_then(|m| m.latency_ratio()),
                "monitor": m,
                "name": p.target.name,
                "host": p.target.host,
                "port": p.target.port,
                "database": p.target.dbname,
                "pool_size": p.size(),
                "in_use": s.in_use.load(Ordering::Relaxed),
                "idle": s.idle.load(Ordering::Relaxed),
                "waiting": s.waiting.load(Ordering::Relaxed),
                "connects": s.connects.load(Ordering::Relaxed),
                "connect_errors": s.connect_errors.load(Ordering::Relaxed),
            })
        })
        .collect();
    json!({ "nodes": nodes })
}

pub fn metrics_text(shared: &Shared) -> String {
    let m = &shared.metrics;
    let table = shared.routing.load();
    m.routing_epoch.set(table.epoch() as i64);
    let mut buf = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&m.registry.gather(), &mut buf);
    let mut out = String::from_utf8(buf).unwrap_or_default();

    let _ = writeln!(
        out,
        "# HELP shardcast_backend_pool_connections Server connections by node and state"
    );
    let _ = writeln!(out, "# TYPE shardcast_backend_pool_connections gauge");
    for p in &shared.pools {
        let s = &p.stats;
        for (state, v) in [
            ("in_use", &s.in_use),
            ("idle", &s.idle),
            ("waiting", &s.waiting),
        ] {
            let _ = writeln!(
                out,
                "shardcast_backend_pool_connections{{node=\"{}\",state=\"{state}\"}} {}",
                p.target.name,
                v.load(Ordering::Relaxed)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP shardcast_backend_connect_errors_total Failed connection attempts by node"
    );
    let _ = writeln!(out, "# TYPE shardcast_backend_connect_errors_total counter");
    for p in &shared.pools {
        let _ = writeln!(
            out,
            "shardcast_backend_connect_errors_total{{node=\"{}\"}} {}",
            p.target.name,
            p.stats.connect_errors.load(Ordering::Relaxed)
        );
    }

    monitor_text(shared, &mut out);

    let counters: std::collections::HashMap<_, _> = shared.recorder.totals().into_iter().collect();
    let _ = writeln!(
        out,
        "# HELP shardcast_router_requests_total Routed statements by partition, node and kind"
    );
    let _ = writeln!(out, "# TYPE shardcast_router_requests_total counter");
    let mut rows = String::new();
    let mut bytes = String::new();
    for p in table.partitions() {
        let Some(c) = counters.get(&p.id) else {
            continue;
        };
        let node = &table.nodes()[p.node];
        for (kind, v) in [("read", c.reads), ("write", c.writes)] {
            let _ = writeln!(
                out,
                "shardcast_router_requests_total{{node=\"{node}\",partition=\"{}\",kind=\"{kind}\"}} {}",
                p.id,
                v
            );
        }
        let _ = writeln!(
            rows,
            "shardcast_router_rows_total{{node=\"{node}\",partition=\"{}\"}} {}",
            p.id, c.rows
        );
        for (dir, v) in [("in", c.bytes_in), ("out", c.bytes_out)] {
            let _ = writeln!(
                bytes,
                "shardcast_router_bytes_total{{node=\"{node}\",partition=\"{}\",direction=\"{dir}\"}} {}",
                p.id,
                v
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP shardcast_router_rows_total Rows returned or affected, by partition"
    );
    let _ = writeln!(out, "# TYPE shardcast_router_rows_total counter");
    out.push_str(&rows);
    let _ = writeln!(
        out,
        "# HELP shardcast_router_bytes_total Protocol bytes by partition and direction"
    );
    let _ = writeln!(out, "# TYPE shardcast_router_bytes_total counter");
    out.push_str(&bytes);

    let f = shared.forecaster.snapshot();
    let _ = writeln!(out, "# HELP shardcast_analyzer_predicted_rate Requests/s predicted at the forecast horizon, by partition");
    let _ = writeln!(out, "# TYPE shardcast_analyzer_predicted_rate gauge");
    let mut upper = String::new();
    let mut current = String::new();
    for p in &f.partitions {
        let l = format!("node=\"{}\",partition=\"{}\"", p.node, p.id);
        let _ = writeln!(
            out,
            "shardcast_analyzer_predicted_rate{{{l}}} {:.3}",
            p.predicted_rate
        );
        let _ = writeln!(
            upper,
            "shardcast_analyzer_predicted_rate_upper{{{l}}} {:.3}",
            p.upper_rate
        );
        let _ = writeln!(
            current,
            "shardcast_analyzer_current_rate{{{l}}} {:.3}",
            p.current_rate
        );
    }
    let _ = writeln!(
        out,
        "# HELP shardcast_analyzer_predicted_rate_upper Upper bound of the predicted requests/s"
    );
    let _ = writeln!(out, "# TYPE shardcast_analyzer_predicted_rate_upper gauge");
    out.push_str(&upper);
    let _ = writeln!(
        out,
        "# HELP shardcast_analyzer_current_rate Requests/s in the last forecast bucket"
    );
    let _ = writeln!(out, "# TYPE shardcast_analyzer_current_rate gauge");
    out.push_str(&current);
    out
}

/// The monitor's per-node gauges.
fn monitor_text(shared: &Shared, out: &mut String) {
    let samples = shared.monitor.nodes();
    type Gauge = fn(&crate::monitor::NodeSample) -> Option<f64>;
    let gauges: [(&str, &str, Gauge); 8] = [
        (
            "shardcast_monitor_node_utilization",
            "Requests/s over capacity_qps",
            |m| m.utilization,
        ),
        (
            "shardcast_monitor_node_requests_per_second",
            "Requests/s this proxy routed to the node",
            |m| Some(m.requests_per_sec),
        ),
        (
            "shardcast_monitor_node_latency_ratio",
            "Mean latency over the node's idle baseline",
            |m| m.latency_ratio(),
        ),
        (
            "shardcast_monitor_node_up",
            "1 if the last sample reached the server",
            |m| Some(if m.up { 1.0 } else { 0.0 }),
        ),
        (
            "shardcast_monitor_server_commits_per_second",
            "pg_stat_database commits per second",
            |m| m.server.as_ref().map(|s| s.commits_per_sec),
        ),
        (
            "shardcast_monitor_server_active_backends",
            "pg_stat_activity backends running a statement",
            |m| m.server.as_ref().map(|s| s.active_backends as f64),
        ),
        (
            "shardcast_monitor_server_database_bytes",
            "pg_database_size",
            |m| m.server.as_ref().map(|s| s.database_bytes as f64),
        ),
        (
            "shardcast_monitor_host_cpu_busy",
            "Host CPU busy share (node_exporter)",
            |m| m.host.as_ref().and_then(|h| h.cpu_busy),
        ),
    ];
    for (name, help, get) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for m in samples.iter() {
            if let Some(v) = get(m) {
                let _ = writeln!(out, "{name}{{node=\"{}\"}} {v}", m.name);
            }
        }
    }
    if let Some(plan) = shared.monitor.last_plan.load().as_ref() {
        let name = "shardcast_planner_expected_utilization";
        let _ = writeln!(
            out,
            "# HELP {name} Utilization the planner expects over its horizon"
        );
        let _ = writeln!(out, "# TYPE {name} gauge");
        for n in &plan.nodes {
            let _ = writeln!(out, "{name}{{node=\"{}\"}} {}", n.name, n.expected);
        }
    }
}
