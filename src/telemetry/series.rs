//! A (route, pool, node)'s counters, kept once per worker thread.
//!
//! Every proxied request adds to its node's counters: an attempt's status
//! class, two histograms (time to first byte, duration), the tokens in and
//! out. With one set of counters, two workers serving the same node wrote
//! the same six cache lines, and each write had to take the line from the
//! other core first. So a series holds a small power-of-two number of
//! copies ([`Shard`]s), each on lines of its own; a worker writes the copy
//! of its index ([`set_worker`]) and readers (`/metrics`, the one-second
//! window, energy) add the copies up ([`Series::totals`]). A response's
//! tracker holds its shard's `Arc`, not the series', so the count it takes
//! and drops is on a line its worker alone writes.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock};

use super::hist::{HistSnapshot, Histogram};
use super::CODE_ERROR;

/// Counters of one (route, pool, node), as one worker wrote them.
#[derive(Debug, Default)]
pub struct RequestStats {
    /// Attempts by [`super::CODES`] class.
    pub codes: [AtomicU64; 6],
    /// End-to-end latency of responses passed through (request start to
    /// last byte).
    pub duration: Histogram,
    /// Request start to the first body frame (first token for streams).
    pub ttft: Histogram,
    /// Gaps between frames of SSE streams.
    pub itl: Histogram,
    /// Prompt tokens (estimate from classification).
    pub tokens_in: AtomicU64,
    /// Output tokens (SSE events, or `usage.completion_tokens`).
    pub tokens_out: AtomicU64,
    /// Attempts on this node that were retried elsewhere.
    pub retries: AtomicU64,
}

/// One worker's copy of a series' counters, aligned so that no two
/// copies (nor a copy and its `Arc` count's neighbour) share a line or the
/// pair of lines the prefetcher fetches together.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Shard {
    /// The counters.
    pub stats: RequestStats,
}

/// A labelled set of counters, one [`Shard`] per worker (modulo).
#[derive(Debug)]
pub struct Series {
    /// Route name.
    pub route: String,
    /// Pool name.
    pub pool: String,
    /// Node name.
    pub node: String,
    /// The route's model pattern (`*` when the route matches any model).
    pub model: String,
    /// A power-of-two count of copies.
    shards: Box<[Arc<Shard>]>,
}

/// Copies per series: the machine's threads, rounded up to a power of two
/// and at most 8 (past that, workers share copies: 64 cores would make
/// each series 48 KB, and a shared copy still halves the traffic).
static SHARDS: LazyLock<usize> = LazyLock::new(|| {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8)
        .next_power_of_two()
});

thread_local! {
    /// The calling thread's worker index (0 for threads that are not
    /// workers: they record rarely, if ever).
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Mark the calling thread as worker `index`: its requests record into
/// copy `index` (modulo the copies) of every series.
pub fn set_worker(index: usize) {
    WORKER.set(index);
}

impl Series {
    /// Zeroed counters under these labels.
    pub fn new(route: &str, pool: &str, node: &str, model: &str) -> Series {
        Series {
            route: route.to_string(),
            pool: pool.to_string(),
            node: node.to_string(),
            model: model.to_string(),
            shards: (0..*SHARDS).map(|_| Arc::default()).collect(),
        }
    }

    /// The calling worker's copy, to record into.
    #[inline]
    pub fn local(&self) -> &Arc<Shard> {
        // `shards` is never empty and its length a power of two.
        let index = WORKER.get() & (self.shards.len() - 1);
        &self.shards[index]
    }

    /// The counters summed over all copies.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for shard in self.shards.iter() {
            let s = &shard.stats;
            for (total, code) in t.codes.iter_mut().zip(&s.codes) {
                *total += code.load(Relaxed);
            }
            t.duration.merge(&s.duration.snapshot());
            t.ttft.merge(&s.ttft.snapshot());
            t.itl.merge(&s.itl.snapshot());
            t.tokens_in += s.tokens_in.load(Relaxed);
            t.tokens_out += s.tokens_out.load(Relaxed);
            t.retries += s.retries.load(Relaxed);
        }
        t
    }

    /// Output tokens summed over all copies (without the histograms).
    pub fn tokens_out(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.stats.tokens_out.load(Relaxed))
            .sum()
    }
}

/// A series' counters summed over its copies, at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Attempts by [`super::CODES`] class.
    pub codes: [u64; 6],
    /// See [`RequestStats::duration`].
    pub duration: HistSnapshot,
    /// See [`RequestStats::ttft`].
    pub ttft: HistSnapshot,
    /// See [`RequestStats::itl`].
    pub itl: HistSnapshot,
    /// Prompt tokens.
    pub tokens_in: u64,
    /// Output tokens.
    pub tokens_out: u64,
    /// Attempts retried elsewhere.
    pub retries: u64,
}

impl Totals {
    /// Attempts answered (any code) plus attempts without a response.
    pub fn requests(&self) -> u64 {
        self.codes.iter().sum()
    }

    /// 5xx answers plus attempts without a response.
    pub fn errors(&self) -> u64 {
        self.codes[4] + self.codes[CODE_ERROR]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn workers_record_apart_and_readers_see_the_sum() {
        let series = Arc::new(Series::new("r", "p", "n", "*"));
        let copies = series.shards.len();
        assert!(copies.is_power_of_two());
        let threads: Vec<_> = (0..3)
            .map(|worker| {
                let series = Arc::clone(&series);
                std::thread::spawn(move || {
                    set_worker(worker);
                    let local = series.local();
                    let expected = &series.shards[worker % copies];
                    assert!(Arc::ptr_eq(local, expected));
                    local.stats.codes[1].fetch_add(1, Relaxed);
                    local.stats.tokens_out.fetch_add(10, Relaxed);
                    local.stats.duration.observe(Duration::from_millis(3));
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let totals = series.totals();
        assert_eq!(totals.requests(), 3);
        assert_eq!(totals.codes[1], 3);
        assert_eq!(totals.tokens_out, 30);
        assert_eq!(series.tokens_out(), 30);
        assert_eq!(totals.duration.buckets.iter().sum::<u64>(), 3);
        assert_eq!(totals.errors(), 0);
    }

    #[test]
    fn copies_do_not_share_cache_lines() {
        assert_eq!(std::mem::align_of::<Shard>(), 128);
        let series = Series::new("r", "p", "n", "*");
        for pair in series.shards.windows(2) {
            let a = Arc::as_ptr(&pair[0]) as usize;
            let b = Arc::as_ptr(&pair[1]) as usize;
            assert!(a.abs_diff(b) >= std::mem::size_of::<Shard>());
            assert_eq!(a % 128, 0);
        }
    }
}
