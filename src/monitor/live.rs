//! The planner on the running cluster: builds the planner's view from the
//! routing table, the forecasts and the monitor's samples, and runs a
//! round every `[planner] interval`. Plans are explained (log, `/api/plan`,
//! `shardcast plan`), not yet carried out: that is the leader's job, next.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::info;

use crate::frontend::Shared;
use crate::planner::{self, Cluster, NodeLoad, PartitionLoad, Plan};
use crate::ring::PartitionState;

/// The planner's view of the cluster now.
pub fn cluster(shared: &Shared) -> Cluster {
    let table = shared.routing.load();
    let forecasts = shared.forecaster.snapshot();
    let by_id: std::collections::HashMap<_, _> =
        forecasts.partitions.iter().map(|f| (f.id, f)).collect();
    let samples = shared.monitor.nodes();
    let parts = shared.monitor.partitions();
    let nodes = table
        .nodes()
        .iter()
        .enumerate()
        .map(|(n, name)| NodeLoad {
            name: name.clone(),
            capacity: shared
                .config
                .nodes
                .iter()
                .find(|c| &c.name == name)
                .and_then(|c| c.capacity_qps)
                .unwrap_or(0.0),
            available: samples.get(n).is_none_or(|s| s.up),
        })
        .collect();
    let partitions: Vec<PartitionLoad> = table
        .partitions()
        .iter()
        .map(|p| {
            let f = by_id.get(&p.id);
            let sample = parts.get(&p.id).copied().unwrap_or_default();
            let current = sample.requests_per_sec;
            PartitionLoad {
                id: p.id,
                lo: p.lo,
                hi: p.hi,
                node: p.node,
                current,
                predicted: f.map_or(current, |f| f.predicted_rate),
                upper: f.map_or(current, |f| f.upper_rate),
                path: f.map(|f| f.path.clone()).unwrap_or_default(),
                future: Vec::new(),
                bytes: sample.bytes.unwrap_or(0),
                moving_to: match p.state {
                    PartitionState::Copying | PartitionState::CuttingOver => p.target,
                    _ => None,
                },
            }
        })
        .collect();
    let running = table.moves().count();
    Cluster {
        now: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        sample_secs: shared.config.monitor.interval,
        nodes,
        partitions,
        running,
    }
}

/// What the planner would do now, without remembering it: the reactive
/// window moves on, cooldowns are not started by a plan nobody carried out.
pub fn plan_now(shared: &Shared) -> Plan {
    let settings = shared.config.planner_settings();
    let cluster = cluster(shared);
    let mut memory = shared.monitor.memory.lock();
    let mut scratch = memory.clone();
    let plan = planner::plan(&cluster, &settings, &mut scratch);
    memory.keep_windows(&scratch);
    let mut plan = plan;
    for n in &cluster.nodes {
        if n.capacity <= 0.0 {
            plan.notes.push(format!(
                "{}: no capacity_qps in the config, so its utilization is unknown (shardcast calibrate --node {} measures it)",
                n.name, n.name
            ));
        }
    }
    plan
}

/// A planning round every `[planner] interval`: logs what it would do and
/// keeps the last plan for the status page.
pub async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let settings = shared.config.planner_settings();
    if settings.policy == planner::Policy::Off {
        info!("planner off");
        return;
    }
    info!(
        policy = settings.policy.as_str(),
        interval_secs = settings.interval,
        threshold = settings.threshold,
        "planner started"
    );
    let mut tick = tokio::time::interval(Duration::from_secs(settings.interval.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let plan = plan_now(&shared);
        for d in &plan.decisions {
            info!(reason = %d.reason, "planner would act");
            let kind = match d.action {
                planner::Action::Move { .. } => "move",
                planner::Action::Split { .. } => "split",
                planner::Action::Merge { .. } => "merge",
            };
            shared
                .metrics
                .planner_decisions
                .with_label_values(&[kind])
                .inc();
        }
        shared.monitor.last_plan.store(Arc::new(Some(plan)));
    }
    info!("planner stopped");
}
