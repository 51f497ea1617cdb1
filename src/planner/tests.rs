//! The planner on small hand-built clusters.

use super::*;

const GB: u64 = 1 << 30;

fn node(name: &str, capacity: f64) -> NodeLoad {
    NodeLoad {
        name: name.into(),
        capacity,
        available: true,
    }
}

/// A partition with a flat load (`current` = `predicted` = `upper`).
fn part(id: u32, node: usize, load: f64, bytes: u64) -> PartitionLoad {
    PartitionLoad {
        id,
        lo: id as i64 * 1000,
        hi: id as i64 * 1000 + 999,
        node,
        current: load,
        predicted: load,
        upper: load,
        path: Vec::new(),
        future: Vec::new(),
        bytes,
        moving_to: None,
    }
}

fn cluster(nodes: Vec<NodeLoad>, partitions: Vec<PartitionLoad>) -> Cluster {
    Cluster {
        now: 100_000,
        sample_secs: 60,
        nodes,
        partitions,
        running: 0,
    }
}

fn settings(policy: Policy) -> Settings {
    Settings {
        policy,
        max_concurrent: 4,
        ..Settings::default()
    }
}

/// Three nodes of 1,000 req/s; n0's ten partitions rise from 81 to 95 req/s
/// each over the horizon (0.81 → 0.95), n1 and n2 sit at 0.3 and 0.5.
fn rising() -> Cluster {
    let mut ps = Vec::new();
    for i in 0..10 {
        let mut p = part(i, 0, 81.0, GB / 4 + i as u64 * (GB / 16));
        p.predicted = 95.0;
        p.upper = 100.0;
        ps.push(p);
    }
    for i in 10..16 {
        ps.push(part(i, 1, 50.0, GB));
    }
    for i in 16..26 {
        ps.push(part(i, 2, 50.0, GB));
    }
    cluster(
        vec![node("n0", 1000.0), node("n1", 1000.0), node("n2", 1000.0)],
        ps,
    )
}

#[test]
fn a_node_heading_over_the_threshold_gets_a_move_that_finishes_in_time() {
    // n0 climbs 0.005 of its capacity a minute from 0.50 (crossing 0.80
    // after an hour); the forecast is right. A round every minute: the
    // planner waits while it can, and its first move ends before the crossing.
    let mut c = rising();
    let mut s = settings(Policy::Predictive);
    s.copy_rate = 2.0 * 1024.0 * 1024.0;
    let mut memory = Memory::default();
    let per_part = |minute: f64| 50.0 + 0.5 * minute;
    let mut first = None;
    for minute in 0..120u64 {
        c.now = 100_000 + minute * 60;
        for p in c.partitions.iter_mut().filter(|p| p.node == 0) {
            p.current = per_part(minute as f64);
            p.predicted = per_part(minute as f64 + s.horizon as f64 / 60.0);
            p.upper = p.predicted;
        }
        let plan = plan(&c, &s, &mut memory);
        if let Some(d) = plan.decisions.first() {
            first = Some((minute, d.clone(), plan.nodes[0].clone()));
            break;
        }
        assert!(plan.notes.iter().all(|n| !n.contains("over")) || minute > 0);
    }
    let (minute, d, outlook) = first.expect("a move before the node saturates");
    let Action::Move {
        partition,
        from,
        to,
    } = d.action
    else {
        panic!("{d:?}")
    };
    assert_eq!((from, to), (0, 1), "off n0 to the least loaded node");
    let crossing_minute = 60.0;
    let ends = minute as f64 + d.cost.copy_secs / 60.0;
    assert!(
        ends <= crossing_minute,
        "decided at {minute}m, copy ends at {ends:.1}m"
    );
    // Early enough for the few moves the rise needs, not much earlier.
    assert!(
        minute >= 45,
        "needlessly early: decided at {minute}m for a {:.1}m copy",
        d.cost.copy_secs / 60.0
    );
    assert!(
        outlook.utilization < 0.8 && outlook.expected > 0.8,
        "{outlook:?}"
    );
    assert!(d.cost.benefit > 0.0);
    assert!(d.reason.contains("n0") && d.reason.contains(&format!("partition {partition}")));
    assert!(d.reason.contains("n1"), "{}", d.reason);
}

#[test]
fn when_one_partition_is_enough_the_smallest_such_is_moved() {
    let mut c = rising();
    // One big, hot partition and one small, hot one on n0.
    for p in c.partitions.iter_mut() {
        p.predicted = p.current;
        p.upper = p.current;
    }
    c.partitions[0].predicted = 150.0;
    c.partitions[0].upper = 150.0;
    c.partitions[0].bytes = 10 * GB;
    c.partitions[1].predicted = 150.0;
    c.partitions[1].upper = 150.0;
    c.partitions[1].bytes = GB / 8;
    let plan = plan(&c, &settings(Policy::Predictive), &mut Memory::default());
    assert!(matches!(
        plan.decisions[0].action,
        Action::Move { partition: 1, .. }
    ));
}

#[test]
fn reactive_ignores_the_forecast_and_predictive_waits_when_the_crossing_is_far() {
    let mut c = rising();
    for p in c.partitions.iter_mut().filter(|p| p.node == 0) {
        p.current = 70.0;
    }
    let plan_r = plan(&c, &settings(Policy::Reactive), &mut Memory::default());
    assert!(plan_r.decisions.is_empty(), "0.70 now is fine for reactive");
    // A slow copy rate would not matter; a crossing far beyond the move's
    // lead time waits for a later round.
    let mut s = settings(Policy::Predictive);
    s.horizon = 6 * 3600;
    s.copy_rate = 1e12;
    let plan_p = plan(&c, &s, &mut Memory::default());
    assert!(plan_p.decisions.is_empty(), "{plan_p:#?}");
    assert!(plan_p.notes[0].contains("not yet"), "{:?}", plan_p.notes);
}

#[test]
fn reactive_acts_only_after_its_window() {
    let mut c = rising();
    for p in c.partitions.iter_mut().filter(|p| p.node == 0) {
        p.current = 90.0;
    }
    let mut s = settings(Policy::Reactive);
    s.window = 300;
    let mut memory = Memory::default();
    let first = plan(&c, &s, &mut memory);
    assert!(first.decisions.is_empty());
    assert!(
        first.notes[0].contains("reactive waits"),
        "{:?}",
        first.notes
    );
    c.now += 120;
    assert!(plan(&c, &s, &mut memory).decisions.is_empty());
    c.now += 180;
    let third = plan(&c, &s, &mut memory);
    assert_eq!(third.decisions.len(), 1, "{third:#?}");
    // Back under the threshold, the window starts over.
    let mut calm = c.clone();
    for p in calm.partitions.iter_mut() {
        p.current = 10.0;
    }
    calm.now += 60;
    plan(&calm, &s, &mut memory);
    c.now += 120;
    assert!(plan(&c, &s, &mut memory).decisions.is_empty());
}

#[test]
fn a_partition_too_hot_for_any_node_is_split() {
    let mut c = rising();
    c.partitions[3].current = 850.0;
    c.partitions[3].predicted = 900.0;
    c.partitions[3].upper = 950.0;
    for p in c.partitions.iter_mut().filter(|p| p.node == 1) {
        (p.current, p.predicted, p.upper) = (20.0, 20.0, 20.0);
    }
    let plan = plan(&c, &settings(Policy::Predictive), &mut Memory::default());
    let d = &plan.decisions[0];
    match d.action {
        Action::Split {
            partition: 3,
            node: 0,
            to: Some(to),
        } => assert_ne!(to, 0),
        ref a => panic!("expected a split, got {a:?}: {}", d.reason),
    }
    assert!(d.reason.contains("split"), "{}", d.reason);
    assert_eq!(d.cost.bytes, c.partitions[3].bytes / 2);
}

#[test]
fn nothing_flaps_under_noisy_load() {
    // Two nodes around 0.75 ± noise, for 500 rounds of a minute: the
    // planner may move now and then, but no partition goes back and forth.
    let mut c = cluster(
        vec![node("n0", 1000.0), node("n1", 1000.0)],
        (0..20)
            .map(|i| part(i, (i % 2) as usize, 75.0, GB))
            .collect(),
    );
    for policy in [Policy::Predictive, Policy::Reactive] {
        let s = settings(policy);
        let mut memory = Memory::default();
        let mut x: u64 = 7;
        let mut moves: Vec<(u64, u32)> = Vec::new();
        for round in 0..500u64 {
            c.now = 100_000 + round * 60;
            for p in c.partitions.iter_mut() {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let noise = ((x >> 33) % 21) as f64 - 10.0;
                p.current = 75.0 + noise;
                p.predicted = 75.0;
                p.upper = 85.0;
            }
            let plan = plan(&c, &s, &mut memory);
            for d in plan.decisions {
                if let Action::Move { partition, to, .. } = d.action {
                    moves.push((c.now, partition));
                    c.partitions[partition as usize].node = to;
                }
            }
        }
        for (i, (t, p)) in moves.iter().enumerate() {
            for (t2, p2) in &moves[i + 1..] {
                assert!(
                    p != p2 || t2 - t >= s.cooldown,
                    "{policy:?}: partition {p} moved at {t} and again at {t2}"
                );
            }
        }
        assert!(moves.len() <= 4, "{policy:?} moved {moves:?}");
    }
}

#[test]
fn cold_neighbours_merge_when_partitions_grow() {
    let mut ps: Vec<PartitionLoad> = (0..6).map(|i| part(i, 0, 1.0, GB)).collect();
    ps.push(part(6, 1, 1.0, GB));
    ps[5].current = 500.0;
    ps[5].predicted = 500.0;
    ps[5].upper = 500.0;
    let c = cluster(vec![node("n0", 1000.0), node("n1", 1000.0)], ps);
    let mut s = settings(Policy::Predictive);
    s.merge_above = 4;
    let plan = plan(&c, &s, &mut Memory::default());
    let merged: Vec<[u32; 2]> = plan
        .decisions
        .iter()
        .filter_map(|d| match d.action {
            Action::Merge { partitions, .. } => Some(partitions),
            _ => None,
        })
        .collect();
    // Seven partitions, three too many: (0,1), (2,3) — never the hot 5, never across nodes.
    assert_eq!(merged.len(), 2, "{plan:#?}");
    for [a, b] in &merged {
        assert_eq!(b - a, 1);
        assert!(*a != 5 && *b != 5 && *b != 6);
    }
    s.merge_above = 0;
    assert!(plan_is_empty(&c, &s));
}

fn plan_is_empty(c: &Cluster, s: &Settings) -> bool {
    plan(c, s, &mut Memory::default()).decisions.is_empty()
}

#[test]
fn off_decides_nothing_and_oracle_reads_the_future() {
    let c = rising();
    let off = plan(&c, &settings(Policy::Off), &mut Memory::default());
    assert!(off.decisions.is_empty());
    assert!(off.nodes[0].expected > 0.9, "the outlook is still shown");
    // The oracle sees that n0's rise never happens.
    let mut calm = c.clone();
    for p in calm.partitions.iter_mut() {
        p.current = p.current.min(70.0);
        p.future = vec![p.current as f32];
    }
    assert!(plan_is_empty(&calm, &settings(Policy::Oracle)));
    assert!(!plan_is_empty(&c, &settings(Policy::Oracle)));
}

#[test]
fn busy_nodes_and_the_concurrency_limit_are_respected() {
    let mut c = rising();
    c.partitions[12].moving_to = Some(2);
    c.running = 1;
    let plan1 = plan(&c, &settings(Policy::Predictive), &mut Memory::default());
    // n1 and n2 are busy with a move: n0 has no target.
    assert!(plan1.decisions.is_empty(), "{plan1:#?}");
    let mut s = settings(Policy::Predictive);
    s.max_concurrent = 1;
    c.partitions[12].moving_to = None;
    let plan2 = plan(&c, &s, &mut Memory::default());
    assert!(plan2.decisions.is_empty());
    assert!(
        plan2.notes[0].contains("max_concurrent"),
        "{:?}",
        plan2.notes
    );
}

#[test]
fn an_unavailable_node_is_never_a_target() {
    let mut c = rising();
    c.nodes[1].available = false;
    let plan = plan(&c, &settings(Policy::Predictive), &mut Memory::default());
    assert!(matches!(
        plan.decisions[0].action,
        Action::Move { to: 2, .. }
    ));
}
