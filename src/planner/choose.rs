//! One planning round: which hot node to relieve, which partition to take
//! off it, where to put it, what to split and what to merge.
//!
//! Greedy and cheap, because the simulator runs it every five simulated
//! minutes over 100,000 partitions: the hottest nodes first, one migration
//! per node at a time (a node copies one partition at once), and for each
//! the partition that brings it under the threshold with the fewest bytes
//! — or, when none alone is enough, the most relief per second of copying —
//! onto the least loaded node that stays under the threshold minus a
//! hysteresis margin. A node's expected load is the sum of its partitions'
//! point forecasts plus the root of the sum of their squared margins (the
//! upper bounds' excess), so independent uncertainties are not added up as
//! if every partition peaked at once.

use super::cost::{self, Cost};
use super::{human_bytes, human_secs, Action, Cluster, Decision, Memory, Policy, Settings};

/// Targets examined per candidate partition, lowest utilization first.
const TARGETS_TRIED: usize = 4;
/// Merges decided in one round at most.
const MERGES_PER_ROUND: usize = 16;

pub(super) struct Round<'a> {
    c: &'a Cluster,
    s: &'a Settings,
    m: cost::Model,
    memory: &'a mut Memory,
    /// Per partition: the load planned for and its squared margin.
    point: Vec<f64>,
    margin2: Vec<f64>,
    /// Per partition: already decided on this round.
    taken: Vec<bool>,
    /// Per node: Σ point, Σ margin², copy load, load now, busy, partitions.
    base: Vec<f64>,
    var: Vec<f64>,
    extra: Vec<f64>,
    now: Vec<f64>,
    busy: Vec<bool>,
    count: Vec<usize>,
    by_node: Vec<Vec<usize>>,
    slots: usize,
    decisions: Vec<Decision>,
    notes: Vec<String>,
}

impl<'a> Round<'a> {
    pub(super) fn new(c: &'a Cluster, s: &'a Settings, memory: &'a mut Memory) -> Self {
        let n = c.nodes.len();
        let mut r = Round {
            c,
            s,
            m: s.model(),
            memory,
            point: Vec::with_capacity(c.partitions.len()),
            margin2: Vec::with_capacity(c.partitions.len()),
            taken: vec![false; c.partitions.len()],
            base: vec![0.0; n],
            var: vec![0.0; n],
            extra: vec![0.0; n],
            now: vec![0.0; n],
            busy: vec![false; n],
            count: vec![0; n],
            by_node: vec![Vec::new(); n],
            slots: s.max_concurrent.saturating_sub(c.running),
            decisions: Vec::new(),
            notes: Vec::new(),
        };
        for (i, p) in c.partitions.iter().enumerate() {
            let (point, margin) = match s.policy {
                Policy::Reactive => (p.current, 0.0),
                Policy::Oracle => match p.future {
                    Some(f) => (f, 0.0),
                    None => (p.current.max(p.predicted), p.upper - p.predicted),
                },
                Policy::Predictive | Policy::Off => {
                    let point = p.current.max(p.predicted);
                    (point, (p.upper - point).max(0.0))
                }
            };
            r.point.push(point);
            r.margin2.push(margin * margin);
            if p.node >= n {
                continue;
            }
            r.now[p.node] += p.current;
            let home = match p.moving_to {
                Some(t) if t < n => {
                    r.busy[p.node] = true;
                    r.busy[t] = true;
                    r.extra[p.node] += s.copy_load * c.nodes[p.node].capacity;
                    r.extra[t] += s.copy_load * c.nodes[t].capacity;
                    t
                }
                _ => p.node,
            };
            r.base[home] += point;
            r.var[home] += margin * margin;
            r.count[home] += 1;
            r.by_node[home].push(i);
        }
        r
    }

    fn expected(&self, n: usize) -> f64 {
        self.base[n] + self.var[n].max(0.0).sqrt() + self.extra[n]
    }

    pub(super) fn utilization(&self, n: usize) -> f64 {
        ratio(self.expected(n), self.c.nodes[n].capacity)
    }

    pub(super) fn utilization_now(&self, n: usize) -> f64 {
        ratio(self.now[n], self.c.nodes[n].capacity)
    }

    pub(super) fn count(&self, n: usize) -> usize {
        self.count[n]
    }

    pub(super) fn finish(self) -> (Vec<Decision>, Vec<String>) {
        (self.decisions, self.notes)
    }

    /// Nodes the policy finds over the threshold, hottest first.
    fn hot_nodes(&mut self) -> Vec<usize> {
        let theta = self.s.threshold;
        let mut hot = Vec::new();
        for n in 0..self.c.nodes.len() {
            if self.s.policy == Policy::Reactive {
                // Current load only, and only once it has stayed over.
                if self.utilization_now(n) <= theta {
                    self.memory.over_since.remove(&n);
                    continue;
                }
                let since = *self
                    .memory
                    .over_since
                    .entry(n)
                    .or_insert(self.c.now.saturating_sub(self.c.sample_secs));
                if self.c.now.saturating_sub(since) < self.s.window {
                    self.notes.push(format!(
                        "{} is over {theta:.2} since {}s ago; reactive waits {}s",
                        self.c.nodes[n].name,
                        self.c.now - since,
                        self.s.window
                    ));
                    continue;
                }
            }
            if self.utilization(n) > theta {
                hot.push(n);
            }
        }
        hot.sort_by(|a, b| self.utilization(*b).total_cmp(&self.utilization(*a)));
        hot
    }

    pub(super) fn relieve_hot_nodes(&mut self) {
        let hot = self.hot_nodes();
        if hot.is_empty() {
            return;
        }
        // Candidate targets, least utilized first.
        let mut targets: Vec<usize> = (0..self.c.nodes.len())
            .filter(|&n| self.c.nodes[n].available && self.c.nodes[n].capacity > 0.0)
            .collect();
        targets.sort_by(|a, b| self.utilization(*a).total_cmp(&self.utilization(*b)));
        for n in hot {
            if self.slots == 0 {
                self.notes.push(format!(
                    "{} is expected at {:.2}, but {} migrations already run (max_concurrent)",
                    self.c.nodes[n].name,
                    self.utilization(n),
                    self.s.max_concurrent
                ));
                continue;
            }
            if self.busy[n] {
                self.notes.push(format!(
                    "{} is expected at {:.2}; it is already in a migration",
                    self.c.nodes[n].name,
                    self.utilization(n)
                ));
                continue;
            }
            self.relieve(n, &targets);
        }
    }

    /// Seconds since `p` last moved, and the node it left, if it is cooling down.
    fn cooling(&self, i: usize) -> Option<usize> {
        let p = &self.c.partitions[i];
        match self.memory.moved.get(&p.id) {
            Some(&(at, from)) if self.c.now < at + self.s.cooldown => Some(from),
            _ => None,
        }
    }

    /// The best target for `point` (squared margin `m2`) off node `from`:
    /// the least utilized node after the move that stays under the
    /// threshold minus the hysteresis margin, copy load included.
    fn target(&self, point: f64, m2: f64, from: usize, targets: &[usize]) -> Option<(usize, f64)> {
        let line = self.s.threshold - self.s.hysteresis;
        let mut best: Option<(usize, f64)> = None;
        let mut tried = 0;
        for &t in targets {
            if t == from || self.busy[t] {
                continue;
            }
            let cap = self.c.nodes[t].capacity;
            let after = self.base[t] + point + (self.var[t] + m2).max(0.0).sqrt() + self.extra[t];
            let u = ratio(after + self.s.copy_load * cap, cap);
            if u <= line && best.is_none_or(|b| u < b.1) {
                best = Some((t, ratio(after, cap)));
            }
            tried += 1;
            if tried >= TARGETS_TRIED {
                break;
            }
        }
        best
    }

    fn relieve(&mut self, n: usize, targets: &[usize]) {
        let c = self.c;
        let cap = c.nodes[n].capacity;
        let name = &c.nodes[n].name;
        let total = self.expected(n);
        let excess = total - self.s.threshold * cap;
        let biggest = targets
            .iter()
            .map(|&t| self.c.nodes[t].capacity)
            .fold(0.0, f64::max);
        let fits_anywhere = (self.s.threshold - self.s.hysteresis) * biggest;
        // (partition, target, target utilization after, relief)
        let mut enough: Option<(usize, usize, f64, f64)> = None;
        let mut best_rate: Option<(f64, usize, usize, f64, f64)> = None;
        let mut too_hot: Option<usize> = None;
        for &i in &self.by_node[n] {
            let p = &self.c.partitions[i];
            if self.taken[i] || p.moving_to.is_some() || self.cooling(i).is_some() {
                continue;
            }
            if self.point[i] > fits_anywhere {
                if too_hot.is_none_or(|j| self.point[i] > self.point[j]) {
                    too_hot = Some(i);
                }
                continue;
            }
            let rest = self.base[n] - self.point[i]
                + (self.var[n] - self.margin2[i]).max(0.0).sqrt()
                + self.extra[n];
            let relief = total - rest;
            if relief <= 0.0 {
                continue;
            }
            let Some((t, after)) = self.target(self.point[i], self.margin2[i], n, targets) else {
                continue;
            };
            // Never straight back where it came from (no ping-pong).
            if self
                .memory
                .moved
                .get(&p.id)
                .is_some_and(|&(at, from)| from == t && self.c.now < at + 4 * self.s.cooldown)
            {
                continue;
            }
            if relief >= excess {
                if enough.is_none_or(|(j, ..)| p.bytes < self.c.partitions[j].bytes) {
                    enough = Some((i, t, after, relief));
                }
            } else {
                let rate = relief / (self.m.lead_secs(p.bytes) + 30.0);
                if best_rate.is_none_or(|b| rate > b.0) {
                    best_rate = Some((rate, i, t, after, relief));
                }
            }
        }
        // A partition no node could take whole is split first: moving its
        // neighbours away would only postpone the node's overload.
        if let Some(i) = too_hot {
            self.split(n, i, targets);
            return;
        }
        let chosen = enough.or(best_rate.map(|(_, i, t, a, r)| (i, t, a, r)));
        let Some((i, t, after, relief)) = chosen else {
            self.notes.push(format!(
                "{name} is expected at {:.2}, but no partition on it can go anywhere \
                     (every other node would pass {:.2}, or its partitions are cooling down)",
                self.utilization(n),
                self.s.threshold - self.s.hysteresis
            ));
            return;
        };
        let p = &c.partitions[i];
        let util_now = self.utilization_now(n);
        let util = self.utilization(n);
        let lead = self.m.lead_secs(p.bytes);
        // Act only if the node crosses before a move started next round would end.
        if self.s.policy != Policy::Reactive {
            let at = cost::load_at(
                util_now,
                util,
                lead + self.s.interval as f64,
                self.s.horizon as f64,
            );
            if at <= self.s.threshold && util_now <= self.s.threshold {
                let when =
                    cost::crossing_secs(util_now, util, self.s.threshold, self.s.horizon as f64)
                        .unwrap_or(self.s.horizon as f64);
                self.notes.push(format!(
                    "{name} is expected at {util:.2} within {}, crossing {:.2} in ~{}; a move takes ~{}: not yet",
                    human_secs(self.s.horizon as f64),
                    self.s.threshold,
                    human_secs(when),
                    human_secs(lead)
                ));
                return;
            }
        }
        let target_cap = self.c.nodes[t].capacity;
        let cost = self.m.price_move(
            p.bytes,
            relief,
            (total, cap),
            (self.expected(t), target_cap),
        );
        if cost.benefit < self.s.min_benefit {
            self.notes.push(format!(
                "{name} is expected at {util:.2}; moving partition {} would avoid {:.1} node-s of overload, under min_benefit {}",
                p.id, cost.benefit, self.s.min_benefit
            ));
            return;
        }
        let target_before = self.utilization(t);
        let reason = format!(
            "{name} is expected at {util:.2} of its capacity within {} ({util_now:.2} now{}); \
             move partition {} ({:.2} of {name}'s capacity, {}, ~{} to copy) to {} ({target_before:.2} → {after:.2}): \
             avoids ~{:.0} node-s of overload",
            human_secs(self.s.horizon as f64),
            crossing_note(util_now, util, self.s.threshold, self.s.horizon as f64),
            p.id,
            relief / cap,
            human_bytes(p.bytes),
            human_secs(lead),
            self.c.nodes[t].name,
            cost.benefit
        );
        self.apply_move(i, n, t, 1.0);
        self.decide(
            Action::Move {
                partition: p.id,
                from: n,
                to: t,
            },
            cost,
            reason,
        );
    }

    /// A partition too hot for any node: split it, and move the upper half
    /// where it fits.
    fn split(&mut self, n: usize, i: usize, targets: &[usize]) {
        let c = self.c;
        let p = &c.partitions[i];
        let cap = self.c.nodes[n].capacity;
        let half = self.point[i] / 2.0;
        let to = self
            .target(half, self.margin2[i] / 4.0, n, targets)
            .map(|(t, _)| t);
        let cost = self.m.price_split(
            p.bytes,
            self.point[i],
            (self.expected(n), cap),
            to.map(|t| (self.expected(t), self.c.nodes[t].capacity)),
        );
        let reason = format!(
            "{} is expected at {:.2}; partition {} alone is expected at {:.0} req/s, more than {:.2} of any node's capacity: \
             split it{}",
            self.c.nodes[n].name,
            self.utilization(n),
            p.id,
            self.point[i],
            self.s.threshold - self.s.hysteresis,
            match to {
                Some(t) => format!(" and move the upper half ({}) to {}", human_bytes(p.bytes / 2), self.c.nodes[t].name),
                None => " in place (no node has room for a half yet)".to_string(),
            }
        );
        match to {
            Some(t) => self.apply_move(i, n, t, 0.5),
            None => {
                self.taken[i] = true;
                self.busy[n] = true;
                self.slots -= 1;
            }
        }
        self.decide(
            Action::Split {
                partition: p.id,
                node: n,
                to,
            },
            cost,
            reason,
        );
    }

    /// Books `share` of partition `i`'s load from `n` onto `t`.
    fn apply_move(&mut self, i: usize, n: usize, t: usize, share: f64) {
        let (point, m2) = (self.point[i] * share, self.margin2[i] * share * share);
        self.base[n] -= point;
        self.var[n] -= m2;
        self.base[t] += point;
        self.var[t] += m2;
        if share >= 1.0 {
            self.count[n] -= 1;
            self.count[t] += 1;
            self.memory.moved(self.c.partitions[i].id, n, self.c.now);
        } else {
            self.count[t] += 1;
        }
        self.taken[i] = true;
        self.busy[n] = true;
        self.busy[t] = true;
        self.slots -= 1;
    }

    fn decide(&mut self, action: Action, cost: Cost, reason: String) {
        self.decisions.push(Decision {
            action,
            cost,
            reason,
        });
    }

    /// Once there are more partitions than `merge_above`: merge adjacent
    /// pairs on one node that stay cold together, coldest first.
    pub(super) fn merge_cold_neighbours(&mut self) {
        let total = self.c.partitions.len();
        if self.s.merge_above == 0 || total <= self.s.merge_above || self.slots == 0 {
            return;
        }
        let want = (total - self.s.merge_above)
            .min(self.slots)
            .min(MERGES_PER_ROUND);
        let mut order: Vec<usize> = (0..total).collect();
        order.sort_by_key(|&i| self.c.partitions[i].lo);
        let mut pairs = Vec::new();
        for w in order.windows(2) {
            let (i, j) = (w[0], w[1]);
            let (a, b) = (&self.c.partitions[i], &self.c.partitions[j]);
            if a.node != b.node
                || a.node >= self.c.nodes.len()
                || a.hi.checked_add(1) != Some(b.lo)
                || a.moving_to.is_some()
                || b.moving_to.is_some()
                || self.taken[i]
                || self.taken[j]
            {
                continue;
            }
            let load = self.point[i] + self.point[j] + (self.margin2[i] + self.margin2[j]).sqrt();
            let line = self.s.merge_load * self.s.threshold * self.c.nodes[a.node].capacity;
            if load < line {
                pairs.push((load, i, j));
            }
        }
        pairs.sort_by(|x, y| x.0.total_cmp(&y.0));
        let mut done = 0;
        for (load, i, j) in pairs {
            if done >= want {
                break;
            }
            if self.taken[i] || self.taken[j] {
                continue;
            }
            self.taken[i] = true;
            self.taken[j] = true;
            let n = self.c.partitions[i].node;
            self.count[n] -= 1;
            self.slots -= 1;
            done += 1;
            let reason = format!(
                "{total} partitions, more than merge_above {}: partitions {} and {} are neighbours on {} \
                 and together expected at {load:.1} req/s ({:.3} of its capacity): merge them (no copy)",
                self.s.merge_above,
                self.c.partitions[i].id,
                self.c.partitions[j].id,
                self.c.nodes[n].name,
                ratio(load, self.c.nodes[n].capacity)
            );
            let cost = self.m.price_merge();
            self.decide(
                Action::Merge {
                    partitions: [self.c.partitions[i].id, self.c.partitions[j].id],
                    node: n,
                },
                cost,
                reason,
            );
        }
    }
}

fn ratio(load: f64, capacity: f64) -> f64 {
    if capacity > 0.0 {
        load / capacity
    } else {
        0.0
    }
}

fn crossing_note(now: f64, expected: f64, line: f64, horizon: f64) -> String {
    match cost::crossing_secs(now, expected, line, horizon) {
        Some(0.0) => format!(", over {line:.2} already"),
        Some(s) => format!(", crossing {line:.2} in ~{}", human_secs(s)),
        None => String::new(),
    }
}
