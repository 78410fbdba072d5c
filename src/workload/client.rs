//! Sends the workload: open-loop Poisson arrivals at a target rate.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::prompts::{system_prompt, words};
use super::stats::{Sample, Stats};

/// What to send.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Gateway address.
    pub target: SocketAddr,
    /// Model name to ask for.
    pub model: String,
    /// Mean requests per second (Poisson arrivals).
    pub rate: f64,
    /// Number of concurrent chat sessions (users).
    pub sessions: usize,
    /// Number of distinct shared system prompts.
    pub system_prompts: usize,
    /// Length of each system prompt in bytes (~4 bytes per token).
    pub system_prompt_bytes: usize,
    /// Range of user-message lengths in bytes.
    pub user_bytes: (usize, usize),
    /// Range of `max_tokens`.
    pub max_tokens: (u32, u32),
    /// Share of requests that stream (0..=1).
    pub stream_share: f64,
    /// Turns before a session starts a new conversation.
    pub max_turns: usize,
    /// Most requests in flight; arrivals beyond it are counted as errors.
    pub max_in_flight: usize,
    /// Seed for every random choice.
    pub seed: u64,
    /// Share (0..=1) of turns that are long: a pasted document as the user
    /// message and a long answer.
    pub long_share: f64,
    /// Range of long user-message lengths in bytes.
    pub long_user_bytes: (usize, usize),
    /// Range of `max_tokens` of long turns.
    pub long_max_tokens: (u32, u32),
    /// Send each session's id as the body's `user` field.
    pub send_user: bool,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            target: SocketAddr::from(([127, 0, 0, 1], 8080)),
            model: "llama-3.1-8b-instruct".into(),
            rate: 10.0,
            sessions: 32,
            system_prompts: 4,
            system_prompt_bytes: 4096,
            user_bytes: (100, 800),
            max_tokens: (16, 256),
            stream_share: 0.7,
            max_turns: 6,
            max_in_flight: 512,
            seed: 42,
            long_share: 0.0,
            long_user_bytes: (4000, 12000),
            long_max_tokens: (256, 512),
            send_user: false,
        }
    }
}

/// One planned request: the JSON body and whether it streams.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Request body (an OpenAI chat completion).
    pub body: serde_json::Value,
    /// Whether `stream` is true.
    pub stream: bool,
}

struct Session {
    system: usize,
    history: Vec<(&'static str, String)>,
}

/// The shared-prefix chat sessions of a [`WorkloadConfig`]: every call of
/// [`ChatSessions::next_request`] picks a session and adds a turn. Deterministic for
/// the config's seed (the draws are the ones `run` has always made).
pub struct ChatSessions {
    config: WorkloadConfig,
    rng: fastrand::Rng,
    prompts: Vec<String>,
    sessions: Vec<Session>,
}

impl ChatSessions {
    /// Sessions for `config` (its `target`, `rate` and `max_in_flight` are
    /// not used here).
    pub fn new(config: WorkloadConfig) -> ChatSessions {
        let rng = fastrand::Rng::with_seed(config.seed);
        let prompts: Vec<String> = (0..config.system_prompts.max(1))
            .map(|i| system_prompt(config.seed, i, config.system_prompt_bytes))
            .collect();
        let sessions: Vec<Session> = (0..config.sessions.max(1))
            .map(|i| Session {
                system: i % prompts.len(),
                history: Vec::new(),
            })
            .collect();
        ChatSessions {
            config,
            rng,
            prompts,
            sessions,
        }
    }

    /// Exponential inter-arrival gap in seconds for a Poisson process at
    /// `rate`, drawn from the sessions' generator.
    pub fn gap(&mut self, rate: f64) -> f64 {
        -(1.0 - self.rng.f64()).ln() / rate.max(0.001)
    }

    /// The next turn of a random session.
    pub fn next_request(&mut self) -> Planned {
        let config = &self.config;
        let rng = &mut self.rng;
        let session_index = rng.usize(..self.sessions.len());
        let session = &mut self.sessions[session_index];
        if session.history.len() / 2 >= config.max_turns {
            session.history.clear();
        }
        // Drawn only when long turns are enabled, so that a config without
        // them replays exactly the sequence it always did.
        let long = config.long_share > 0.0 && rng.f64() < config.long_share;
        let (user_bytes, max_range) = if long {
            (config.long_user_bytes, config.long_max_tokens)
        } else {
            (config.user_bytes, config.max_tokens)
        };
        let user_len = rng.usize(user_bytes.0..=user_bytes.1.max(user_bytes.0));
        let user = words(rng, user_len);
        session.history.push(("user", user));
        let stream = rng.f64() < config.stream_share;
        let max_tokens = rng.u32(max_range.0..=max_range.1.max(max_range.0));
        let mut messages =
            vec![serde_json::json!({"role": "system", "content": self.prompts[session.system]})];
        messages.extend(
            session
                .history
                .iter()
                .map(|(role, text)| serde_json::json!({"role": role, "content": text})),
        );
        // The reply is synthetic so the next turn's prompt is deterministic.
        let reply = words(rng, 200);
        session.history.push(("assistant", reply));
        let mut body = chat_body(&config.model, messages, stream, max_tokens);
        if config.send_user {
            body["user"] = serde_json::json!(format!("session-{session_index}"));
        }
        Planned { body, stream }
    }
}

/// Send the workload until `stop` resolves; every finished request is
/// recorded in `stats`. Requests still in flight at stop are abandoned.
pub async fn run(config: WorkloadConfig, stats: Arc<Stats>, stop: impl Future<Output = ()>) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let slots = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let uri = format!("http://{}/v1/chat/completions", config.target);
    let rate = config.rate;
    let mut sessions = ChatSessions::new(config);
    let mut next = Instant::now();
    tokio::pin!(stop);
    loop {
        // Exponential inter-arrival times: a Poisson process at `rate`.
        let gap = sessions.gap(rate);
        next += Duration::from_secs_f64(gap.min(60.0));
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = &mut stop => return,
        }
        let Planned { body, stream } = sessions.next_request();
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            stats.record(Sample {
                status: 0,
                ok: false,
                streamed: stream,
                ttft: Duration::ZERO,
                total: Duration::ZERO,
                tokens: 0,
                itl: Duration::ZERO,
            });
            continue;
        };
        let request = Request::post(&uri)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())));
        let Ok(request) = request else { continue };
        let client = client.clone();
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            let sample = send(&client, request, stream).await;
            stats.record(sample);
            drop(permit);
        });
    }
}

/// A chat request body. `stream_options` goes only with `stream: true`:
/// vLLM, the OpenAI API and the SGLang router refuse it otherwise (400).
pub fn chat_body(
    model: &str,
    messages: Vec<serde_json::Value>,
    stream: bool,
    max_tokens: u32,
) -> serde_json::Value {
    let mut body = serde_json::json!({
        "model": model,
        "messages": messages,
        "stream": stream,
        "max_tokens": max_tokens,
    });
    if stream {
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    body
}

/// Send one request and read the whole response, timing it.
pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    request: Request<Full<Bytes>>,
    stream: bool,
) -> Sample {
    let start = Instant::now();
    let failed = |status: u16| Sample {
        status,
        ok: false,
        streamed: stream,
        ttft: start.elapsed(),
        total: start.elapsed(),
        tokens: 0,
        itl: Duration::ZERO,
    };
    let response = match client.request(request).await {
        Ok(response) => response,
        Err(_) => return failed(0),
    };
    let status = response.status();
    let mut body = response.into_body();
    if status != StatusCode::OK {
        let _ = body.collect().await;
        return failed(status.as_u16());
    }
    if !stream {
        return match body.collect().await {
            Ok(collected) => {
                let bytes = collected.to_bytes();
                let tokens = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v["usage"]["completion_tokens"].as_u64())
                    .unwrap_or(0) as u32;
                let total = start.elapsed();
                Sample {
                    status: 200,
                    ok: true,
                    streamed: false,
                    ttft: total,
                    total,
                    tokens,
                    itl: Duration::ZERO,
                }
            }
            Err(_) => failed(200),
        };
    }
    let mut ttft = None;
    let mut last_token: Option<Duration> = None;
    let mut tokens = 0u32;
    let mut done = false;
    let mut line = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return failed(200) };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        for &byte in data.iter() {
            if byte != b'\n' {
                line.push(byte);
                continue;
            }
            if let Some(event) = line.strip_prefix(b"data: ") {
                if event == b"[DONE]" {
                    done = true;
                } else if event.windows(9).any(|w| w == b"\"content\"") {
                    tokens += 1;
                    let at = start.elapsed();
                    ttft.get_or_insert(at);
                    last_token = Some(at);
                } else if event.starts_with(b"{\"error\"") {
                    return failed(200);
                }
            }
            line.clear();
        }
    }
    let total = start.elapsed();
    // Mean gap between content events after the first.
    let itl = match (ttft, last_token) {
        (Some(first), Some(last)) if tokens > 1 => (last - first) / (tokens - 1),
        _ => Duration::ZERO,
    };
    Sample {
        status: 200,
        ok: done,
        streamed: true,
        ttft: ttft.unwrap_or(total),
        total,
        tokens,
        itl,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_options_only_when_streaming() {
        let messages = vec![serde_json::json!({"role": "user", "content": "hi"})];
        let plain = chat_body("m", messages.clone(), false, 8);
        assert!(plain.get("stream_options").is_none(), "{plain}");
        assert_eq!(plain["stream"], false);
        let streamed = chat_body("m", messages, true, 8);
        assert_eq!(streamed["stream_options"]["include_usage"], true);
    }

    /// The workload against a simulated vLLM node: every request, streamed
    /// or not, is accepted (the node refuses what vLLM refuses).
    #[tokio::test]
    async fn every_request_is_accepted_by_a_vllm_like_node() {
        let node = crate::sim::SimNode::start(
            "w",
            "127.0.0.1:0".parse().unwrap(),
            crate::sim::SimConfig {
                time_scale: 0.001,
                ..crate::sim::SimConfig::small()
            },
        )
        .await
        .unwrap();
        let stats = Arc::new(Stats::default());
        let config = WorkloadConfig {
            target: node.addr(),
            rate: 200.0,
            stream_share: 0.5,
            system_prompt_bytes: 256,
            max_tokens: (2, 8),
            ..WorkloadConfig::default()
        };
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (watch, collected) = (Arc::clone(&stats), Arc::clone(&seen));
        run(config, Arc::clone(&stats), async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let seen = {
                    let mut got = collected.lock().unwrap_or_else(|p| p.into_inner());
                    got.extend(watch.take());
                    got.len()
                };
                if seen >= 40 || Instant::now() >= deadline {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        let samples = std::mem::take(&mut *seen.lock().unwrap());
        assert!(samples.len() >= 40, "only {} requests", samples.len());
        assert!(samples.iter().any(|s| s.streamed) && samples.iter().any(|s| !s.streamed));
        let failed: Vec<_> = samples.iter().filter(|s| !s.ok).collect();
        assert!(failed.is_empty(), "{failed:?}");
        node.shutdown().await;
    }
}
