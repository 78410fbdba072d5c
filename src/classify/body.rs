//! Step two of classification: the JSON body of an inference request.
//!
//! The body is read, never rewritten: the caller forwards the original bytes.
//! Only the fields routing needs are parsed, straight from the bytes with
//! hand-written serde visitors (see the `shape` submodule): strings are borrowed
//! from the body unless they contain escapes, every other field is skipped
//! without being built, and no `serde_json::Value` is ever made. A field we
//! read that has the wrong type is an error naming the field, e.g.
//! "`messages[2].content` must be a string, an array of content parts, or null".
//!
//! # What is hashed into the prefix fingerprint
//!
//! The hash chain is seeded with the model name (body `model`, else the path
//! model, else `""`), then fed per endpoint:
//!
//! | endpoint | fed |
//! |---|---|
//! | chat completions, Ollama chat | each message via [`feed_message`]`(role, text parts)` |
//! | completions `prompt`, embeddings `input`, Ollama embed `input` | each string raw, in order |
//! | Ollama embed (legacy `/api/embeddings`) `prompt` | raw |
//! | rerank | `query` raw, then each document's text raw |
//! | responses | `instructions` as a `"system"` message, then `input`: a string as one `"user"` message, or each item that has a `role` as a message |
//! | TGI | `inputs` raw |
//! | Ollama generate | `system` as a `"system"` message, then `prompt` raw |
//!
//! Token-id prompts (an array of integers, or an array of such arrays) are
//! hashed as each id's 4 little-endian bytes (`u32`), all arrays concatenated;
//! they count one token per id. Text counts [`estimate_tokens`] of its bytes.
//! Message roles in a chat with no `role` are fed as `""`. Content parts count
//! when their `type` is absent, `text`, `input_text` or `output_text`; a bare
//! string part is taken as text; other parts (images, audio, files) are skipped.
//!
//! Output limits: chat prefers `max_completion_tokens` over the older
//! `max_tokens` (as vLLM does). A negative limit (Ollama's `num_predict: -1`
//! means "unlimited") gives `None`; limits above `u32::MAX` saturate.
use serde::de::IgnoredAny;
use serde_json::error::Category;

use super::prefix::{estimate_tokens, feed_message, seed_for_model, PrefixHasher};
mod shape;

use std::sync::Arc;

use super::{Endpoint, Head, Priority, Prompt, RequestClass};
use shape::{BodyShape, Loc, Message, Parsed, Piece, ResponsesInput, Seed};

/// Options for body classification.
#[derive(Debug, Clone)]
pub struct ClassifyOptions {
    /// Most prefix blocks to hash.
    pub max_prefix_blocks: usize,
    /// Keep up to this many bytes of prompt text in
    /// [`RequestClass::prompt`] (0: none; set when a route uses the precise
    /// prefix policy, which tokenizes it).
    pub capture_prompt_bytes: usize,
}

impl Default for ClassifyOptions {
    fn default() -> Self {
        ClassifyOptions {
            max_prefix_blocks: 256,
            capture_prompt_bytes: 0,
        }
    }
}

/// Why a body could not be classified; the client gets a 400 with this text.
///
/// Messages never echo the body's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    /// The body is not valid JSON (syntax error, truncated, trailing data).
    #[error("invalid JSON body: {0}")]
    InvalidJson(String),
    /// The endpoint needs a JSON body and none (or only whitespace) was sent.
    #[error("request body is empty; expected a JSON object")]
    EmptyBody,
    /// Valid JSON, but the top level is not an object.
    #[error("request body must be a JSON object")]
    NotAnObject,
    /// A field routing reads has the wrong type. The text names the field,
    /// e.g. "`model` must be a string".
    #[error("{0}")]
    InvalidField(String),
}

/// Parse the body of an inference request.
///
/// Bodies of endpoints that carry no routing JSON (KServe infer, models,
/// gRPC, other) are not read: the class comes from `head` alone.
pub fn classify_body(
    head: Head,
    body: &[u8],
    opts: &ClassifyOptions,
) -> Result<RequestClass, ClassifyError> {
    let endpoint = head.endpoint;
    match endpoint {
        Endpoint::KServeInfer | Endpoint::Models | Endpoint::Grpc | Endpoint::Other => {
            return Ok(RequestClass::from_head(head));
        }
        _ => {}
    }
    let parsed = parse(endpoint, body)?;
    Ok(build(head, parsed, opts))
}

fn parse(endpoint: Endpoint, body: &[u8]) -> Result<Parsed<'_>, ClassifyError> {
    // JSON whitespace only: space, tab, LF, CR.
    let first = body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    match first {
        None => return Err(ClassifyError::EmptyBody),
        Some(b'{') => {}
        Some(_) => {
            return Err(match serde_json::from_slice::<IgnoredAny>(body) {
                Ok(_) => ClassifyError::NotAnObject,
                Err(e) => ClassifyError::InvalidJson(e.to_string()),
            })
        }
    }
    // One UTF-8 check of the whole body (its ASCII runs go a word at a
    // time) spares serde_json a byte-by-byte check of every string it
    // reads (its `from_slice` validates each string on its own). A body
    // that is not UTF-8 takes the slice reader, so its error is the one
    // serde_json has always given.
    match std::str::from_utf8(body) {
        Ok(text) => read_body(serde_json::Deserializer::from_str(text), endpoint),
        Err(_) => read_body(serde_json::Deserializer::from_slice(body), endpoint),
    }
}

fn read_body<'de, R: serde_json::de::Read<'de>>(
    mut de: serde_json::Deserializer<R>,
    endpoint: Endpoint,
) -> Result<Parsed<'de>, ClassifyError> {
    let parsed = serde::de::DeserializeSeed::deserialize(
        Seed(BodyShape {
            loc: Loc::Root("request body"),
            endpoint,
        }),
        &mut de,
    )
    .map_err(to_error)?;
    de.end().map_err(to_error)?;
    Ok(parsed)
}

/// Field errors are ours (fixed text naming the field): drop serde_json's
/// position suffix. Everything else is a JSON syntax problem.
fn to_error(e: serde_json::Error) -> ClassifyError {
    match e.classify() {
        Category::Data => {
            let msg = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            let msg = match msg.strip_suffix(&suffix) {
                Some(m) => m.to_owned(),
                None => msg,
            };
            ClassifyError::InvalidField(msg)
        }
        Category::Syntax | Category::Eof | Category::Io => {
            ClassifyError::InvalidJson(e.to_string())
        }
    }
}

fn build(head: Head, p: Parsed<'_>, opts: &ClassifyOptions) -> RequestClass {
    let endpoint = head.endpoint;
    let model = match p.model {
        Some(m) => Some(m.into_owned()),
        None => head.path_model,
    };
    let mut h = PrefixHasher::new(
        seed_for_model(model.as_deref().unwrap_or("")),
        opts.max_prefix_blocks,
    );
    if opts.capture_prompt_bytes > 0 {
        h = h.with_capture(opts.capture_prompt_bytes);
    }
    let mut ids = 0usize;
    // A prompt of token ids only is kept as the ids themselves.
    let mut id_prompt: Option<Vec<u32>> = None;

    match endpoint {
        Endpoint::ChatCompletions | Endpoint::OllamaChat => {
            feed_messages(&mut h, p.messages.as_deref().unwrap_or(&[]), false);
        }
        Endpoint::Completions | Endpoint::Embeddings | Endpoint::OllamaEmbed => {
            if let Some(pieces) = &p.pieces {
                ids += feed_pieces(&mut h, pieces);
                if opts.capture_prompt_bytes > 0 && p.text.is_none() {
                    id_prompt = only_ids(pieces);
                }
            }
            if let Some(text) = &p.text {
                h.update(text.as_bytes());
            }
        }
        Endpoint::Rerank => {
            if let Some(q) = &p.text {
                h.update(q.as_bytes());
            }
            for d in p.docs.iter().flatten() {
                h.update(d.as_bytes());
            }
        }
        Endpoint::Responses => {
            if let Some(sys) = &p.system {
                feed_message(&mut h, "system", [sys.as_ref()]);
            }
            match &p.responses_input {
                Some(ResponsesInput::Text(t)) => feed_message(&mut h, "user", [t.as_ref()]),
                Some(ResponsesInput::Items(items)) => feed_messages(&mut h, items, true),
                None => {}
            }
        }
        Endpoint::TgiGenerate | Endpoint::TgiGenerateStream => {
            if let Some(t) = &p.text {
                h.update(t.as_bytes());
            }
        }
        Endpoint::OllamaGenerate => {
            if let Some(sys) = &p.system {
                feed_message(&mut h, "system", [sys.as_ref()]);
            }
            if let Some(t) = &p.text {
                h.update(t.as_bytes());
            }
        }
        Endpoint::KServeInfer | Endpoint::Models | Endpoint::Grpc | Endpoint::Other => {}
    }

    let stream = match endpoint {
        Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Responses => {
            p.stream.unwrap_or(false)
        }
        Endpoint::TgiGenerateStream => true,
        // Ollama streams unless told not to.
        Endpoint::OllamaGenerate | Endpoint::OllamaChat => p.stream.unwrap_or(true),
        _ => false,
    };
    let max_tokens = match endpoint {
        Endpoint::ChatCompletions => p.max_completion_tokens.or(p.max_tokens),
        Endpoint::Completions => p.max_tokens,
        Endpoint::Responses
        | Endpoint::TgiGenerate
        | Endpoint::TgiGenerateStream
        | Endpoint::OllamaGenerate
        | Endpoint::OllamaChat => p.limit,
        _ => None,
    };

    let text_bytes = h.total_bytes().saturating_sub(ids.saturating_mul(4));
    let prompt_tokens =
        estimate_tokens(text_bytes).saturating_add(u32::try_from(ids).unwrap_or(u32::MAX));
    let (prefix, capture) = h.finish_with_capture();
    let prompt = match (id_prompt, capture) {
        (Some(ids), _) => Some(Arc::new(Prompt::Ids(ids))),
        (None, Some(c)) if !c.text.is_empty() => {
            let mut text = c.text;
            let mut truncated = c.truncated;
            // A cut can split a UTF-8 sequence: keep the valid part.
            if let Err(e) = std::str::from_utf8(&text) {
                text.truncate(e.valid_up_to());
                truncated = true;
            }
            let chat = matches!(
                endpoint,
                Endpoint::ChatCompletions | Endpoint::OllamaChat | Endpoint::Responses
            );
            let spans = c.spans;
            String::from_utf8(text).ok().map(|text| {
                Arc::new(if chat && !spans.is_empty() {
                    Prompt::Chat {
                        text,
                        truncated,
                        spans,
                    }
                } else {
                    Prompt::Text { text, truncated }
                })
            })
        }
        _ => None,
    };

    RequestClass {
        family: head.family,
        endpoint,
        model,
        stream,
        max_tokens,
        prompt_tokens,
        prefix,
        asked_priority: head.asked_priority,
        priority: Priority::Standard,
        user: p.user.map(|u| u.into_owned()),
        prompt,
        prompt_keys: None,
    }
}

fn feed_messages(h: &mut PrefixHasher, messages: &[Message<'_>], skip_roleless: bool) {
    for m in messages {
        let role = match &m.role {
            Some(r) => r.as_ref(),
            None if skip_roleless => continue,
            None => "",
        };
        feed_message(h, role, m.content.parts());
    }
}

/// The ids of a prompt made of token-id arrays only (`None` if any text).
fn only_ids(pieces: &[Piece<'_>]) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Ids(v) => out.extend_from_slice(v),
            Piece::Text(_) => return None,
        }
    }
    Some(out)
}

/// Feed prompt pieces; returns the number of token ids fed.
fn feed_pieces(h: &mut PrefixHasher, pieces: &[Piece<'_>]) -> usize {
    let mut ids = 0;
    for piece in pieces {
        match piece {
            Piece::Text(t) => h.update(t.as_bytes()),
            Piece::Ids(v) => {
                ids += v.len();
                let mut buf = [0u8; 256];
                for chunk in v.chunks(buf.len() / 4) {
                    for (slot, id) in buf.chunks_exact_mut(4).zip(chunk) {
                        slot.copy_from_slice(&id.to_le_bytes());
                    }
                    h.update(&buf[..chunk.len() * 4]);
                }
            }
        }
    }
    ids
}

#[cfg(test)]
mod tests;
