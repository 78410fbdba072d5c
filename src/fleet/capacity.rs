//! Capacity signals scraped from the nodes' Prometheus `/metrics`.
//!
//! A scraper task per pool ([`spawn_scrapers`]) GETs every node's metrics
//! page on an interval and stores running requests, waiting requests and KV
//! cache use in the node's [`Capacity`] atomics with the scrape time. The
//! text is scanned line by line for the few names we know — no Prometheus
//! parser dependency:
//!
//! | signal | vLLM | SGLang | TGI |
//! |---|---|---|---|
//! | running | `vllm:num_requests_running` | `sglang:num_running_reqs` | `tgi_batch_current_size` |
//! | waiting | `vllm:num_requests_waiting` | `sglang:num_queue_reqs` | `tgi_queue_size` |
//! | KV use (0..1) | `vllm:kv_cache_usage_perc` (else the older `vllm:gpu_cache_usage_perc`) | `sglang:token_usage` | — |
//!
//! Counts are summed over label sets (one per served model); KV use takes
//! the largest.
//!
//! A scrape is *fresh* for three intervals. Between scrapes the waiting
//! count is kept current with the gateway's own view: waiting = scraped
//! waiting + how many more requests the gateway has in flight to the node
//! than it had at the scrape (requests sent since, minus those finished).
//! Stale or missing scrapes are ignored: policies fall back to the
//! gateway's outstanding count, and nothing is saturated.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::{NodeLoad, Pool};
use crate::config::CapacityConfig;

const NONE: u64 = u64::MAX;
/// KV use is stored in parts per million.
const PPM: f64 = 1_000_000.0;
/// Most bytes of a metrics page read.
const MAX_PAGE: usize = 4 * 1024 * 1024;
/// A scrape stays fresh for this many intervals.
const FRESH_INTERVALS: u64 = 3;

/// Scraped signals of one node, with the scrape time and the pool's limits.
#[derive(Debug)]
pub struct Capacity {
    running: AtomicU64,
    waiting: AtomicU64,
    kv_ppm: AtomicU64,
    scraped_at: AtomicU64,
    outstanding_at_scrape: AtomicU64,
    interval_ns: AtomicU64,
    max_queue: AtomicU64,
    max_kv_ppm: AtomicU64,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            running: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            kv_ppm: AtomicU64::new(NONE),
            scraped_at: AtomicU64::new(0),
            outstanding_at_scrape: AtomicU64::new(0),
            interval_ns: AtomicU64::new(1_000_000_000),
            max_queue: AtomicU64::new(NONE),
            max_kv_ppm: AtomicU64::new(NONE),
        }
    }
}

/// What one metrics page said; `None` for a signal it does not carry.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Scraped {
    /// Requests in the running batch.
    pub running: Option<f64>,
    /// Requests queued.
    pub waiting: Option<f64>,
    /// KV cache use, 0..1.
    pub kv_usage: Option<f64>,
}

/// A node's fresh capacity signals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CapacityView {
    /// Running requests at the scrape.
    pub running: u64,
    /// Waiting requests: at the scrape plus the gateway's net additions since.
    pub waiting: u64,
    /// KV cache use (0..1), if the node reports it.
    pub kv_usage: Option<f64>,
}

impl Capacity {
    /// Set the scrape interval (for freshness) and the saturation limits.
    pub fn configure(&self, interval: Duration, max_queue: Option<u64>, max_kv: Option<f64>) {
        let ns = u64::try_from(interval.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        self.interval_ns.store(ns, Ordering::Relaxed);
        self.max_queue
            .store(max_queue.unwrap_or(NONE), Ordering::Relaxed);
        self.max_kv_ppm.store(
            max_kv.map_or(NONE, |k| (k * PPM).round() as u64),
            Ordering::Relaxed,
        );
    }

    /// Store a scrape taken at `now_ns` while the gateway had `outstanding`
    /// requests in flight to the node. Missing signals count as 0 (KV: unknown).
    pub fn record(&self, s: &Scraped, outstanding: u64, now_ns: u64) {
        let count = |v: Option<f64>| v.map_or(0, |v| v.max(0.0).round() as u64);
        self.running.store(count(s.running), Ordering::Relaxed);
        self.waiting.store(count(s.waiting), Ordering::Relaxed);
        self.kv_ppm.store(
            s.kv_usage
                .map_or(NONE, |k| (k.clamp(0.0, 1.0) * PPM).round() as u64),
            Ordering::Relaxed,
        );
        self.outstanding_at_scrape
            .store(outstanding, Ordering::Relaxed);
        self.scraped_at.store(now_ns.max(1), Ordering::Relaxed);
    }

    /// Forget the last scrape (the node did not answer).
    pub fn clear(&self) {
        self.scraped_at.store(0, Ordering::Relaxed);
    }

    /// The signals if the last scrape is at most three intervals old.
    pub fn view(&self, load: &NodeLoad, now_ns: u64) -> Option<CapacityView> {
        let at = self.scraped_at.load(Ordering::Relaxed);
        if at == 0 {
            return None;
        }
        let interval = self.interval_ns.load(Ordering::Relaxed);
        if now_ns.saturating_sub(at) > interval.saturating_mul(FRESH_INTERVALS) {
            return None;
        }
        let since = load
            .outstanding()
            .saturating_sub(self.outstanding_at_scrape.load(Ordering::Relaxed));
        let kv = self.kv_ppm.load(Ordering::Relaxed);
        Some(CapacityView {
            running: self.running.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed) + since,
            kv_usage: (kv != NONE).then(|| kv as f64 / PPM),
        })
    }

    /// True when a fresh scrape shows more waiting requests than `max_queue`
    /// or more KV use than `max_kv_usage`.
    pub fn is_saturated(&self, load: &NodeLoad, now_ns: u64) -> bool {
        let Some(v) = self.view(load, now_ns) else {
            return false;
        };
        let max_queue = self.max_queue.load(Ordering::Relaxed);
        let max_kv = self.max_kv_ppm.load(Ordering::Relaxed);
        (max_queue != NONE && v.waiting > max_queue)
            || (max_kv != NONE
                && v.kv_usage
                    .is_some_and(|k| (k * PPM).round() as u64 > max_kv))
    }
}

/// Scan a Prometheus text page for the known capacity metrics.
pub fn parse_metrics(text: &str) -> Scraped {
    let mut s = Scraped::default();
    let mut gpu_cache: Option<f64> = None;
    let add = |slot: &mut Option<f64>, v: f64| *slot = Some(slot.unwrap_or(0.0) + v);
    let max = |slot: &mut Option<f64>, v: f64| *slot = Some(slot.map_or(v, |o: f64| o.max(v)));
    for line in text.lines() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
        let name = &line[..name_end];
        let rest = &line[name_end..];
        let rest = if rest.starts_with('{') {
            match rest.rfind('}') {
                Some(i) => &rest[i + 1..],
                None => continue,
            }
        } else {
            rest
        };
        let Some(value) = rest.split_whitespace().next() else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        if !v.is_finite() {
            continue;
        }
        match name {
            "vllm:num_requests_running" | "sglang:num_running_reqs" | "tgi_batch_current_size" => {
                add(&mut s.running, v)
            }
            "vllm:num_requests_waiting" | "sglang:num_queue_reqs" | "tgi_queue_size" => {
                add(&mut s.waiting, v)
            }
            "vllm:kv_cache_usage_perc" | "sglang:token_usage" => max(&mut s.kv_usage, v),
            "vllm:gpu_cache_usage_perc" => max(&mut gpu_cache, v),
            _ => {}
        }
    }
    if s.kv_usage.is_none() {
        s.kv_usage = gpu_cache;
    }
    s
}

/// Running scrapers of one pool; dropping it stops them.
#[derive(Debug)]
pub struct ScraperHandle {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScraperHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start scraping every node of `pool` as `cfg` says, on the current tokio
/// runtime (panics outside one). The returned handle stops it when dropped.
pub fn spawn_scrapers(pool: &Arc<Pool>, cfg: &CapacityConfig) -> ScraperHandle {
    for node in &pool.nodes {
        node.load
            .ai
            .capacity
            .configure(cfg.interval, cfg.max_queue, cfg.max_kv_usage);
    }
    let pool = Arc::clone(pool);
    let interval = cfg.interval;
    let path = cfg.path.clone();
    let task = tokio::spawn(async move {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(interval));
        let client: Client<HttpConnector, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build(connector);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut scrapes = tokio::task::JoinSet::new();
            for node in &pool.nodes {
                let node = Arc::clone(node);
                let client = client.clone();
                let uri = format!("http://{}{}", node.addr, path);
                scrapes.spawn(async move {
                    let load = &node.load;
                    match tokio::time::timeout(interval, scrape(&client, &uri)).await {
                        Ok(Some(s)) => {
                            load.ai
                                .capacity
                                .record(&s, load.outstanding(), super::now_ns())
                        }
                        _ => {
                            tracing::debug!(node = %node.name, "metrics scrape failed");
                            load.ai.capacity.clear();
                        }
                    }
                });
            }
            while scrapes.join_next().await.is_some() {}
        }
    });
    ScraperHandle { task }
}

async fn scrape(client: &Client<HttpConnector, Empty<Bytes>>, uri: &str) -> Option<Scraped> {
    let uri: Uri = uri.parse().ok()?;
    let request = Request::get(uri).body(Empty::new()).ok()?;
    let response = client.request(request).await.ok()?;
    if response.status() != StatusCode::OK {
        return None;
    }
    let body = Limited::new(response.into_body(), MAX_PAGE)
        .collect()
        .await
        .ok()?
        .to_bytes();
    Some(parse_metrics(std::str::from_utf8(&body).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Node;
    use http::uri::Authority;

    const VLLM: &str = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="llama"} 7.0
vllm:num_requests_waiting{engine="0",model_name="llama"} 3.0
vllm:num_requests_waiting{engine="1",model_name="llama"} 2.0
vllm:gpu_cache_usage_perc{model_name="llama"} 0.25
vllm:kv_cache_usage_perc{model_name="llama"} 0.5
vllm:prefix_cache_hits_total{model_name="llama"} 1234
"#;

    #[test]
    fn parses_vllm_sglang_and_tgi_names() {
        let s = parse_metrics(VLLM);
        assert_eq!(s.running, Some(7.0));
        assert_eq!(s.waiting, Some(5.0));
        assert_eq!(s.kv_usage, Some(0.5));
        // Older vLLM: only gpu_cache_usage_perc.
        let old = parse_metrics("vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.75 1700000000\n");
        assert_eq!(old.kv_usage, Some(0.75));
        let sg = parse_metrics(
            "sglang:num_running_reqs{model_name=\"m\"} 4\nsglang:num_queue_reqs{model_name=\"m\"} 9\nsglang:token_usage{model_name=\"m\"} 0.9\n",
        );
        assert_eq!(
            (sg.running, sg.waiting, sg.kv_usage),
            (Some(4.0), Some(9.0), Some(0.9))
        );
        let tgi = parse_metrics("tgi_queue_size 6\ntgi_batch_current_size 12\n");
        assert_eq!(
            (tgi.running, tgi.waiting, tgi.kv_usage),
            (Some(12.0), Some(6.0), None)
        );
        // Labels containing spaces and braces, junk lines, NaN.
        let odd = parse_metrics(
            "vllm:num_requests_waiting{a=\"x y}\"} 2\nnot a metric\nvllm:num_requests_running NaN\n",
        );
        assert_eq!((odd.waiting, odd.running), (Some(2.0), None));
        assert_eq!(parse_metrics(""), Scraped::default());
    }

    #[test]
    fn saturation_needs_a_fresh_scrape_over_a_limit() {
        let n = Node::new("a", Authority::from_static("127.0.0.1:1"), 1);
        let cap = &n.load.ai.capacity;
        let s = 1_000_000_000u64;
        cap.configure(Duration::from_secs(1), Some(4), Some(0.9));
        // Never scraped: never saturated, no view.
        assert!(!cap.is_saturated(&n.load, 10 * s));
        assert_eq!(cap.view(&n.load, 10 * s), None);
        let busy = Scraped {
            running: Some(8.0),
            waiting: Some(5.0),
            kv_usage: Some(0.5),
        };
        cap.record(&busy, 0, 10 * s);
        assert!(cap.is_saturated(&n.load, 10 * s));
        assert!(cap.is_saturated(&n.load, 13 * s), "fresh for 3 intervals");
        assert!(!cap.is_saturated(&n.load, 13 * s + 1), "stale after 3");
        // Recovered at the next scrape.
        let calm = Scraped {
            waiting: Some(4.0),
            ..busy
        };
        cap.record(&calm, 0, 20 * s);
        assert!(!cap.is_saturated(&n.load, 20 * s));
        // Requests sent since the scrape push it over again.
        let g = n.begin_request();
        assert_eq!(cap.view(&n.load, 20 * s).unwrap().waiting, 5);
        assert!(cap.is_saturated(&n.load, 20 * s));
        drop(g);
        // KV over the limit saturates too.
        cap.record(
            &Scraped {
                waiting: Some(0.0),
                kv_usage: Some(0.95),
                ..busy
            },
            0,
            30 * s,
        );
        assert!(cap.is_saturated(&n.load, 30 * s));
        // Failed scrape: forgotten.
        cap.clear();
        assert!(!cap.is_saturated(&n.load, 30 * s));
        // Node-level helper with a real clock.
        cap.record(&busy, 0, crate::fleet::now_ns());
        assert!(n.is_saturated(std::time::Instant::now()));
    }
}
