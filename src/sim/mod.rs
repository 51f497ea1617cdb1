//! `shardcast simulate`: the planner at internet scale, on modelled load,
//! so predictive, reactive and oracle planning can be compared on the same
//! day of traffic.
//!
//! The simulator runs the proxy's own code: `planner::plan` for every
//! decision and the forecaster's `Model` fed one bucket at a time (never
//! the future, except for the `oracle` policy, which reads the true loads over
//! the horizon: a perfect forecast). What is modelled: the load (`workload`), migration
//! time and its extra load (`engine`), and latency: each node is an M/M/1
//! queue, so a request's time in the node is exponential with mean
//! `service / (1 − ρ)`, and the share of requests over an SLO of
//! `slo_factor` service times is `exp(−(1 − ρ) · slo_factor)` (all of them
//! once ρ ≥ 1, where the queue grows without bound).

mod engine;
mod rng;
mod workload;

use std::path::PathBuf;

use serde::Serialize;

use crate::planner::{Policy, Settings};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("--traces: {0}")]
    Traces(String),
    #[error("{0}")]
    Invalid(String),
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Options {
    pub traces: PathBuf,
    pub nodes: usize,
    pub partitions: usize,
    pub seed: u64,
    /// Simulated days measured.
    pub days: f64,
    /// Days run before measuring, so the forecasters have seen a daily cycle.
    pub warmup_days: f64,
    /// The cluster's mean load ÷ capacity.
    pub utilization: f64,
    /// The latency SLO in service times.
    pub slo_factor: f64,
    /// Mean bytes per partition (bigger partitions take longer to move).
    pub partition_bytes: f64,
    /// The planner's settings (policy included).
    pub settings: Settings,
}

impl Options {
    /// The simulator's defaults for a cluster of `nodes` and `partitions`.
    pub fn new(
        traces: PathBuf,
        nodes: usize,
        partitions: usize,
        policy: Policy,
        seed: u64,
        days: f64,
    ) -> Result<Self, SimError> {
        if nodes == 0 {
            return Err(SimError::Invalid("--nodes must be at least 1".into()));
        }
        if partitions == 0 {
            return Err(SimError::Invalid("--partitions must be at least 1".into()));
        }
        if !(days > 0.0 && days <= 365.0) {
            return Err(SimError::Invalid(format!(
                "--days must be in (0, 365], not {days}"
            )));
        }
        Ok(Self {
            traces,
            nodes,
            partitions,
            seed,
            days,
            warmup_days: 2.0,
            utilization: 0.6,
            slo_factor: 20.0,
            partition_bytes: 2e9,
            settings: Settings {
                policy,
                threshold: 0.8,
                horizon: 1800,
                interval: engine::STEP,
                // One migration per node at a time is the real limit.
                max_concurrent: nodes,
                copy_rate: 16.0 * 1024.0 * 1024.0,
                copy_load: 0.05,
                pause_secs: 0.1,
                min_benefit: 1.0,
                cooldown: 2 * 3600,
                window: 60,
                hysteresis: 0.1,
                merge_above: partitions,
                merge_load: 0.05,
            },
        })
    }
}

/// Migrations carried out, by kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Migrations {
    pub moves: u64,
    pub splits: u64,
    pub merges: u64,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub policy: Policy,
    pub seed: u64,
    pub nodes: usize,
    pub partitions: usize,
    pub partitions_end: usize,
    pub days: f64,
    pub utilization: f64,
    pub hot_spots: usize,
    /// Σ over buckets and nodes of the bucket's seconds when load > capacity.
    pub overload_node_seconds: f64,
    /// Requests served over the latency SLO.
    pub slo_violations: u64,
    pub requests: u64,
    /// Highest node utilization in any bucket.
    pub peak_utilization: f64,
    pub migrations: Migrations,
    pub bytes_moved: u64,
    pub wall_seconds: f64,
    #[serde(skip)]
    slo_sum: f64,
    #[serde(skip)]
    requests_sum: f64,
}

impl Report {
    fn new(o: &Options) -> Self {
        Self {
            policy: o.settings.policy,
            seed: o.seed,
            nodes: o.nodes,
            partitions: o.partitions,
            partitions_end: o.partitions,
            days: o.days,
            utilization: o.utilization,
            hot_spots: 0,
            overload_node_seconds: 0.0,
            slo_violations: 0,
            requests: 0,
            peak_utilization: 0.0,
            migrations: Migrations::default(),
            bytes_moved: 0,
            wall_seconds: 0.0,
            slo_sum: 0.0,
            requests_sum: 0.0,
        }
    }

    /// One node's bucket: `load` req/s plus a copy's `copy` on `capacity`
    /// for `secs`.
    fn account(&mut self, load: f64, copy: f64, capacity: f64, secs: f64, slo_factor: f64) {
        let rho = if capacity > 0.0 {
            (load + copy) / capacity
        } else {
            1.0
        };
        if rho > 1.0 {
            self.overload_node_seconds += secs;
        }
        let over = if rho >= 1.0 {
            1.0
        } else {
            (-(1.0 - rho) * slo_factor).exp()
        };
        self.requests_sum += load * secs;
        self.slo_sum += load * secs * over;
        self.requests = self.requests_sum as u64;
        self.slo_violations = self.slo_sum as u64;
        self.peak_utilization = self.peak_utilization.max(rho);
    }
}

/// Runs one simulation.
pub fn run(opts: &Options) -> Result<Report, SimError> {
    let shapes = workload::read_shapes(&opts.traces)?;
    let buckets = ((opts.warmup_days + opts.days) * 86_400.0 / engine::STEP as f64) as u64 + 64;
    let wl = workload::Workload::build(
        shapes,
        opts.partitions,
        opts.partition_bytes,
        buckets,
        opts.seed,
    );
    Ok(engine::simulate(opts, &wl))
}

/// The report as a person reads it.
pub fn render(r: &Report) -> String {
    format!(
        "policy {} · seed {} · {} nodes · {} partitions ({} at the end) · {} day(s) at mean utilization {:.2} · {} hot spots\n\
         overload node-seconds   {:.0}\n\
         requests over the SLO   {} of {} ({:.4}%)\n\
         peak node utilization   {:.2}\n\
         migrations              {} moves, {} splits, {} merges\n\
         bytes moved             {}\n\
         wall time               {:.1} s\n",
        r.policy.as_str(),
        r.seed,
        r.nodes,
        r.partitions,
        r.partitions_end,
        r.days,
        r.utilization,
        r.hot_spots,
        r.overload_node_seconds,
        r.slo_violations,
        r.requests,
        if r.requests > 0 {
            100.0 * r.slo_violations as f64 / r.requests as f64
        } else {
            0.0
        },
        r.peak_utilization,
        r.migrations.moves,
        r.migrations.splits,
        r.migrations.merges,
        crate::planner::human_bytes(r.bytes_moved),
        r.wall_seconds
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three synthetic 5-minute series of three days in a temp folder.
    fn traces() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (k, name) in ["daily", "hourly", "flat"].iter().enumerate() {
            let mut csv = String::from("timestamp,value\n");
            for i in 0..3 * 288 {
                let day = (i % 288) as f64 / 288.0 * std::f64::consts::TAU;
                let v = match k {
                    0 => 100.0 + 80.0 * day.sin(),
                    1 => 50.0 + if i % 12 == 0 { 200.0 } else { 0.0 },
                    _ => 70.0 + (i % 7) as f64,
                };
                let (h, m) = ((i / 12) % 24, (i % 12) * 5);
                csv.push_str(&format!(
                    "2026-01-{:02} {h:02}:{m:02}:00,{v}\n",
                    1 + i / 288
                ));
            }
            std::fs::write(dir.path().join(format!("{name}.csv")), csv).unwrap();
        }
        dir
    }

    fn run_with(dir: &std::path::Path, policy: Policy, seed: u64) -> Report {
        let mut o = Options::new(dir.to_path_buf(), 8, 400, policy, seed, 0.5).unwrap();
        o.warmup_days = 1.0;
        run(&o).unwrap()
    }

    #[test]
    fn the_same_seed_gives_the_same_figures() {
        let dir = traces();
        let a = run_with(dir.path(), Policy::Predictive, 3);
        let b = run_with(dir.path(), Policy::Predictive, 3);
        let c = run_with(dir.path(), Policy::Predictive, 4);
        let figures = |r: &Report| {
            (
                r.overload_node_seconds,
                r.slo_violations,
                r.requests,
                r.bytes_moved,
                r.migrations.moves,
                r.migrations.splits,
            )
        };
        assert_eq!(figures(&a), figures(&b));
        assert_ne!(figures(&a).2, figures(&c).2, "another seed, another load");
        assert!(a.requests > 0);
        // Off moves nothing; the load is the same whatever the policy.
        let off = run_with(dir.path(), Policy::Off, 3);
        assert_eq!(off.bytes_moved, 0);
        assert_eq!(off.requests, a.requests);
    }

    #[test]
    fn bad_input_is_refused_naming_the_flag_or_folder() {
        let dir = traces();
        let e = Options::new(dir.path().into(), 0, 10, Policy::Off, 1, 1.0).unwrap_err();
        assert!(e.to_string().contains("--nodes"), "{e}");
        let e = Options::new(dir.path().into(), 4, 0, Policy::Off, 1, 1.0).unwrap_err();
        assert!(e.to_string().contains("--partitions"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let o = Options::new(empty.path().into(), 4, 10, Policy::Off, 1, 1.0).unwrap();
        let e = run(&o).unwrap_err().to_string();
        assert!(
            e.contains("--traces") && e.contains(&empty.path().display().to_string()),
            "{e}"
        );
        // A series shorter than two days is not usable.
        std::fs::write(
            empty.path().join("short.csv"),
            "timestamp,value\n".to_string()
                + &(0..20)
                    .map(|i| format!("2026-01-01 00:{:02}:00,{i}\n", i))
                    .collect::<String>(),
        )
        .unwrap();
        let e = run(&o).unwrap_err().to_string();
        assert!(
            e.contains("no usable series") && e.contains("short.csv"),
            "{e}"
        );
    }
}
