//! Token ids in the simulator: what the engine caches (block hashes over
//! token ids, for KV events) and vLLM's tokenization endpoints built on
//! them, `POST /tokenize` and `POST /v1/{chat/,}completions/render` (which
//! the vLLM router calls on its workers).

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Map, Value};

use super::engine::Core;
use super::server::{
    api_error, chat_prompt, json_response, text_inputs, text_prompt, Body, Ctx, SimError,
};
use super::validate::ApiError;
use crate::classify::prefix::{estimate_tokens, PrefixHasher, BYTES_PER_TOKEN, TOKENS_PER_BLOCK};
use crate::classify::Prompt;

/// The prompt's token ids: the request's own ids, else its captured text
/// through the tokenizer, else 4-byte pieces of the text (the simulator's
/// stand-in tokenizer, matching its 4-bytes-a-token estimate).
fn token_ids(core: &Core, hasher: PrefixHasher, ids: Option<Vec<u32>>) -> Vec<u32> {
    if let Some(ids) = ids {
        return ids;
    }
    let (_, capture) = hasher.finish_with_capture();
    let (text, spans) = capture.map(|c| (c.text, c.spans)).unwrap_or_default();
    match &core.tokenizer {
        Some(t) => {
            let text = String::from_utf8_lossy(&text).into_owned();
            // Chat messages (they have spans) go through the chat template
            // when there is one, as vLLM renders them.
            let prompt = if spans.is_empty() {
                Prompt::Text {
                    text,
                    truncated: false,
                }
            } else {
                Prompt::Chat {
                    text,
                    truncated: false,
                    spans,
                }
            };
            t.tokens(&prompt).map(|(ids, _)| ids).unwrap_or_default()
        }
        None => text
            .chunks(BYTES_PER_TOKEN)
            .map(|c| {
                let mut b = [0u8; 4];
                b[..c.len()].copy_from_slice(c);
                u32::from_le_bytes(b)
            })
            .collect(),
    }
}

/// The ids of a tokenize or render request (`messages` or `prompt`).
async fn request_ids(
    ctx: &Ctx,
    req: Request<Incoming>,
) -> Result<Result<(Map<String, Value>, Vec<u32>), Response<Body>>, SimError> {
    let body = req.into_body().collect().await?.to_bytes();
    let v = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(v)) => v,
        _ => {
            return Ok(Err(api_error(&ApiError::malformed_json(
                "the request body must be a JSON object",
            ))))
        }
    };
    let model = &ctx.core.cfg.model;
    let (hasher, ids) = if v.contains_key("messages") {
        match chat_prompt(&v, model, true) {
            Ok(h) => (h, None),
            Err(e) => return Ok(Err(api_error(&ApiError::bad_request(e, None)))),
        }
    } else {
        match text_inputs(v.get("prompt"), "prompt") {
            Ok(i) => (text_prompt(&i, model, true), prompt_ids(v.get("prompt"))),
            Err(e) => return Ok(Err(api_error(&ApiError::bad_request(e, None)))),
        }
    };
    let ids = token_ids(&ctx.core, hasher, ids);
    Ok(Ok((v, ids)))
}

/// vLLM's `POST /tokenize`.
pub(super) async fn tokenize(
    ctx: &Ctx,
    req: Request<Incoming>,
) -> Result<Response<Body>, SimError> {
    let (_, ids) = match request_ids(ctx, req).await? {
        Ok(x) => x,
        Err(resp) => return Ok(resp),
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({"count": ids.len(), "max_model_len": ctx.core.cfg.max_model_len,
                "tokens": ids, "token_strs": null}),
    ))
}

/// vLLM's `POST /v1/chat/completions/render` (one object) and
/// `/v1/completions/render` (a list): the engine prompt, not generated.
pub(super) async fn render(
    ctx: &Ctx,
    chat: bool,
    req: Request<Incoming>,
) -> Result<Response<Body>, SimError> {
    let (v, ids) = match request_ids(ctx, req).await? {
        Ok(x) => x,
        Err(resp) => return Ok(resp),
    };
    let max_tokens = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_u64))
        .unwrap_or(u64::from(ctx.core.cfg.default_max_tokens));
    let one = json!({
        "request_id": format!("render-{:016x}", fastrand::u64(..)),
        "token_ids": ids,
        "sampling_params": {"max_tokens": max_tokens},
        "features": null,
        "cache_salt": null,
    });
    Ok(json_response(
        StatusCode::OK,
        &if chat { one } else { json!([one]) },
    ))
}

/// A prompt as the engine takes it: token count, block hashes, block tokens.
pub(super) struct Tokenized {
    pub prompt_tokens: u32,
    pub hashes: Vec<u64>,
    pub tokens: Arc<[u32]>,
}

/// Token ids of a completions prompt given as ids (one array, or one
/// array of arrays).
pub(super) fn prompt_ids(v: Option<&Value>) -> Option<Vec<u32>> {
    let ids = |a: &[Value]| -> Option<Vec<u32>> {
        a.iter()
            .map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()))
            .collect()
    };
    match v? {
        Value::Array(a) if a.iter().all(Value::is_array) => {
            let mut out = Vec::new();
            for inner in a {
                out.extend(ids(inner.as_array()?)?);
            }
            Some(out)
        }
        Value::Array(a) => ids(a),
        _ => None,
    }
}

/// Turn the prompt into what the engine caches. Without a tokenizer or KV
/// events: 4 bytes a token and text block hashes (the gateway's approximate
/// fingerprint). Otherwise token ids — from the tokenizer, the request's
/// own ids, or 4-byte pieces of the text as the simulator's stand-in
/// tokenizer — and hashes chained over each block's ids from this
/// process's random root, as vLLM does.
pub(super) fn tokenized(core: &Core, hasher: PrefixHasher, ids: Option<Vec<u32>>) -> Tokenized {
    if !core.tokenizes() {
        let prompt_tokens = estimate_tokens(hasher.total_bytes());
        return Tokenized {
            prompt_tokens,
            hashes: hasher.finish(),
            tokens: Arc::from(Vec::new()),
        };
    }
    let ids = token_ids(core, hasher, ids);
    let hashes =
        crate::kvindex::chain::prompt_keys(core.hash_seed, &ids, TOKENS_PER_BLOCK, usize::MAX);
    let full = hashes.len() * TOKENS_PER_BLOCK;
    Tokenized {
        prompt_tokens: u32::try_from(ids.len()).unwrap_or(u32::MAX),
        hashes,
        tokens: Arc::from(&ids[..full]),
    }
}
