//! The host's view, from a Prometheus node_exporter per node (optional,
//! `[[nodes]] exporter = "http://host:9100/metrics"`): CPU busy share,
//! memory available, disk and network bytes per second.

use serde::Serialize;

use crate::config::NodeConfig;

#[derive(Debug, Clone, Default, Serialize)]
pub struct HostSample {
    /// Share of CPU time not idle (or iowait), all cores together.
    pub cpu_busy: Option<f64>,
    pub memory_available_bytes: Option<f64>,
    pub memory_total_bytes: Option<f64>,
    pub disk_bytes_per_sec: Option<f64>,
    pub network_bytes_per_sec: Option<f64>,
}

/// Counter totals read from one scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Totals {
    cpu_idle: f64,
    cpu_all: f64,
    disk: f64,
    network: f64,
    mem_available: Option<f64>,
    mem_total: Option<f64>,
}

pub(super) struct Exporters {
    urls: Vec<Option<String>>,
    prev: Vec<Option<Totals>>,
}

impl Exporters {
    pub(super) fn new(nodes: &[NodeConfig]) -> Self {
        Self {
            urls: nodes.iter().map(|n| n.exporter.clone()).collect(),
            prev: vec![None; nodes.len()],
        }
    }

    pub(super) async fn sample(&mut self, n: usize, secs: f64) -> Option<HostSample> {
        let url = self.urls.get(n)?.as_ref()?;
        let body = match get_text(url).await {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(node = n, error = %e, "node_exporter scrape failed");
                return None;
            }
        };
        let now = parse(&body);
        let out = rates(self.prev[n], now, secs);
        self.prev[n] = Some(now);
        Some(out)
    }
}

/// One plain-http GET (the scrape is small; a blocking thread is fine).
async fn get_text(url: &str) -> Result<String, String> {
    let target = crate::admin_client::Admin::parse(url)?;
    let r = tokio::task::spawn_blocking(move || target.call("GET", "", None))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    if r.status != 200 {
        return Err(format!("{url}: status {}", r.status));
    }
    String::from_utf8(r.body).map_err(|e| e.to_string())
}

fn rates(prev: Option<Totals>, now: Totals, secs: f64) -> HostSample {
    let mut out = HostSample {
        memory_available_bytes: now.mem_available,
        memory_total_bytes: now.mem_total,
        ..Default::default()
    };
    if let Some(p) = prev {
        let all = now.cpu_all - p.cpu_all;
        if all > 0.0 {
            out.cpu_busy = Some((1.0 - (now.cpu_idle - p.cpu_idle) / all).clamp(0.0, 1.0));
        }
        out.disk_bytes_per_sec = Some((now.disk - p.disk).max(0.0) / secs.max(1e-3));
        out.network_bytes_per_sec = Some((now.network - p.network).max(0.0) / secs.max(1e-3));
    }
    out
}

/// Sums the node_exporter series the monitor needs from the text format.
fn parse(body: &str) -> Totals {
    let mut t = Totals::default();
    for line in body.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        match name {
            "node_cpu_seconds_total" => {
                t.cpu_all += v;
                if labels.contains("mode=\"idle\"") || labels.contains("mode=\"iowait\"") {
                    t.cpu_idle += v;
                }
            }
            "node_disk_read_bytes_total" | "node_disk_written_bytes_total" => t.disk += v,
            "node_network_receive_bytes_total" | "node_network_transmit_bytes_total"
                if !labels.contains("device=\"lo\"") =>
            {
                t.network += v
            }
            "node_memory_MemAvailable_bytes" => t.mem_available = Some(v),
            "node_memory_MemTotal_bytes" => t.mem_total = Some(v),
            _ => {}
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.
# TYPE node_cpu_seconds_total counter
node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} 100
node_cpu_seconds_total{cpu=\"0\",mode=\"user\"} 50
node_cpu_seconds_total{cpu=\"1\",mode=\"idle\"} 100
node_cpu_seconds_total{cpu=\"1\",mode=\"iowait\"} 10
node_memory_MemAvailable_bytes 4e+09
node_memory_MemTotal_bytes 8e+09
node_disk_read_bytes_total{device=\"sda\"} 1000
node_disk_written_bytes_total{device=\"sda\"} 3000
node_network_receive_bytes_total{device=\"eth0\"} 500
node_network_receive_bytes_total{device=\"lo\"} 99999
node_network_transmit_bytes_total{device=\"eth0\"} 500
";

    #[test]
    fn a_scrape_becomes_rates() {
        let a = parse(SCRAPE);
        assert_eq!(a.cpu_all, 260.0);
        assert_eq!(a.cpu_idle, 210.0);
        assert_eq!(a.mem_available, Some(4e9));
        let first = rates(None, a, 5.0);
        assert!(first.cpu_busy.is_none());
        let mut b = a;
        b.cpu_all += 20.0;
        b.cpu_idle += 5.0;
        b.disk += 10_000.0;
        b.network += 1_000.0;
        let r = rates(Some(a), b, 10.0);
        assert_eq!(r.cpu_busy, Some(0.75));
        assert_eq!(r.disk_bytes_per_sec, Some(1000.0));
        assert_eq!(r.network_bytes_per_sec, Some(100.0));
    }
}
