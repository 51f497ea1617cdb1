//! The recorder: every routed request adds to its partition's counters on
//! the hot path, with no lock shared by requests and no allocation.
//!
//! Each partition has four one-second slots indexed by `second % 4`. A
//! request adds (relaxed atomics) into the slot of the current second, read
//! from a coarse clock that a ticker advances, so recording makes no system
//! call. Once a second the roll-up drains (swaps to zero) the slot of the
//! second before last — no writer touches it any more — into the
//! partition's history: bounded rings of 1 s, 10 s and 1 min buckets, plus
//! an hour-of-week profile. Draining by swap means a late writer's count is
//! never lost, at worst attributed to the next second.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::ring::PartitionId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Read,
    Write,
}

/// One request's figures.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub kind: RequestKind,
    pub rows: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub latency_us: u64,
    pub error: bool,
}

/// Counts over some span of time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Bucket {
    pub reads: u64,
    pub writes: u64,
    pub rows: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub latency_us: u64,
    pub errors: u64,
}

impl Bucket {
    pub fn requests(&self) -> u64 {
        self.reads + self.writes
    }

    fn add(&mut self, o: &Bucket) {
        self.reads += o.reads;
        self.writes += o.writes;
        self.rows += o.rows;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.latency_us += o.latency_us;
        self.errors += o.errors;
    }

    /// Divides the counts between two children, `f` of each to the first,
    /// so that the two add up exactly to the original.
    fn split(&self, f: f64) -> (Bucket, Bucket) {
        let a = |v: u64| ((v as f64 * f).round() as u64).min(v);
        let first = Bucket {
            reads: a(self.reads),
            writes: a(self.writes),
            rows: a(self.rows),
            bytes_in: a(self.bytes_in),
            bytes_out: a(self.bytes_out),
            latency_us: a(self.latency_us),
            errors: a(self.errors),
        };
        let second = Bucket {
            reads: self.reads - first.reads,
            writes: self.writes - first.writes,
            rows: self.rows - first.rows,
            bytes_in: self.bytes_in - first.bytes_in,
            bytes_out: self.bytes_out - first.bytes_out,
            latency_us: self.latency_us - first.latency_us,
            errors: self.errors - first.errors,
        };
        (first, second)
    }
}

#[derive(Default)]
struct Slot {
    reads: AtomicU64,
    writes: AtomicU64,
    rows: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    latency_us: AtomicU64,
    errors: AtomicU64,
}

impl Slot {
    #[inline]
    fn add(&self, r: &Request) {
        match r.kind {
            RequestKind::Read => self.reads.fetch_add(1, Ordering::Relaxed),
            RequestKind::Write => self.writes.fetch_add(1, Ordering::Relaxed),
        };
        self.rows.fetch_add(r.rows, Ordering::Relaxed);
        self.bytes_in.fetch_add(r.bytes_in, Ordering::Relaxed);
        self.bytes_out.fetch_add(r.bytes_out, Ordering::Relaxed);
        self.latency_us.fetch_add(r.latency_us, Ordering::Relaxed);
        if r.error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn peek(&self) -> Bucket {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Bucket {
            reads: l(&self.reads),
            writes: l(&self.writes),
            rows: l(&self.rows),
            bytes_in: l(&self.bytes_in),
            bytes_out: l(&self.bytes_out),
            latency_us: l(&self.latency_us),
            errors: l(&self.errors),
        }
    }

    fn drain(&self) -> Bucket {
        let t = |a: &AtomicU64| a.swap(0, Ordering::Relaxed);
        Bucket {
            reads: t(&self.reads),
            writes: t(&self.writes),
            rows: t(&self.rows),
            bytes_in: t(&self.bytes_in),
            bytes_out: t(&self.bytes_out),
            latency_us: t(&self.latency_us),
            errors: t(&self.errors),
        }
    }
}

/// A ring of buckets at one resolution; `start` is the unix time of the
/// oldest kept bucket.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub step_secs: u64,
    pub start: u64,
    pub buckets: VecDeque<Bucket>,
    cap: usize,
}

impl Series {
    fn new(step_secs: u64, cap: usize) -> Self {
        Self {
            step_secs,
            start: 0,
            buckets: VecDeque::new(),
            cap,
        }
    }

    fn push(&mut self, at: u64, b: Bucket) {
        if self.buckets.is_empty() {
            self.start = at;
        }
        self.buckets.push_back(b);
        if self.buckets.len() > self.cap {
            self.buckets.pop_front();
            self.start += self.step_secs;
        }
    }
}

/// One partition's recorded past.
#[derive(Debug, Clone)]
pub struct History {
    pub total: Bucket,
    pub per_second: Series,
    pub per_10s: Series,
    pub per_minute: Series,
    ten: Bucket,
    minute: Bucket,
    /// Requests per hour of the week (0 = Monday 00:00 UTC) and minutes seen.
    pub week_profile: [(u64, u32); 168],
}

impl History {
    fn new(minutes: usize) -> Self {
        Self {
            total: Bucket::default(),
            per_second: Series::new(1, 600),
            per_10s: Series::new(10, 360),
            per_minute: Series::new(60, minutes.max(1)),
            ten: Bucket::default(),
            minute: Bucket::default(),
            week_profile: [(0, 0); 168],
        }
    }

    fn push_second(&mut self, sec: u64, b: Bucket) {
        self.total.add(&b);
        self.per_second.push(sec, b);
        self.ten.add(&b);
        self.minute.add(&b);
        if sec % 10 == 9 {
            self.per_10s.push(sec - 9, std::mem::take(&mut self.ten));
        }
        if sec % 60 == 59 {
            let m = std::mem::take(&mut self.minute);
            // 1970-01-01 was a Thursday: shift so hour 0 is Monday.
            let hour = ((sec / 3600) + 72) % 168;
            let slot = &mut self.week_profile[hour as usize];
            slot.0 += m.requests();
            slot.1 += 1;
            self.per_minute.push(sec - 59, m);
        }
    }

    /// Splits the history between two children (see [`Bucket::split`]).
    fn split(&self, f: f64) -> (History, History) {
        let (mut a, mut b) = (self.clone(), self.clone());
        (a.total, b.total) = self.total.split(f);
        (a.ten, b.ten) = self.ten.split(f);
        (a.minute, b.minute) = self.minute.split(f);
        for (sa, sb, src) in [
            (&mut a.per_second, &mut b.per_second, &self.per_second),
            (&mut a.per_10s, &mut b.per_10s, &self.per_10s),
            (&mut a.per_minute, &mut b.per_minute, &self.per_minute),
        ] {
            (sa.buckets, sb.buckets) = src.buckets.iter().map(|x| x.split(f)).unzip();
        }
        for ((pa, pb), src) in a
            .week_profile
            .iter_mut()
            .zip(b.week_profile.iter_mut())
            .zip(self.week_profile.iter())
        {
            pa.0 = ((src.0 as f64 * f).round() as u64).min(src.0);
            pb.0 = src.0 - pa.0;
        }
        (a, b)
    }
}

struct PartitionRec {
    slots: [Slot; 4],
    history: Mutex<History>,
}

/// Per-source totals (application_name, user), interned at connect time.
pub struct Source {
    pub application: String,
    pub user: String,
    slot: Slot,
}

/// Interned id of a client's source.
pub type SourceId = u32;

const MAX_SOURCES: usize = 1024;
/// `drained` before the first tick.
const UNSET: u64 = u64::MAX;

/// A coarse clock in whole unix seconds, advanced by the roll-up task, so
/// the hot path reads an atomic instead of calling the OS.
pub struct Clock(AtomicU64);

impl Clock {
    fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
    #[inline]
    pub fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    pub fn set(&self, secs: u64) {
        self.0.store(secs, Ordering::Relaxed);
    }
}

pub struct Recorder {
    enabled: bool,
    history_minutes: usize,
    pub clock: Clock,
    parts: ArcSwap<Vec<Option<Arc<PartitionRec>>>>,
    sources: ArcSwap<Vec<Arc<Source>>>,
    source_index: Mutex<std::collections::HashMap<(String, String), SourceId>>,
    /// The last second whose slots were drained.
    drained: AtomicU64,
}

impl Recorder {
    pub fn new(enabled: bool, history_minutes: usize) -> Self {
        let now = Clock::unix_now();
        Self {
            enabled,
            history_minutes,
            clock: Clock(AtomicU64::new(now)),
            parts: ArcSwap::from_pointee(Vec::new()),
            sources: ArcSwap::from_pointee(Vec::new()),
            source_index: Mutex::new(Default::default()),
            drained: AtomicU64::new(UNSET),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Makes sure these partitions are recorded (on every routing change).
    pub fn ensure(&self, ids: impl IntoIterator<Item = PartitionId>) {
        let cur = self.parts.load();
        let mut next: Option<Vec<_>> = None;
        for id in ids {
            let i = id as usize;
            let v = next.get_or_insert_with(|| cur.to_vec());
            if v.len() <= i {
                v.resize(i + 1, None);
            }
            if v[i].is_none() {
                v[i] = Some(Arc::new(PartitionRec {
                    slots: Default::default(),
                    history: Mutex::new(History::new(self.history_minutes)),
                }));
            }
        }
        if let Some(v) = next {
            if v.len() != cur.len()
                || v.iter()
                    .zip(cur.iter())
                    .any(|(a, b)| a.is_some() != b.is_some())
            {
                self.parts.store(Arc::new(v));
            }
        }
    }

    /// Interns a client's source; called once per connection, not per request.
    pub fn source(&self, application: &str, user: &str) -> SourceId {
        let mut idx = self.source_index.lock();
        if let Some(id) = idx.get(&(application.to_string(), user.to_string())) {
            return *id;
        }
        let cur = self.sources.load();
        if cur.len() >= MAX_SOURCES {
            return (MAX_SOURCES - 1) as SourceId;
        }
        let (application, user) = if cur.len() == MAX_SOURCES - 1 {
            ("(other)".to_string(), "(other)".to_string())
        } else {
            (application.to_string(), user.to_string())
        };
        let mut v = cur.to_vec();
        v.push(Arc::new(Source {
            application: application.clone(),
            user: user.clone(),
            slot: Slot::default(),
        }));
        let id = (v.len() - 1) as SourceId;
        self.sources.store(Arc::new(v));
        idx.insert((application, user), id);
        id
    }

    /// Records one request. The hot path: a few relaxed atomic adds.
    #[inline]
    pub fn record(&self, partition: Option<PartitionId>, source: SourceId, r: &Request) {
        if !self.enabled {
            return;
        }
        let sec = self.clock.now();
        if let Some(p) = partition {
            if let Some(Some(rec)) = self.parts.load().get(p as usize) {
                rec.slots[(sec & 3) as usize].add(r);
            }
        }
        if let Some(s) = self.sources.load().get(source as usize) {
            s.slot.add(r);
        }
    }

    /// Advances the clock and drains every finished second into history.
    /// Called once a second by the roll-up task (or by a test with a time).
    pub fn tick(&self, now: u64) {
        self.clock.set(now);
        let upto = now.saturating_sub(2);
        let drained = self.drained.load(Ordering::Relaxed);
        if drained == UNSET || drained > upto {
            // The first tick (or a clock step back) sets the baseline.
            self.drained.store(upto, Ordering::Relaxed);
            return;
        }
        let from = drained + 1;
        if upto < from {
            return;
        }
        // After a stall, older seconds' slots were reused; drain at most four.
        let from = from.max(upto.saturating_sub(3));
        let parts = self.parts.load();
        for rec in parts.iter().flatten() {
            let mut h = rec.history.lock();
            for sec in from..=upto {
                h.push_second(sec, rec.slots[(sec & 3) as usize].drain());
            }
        }
        self.drained.store(upto, Ordering::Relaxed);
    }

    pub fn tick_now(&self) {
        self.tick(Clock::unix_now());
    }

    /// A copy of one partition's history.
    pub fn history(&self, p: PartitionId) -> Option<History> {
        self.parts
            .load()
            .get(p as usize)?
            .as_ref()
            .map(|r| r.history.lock().clone())
    }

    /// Requests in each of a partition's last `n` ten-second buckets, oldest
    /// first (for the status page; copies only what it returns).
    pub fn recent_10s(&self, p: PartitionId, n: usize) -> Vec<u64> {
        let parts = self.parts.load();
        let Some(Some(rec)) = parts.get(p as usize) else {
            return Vec::new();
        };
        let h = rec.history.lock();
        let b = &h.per_10s.buckets;
        b.iter()
            .skip(b.len().saturating_sub(n))
            .map(|x| x.requests())
            .collect()
    }

    /// Every recorded partition's totals, including seconds not yet rolled up.
    pub fn totals(&self) -> Vec<(PartitionId, Bucket)> {
        self.parts
            .load()
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                r.as_ref().map(|r| {
                    let mut t = r.history.lock().total;
                    for s in &r.slots {
                        t.add(&s.peek());
                    }
                    (i as PartitionId, t)
                })
            })
            .collect()
    }

    /// Per-source totals so far (including the seconds not yet rolled up).
    pub fn sources(&self) -> Vec<(String, String, Bucket)> {
        self.sources
            .load()
            .iter()
            .map(|s| (s.application.clone(), s.user.clone(), s.slot.peek()))
            .collect()
    }

    /// A split partition's children inherit its history: `fraction` of it
    /// for the first child (the observed share of keys, or 0.5).
    pub fn split(&self, parent: PartitionId, children: [PartitionId; 2], fraction: f64) {
        self.ensure(children);
        let Some(h) = self.history(parent) else {
            return;
        };
        let (a, b) = h.split(fraction.clamp(0.0, 1.0));
        let parts = self.parts.load();
        for (child, h) in children.into_iter().zip([a, b]) {
            if let Some(Some(rec)) = parts.get(child as usize) {
                *rec.history.lock() = h;
            }
        }
    }

    /// A merged partition's history is the sum of its parts'.
    pub fn merge(&self, parts_in: [PartitionId; 2], into: PartitionId) {
        self.ensure([into]);
        let (Some(a), Some(b)) = (self.history(parts_in[0]), self.history(parts_in[1])) else {
            return;
        };
        let mut m = a.clone();
        m.total.add(&b.total);
        for (sa, sb) in [
            (&mut m.per_second, &b.per_second),
            (&mut m.per_10s, &b.per_10s),
            (&mut m.per_minute, &b.per_minute),
        ] {
            // Align on time: both were filled by the same ticks.
            let offset = (sb.start as i64 - sa.start as i64) / sa.step_secs.max(1) as i64;
            for (i, bb) in sb.buckets.iter().enumerate() {
                let j = i as i64 + offset;
                if j >= 0 && (j as usize) < sa.buckets.len() {
                    sa.buckets[j as usize].add(bb);
                }
            }
        }
        for (p, q) in m.week_profile.iter_mut().zip(b.week_profile.iter()) {
            p.0 += q.0;
            p.1 = p.1.max(q.1);
        }
        if let Some(Some(rec)) = self.parts.load().get(into as usize) {
            *rec.history.lock() = m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(kind: RequestKind) -> Request {
        Request {
            kind,
            rows: 1,
            bytes_in: 10,
            bytes_out: 20,
            latency_us: 100,
            error: false,
        }
    }

    #[test]
    fn seconds_roll_up_without_loss() {
        let r = Recorder::new(true, 60);
        r.ensure([0, 1]);
        let t0 = 1_700_000_000 - 1_700_000_000 % 60; // a minute boundary
        r.tick(t0);
        let src = r.source("app", "alice");
        for s in 0..120u64 {
            r.tick(t0 + s);
            for _ in 0..s % 5 {
                r.record(Some(0), src, &req(RequestKind::Read));
            }
            r.record(Some(1), src, &req(RequestKind::Write));
        }
        r.tick(t0 + 122);
        let h0 = r.history(0).unwrap();
        let expect_reads: u64 = (0..120u64).map(|s| s % 5).sum();
        assert_eq!(h0.total.reads, expect_reads);
        let at = |series: &Series, t: u64| {
            series.buckets[((t - series.start) / series.step_secs) as usize]
        };
        assert_eq!(at(&h0.per_second, t0 + 7).reads, 2);
        assert_eq!(at(&h0.per_second, t0 + 119).reads, 4);
        assert_eq!(
            at(&h0.per_10s, t0 + 10).reads,
            (10..20u64).map(|s| s % 5).sum::<u64>()
        );
        assert_eq!(
            at(&h0.per_minute, t0).reads,
            (0..60u64).map(|s| s % 5).sum::<u64>()
        );
        assert_eq!(
            h0.per_second.buckets.iter().map(|b| b.reads).sum::<u64>(),
            expect_reads
        );
        let h1 = r.history(1).unwrap();
        assert_eq!(h1.total.writes, 120);
        let srcs = r.sources();
        assert_eq!(srcs[0].2.reads + srcs[0].2.writes, expect_reads + 120);
    }

    #[test]
    fn disabled_records_nothing_and_unknown_partitions_are_ignored() {
        let r = Recorder::new(false, 10);
        r.ensure([0]);
        r.record(Some(0), 0, &req(RequestKind::Read));
        r.tick(r.clock.now() + 5);
        assert_eq!(r.history(0).unwrap().total.reads, 0);
        let r = Recorder::new(true, 10);
        r.record(Some(42), 0, &req(RequestKind::Read)); // no panic
    }

    #[test]
    fn split_and_merge_carry_history() {
        let r = Recorder::new(true, 10);
        r.ensure([0, 1]);
        let t0 = 1_700_000_000;
        r.tick(t0);
        for s in 0..30 {
            r.tick(t0 + s);
            for _ in 0..10 {
                r.record(Some(0), 0, &req(RequestKind::Read));
            }
        }
        r.tick(t0 + 32);
        r.split(0, [2, 3], 0.25);
        assert_eq!(r.history(2).unwrap().total.reads, 75);
        assert_eq!(r.history(3).unwrap().total.reads, 225);
        r.merge([2, 3], 4);
        let m = r.history(4).unwrap();
        assert_eq!(m.total.reads, 300);
        assert_eq!(
            m.per_second.buckets.iter().map(|b| b.reads).sum::<u64>(),
            300
        );
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let r = Arc::new(Recorder::new(true, 10));
        r.ensure([0]);
        let t0 = 1_700_000_000;
        r.tick(t0);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for _ in 0..200_000 {
                        r.record(Some(0), 0, &req(RequestKind::Write));
                    }
                })
            })
            .collect();
        let ticker = {
            let r = r.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut t = t0;
                while !stop.load(Ordering::Relaxed) {
                    t += 1;
                    r.tick(t);
                    std::thread::yield_now();
                }
                t
            })
        };
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let t = ticker.join().unwrap();
        r.tick(t + 10);
        r.tick(t + 20);
        assert_eq!(r.history(0).unwrap().total.writes, 800_000);
    }
}
