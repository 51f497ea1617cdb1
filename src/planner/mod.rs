//! The Predictive Migration Engine: from every partition's load and
//! forecast and every node's capacity, decide what to move, split or merge
//! — early enough that the move finishes before a node saturates, and
//! without moving data for nothing.
//!
//! Pure code, no I/O and no clock: the proxy (`/api/plan`, `shardcast
//! plan`) and the simulator (`shardcast simulate`) build a [`Cluster`] and
//! call the same [`plan`], so what the simulator measures is what the proxy
//! would do. The only state kept between rounds is [`Memory`] (when a
//! partition last moved, since when a node has been over the threshold),
//! which is what keeps the planner from flapping.
//!
//! Policies differ only in the load each partition is planned for:
//! `predictive` the forecasts over the horizon (each node's peak of the
//! summed point forecasts, plus its share of their uncertainty), `reactive`
//! the load just measured, and only once a node has stayed over the
//! threshold for `window`, `oracle` (simulator) the true loads over the
//! horizon, `off` nothing at all.

pub mod cost;

mod choose;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use serde::Serialize;

pub use cost::Cost;

use crate::ring::PartitionId;

/// How the planner reads the future.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    Predictive,
    Reactive,
    Oracle,
    Off,
}

impl Policy {
    pub const NAMES: &'static [&'static str] = &["predictive", "reactive", "oracle", "off"];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "predictive" => Self::Predictive,
            "reactive" => Self::Reactive,
            "oracle" => Self::Oracle,
            "off" => Self::Off,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Predictive => "predictive",
            Self::Reactive => "reactive",
            Self::Oracle => "oracle",
            Self::Off => "off",
        }
    }
}

/// The planner's knobs (`[planner]` in the config).
#[derive(Debug, Clone)]
pub struct Settings {
    pub policy: Policy,
    /// Utilization every node must stay under (0, 1].
    pub threshold: f64,
    /// Seconds ahead the plan looks.
    pub horizon: u64,
    /// Seconds between planning rounds (a node is acted on when it would
    /// cross the threshold before a move started at the next round ends).
    pub interval: u64,
    /// Migrations running at once in the whole cluster.
    pub max_concurrent: usize,
    /// Bytes per second a copy runs at (0: unthrottled).
    pub copy_rate: f64,
    /// Share of a node's capacity a copy takes on the source and the target.
    pub copy_load: f64,
    /// Write pause at a cut-over, seconds.
    pub pause_secs: f64,
    /// Smallest benefit (node-seconds of overload avoided) worth a move.
    pub min_benefit: f64,
    /// Seconds a moved partition stays where it went.
    pub cooldown: u64,
    /// `reactive`: seconds a node must stay over the threshold before the
    /// planner acts (TiKV splits after 10 s, CockroachDB on a sustained rate).
    pub window: u64,
    /// A target must stay this far under the threshold after a move.
    pub hysteresis: f64,
    /// Merge cold neighbours once there are more partitions than this (0: never).
    pub merge_above: usize,
    /// Two neighbours merge only if together they stay under this share of
    /// their node's threshold load.
    pub merge_load: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            policy: Policy::Predictive,
            threshold: 0.8,
            horizon: 1800,
            interval: 60,
            max_concurrent: 1,
            copy_rate: 64.0 * 1024.0 * 1024.0,
            copy_load: 0.05,
            pause_secs: 0.1,
            min_benefit: 1.0,
            cooldown: 3600,
            window: 60,
            hysteresis: 0.1,
            merge_above: 0,
            merge_load: 0.05,
        }
    }
}

impl Settings {
    pub fn model(&self) -> cost::Model {
        cost::Model {
            copy_rate: self.copy_rate,
            copy_load: self.copy_load,
            pause_secs: self.pause_secs,
            threshold: self.threshold,
            horizon: self.horizon as f64,
        }
    }
}

/// A node as the planner sees it.
#[derive(Debug, Clone)]
pub struct NodeLoad {
    pub name: String,
    /// Requests per second the node serves before latency bends.
    pub capacity: f64,
    /// False for a node that does not answer: never a target.
    pub available: bool,
}

/// A partition as the planner sees it. Loads are requests per second.
#[derive(Debug, Clone)]
pub struct PartitionLoad {
    pub id: PartitionId,
    pub lo: i64,
    pub hi: i64,
    /// Index into [`Cluster::nodes`] of the node that serves it.
    pub node: usize,
    /// The load measured over the last sample.
    pub current: f64,
    /// The forecast at the horizon.
    pub predicted: f64,
    /// The forecast's upper bound at the horizon.
    pub upper: f64,
    /// Forecasts for evenly spaced steps over the horizon, the last at the
    /// horizon (empty: only `predicted` is known).
    pub path: Vec<f32>,
    /// The true loads over the horizon, same steps (the simulator's oracle only).
    pub future: Vec<f32>,
    pub bytes: u64,
    /// Where it is moving to, while a migration runs.
    pub moving_to: Option<usize>,
}

/// Everything one planning round looks at.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    /// Seconds (any origin; the simulator's clock or unix time).
    pub now: u64,
    /// Seconds the `current` loads were measured over.
    pub sample_secs: u64,
    pub nodes: Vec<NodeLoad>,
    pub partitions: Vec<PartitionLoad>,
    /// Migrations running (moves, splits and merges), cluster-wide.
    pub running: usize,
}

/// What the planner remembers between rounds.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    /// Partition → (when it last moved, the node it left).
    moved: HashMap<PartitionId, (u64, usize)>,
    /// Node → since when it has been over the threshold (reactive).
    over_since: HashMap<usize, u64>,
}

impl Memory {
    /// Records that `partition` left `from` at `now` (also for moves the
    /// planner did not choose, so an operator's move cools down too).
    pub fn moved(&mut self, partition: PartitionId, from: usize, now: u64) {
        self.moved.insert(partition, (now, from));
    }

    /// Takes the reactive windows from a dry run's memory, not its moves.
    pub fn keep_windows(&mut self, dry_run: &Memory) {
        self.over_since = dry_run.over_since.clone();
    }

    /// Forgets partitions that no longer exist (split or merged away).
    pub fn retain(&mut self, alive: impl Fn(PartitionId) -> bool) {
        self.moved.retain(|p, _| alive(*p));
    }
}

/// One action the planner would take.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Action {
    /// Move a partition to another node.
    Move {
        partition: PartitionId,
        from: usize,
        to: usize,
    },
    /// Split a partition at its median; the upper half moves to `to`.
    Split {
        partition: PartitionId,
        node: usize,
        to: Option<usize>,
    },
    /// Merge two adjacent partitions on one node.
    Merge {
        partitions: [PartitionId; 2],
        node: usize,
    },
}

/// An action with its price and the reason for it.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub action: Action,
    pub cost: Cost,
    /// Which node, its utilization now and predicted and when, why this
    /// partition and this target, and the cost.
    pub reason: String,
}

/// One node's utilization now, expected and after the plan.
#[derive(Debug, Clone, Serialize)]
pub struct NodeOutlook {
    pub name: String,
    pub capacity: f64,
    pub partitions: usize,
    /// Load ÷ capacity over the last sample.
    pub utilization: f64,
    /// What the policy plans for over the horizon.
    pub expected: f64,
    /// Expected after this round's decisions.
    pub after: f64,
    /// Seconds until `expected` would cross the threshold (0: over now).
    pub crosses_in: Option<f64>,
}

/// The planner's answer for one round.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub policy: Policy,
    pub threshold: f64,
    pub horizon_secs: u64,
    pub nodes: Vec<NodeOutlook>,
    pub decisions: Vec<Decision>,
    /// Why a node over the threshold got nothing (busy, no target, waiting).
    pub notes: Vec<String>,
}

/// One planning round: the decisions for now, with the outlook they rest on.
/// `memory` is updated with what was decided.
pub fn plan(cluster: &Cluster, settings: &Settings, memory: &mut Memory) -> Plan {
    let mut round = choose::Round::new(cluster, settings, memory);
    let before: Vec<(f64, f64, Option<f64>)> = (0..cluster.nodes.len())
        .map(|n| {
            (
                round.utilization_now(n),
                round.utilization(n),
                round.crossing(n),
            )
        })
        .collect();
    if settings.policy != Policy::Off {
        round.relieve_hot_nodes();
        round.merge_cold_neighbours();
    }
    let nodes = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(n, node)| NodeOutlook {
            name: node.name.clone(),
            capacity: node.capacity,
            partitions: round.count(n),
            utilization: before[n].0,
            expected: before[n].1,
            after: round.utilization(n),
            crosses_in: before[n].2,
        })
        .collect();
    let (decisions, notes) = round.finish();
    Plan {
        policy: settings.policy,
        threshold: settings.threshold,
        horizon_secs: settings.horizon,
        nodes,
        decisions,
        notes,
    }
}

/// `1.2 GB`, `340 MB`, `12 kB`.
pub fn human_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.0} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.0} kB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

/// `45s`, `6m`, `2.5h`.
pub fn human_secs(s: f64) -> String {
    if s < 90.0 {
        format!("{s:.0}s")
    } else if s < 5400.0 {
        format!("{:.0}m", s / 60.0)
    } else {
        format!("{:.1}h", s / 3600.0)
    }
}
