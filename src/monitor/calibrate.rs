//! `shardcast calibrate --node N`: finds a node's capacity by measuring
//! it. A short ramp of point selects through the running proxy on keys the
//! node owns, doubling the clients each step; the capacity is the highest
//! throughput reached before p99 latency bends (passes twice its value
//! with one client) or throughput stops growing. Prints each step and the
//! figure; `--write` puts `capacity_qps` into the node's `[[nodes]]` entry.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, KeyType};

/// One step of the ramp.
#[derive(Debug, Clone)]
pub struct Step {
    pub clients: usize,
    pub qps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// p99 may grow to this many times its one-client value before it "bends".
const BEND: f64 = 2.0;
/// A step must add this much throughput to count as growth.
const GROWTH: f64 = 1.05;

/// `shardcast calibrate`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    #[arg(long, default_value = "config/shardcast.toml")]
    pub config: std::path::PathBuf,
    /// The node to measure (its `[[nodes]] name`).
    #[arg(long)]
    pub node: String,
    /// The user the clients connect as.
    #[arg(long, default_value = "postgres")]
    pub user: String,
    /// Seconds per step of the ramp.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Most clients (the ramp doubles from 1).
    #[arg(long, default_value_t = 64)]
    pub max_clients: usize,
    /// Write `capacity_qps` into the node's entry in the config.
    #[arg(long)]
    pub write: bool,
}

/// Runs the ramp; returns the steps and the capacity found.
pub async fn run(o: &Options) -> anyhow::Result<(Vec<Step>, f64)> {
    let cfg = Config::load(&o.config)?;
    let node = cfg
        .nodes
        .iter()
        .position(|n| n.name == o.node)
        .ok_or_else(|| {
            let names: Vec<&str> = cfg.nodes.iter().map(|n| n.name.as_str()).collect();
            anyhow::anyhow!(
                "--node {}: no such node in {} (nodes: {names:?})",
                o.node,
                o.config.display()
            )
        })?;
    let table = cfg
        .tables
        .iter()
        .find(|t| matches!(t.key_type, KeyType::Bigint | KeyType::Integer))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "calibrate needs a sharded table with a bigint or integer key in [[tables]]"
            )
        })?;
    let keys = keys_on(&cfg, node, table.key_type).await?;
    let (host, port) = cfg
        .proxy
        .listen
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("[proxy] listen is not host:port"))?;
    let url = format!(
        "host={host} port={port} user={} dbname={} application_name=shardcast-calibrate",
        o.user, cfg.proxy.database
    );
    let sql = Arc::new(format!(
        "SELECT 1 FROM {} WHERE {} = $1",
        table.name, table.shard_key
    ));
    let keys = Arc::new(keys);
    let mut steps: Vec<Step> = Vec::new();
    let mut clients = 1;
    while clients <= o.max_clients.max(1) {
        let step = measure(&url, &sql, &keys, clients, table.key_type, o.seconds).await?;
        eprintln!(
            "{:>4} clients: {:>9.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
            step.clients, step.qps, step.p50_ms, step.p99_ms
        );
        let bent = steps
            .first()
            .is_some_and(|first| step.p99_ms > BEND * first.p99_ms.max(0.05));
        let flat = steps
            .last()
            .is_some_and(|last| step.qps < GROWTH * last.qps);
        steps.push(step);
        if bent || flat {
            break;
        }
        clients *= 2;
    }
    let capacity = knee(&steps);
    if o.write {
        write_capacity(&o.config, &o.node, capacity)?;
    }
    Ok((steps, capacity))
}

/// The highest throughput before p99 bends.
pub fn knee(steps: &[Step]) -> f64 {
    let Some(first) = steps.first() else {
        return 0.0;
    };
    steps
        .iter()
        .filter(|s| s.p99_ms <= BEND * first.p99_ms.max(0.05))
        .map(|s| s.qps)
        .fold(first.qps, f64::max)
}

/// Up to 1,000 keys whose partition the node serves, from the catalog's
/// routing table as the proxy serves it.
async fn keys_on(cfg: &Config, node: usize, key_type: KeyType) -> anyhow::Result<Vec<i64>> {
    let admin =
        crate::admin_client::Admin::parse(&cfg.proxy.admin_listen).map_err(anyhow::Error::msg)?;
    let routing = tokio::task::spawn_blocking(move || admin.call("GET", "/api/routing", None))
        .await?
        .map_err(|e| anyhow::anyhow!("is the proxy running? {e}"))?;
    let v: serde_json::Value = serde_json::from_slice(&routing.body)?;
    let name = &cfg.nodes[node].name;
    let ranges: Vec<(i64, i64)> = v["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["node"].as_str() == Some(name.as_str()))
        .filter_map(|p| Some((p["lo"].as_i64()?, p["hi"].as_i64()?)))
        .collect();
    let hash = |k: i64| match key_type {
        KeyType::Integer => crate::ring::hash::hash_int4(k as i32),
        _ => crate::ring::hash::hash_int8(k),
    };
    let keys: Vec<i64> = (1..200_000i64)
        .filter(|k| {
            let h = hash(*k);
            ranges.iter().any(|(lo, hi)| *lo <= h && h <= *hi)
        })
        .take(1000)
        .collect();
    if keys.is_empty() {
        anyhow::bail!("node {name} serves no partition: nothing to route to it");
    }
    Ok(keys)
}

async fn measure(
    url: &str,
    sql: &Arc<String>,
    keys: &Arc<Vec<i64>>,
    clients: usize,
    key_type: KeyType,
    seconds: f64,
) -> anyhow::Result<Step> {
    let until = Instant::now() + Duration::from_secs_f64(seconds.max(0.2));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let (sql, keys) = (sql.clone(), keys.clone());
        tasks.push(tokio::spawn(async move {
            let st = client.prepare(&sql).await?;
            let mut lat = Vec::new();
            let mut i = c * 7919;
            while Instant::now() < until {
                let k = keys[i % keys.len()];
                i += 1;
                let t = Instant::now();
                match key_type {
                    KeyType::Integer => client.query(&st, &[&(k as i32)]).await?,
                    _ => client.query(&st, &[&k]).await?,
                };
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, tokio_postgres::Error>(lat)
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    all.sort_by(f64::total_cmp);
    let q = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    Ok(Step {
        clients,
        qps: all.len() as f64 / secs,
        p50_ms: q(0.5),
        p99_ms: q(0.99),
    })
}

/// Sets `capacity_qps` in node `name`'s `[[nodes]]` entry, keeping the rest
/// of the file as it is; refuses if the result would not be a valid config.
pub fn write_capacity(path: &Path, name: &str, capacity: f64) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let updated = set_capacity(&text, name, capacity)
        .ok_or_else(|| anyhow::anyhow!("{}: no [[nodes]] entry named {name:?}", path.display()))?;
    Config::parse(&updated).map_err(|issues| {
        anyhow::anyhow!(
            "{}: the updated config would be invalid: {}",
            path.display(),
            issues
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;
    std::fs::write(path, updated)?;
    Ok(())
}

fn set_capacity(text: &str, name: &str, capacity: f64) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let wanted = |l: &str| {
        let l = l.trim();
        l.strip_prefix("name")
            .map(|r| r.trim_start())
            .and_then(|r| r.strip_prefix('='))
            .map(|r| r.trim().trim_matches('"') == name)
            .unwrap_or(false)
    };
    let mut in_nodes = false;
    let mut block_start = None;
    let mut name_line = None;
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim();
        if t.starts_with('[') {
            if name_line.is_some() {
                break;
            }
            in_nodes = t == "[[nodes]]";
            block_start = in_nodes.then_some(i);
            continue;
        }
        if in_nodes && wanted(t) {
            name_line = Some(i);
        }
    }
    let name_line = name_line?;
    let start = block_start?;
    let end = lines[name_line..]
        .iter()
        .position(|l| l.trim().starts_with('['))
        .map_or(lines.len(), |k| name_line + k);
    let entry = format!("capacity_qps = {capacity:.0}");
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    match (start..end).find(|&i| lines[i].trim().starts_with("capacity_qps")) {
        Some(i) => out[i] = entry,
        None => out.insert(name_line + 1, entry),
    }
    let mut s = out.join("\n");
    if text.ends_with('\n') {
        s.push('\n');
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(clients: usize, qps: f64, p99: f64) -> Step {
        Step {
            clients,
            qps,
            p50_ms: p99 / 2.0,
            p99_ms: p99,
        }
    }

    #[test]
    fn the_knee_is_the_best_throughput_before_p99_bends() {
        let steps = [
            step(1, 1000.0, 1.0),
            step(2, 1900.0, 1.2),
            step(4, 3500.0, 1.8),
            step(8, 3900.0, 4.0),
        ];
        assert_eq!(knee(&steps), 3500.0);
        assert_eq!(knee(&[]), 0.0);
    }

    #[test]
    fn capacity_goes_into_the_right_node_entry() {
        let text = "[proxy]\nlisten = \"a:1\"\n\n[[nodes]]\nname = \"n0\"\nurl = \"x\"\n\n[[nodes]]\nname = \"n1\"\nurl = \"y\"\ncapacity_qps = 5\n\n[sharding]\npartitions = 4\n";
        let a = set_capacity(text, "n0", 1234.4).unwrap();
        assert!(
            a.contains("name = \"n0\"\ncapacity_qps = 1234\nurl = \"x\""),
            "{a}"
        );
        let b = set_capacity(&a, "n1", 99.0).unwrap();
        assert!(b.contains("url = \"y\"\ncapacity_qps = 99\n"), "{b}");
        assert_eq!(b.matches("capacity_qps").count(), 2);
        assert!(set_capacity(text, "n7", 1.0).is_none());
    }
}
