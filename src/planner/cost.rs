//! The cost model: what a move, split or merge costs and what it buys.
//!
//! Pure functions of numbers, so the planner, the simulator and the tests
//! price a migration the same way. Loads are requests per second; a node's
//! overload is how far its utilization sits above the planner's threshold,
//! and a benefit is overload avoided over the horizon, in node-seconds
//! (one node one full capacity over the threshold for one second = 1).

use serde::Serialize;

/// A copy with no rate limit is assumed to run at this many bytes per second.
const UNTHROTTLED: f64 = 1024.0 * 1024.0 * 1024.0;

/// What a migration would cost and buy, as the planner explains it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Cost {
    /// Bytes copied from the source to the target.
    pub bytes: u64,
    /// Seconds the copy takes at the copy rate.
    pub copy_secs: f64,
    /// Write pause at the cut-over, in seconds.
    pub pause_secs: f64,
    /// Extra load on the source while it copies (requests/s equivalent).
    pub source_extra: f64,
    /// Extra load on the target while it copies.
    pub target_extra: f64,
    /// Overload avoided on the source minus overload added on the target
    /// and by the copy itself, over the horizon (node-seconds).
    pub benefit: f64,
}

/// The parameters of the model (from `[planner]`).
#[derive(Debug, Clone, Copy)]
pub struct Model {
    /// Bytes per second a copy runs at (0: unthrottled).
    pub copy_rate: f64,
    /// Share of a node's capacity a copy takes, on the source and on the target.
    pub copy_load: f64,
    /// Write pause at a cut-over, in seconds.
    pub pause_secs: f64,
    /// Utilization a node must stay under.
    pub threshold: f64,
    /// Seconds ahead the plan looks.
    pub horizon: f64,
}

impl Model {
    /// Seconds to copy `bytes`.
    pub fn copy_secs(&self, bytes: u64) -> f64 {
        let rate = if self.copy_rate > 0.0 {
            self.copy_rate
        } else {
            UNTHROTTLED
        };
        bytes as f64 / rate
    }

    /// Seconds from deciding a move to its cut-over.
    pub fn lead_secs(&self, bytes: u64) -> f64 {
        self.copy_secs(bytes) + self.pause_secs
    }

    /// Utilization above the threshold, as a share of capacity (0 if under).
    pub fn over(&self, load: f64, capacity: f64) -> f64 {
        if capacity <= 0.0 {
            return if load > 0.0 { 1.0 } else { 0.0 };
        }
        (load / capacity - self.threshold).max(0.0)
    }

    /// Prices moving `moved` requests/s held in `bytes` from a source
    /// carrying `source` (capacity `source_cap`) to a target carrying
    /// `target` (capacity `target_cap`). Loads are the ones expected over
    /// the horizon.
    pub fn price_move(
        &self,
        bytes: u64,
        moved: f64,
        (source, source_cap): (f64, f64),
        (target, target_cap): (f64, f64),
    ) -> Cost {
        let copy_secs = self.copy_secs(bytes);
        let source_extra = self.copy_load * source_cap;
        let target_extra = self.copy_load * target_cap;
        // The move pays off for the part of the horizon after its cut-over.
        let after = (self.horizon - copy_secs - self.pause_secs).max(0.0);
        let relieved = self.over(source, source_cap) - self.over(source - moved, source_cap);
        let added = self.over(target + moved, target_cap) - self.over(target, target_cap);
        // While copying, both nodes carry the copy on top of their load.
        let copying = copy_secs.min(self.horizon)
            * ((self.over(source + source_extra, source_cap) - self.over(source, source_cap))
                + (self.over(target + target_extra, target_cap) - self.over(target, target_cap)));
        Cost {
            bytes,
            copy_secs,
            pause_secs: self.pause_secs,
            source_extra,
            target_extra,
            benefit: (relieved - added) * after - copying,
        }
    }

    /// Prices a split: no copy (the halves stay on their node) unless the
    /// upper half moves, which is a move of half the bytes and load.
    pub fn price_split(
        &self,
        bytes: u64,
        load: f64,
        source: (f64, f64),
        target: Option<(f64, f64)>,
    ) -> Cost {
        match target {
            Some(t) => self.price_move(bytes / 2, load / 2.0, source, t),
            None => self.price_merge(),
        }
    }

    /// Prices merging two adjacent partitions on one node (or splitting
    /// one in place): a catalog change, no copy.
    pub fn price_merge(&self) -> Cost {
        Cost {
            bytes: 0,
            copy_secs: 0.0,
            pause_secs: self.pause_secs,
            source_extra: 0.0,
            target_extra: 0.0,
            benefit: 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        Model {
            copy_rate: 100.0 * 1024.0 * 1024.0,
            copy_load: 0.05,
            pause_secs: 0.05,
            threshold: 0.8,
            horizon: 1800.0,
        }
    }

    #[test]
    fn copy_time_is_bytes_over_rate() {
        let m = model();
        assert!((m.copy_secs(1024 * 1024 * 1024) - 10.24).abs() < 1e-9);
        let free = Model {
            copy_rate: 0.0,
            ..m
        };
        assert!(free.copy_secs(1 << 30) <= 1.0);
    }

    #[test]
    fn moving_load_off_an_overloaded_node_pays() {
        let m = model();
        // Source expected at 1.0 of its capacity, target at 0.4; move 0.2.
        let c = m.price_move(1 << 30, 200.0, (1000.0, 1000.0), (400.0, 1000.0));
        assert_eq!(c.bytes, 1 << 30);
        assert!(c.copy_secs > 10.0 && c.copy_secs < 11.0);
        // 0.2 over the threshold avoided for the horizon after the copy,
        // minus the copy's own load on the hot source (0.05 for ~10 s).
        let expect = 0.2 * (1800.0 - c.copy_secs - 0.05) - 0.05 * c.copy_secs;
        assert!((c.benefit - expect).abs() < 1e-6, "{c:?}");
        assert_eq!(c.source_extra, 50.0);
    }

    #[test]
    fn a_move_onto_a_node_that_then_overloads_buys_nothing() {
        let m = model();
        let c = m.price_move(1 << 20, 300.0, (1000.0, 1000.0), (700.0, 1000.0));
        // Relieves 0.2 of overload on the source, adds 0.2 on the target.
        assert!(c.benefit <= 0.0, "{c:?}");
        // A move off a node under the threshold buys nothing either.
        let c = m.price_move(1 << 20, 100.0, (500.0, 1000.0), (100.0, 1000.0));
        assert_eq!(c.benefit, 0.0);
    }

    #[test]
    fn a_copy_longer_than_the_horizon_buys_nothing() {
        let m = model();
        let c = m.price_move(1 << 40, 200.0, (1000.0, 1000.0), (100.0, 1000.0));
        assert!(c.copy_secs > 1800.0);
        assert!(c.benefit < 0.0, "{c:?}");
    }

    #[test]
    fn split_and_merge_prices() {
        let m = model();
        let stay = m.price_split(1 << 30, 900.0, (1000.0, 1000.0), None);
        assert_eq!(stay.bytes, 0);
        let moved = m.price_split(1 << 30, 900.0, (1000.0, 1000.0), Some((100.0, 1000.0)));
        assert_eq!(moved.bytes, 1 << 29);
        assert!(moved.benefit > 0.0);
        assert_eq!(m.price_merge().bytes, 0);
    }
}
