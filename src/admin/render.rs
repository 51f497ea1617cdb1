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
    let nodes: Vec<Value> = shared
        .pools
        .iter()
        .map(|p| {
            let s = &p.stats;
            json!({
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
