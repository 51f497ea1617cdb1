//! The simulated load: every partition's request rate, built from the
//! seed out of real 5-minute series, identical whatever the policy does.
//!
//! A partition holds many keys, so each original partition's shape is a
//! blend of three of the traces with random weights (each trace normalised
//! to a mean of 1 and clipped at 10× its mean: one source's thousandfold
//! anomaly is not a partition's load), each from its own random whole day,
//! all shifted by one of three regions' time of day (half the partitions in
//! the first region, 30% eight hours later, 20% sixteen) plus up to an hour
//! of jitter; and a heavy-tailed scale (lognormal,
//! σ = 1: the hottest of 100,000 partitions carries ~70× the median). On
//! top come hot spots: at random times a partition's load climbs to 2–12×
//! over 10–60 minutes, stays 1–4 hours and falls back over 30 minutes; the
//! spots land on other partitions each time (they shift).
//!
//! Load is a function of (original partition, bucket), so splits and
//! merges, which only regroup fractions of originals, never change the
//! total load the cluster sees.

use std::path::Path;

use super::rng::Rng;
use super::SimError;
use crate::analyzer::eval;

/// Buckets per day at the traces' 5-minute step.
pub const PER_DAY: u64 = 288;
/// Regions: share of partitions and time-of-day shift in buckets.
const REGIONS: [(f64, u64); 3] = [(0.5, 0), (0.3, 96), (0.2, 192)];
/// Hot spots started per original partition per day, on average.
const HOT_PER_DAY: f64 = 0.02;

/// One normalised trace.
pub struct Shape {
    values: Vec<f32>,
}

/// Traces blended into one partition's shape.
const BLEND: usize = 3;

#[derive(Clone, Copy)]
struct Origin {
    /// (trace, offset into it, weight); weights sum to 1.
    blend: [(u32, u64, f32); BLEND],
    scale: f32,
}

#[derive(Clone, Copy)]
struct HotSpot {
    start: u64,
    ramp: u64,
    hold: u64,
    down: u64,
    mult: f64,
}

impl HotSpot {
    fn factor(&self, t: u64) -> f64 {
        if t < self.start {
            return 1.0;
        }
        let d = t - self.start;
        let peak = self.mult - 1.0;
        if d < self.ramp {
            1.0 + peak * (d + 1) as f64 / self.ramp as f64
        } else if d < self.ramp + self.hold {
            self.mult
        } else if d < self.ramp + self.hold + self.down {
            let k = d - self.ramp - self.hold;
            1.0 + peak * (1.0 - (k + 1) as f64 / self.down as f64)
        } else {
            1.0
        }
    }

    fn end(&self) -> u64 {
        self.start + self.ramp + self.hold + self.down
    }
}

/// Every original partition's load over the whole run.
pub struct Workload {
    pub shapes: Vec<Shape>,
    origins: Vec<Origin>,
    hot: Vec<Vec<HotSpot>>,
    bytes: Vec<u64>,
}

/// Reads every usable series (at least two days long, positive mean) in `dir`.
pub fn read_shapes(dir: &Path) -> Result<Vec<Shape>, SimError> {
    let files = eval::find_traces(dir).map_err(|e| SimError::Traces(e.to_string()))?;
    let mut shapes = Vec::new();
    let mut skipped = Vec::new();
    for f in &files {
        let s = match eval::load(f) {
            Ok(s) => s,
            Err(e) => {
                skipped.push(e.to_string());
                continue;
            }
        };
        let mean = s.values.iter().sum::<f64>() / s.values.len() as f64;
        if s.values.len() < 2 * PER_DAY as usize
            || mean.is_nan()
            || mean <= 0.0
            || !mean.is_finite()
        {
            skipped.push(format!(
                "{}: {} points (need {}), mean {mean}",
                f.display(),
                s.values.len(),
                2 * PER_DAY
            ));
            continue;
        }
        let values = s
            .values
            .iter()
            .map(|v| (v.max(0.0) / mean).min(10.0) as f32)
            .collect();
        shapes.push(Shape { values });
    }
    if shapes.is_empty() {
        return Err(SimError::Traces(format!(
            "no usable series under {} (each needs `timestamp,value` lines covering at least 2 days){}",
            dir.display(),
            if skipped.is_empty() {
                String::new()
            } else {
                format!(": {}", skipped.join("; "))
            }
        )));
    }
    Ok(shapes)
}

impl Workload {
    /// Builds `partitions` originals for a run of `buckets` buckets.
    pub fn build(
        shapes: Vec<Shape>,
        partitions: usize,
        mean_bytes: f64,
        buckets: u64,
        seed: u64,
    ) -> Self {
        let mut rng = Rng::new(seed);
        let mut origins = Vec::with_capacity(partitions);
        let mut bytes = Vec::with_capacity(partitions);
        for _ in 0..partitions {
            let mut pick = rng.f64();
            let mut shift = 0;
            for (share, s) in REGIONS {
                if pick < share {
                    shift = s;
                    break;
                }
                pick -= share;
            }
            let jitter = rng.below(13);
            let mut blend = [(0u32, 0u64, 0f32); BLEND];
            let mut total = 0.0;
            for b in blend.iter_mut() {
                let shape = rng.below(shapes.len() as u64) as u32;
                let len = shapes[shape as usize].values.len() as u64;
                let day = rng.below((len / PER_DAY).max(1));
                let w = 0.1 + rng.f64() as f32;
                total += w;
                *b = (shape, day * PER_DAY + shift + jitter, w);
            }
            for b in blend.iter_mut() {
                b.2 /= total;
            }
            let scale = (rng.normal()).exp() as f32;
            // Bigger partitions tend to be hotter, loosely.
            let b = mean_bytes * (scale as f64).sqrt() * (0.5 * rng.normal() - 0.5).exp() / 1.2;
            origins.push(Origin { blend, scale });
            bytes.push(b.max(1e6) as u64);
        }
        // Hot spots: a Poisson number per day, each on a random original.
        let mut hot = vec![Vec::new(); partitions];
        let expected = HOT_PER_DAY * partitions as f64 * buckets as f64 / PER_DAY as f64;
        let count = rng.poisson(expected);
        for _ in 0..count {
            let p = rng.below(partitions as u64) as usize;
            let h = HotSpot {
                start: rng.below(buckets.max(1)),
                ramp: 2 + rng.below(11),
                hold: 12 + rng.below(37),
                down: 6,
                mult: 2.0 + 10.0 * rng.f64(),
            };
            hot[p].push(h);
        }
        for h in hot.iter_mut() {
            h.sort_by_key(|x| x.start);
        }
        Self {
            shapes,
            origins,
            hot,
            bytes,
        }
    }

    pub fn len(&self) -> usize {
        self.origins.len()
    }

    /// Mean load of an original over the trace (before hot spots).
    pub fn mean(&self, orig: usize) -> f64 {
        self.origins[orig].scale as f64
    }

    pub fn bytes(&self, orig: usize) -> u64 {
        self.bytes[orig]
    }

    /// Requests per second of original `orig` in bucket `t`.
    pub fn load(&self, orig: usize, t: u64) -> f64 {
        let o = &self.origins[orig];
        let mut base = 0.0;
        for &(shape, offset, w) in &o.blend {
            let v = &self.shapes[shape as usize].values;
            base += (w * v[((offset + t) % v.len() as u64) as usize]) as f64;
        }
        let base = base * o.scale as f64;
        let mut f: f64 = 1.0;
        for h in &self.hot[orig] {
            if h.start > t {
                break;
            }
            if h.end() > t {
                f = f.max(h.factor(t));
            }
        }
        base * f
    }

    /// Hot spots in the run (for the report).
    pub fn hot_spots(&self) -> usize {
        self.hot.iter().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hot_spot_ramps_holds_and_falls() {
        let h = HotSpot {
            start: 10,
            ramp: 4,
            hold: 3,
            down: 2,
            mult: 5.0,
        };
        assert_eq!(h.factor(9), 1.0);
        assert_eq!(h.factor(10), 2.0);
        assert_eq!(h.factor(13), 5.0);
        assert_eq!(h.factor(16), 5.0);
        assert_eq!(h.factor(17), 3.0);
        assert_eq!(h.factor(18), 1.0);
        assert_eq!(h.end(), 19);
    }
}
