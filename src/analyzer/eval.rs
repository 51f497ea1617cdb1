//! `shardcast forecast-eval`: the forecaster against real traces, each
//! series standing for one partition's request rate.
//!
//! Method (as in the shared notes): a regular 5-minute grid (duplicates
//! averaged, gaps and irregular samples linearly interpolated); the model
//! runs online over the whole series and is scored at origins every 3 steps
//! over the second half, on the point forecast at exactly t + horizon; MASE
//! is scaled by the mean absolute one-step change of the first half;
//! overall = mean of the per-series MASE. Baselines: last value and
//! seasonal naive (one day back).

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::forecast::{ForecastConfig, Model, MODELS};

const STEP: u64 = 300;

/// One series on the regular grid.
pub struct Series {
    pub name: String,
    /// Grid start, in 5-minute buckets since the epoch.
    pub start: u64,
    pub values: Vec<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: {message}")]
    Trace { path: String, message: String },
    #[error("no *.csv traces under {0}")]
    Empty(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Seconds since the epoch of `YYYY-MM-DD HH:MM:SS` (UTC).
fn parse_time(s: &str) -> Option<u64> {
    let (date, time) = s.trim().split_once([' ', 'T'])?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':').map(|x| x.parse::<f64>());
    let (hh, mm) = (t.next()?.ok()?, t.next()?.ok()?);
    let ss = t.next().and_then(|x| x.ok()).unwrap_or(0.0);
    // Days from the civil date (proleptic Gregorian).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + (hh * 3600.0 + mm * 60.0 + ss) as i64;
    u64::try_from(secs).ok()
}

/// Reads a `timestamp,value` CSV onto the regular 5-minute grid.
pub fn load(path: &Path) -> Result<Series, EvalError> {
    let err = |message: String| EvalError::Trace {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path)?;
    let mut points: Vec<(u64, f64)> = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let (ts, v) = line
            .split_once(',')
            .ok_or_else(|| err(format!("line {}: expected timestamp,value", i + 1)))?;
        let t =
            parse_time(ts).ok_or_else(|| err(format!("line {}: bad timestamp {ts:?}", i + 1)))?;
        let v: f64 = v
            .trim()
            .parse()
            .map_err(|_| err(format!("line {}: bad value {v:?}", i + 1)))?;
        points.push((t, v));
    }
    if points.len() < 10 {
        return Err(err("fewer than 10 points".into()));
    }
    points.sort_by_key(|p| p.0);
    // Merge duplicate timestamps (mean).
    let mut merged: Vec<(u64, f64, u32)> = Vec::with_capacity(points.len());
    for (t, v) in points {
        match merged.last_mut() {
            Some(last) if last.0 == t => {
                last.1 += v;
                last.2 += 1;
            }
            _ => merged.push((t, v, 1)),
        }
    }
    let pts: Vec<(u64, f64)> = merged
        .into_iter()
        .map(|(t, v, n)| (t, v / n as f64))
        .collect();
    // The grid starts at the first sample, so a regular series is kept as is.
    let first = pts[0].0;
    let steps = (pts[pts.len() - 1].0 - first) / STEP;
    let mut values = Vec::with_capacity(steps as usize + 1);
    let mut j = 0;
    for k in 0..=steps {
        let t = first + k * STEP;
        while j + 1 < pts.len() && pts[j + 1].0 <= t {
            j += 1;
        }
        let (t0, v0) = pts[j];
        let v = match pts.get(j + 1) {
            Some(&(t1, v1)) if t > t0 => v0 + (v1 - v0) * (t - t0) as f64 / (t1 - t0) as f64,
            _ => v0,
        };
        values.push(v);
    }
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Series {
        name,
        start: first / STEP,
        values,
    })
}

/// Every `*.csv` under `dir`, sorted.
pub fn find_traces(dir: &Path) -> Result<Vec<PathBuf>, EvalError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "csv") {
                out.push(p);
            }
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(EvalError::Empty(dir.display().to_string()));
    }
    Ok(out)
}

/// Scores of one forecaster on one series.
#[derive(Debug, Clone, Serialize)]
pub struct Scores {
    pub mase: f64,
    pub smape: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SeriesResult {
    pub series: String,
    pub group: String,
    pub points: usize,
    pub origins: usize,
    pub chosen: Scores,
    pub last_value: Scores,
    pub seasonal_naive: Scores,
    /// Each candidate model's scores if it were always used.
    pub models: Vec<(String, Scores)>,
    /// Share of origins whose actual value stayed at or under the upper bound.
    pub coverage: f64,
    /// Which model the running backtest chose at the scored origins, and how often.
    pub chosen_models: Vec<(String, usize)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Overall {
    pub mase: f64,
    pub last_value_mase: f64,
    pub seasonal_naive_mase: f64,
    /// mase / min(last_value_mase, seasonal_naive_mase).
    pub ratio_to_best_baseline: f64,
    pub coverage: f64,
    pub smape: f64,
    pub series: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub horizon_minutes: u64,
    pub quantile: f64,
    pub series: Vec<SeriesResult>,
    pub overall: Overall,
    /// The same, per group of series (folder), e.g. the held-out realTraffic.
    pub groups: Vec<(String, Overall)>,
    pub seconds: f64,
}

fn smape(y: f64, f: f64) -> f64 {
    let d = y.abs() + f.abs();
    if d == 0.0 {
        0.0
    } else {
        200.0 * (y - f).abs() / d
    }
}

/// Backtests one series at `horizon` steps.
pub fn evaluate(s: &Series, group: &str, horizon: usize, quantile: f64) -> Option<SeriesResult> {
    let n = s.values.len();
    let y = &s.values;
    if n < 2 * horizon + 20 {
        return None;
    }
    let half = n / 2;
    let scale = (1..half).map(|i| (y[i] - y[i - 1]).abs()).sum::<f64>() / (half - 1) as f64;
    let scale = if scale > 0.0 { scale } else { 1.0 };
    let model = Model::new(ForecastConfig {
        bucket_secs: STEP,
        horizon,
        quantile,
    });
    let mut st = model.new_state();
    let per_day = (86_400 / STEP) as usize;
    let mut abs = [0.0f64; 3];
    let mut sm = [0.0f64; 3];
    let mut cand_abs = vec![0.0f64; MODELS.len()];
    let mut cand_sm = vec![0.0f64; MODELS.len()];
    let mut covered = 0usize;
    let mut origins = 0usize;
    let mut chosen_count: Vec<(String, usize)> =
        MODELS.iter().map(|m| (m.to_string(), 0)).collect();
    for i in 0..n {
        let f = model.observe(&mut st, s.start + i as u64, y[i]);
        if i < half || i + horizon >= n || !(i - half).is_multiple_of(3) {
            continue;
        }
        let actual = y[i + horizon];
        let sn = if i + horizon >= per_day {
            y[i + horizon - per_day]
        } else {
            y[i]
        };
        for (k, fc) in [f.predicted, y[i], sn].into_iter().enumerate() {
            abs[k] += (actual - fc).abs();
            sm[k] += smape(actual, fc);
        }
        let cands = model.candidates(&st, s.start + i as u64);
        for (m, c) in cands.iter().enumerate() {
            cand_abs[m] += (actual - c).abs();
            cand_sm[m] += smape(actual, *c);
        }
        if actual <= f.upper {
            covered += 1;
        }
        if let Some(c) = chosen_count.iter_mut().find(|(m, _)| m == f.model) {
            c.1 += 1;
        }
        origins += 1;
    }
    let o = origins.max(1) as f64;
    let score = |a: f64, s: f64| Scores {
        mase: a / o / scale,
        smape: s / o,
    };
    chosen_count.retain(|c| c.1 > 0);
    chosen_count.sort_by_key(|c| std::cmp::Reverse(c.1));
    Some(SeriesResult {
        series: s.name.clone(),
        group: group.to_string(),
        points: n,
        origins,
        chosen: score(abs[0], sm[0]),
        last_value: score(abs[1], sm[1]),
        seasonal_naive: score(abs[2], sm[2]),
        models: MODELS
            .iter()
            .enumerate()
            .map(|(m, name)| (name.to_string(), score(cand_abs[m], cand_sm[m])))
            .collect(),
        coverage: covered as f64 / o,
        chosen_models: chosen_count,
    })
}

fn summarize(results: &[&SeriesResult]) -> Overall {
    let k = results.len().max(1) as f64;
    let mean = |f: &dyn Fn(&SeriesResult) -> f64| results.iter().map(|r| f(r)).sum::<f64>() / k;
    let mase = mean(&|r| r.chosen.mase);
    let lv = mean(&|r| r.last_value.mase);
    let sn = mean(&|r| r.seasonal_naive.mase);
    Overall {
        mase,
        last_value_mase: lv,
        seasonal_naive_mase: sn,
        ratio_to_best_baseline: mase / lv.min(sn),
        coverage: mean(&|r| r.coverage),
        smape: mean(&|r| r.chosen.smape),
        series: results.len(),
    }
}

/// Runs the whole evaluation.
pub fn run(dir: &Path, horizon_secs: u64, quantile: f64) -> Result<Report, EvalError> {
    let started = std::time::Instant::now();
    let horizon = (horizon_secs / STEP).max(1) as usize;
    let mut series = Vec::new();
    for p in find_traces(dir)? {
        let group = p
            .parent()
            .and_then(|d| d.file_name())
            .map(|g| g.to_string_lossy().into_owned())
            .unwrap_or_default();
        let s = load(&p)?;
        if let Some(r) = evaluate(&s, &group, horizon, quantile) {
            series.push(r);
        }
    }
    let all: Vec<&SeriesResult> = series.iter().collect();
    let overall = summarize(&all);
    let mut names: Vec<String> = series.iter().map(|r| r.group.clone()).collect();
    names.sort();
    names.dedup();
    let groups = names
        .into_iter()
        .map(|g| {
            let rs: Vec<&SeriesResult> = series.iter().filter(|r| r.group == g).collect();
            (g, summarize(&rs))
        })
        .collect();
    Ok(Report {
        horizon_minutes: horizon as u64 * STEP / 60,
        quantile,
        series,
        overall,
        groups,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The report as text tables.
pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "forecast-eval: horizon {} min, upper bound q{:.2}, {} series\n",
        r.horizon_minutes,
        r.quantile,
        r.series.len()
    );
    let _ = writeln!(
        o,
        "{:<34} {:>7} {:>7} {:>7} {:>6} {:>7} {:>7} {:>7} {:>6}  chosen most",
        "series", "MASE", "LV", "SNaive", "ratio", "sMAPE", "LV%", "SN%", "cover"
    );
    for s in &r.series {
        let best = s.last_value.mase.min(s.seasonal_naive.mase);
        let _ = writeln!(
            o,
            "{:<34} {:>7.3} {:>7.3} {:>7.3} {:>6.2} {:>7.1} {:>7.1} {:>7.1} {:>6.2}  {}",
            format!("{}/{}", s.group, s.series),
            s.chosen.mase,
            s.last_value.mase,
            s.seasonal_naive.mase,
            s.chosen.mase / best,
            s.chosen.smape,
            s.last_value.smape,
            s.seasonal_naive.smape,
            s.coverage,
            s.chosen_models.first().map(|c| c.0.as_str()).unwrap_or("-")
        );
    }
    let line = |o: &mut String, name: &str, v: &Overall| {
        let _ = writeln!(
            o,
            "{:<34} {:>7.3} {:>7.3} {:>7.3} {:>6.2} {:>7.1} {:>7} {:>7} {:>6.2}",
            name,
            v.mase,
            v.last_value_mase,
            v.seasonal_naive_mase,
            v.ratio_to_best_baseline,
            v.smape,
            "",
            "",
            v.coverage
        );
    };
    let _ = writeln!(o);
    for (g, v) in &r.groups {
        line(&mut o, &format!("overall {g}"), v);
    }
    line(&mut o, "OVERALL", &r.overall);
    let _ = writeln!(
        o,
        "\ncandidate models, mean MASE over series if always used:"
    );
    for (m, name) in MODELS.iter().enumerate() {
        let mean =
            r.series.iter().map(|s| s.models[m].1.mase).sum::<f64>() / r.series.len().max(1) as f64;
        let _ = writeln!(o, "  {name:<20} {mean:.3}");
    }
    let _ = writeln!(o, "\n({:.1} s)", r.seconds);
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_time("1970-01-01 00:00:00"), Some(0));
        assert_eq!(parse_time("2015-02-26 21:42:53"), Some(1_424_986_973));
        assert_eq!(parse_time("2000-03-01 00:00:00"), Some(951_868_800));
        assert_eq!(parse_time("garbage"), None);
    }

    #[test]
    fn grid_merges_duplicates_and_fills_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.csv");
        let mut text = String::from("timestamp,value\n");
        for i in 0..20 {
            if i == 5 {
                continue; // a gap
            }
            text.push_str(&format!(
                "2020-01-01 {:02}:{:02}:00,{}\n",
                i * 5 / 60,
                i * 5 % 60,
                i
            ));
        }
        text.push_str("2020-01-01 00:00:00,2\n"); // duplicate of the first
        std::fs::write(&p, text).unwrap();
        let s = load(&p).unwrap();
        assert_eq!(s.values[0], 1.0, "duplicates are averaged");
        assert!(
            (s.values[5] - 5.0).abs() < 1e-9,
            "the gap is interpolated: {}",
            s.values[5]
        );
    }
}
