//! The forecaster: per partition, the request rate `horizon` buckets ahead,
//! with an upper bound the planner can trust.
//!
//! Every partition runs a handful of cheap online models side by side and
//! keeps scoring them on its own past: each forecast is remembered until its
//! target bucket arrives, then its error updates that model's exponentially
//! weighted error. The forecast handed out is the best-scoring model's — a
//! rolling-origin backtest that never stops and never looks ahead. The upper
//! bound is the point forecast plus an online quantile of the chosen
//! forecasts' own errors, so its coverage tracks the configured quantile.
//! Each update is O(models + neighbours) with a fixed-size state, so 100,000
//! partitions update in well under a second.

/// Slots in the daily profile, whatever the bucket width (5 minutes each).
pub const DAY_SLOTS: usize = 288;

/// The candidate models, in the order of `State::forecasts`.
pub const MODELS: &[&str] = &[
    "last_value",
    "seasonal_naive",
    "ses_fast",
    "ses_slow",
    "median",
    "level_plus_daily",
    "smooth_plus_daily",
    "damped_trend",
    "hourly_naive",
];
const M: usize = 9;
const LAST: usize = 0;
const SNAIVE: usize = 1;
const HNAIVE: usize = 8;
/// Trend damping per step (Gardner & McKenzie's damped trend).
const PHI: f64 = 0.98;
/// Recent values kept for the median and spike clipping.
const RECENT: usize = 7;

/// Forecaster settings.
#[derive(Debug, Clone)]
pub struct ForecastConfig {
    /// Seconds per bucket (one observation).
    pub bucket_secs: u64,
    /// Buckets ahead to forecast.
    pub horizon: usize,
    /// Quantile of the upper bound, e.g. 0.9.
    pub quantile: f64,
}

impl ForecastConfig {
    fn buckets_per_day(&self) -> usize {
        (86_400 / self.bucket_secs.max(1)).max(1) as usize
    }

    fn buckets_per_hour(&self) -> usize {
        (3_600 / self.bucket_secs.max(1)).max(1) as usize
    }
}

/// What the forecaster says about one series now.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Forecast {
    /// The last observed rate.
    pub current: f64,
    /// Predicted rate at the horizon.
    pub predicted: f64,
    /// Upper bound at the configured quantile.
    pub upper: f64,
    /// The model chosen by the running backtest.
    pub model: &'static str,
    /// The chosen model's running error, scaled by the mean absolute
    /// one-step change (a MASE; NaN while there is too little history).
    pub backtest_mase: f64,
}

/// One series' online state: fixed size, no allocation after creation.
#[derive(Debug, Clone)]
pub struct State {
    n: u64,
    recent: [f64; RECENT],
    /// Exponentially smoothed levels on spike-clipped input.
    ses_fast: f64,
    ses_slow: f64,
    /// Holt's level and trend (damped), on spike-clipped input.
    holt_level: f64,
    holt_trend: f64,
    /// Daily profile: smoothed value per slot of the day, and whether seen.
    profile: Box<[f32; DAY_SLOTS]>,
    seen: Box<[bool; DAY_SLOTS]>,
    /// Values one day back, for seasonal naive (ring of buckets_per_day).
    day: Vec<f32>,
    /// Values one hour back, for hourly naive (ring of buckets_per_hour):
    /// recurring cron and batch spikes.
    hour: Vec<f32>,
    /// Forecasts made in the last `horizon` steps, per model, plus the chosen one.
    pending: Vec<[f32; M + 1]>,
    /// Exponentially weighted mean absolute error per model at the horizon.
    err: [f64; M],
    scored: u64,
    /// Online quantile of the chosen forecast's signed error (actual − forecast).
    q_err: f64,
    /// Mean absolute one-step change, the MASE scale.
    step_mad: f64,
    /// Mean absolute deviation of values from the clipped level, for clipping.
    spread: f64,
}

/// The per-step state update and forecast, shared by the proxy and `forecast-eval`.
#[derive(Debug, Clone)]
pub struct Model {
    cfg: ForecastConfig,
    per_day: usize,
    per_hour: usize,
    /// Error memory of the running backtest: ~2 days of steps by default.
    err_decay: f64,
}

/// The fewest steps the backtest's error average spans.
const MIN_ERROR_MEMORY: f64 = 50.0;

impl Model {
    pub fn new(cfg: ForecastConfig) -> Self {
        let per_day = cfg.buckets_per_day();
        let per_hour = cfg.buckets_per_hour();
        let err_decay = 1.0 - 1.0 / (2.0 * per_day as f64).max(MIN_ERROR_MEMORY);
        Self {
            cfg,
            per_day,
            per_hour,
            err_decay,
        }
    }

    /// Sets how far back the running backtest looks when it picks a model
    /// (the mean age of the errors it weighs), in seconds.
    pub fn with_history(mut self, secs: u64) -> Self {
        let steps = secs as f64 / self.cfg.bucket_secs.max(1) as f64;
        self.err_decay = 1.0 - 1.0 / steps.max(MIN_ERROR_MEMORY);
        self
    }

    pub fn config(&self) -> &ForecastConfig {
        &self.cfg
    }

    pub fn new_state(&self) -> State {
        State {
            n: 0,
            recent: [0.0; RECENT],
            ses_fast: 0.0,
            ses_slow: 0.0,
            holt_level: 0.0,
            holt_trend: 0.0,
            profile: Box::new([0.0; DAY_SLOTS]),
            seen: Box::new([false; DAY_SLOTS]),
            day: vec![0.0; self.per_day],
            hour: vec![0.0; self.per_hour],
            pending: vec![[0.0; M + 1]; self.cfg.horizon.max(1)],
            err: [0.0; M],
            scored: 0,
            q_err: 0.0,
            step_mad: 0.0,
            spread: 0.0,
        }
    }

    /// The daily-profile slot of bucket `t` (buckets since the epoch, UTC).
    fn slot(&self, t: u64) -> usize {
        let secs = (t * self.cfg.bucket_secs) % 86_400;
        (secs as usize * DAY_SLOTS) / 86_400
    }

    /// The profile at a slot, averaged with its neighbours (less noise).
    fn profile_at(&self, s: &State, slot: usize) -> Option<f64> {
        let mut sum = 0.0;
        let mut n = 0.0;
        for d in [DAY_SLOTS - 1, 0, 1] {
            let k = (slot + d) % DAY_SLOTS;
            if s.seen[k] {
                sum += s.profile[k] as f64;
                n += 1.0;
            }
        }
        (n > 0.0).then(|| sum / n)
    }

    /// Feeds the value of bucket `t` (buckets since the epoch); returns the
    /// forecast for bucket `t + horizon`.
    pub fn observe(&self, s: &mut State, t: u64, y: f64) -> Forecast {
        let h = self.cfg.horizon.max(1);
        let y = if y.is_finite() { y.max(0.0) } else { 0.0 };
        // Score the forecasts made `h` steps ago, now that their target is here.
        let slot_pending = (t as usize) % h;
        if s.n >= h as u64 {
            let f = s.pending[slot_pending];
            for (m, e) in s.err.iter_mut().enumerate() {
                let abs = (y - f[m] as f64).abs();
                *e = if s.scored == 0 {
                    abs
                } else {
                    self.err_decay * *e + (1.0 - self.err_decay) * abs
                };
            }
            // Stochastic-approximation quantile of the chosen forecast's error.
            let signed = y - f[M] as f64;
            let scale = (s.err.iter().cloned().fold(f64::INFINITY, f64::min))
                .max(s.step_mad)
                .max(1e-9);
            let tau = self.cfg.quantile;
            let step = 0.05 * scale;
            s.q_err += if signed > s.q_err {
                step * tau
            } else {
                -step * (1.0 - tau)
            };
            s.scored += 1;
        }
        // Clip spikes before they reach the smoothed levels and statistics
        // (the last value itself stays as observed).
        let clip = if s.n > RECENT as u64 {
            s.ses_slow + 6.0 * s.spread.max(s.step_mad)
        } else {
            f64::INFINITY
        };
        let yc = y.min(clip);
        let prev = s.recent[(s.n as usize + RECENT - 1) % RECENT];
        if s.n > 0 {
            let d = (yc - prev.min(clip)).abs();
            s.step_mad = if s.n == 1 {
                d
            } else {
                0.99 * s.step_mad + 0.01 * d
            };
        }
        if s.n == 0 {
            s.ses_fast = y;
            s.ses_slow = y;
            s.holt_level = y;
        } else {
            let prev_level = s.holt_level;
            s.holt_level = 0.5 * yc + 0.5 * (s.holt_level + PHI * s.holt_trend);
            s.holt_trend = 0.1 * (s.holt_level - prev_level) + 0.9 * PHI * s.holt_trend;
            s.spread = 0.98 * s.spread + 0.02 * (yc - s.ses_slow).abs();
            s.ses_fast += 0.5 * (yc - s.ses_fast);
            s.ses_slow += 0.15 * (yc - s.ses_slow);
        }
        s.recent[s.n as usize % RECENT] = y as f32 as f64;
        s.day[(t as usize) % self.per_day] = y as f32;
        s.hour[(t as usize) % self.per_hour] = y as f32;
        let slot = self.slot(t);
        if s.seen[slot] {
            s.profile[slot] += (0.25 * (yc - s.profile[slot] as f64)) as f32;
        } else {
            s.profile[slot] = yc as f32;
            s.seen[slot] = true;
        }
        s.n += 1;

        // Forecasts for t + h.
        let mut f = [0.0f64; M];
        f[LAST] = y;
        let have_day = s.n >= self.per_day as u64;
        f[SNAIVE] = if have_day && h <= self.per_day {
            s.day[((t + h as u64) as usize) % self.per_day] as f64
        } else {
            y
        };
        // The same minute of the last hour that has it (y itself when the
        // horizon is a whole number of hours).
        f[HNAIVE] = if s.n >= self.per_hour as u64 {
            s.hour[((t + h as u64) as usize) % self.per_hour] as f64
        } else {
            y
        };
        f[2] = s.ses_fast;
        f[3] = s.ses_slow;
        let k = (s.n as usize).min(RECENT);
        let mut r = [0.0f64; RECENT];
        r[..k].copy_from_slice(&s.recent[..k]);
        r[..k].sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        let median = r[k / 2];
        f[4] = median;
        let delta = match (
            self.profile_at(s, slot),
            self.profile_at(s, self.slot(t + h as u64)),
        ) {
            (Some(now), Some(then)) if have_day => then - now,
            _ => 0.0,
        };
        f[5] = (median + delta).max(0.0);
        f[6] = (s.ses_fast + delta).max(0.0);
        // Damped trend: the trend's contribution fades over the horizon.
        let damp: f64 = (1..=h).map(|i| PHI.powi(i as i32)).sum();
        f[7] = (s.holt_level + damp * s.holt_trend).max(0.0);

        // The best model so far (last value until there is evidence).
        let best = if s.scored < (h as u64).max(12) {
            LAST
        } else {
            (0..M)
                .min_by(|a, b| {
                    s.err[*a]
                        .partial_cmp(&s.err[*b])
                        .unwrap_or(std::cmp::Ordering::Equal)
                })
                .unwrap_or(LAST)
        };
        let predicted = f[best].max(0.0);
        let mut p = [0.0f32; M + 1];
        for m in 0..M {
            p[m] = f[m] as f32;
        }
        p[M] = predicted as f32;
        s.pending[slot_pending] = p;
        let upper = if s.scored >= 12 {
            predicted + s.q_err.max(0.0)
        } else {
            predicted + 2.0 * s.step_mad.max(predicted * 0.1)
        };
        Forecast {
            current: y,
            predicted,
            upper,
            model: MODELS[best],
            backtest_mase: if s.scored > 0 && s.step_mad > 0.0 {
                s.err[best] / s.step_mad
            } else {
                f64::NAN
            },
        }
    }
}

impl Model {
    /// Every candidate's forecast made at bucket `t` (after `observe(t)`).
    pub fn candidates(&self, s: &State, t: u64) -> [f64; M] {
        let p = s.pending[(t as usize) % self.cfg.horizon.max(1)];
        let mut out = [0.0; M];
        for (o, v) in out.iter_mut().zip(p.iter()) {
            *o = *v as f64;
        }
        out
    }
}

impl Model {
    /// The forecasts still waiting for their target, after `observe(t)`:
    /// for t + 1, t + 2, …, t + horizon, each made `horizon` steps before
    /// its target (the one for t + horizon just now). A rolling view of the
    /// whole horizon, so a peak forecast a few steps ago is not forgotten
    /// because the newest forecast looks past it. Fewer while the series is
    /// younger than the horizon.
    pub fn path(&self, s: &State, t: u64, out: &mut Vec<f32>) {
        out.clear();
        let h = self.cfg.horizon.max(1) as u64;
        let known = s.n.min(h);
        for k in (h - known + 1)..=h {
            out.push(s.pending[((t + k) % h) as usize][M].max(0.0));
        }
    }
}

/// Carries a series' state over a partition split: each child gets the
/// parent's shape, scaled to its share of the load.
pub fn split_state(s: &State, fraction: f64) -> (State, State) {
    let scale = |st: &State, f: f64| {
        let mut c = st.clone();
        let f32f = f as f32;
        for v in c.recent.iter_mut() {
            *v *= f;
        }
        c.ses_fast *= f;
        c.ses_slow *= f;
        c.holt_level *= f;
        c.holt_trend *= f;
        for v in c.profile.iter_mut() {
            *v *= f32f;
        }
        for v in c.day.iter_mut().chain(c.hour.iter_mut()) {
            *v *= f32f;
        }
        for p in c.pending.iter_mut() {
            for v in p.iter_mut() {
                *v *= f32f;
            }
        }
        for e in c.err.iter_mut() {
            *e *= f;
        }
        c.q_err *= f;
        c.step_mad *= f;
        c.spread *= f;
        c
    };
    (scale(s, fraction), scale(s, 1.0 - fraction))
}

/// A merged partition's state: the sum of both (errors add conservatively).
pub fn merge_states(a: &State, b: &State) -> State {
    let mut c = a.clone();
    for (x, y) in c.recent.iter_mut().zip(b.recent.iter()) {
        *x += y;
    }
    c.ses_fast += b.ses_fast;
    c.ses_slow += b.ses_slow;
    c.holt_level += b.holt_level;
    c.holt_trend += b.holt_trend;
    for k in 0..DAY_SLOTS {
        c.profile[k] += b.profile[k];
        c.seen[k] |= b.seen[k];
    }
    for (x, y) in c.day.iter_mut().zip(b.day.iter()) {
        *x += y;
    }
    for (x, y) in c.hour.iter_mut().zip(b.hour.iter()) {
        *x += y;
    }
    for (p, q) in c.pending.iter_mut().zip(b.pending.iter()) {
        for (x, y) in p.iter_mut().zip(q.iter()) {
            *x += y;
        }
    }
    for (x, y) in c.err.iter_mut().zip(b.err.iter()) {
        *x += y;
    }
    c.q_err += b.q_err;
    c.step_mad += b.step_mad;
    c.spread += b.spread;
    c.n = a.n.min(b.n);
    c.scored = a.scored.min(b.scored);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a series through the model at `horizon`; returns the mean
    /// absolute error of the forecasts and of last value over `score` (a range of origins).
    fn run(
        series: &[f64],
        horizon: usize,
        score: std::ops::Range<usize>,
    ) -> (f64, f64, Vec<Forecast>) {
        let m = Model::new(ForecastConfig {
            bucket_secs: 300,
            horizon,
            quantile: 0.9,
        });
        let mut s = m.new_state();
        let (mut e, mut lv, mut n) = (0.0, 0.0, 0.0);
        let mut out = Vec::new();
        for (t, y) in series.iter().enumerate() {
            let f = m.observe(&mut s, t as u64, *y);
            if score.contains(&t) && t + horizon < series.len() {
                e += (series[t + horizon] - f.predicted).abs();
                lv += (series[t + horizon] - y).abs();
                n += 1.0;
            }
            out.push(f);
        }
        (e / n, lv / n, out)
    }

    #[test]
    fn daily_seasonality_is_learned() {
        let day = 288;
        let y: Vec<f64> = (0..day * 6)
            .map(|t| 100.0 + 80.0 * (2.0 * std::f64::consts::PI * t as f64 / day as f64).sin())
            .collect();
        let (e, lv, out) = run(&y, 24, day * 4..day * 6);
        assert!(e < 0.2 * lv, "seasonal error {e} vs last value {lv}");
        assert!(
            out.last().unwrap().model.contains("daily")
                || out.last().unwrap().model == "seasonal_naive"
        );
    }

    #[test]
    fn a_ramp_is_extrapolated() {
        let y: Vec<f64> = (0..2000).map(|t| 10.0 + 0.5 * t as f64).collect();
        let (e, lv, out) = run(&y, 12, 1000..2000);
        assert!(e < 0.5 * lv, "ramp error {e} vs last value {lv}");
        assert_eq!(out.last().unwrap().model, "damped_trend");
    }

    #[test]
    fn a_level_shift_is_followed_quickly() {
        let y: Vec<f64> = (0..1200)
            .map(|t| if t < 800 { 50.0 } else { 200.0 })
            .collect();
        let (_, _, out) = run(&y, 6, 0..0);
        // Ten steps after the shift the forecast is at the new level.
        assert!((out[810].predicted - 200.0).abs() < 20.0, "{:?}", out[810]);
    }

    #[test]
    fn a_spike_does_not_stick() {
        let mut y: Vec<f64> = (0..1500).map(|t| 100.0 + (t % 7) as f64).collect();
        y[1000] = 100_000.0;
        let (_, _, out) = run(&y, 6, 0..0);
        assert!(
            out[1003].predicted < 200.0,
            "after a one-step spike: {:?}",
            out[1003]
        );
        assert!(out[1200].predicted < 120.0);
    }

    #[test]
    fn the_upper_bound_covers_about_its_quantile() {
        // Noisy series: the share of actuals under the bound should be near 0.9.
        let mut x: u64 = 42;
        let y: Vec<f64> = (0..5000)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                100.0 + ((x >> 33) % 50) as f64
            })
            .collect();
        let (_, _, out) = run(&y, 6, 0..0);
        let covered = (2000..4990).filter(|t| y[t + 6] <= out[*t].upper).count() as f64 / 2990.0;
        assert!((0.85..=0.95).contains(&covered), "coverage {covered}");
    }

    #[test]
    fn short_or_flat_history_falls_back_safely() {
        let (_, _, out) = run(&[5.0; 30], 6, 0..0);
        assert_eq!(out[29].predicted, 5.0);
        assert!(out[29].upper >= 5.0);
        let (_, _, out) = run(&[0.0; 10], 6, 0..0);
        assert_eq!(out[9].predicted, 0.0);
        assert!(out[9].upper.is_finite());
    }

    #[test]
    fn the_path_holds_the_forecasts_for_the_coming_horizon() {
        let m = Model::new(ForecastConfig {
            bucket_secs: 300,
            horizon: 4,
            quantile: 0.9,
        });
        let mut s = m.new_state();
        let mut path = Vec::new();
        m.observe(&mut s, 0, 10.0);
        m.path(&s, 0, &mut path);
        assert_eq!(path, vec![10.0], "one forecast made so far");
        let mut made = Vec::new();
        for t in 1..20u64 {
            made.push(m.observe(&mut s, t, 10.0 + t as f64).predicted as f32);
        }
        m.path(&s, 19, &mut path);
        // Targets 20..=23 were forecast at 16..=19.
        assert_eq!(path, made[15..19].to_vec());
    }

    #[test]
    fn split_states_sum_to_the_parent() {
        let m = Model::new(ForecastConfig {
            bucket_secs: 60,
            horizon: 5,
            quantile: 0.9,
        });
        let mut s = m.new_state();
        for t in 0..500 {
            m.observe(&mut s, t, 40.0 + (t % 10) as f64);
        }
        let (a, b) = split_state(&s, 0.25);
        let merged = merge_states(&a, &b);
        assert!((merged.ses_slow - s.ses_slow).abs() < 1e-6);
        assert!((a.ses_slow - 0.25 * s.ses_slow).abs() < 1e-6);
    }
}
