//! Sampling for large pools: how the load-aware policies keep a pick
//! O(1) when a pool has hundreds or thousands of nodes.
//!
//! A pool of up to [`SCAN_LIMIT`] nodes is scanned exactly, as before:
//! reading every node costs a few nanoseconds each, well under a
//! microsecond. Above that, `least_outstanding` (and `consistent_hash`
//! without a key), the load estimate of `consistent_hash`, and the candidate
//! sets of `prefix_aware` and `composite` look at [`SAMPLES`] eligible nodes
//! drawn uniformly at random instead of at all of them — the power of *d*
//! choices (Mitzenmacher) with a large *d*, as Envoy's least-request balancer
//! does with its `choice_count` (2 by default).
//!
//! * Draws are with replacement (no per-pick set to clear); an ineligible
//!   draw is skipped, at most [`MAX_DRAWS`] draws per pick. Every eligible
//!   node is equally likely to be drawn, so ties between sampled nodes stay
//!   uniform over the whole pool.
//! * When fewer than [`MIN_FOUND`] draws are eligible (most of the pool is
//!   down, full or already tried), the caller scans the pool exactly: then
//!   the eligible set is small and a sample of it would be a poor one.
//!
//! # What routing quality is kept
//!
//! `least_outstanding` at 1,024 nodes, closed loop with exponential request
//! durations, every request held in flight until it ends (test
//! `least_outstanding::tests::sampled_quality_at_1024_nodes`; figures are
//! printed with `--nocapture`):
//!
//! | pick | mean in flight | max − mean (time average) | mean rank of the chosen node |
//! |---|---|---|---|
//! | exact scan | 4 | 0.0 | 0.0 |
//! | 32 samples (this) | 4 | 1.0 | 8 |
//! | power of two | 4 | 3.0 | 235 |
//!
//! The rank is the number of nodes strictly less loaded (per weight) than
//! the chosen one when it was chosen; 0 is exact. So the sampled pick keeps
//! every node within one request of the mean (the exact scan keeps them at
//! it), where power of two lets nodes drift three above it. What the sample
//! does not do is find a lone idle node at once: a node that joins a busy
//! pool is found by 32/1,024 of the picks and fills up over a few dozen
//! picks rather than the very next ones — gentler on a node that has just
//! come back, which slow start would otherwise have to hold back.

/// Pools up to this many nodes are scanned exactly.
pub(crate) const SCAN_LIMIT: usize = 128;

/// Eligible nodes a sampled pick looks at.
pub(crate) const SAMPLES: usize = 32;

/// Most random draws per sampled pick (ineligible draws are skipped).
pub(crate) const MAX_DRAWS: usize = 4 * SAMPLES;

/// Fewer eligible draws than this: scan instead (the eligible set is small).
pub(crate) const MIN_FOUND: usize = 8;

/// Whether a pool of `n` nodes is sampled rather than scanned.
#[inline]
pub(crate) fn sampled(n: usize) -> bool {
    n > SCAN_LIMIT
}

/// What a sample saw: eligible nodes visited and random draws made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Drawn {
    /// Draws that were eligible (each one passed to `visit`).
    pub found: usize,
    /// Draws made in all, eligible or not.
    pub draws: usize,
}

impl Drawn {
    /// Whether the sample is large enough to decide on; if not, scan.
    #[inline]
    pub fn enough(self) -> bool {
        self.found >= MIN_FOUND
    }
}

/// Draw indices uniformly from `0..n` (with replacement) and call `visit`
/// for each eligible one, until [`SAMPLES`] were eligible or [`MAX_DRAWS`]
/// were drawn.
#[inline]
pub(crate) fn draw_eligible(
    n: usize,
    eligible: &dyn Fn(usize) -> bool,
    mut visit: impl FnMut(usize),
) -> Drawn {
    let mut d = Drawn { found: 0, draws: 0 };
    if n == 0 {
        return d;
    }
    while d.found < SAMPLES && d.draws < MAX_DRAWS {
        let i = fastrand::usize(..n);
        d.draws += 1;
        if eligible(i) {
            d.found += 1;
            visit(i);
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_only_eligible_and_stops_at_the_sample_size() {
        let mut seen = Vec::new();
        let d = draw_eligible(1024, &|i| i % 2 == 0, |i| seen.push(i));
        assert_eq!(d.found, SAMPLES);
        assert_eq!(seen.len(), SAMPLES);
        assert!(seen.iter().all(|i| i % 2 == 0), "{seen:?}");
        assert!(d.draws >= SAMPLES && d.draws <= MAX_DRAWS);
        assert!(d.enough());
    }

    #[test]
    fn sparse_eligibility_is_not_enough() {
        // 2 of 1,024 eligible: the draws run out long before 8 are found.
        let d = draw_eligible(1024, &|i| i == 3 || i == 900, |_| {});
        assert_eq!(d.draws, MAX_DRAWS);
        assert!(!d.enough(), "{d:?}");
        let d = draw_eligible(0, &|_| true, |_| {});
        assert_eq!(d, Drawn { found: 0, draws: 0 });
    }
}
