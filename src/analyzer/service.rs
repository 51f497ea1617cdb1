//! The forecaster as a proxy component: once per bucket it reads each
//! partition's request counts from the recorder, feeds the read and write
//! rates to that partition's models, and publishes a snapshot that
//! `/api/forecast`, the metrics and (next) the planner read without locks.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::Serialize;

use super::forecast::{Forecast, ForecastConfig, Model, State};
use super::recorder::Recorder;
use crate::ring::{PartitionId, RoutingTable};

/// One partition's forecast, as published.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionForecast {
    pub id: PartitionId,
    pub node: String,
    /// Requests per second in the last bucket.
    pub current_rate: f64,
    /// Predicted requests per second at the horizon.
    pub predicted_rate: f64,
    /// Upper bound at the configured quantile.
    pub upper_rate: f64,
    pub reads: Forecast,
    pub writes: Forecast,
    /// The model chosen for the larger of the two series.
    pub model: &'static str,
    pub backtest_mase: f64,
    /// Requests per second forecast for each bucket up to the horizon.
    pub path: Vec<f32>,
}

/// The published forecasts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    pub bucket_secs: u64,
    pub horizon_secs: u64,
    pub quantile: f64,
    /// Buckets observed so far.
    pub buckets: u64,
    pub partitions: Vec<PartitionForecast>,
}

struct Series {
    reads: State,
    writes: State,
    last_reads: u64,
    last_writes: u64,
}

pub struct Forecaster {
    model: Model,
    series: Mutex<HashMap<PartitionId, Series>>,
    buckets: Mutex<u64>,
    published: ArcSwap<Snapshot>,
}

impl Forecaster {
    /// `history_secs`: how far back the per-partition model choice looks.
    pub fn new(bucket_secs: u64, horizon_secs: u64, quantile: f64, history_secs: u64) -> Self {
        let horizon = (horizon_secs / bucket_secs.max(1)).max(1) as usize;
        let model = Model::new(ForecastConfig {
            bucket_secs: bucket_secs.max(1),
            horizon,
            quantile,
        })
        .with_history(history_secs);
        Self {
            model,
            series: Mutex::new(HashMap::new()),
            buckets: Mutex::new(0),
            published: ArcSwap::from_pointee(Snapshot {
                bucket_secs,
                horizon_secs,
                quantile,
                ..Default::default()
            }),
        }
    }

    pub fn bucket_secs(&self) -> u64 {
        self.model.config().bucket_secs
    }

    /// The latest forecasts (lock-free).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.published.load_full()
    }

    /// Closes bucket number `bucket` (unix seconds / bucket width): reads
    /// the recorder's running totals, turns the increase since the last
    /// bucket into rates and updates every partition's models.
    pub fn tick(&self, bucket: u64, recorder: &Recorder, table: &RoutingTable) {
        let secs = self.bucket_secs() as f64;
        let totals: HashMap<PartitionId, _> = recorder.totals().into_iter().collect();
        let mut series = self.series.lock();
        let mut out = Vec::with_capacity(table.partitions().len());
        for p in table.partitions() {
            let Some(t) = totals.get(&p.id) else { continue };
            let s = series.entry(p.id).or_insert_with(|| Series {
                reads: self.model.new_state(),
                writes: self.model.new_state(),
                last_reads: t.reads,
                last_writes: t.writes,
            });
            let r = t.reads.saturating_sub(s.last_reads) as f64 / secs;
            let w = t.writes.saturating_sub(s.last_writes) as f64 / secs;
            s.last_reads = t.reads;
            s.last_writes = t.writes;
            let reads = self.model.observe(&mut s.reads, bucket, r);
            let writes = self.model.observe(&mut s.writes, bucket, w);
            let mut path = Vec::new();
            let mut w_path = Vec::new();
            self.model.path(&s.reads, bucket, &mut path);
            self.model.path(&s.writes, bucket, &mut w_path);
            for (a, b) in path.iter_mut().zip(&w_path) {
                *a += b;
            }
            let main = if reads.predicted >= writes.predicted {
                &reads
            } else {
                &writes
            };
            out.push(PartitionForecast {
                id: p.id,
                node: table.nodes()[p.node].clone(),
                current_rate: r + w,
                predicted_rate: reads.predicted + writes.predicted,
                upper_rate: reads.upper + writes.upper,
                model: main.model,
                backtest_mase: main.backtest_mase,
                path,
                reads,
                writes,
            });
        }
        let mut n = self.buckets.lock();
        *n += 1;
        let prev = self.published.load();
        self.published.store(Arc::new(Snapshot {
            bucket_secs: prev.bucket_secs,
            horizon_secs: prev.horizon_secs,
            quantile: prev.quantile,
            buckets: *n,
            partitions: out,
        }));
    }
}
