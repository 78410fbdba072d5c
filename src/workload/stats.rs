//! Client-side measurements of a workload run.

use std::sync::Mutex;
use std::time::Duration;

/// One finished request as the client saw it.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// HTTP status (0 when the request failed before a response).
    pub status: u16,
    /// Whether the whole response arrived intact.
    pub ok: bool,
    /// Whether the response was streamed (only streamed requests have a
    /// time to first token distinct from the total).
    pub streamed: bool,
    /// Time to first token (first SSE event with content; for non-streaming
    /// requests, the whole response time).
    pub ttft: Duration,
    /// Time to the last byte.
    pub total: Duration,
    /// Tokens received (SSE content events, or `usage.completion_tokens`).
    pub tokens: u32,
    /// Mean inter-token latency of a streamed response (zero otherwise or
    /// with fewer than two tokens).
    pub itl: Duration,
}

/// Samples collected since the last [`Stats::take`].
#[derive(Debug, Default)]
pub struct Stats {
    samples: Mutex<Vec<Sample>>,
}

impl Stats {
    /// Record a finished request.
    pub fn record(&self, sample: Sample) {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(sample);
    }

    /// Take everything recorded so far.
    pub fn take(&self) -> Vec<Sample> {
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Percentiles over a set of samples.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    /// Requests.
    pub count: usize,
    /// Requests that did not complete intact.
    pub errors: usize,
    /// Median end-to-end latency.
    pub p50: Duration,
    /// 99th percentile end-to-end latency.
    pub p99: Duration,
    /// Median time to first token (streamed requests).
    pub ttft_p50: Duration,
    /// 99th percentile time to first token.
    pub ttft_p99: Duration,
    /// Mean time to first token.
    pub ttft_mean: Duration,
    /// Mean of the streamed requests' mean inter-token latencies.
    pub itl_mean: Duration,
    /// 99th percentile of the streamed requests' mean inter-token latencies.
    pub itl_p99: Duration,
    /// Output tokens received by successful requests.
    pub tokens: u64,
}

impl Summary {
    /// Summarize `samples` (successful ones for latencies).
    pub fn of(samples: &[Sample]) -> Summary {
        let mut total: Vec<Duration> = samples.iter().filter(|s| s.ok).map(|s| s.total).collect();
        let mut ttft: Vec<Duration> = samples
            .iter()
            .filter(|s| s.ok && s.streamed)
            .map(|s| s.ttft)
            .collect();
        total.sort_unstable();
        ttft.sort_unstable();
        let mean = if ttft.is_empty() {
            Duration::ZERO
        } else {
            ttft.iter().sum::<Duration>() / ttft.len() as u32
        };
        let mut itl: Vec<Duration> = samples
            .iter()
            .filter(|s| s.ok && s.streamed && s.tokens > 1)
            .map(|s| s.itl)
            .collect();
        itl.sort_unstable();
        let itl_mean = if itl.is_empty() {
            Duration::ZERO
        } else {
            itl.iter().sum::<Duration>() / itl.len() as u32
        };
        Summary {
            itl_mean,
            itl_p99: percentile(&itl, 0.99),
            tokens: samples
                .iter()
                .filter(|s| s.ok)
                .map(|s| u64::from(s.tokens))
                .sum(),
            count: samples.len(),
            errors: samples.iter().filter(|s| !s.ok).count(),
            p50: percentile(&total, 0.50),
            p99: percentile(&total, 0.99),
            ttft_p50: percentile(&ttft, 0.50),
            ttft_p99: percentile(&ttft, 0.99),
            ttft_mean: mean,
        }
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&v, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn summary_counts_errors_apart() {
        let ok = Sample {
            status: 200,
            ok: true,
            streamed: true,
            ttft: Duration::from_millis(10),
            total: Duration::from_millis(20),
            tokens: 3,
            itl: Duration::from_millis(5),
        };
        let bad = Sample {
            status: 502,
            ok: false,
            ..ok
        };
        let s = Summary::of(&[ok, bad, ok]);
        assert_eq!((s.count, s.errors), (3, 1));
        assert_eq!(s.ttft_mean, Duration::from_millis(10));
        assert_eq!(s.itl_mean, Duration::from_millis(5));
        assert_eq!(s.tokens, 6);
    }
}
