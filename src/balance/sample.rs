//! Sampling for large pools: how the load-aware policies keep a pick
//! O(1) when a pool has hundreds or thousands of nodes.
//!
//! A pool of up to [`SCAN_LIMIT`] nodes is scanned exactly, as before:
//! reading every node costs a few nanoseconds each, well under a
//! microsecond. Above that, `least_outstanding` (and `consistent_hash`
//! without a key) and the load estimate of `consistent_hash` look at
//! [`SAMPLES`] eligible nodes drawn uniformly at random instead of at all of
//! them, the candidate sets of `prefix_aware` and `composite` at
//! [`CANDIDATE_SAMPLES`] — the power of *d*
//! choices (Mitzenmacher) with a large *d*, as Envoy's least-request balancer
//! does with its `choice_count` (2 by default).
//!
//! * Draws are with replacement (no per-pick set to clear); an ineligible
//!   draw is skipped, at most 4 draws per wanted sample. Every eligible
//!   node is equally likely to be drawn, so ties between sampled nodes stay
//!   uniform over the whole pool.
//! * When fewer than a quarter of the wanted samples are eligible (most of
//!   the pool is down, full or already tried), the caller scans the pool
//!   exactly: then the eligible set is small and a sample of it would be a
//!   poor one.
//! * `prefix_aware` and `composite` take [`CANDIDATE_SAMPLES`] random
//!   candidates (each costs several signal reads) plus the nodes the prefix
//!   index says hold the longest part of the prompt
//!   ([`PrefixIndex::likely_holders`](super::PrefixIndex::likely_holders)).
//!
//! # What routing quality is kept
//!
//! `least_outstanding` at 1,024 nodes, closed loop: 2,048 requests always
//! in flight, each held for an exponentially distributed time, a new one
//! placed as each ends (test
//! `least_outstanding::tests::sampled_quality_at_1024_nodes`; figures are
//! printed with `--nocapture`):
//!
//! | pick | busiest node − mean, in flight (time average) | mean rank of the chosen node |
//! |---|---|---|
//! | exact scan | 0.0 | 0 |
//! | 32 samples (this) | 1.0 | 9 |
//! | power of two | 2.6 | 219 |
//! | exact scan, weights 1..=4 (per unit of weight) | 0.0 | 0 |
//! | 32 samples, weights 1..=4 (per unit of weight) | 0.25 | 9 |
//!
//! The rank is the number of nodes strictly less loaded (per weight) than
//! the chosen one when it was chosen; 0 is exact. So the sampled pick keeps
//! every node within one request of the mean (the exact scan keeps them at
//! it) and picks among the least loaded 1 %, where power of two lets nodes
//! drift nearly three above the mean. What the sample
//! does not do is find a lone idle node at once: a node that joins a busy
//! pool is found by 32/1,024 of the picks and fills up over a few dozen
//! picks rather than the very next ones — gentler on a node that has just
//! come back, which slow start would otherwise have to hold back.

/// Pools up to this many nodes are scanned exactly.
pub(crate) const SCAN_LIMIT: usize = 128;

/// Eligible nodes a sampled `least_outstanding` pick (and the load estimate
/// of `consistent_hash`) looks at: one atomic each.
pub(crate) const SAMPLES: usize = 32;

/// Random eligible candidates of a sampled `prefix_aware` or `composite`
/// pick, besides the nodes holding the prefix: each costs several signal
/// reads (scraped view, tokens in flight, decayed latencies), so fewer.
pub(crate) const CANDIDATE_SAMPLES: usize = 16;

/// Most candidates a sampled `prefix_aware` or `composite` pick takes from
/// the nodes holding the longest part of the prompt, and from those holding
/// only a shorter part ([`PrefixIndex::likely_holders`](super::PrefixIndex::likely_holders)).
pub(crate) const HOLDERS_DEEPEST: usize = 16;
pub(crate) const HOLDERS_OTHERS: usize = 8;

/// Random draws per wanted sample at most (ineligible draws are skipped).
const DRAWS_PER_SAMPLE: usize = 4;

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
    /// Eligible draws that were wanted.
    pub wanted: usize,
}

impl Drawn {
    /// Whether the sample is large enough to decide on (a quarter of the
    /// wanted size); if not, the eligible set is small: scan it.
    #[inline]
    pub fn enough(self) -> bool {
        self.found > 0 && self.found * 4 >= self.wanted
    }
}

/// Draw indices uniformly from `0..n` (with replacement) and call `visit`
/// for each eligible one, until `want` were eligible or `4 × want` were
/// drawn.
#[inline]
pub(crate) fn draw_eligible(
    n: usize,
    want: usize,
    eligible: &dyn Fn(usize) -> bool,
    mut visit: impl FnMut(usize),
) -> Drawn {
    let mut d = Drawn {
        found: 0,
        draws: 0,
        wanted: want,
    };
    if n == 0 {
        return d;
    }
    while d.found < want && d.draws < DRAWS_PER_SAMPLE * want {
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
        let d = draw_eligible(1024, SAMPLES, &|i| i % 2 == 0, |i| seen.push(i));
        assert_eq!(d.found, SAMPLES);
        assert_eq!(seen.len(), SAMPLES);
        assert!(seen.iter().all(|i| i % 2 == 0), "{seen:?}");
        assert!(d.draws >= SAMPLES && d.draws <= DRAWS_PER_SAMPLE * SAMPLES);
        assert!(d.enough());
    }

    #[test]
    fn sparse_eligibility_is_not_enough() {
        // 2 of 1,024 eligible: the draws run out long before 8 are found.
        let d = draw_eligible(1024, SAMPLES, &|i| i == 3 || i == 900, |_| {});
        assert_eq!(d.draws, DRAWS_PER_SAMPLE * SAMPLES);
        assert!(!d.enough(), "{d:?}");
        let d = draw_eligible(0, SAMPLES, &|_| true, |_| {});
        assert_eq!((d.found, d.draws), (0, 0));
        assert!(!d.enough());
    }
}
