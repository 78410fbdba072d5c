//! A lock-free rate limit: GCRA (the generic cell rate algorithm, as in
//! ATM networks, redis-cell and Envoy's token bucket seen from the other
//! side) on one atomic "theoretical arrival time".
//!
//! A limit of `L` units per minute with a burst of `B` units: each unit
//! moves the theoretical arrival time `tat` on by `T = 60 s / L`; a charge
//! of `c` units is allowed at `now` when `max(tat, now) + c·T − now ≤ B·T`.
//! Equivalent to a bucket of `B` tokens refilled at `L` per minute, with
//! no refill timer. Corrections (a response used more or fewer tokens than
//! estimated) move `tat` by the difference, so debt delays the tenant's
//! next requests and a refund frees them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const MINUTE_NS: u128 = 60_000_000_000;

/// One rate limit's state.
#[derive(Debug)]
pub struct Bucket {
    /// Theoretical arrival time, ns on the caller's clock.
    tat: AtomicU64,
    /// Nanoseconds per unit.
    per_unit: u64,
    /// Burst in ns (`B·T`).
    burst_ns: u64,
    limit: u64,
}

/// The answer to a charge, with what the `x-ratelimit-*` headers show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the charge was taken.
    pub allowed: bool,
    /// The limit per minute.
    pub limit: u64,
    /// Units that could still be charged now.
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// When refused: until the charge would fit.
    pub retry_after: Duration,
}

impl Bucket {
    /// `limit` units per minute (at least 1), holding at most `burst`
    /// units (at least 1).
    pub fn new(limit: u64, burst: u64) -> Bucket {
        let limit = limit.max(1);
        let per_unit = u64::try_from(MINUTE_NS / u128::from(limit))
            .unwrap_or(u64::MAX)
            .max(1);
        Bucket {
            tat: AtomicU64::new(0),
            per_unit,
            burst_ns: per_unit.saturating_mul(burst.max(1)),
            limit,
        }
    }

    /// The limit per minute.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn view(&self, tat: u64, now: u64, allowed: bool, retry_after: u64) -> Decision {
        let used = tat.saturating_sub(now);
        Decision {
            allowed,
            limit: self.limit,
            remaining: self.burst_ns.saturating_sub(used) / self.per_unit,
            reset: Duration::from_nanos(used),
            retry_after: Duration::from_nanos(retry_after),
        }
    }

    /// Whether `units` fit at `now` (ns), without taking them.
    pub fn check(&self, units: u64, now: u64) -> Decision {
        let tat = self.tat.load(Ordering::Relaxed).max(now);
        let next = tat.saturating_add(units.saturating_mul(self.per_unit));
        let over = next.saturating_sub(now).saturating_sub(self.burst_ns);
        self.view(tat, now, over == 0, over)
    }

    /// Take `units` at `now` if they fit.
    pub fn charge(&self, units: u64, now: u64) -> Decision {
        let cost = units.saturating_mul(self.per_unit);
        let mut current = self.tat.load(Ordering::Relaxed);
        loop {
            let tat = current.max(now);
            let next = tat.saturating_add(cost);
            let over = next.saturating_sub(now).saturating_sub(self.burst_ns);
            if over > 0 {
                return self.view(tat, now, false, over);
            }
            match self.tat.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return self.view(next, now, true, 0),
                Err(seen) => current = seen,
            }
        }
    }

    /// Correct an earlier charge by `delta` units (positive: more was used;
    /// negative: refund), at `now`. Never refused: debt is paid by waiting.
    pub fn adjust(&self, delta: i64, now: u64) {
        let cost = delta.unsigned_abs().saturating_mul(self.per_unit);
        let mut current = self.tat.load(Ordering::Relaxed);
        loop {
            let next = if delta >= 0 {
                current.max(now).saturating_add(cost)
            } else {
                // A refund never makes the bucket fuller than full.
                current.saturating_sub(cost).max(now.min(current))
            };
            match self.tat.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    /// True when the bucket is full at `now` (the state carries nothing).
    pub fn is_idle(&self, now: u64) -> bool {
        self.tat.load(Ordering::Relaxed) <= now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn burst_then_the_rate() {
        // 60 per minute = 1 per second, burst 3.
        let b = Bucket::new(60, 3);
        let now = 100 * S;
        for left in [2, 1, 0] {
            let d = b.charge(1, now);
            assert!(d.allowed);
            assert_eq!(d.remaining, left);
        }
        let d = b.charge(1, now);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_secs(1));
        assert_eq!(d.reset, Duration::from_secs(3));
        // One second later, one more.
        assert!(b.charge(1, now + S).allowed);
        assert!(!b.charge(1, now + S).allowed);
        // A charge bigger than the burst never fits.
        assert!(!Bucket::new(60, 3).charge(4, now).allowed);
    }

    #[test]
    fn corrections_move_the_budget_both_ways() {
        let b = Bucket::new(600, 100); // 10 per second
        let now = 50 * S;
        assert!(b.charge(50, now).allowed);
        assert_eq!(b.check(0, now).remaining, 50);
        // The response used 80 more than estimated: 30 in debt.
        b.adjust(80, now);
        assert!(!b.check(1, now).allowed);
        assert_eq!(b.check(1, now).retry_after, Duration::from_millis(3100));
        // Refund of 100: back to 70 left; refunds never overfill.
        b.adjust(-100, now);
        assert_eq!(b.check(0, now).remaining, 70);
        b.adjust(-1000, now);
        assert_eq!(b.check(0, now).remaining, 100);
        assert!(b.is_idle(now));
    }

    #[test]
    fn concurrent_charges_never_exceed_the_burst() {
        let b = std::sync::Arc::new(Bucket::new(1, 1000));
        let now = 10 * S;
        let taken: u64 = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..1000).filter(|_| b.charge(1, now).allowed).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap() as u64)
            .sum();
        assert_eq!(taken, 1000);
    }
}
