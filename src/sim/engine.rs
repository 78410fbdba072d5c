//! The engine: a vLLM-style continuous-batching scheduler over a paged KV
//! cache, driven by a virtual clock.
//!
//! Each step: drop sequences whose client left; give every running sequence
//! its next tokens (a prefill chunk, or one decode token) within the
//! `max_num_batched_tokens` budget, growing its KV blocks and preempting the
//! newest running sequence (recompute, like vLLM) when no block is left;
//! then admit waiting sequences FIFO while `max_num_seqs`, the token budget
//! and free+evictable blocks (beyond the watermark) allow. The step's cost is
//! [`SimConfig::step_secs`]; it is divided by the speed factor, multiplied
//! by the `slowdown` fault and by `time_scale`, and added to a virtual clock.
//! The loop sleeps only until the accumulated deadline, so steps shorter
//! than the timer's 1 ms resolution run several per wakeup and token rates
//! stay right on average. Results of a step (tokens) are delivered at the
//! end of the step.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::Notify;

use super::config::{Faults, SimConfig};
use super::kv::{blocks_for, BlockId, BlockPool};
use super::kv_events::KvSink;
use super::lora::Lora;
use super::metrics::{Gauges, Metrics, SimStats};
use super::power::{Meter, PowerState};
use crate::classify::prefix::TOKENS_PER_BLOCK;
use crate::kvindex::PromptTokenizer;

/// What the engine tells a request's handler.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Event {
    /// One more output token.
    Token,
    /// The request finished.
    Done(Done),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Done {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub cached_tokens: u32,
    pub finish_reason: &'static str,
}

/// A request as the engine sees it.
#[derive(Debug, Clone)]
pub(crate) struct SeqRequest {
    pub prompt_tokens: u32,
    /// Chained hashes of the prompt's full blocks.
    pub hashes: Vec<u64>,
    /// Output tokens to generate (0 = prefill only, e.g. embeddings).
    pub max_tokens: u32,
    pub finish_reason: &'static str,
    /// The LoRA adapter the request names (`lora.rs`), if any.
    pub lora: Option<u32>,
    /// Token ids of the prompt's full blocks (for KV events; empty when
    /// the node counts 4 bytes a token without ids).
    pub tokens: Arc<[u32]>,
}

#[derive(Debug)]
struct Seq {
    req: SeqRequest,
    generated: u32,
    /// Tokens whose KV is computed.
    computed: u32,
    /// Leading prompt blocks already registered in the prefix cache.
    committed: usize,
    cached_tokens: u32,
    blocks: Vec<BlockId>,
    /// Tokens scheduled in the current step.
    sched: u32,
    prompt_counted: bool,
    tx: UnboundedSender<Event>,
    arrival: Instant,
    first_token: Option<Instant>,
}

impl Seq {
    /// Tokens whose KV the sequence needs before it can emit its next token.
    fn target(&self) -> u32 {
        self.req.prompt_tokens + self.generated
    }
}

pub(crate) struct State {
    pool: BlockPool,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    pub metrics: Metrics,
    /// LoRA adapters: registered, and resident in GPU slots.
    pub lora: Lora,
}

/// One step's plan: the cost inputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Plan {
    pub prefill_tokens: usize,
    pub decode_seqs: usize,
    /// LoRA adapters loaded into a GPU slot this step.
    pub lora_loads: usize,
}

impl State {
    fn new(cfg: &SimConfig) -> Self {
        let mut pool = BlockPool::new(cfg.kv_blocks, cfg.enable_prefix_caching);
        if cfg.kv_events.enabled() {
            pool.enable_events();
        }
        State {
            pool,
            waiting: VecDeque::new(),
            running: Vec::new(),
            metrics: Metrics::default(),
            lora: Lora::new(&cfg.lora_modules, cfg.max_loras),
        }
    }

    /// Distinct adapters of the running batch.
    fn running_loras(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = Vec::new();
        for id in self.running.iter().filter_map(|s| s.req.lora) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }

    /// Content hashes of the blocks the prefix cache holds.
    pub fn cached_hashes(&self) -> Vec<u64> {
        self.pool.cached_hashes()
    }

    fn gauges(&self) -> Gauges {
        Gauges {
            running: self.running.len(),
            waiting: self.waiting.len(),
            kv_usage: self.pool.usage(),
            kv_blocks_total: self.pool.total(),
            kv_blocks_cached: self.pool.cached_blocks(),
            running_loras: self
                .lora
                .list(self.running.iter().filter_map(|s| s.req.lora)),
            waiting_loras: self
                .lora
                .list(self.waiting.iter().filter_map(|s| s.req.lora)),
            max_loras: self.lora.max_loras(),
            lora_hits: self.lora.hits,
            lora_loads: self.lora.loads,
        }
    }

    fn preempt_last(&mut self) {
        let mut s = self.running.pop().expect("preempt from a non-empty batch");
        self.pool.free(&s.blocks);
        s.blocks.clear();
        s.computed = 0;
        s.committed = 0;
        s.sched = 0;
        self.metrics.preemptions += 1;
        self.waiting.push_front(s);
    }

    /// Schedule the next step. `None` when there is nothing to do.
    pub(crate) fn plan(&mut self, cfg: &SimConfig) -> Option<Plan> {
        // Clients that went away free their sequence and blocks.
        let before = self.running.len() + self.waiting.len();
        let pool = &mut self.pool;
        self.running.retain(|s| {
            let keep = !s.tx.is_closed();
            if !keep {
                pool.free(&s.blocks);
            }
            keep
        });
        self.waiting.retain(|s| !s.tx.is_closed());
        self.metrics.aborted += (before - self.running.len() - self.waiting.len()) as u64;

        let mut budget = cfg.max_num_batched_tokens.max(1) as u32;
        let mut preempted = false;
        let mut i = 0;
        while i < self.running.len() {
            let s = &self.running[i];
            let n = (s.target() - s.computed).min(budget);
            if n == 0 {
                self.running[i].sched = 0;
                i += 1;
                continue;
            }
            let need = blocks_for(s.computed + n);
            let mut evicted_self = false;
            while self.running[i].blocks.len() < need {
                if let Some(b) = self.pool.append() {
                    self.running[i].blocks.push(b);
                    continue;
                }
                preempted = true;
                let victim = self.running.len() - 1;
                self.preempt_last();
                if victim == i {
                    evicted_self = true;
                    break;
                }
            }
            if evicted_self {
                break;
            }
            self.running[i].sched = n;
            budget -= n;
            i += 1;
        }

        let mut lora_loads = 0;
        if !preempted {
            let reserve = (cfg.kv_watermark * self.pool.total() as f64).ceil() as usize;
            // Requests whose adapter would exceed max_loras wait (vLLM skips
            // them and admits the next ones).
            let mut skipped = VecDeque::new();
            while self.running.len() < cfg.max_num_seqs && budget > 0 {
                let Some(s) = self.waiting.front() else { break };
                if let Some(id) = s.req.lora {
                    if !self.lora.fits(id, &self.running_loras()) {
                        skipped.extend(self.waiting.pop_front());
                        continue;
                    }
                }
                let target = s.target();
                let Some((blocks, hits)) =
                    self.pool
                        .try_allocate(&s.req.hashes, blocks_for(target), reserve)
                else {
                    break;
                };
                let mut s = self.waiting.pop_front().expect("front exists");
                if let Some(id) = s.req.lora {
                    let running = self.running_loras();
                    lora_loads += usize::from(self.lora.admit(id, &running));
                }
                // Like vLLM, the last token is always recomputed.
                let cached = ((hits * TOKENS_PER_BLOCK) as u32).min(target - 1);
                self.metrics.prefix_queries += u64::from(target);
                self.metrics.prefix_hits += u64::from(cached);
                s.cached_tokens = s.cached_tokens.max(cached);
                s.blocks = blocks;
                s.computed = cached;
                s.committed = hits;
                let n = (target - cached).min(budget);
                s.sched = n;
                budget -= n;
                self.running.push(s);
            }
            while let Some(s) = skipped.pop_back() {
                self.waiting.push_front(s);
            }
        }

        let mut plan = Plan {
            prefill_tokens: 0,
            decode_seqs: 0,
            lora_loads,
        };
        for s in &self.running {
            if s.sched == 0 {
                continue;
            }
            if s.generated > 0 && s.computed + 1 == s.target() {
                plan.decode_seqs += 1;
            } else {
                plan.prefill_tokens += s.sched as usize;
            }
        }
        (plan.prefill_tokens + plan.decode_seqs > 0).then_some(plan)
    }

    /// Apply the planned step, which ended at `now` (virtual clock).
    pub(crate) fn apply(&mut self, now: Instant, time_scale: f64) {
        let scale = if time_scale > 0.0 { time_scale } else { 1.0 };
        let sim_secs = |d: Duration| d.as_secs_f64() / scale;
        let mut i = 0;
        while i < self.running.len() {
            let s = &mut self.running[i];
            if s.sched == 0 {
                i += 1;
                continue;
            }
            s.computed += s.sched;
            s.sched = 0;
            let full = ((s.computed as usize) / TOKENS_PER_BLOCK).min(s.req.hashes.len());
            if full > s.committed {
                let parent = s.committed.checked_sub(1).map(|p| s.req.hashes[p]);
                let tokens = s
                    .req
                    .tokens
                    .get(s.committed * TOKENS_PER_BLOCK..full * TOKENS_PER_BLOCK)
                    .unwrap_or(&[]);
                self.pool.commit_tokens(
                    &s.blocks[s.committed..full],
                    &s.req.hashes[s.committed..full],
                    parent,
                    tokens,
                );
                s.committed = full;
            }
            if s.computed < s.target() {
                i += 1;
                continue;
            }
            // The step produced this sequence's next token.
            if !s.prompt_counted {
                s.prompt_counted = true;
                self.metrics.prompt_tokens += u64::from(s.req.prompt_tokens);
            }
            let mut finished = s.req.max_tokens == 0;
            if !finished {
                if s.first_token.is_none() {
                    s.first_token = Some(now);
                    self.metrics
                        .ttft
                        .observe(sim_secs(now.saturating_duration_since(s.arrival)));
                }
                s.generated += 1;
                self.metrics.generation_tokens += 1;
                let _ = s.tx.send(Event::Token);
                finished = s.generated >= s.req.max_tokens;
            }
            if !finished {
                i += 1;
                continue;
            }
            let s = self.running.remove(i);
            self.pool.free(&s.blocks);
            let done = Done {
                prompt_tokens: s.req.prompt_tokens,
                completion_tokens: s.generated,
                cached_tokens: s.cached_tokens,
                finish_reason: s.req.finish_reason,
            };
            if s.tx.send(Event::Done(done)).is_ok() {
                self.metrics.completed_ok += 1;
                *self.metrics.success.entry(s.req.finish_reason).or_insert(0) += 1;
                self.metrics
                    .e2e
                    .observe(sim_secs(now.saturating_duration_since(s.arrival)));
            } else {
                self.metrics.aborted += 1;
            }
        }
    }
}

/// Engine state shared by the engine task, the HTTP handlers and the node handle.
pub(crate) struct Core {
    pub cfg: SimConfig,
    pub faults: Arc<Mutex<Faults>>,
    state: Mutex<State>,
    power: Mutex<Meter>,
    notify: Notify,
    /// Where KV events go, when published.
    kv: Option<KvSink>,
    /// The model's tokenizer, when configured.
    pub tokenizer: Option<Arc<PromptTokenizer>>,
    /// Root of this process's block-hash chains (random per process, like
    /// vLLM's `NONE_HASH` without `PYTHONHASHSEED`).
    pub hash_seed: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Core {
    #[cfg(test)]
    pub fn new(cfg: SimConfig, faults: Arc<Mutex<Faults>>) -> Arc<Core> {
        Core::with_io(cfg, faults, None, None)
    }

    /// A core publishing KV events to `kv` and tokenizing with `tokenizer`.
    pub fn with_io(
        cfg: SimConfig,
        faults: Arc<Mutex<Faults>>,
        kv: Option<KvSink>,
        tokenizer: Option<Arc<PromptTokenizer>>,
    ) -> Arc<Core> {
        Arc::new(Core {
            state: Mutex::new(State::new(&cfg)),
            power: Mutex::new(Meter::new(cfg.power.clone(), cfg.time_scale)),
            cfg,
            faults,
            notify: Notify::new(),
            kv,
            tokenizer,
            hash_seed: fastrand::u64(..),
        })
    }

    /// Whether prompts are turned into token ids (a tokenizer, or KV
    /// events that need ids).
    pub fn tokenizes(&self) -> bool {
        self.tokenizer.is_some() || self.kv.is_some()
    }

    /// Send the KV events of the last step, if any.
    fn publish_events(&self) {
        let Some(kv) = &self.kv else {
            return;
        };
        let events = self.state().pool.take_events();
        if !events.is_empty() {
            kv.publish(events);
        }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub fn faults(&self) -> Faults {
        lock(&self.faults).clone()
    }

    pub fn set_faults(&self, f: Faults) {
        *lock(&self.faults) = f;
        // A changed slowdown applies from the next step on.
        self.notify.notify_one();
    }

    /// Queue a request. Errors (a message) when it can never be served.
    pub fn submit(&self, req: SeqRequest) -> Result<UnboundedReceiver<Event>, String> {
        let total = req.prompt_tokens.saturating_add(req.max_tokens);
        if total > self.cfg.max_model_len {
            return Err(format!(
                "This model's maximum context length is {} tokens. However, you requested {} tokens ({} in the messages, {} in the completion).",
                self.cfg.max_model_len, total, req.prompt_tokens, req.max_tokens
            ));
        }
        let reserve = (self.cfg.kv_watermark * self.cfg.kv_blocks as f64).ceil() as usize;
        if blocks_for(req.prompt_tokens.max(1)) + reserve > self.cfg.kv_blocks
            || blocks_for(total) > self.cfg.kv_blocks
        {
            return Err(format!(
                "request needs {total} tokens of KV cache; this node holds {}",
                self.cfg.kv_blocks * TOKENS_PER_BLOCK
            ));
        }
        let (tx, rx) = unbounded_channel();
        let mut req = req;
        req.prompt_tokens = req.prompt_tokens.max(1);
        let seq = Seq {
            req,
            generated: 0,
            computed: 0,
            committed: 0,
            cached_tokens: 0,
            blocks: Vec::new(),
            sched: 0,
            prompt_counted: false,
            tx,
            arrival: Instant::now(),
            first_token: None,
        };
        self.state().waiting.push_back(seq);
        self.notify.notify_one();
        Ok(rx)
    }

    /// Count a received request (`inference`: chat, completions, embeddings).
    pub fn record_request(&self, path: &str, inference: bool) {
        let mut st = self.state();
        let m = &mut st.metrics;
        *m.by_endpoint.entry(path.to_string()).or_insert(0) += 1;
        if inference {
            m.requests_total += 1;
        }
    }

    pub fn record_injected_error(&self) {
        self.state().metrics.errors_injected += 1;
    }

    pub fn stats(&self, name: &str) -> SimStats {
        let mut stats = {
            let st = self.state();
            st.metrics.snapshot(name, &st.gauges())
        };
        let power = self.power();
        (stats.power_watts, stats.energy_joules) = power.read(Instant::now());
        stats.sleeping = power.sleeping();
        stats
    }

    fn power(&self) -> MutexGuard<'_, Meter> {
        lock(&self.power)
    }

    /// The DCGM exporter page of this node (`host`: its `Hostname` label).
    pub fn dcgm_text(&self, host: &str) -> String {
        self.power().dcgm_text(host, Instant::now())
    }

    /// Parked (vLLM `POST /sleep`): no steps, parked power, new inference
    /// requests refused until woken.
    pub fn park(&self) {
        self.power().park(Instant::now());
        self.notify.notify_one();
    }

    /// Whether the node is parked (not waking).
    pub fn parked(&self) -> bool {
        self.power().state == PowerState::Parked
    }

    /// Whether the node is parked or waking.
    pub fn sleeping(&self) -> bool {
        self.power().sleeping()
    }

    /// Start waking (vLLM `POST /wake_up`); the instant the engine runs again.
    pub fn wake(&self) -> Instant {
        let at = self.power().wake(Instant::now());
        self.notify.notify_one();
        at
    }

    pub fn metrics_text(&self) -> String {
        let st = self.state();
        st.metrics
            .render(&self.cfg.model, &st.gauges(), self.cfg.enable_lora)
    }

    /// Wall-clock duration of a step with this plan, under current faults.
    fn step_wall(&self, plan: Plan) -> Duration {
        let slowdown = self.faults().slowdown;
        let slowdown = if slowdown.is_finite() && slowdown > 0.0 {
            slowdown
        } else {
            1.0
        };
        let speed = if self.cfg.speed > 0.0 {
            self.cfg.speed
        } else {
            1.0
        };
        let secs = (self.cfg.step_secs(plan.prefill_tokens, plan.decode_seqs)
            + plan.lora_loads as f64 * self.cfg.lora_load_secs)
            / speed
            * slowdown
            * self.cfg.time_scale.max(0.0);
        Duration::try_from_secs_f64(secs).unwrap_or(Duration::ZERO)
    }
}

/// The engine loop of one node. Runs until aborted.
pub(crate) async fn run_engine(core: Arc<Core>) {
    let mut clock = Instant::now();
    loop {
        // Parked or waking: no steps until awake.
        let asleep = {
            let mut power = core.power();
            if power.poll_awake(Instant::now()) {
                None
            } else if let PowerState::Waking(at) = power.state {
                Some(Some(at))
            } else {
                Some(None)
            }
        };
        if let Some(until) = asleep {
            match until {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => core.notify.notified().await,
            }
            let now = Instant::now();
            clock = clock.max(now);
            core.power().idle(now);
            continue;
        }
        let plan = core.state().plan(&core.cfg);
        let Some(plan) = plan else {
            core.power().idle(clock);
            core.notify.notified().await;
            // Idle time is not owed to anyone: restart the clock from now.
            clock = clock.max(Instant::now());
            continue;
        };
        core.power()
            .step(clock, plan.prefill_tokens + plan.decode_seqs);
        clock += core.step_wall(plan);
        if clock > Instant::now() {
            tokio::time::sleep_until(clock.into()).await;
        } else {
            // Catching up on sub-millisecond steps; let handlers run.
            tokio::task::yield_now().await;
        }
        core.state().apply(clock, core.cfg.time_scale);
        core.publish_events();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SimConfig {
        SimConfig {
            kv_blocks: 64,
            kv_watermark: 0.0,
            max_num_seqs: 4,
            max_num_batched_tokens: 256,
            ..SimConfig::default()
        }
    }

    fn req(prompt_tokens: u32, hashes: Vec<u64>, max_tokens: u32) -> SeqRequest {
        SeqRequest {
            tokens: Arc::from(Vec::new()),
            prompt_tokens,
            hashes,
            max_tokens,
            finish_reason: "length",
            lora: None,
        }
    }

    /// Drive the scheduler synchronously, recording each step's plan.
    fn drive(core: &Core, steps: usize) -> Vec<Plan> {
        let mut out = Vec::new();
        let now = Instant::now();
        for _ in 0..steps {
            let mut st = core.state();
            let Some(p) = st.plan(&core.cfg) else { break };
            st.apply(now, 1.0);
            out.push(p);
        }
        out
    }

    fn faults() -> Arc<Mutex<Faults>> {
        Arc::new(Mutex::new(Faults::default()))
    }

    #[test]
    fn step_time_grows_with_batch() {
        let c = SimConfig::default();
        assert!(c.step_secs(0, 64) > c.step_secs(0, 8));
        assert!(c.step_secs(0, 8) > c.step_secs(0, 1));
        assert!(c.step_secs(1000, 1) > c.step_secs(0, 1));
    }

    #[test]
    fn prefill_then_one_token_per_step() {
        let core = Core::new(cfg(), faults());
        let mut rx = core.submit(req(40, vec![1, 2], 3)).unwrap();
        let plans = drive(&core, 100);
        assert_eq!(
            plans,
            vec![
                Plan {
                    prefill_tokens: 40,
                    decode_seqs: 0,
                    lora_loads: 0
                },
                Plan {
                    prefill_tokens: 0,
                    decode_seqs: 1,
                    lora_loads: 0
                },
                Plan {
                    prefill_tokens: 0,
                    decode_seqs: 1,
                    lora_loads: 0
                },
            ]
        );
        let mut ev = Vec::new();
        while let Ok(e) = rx.try_recv() {
            ev.push(e);
        }
        assert_eq!(ev.len(), 4);
        assert!(matches!(&ev[3], Event::Done(d) if d.completion_tokens == 3));
    }

    #[test]
    fn chunked_prefill_respects_budget_and_batch_bound() {
        let core = Core::new(cfg(), faults());
        let mut rxs = Vec::new();
        for i in 0..6 {
            rxs.push(core.submit(req(200, vec![100 + i], 2)).unwrap());
        }
        let mut st = core.state();
        let p = st.plan(&core.cfg).unwrap();
        // 256-token budget: the first prompt whole, 56 tokens of the second.
        assert_eq!(p.prefill_tokens, 256);
        assert_eq!(st.running.len(), 2);
        st.apply(Instant::now(), 1.0);
        let p = st.plan(&core.cfg).unwrap();
        assert_eq!(p.decode_seqs, 1);
        drop(st);
        drive(&core, 1000);
        let s = core.stats("t");
        assert_eq!(s.completed_ok, 6);
        assert_eq!(s.running + s.waiting, 0);
        assert_eq!(s.kv_usage, 0.0);
    }

    #[test]
    fn max_num_seqs_bounds_running() {
        let core = Core::new(cfg(), faults());
        let _rxs: Vec<_> = (0..7)
            .map(|i| core.submit(req(10, vec![], 5 + i)).unwrap())
            .collect();
        let mut st = core.state();
        st.plan(&core.cfg);
        assert_eq!(st.running.len(), 4);
        assert_eq!(st.waiting.len(), 3);
    }

    #[test]
    fn prefix_hit_skips_cached_prefill() {
        let core = Core::new(cfg(), faults());
        let hashes: Vec<u64> = (1..=8).collect(); // 8 full blocks = 128 tokens
        let _a = core.submit(req(130, hashes.clone(), 1)).unwrap();
        let first = drive(&core, 10);
        assert_eq!(first[0].prefill_tokens, 130);
        let _b = core.submit(req(130, hashes, 1)).unwrap();
        let second = drive(&core, 10);
        assert_eq!(second[0].prefill_tokens, 2);
        let s = core.stats("t");
        assert_eq!(s.prefix_queries_tokens, 260);
        assert_eq!(s.prefix_hits_tokens, 128);
    }

    #[test]
    fn disconnect_frees_blocks() {
        let core = Core::new(cfg(), faults());
        let rx = core.submit(req(100, vec![], 50)).unwrap();
        drive(&core, 3);
        assert!(core.stats("t").kv_usage > 0.0);
        drop(rx);
        drive(&core, 1);
        let s = core.stats("t");
        assert_eq!((s.kv_usage, s.running, s.aborted), (0.0, 0, 1));
    }

    #[test]
    fn preemption_when_decode_runs_out_of_blocks() {
        // 8 blocks; two sequences of 60 prompt tokens (4 blocks each) that
        // want to grow: the newest is preempted and recomputed later.
        let c = SimConfig {
            kv_blocks: 8,
            ..cfg()
        };
        let core = Core::new(c, faults());
        let mut a = core.submit(req(60, vec![], 20)).unwrap();
        let mut b = core.submit(req(60, vec![], 20)).unwrap();
        drive(&core, 1000);
        let s = core.stats("t");
        assert!(s.preemptions >= 1, "{s:?}");
        assert_eq!(s.completed_ok, 2);
        for rx in [&mut a, &mut b] {
            let mut tokens = 0;
            while let Ok(e) = rx.try_recv() {
                if e == Event::Token {
                    tokens += 1;
                }
            }
            assert_eq!(tokens, 20);
        }
    }

    #[test]
    fn oversized_request_rejected() {
        let core = Core::new(cfg(), faults());
        assert!(core.submit(req(64 * 16 + 1, vec![], 1)).is_err());
    }
}
