//! Fixed-bucket histograms of atomics: recording is one relaxed add to a
//! bucket, one to the count and one to the sum, with no lock. Snapshots are
//! plain arrays that subtract (per-second deltas) and merge (per pool).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the buckets in seconds (Prometheus `le`), roughly
/// logarithmic from 1 ms to 2 min; one more bucket (`+Inf`) follows.
pub const BOUNDS: [f64; 22] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.4, 0.6, 1.0, 1.5, 2.5, 4.0,
    6.0, 10.0, 20.0, 30.0, 60.0, 120.0,
];

/// Number of buckets including `+Inf`.
pub const BUCKETS: usize = BOUNDS.len() + 1;

/// Bucket bounds in microseconds, for the hot path (integer compare).
const BOUNDS_US: [u64; 22] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    75_000,
    100_000,
    150_000,
    250_000,
    400_000,
    600_000,
    1_000_000,
    1_500_000,
    2_500_000,
    4_000_000,
    6_000_000,
    10_000_000,
    20_000_000,
    30_000_000,
    60_000_000,
    120_000_000,
];

/// A latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl Histogram {
    /// Record one observation.
    #[inline]
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BOUNDS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> HistSnapshot {
        let mut s = HistSnapshot::default();
        for (out, b) in s.buckets.iter_mut().zip(&self.buckets) {
            *out = b.load(Relaxed);
        }
        s.sum_us = self.sum_us.load(Relaxed);
        s
    }
}

/// Counts of a [`Histogram`] at one moment (per bucket, not cumulative).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistSnapshot {
    /// Observations per bucket; the last is `+Inf`.
    pub buckets: [u64; BUCKETS],
    /// Sum of observations in microseconds.
    pub sum_us: u64,
}

impl HistSnapshot {
    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Add another snapshot's counts.
    pub fn merge(&mut self, other: &HistSnapshot) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.sum_us += other.sum_us;
    }

    /// What was observed since `earlier` (saturating: a reset reads as zero).
    pub fn since(&self, earlier: &HistSnapshot) -> HistSnapshot {
        let mut d = HistSnapshot::default();
        for ((o, a), b) in d
            .buckets
            .iter_mut()
            .zip(&self.buckets)
            .zip(&earlier.buckets)
        {
            *o = a.saturating_sub(*b);
        }
        d.sum_us = self.sum_us.saturating_sub(earlier.sum_us);
        d
    }

    /// Estimated quantile `q` (0..1) in seconds, interpolated linearly
    /// within the bucket as Prometheus' `histogram_quantile` does; `None`
    /// without observations. The `+Inf` bucket reports the last bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if (seen + n) as f64 >= rank {
                let Some(&upper) = BOUNDS.get(i) else {
                    return Some(BOUNDS[BOUNDS.len() - 1]);
                };
                let lower = if i == 0 { 0.0 } else { BOUNDS[i - 1] };
                let within = (rank - seen as f64) / n as f64;
                return Some(lower + (upper - lower) * within.clamp(0.0, 1.0));
            }
            seen += n;
        }
        Some(BOUNDS[BOUNDS.len() - 1])
    }

    /// Mean in seconds.
    pub fn mean(&self) -> Option<f64> {
        let n = self.count();
        (n > 0).then(|| self.sum_us as f64 / 1e6 / n as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_quantiles() {
        let h = Histogram::default();
        for ms in [1u64, 3, 20, 20, 20, 20, 20, 20, 20, 900] {
            h.observe(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 10);
        assert_eq!(s.buckets[0], 1, "1 ms is <= 0.001");
        assert_eq!(s.buckets[2], 1, "3 ms in (2.5, 5]");
        assert_eq!(s.buckets[4], 7, "20 ms in (10, 25]");
        assert_eq!(s.buckets[12], 1, "900 ms in (0.6, 1]");
        let p50 = s.quantile(0.5).unwrap();
        assert!((0.01..=0.025).contains(&p50), "{p50}");
        let p99 = s.quantile(0.99).unwrap();
        assert!((0.6..=1.0).contains(&p99), "{p99}");
        assert_eq!(s.sum_us, 1_044_000);
        assert!(HistSnapshot::default().quantile(0.5).is_none());
    }

    #[test]
    fn since_and_merge() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(5));
        let a = h.snapshot();
        h.observe(Duration::from_secs(500));
        let b = h.snapshot();
        let d = b.since(&a);
        assert_eq!(d.count(), 1);
        assert_eq!(d.buckets[BUCKETS - 1], 1, "+Inf");
        assert_eq!(d.quantile(0.5), Some(120.0));
        let mut m = a;
        m.merge(&d);
        assert_eq!(m, b);
    }
}
