//! A one-page HTML view: nodes and their pools, and each partition's range,
//! owner and request count drawn as a bar, refreshed every few seconds.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::frontend::Shared;

pub fn render(shared: &Shared) -> String {
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
    html.push_str("<table><tr><th>node</th><th>address</th><th>in use</th><th>idle</th><th>waiting</th><th>connect errors</th></tr>");
    for p in &shared.pools {
        let s = &p.stats;
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}:{}/{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&p.target.name),
            esc(&p.target.host),
            p.target.port,
            esc(&p.target.dbname),
            s.in_use.load(Ordering::Relaxed),
            s.idle.load(Ordering::Relaxed),
            s.waiting.load(Ordering::Relaxed),
            s.connect_errors.load(Ordering::Relaxed)
        );
    }
    html.push_str("</table><h2>Partitions</h2><p>green: reads, orange: writes (since start)</p>");
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
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:?}</td><td>{r}</td><td>{w}</td>\
             <td style='text-align:left'><div style='display:flex'><div class=bar style='width:{}px'></div>\
             <div class='bar w' style='width:{}px'></div></div></td></tr>",
            p.id,
            p.lo,
            p.hi,
            esc(&table.nodes()[p.node]),
            p.state,
            r * 300 / max,
            w * 300 / max
        );
    }
    html.push_str("</table></body></html>");
    html
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
