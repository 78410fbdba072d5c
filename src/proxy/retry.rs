//! When a failed attempt may be tried again on another node.
//!
//! What is retried (while nothing has reached the client and the request
//! body can be replayed), and what it costs:
//!
//! | the attempt ended with | retried | counts against `retries` and the budget |
//! |---|---|---|
//! | no connection (refused, unreachable, connect timeout) | yes, on every node not yet tried | no: nothing reached a node |
//! | connection closed or reset before the response head | yes | yes |
//! | no response head within `timeouts.first_byte` | yes | yes |
//! | a status in `retry_on_status` (default 500, 502, 503, 504) | yes | yes |
//! | a response that started streaming to the client | never | — |
//!
//! The budget bounds how much extra load retries can add when many nodes
//! fail at once (e.g. an overloaded pool answering 503): over a sliding
//! window, retries may be `percent` of the route's requests plus
//! `min_per_second` per second (Finagle's and Linkerd's token budget). A
//! rate rather than Envoy's share of requests in flight (`budget_percent`,
//! `min_retry_concurrency`), because a node that dies or hangs fails every
//! request it holds at the same moment: a concurrency share refuses most of
//! that burst, while a rate absorbs it and still caps a retry storm at
//! `1 + percent/100` times the offered load (plus the small floor). A
//! concurrency floor would not cap a storm of fast failures at all.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::config::RetryBudgetConfig;

/// Buckets of the sliding window.
const BUCKETS: usize = 10;
/// Bits of a bucket word holding the count; the rest hold the bucket's
/// epoch (which window slice it counts), so a stale bucket is recognised
/// and restarted without a timer.
const COUNT_BITS: u32 = 40;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const EPOCH_MASK: u64 = (1 << (64 - COUNT_BITS)) - 1;

/// Events counted over a sliding window of [`BUCKETS`] slices, lock-free.
#[derive(Debug)]
struct WindowCounter {
    buckets: [AtomicU64; BUCKETS],
}

impl WindowCounter {
    fn new() -> WindowCounter {
        WindowCounter {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Count one event in slice `epoch`.
    fn add(&self, epoch: u64) {
        let bucket = &self.buckets[(epoch % BUCKETS as u64) as usize];
        let tag = (epoch & EPOCH_MASK) << COUNT_BITS;
        let mut current = bucket.load(Relaxed);
        loop {
            let next = if current & !COUNT_MASK == tag {
                current + 1
            } else {
                tag | 1
            };
            match bucket.compare_exchange_weak(current, next, Relaxed, Relaxed) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    /// Events in the `BUCKETS` slices ending with `epoch`.
    fn sum(&self, epoch: u64) -> u64 {
        self.buckets
            .iter()
            .map(|b| b.load(Relaxed))
            .filter(|word| {
                let age = (epoch & EPOCH_MASK).wrapping_sub(word >> COUNT_BITS) & EPOCH_MASK;
                age < BUCKETS as u64
            })
            .map(|word| word & COUNT_MASK)
            .sum()
    }
}

/// A route's retry budget: see the module documentation.
#[derive(Debug)]
pub struct RetryBudget {
    config: RetryBudgetConfig,
    slice: Duration,
    requests: WindowCounter,
    retries: WindowCounter,
    in_flight: AtomicU64,
}

impl RetryBudget {
    /// A budget with nothing spent.
    pub fn new(config: RetryBudgetConfig) -> RetryBudget {
        RetryBudget {
            config,
            slice: (config.window / BUCKETS as u32).max(Duration::from_millis(1)),
            requests: WindowCounter::new(),
            retries: WindowCounter::new(),
            in_flight: AtomicU64::new(0),
        }
    }

    fn epoch(&self, now: Duration) -> u64 {
        (now.as_nanos() / self.slice.as_nanos()) as u64
    }

    /// A request arrived on the route (`now`: time since the process's
    /// health epoch, or any monotonic origin used consistently).
    pub fn deposit(&self, now: Duration) {
        self.requests.add(self.epoch(now));
    }

    /// Take one retry; `None` when the budget is spent. The guard keeps the
    /// retry counted in flight (for metrics) until dropped.
    pub fn withdraw(&self, now: Duration) -> Option<RetryGuard<'_>> {
        let epoch = self.epoch(now);
        let window_secs = self.config.window.as_secs_f64();
        let allowed = self.requests.sum(epoch) as f64 * f64::from(self.config.percent) / 100.0
            + f64::from(self.config.min_per_second) * window_secs;
        if (self.retries.sum(epoch) as f64) < allowed {
            self.retries.add(epoch);
            self.in_flight.fetch_add(1, Relaxed);
            Some(RetryGuard { budget: self })
        } else {
            None
        }
    }

    /// Retries in flight now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }
}

/// A retry counted in flight against its budget.
pub struct RetryGuard<'a> {
    budget: &'a RetryBudget,
}

impl Drop for RetryGuard<'_> {
    fn drop(&mut self) {
        self.budget.in_flight.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(percent: u32, min_per_second: u32) -> RetryBudget {
        RetryBudget::new(RetryBudgetConfig {
            percent,
            min_per_second,
            window: Duration::from_secs(10),
        })
    }

    fn take_all(b: &RetryBudget, now: Duration) -> usize {
        let mut taken = 0;
        while let Some(guard) = b.withdraw(now) {
            std::mem::forget(guard); // stays in flight
            taken += 1;
            assert!(taken < 1_000_000);
        }
        taken
    }

    #[test]
    fn share_of_recent_requests_plus_a_floor_per_second() {
        let b = budget(20, 1);
        let t = Duration::from_secs(100);
        for _ in 0..1_000 {
            b.deposit(t);
        }
        // 20 % of 1,000 plus 1/s over 10 s.
        assert_eq!(take_all(&b, t), 210);
    }

    #[test]
    fn a_burst_of_failures_is_absorbed() {
        // A node holding 16 requests dies: all 16 retry at once. Envoy's
        // concurrency share (20 % of 16 in flight, at least 3) would let 3
        // through; the rate budget lets all through, even with no traffic
        // before (the floor is 10/s over 10 s).
        let b = budget(20, 10);
        let t = Duration::from_secs(5);
        let held: Vec<_> = (0..16).map_while(|_| b.withdraw(t)).collect();
        assert_eq!(held.len(), 16);
        assert_eq!(b.in_flight(), 16);
        drop(held);
        assert_eq!(b.in_flight(), 0);
    }

    #[test]
    fn old_requests_and_retries_fall_out_of_the_window() {
        let b = budget(50, 0);
        let t0 = Duration::from_secs(1_000);
        for _ in 0..100 {
            b.deposit(t0);
        }
        assert_eq!(take_all(&b, t0), 50);
        // 9 s later both are still counted: nothing left.
        assert_eq!(take_all(&b, t0 + Duration::from_secs(9)), 0);
        // 11 s later both have expired: no requests, no budget.
        assert_eq!(take_all(&b, t0 + Duration::from_secs(11)), 0);
        for _ in 0..10 {
            b.deposit(t0 + Duration::from_secs(11));
        }
        assert_eq!(take_all(&b, t0 + Duration::from_secs(11)), 5);
    }

    #[test]
    fn retry_storm_is_capped_at_the_share() {
        // Every attempt fails at once and its retry ends at once: retries
        // stay within 20 % of requests plus 10/s over any 10 s.
        let b = budget(20, 10);
        let mut retried = 0u64;
        for ms in 0..10_000u64 {
            let now = Duration::from_millis(60_000 + ms);
            for _ in 0..10 {
                b.deposit(now);
                if b.withdraw(now).is_some() {
                    retried += 1;
                }
            }
        }
        // 100,000 requests in 10 s: at most 20,000 + 100 retries.
        assert!(retried <= 20_100, "{retried}");
        assert!(retried >= 19_000, "{retried}");
    }

    #[test]
    fn window_counter_wraps_epochs() {
        let c = WindowCounter::new();
        let e = EPOCH_MASK - 2; // near the wrap
        c.add(e);
        c.add(e + 1);
        c.add(e + 3); // wraps to 0 in the tag
        assert_eq!(c.sum(e + 3), 3);
        assert_eq!(c.sum(e + 3 + BUCKETS as u64), 0);
    }
}
