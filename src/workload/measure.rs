//! One request sent and measured the way inference-perf measures it: send
//! and completion times, the arrival time of every streamed content event
//! (TTFT, inter-token latencies) and the server's `usage` (prompt, cached
//! and completion tokens). Nothing here trusts the server: a malformed or
//! missing field is a missing measurement, never a panic.

use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use super::client::Planned;
use crate::tls::HttpsConnector;

/// The client the bench sends with (`http://` and `https://`).
pub type BenchClient = Client<HttpsConnector, Full<Bytes>>;

/// A client for `http://` and `https://` targets (system roots).
pub fn bench_client() -> BenchClient {
    let connector =
        crate::tls::https_connector(crate::tls::default_client_config(), Duration::from_secs(10));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(4096)
        .build(connector)
}

/// Where and how to send.
#[derive(Debug, Clone)]
pub struct Target {
    /// Full URL of the chat completions endpoint.
    pub url: String,
    /// Bearer token, if any.
    pub api_key: Option<String>,
    /// Response header naming the node that served (e.g. `x-sim-node`).
    pub node_header: Option<String>,
    /// Give up on a request after this long.
    pub timeout: Duration,
}

/// One finished request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Record {
    /// Load stage (0-based).
    pub stage: usize,
    /// When it was due, seconds after the run started.
    pub scheduled: f64,
    /// When it was sent, seconds after the run started.
    pub start: f64,
    /// When its last byte arrived (or it failed).
    pub end: f64,
    /// HTTP status (0: no response).
    pub status: u16,
    /// Why it failed; `None` for a success.
    pub error: Option<String>,
    /// Streamed (`stream: true`).
    pub streamed: bool,
    /// Node that served it, from the node header.
    pub node: Option<String>,
    /// The body's `user` (the chat sessions send `session-<i>`: which
    /// requests belong to one conversation, and so to one system prompt).
    pub user: Option<String>,
    /// `usage.prompt_tokens`, else the client's estimate (4 bytes a token).
    pub prompt_tokens: u64,
    /// Whether `prompt_tokens` came from the server.
    pub prompt_from_server: bool,
    /// `usage.prompt_tokens_details.cached_tokens` (`None`: not reported).
    pub cached_tokens: Option<u64>,
    /// `usage.completion_tokens`, else the streamed content events.
    pub output_tokens: u64,
    /// Whether `output_tokens` came from the server.
    pub output_from_server: bool,
    /// Arrival of the first streamed content event, seconds after the run
    /// started (streamed requests with content only).
    pub first_token: Option<f64>,
    /// Gaps between successive content events, in seconds.
    pub itl: Vec<f32>,
}

impl Record {
    /// Whether it succeeded.
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
    /// e2e request latency: completion time − send time.
    pub fn request_latency(&self) -> f64 {
        self.end - self.start
    }
    /// Time to first token (streamed requests).
    pub fn ttft(&self) -> Option<f64> {
        self.first_token.map(|t| t - self.start)
    }
    /// Time per output token: (e2e − TTFT) / (output tokens − 1), for
    /// streamed requests with more than one output token.
    pub fn tpot(&self) -> Option<f64> {
        let ttft = self.ttft()?;
        (self.output_tokens > 1)
            .then(|| (self.request_latency() - ttft) / (self.output_tokens - 1) as f64)
    }
    /// Normalized time per output token: e2e / output tokens (0 without
    /// output, as inference-perf reports it).
    pub fn ntpot(&self) -> f64 {
        if self.output_tokens == 0 {
            0.0
        } else {
            self.request_latency() / self.output_tokens as f64
        }
    }
    /// Mean of this request's inter-token latencies.
    pub fn itl_mean(&self) -> Option<f64> {
        (!self.itl.is_empty())
            .then(|| self.itl.iter().map(|&d| f64::from(d)).sum::<f64>() / self.itl.len() as f64)
    }
    /// Every time divided by `factor` (simulated time from wall time).
    pub fn scaled(mut self, factor: f64) -> Record {
        let f = |t: f64| t / factor;
        self.scheduled = f(self.scheduled);
        self.start = f(self.start);
        self.end = f(self.end);
        self.first_token = self.first_token.map(f);
        for d in &mut self.itl {
            *d = (f64::from(*d) / factor) as f32;
        }
        self
    }
}

/// What a response body said, gathered while it streams.
#[derive(Debug, Default)]
struct Seen {
    first: Option<Instant>,
    last: Option<Instant>,
    itl: Vec<f32>,
    content_events: u64,
    usage: Option<serde_json::Value>,
    done: bool,
    error: Option<String>,
}

impl Seen {
    /// One SSE `data:` payload received at `at`.
    fn event(&mut self, data: &[u8], at: Instant) {
        if data == b"[DONE]" {
            self.done = true;
            return;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
            return;
        };
        if let Some(e) = v.get("error") {
            self.error = Some(
                e.get("message")
                    .and_then(|m| m.as_str())
                    .map_or_else(|| e.to_string(), str::to_string),
            );
            return;
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        let choice = &v["choices"][0];
        let text = choice["delta"]["content"]
            .as_str()
            .or_else(|| choice["text"].as_str());
        if text.is_some_and(|t| !t.is_empty()) {
            self.content_events += 1;
            if let Some(last) = self.last {
                self.itl.push((at - last).as_secs_f32());
            }
            self.first.get_or_insert(at);
            self.last = Some(at);
        }
    }
}

/// Read `usage` into the record (fields a server got wrong stay unset).
fn apply_usage(record: &mut Record, usage: Option<&serde_json::Value>) {
    let Some(usage) = usage else { return };
    if let Some(p) = usage["prompt_tokens"].as_u64() {
        record.prompt_tokens = p;
        record.prompt_from_server = true;
    }
    if let Some(c) = usage["completion_tokens"].as_u64() {
        record.output_tokens = c;
        record.output_from_server = true;
    }
    record.cached_tokens = usage["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .map(|c| c.min(record.prompt_tokens));
}

/// Send `planned` to `target` and measure it. `epoch` is the run's start.
pub async fn send(
    client: &BenchClient,
    target: &Target,
    planned: &Planned,
    epoch: Instant,
    stage: usize,
    scheduled: f64,
) -> Record {
    let body = planned.body.to_string();
    let mut record = Record {
        stage,
        scheduled,
        streamed: planned.stream,
        // The client's estimate until the server says: ~4 bytes a token.
        prompt_tokens: (body.len() as u64).div_ceil(4),
        user: planned.body["user"].as_str().map(str::to_string),
        ..Record::default()
    };
    let mut request = Request::post(&target.url).header(CONTENT_TYPE, "application/json");
    if let Some(key) = &target.api_key {
        request = request.header(AUTHORIZATION, format!("Bearer {key}"));
    }
    let start = Instant::now();
    record.start = (start - epoch).as_secs_f64();
    let request = match request.body(Full::new(Bytes::from(body))) {
        Ok(r) => r,
        Err(e) => {
            record.end = record.start;
            record.error = Some(format!("invalid request: {e}"));
            return record;
        }
    };
    let exchange = exchange(client, target, request, planned.stream, &mut record);
    let outcome = tokio::time::timeout(target.timeout, exchange).await;
    let end = Instant::now();
    record.end = (end - epoch).as_secs_f64();
    match outcome {
        Err(_) => record.error = Some(format!("timeout after {:?}", target.timeout)),
        Ok(Err(e)) => record.error = Some(e),
        Ok(Ok(seen)) => {
            apply_usage(&mut record, seen.usage.as_ref());
            if planned.stream {
                if !record.output_from_server {
                    record.output_tokens = seen.content_events;
                }
                record.first_token = seen.first.map(|t| (t - epoch).as_secs_f64());
                record.itl = seen.itl;
                if let Some(e) = seen.error {
                    record.error = Some(format!("error event: {e}"));
                } else if !seen.done {
                    record.error = Some("stream ended without [DONE]".into());
                }
            }
        }
    }
    record
}

/// The request/response exchange; fills status and node.
async fn exchange(
    client: &BenchClient,
    target: &Target,
    request: Request<Full<Bytes>>,
    stream: bool,
    record: &mut Record,
) -> Result<Seen, String> {
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("connection error: {}", innermost(&e)))?;
    record.status = response.status().as_u16();
    if let Some(name) = &target.node_header {
        record.node = response
            .headers()
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
    }
    let ok = response.status().is_success();
    let mut body = response.into_body();
    if !ok || !stream {
        let bytes = body
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        if !ok {
            return Err(format!("HTTP {}: {}", record.status, error_message(&bytes)));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("response is not JSON: {e}"))?;
        return Ok(Seen {
            usage: v.get("usage").filter(|u| u.is_object()).cloned(),
            done: true,
            ..Seen::default()
        });
    }
    let mut seen = Seen::default();
    let mut line = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("stream broken: {e}"))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let at = Instant::now();
        for &byte in data.iter() {
            if byte != b'\n' {
                line.push(byte);
                continue;
            }
            let text = line.strip_suffix(b"\r").unwrap_or(&line);
            if let Some(event) = text.strip_prefix(b"data:") {
                seen.event(event.trim_ascii_start(), at);
            }
            line.clear();
        }
    }
    Ok(seen)
}

/// An API error body's message, else its first 200 bytes.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v["error"]["message"]
                .as_str()
                .or_else(|| v["message"].as_str())
                .or_else(|| v["detail"].as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
}

fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_follow_inference_perf() {
        let r = Record {
            start: 1.0,
            end: 3.0,
            first_token: Some(1.5),
            output_tokens: 6,
            itl: vec![0.25, 0.5],
            ..Record::default()
        };
        assert_eq!(r.request_latency(), 2.0);
        assert_eq!(r.ttft(), Some(0.5));
        // (e2e − TTFT) / (output tokens − 1) = 1.5 / 5
        assert!((r.tpot().unwrap() - 0.3).abs() < 1e-12);
        assert!((r.ntpot() - 2.0 / 6.0).abs() < 1e-12);
        assert!((r.itl_mean().unwrap() - 0.375).abs() < 1e-9);
        let one = Record {
            output_tokens: 1,
            ..r.clone()
        };
        assert_eq!(one.tpot(), None);
        let plain = Record {
            first_token: None,
            ..r
        };
        assert_eq!((plain.ttft(), plain.tpot()), (None, None));
    }

    #[test]
    fn sse_events_count_content_usage_and_errors() {
        let t0 = Instant::now();
        let mut seen = Seen::default();
        seen.event(
            br#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#,
            t0,
        );
        seen.event(br#"{"choices":[{"delta":{"content":"a"}}]}"#, t0);
        seen.event(
            br#"{"choices":[{"text":"b"}]}"#,
            t0 + Duration::from_millis(20),
        );
        seen.event(b"not json", t0);
        seen.event(
            br#"{"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":64}}}"#,
            t0,
        );
        seen.event(b"[DONE]", t0);
        assert_eq!(seen.content_events, 2);
        assert_eq!(seen.itl.len(), 1);
        assert!(seen.done && seen.error.is_none());
        let mut r = Record::default();
        apply_usage(&mut r, seen.usage.as_ref());
        // Cached tokens are clamped to the prompt, as inference-perf does.
        assert_eq!(
            (r.prompt_tokens, r.output_tokens, r.cached_tokens),
            (10, 2, Some(10))
        );
        seen.event(br#"{"error":{"message":"boom"}}"#, t0);
        assert_eq!(seen.error.as_deref(), Some("boom"));
    }
}
