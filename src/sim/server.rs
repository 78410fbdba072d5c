//! The HTTP surface of a simulated node: OpenAI-compatible endpoints,
//! `/health`, `/metrics`, `/sim/*` control, and fault injection.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc::UnboundedReceiver;
use xxhash_rust::xxh3::xxh3_64;

use super::config::Faults;
use super::engine::{Core, Done, Event, SeqRequest};
use super::tokenize::{prompt_ids, tokenized};
use super::validate::{self, Api, ApiError};
use crate::classify::prefix::{feed_message, seed_for_model, PrefixHasher};

/// Why a response is cut off. Returned from the service (hyper then closes
/// the connection without answering) or from a streaming body (hyper aborts
/// the connection without the terminating chunk).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SimError {
    #[error("connection closed by fault injection (close_after_tokens)")]
    FaultClose,
    #[error("simulated engine stopped")]
    EngineGone,
    #[error("reading the request body failed: {0}")]
    Body(#[from] hyper::Error),
}

pub(crate) type Body = BoxBody<Bytes, SimError>;

/// Per-node context of the HTTP handlers.
pub(crate) struct Ctx {
    pub name: String,
    name_hdr: HeaderValue,
    pub core: Arc<Core>,
    /// `/metrics` answers so far (for `Faults::slow_metrics_every`).
    metrics_answers: AtomicU64,
}

impl Ctx {
    pub fn new(name: &str, core: Arc<Core>) -> Self {
        let name_hdr =
            HeaderValue::from_str(name).unwrap_or_else(|_| HeaderValue::from_static("sim"));
        Ctx {
            name: name.to_string(),
            name_hdr,
            core,
            metrics_answers: AtomicU64::new(0),
        }
    }
}

impl Ctx {
    /// The registered LoRA adapter a request's `model` names (id, name),
    /// when the node serves adapters.
    fn adapter(&self, v: &Map<String, Value>) -> Option<(u32, String)> {
        if !self.core.cfg.enable_lora {
            return None;
        }
        let m = v.get("model").and_then(Value::as_str)?;
        if m == self.core.cfg.model {
            return None;
        }
        self.core.state().lora.id(m).map(|id| (id, m.to_string()))
    }
}

/// `/v1/load_lora_adapter` and `/v1/unload_lora_adapter`, answered as
/// vLLM does (plain-text success, JSON errors).
async fn lora_admin(
    ctx: &Ctx,
    load: bool,
    req: Request<Incoming>,
) -> Result<Response<Body>, SimError> {
    if !ctx.core.cfg.enable_lora {
        return Ok(detail(StatusCode::NOT_FOUND, "Not Found"));
    }
    let body = req.into_body().collect().await?.to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(name) = v
        .get("lora_name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    else {
        return Ok(api_error(&ApiError::bad_request(
            "Both 'lora_name' and 'lora_path' must be provided.".into(),
            None,
        )));
    };
    if load && v.get("lora_path").and_then(Value::as_str).is_none() {
        return Ok(api_error(&ApiError::bad_request(
            "Both 'lora_name' and 'lora_path' must be provided.".into(),
            None,
        )));
    }
    let mut st = ctx.core.state();
    if load {
        if !st.lora.register(name) {
            return Ok(api_error(&ApiError::bad_request(
                format!("The lora adapter '{name}' has already been loaded."),
                None,
            )));
        }
        Ok(Response::new(full(format!(
            "Success: LoRA adapter '{name}' added successfully."
        ))))
    } else if st.lora.unregister(name) {
        Ok(Response::new(full(format!(
            "Success: LoRA adapter '{name}' removed successfully."
        ))))
    } else {
        let mut e = ApiError::unknown_model(name);
        e.message = format!("The lora adapter '{name}' cannot be found.");
        e.param = None;
        Ok(api_error(&e))
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

pub(super) fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_vec(v).unwrap_or_default()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(super) fn api_error(e: &ApiError) -> Response<Body> {
    json_response(e.status, &e.body())
}

/// FastAPI's own answers (unknown path, wrong method): `{"detail": ...}`.
fn detail(status: StatusCode, detail: &str) -> Response<Body> {
    json_response(status, &json!({ "detail": detail }))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Entry point of every request.
pub(crate) async fn handle(
    ctx: Arc<Ctx>,
    req: Request<Incoming>,
) -> Result<Response<Body>, SimError> {
    let path = req.uri().path().to_string();
    if !path.starts_with("/sim/") {
        let inference = matches!(
            path.as_str(),
            "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings"
        );
        ctx.core.record_request(&path, inference);
        let f = ctx.core.faults();
        if f.hang {
            // A hung server: the connection stays open, nothing comes back.
            std::future::pending::<()>().await;
        }
        if f.added_latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(f.added_latency_ms)).await;
        }
        if path == "/metrics" && f.slow_metrics_ms > 0 {
            let n = ctx.metrics_answers.fetch_add(1, Ordering::Relaxed);
            if n.is_multiple_of(u64::from(f.slow_metrics_every.max(1))) {
                tokio::time::sleep(Duration::from_millis(f.slow_metrics_ms)).await;
            }
        }
    }
    let mut resp = route(&ctx, &path, req).await?;
    resp.headers_mut()
        .insert("x-sim-node", ctx.name_hdr.clone());
    Ok(resp)
}

async fn route(ctx: &Ctx, path: &str, req: Request<Incoming>) -> Result<Response<Body>, SimError> {
    let m = req.method().clone();
    Ok(match (m, path) {
        (Method::POST, "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings")
            if ctx.core.parked() =>
        {
            // vLLM's sleep mode has freed the weights: nothing can run.
            api_error(&ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                kind: "ServiceUnavailableError".into(),
                message: "The engine is sleeping; POST /wake_up first.".into(),
                param: None,
            })
        }
        (Method::POST, "/v1/chat/completions") => return generate(ctx, true, req).await,
        (Method::POST, "/v1/completions") => return generate(ctx, false, req).await,
        (Method::POST, "/v1/embeddings") => return embeddings(ctx, req).await,
        (Method::POST, "/v1/load_lora_adapter") => return lora_admin(ctx, true, req).await,
        (Method::POST, "/v1/unload_lora_adapter") => return lora_admin(ctx, false, req).await,
        (Method::GET, "/v1/models") => {
            let cfg = &ctx.core.cfg;
            let mut data = vec![json!({
                "id": cfg.model, "object": "model", "created": unix_now(),
                "owned_by": "infergate-sim", "root": cfg.model,
                "parent": null, "max_model_len": cfg.max_model_len,
            })];
            // Adapters as vLLM lists them: their own card, parent = base.
            let st = ctx.core.state();
            for name in st.lora.names() {
                data.push(json!({
                    "id": name, "object": "model", "created": unix_now(),
                    "owned_by": "infergate-sim", "root": format!("/adapters/{name}"),
                    "parent": cfg.model, "max_model_len": cfg.max_model_len,
                }));
            }
            json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
        }
        (Method::POST, "/tokenize") => return super::tokenize::tokenize(ctx, req).await,
        (Method::POST, "/v1/chat/completions/render") => {
            return super::tokenize::render(ctx, true, req).await
        }
        (Method::POST, "/v1/completions/render") => {
            return super::tokenize::render(ctx, false, req).await
        }
        (Method::GET, "/health") => Response::new(full(Bytes::new())),
        (Method::GET, "/metrics") => {
            let mut r = Response::new(full(ctx.core.metrics_text()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        // vLLM's sleep mode endpoints (served with VLLM_SERVER_DEV_MODE=1).
        (Method::POST, "/sleep") => {
            ctx.core.park();
            Response::new(full(Bytes::new()))
        }
        (Method::POST, "/wake_up") => {
            let at = ctx.core.wake();
            tokio::time::sleep_until(at.into()).await;
            Response::new(full(Bytes::new()))
        }
        (Method::GET, "/is_sleeping") => {
            json_response(StatusCode::OK, &json!({"is_sleeping": ctx.core.sleeping()}))
        }
        // The node's dcgm-exporter (`:9400/metrics` on a GPU host).
        (Method::GET, "/sim/dcgm/metrics") => {
            let mut r = Response::new(full(ctx.core.dcgm_text(&ctx.name)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (Method::GET, "/sim/faults") => json_response(StatusCode::OK, &json!(ctx.core.faults())),
        (Method::POST | Method::PUT, "/sim/faults") => {
            let body = req.into_body().collect().await?.to_bytes();
            match serde_json::from_slice::<Faults>(&body) {
                Ok(f) => {
                    ctx.core.set_faults(f.clone());
                    json_response(StatusCode::OK, &json!(f))
                }
                Err(e) => detail(StatusCode::BAD_REQUEST, &format!("invalid faults: {e}")),
            }
        }
        (Method::GET, "/sim/stats") => {
            json_response(StatusCode::OK, &json!(ctx.core.stats(&ctx.name)))
        }
        (
            _,
            "/v1/chat/completions"
            | "/v1/completions"
            | "/v1/embeddings"
            | "/v1/load_lora_adapter"
            | "/v1/unload_lora_adapter"
            | "/v1/models"
            | "/health"
            | "/metrics"
            | "/sim/faults"
            | "/sim/stats"
            | "/sleep"
            | "/wake_up"
            | "/is_sleeping"
            | "/sim/dcgm/metrics",
        ) => detail(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed"),
        _ => {
            // Read (and drop) the body first, as servers usually do, so a
            // broken upload surfaces as a broken request on this node.
            let _ = http_body_util::Limited::new(req.into_body(), 1 << 20)
                .collect()
                .await;
            detail(StatusCode::NOT_FOUND, "Not Found")
        }
    })
}

/// Read and check an inference request as vLLM would: injected errors
/// first (a fault), then the JSON and its schema, then the model.
/// `Ok(Err(resp))` is an early answer.
async fn prelude(
    ctx: &Ctx,
    api: Api,
    req: Request<Incoming>,
) -> Result<Result<(Map<String, Value>, Bytes), Response<Body>>, SimError> {
    let body = req.into_body().collect().await?.to_bytes();
    let f = ctx.core.faults();
    if f.error_rate > 0.0 && fastrand::f64() < f.error_rate {
        ctx.core.record_injected_error();
        let status =
            StatusCode::from_u16(f.error_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Ok(Err(api_error(&ApiError::injected(status))));
    }
    let v = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(v)) => v,
        Ok(_) => {
            return Ok(Err(api_error(&ApiError::malformed_json(
                "the request body must be a JSON object",
            ))))
        }
        Err(e) => return Ok(Err(api_error(&ApiError::malformed_json(&e.to_string())))),
    };
    if let Err(e) = validate::check_schema(api, &v).and_then(|()| {
        if ctx.adapter(&v).is_some() {
            Ok(())
        } else {
            validate::check_model(&v, &ctx.core.cfg.model)
        }
    }) {
        return Ok(Err(api_error(&e)));
    }
    Ok(Ok((v, body)))
}

/// The shared prompt fingerprint of a chat request.
pub(super) fn chat_prompt(
    v: &Map<String, Value>,
    model: &str,
    capture: bool,
) -> Result<PrefixHasher, String> {
    let msgs = v
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("'messages' must be an array")?;
    let mut h = PrefixHasher::new(seed_for_model(model), usize::MAX);
    if capture {
        h = h.with_capture(usize::MAX);
    }
    for m in msgs {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or("every message needs a string 'role'")?;
        match m.get("content") {
            Some(Value::String(s)) => feed_message(&mut h, role, [s.as_str()]),
            Some(Value::Array(parts)) => feed_message(
                &mut h,
                role,
                parts
                    .iter()
                    .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                    .filter_map(|p| p.get("text").and_then(Value::as_str)),
            ),
            None | Some(Value::Null) => feed_message(&mut h, role, std::iter::empty()),
            Some(_) => return Err("message 'content' must be a string or an array".into()),
        }
    }
    Ok(h)
}

/// The inputs of a completions `prompt` or embeddings `input` (schema
/// already checked): strings, or token-id lists written out as text (the
/// simulator has no tokenizer; ids are hashed and counted by their digits).
pub(super) fn text_inputs(v: Option<&Value>, field: &str) -> Result<Vec<String>, String> {
    fn tokens(a: &[Value]) -> Option<String> {
        let ids: Option<Vec<String>> = a
            .iter()
            .map(|x| x.as_u64().map(|n| n.to_string()))
            .collect();
        ids.map(|ids| ids.join(" "))
    }
    let err = || format!("'{field}' must be a string, strings or token ids");
    match v {
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => Ok(a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect()),
        Some(Value::Array(a)) if a.iter().all(Value::is_array) => a
            .iter()
            .map(|x| x.as_array().and_then(|x| tokens(x)).ok_or_else(err))
            .collect(),
        Some(Value::Array(a)) => tokens(a).map(|t| vec![t]).ok_or_else(err),
        _ => Err(err()),
    }
}

pub(super) fn text_prompt(inputs: &[String], model: &str, capture: bool) -> PrefixHasher {
    let mut h = PrefixHasher::new(seed_for_model(model), usize::MAX);
    if capture {
        h = h.with_capture(usize::MAX);
    }
    for s in inputs {
        h.update(s.as_bytes());
    }
    h
}

const WORDS: &[&str] = &[
    "the", "model", "routes", "tokens", "across", "a", "cache", "of", "blocks", "and", "every",
    "request", "streams", "back", "quickly", "while", "batches", "grow", "under", "load", "so",
    "latency", "stays", "low", "for", "users", "who", "wait", "on", "answers", "from", "nodes",
];

/// The `i`-th generated token's text.
fn word(seed: u64, i: u32) -> String {
    let w = WORDS
        [((seed.wrapping_add(u64::from(i).wrapping_mul(0x9e37_79b9))) >> 7) as usize % WORDS.len()];
    if i == 0 {
        w.to_string()
    } else {
        format!(" {w}")
    }
}

fn usage(d: &Done) -> Value {
    json!({
        "prompt_tokens": d.prompt_tokens,
        "completion_tokens": d.completion_tokens,
        "total_tokens": d.prompt_tokens + d.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": d.cached_tokens},
    })
}

struct Meta {
    id: String,
    created: u64,
    model: String,
    chat: bool,
    seed: u64,
}

impl Meta {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.chat, chunk) {
            (true, true) => "chat.completion.chunk",
            (true, false) => "chat.completion",
            (false, _) => "text_completion",
        }
    }

    fn chunk(&self, choice: Value) -> Value {
        json!({"id": self.id, "object": self.object(true), "created": self.created,
               "model": self.model, "choices": [choice]})
    }

    fn token_chunk(&self, i: u32) -> Value {
        let text = word(self.seed, i);
        if self.chat {
            let delta = if i == 0 {
                json!({"role": "assistant", "content": text})
            } else {
                json!({"content": text})
            };
            self.chunk(json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}))
        } else {
            self.chunk(json!({"index": 0, "text": text, "logprobs": null, "finish_reason": null}))
        }
    }

    fn final_chunk(&self, d: &Done) -> Value {
        if self.chat {
            self.chunk(json!({"index": 0, "delta": {}, "logprobs": null,
                              "finish_reason": d.finish_reason}))
        } else {
            self.chunk(json!({"index": 0, "text": "", "logprobs": null,
                              "finish_reason": d.finish_reason}))
        }
    }

    fn usage_chunk(&self, d: &Done) -> Value {
        json!({"id": self.id, "object": self.object(true), "created": self.created,
               "model": self.model, "choices": [], "usage": usage(d)})
    }

    fn full_response(&self, d: &Done) -> Value {
        let text: String = (0..d.completion_tokens)
            .map(|i| word(self.seed, i))
            .collect();
        let choice = if self.chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text},
                   "logprobs": null, "finish_reason": d.finish_reason})
        } else {
            json!({"index": 0, "text": text, "logprobs": null, "finish_reason": d.finish_reason})
        };
        json!({"id": self.id, "object": self.object(false), "created": self.created,
               "model": self.model, "choices": [choice], "usage": usage(d)})
    }
}

fn sse(buf: &mut Vec<u8>, v: &Value) {
    buf.extend_from_slice(b"data: ");
    let _ = serde_json::to_writer(&mut *buf, v);
    buf.extend_from_slice(b"\n\n");
}

/// A server-sent-events body fed by the engine: one event per token, each
/// sent as soon as the engine produces it.
struct SseBody {
    rx: UnboundedReceiver<Event>,
    meta: Meta,
    include_usage: bool,
    close_after: Option<u32>,
    sent: u32,
    done: bool,
    yielded: bool,
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = SimError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, SimError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let ev = ready!(this.rx.poll_recv(cx));
        // Cut only once the engine has moved on, so the n-th event had time
        // to be flushed (hyper drops unflushed data when the body errors).
        if this.close_after.is_some_and(|n| this.sent >= n) {
            if !this.yielded {
                // Return Pending once so hyper flushes what it has written.
                this.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            this.done = true;
            return Poll::Ready(Some(Err(SimError::FaultClose)));
        }
        let mut buf = Vec::with_capacity(256);
        match ev {
            None => {
                this.done = true;
                return Poll::Ready(Some(Err(SimError::EngineGone)));
            }
            Some(Event::Token) => {
                sse(&mut buf, &this.meta.token_chunk(this.sent));
                this.sent += 1;
            }
            Some(Event::Done(d)) => {
                this.done = true;
                sse(&mut buf, &this.meta.final_chunk(&d));
                if this.include_usage {
                    sse(&mut buf, &this.meta.usage_chunk(&d));
                }
                buf.extend_from_slice(b"data: [DONE]\n\n");
            }
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

async fn generate(
    ctx: &Ctx,
    chat: bool,
    req: Request<Incoming>,
) -> Result<Response<Body>, SimError> {
    let api = if chat { Api::Chat } else { Api::Completion };
    let (v, body) = match prelude(ctx, api, req).await? {
        Ok(x) => x,
        Err(resp) => return Ok(resp),
    };
    let cfg = &ctx.core.cfg;
    // An adapter's KV blocks are its own (vLLM hashes the LoRA into them),
    // as the gateway's fingerprint seeded with the requested model is.
    let adapter = ctx.adapter(&v);
    let model = adapter
        .as_ref()
        .map_or(cfg.model.as_str(), |(_, n)| n.as_str());
    let capture = ctx.core.tokenizes();
    let hasher = if chat {
        chat_prompt(&v, model, capture)
    } else {
        text_inputs(v.get("prompt"), "prompt").map(|i| text_prompt(&i, model, capture))
    };
    let hasher = match hasher {
        Ok(h) => h,
        Err(e) => return Ok(api_error(&ApiError::bad_request(e, None))),
    };
    let ids = (!chat).then(|| prompt_ids(v.get("prompt"))).flatten();
    let prompt = tokenized(&ctx.core, hasher, ids);
    let prompt_tokens = prompt.prompt_tokens;
    // vLLM prefers `max_completion_tokens` (chat) over `max_tokens`.
    let explicit = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_i64));
    let (max_tokens, finish_reason) = match validate::output_budget(
        prompt_tokens,
        explicit,
        cfg.max_model_len,
        cfg.default_max_tokens,
    ) {
        Ok(budget) => budget,
        Err(e) => return Ok(api_error(&e)),
    };
    let stream = v.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = v
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut rx = match ctx.core.submit(SeqRequest {
        prompt_tokens,
        hashes: prompt.hashes,
        max_tokens,
        finish_reason,
        lora: adapter.as_ref().map(|(id, _)| *id),
        tokens: prompt.tokens,
    }) {
        Ok(rx) => rx,
        Err(e) => return Ok(api_error(&ApiError::bad_request(e, None))),
    };
    let meta = Meta {
        id: format!(
            "{}-{:032x}",
            if chat { "chatcmpl" } else { "cmpl" },
            fastrand::u128(..)
        ),
        created: unix_now(),
        model: model.to_string(),
        chat,
        seed: xxh3_64(&body),
    };
    let close_after = ctx.core.faults().close_after_tokens;
    if stream {
        let body = SseBody {
            rx,
            meta,
            include_usage,
            close_after,
            sent: 0,
            done: false,
            yielded: false,
        };
        let mut r = Response::new(BodyExt::boxed(body));
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return Ok(r);
    }
    let mut tokens = 0u32;
    let done = loop {
        if close_after.is_some_and(|n| tokens >= n) {
            return Err(SimError::FaultClose);
        }
        match rx.recv().await {
            Some(Event::Token) => tokens += 1,
            Some(Event::Done(d)) => break d,
            None => return Err(SimError::EngineGone),
        }
    };
    if close_after.is_some() {
        return Err(SimError::FaultClose);
    }
    Ok(json_response(StatusCode::OK, &meta.full_response(&done)))
}

/// A deterministic unit vector derived from the input text.
fn embed(text: &str, dim: usize) -> Vec<f32> {
    let mut x = xxh3_64(text.as_bytes());
    let mut v: Vec<f32> = (0..dim)
        .map(|_| {
            // splitmix64
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0
        })
        .collect();
    let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|a| *a /= norm);
    }
    v
}

async fn embeddings(ctx: &Ctx, req: Request<Incoming>) -> Result<Response<Body>, SimError> {
    let (v, _) = match prelude(ctx, Api::Embedding, req).await? {
        Ok(x) => x,
        Err(resp) => return Ok(resp),
    };
    let cfg = &ctx.core.cfg;
    let inputs = match text_inputs(v.get("input"), "input") {
        Ok(i) => i,
        Err(e) => return Ok(api_error(&ApiError::bad_request(e, None))),
    };
    let h = text_prompt(&inputs, &cfg.model, ctx.core.tokenizes());
    let prompt = tokenized(&ctx.core, h, None);
    let prompt_tokens = prompt.prompt_tokens;
    if let Err(e) = validate::check_embedding_len(prompt_tokens, cfg.max_model_len) {
        return Ok(api_error(&e));
    }
    let mut rx = match ctx.core.submit(SeqRequest {
        prompt_tokens,
        hashes: prompt.hashes,
        max_tokens: 0,
        finish_reason: "stop",
        lora: None,
        tokens: prompt.tokens,
    }) {
        Ok(rx) => rx,
        Err(e) => return Ok(api_error(&ApiError::bad_request(e, None))),
    };
    let done = loop {
        match rx.recv().await {
            Some(Event::Done(d)) => break d,
            Some(Event::Token) => {}
            None => return Err(SimError::EngineGone),
        }
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"object": "embedding", "index": i, "embedding": embed(s, cfg.embedding_dim)}))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"object": "list", "model": cfg.model, "data": data,
                "usage": {"prompt_tokens": done.prompt_tokens, "total_tokens": done.prompt_tokens}}),
    ))
}
