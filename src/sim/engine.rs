//! The simulation loop: one 5-minute bucket at a time, the load lands on
//! the nodes, running migrations advance, the forecaster observes, and the
//! planner — the proxy's own `planner::plan` — decides.
//!
//! Migration model: a move copies the partition's bytes at `copy_rate`;
//! while it copies, the source and the target each carry `copy_load` of
//! their capacity on top of their load; the partition's requests stay on
//! the source until the cut-over, then go to the target. A split or merge
//! is a catalog change (no copy); a split divides a partition's load and
//! bytes evenly, a split with a target then moves the upper half.

use std::collections::HashMap;
use std::collections::{BinaryHeap, HashSet};

use smallvec::SmallVec;

use super::workload::Workload;
use super::{Options, Report};
use crate::analyzer::forecast::{self, ForecastConfig, Model, State};
use crate::planner::{self, Action, Cluster, Memory, NodeLoad, PartitionLoad, Policy};

/// Seconds per bucket (the traces' step).
pub const STEP: u64 = 300;

struct Migration {
    to: usize,
    /// Seconds until the cut-over, and of copying left.
    remaining: f64,
    copying: f64,
}

struct Part {
    id: u32,
    lo: i64,
    hi: i64,
    node: usize,
    /// Fractions of original partitions this partition holds.
    parts: SmallVec<[(u32, f32); 2]>,
    bytes: u64,
    state: State,
    load: f64,
    predicted: f64,
    upper: f64,
    /// The forecasts over the horizon, and (oracle) the true loads.
    path: Vec<f32>,
    future: Vec<f32>,
    moving: Option<Migration>,
}

pub(super) fn simulate(opts: &Options, wl: &Workload) -> Report {
    let started = std::time::Instant::now();
    let s = &opts.settings;
    let horizon = (s.horizon / STEP).max(1);
    let model = Model::new(ForecastConfig {
        bucket_secs: STEP,
        horizon: horizon as usize,
        quantile: 0.9,
    })
    .with_history(2 * 86_400);
    let caps = capacities(opts, wl);
    let mut parts = place(wl, &caps, &model);
    let mut next_id = parts.len() as u32;
    let warm = (opts.warmup_days * 86_400.0 / STEP as f64).round() as u64;
    let run = (opts.days * 86_400.0 / STEP as f64).round().max(1.0) as u64;
    let nodes: Vec<NodeLoad> = caps
        .iter()
        .enumerate()
        .map(|(i, &capacity)| NodeLoad {
            name: format!("n{i}"),
            capacity,
            available: true,
        })
        .collect();
    let mut memory = Memory::default();
    let mut r = Report::new(opts);
    let mut node_load = vec![0.0; caps.len()];
    let mut node_copy = vec![0.0; caps.len()];
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8);
    let oracle = s.policy == Policy::Oracle;
    for t in 0..warm + run {
        observe(
            &mut parts,
            wl,
            &model,
            t,
            oracle.then_some(horizon),
            threads,
        );
        // The planner starts once the forecasters have seen a day; the
        // figures count from the end of the warm-up.
        let plans = t >= warm.min(super::workload::PER_DAY);
        if !plans {
            continue;
        }
        let measured = t >= warm;
        // The bucket's load on each node, migrations advancing.
        node_load.iter_mut().for_each(|x| *x = 0.0);
        node_copy.iter_mut().for_each(|x| *x = 0.0);
        for p in parts.iter_mut() {
            let Some(m) = p.moving.as_mut() else {
                node_load[p.node] += p.load;
                continue;
            };
            let before = (m.remaining / STEP as f64).clamp(0.0, 1.0);
            let copy = (m.copying / STEP as f64).clamp(0.0, 1.0);
            node_load[p.node] += p.load * before;
            node_load[m.to] += p.load * (1.0 - before);
            node_copy[p.node] += s.copy_load * caps[p.node] * copy;
            node_copy[m.to] += s.copy_load * caps[m.to] * copy;
            m.remaining -= STEP as f64;
            m.copying -= STEP as f64;
            if m.remaining <= 0.0 {
                p.node = m.to;
                p.moving = None;
            }
        }
        if measured {
            for (n, &load) in node_load.iter().enumerate() {
                r.account(load, node_copy[n], caps[n], STEP as f64, opts.slo_factor);
            }
        }
        // Plan on what has been seen (and, for the oracle, what will be).
        let cluster = Cluster {
            now: t * STEP,
            sample_secs: STEP,
            nodes: nodes.clone(),
            partitions: parts
                .iter()
                .map(|p| PartitionLoad {
                    id: p.id,
                    lo: p.lo,
                    hi: p.hi,
                    node: p.node,
                    current: p.load,
                    predicted: p.predicted,
                    upper: p.upper,
                    path: p.path.clone(),
                    future: p.future.clone(),
                    bytes: p.bytes,
                    moving_to: p.moving.as_ref().map(|m| m.to),
                })
                .collect(),
            running: parts.iter().filter(|p| p.moving.is_some()).count(),
        };
        let plan = planner::plan(&cluster, s, &mut memory);
        if std::env::var_os("SHARDCAST_SIM_DEBUG").is_some() {
            let total: f64 = node_load.iter().chain(&node_copy).sum();
            let cap: f64 = caps.iter().sum();
            eprintln!("t={t} cluster utilization {:.2}", total / cap);
            for (n, &load) in node_load.iter().enumerate() {
                if load + node_copy[n] > caps[n] {
                    eprintln!(
                        "t={t} {} at {:.2}: {:?}",
                        nodes[n].name,
                        load / caps[n],
                        plan.nodes[n]
                    );
                }
            }
            for d in &plan.decisions {
                eprintln!("t={t} {}", d.reason);
            }
            for note in &plan.notes {
                eprintln!("t={t} note {note}");
            }
        }
        if !plan.decisions.is_empty() {
            let mut warming = Report::new(opts);
            let counts = if measured { &mut r } else { &mut warming };
            apply(&mut parts, &mut next_id, plan, opts, counts);
            let alive: HashSet<u32> = parts.iter().map(|p| p.id).collect();
            memory.retain(|id| alive.contains(&id));
        }
    }
    r.partitions_end = parts.len();
    r.hot_spots = wl.hot_spots();
    r.wall_seconds = started.elapsed().as_secs_f64();
    r
}

/// Node capacities: ±20% around a mean set so the cluster's mean load is
/// `utilization` of its capacity.
fn capacities(opts: &Options, wl: &Workload) -> Vec<f64> {
    let mut rng = super::rng::Rng::new(opts.seed.wrapping_add(17));
    let raw: Vec<f64> = (0..opts.nodes).map(|_| 0.8 + 0.4 * rng.f64()).collect();
    let total_load: f64 = (0..wl.len()).map(|i| wl.mean(i)).sum();
    let total_raw: f64 = raw.iter().sum();
    let k = total_load / opts.utilization / total_raw;
    raw.into_iter().map(|c| c * k).collect()
}

/// Yesterday's balance: the biggest partitions first, each onto the node
/// where it leaves the lowest utilization (by mean load).
fn place(wl: &Workload, caps: &[f64], model: &Model) -> Vec<Part> {
    let p = wl.len();
    let mut order: Vec<usize> = (0..p).collect();
    order.sort_by(|a, b| wl.mean(*b).total_cmp(&wl.mean(*a)));
    let mut assigned = vec![0.0; caps.len()];
    // Min-heap on utilization (ordered as integers of 1e-12).
    let mut heap: BinaryHeap<std::cmp::Reverse<(u64, usize)>> =
        (0..caps.len()).map(|n| std::cmp::Reverse((0, n))).collect();
    let mut node_of = vec![0; p];
    for i in order {
        let std::cmp::Reverse((_, n)) = heap.pop().expect("nodes");
        node_of[i] = n;
        assigned[n] += wl.mean(i);
        heap.push(std::cmp::Reverse((
            (assigned[n] / caps[n] * 1e12) as u64,
            n,
        )));
    }
    let width = (1i128 << 64) / p as i128;
    (0..p)
        .map(|i| {
            let lo = (i64::MIN as i128 + width * i as i128) as i64;
            let hi = if i + 1 == p {
                i64::MAX
            } else {
                (i64::MIN as i128 + width * (i as i128 + 1) - 1) as i64
            };
            Part {
                id: i as u32,
                lo,
                hi,
                node: node_of[i],
                parts: smallvec::smallvec![(i as u32, 1.0)],
                bytes: wl.bytes(i),
                state: model.new_state(),
                load: 0.0,
                predicted: 0.0,
                upper: 0.0,
                path: Vec::new(),
                future: Vec::new(),
                moving: None,
            }
        })
        .collect()
}

fn load_of(p: &Part, wl: &Workload, t: u64) -> f64 {
    p.parts
        .iter()
        .map(|&(o, f)| f as f64 * wl.load(o as usize, t))
        .sum()
}

/// Bucket `t`'s load of every partition, fed to its forecaster (and the
/// true loads over the horizon for the oracle: a perfect forecast), on
/// `threads` threads.
fn observe(
    parts: &mut [Part],
    wl: &Workload,
    model: &Model,
    t: u64,
    oracle: Option<u64>,
    threads: usize,
) {
    let chunk = parts.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        for c in parts.chunks_mut(chunk) {
            scope.spawn(move || {
                for p in c {
                    p.load = load_of(p, wl, t);
                    let f = model.observe(&mut p.state, t, p.load);
                    p.predicted = f.predicted;
                    p.upper = f.upper;
                    model.path(&p.state, t, &mut p.path);
                    if let Some(h) = oracle {
                        p.future.clear();
                        for k in 1..=h {
                            let v = load_of(p, wl, t + k) as f32;
                            p.future.push(v);
                        }
                    }
                }
            });
        }
    });
}

/// Carries out a round's decisions on the simulated cluster.
fn apply(
    parts: &mut Vec<Part>,
    next_id: &mut u32,
    plan: planner::Plan,
    opts: &Options,
    r: &mut Report,
) {
    let s = &opts.settings;
    let index: HashMap<u32, usize> = parts.iter().enumerate().map(|(i, p)| (p.id, i)).collect();
    let mut gone = Vec::new();
    let start = |bytes: u64, to: usize| {
        let copy = bytes as f64 / s.copy_rate.max(1.0);
        Migration {
            to,
            remaining: copy + s.pause_secs,
            copying: copy,
        }
    };
    for d in plan.decisions {
        match d.action {
            Action::Move { partition, to, .. } => {
                let p = &mut parts[index[&partition]];
                r.migrations.moves += 1;
                r.bytes_moved += p.bytes;
                p.moving = Some(start(p.bytes, to));
            }
            Action::Split { partition, to, .. } => {
                let i = index[&partition];
                r.migrations.splits += 1;
                let p = &mut parts[i];
                let mid = p.lo + ((p.hi as i128 - p.lo as i128) / 2) as i64;
                let (a, b) = forecast::split_state(&p.state, 0.5);
                let halves: SmallVec<[(u32, f32); 2]> =
                    p.parts.iter().map(|&(o, f)| (o, f / 2.0)).collect();
                let upper = Part {
                    id: *next_id,
                    lo: mid + 1,
                    hi: p.hi,
                    node: p.node,
                    parts: halves.clone(),
                    bytes: p.bytes / 2,
                    state: b,
                    load: p.load / 2.0,
                    predicted: p.predicted / 2.0,
                    upper: p.upper / 2.0,
                    path: p.path.iter().map(|v| v / 2.0).collect(),
                    future: p.future.iter().map(|v| v / 2.0).collect(),
                    moving: to.map(|t| start(p.bytes / 2, t)),
                };
                if to.is_some() {
                    r.migrations.moves += 1;
                    r.bytes_moved += p.bytes / 2;
                }
                *next_id += 1;
                p.id = *next_id;
                *next_id += 1;
                p.hi = mid;
                p.parts = halves;
                p.bytes -= p.bytes / 2;
                p.state = a;
                p.load /= 2.0;
                p.path.iter_mut().for_each(|v| *v /= 2.0);
                p.future.iter_mut().for_each(|v| *v /= 2.0);
                parts.push(upper);
            }
            Action::Merge { partitions, .. } => {
                let (i, j) = (index[&partitions[0]], index[&partitions[1]]);
                r.migrations.merges += 1;
                let (lo, bytes, state, load, list) = {
                    let (a, b) = (&parts[i], &parts[j]);
                    let mut list = a.parts.clone();
                    list.extend(b.parts.iter().copied());
                    (
                        a.lo.min(b.lo),
                        a.bytes + b.bytes,
                        forecast::merge_states(&a.state, &b.state),
                        a.load + b.load,
                        list,
                    )
                };
                let hi = parts[i].hi.max(parts[j].hi);
                let a = &mut parts[i];
                a.id = *next_id;
                *next_id += 1;
                (a.lo, a.hi, a.bytes, a.state, a.load, a.parts) =
                    (lo, hi, bytes, state, load, list);
                gone.push(j);
            }
        }
    }
    if !gone.is_empty() {
        gone.sort_unstable();
        for j in gone.into_iter().rev() {
            parts.swap_remove(j);
        }
    }
}
