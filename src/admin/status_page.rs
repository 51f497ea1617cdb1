//! A one-page HTML view: nodes with their utilization now and expected,
//! and their pools; the planner's last decisions; migrations with their
//! progress bars, each partition's range, owner and request count drawn as
//! a bar, each partition's recent load as a sparkline beside its forecast;
//! refreshed every few seconds.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::catalog::journal::Migration;
use crate::frontend::Shared;

pub fn render(shared: &Shared, migrations: &[Migration]) -> String {
    let table = shared.routing.load();
    let counters: std::collections::HashMap<_, _> = shared.recorder.totals().into_iter().collect();
    let mut html = String::from(
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=5>\
         <title>shardcast</title><style>body{font:14px system-ui;margin:2em}table{border-collapse:collapse}\
         td,th{padding:2px 8px;text-align:right}th{background:#eee}.bar{background:#4a7;height:12px}\
         .w{background:#c74}</style></head><body>",
    );
    let _ = write!(
        html,
        "<h1>shardcast</h1><p>routing epoch {}</p><h2>Nodes</h2>",
        table.epoch()
    );
    let samples = shared.monitor.nodes();
    let plan = shared.monitor.last_plan.load_full();
    html.push_str("<p>utilization: green now, orange what the planner expects over its horizon; the line is its threshold</p>");
    html.push_str("<table><tr><th>node</th><th>address</th><th>req/s</th><th>capacity</th><th style='width:240px'>utilization</th><th>latency ÷ idle</th><th>active</th><th>in use</th><th>idle</th><th>waiting</th><th>connect errors</th></tr>");
    for (n, p) in shared.pools.iter().enumerate() {
        let s = &p.stats;
        let m = samples.get(n);
        let expected = plan
            .as_ref()
            .as_ref()
            .and_then(|pl| pl.nodes.iter().find(|o| o.name == p.target.name))
            .map(|o| o.expected);
        let now = m.and_then(|m| m.utilization);
        let bar = |u: Option<f64>, class: &str| match u {
            Some(u) => format!(
                "<div class='bar {class}' style='width:{:.0}px' title='{u:.2}'></div>",
                (u.min(1.5) * 160.0).max(1.0)
            ),
            None => String::new(),
        };
        let threshold = shared.config.planner.threshold;
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}:{}/{}</td><td>{}</td><td>{}</td>\
             <td style='text-align:left;position:relative'>{}{}<div style='position:absolute;top:0;bottom:0;left:{:.0}px;border-left:1px dashed #000'></div>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&p.target.name),
            esc(&p.target.host),
            p.target.port,
            esc(&p.target.dbname),
            m.map(|m| format!("{:.0}", m.requests_per_sec)).unwrap_or_default(),
            m.and_then(|m| m.capacity_qps).map(|c| format!("{c:.0}")).unwrap_or_else(|| "?".into()),
            bar(now, ""),
            bar(expected, "w"),
            8.0 + threshold * 160.0,
            match (now, expected) {
                (Some(a), Some(b)) => format!("{a:.2} → {b:.2}"),
                (Some(a), None) => format!("{a:.2}"),
                _ => String::new(),
            },
            m.and_then(|m| m.latency_ratio()).map(|r| format!("{r:.1}×")).unwrap_or_default(),
            m.and_then(|m| m.server.as_ref()).map(|s| s.active_backends.to_string()).unwrap_or_else(|| "down".into()),
            s.in_use.load(Ordering::Relaxed),
            s.idle.load(Ordering::Relaxed),
            s.waiting.load(Ordering::Relaxed),
            s.connect_errors.load(Ordering::Relaxed)
        );
    }
    html.push_str("</table>");
    if let Some(pl) = plan.as_ref() {
        let _ = write!(html, "<h2>Planner ({})</h2>", pl.policy.as_str());
        if pl.decisions.is_empty() {
            html.push_str("<p>nothing to do</p>");
        }
        html.push_str("<ul>");
        for d in &pl.decisions {
            let _ = write!(html, "<li>{}</li>", esc(&d.reason));
        }
        for note in &pl.notes {
            let _ = write!(html, "<li><i>{}</i></li>", esc(note));
        }
        html.push_str("</ul>");
    }
    migrations_table(migrations, &mut html);
    html.push_str("<h2>Partitions</h2><p>green: reads, orange: writes (since start)</p>");
    let load = |id: u32| {
        counters
            .get(&id)
            .map(|c| (c.reads, c.writes))
            .unwrap_or((0, 0))
    };
    let max = table
        .partitions()
        .iter()
        .map(|p| load(p.id))
        .map(|(r, w)| r + w)
        .max()
        .unwrap_or(0)
        .max(1);
    html.push_str("<table><tr><th>id</th><th>lo</th><th>hi</th><th>node</th><th>state</th><th>reads</th><th>writes</th><th style='width:320px'></th></tr>");
    for p in table.partitions() {
        let (r, w) = load(p.id);
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{r}</td><td>{w}</td>\
             <td style='text-align:left'><div style='display:flex'><div class=bar style='width:{}px'></div>\
             <div class='bar w' style='width:{}px'></div></div></td></tr>",
            p.id,
            p.lo,
            p.hi,
            esc(&table.nodes()[p.node]),
            match p.target {
                Some(t) => format!("{} ({})", p.state.as_str(), esc(&table.nodes()[t])),
                None => p.state.as_str().to_string(),
            },
            r * 300 / max,
            w * 300 / max
        );
    }
    html.push_str("</table>");
    forecast_table(shared, &mut html);
    html.push_str("</body></html>");
    html
}

/// The latest migrations: running ones with a progress bar (rows copied
/// of the partition's rows), rate and ETA; finished ones with their pause
/// or the reason they aborted.
fn migrations_table(list: &[Migration], html: &mut String) {
    html.push_str("<h2>Migrations</h2>");
    if list.is_empty() {
        html.push_str("<p>none yet (POST /api/migrations, or <code>shardcast migrate</code>)</p>");
        return;
    }
    html.push_str(
        "<table><tr><th>id</th><th>kind</th><th>partition</th><th>from → to</th><th>state</th>\
         <th style='width:200px'>copied</th><th>rows</th><th>MB</th><th>MB/s</th><th>ETA s</th>\
         <th>pause ms</th><th style='text-align:left'>reason</th></tr>",
    );
    for m in list.iter().take(20) {
        let done = if m.rows_total > 0 {
            (m.rows_copied as f64 / m.rows_total as f64).min(1.0)
        } else if m.state == "done" {
            1.0
        } else {
            0.0
        };
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} → {}</td><td>{}</td>\
             <td style='text-align:left'><div class=bar style='width:{}px'></div></td><td>{}/{}</td>\
             <td>{:.1}</td><td>{:.1}</td><td>{}</td><td>{}</td><td style='text-align:left'>{}</td></tr>",
            m.id,
            esc(&m.kind),
            m.partition,
            esc(&m.source),
            esc(&m.target),
            esc(&m.state),
            (done * 200.0) as u32,
            m.rows_copied,
            m.rows_total,
            m.bytes_copied as f64 / 1e6,
            m.rate / 1e6,
            m.eta_secs.map(|e| format!("{e:.0}")).unwrap_or_default(),
            m.pause_ms.map(|p| format!("{p:.0}")).unwrap_or_default(),
            esc(m.reason.as_deref().unwrap_or(""))
        );
    }
    html.push_str("</table>");
}

/// Each partition's last 30 minutes (10 s buckets) as a sparkline, and its
/// forecast: the rate now, predicted at the horizon, and the upper bound.
fn forecast_table(shared: &Shared, html: &mut String) {
    const POINTS: usize = 180;
    let f = shared.forecaster.snapshot();
    let _ = write!(
        html,
        "<h2>Load and forecast</h2><p>requests/s; sparkline: last 30 min in 10 s steps; forecast {} s ahead \
         from {} s buckets (upper bound: quantile {})</p><table><tr><th>id</th><th>node</th>\
         <th style='width:{POINTS}px'>last 30 min</th><th>now</th><th>predicted</th><th>upper</th><th>model</th>\
         <th>backtest MASE</th></tr>",
        f.horizon_secs, f.bucket_secs, f.quantile
    );
    let forecasts: std::collections::HashMap<_, _> =
        f.partitions.iter().map(|p| (p.id, p)).collect();
    let table = shared.routing.load();
    for p in table.partitions() {
        let recent = shared.recorder.recent_10s(p.id, POINTS);
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td>",
            p.id,
            esc(&table.nodes()[p.node]),
            sparkline(&recent, POINTS)
        );
        match forecasts.get(&p.id) {
            Some(pf) => {
                let _ = write!(
                    html,
                    "<td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{}</td><td>{:.2}</td></tr>",
                    pf.current_rate, pf.predicted_rate, pf.upper_rate, pf.model, pf.backtest_mase
                );
            }
            None => html.push_str("<td colspan=5>no forecast yet</td></tr>"),
        }
    }
    html.push_str("</table>");
}

/// An inline SVG polyline of `values` scaled to its own maximum.
fn sparkline(values: &[u64], width: usize) -> String {
    let h = 20.0;
    let max = values.iter().copied().max().unwrap_or(0).max(1) as f64;
    let x0 = width.saturating_sub(values.len());
    let pts: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{},{:.1}", x0 + i, h - (*v as f64 / max) * (h - 1.0)))
        .collect();
    format!(
        "<svg width={width} height={h} style='background:#f6f6f6'><polyline fill=none stroke='#4a7' \
         points='{}'/></svg>",
        pts.join(" ")
    )
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
