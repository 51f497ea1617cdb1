//! One planning round: which hot node to relieve, which partition to take
//! off it, where to put it, what to split and what to merge.
//!
//! Greedy and cheap, because the simulator runs it every five simulated
//! minutes over 100,000 partitions: the hottest nodes first, one migration
//! per node at a time (a node copies one partition at once), and for each
//! the partition that brings it under the threshold with the fewest bytes
//! — or, when none alone is enough, the most relief per round the move
//! keeps the node busy —
//! onto the least loaded node that stays under the threshold minus a
//! hysteresis margin. A node's expected load is the peak over the horizon
//! of its partitions' summed forecast paths (or its load now, if higher),
//! plus the root of the sum of their squared margins (the upper bounds'
//! excess), so independent uncertainties are not added up as if every
//! partition peaked at once.

use super::cost::{self, Cost};
use super::{human_bytes, human_secs, Action, Cluster, Decision, Memory, Policy, Settings};

/// Targets examined per candidate partition, lowest utilization first.
const TARGETS_TRIED: usize = 4;
/// Merges decided in one round at most.
const MERGES_PER_ROUND: usize = 16;
/// Steps of a forecast path the planner keeps at most.
const MAX_STEPS: usize = 48;

pub(super) struct Round<'a> {
    c: &'a Cluster,
    s: &'a Settings,
    m: cost::Model,
    memory: &'a mut Memory,
    /// Steps in every node's path over the horizon.
    k: usize,
    /// Per partition: its peak over the horizon, its squared margin, and
    /// the load now.
    point: Vec<f64>,
    current: Vec<f64>,
    margin2: Vec<f64>,
    /// Per partition: already decided on this round.
    taken: Vec<bool>,
    /// Per node: Σ path (k steps each), Σ margin², copy load, load now
    /// where the partitions will be (moves done) and where they are, busy,
    /// partitions.
    base: Vec<f64>,
    var: Vec<f64>,
    extra: Vec<f64>,
    now: Vec<f64>,
    shown: Vec<f64>,
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
        let k = match s.policy {
            Policy::Reactive => Some(1),
            Policy::Oracle => c.partitions.iter().map(|p| p.future.len()).max(),
            Policy::Predictive | Policy::Off => c.partitions.iter().map(|p| p.path.len()).max(),
        }
        .unwrap_or(1)
        .clamp(1, MAX_STEPS);
        let mut r = Round {
            c,
            s,
            m: s.model(),
            memory,
            k,
            point: Vec::with_capacity(c.partitions.len()),
            current: Vec::with_capacity(c.partitions.len()),
            margin2: Vec::with_capacity(c.partitions.len()),
            taken: vec![false; c.partitions.len()],
            base: vec![0.0; n * k],
            var: vec![0.0; n],
            extra: vec![0.0; n],
            now: vec![0.0; n],
            shown: vec![0.0; n],
            busy: vec![false; n],
            count: vec![0; n],
            by_node: vec![Vec::new(); n],
            slots: s.max_concurrent.saturating_sub(c.running),
            decisions: Vec::new(),
            notes: Vec::new(),
        };
        for (i, p) in c.partitions.iter().enumerate() {
            let margin = match s.policy {
                Policy::Reactive => 0.0,
                Policy::Oracle if !p.future.is_empty() => 0.0,
                _ => (p.upper - p.predicted).max(0.0),
            };
            let peak = (0..k).map(|j| r.step(i, j)).fold(0.0, f64::max);
            r.point.push(peak);
            r.current.push(p.current);
            r.margin2.push(margin * margin);
            if p.node >= n {
                continue;
            }
            r.shown[p.node] += p.current;
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
            r.now[home] += p.current;
            for j in 0..k {
                r.base[home * k + j] += r.step(i, j);
            }
            r.var[home] += margin * margin;
            r.count[home] += 1;
            r.by_node[home].push(i);
        }
        r
    }

    /// Partition `i`'s planned load at step `j` of the horizon.
    fn step(&self, i: usize, j: usize) -> f64 {
        let p = &self.c.partitions[i];
        let path: &[f32] = match self.s.policy {
            Policy::Reactive => return p.current,
            Policy::Oracle if !p.future.is_empty() => &p.future,
            _ => &p.path,
        };
        if path.is_empty() {
            return p.predicted;
        }
        // Paths shorter than k are stretched over the horizon.
        let at = ((j + 1) * path.len()).div_ceil(self.k).clamp(1, path.len()) - 1;
        path[at] as f64
    }

    /// What node `n` is planned to carry: `reactive`, its load now; the
    /// others, the peak of its path over the horizon plus its share of the
    /// forecasts' uncertainty, or its load now if higher (a node over the
    /// threshold is relieved even when no forecast saw it coming). Plus the
    /// copies it takes part in.
    fn expected(&self, n: usize) -> f64 {
        self.expected_with(n, usize::MAX, 0.0)
    }

    /// `expected` with `share` of partition `i` moved off the node (or onto
    /// it, for a negative share).
    fn expected_with(&self, n: usize, i: usize, share: f64) -> f64 {
        let moved = |v: f64| if i == usize::MAX { 0.0 } else { share * v };
        if self.s.policy == Policy::Reactive {
            let current = if i == usize::MAX {
                0.0
            } else {
                self.current[i]
            };
            return self.now[n] - moved(current) + self.extra[n];
        }
        let k = self.k;
        let mut peak = f64::MIN;
        for j in 0..k {
            let step = if i == usize::MAX {
                0.0
            } else {
                self.step(i, j)
            };
            peak = peak.max(self.base[n * k + j] - moved(step));
        }
        let m2 = if i == usize::MAX {
            0.0
        } else {
            self.margin2[i]
        };
        let var = self.var[n] - share * share.abs() * m2;
        let current = if i == usize::MAX {
            0.0
        } else {
            self.current[i]
        };
        (self.now[n] - moved(current)).max(peak + var.max(0.0).sqrt()) + self.extra[n]
    }

    /// Seconds until node `n`'s path crosses the threshold (0: over now).
    pub(super) fn crossing(&self, n: usize) -> Option<f64> {
        let cap = self.c.nodes[n].capacity;
        let line = self.s.threshold * cap;
        if self.s.policy == Policy::Reactive {
            return (self.expected(n) > line).then_some(0.0);
        }
        if self.now[n] + self.extra[n] > line {
            return Some(0.0);
        }
        // Linear between now and each step of the path.
        let k = self.k;
        let margin = self.var[n].max(0.0).sqrt() + self.extra[n];
        let step = self.s.horizon as f64 / k as f64;
        let mut prev = self.now[n] + self.extra[n];
        for j in 0..k {
            let v = self.base[n * k + j] + margin;
            if v > line {
                return Some(
                    j as f64 * step + step * (line - prev).max(0.0) / (v - prev).max(1e-9),
                );
            }
            prev = v;
        }
        None
    }

    pub(super) fn utilization(&self, n: usize) -> f64 {
        ratio(self.expected(n), self.c.nodes[n].capacity)
    }

    pub(super) fn utilization_now(&self, n: usize) -> f64 {
        ratio(self.shown[n], self.c.nodes[n].capacity)
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
    fn target(&self, i: usize, share: f64, from: usize, targets: &[usize]) -> Option<(usize, f64)> {
        let line = self.s.threshold - self.s.hysteresis;
        let mut best: Option<(usize, f64)> = None;
        let mut tried = 0;
        for &t in targets {
            if t == from || self.busy[t] {
                continue;
            }
            let cap = self.c.nodes[t].capacity;
            let after = self.expected_with(t, i, -share);
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
        // The partition with the most relief that no node can take whole.
        let mut stuck: Option<(usize, f64)> = None;
        for &i in &self.by_node[n] {
            let p = &self.c.partitions[i];
            if self.taken[i] || p.moving_to.is_some() || self.cooling(i).is_some() {
                continue;
            }
            let load = self.point[i].max(self.current[i]);
            if load > fits_anywhere {
                if too_hot.is_none_or(|j| load > self.point[j].max(self.current[j])) {
                    too_hot = Some(i);
                }
                continue;
            }
            let relief = total - self.expected_with(n, i, 1.0);
            if relief <= 0.0 {
                continue;
            }
            let Some((t, after)) = self.target(i, 1.0, n, targets) else {
                if stuck.is_none_or(|(_, r)| relief > r) {
                    stuck = Some((i, relief));
                }
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
                // A node takes part in one move at a time, and a round
                // comes every `interval`: relief per round it keeps busy.
                let rate = relief / self.m.lead_secs(p.bytes).max(self.s.interval as f64);
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
        // The main cause of the overload fits nowhere whole: split it, so
        // half can go where it fits, rather than nibbling at the rest.
        if let Some((i, relief)) = stuck {
            if relief >= excess / 2.0
                && chosen.is_none_or(|(.., r)| relief > 2.0 * r)
                && self.target(i, 0.5, n, targets).is_some()
            {
                self.split(n, i, targets);
                return;
            }
        }
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
        // Act only if waiting a round would leave too little time: the node
        // sheds one partition per move and takes part in one move at a time,
        // so shedding `excess` takes about excess ÷ relief moves.
        let crossing = self.crossing(n);
        let interval = self.s.interval as f64;
        let moves = (excess / relief).ceil().clamp(1.0, 100.0);
        let needed = moves * lead.max(interval) + interval;
        if self.s.policy != Policy::Reactive {
            if let Some(when) = crossing.filter(|w| *w > needed) {
                self.notes.push(format!(
                    "{name} is expected at {util:.2} within {}, crossing {:.2} in ~{}; {moves:.0} move(s) of ~{} each would do: not yet",
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
            crossing_note(crossing, self.s.threshold),
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

    /// A partition too hot for any node (or for any with room now): split
    /// it, and move the upper half where it fits.
    fn split(&mut self, n: usize, i: usize, targets: &[usize]) {
        let c = self.c;
        let p = &c.partitions[i];
        let cap = self.c.nodes[n].capacity;
        let to = self.target(i, 0.5, n, targets).map(|(t, _)| t);
        let cost = self.m.price_split(
            p.bytes,
            self.point[i].max(self.current[i]),
            (self.expected(n), cap),
            to.map(|t| (self.expected(t), self.c.nodes[t].capacity)),
        );
        let reason = format!(
            "{} is expected at {:.2}; partition {} alone is expected at {:.0} req/s ({:.2} of {}'s capacity) \
             and no node has room for it whole under {:.2}: split it{}",
            self.c.nodes[n].name,
            self.utilization(n),
            p.id,
            self.point[i].max(self.current[i]),
            self.point[i].max(self.current[i]) / cap,
            self.c.nodes[n].name,
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
        let k = self.k;
        for j in 0..k {
            let v = self.step(i, j) * share;
            self.base[n * k + j] -= v;
            self.base[t * k + j] += v;
        }
        let (m2, now) = (self.margin2[i] * share * share, self.current[i] * share);
        self.var[n] -= m2;
        self.now[n] -= now;
        self.var[t] += m2;
        self.now[t] += now;
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
            let load = (self.point[i] + (self.margin2[i] + self.margin2[j]).sqrt() + self.point[j])
                .max(self.current[i] + self.current[j]);
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

fn crossing_note(crossing: Option<f64>, line: f64) -> String {
    match crossing {
        Some(0.0) => format!(", over {line:.2} already"),
        Some(s) => format!(", crossing {line:.2} in ~{}", human_secs(s)),
        None => String::new(),
    }
}
