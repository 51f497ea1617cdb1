//! Forecaster scale: 100,000 partitions, one model update + forecast each per
//! bucket (reads and writes would be two such series). Prints CPU time per
//! bucket, and the time to replay one day at 5-minute buckets — what the
//! simulator will do with the same code.
//!
//! Run: `cargo bench --bench forecast_scale`

use std::time::Instant;

use shardcast::analyzer::forecast::{ForecastConfig, Model};

fn cpu_seconds() -> f64 {
    // getrusage(RUSAGE_SELF) via /proc: user + system ticks.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn rate(p: usize, t: u64) -> f64 {
    // A daily wave with a per-partition phase and level, plus deterministic noise.
    let phase = (p % 97) as f64 / 97.0;
    let day = (t % 288) as f64 / 288.0;
    let noise = ((p as u64).wrapping_mul(2654435761) ^ t.wrapping_mul(40503)) % 17;
    (10.0 + (p % 50) as f64) * (1.5 + ((day + phase) * std::f64::consts::TAU).sin()) + noise as f64
}

fn main() {
    let partitions = std::env::var("PARTITIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000usize);
    // The proxy's default: 1-minute buckets, 15-minute horizon.
    let model = Model::new(ForecastConfig {
        bucket_secs: 60,
        horizon: 15,
        quantile: 0.9,
    });
    let mut states: Vec<_> = (0..partitions).map(|_| model.new_state()).collect();
    let warm = 1440 + 60; // a day and an hour, so every model is scoring
    for t in 0..warm {
        for (p, s) in states.iter_mut().enumerate() {
            model.observe(s, t, rate(p, t));
        }
    }
    let buckets = 20;
    let (c0, w0) = (cpu_seconds(), Instant::now());
    let mut checksum = 0.0;
    for t in warm..warm + buckets {
        for (p, s) in states.iter_mut().enumerate() {
            checksum += model.observe(s, t, rate(p, t)).predicted;
        }
    }
    let cpu = (cpu_seconds() - c0) / buckets as f64;
    let wall = w0.elapsed().as_secs_f64() / buckets as f64;
    println!("{partitions} partitions, 1-min buckets, 15-min horizon: {cpu:.3} s CPU per bucket ({wall:.3} s wall), target < 1 s => {:.2}x of budget", cpu / 1.0);

    // A simulated day at 5-minute buckets, fresh state.
    let model = Model::new(ForecastConfig {
        bucket_secs: 300,
        horizon: 6,
        quantile: 0.9,
    });
    let mut states: Vec<_> = (0..partitions).map(|_| model.new_state()).collect();
    let w0 = Instant::now();
    for t in 0..288 {
        for (p, s) in states.iter_mut().enumerate() {
            checksum += model.observe(s, t, rate(p, t)).predicted;
        }
    }
    let day = w0.elapsed().as_secs_f64();
    println!(
        "replaying one day of {partitions} partitions at 5-min buckets: {day:.1} s (target < 60 s)"
    );
    println!("(checksum {checksum:.0})");
}
