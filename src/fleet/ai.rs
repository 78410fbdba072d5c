//! The gateway's own AI-aware view of a node: tokens in flight and
//! peak-EWMA latencies (time to first token, time per output token), plus
//! the capacity signals scraped from the node (see [`super::capacity`]).
//!
//! Everything is a relaxed atomic updated on the request path; no lock.
//!
//! # Who updates what
//!
//! * [`Node::begin_request_for`] (instead of `begin_request`) counts the
//!   request's prompt tokens and expected output tokens in flight; the
//!   [`InFlight`] guard subtracts them when it is dropped.
//! * [`InFlight::on_data_frame`] is called by the response body for every
//!   data frame of a node's response: the first frame of a *streamed*
//!   response gives a TTFT sample ([`AiLoad::observe_ttft`]), the gap between
//!   later frames a per-token sample ([`AiLoad::observe_tpot`]). Non-streamed
//!   responses give no samples (their first byte is the whole generation).
//!   A TTFT sample of a prompt with at least [`MIN_PREFILL_SAMPLE_TOKENS`]
//!   tokens the node had to prefill also gives a prefill-cost sample,
//!   TTFT / those tokens ([`AiLoad::prefill_secs_per_token`]). The tokens
//!   to prefill are the prompt's less the blocks the policy expected the
//!   node to hold cached ([`InFlight::expect_cached`]): counted over the
//!   whole prompt, a chat workload whose prompts were three quarters cached
//!   read 15 µs per token where the nodes spent 50, and cache affinity
//!   yielded to a third of the queueing it should have. The sample is
//!   still an over-estimate when the request queued, so the policies use
//!   the lowest node's value (the least queued).
//!
//! # Peak EWMA
//!
//! As linkerd/Finagle's peak EWMA: a sample worse than the current estimate
//! replaces it at once; a better one is blended in with weight
//! `1 - exp(-dt / tau)`, where `dt` is the time since the previous sample.
//! Reads decay the estimate towards zero with the same time constant (as
//! tower's `PeakEwma` does on every load read), so a node that was slow and
//! then received no traffic is eventually tried again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::capacity::Capacity;
use super::{InFlight, Node, NodeLoad};
use crate::classify::prefix::TOKENS_PER_BLOCK;
use crate::classify::RequestClass;

/// Default time constant of the peak EWMAs.
pub const DEFAULT_TAU: Duration = Duration::from_secs(10);

/// Output tokens assumed for a request that declares no limit.
pub const DEFAULT_EXPECTED_OUTPUT: u32 = 256;

/// Shortest prompt whose TTFT gives a prefill-cost sample (shorter ones
/// are dominated by fixed costs).
pub const MIN_PREFILL_SAMPLE_TOKENS: u64 = 128;
/// Time constant of the average time per token (a node's decode speed, which
/// the queueing estimate uses: [`AiLoad::tpot_mean_secs`]): speed changes
/// slowly, token gaps jump.
pub const SPEED_TAU: Duration = Duration::from_secs(30);
/// Time constant of the plain average TTFT ([`AiLoad::ttft_mean_after`]):
/// short, so it follows a queue that builds within seconds.
pub const WAIT_TAU: Duration = Duration::from_secs(3);

/// Nanoseconds since a process-wide epoch (never 0 after the first call,
/// so 0 can mean "never").
pub fn now_ns() -> u64 {
    at_ns(Instant::now())
}

/// `t` as nanoseconds since the process-wide epoch (at least 1).
pub fn at_ns(t: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| Instant::now() - Duration::from_secs(1));
    u64::try_from(t.saturating_duration_since(epoch).as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// A peak-sensitive exponentially weighted moving average of a duration,
/// in seconds, lock-free.
#[derive(Debug)]
pub struct PeakEwma {
    /// `f64` seconds as bits.
    value: AtomicU64,
    /// When `value` was last written ([`now_ns`]); 0 = no sample yet.
    stamp: AtomicU64,
    tau_ns: f64,
}

impl Default for PeakEwma {
    fn default() -> Self {
        PeakEwma::new(DEFAULT_TAU)
    }
}

impl PeakEwma {
    /// An empty average with time constant `tau`.
    pub fn new(tau: Duration) -> Self {
        PeakEwma {
            value: AtomicU64::new(0f64.to_bits()),
            stamp: AtomicU64::new(0),
            tau_ns: (tau.as_nanos() as f64).max(1.0),
        }
    }

    /// Record a sample taken at `now_ns`. Concurrent samples may overwrite
    /// each other (last writer wins); that only loses a sample.
    pub fn observe_at(&self, sample: Duration, now_ns: u64) {
        let sample = sample.as_secs_f64();
        let stamp = self.stamp.load(Ordering::Relaxed);
        let next = if stamp == 0 {
            sample
        } else {
            let prev = f64::from_bits(self.value.load(Ordering::Relaxed));
            let w = (-(now_ns.saturating_sub(stamp) as f64) / self.tau_ns).exp();
            let current = prev * w;
            if sample > current {
                sample
            } else {
                current + sample * (1.0 - w)
            }
        };
        self.value.store(next.to_bits(), Ordering::Relaxed);
        self.stamp.store(now_ns.max(1), Ordering::Relaxed);
    }

    /// The estimate in seconds at `now_ns`, or `None` before any sample.
    pub fn get_at(&self, now_ns: u64) -> Option<f64> {
        let stamp = self.stamp.load(Ordering::Relaxed);
        if stamp == 0 {
            return None;
        }
        let v = f64::from_bits(self.value.load(Ordering::Relaxed));
        let w = (-(now_ns.saturating_sub(stamp) as f64) / self.tau_ns).exp();
        Some(v * w)
    }
}

/// A plain exponentially weighted moving average (no peak, no decay on
/// read), lock-free; last writer wins under contention.
#[derive(Debug, Default)]
pub struct Ewma {
    value: AtomicU64,
    stamp: AtomicU64,
}

impl Ewma {
    /// Blend in `sample` taken at `now_ns` with weight `1 - exp(-dt / tau)`.
    pub fn observe_at(&self, sample: f64, now_ns: u64, tau: Duration) {
        let stamp = self.stamp.load(Ordering::Relaxed);
        let next = if stamp == 0 {
            sample
        } else {
            let prev = f64::from_bits(self.value.load(Ordering::Relaxed));
            let w = (-(now_ns.saturating_sub(stamp) as f64) / tau.as_nanos().max(1) as f64).exp();
            prev * w + sample * (1.0 - w)
        };
        self.value.store(next.to_bits(), Ordering::Relaxed);
        self.stamp.store(now_ns.max(1), Ordering::Relaxed);
    }

    /// When the last sample was taken ([`now_ns`]); 0 before any.
    pub fn stamp(&self) -> u64 {
        self.stamp.load(Ordering::Relaxed)
    }

    /// The average, `None` before any sample.
    pub fn get(&self) -> Option<f64> {
        (self.stamp.load(Ordering::Relaxed) != 0)
            .then(|| f64::from_bits(self.value.load(Ordering::Relaxed)))
    }
}

/// AI-aware counters of one node, kept in [`NodeLoad::ai`]. The tokens in
/// flight come first (`repr(C)`): they share a cache line with the node's
/// request counts (see [`NodeLoad`]).
#[derive(Debug, Default)]
#[repr(C)]
pub struct AiLoad {
    prompt_tokens: AtomicU64,
    output_tokens: AtomicU64,
    /// Prompt tokens of streamed requests in flight that the node was not
    /// expected to hold cached and that have no first token yet: prefill
    /// work queued ahead of a new request ([`Self::pending_prefill_tokens`]).
    pending_prefill: AtomicU64,
    ttft: PeakEwma,
    tpot: PeakEwma,
    /// Plain average of the same samples over [`SPEED_TAU`]: the node's
    /// speed, which one slow step (a prefill chunk in the batch) must not
    /// move as it moves the peak.
    tpot_mean: Ewma,
    /// Plain average of the TTFT samples over [`WAIT_TAU`]: what requests
    /// sent to the node lately really waited for their first token.
    ttft_mean: Ewma,
    prefill: Ewma,
    /// Signals scraped from the node's `/metrics`.
    pub capacity: Capacity,
    /// LoRA adapters the node holds (scraped and sent).
    pub lora: super::lora::LoraState,
}

impl AiLoad {
    /// Estimated prompt tokens of the requests in flight to the node.
    pub fn prompt_tokens_in_flight(&self) -> u64 {
        self.prompt_tokens.load(Ordering::Relaxed)
    }

    /// Expected output tokens (declared limits) of the requests in flight.
    pub fn output_tokens_in_flight(&self) -> u64 {
        self.output_tokens.load(Ordering::Relaxed)
    }

    /// Prompt tokens this gateway sent the node that still wait for
    /// prefill: of each streamed request in flight without a first token,
    /// the tokens the policy did not expect cached. A new request shares
    /// the engine's steps with that work (chunked prefill) before its own
    /// first token. Requests that do not stream are not counted: their
    /// first token is not seen.
    pub fn pending_prefill_tokens(&self) -> u64 {
        self.pending_prefill.load(Ordering::Relaxed)
    }

    /// Record a time-to-first-token sample: from sending the request to
    /// the first data frame of a streamed response.
    ///
    /// Called by [`InFlight::on_data_frame`]; call it directly only for
    /// samples measured some other way.
    pub fn observe_ttft(&self, d: Duration) {
        let now = now_ns();
        self.ttft.observe_at(d, now);
        self.ttft_mean.observe_at(d.as_secs_f64(), now, WAIT_TAU);
    }

    /// Record a time-per-output-token sample: the gap between two data
    /// frames of a streamed response (one token per frame for OpenAI-style
    /// SSE servers; a frame carrying several tokens over-estimates, which
    /// is on the safe side).
    pub fn observe_tpot(&self, d: Duration) {
        self.observe_tpot_at(d, now_ns());
    }

    /// [`Self::observe_tpot`] for a sample taken at `now` (ns, [`at_ns`]).
    pub fn observe_tpot_at(&self, d: Duration, now: u64) {
        self.tpot.observe_at(d, now);
        self.tpot_mean.observe_at(d.as_secs_f64(), now, SPEED_TAU);
    }

    /// Record a prefill-cost sample: a TTFT over the tokens the node had to
    /// prefill (none below [`MIN_PREFILL_SAMPLE_TOKENS`]).
    pub fn observe_prefill(&self, ttft: Duration, prompt_tokens: u64) {
        if prompt_tokens >= MIN_PREFILL_SAMPLE_TOKENS {
            self.prefill.observe_at(
                ttft.as_secs_f64() / prompt_tokens as f64,
                now_ns(),
                DEFAULT_TAU,
            );
        }
    }

    /// Average TTFT per prompt token in seconds (prefill cost plus any
    /// queueing), `None` before any sample.
    pub fn prefill_secs_per_token(&self) -> Option<f64> {
        self.prefill.get()
    }

    /// Average TTFT over [`WAIT_TAU`] in seconds, if the last sample was
    /// taken at or after `after_ns` (recent evidence of the wait at the
    /// node), else `None`.
    pub fn ttft_mean_after(&self, after_ns: u64) -> Option<f64> {
        (self.ttft_mean.stamp() >= after_ns.max(1))
            .then(|| self.ttft_mean.get())
            .flatten()
    }

    /// Peak-EWMA time to first token in seconds, `None` before any sample.
    pub fn ttft_secs(&self, now_ns: u64) -> Option<f64> {
        self.ttft.get_at(now_ns)
    }

    /// Average time per output token over [`SPEED_TAU`], in seconds (no
    /// peak, no decay on read): what to compare nodes' speeds by. `None`
    /// before any sample.
    pub fn tpot_mean_secs(&self) -> Option<f64> {
        self.tpot_mean.get()
    }

    /// Peak-EWMA time per output token in seconds, `None` before any sample.
    pub fn tpot_secs(&self, now_ns: u64) -> Option<f64> {
        self.tpot.get_at(now_ns)
    }
}

/// What one attempt added to its node's [`AiLoad`], and its response timing.
#[derive(Debug, Default)]
pub(super) struct Attempt {
    prompt_tokens: u64,
    /// Of those, the ones the policy expected the node to hold cached
    /// ([`InFlight::expect_cached`]).
    cached_tokens: u64,
    output_tokens: u64,
    /// Of the prompt tokens, those counted in
    /// [`AiLoad::pending_prefill_tokens`] until the first frame.
    pending_prefill: u64,
    /// Whether data frames give latency samples (streamed responses).
    timed: bool,
    started: Option<Instant>,
    last_frame: Option<Instant>,
}

impl Attempt {
    /// Undo what the attempt added (called once, from `InFlight::drop`).
    pub(super) fn end(&mut self, load: &NodeLoad) {
        if self.prompt_tokens > 0 {
            load.ai
                .prompt_tokens
                .fetch_sub(self.prompt_tokens, Ordering::Relaxed);
        }
        if self.output_tokens > 0 {
            load.ai
                .output_tokens
                .fetch_sub(self.output_tokens, Ordering::Relaxed);
        }
        self.prefilled(load);
    }

    /// The prefill is over (first frame, or the attempt ended): stop
    /// counting its tokens as pending. Idempotent.
    fn prefilled(&mut self, load: &NodeLoad) {
        if self.pending_prefill > 0 {
            load.ai
                .pending_prefill
                .fetch_sub(self.pending_prefill, Ordering::Relaxed);
            self.pending_prefill = 0;
        }
    }
}

/// Expected output tokens of a request: its declared limit, else
/// [`DEFAULT_EXPECTED_OUTPUT`].
pub fn expected_output(class: &RequestClass) -> u32 {
    class.max_tokens.unwrap_or(DEFAULT_EXPECTED_OUTPUT)
}

impl Node {
    /// Like [`Node::begin_request`], and also count the request's prompt
    /// and expected output tokens in flight and time its response (TTFT and
    /// per-token samples when it streams). The proxy should call this for
    /// classified requests.
    pub fn begin_request_for(&self, class: &RequestClass) -> InFlight {
        let mut guard = self.begin_request();
        let prompt = u64::from(class.prompt_tokens);
        let output = u64::from(expected_output(class));
        self.load
            .ai
            .prompt_tokens
            .fetch_add(prompt, Ordering::Relaxed);
        self.load
            .ai
            .output_tokens
            .fetch_add(output, Ordering::Relaxed);
        let pending_prefill = if class.stream { prompt } else { 0 };
        if pending_prefill > 0 {
            self.load
                .ai
                .pending_prefill
                .fetch_add(pending_prefill, Ordering::Relaxed);
        }
        guard.attempt = Attempt {
            prompt_tokens: prompt,
            cached_tokens: 0,
            output_tokens: output,
            pending_prefill,
            timed: class.stream,
            // Read only for what is timed (a non-streamed answer's first
            // byte is its whole body: no TTFT).
            started: class.stream.then(Instant::now),
            last_frame: None,
        };
        guard
    }

    /// True when the node's fresh scraped signals put it over its pool's
    /// `max_queue` or `max_kv_usage`; the proxy should then treat it as not
    /// eligible. Stale or missing scrapes never saturate a node. `now_ns`
    /// is [`at_ns`] of now, read once by a caller asking of many nodes.
    pub fn is_saturated(&self, now_ns: u64) -> bool {
        self.load.ai.capacity.is_saturated(&self.load, now_ns)
    }
}

impl InFlight {
    /// The policy expects the node to hold `blocks` leading blocks of the
    /// prompt in its prefix cache ([`crate::balance::Policy::pick_expecting`]):
    /// the prefill-cost sample counts only the other tokens.
    pub fn expect_cached(&mut self, blocks: u32) {
        let tokens = u64::from(blocks) * TOKENS_PER_BLOCK as u64;
        self.attempt.cached_tokens = tokens.min(self.attempt.prompt_tokens);
        // Only the rest waits for prefill (lowered at most once to it, and
        // not at all after the first frame).
        let rest = self.attempt.prompt_tokens - self.attempt.cached_tokens;
        let pending = &mut self.attempt.pending_prefill;
        let less = pending.saturating_sub(rest);
        if less > 0 {
            *pending -= less;
            self.load
                .ai
                .pending_prefill
                .fetch_sub(less, Ordering::Relaxed);
        }
    }

    /// Call for every data frame of the node's response body, as it is
    /// passed on to the client. Gives a TTFT sample on the first frame and
    /// a per-token sample for each later one (streamed responses only).
    /// `now`: when the frame was read (one clock read per frame, shared
    /// with the body's other bookkeeping).
    pub fn on_data_frame(&mut self, now: Instant) {
        if !self.attempt.timed {
            return;
        }
        match self.attempt.last_frame {
            None => {
                self.attempt.prefilled(&self.load);
                if let Some(started) = self.attempt.started {
                    let ttft = now.duration_since(started);
                    self.load.ai.observe_ttft(ttft);
                    let uncached = self
                        .attempt
                        .prompt_tokens
                        .saturating_sub(self.attempt.cached_tokens);
                    self.load.ai.observe_prefill(ttft, uncached);
                }
            }
            Some(last) => self
                .load
                .ai
                .observe_tpot_at(now.duration_since(last), at_ns(now)),
        }
        self.attempt.last_frame = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::uri::Authority;

    #[test]
    fn what_an_attempt_writes_shares_one_line_with_the_arc_count() {
        use std::mem::offset_of;
        // An `Arc`'s allocation: its two counts, then the value.
        let arc_counts = 2 * std::mem::size_of::<usize>();
        let last = offset_of!(super::super::NodeLoad, ai) + offset_of!(AiLoad, pending_prefill);
        assert_eq!(offset_of!(super::super::NodeLoad, outstanding), 0);
        assert!(
            arc_counts + last + 8 <= 64,
            "the counters end at {} bytes into the allocation",
            arc_counts + last + 8
        );
    }

    fn class(prompt: u32, max: Option<u32>, stream: bool) -> RequestClass {
        let mut c = crate::balance::testing::chat_class();
        c.prompt_tokens = prompt;
        c.max_tokens = max;
        c.stream = stream;
        c
    }

    #[test]
    fn tokens_in_flight_are_added_and_released_once() {
        let n = Node::new("a", Authority::from_static("127.0.0.1:1"), 1);
        let g1 = n.begin_request_for(&class(1000, Some(100), true));
        let g2 = n.begin_request_for(&class(50, None, false));
        let plain = n.begin_request();
        assert_eq!(n.load.ai.prompt_tokens_in_flight(), 1050);
        assert_eq!(
            n.load.ai.output_tokens_in_flight(),
            100 + u64::from(DEFAULT_EXPECTED_OUTPUT)
        );
        assert_eq!(n.outstanding(), 3);
        drop(g1);
        assert_eq!(n.load.ai.prompt_tokens_in_flight(), 50);
        drop(plain);
        drop(g2);
        assert_eq!(n.load.ai.prompt_tokens_in_flight(), 0);
        assert_eq!(n.load.ai.output_tokens_in_flight(), 0);
        assert_eq!(n.outstanding(), 0);
    }

    #[test]
    fn prefill_is_pending_from_the_send_to_the_first_frame_of_a_stream() {
        let n = Node::new("a", Authority::from_static("127.0.0.1:1"), 1);
        let mut streamed = n.begin_request_for(&class(1000, Some(100), true));
        let plain = n.begin_request_for(&class(700, None, false));
        assert_eq!(n.load.ai.pending_prefill_tokens(), 1000, "only streams");
        streamed.expect_cached(10);
        assert_eq!(n.load.ai.pending_prefill_tokens(), 840);
        streamed.expect_cached(10);
        assert_eq!(n.load.ai.pending_prefill_tokens(), 840, "lowered once");
        streamed.on_data_frame(Instant::now());
        assert_eq!(n.load.ai.pending_prefill_tokens(), 0);
        streamed.on_data_frame(Instant::now());
        drop(streamed);
        assert_eq!(n.load.ai.pending_prefill_tokens(), 0);
        // A stream that ends (or fails) before its first frame.
        let cut = n.begin_request_for(&class(300, None, true));
        assert_eq!(n.load.ai.pending_prefill_tokens(), 300);
        drop(cut);
        drop(plain);
        assert_eq!(n.load.ai.pending_prefill_tokens(), 0);
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let e = PeakEwma::new(Duration::from_secs(1));
        assert_eq!(e.get_at(10), None);
        let s = 1_000_000_000u64;
        e.observe_at(Duration::from_millis(100), s);
        assert!((e.get_at(s).unwrap() - 0.1).abs() < 1e-9);
        // Worse sample: immediately the new peak.
        e.observe_at(Duration::from_millis(500), s + 1000);
        assert!((e.get_at(s + 1000).unwrap() - 0.5).abs() < 1e-6);
        // Better samples pull it down gradually: after one tau, weight 1-1/e.
        e.observe_at(Duration::from_millis(100), 2 * s + 1000);
        let v = e.get_at(2 * s + 1000).unwrap();
        let expect = 0.5 * (-1f64).exp() + 0.1 * (1.0 - (-1f64).exp());
        assert!((v - expect).abs() < 1e-6, "{v} vs {expect}");
        // Reads decay towards zero while no samples arrive.
        let later = e.get_at(12 * s).unwrap();
        assert!(later < v * 0.001, "{later}");
    }

    #[test]
    fn streamed_frames_give_ttft_and_tpot_samples() {
        let n = Node::new("a", Authority::from_static("127.0.0.1:1"), 1);
        let mut g = n.begin_request_for(&class(10, Some(4), true));
        std::thread::sleep(Duration::from_millis(20));
        g.on_data_frame(Instant::now());
        std::thread::sleep(Duration::from_millis(5));
        g.on_data_frame(Instant::now());
        let now = now_ns();
        let ttft = n.load.ai.ttft_secs(now).unwrap();
        let tpot = n.load.ai.tpot_secs(now).unwrap();
        assert!((0.019..1.0).contains(&ttft), "{ttft}");
        assert!(tpot >= 0.004 && tpot < ttft, "{tpot}");
        // 10 prompt tokens: too short for a prefill sample; 1000 give one.
        assert_eq!(n.load.ai.prefill_secs_per_token(), None);
        let mut g = n.begin_request_for(&class(1000, Some(4), true));
        std::thread::sleep(Duration::from_millis(10));
        g.on_data_frame(Instant::now());
        let per = n.load.ai.prefill_secs_per_token().unwrap();
        assert!((0.000_009..0.001).contains(&per), "{per}");
        // The tokens the policy expected cached are not prefill: a 1000-token
        // prompt with 50 blocks (800 tokens) cached samples over 200.
        let c = Node::new("c", Authority::from_static("127.0.0.1:1"), 1);
        let mut g = c.begin_request_for(&class(1000, Some(4), true));
        g.expect_cached(50);
        let started = g.attempt.started.unwrap();
        g.on_data_frame(started + Duration::from_millis(20));
        let per = c.load.ai.prefill_secs_per_token().unwrap();
        assert!((per - 0.020 / 200.0).abs() < 1e-9, "{per}");
        // Nearly all cached: too few tokens to prefill for a sample.
        let d = Node::new("d", Authority::from_static("127.0.0.1:1"), 1);
        let mut g = d.begin_request_for(&class(1000, Some(4), true));
        g.expect_cached(60); // 960 tokens, 40 left
        g.on_data_frame(Instant::now());
        assert_eq!(d.load.ai.prefill_secs_per_token(), None);
        // Non-streamed responses and plain attempts give no samples.
        let m = Node::new("b", Authority::from_static("127.0.0.1:1"), 1);
        let mut g = m.begin_request_for(&class(10, Some(4), false));
        g.on_data_frame(Instant::now());
        let mut p = m.begin_request();
        p.on_data_frame(Instant::now());
        assert_eq!(m.load.ai.ttft_secs(now_ns()), None);
    }
}
