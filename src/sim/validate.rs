//! Request validation the way vLLM's OpenAI server does it, with its status
//! codes and error shapes, so that whatever a real vLLM node would refuse
//! the simulator refuses too (and tests notice).
//!
//! vLLM (`vllm/entrypoints/openai/`) answers every error with
//! `{"error": {"message", "type", "param", "code"}}`, `code` being the HTTP
//! status as an integer. Three kinds matter here:
//!
//! * request schema errors (pydantic, before anything else; FastAPI's
//!   `RequestValidationError` handler in `api_server.py`): 400, type
//!   `"Bad Request"`, `param` set only for vLLM's own validators (e.g.
//!   `stream_options` without `stream: true`, `chat_completion/protocol.py`
//!   `validate_stream_options`);
//! * unknown model (`engine/serving.py` `_check_model`): 404, type
//!   `"NotFoundError"`, param `model`, "The model `x` does not exist.";
//! * context length (`engine/serving.py` `_validate_input`): 400, type
//!   `"BadRequestError"`, param `input_tokens` or `max_tokens`.
//!
//! Type checks are strict JSON types: pydantic's lax mode would also take
//! `"5"` for an integer or `"true"` for a boolean; the simulator refuses
//! those (a client sending them is wrong anyway).

use http::StatusCode;
use serde_json::{json, Map, Value};

/// What a request is for (which pydantic model vLLM validates it with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    Chat,
    Completion,
    Embedding,
}

impl Api {
    fn model_name(self) -> &'static str {
        match self {
            Api::Chat => "ChatCompletionRequest",
            Api::Completion => "CompletionRequest",
            Api::Embedding => "EmbeddingCompletionRequest",
        }
    }
}

/// An error answer in vLLM's shape.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub kind: String,
    pub message: String,
    pub param: Option<&'static str>,
}

impl ApiError {
    /// A request-schema error (FastAPI `RequestValidationError` → 400
    /// "Bad Request").
    fn schema(api: Api, loc: &str, msg: &str, param: Option<&'static str>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "Bad Request".into(),
            message: format!(
                "1 validation error for {}\n{loc}\n  {msg}",
                api.model_name()
            ),
            param,
        }
    }

    /// A 400 from the serving layer (`create_error_response`, "BadRequestError").
    pub fn bad_request(message: String, param: Option<&'static str>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "BadRequestError".into(),
            message,
            param,
        }
    }

    /// The body that could not be parsed as JSON.
    pub fn malformed_json(detail: &str) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "Bad Request".into(),
            message: format!("JSON decode error: {detail}"),
            param: None,
        }
    }

    /// A model this node does not serve.
    pub fn unknown_model(model: &str) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "NotFoundError".into(),
            message: format!("The model `{model}` does not exist."),
            param: Some("model"),
        }
    }

    /// An injected fault with `status`: the type is the reason phrase
    /// without spaces plus `Error` where it is not one already
    /// (`InternalServerError`, `ServiceUnavailableError`).
    pub fn injected(status: StatusCode) -> ApiError {
        let phrase: String = status
            .canonical_reason()
            .unwrap_or("Server")
            .split_whitespace()
            .collect();
        let kind = if phrase.ends_with("Error") {
            phrase
        } else {
            format!("{phrase}Error")
        };
        ApiError {
            status,
            kind,
            message: "injected fault".into(),
            param: None,
        }
    }

    /// `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.status.as_u16(),
        }})
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_int(v: &Value) -> bool {
    v.is_i64() || v.is_u64()
}

fn all_ints(a: &[Value]) -> bool {
    a.iter().all(is_int)
}

/// A text or token input: a string, an array of strings, an array of
/// token ids or an array of arrays of token ids (vLLM's `prompt` / `input`).
fn is_text_or_tokens(v: &Value) -> bool {
    match v {
        Value::String(_) => true,
        Value::Array(a) => {
            a.iter().all(Value::is_string)
                || all_ints(a)
                || a.iter()
                    .all(|x| x.as_array().is_some_and(|inner| all_ints(inner)))
        }
        _ => false,
    }
}

/// Check the request body against the schema of `api`, as pydantic would,
/// including vLLM's model validators that run at parse time.
pub(crate) fn check_schema(api: Api, v: &Map<String, Value>) -> Result<(), ApiError> {
    let err = |loc: &str, msg: String| Err(ApiError::schema(api, loc, &msg, None));
    let present = |k: &str| v.get(k).filter(|x| !x.is_null());

    if let Some(m) = present("model") {
        if !m.is_string() {
            return err(
                "model",
                format!("Input should be a valid string (got {})", type_name(m)),
            );
        }
    }
    match api {
        Api::Chat => match v.get("messages") {
            None => return err("messages", "Field required".into()),
            Some(Value::Array(msgs)) => {
                for (i, m) in msgs.iter().enumerate() {
                    let Some(m) = m.as_object() else {
                        return err(
                            &format!("messages.{i}"),
                            "Input should be a valid dictionary".into(),
                        );
                    };
                    match m.get("role") {
                        Some(Value::String(_)) => {}
                        None => return err(&format!("messages.{i}.role"), "Field required".into()),
                        Some(other) => {
                            return err(
                                &format!("messages.{i}.role"),
                                format!("Input should be a valid string (got {})", type_name(other)),
                            )
                        }
                    }
                    match m.get("content") {
                        None | Some(Value::Null | Value::String(_) | Value::Array(_)) => {}
                        Some(other) => {
                            return err(
                                &format!("messages.{i}.content"),
                                format!(
                                    "Input should be a valid string or list (got {})",
                                    type_name(other)
                                ),
                            )
                        }
                    }
                }
            }
            Some(other) => {
                return err(
                    "messages",
                    format!("Input should be a valid list (got {})", type_name(other)),
                )
            }
        },
        Api::Completion => match present("prompt") {
            None => {
                return err(
                    "prompt",
                    "Either prompt or prompt_embeds must be provided and non-empty.".into(),
                )
            }
            Some(p) if !is_text_or_tokens(p) => {
                return err(
                    "prompt",
                    "Input should be a string, a list of strings, a list of token ids or a list of lists of token ids".into(),
                )
            }
            Some(_) => {}
        },
        Api::Embedding => match v.get("input") {
            None => return err("input", "Field required".into()),
            Some(i) if !is_text_or_tokens(i) => {
                return err(
                    "input",
                    "Input should be a string, a list of strings, a list of token ids or a list of lists of token ids".into(),
                )
            }
            Some(_) => {}
        },
    }

    if api != Api::Embedding {
        for key in ["stream", "echo", "logprobs", "ignore_eos"] {
            if let Some(x) = present(key) {
                // `logprobs` is an integer in the completions API.
                let ok = if key == "logprobs" && api == Api::Completion {
                    is_int(x)
                } else {
                    x.is_boolean()
                };
                if !ok {
                    return err(
                        key,
                        format!("Input should be a valid boolean (got {})", type_name(x)),
                    );
                }
            }
        }
        for key in ["max_tokens", "max_completion_tokens", "n", "seed", "top_k"] {
            if let Some(x) = present(key) {
                if !is_int(x) {
                    return err(
                        key,
                        format!("Input should be a valid integer (got {})", type_name(x)),
                    );
                }
            }
        }
        for key in [
            "temperature",
            "top_p",
            "presence_penalty",
            "frequency_penalty",
            "min_p",
        ] {
            if let Some(x) = present(key) {
                if !x.is_number() {
                    return err(
                        key,
                        format!("Input should be a valid number (got {})", type_name(x)),
                    );
                }
            }
        }
        if let Some(stop) = present("stop") {
            let ok = stop.is_string()
                || stop
                    .as_array()
                    .is_some_and(|a| a.iter().all(Value::is_string));
            if !ok {
                return err(
                    "stop",
                    "Input should be a string or a list of strings".into(),
                );
            }
        }
        match present("stream_options") {
            None => {}
            Some(Value::Object(o)) => {
                for key in ["include_usage", "continuous_usage_stats"] {
                    if let Some(x) = o.get(key).filter(|x| !x.is_null()) {
                        if !x.is_boolean() {
                            return err(
                                &format!("stream_options.{key}"),
                                format!("Input should be a valid boolean (got {})", type_name(x)),
                            );
                        }
                    }
                }
                // vLLM: `if data.get("stream_options") and not data.get("stream")`
                // (an empty object is falsy in Python and passes).
                let streaming = v.get("stream").and_then(Value::as_bool) == Some(true);
                if !o.is_empty() && !streaming {
                    return Err(ApiError::schema(
                        api,
                        "body",
                        "Value error, Stream options can only be defined when `stream=True`.",
                        Some("stream_options"),
                    ));
                }
            }
            Some(other) => {
                return err(
                    "stream_options",
                    format!(
                        "Input should be a valid dictionary (got {})",
                        type_name(other)
                    ),
                )
            }
        }
    }
    if let Some(u) = present("user") {
        if !u.is_string() {
            return err(
                "user",
                format!("Input should be a valid string (got {})", type_name(u)),
            );
        }
    }
    Ok(())
}

/// The model check vLLM makes after parsing: an absent or null model means
/// the served one; any other name is a 404.
pub(crate) fn check_model(v: &Map<String, Value>, served: &str) -> Result<(), ApiError> {
    match v.get("model").and_then(Value::as_str) {
        None => Ok(()),
        Some(m) if m == served => Ok(()),
        Some(m) => Err(ApiError::unknown_model(m)),
    }
}

/// The output length of a generation request and its finish reason, or
/// vLLM's context-length error. `explicit` is `max_completion_tokens` or
/// `max_tokens` (schema-checked to be an integer).
///
/// As vLLM: the prompt may use at most `max_model_len - 1` tokens; an
/// explicit limit must fit beside the prompt; without one the output runs
/// to the simulator's `default_max_tokens` (an `ignore_eos`-style stop),
/// capped by the rest of the context (then it ends with `length`).
pub(crate) fn output_budget(
    prompt_tokens: u32,
    explicit: Option<i64>,
    max_model_len: u32,
    default_max_tokens: u32,
) -> Result<(u32, &'static str), ApiError> {
    if prompt_tokens >= max_model_len {
        return Err(ApiError::bad_request(
            format!(
                "This model's maximum context length is {max_model_len} tokens. However, your request has {prompt_tokens} input tokens. Please reduce the length of the input messages."
            ),
            Some("input_tokens"),
        ));
    }
    let room = max_model_len - prompt_tokens;
    match explicit {
        Some(n) if n < 1 => Err(ApiError::bad_request(
            format!("max_tokens must be at least 1, got {n}."),
            Some("max_tokens"),
        )),
        Some(n) if n > i64::from(room) => Err(ApiError::bad_request(
            format!(
                "'max_tokens' or 'max_completion_tokens' is too large: {n}. This model's maximum context length is {max_model_len} tokens and your request has {prompt_tokens} input tokens ({n} > {max_model_len} - {prompt_tokens})."
            ),
            Some("max_tokens"),
        )),
        Some(n) => Ok((u32::try_from(n).unwrap_or(room), "length")),
        None if default_max_tokens >= room => Ok((room, "length")),
        None => Ok((default_max_tokens, "stop")),
    }
}

/// Embedding inputs may fill the whole context (nothing is generated).
pub(crate) fn check_embedding_len(prompt_tokens: u32, max_model_len: u32) -> Result<(), ApiError> {
    if prompt_tokens > max_model_len {
        return Err(ApiError::bad_request(
            format!(
                "This model's maximum context length is {max_model_len} tokens. However, you requested {prompt_tokens} tokens in the input for embedding generation. Please reduce the length of the input."
            ),
            Some("input_tokens"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(o) => o,
            _ => panic!("not an object"),
        }
    }

    fn chat_ok() -> Value {
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    }

    #[test]
    fn stream_options_only_with_stream_true() {
        let mut v = chat_ok();
        v["stream_options"] = json!({"include_usage": true});
        for stream in [json!(false), Value::Null] {
            v["stream"] = stream;
            let e = check_schema(Api::Chat, &obj(v.clone())).unwrap_err();
            assert_eq!(e.status, 400);
            assert_eq!(e.kind, "Bad Request");
            assert_eq!(e.param, Some("stream_options"));
            assert!(e
                .message
                .contains("Stream options can only be defined when `stream=True`."));
        }
        v.as_object_mut().unwrap().remove("stream");
        assert!(check_schema(
            Api::Completion,
            &obj(json!({"prompt": "x", "stream_options": {"include_usage": true}}))
        )
        .is_err());
        assert!(check_schema(Api::Chat, &obj(v.clone())).is_err());
        v["stream"] = json!(true);
        assert!(check_schema(Api::Chat, &obj(v.clone())).is_ok());
        // Python truthiness: an empty object or null passes without stream.
        v["stream"] = json!(false);
        v["stream_options"] = json!({});
        assert!(check_schema(Api::Chat, &obj(v.clone())).is_ok());
        v["stream_options"] = Value::Null;
        assert!(check_schema(Api::Chat, &obj(v)).is_ok());
    }

    #[test]
    fn missing_fields_and_wrong_types() {
        let cases: &[(Api, Value, &str)] = &[
            (Api::Chat, json!({"model": "m"}), "messages"),
            (Api::Chat, json!({"messages": "hi"}), "messages"),
            (
                Api::Chat,
                json!({"messages": [{"content": "hi"}]}),
                "messages.0.role",
            ),
            (
                Api::Chat,
                json!({"messages": [{"role": "user", "content": 5}]}),
                "messages.0.content",
            ),
            (Api::Chat, json!({"messages": [], "model": 7}), "model"),
            (
                Api::Chat,
                json!({"messages": [], "max_tokens": "10"}),
                "max_tokens",
            ),
            (
                Api::Chat,
                json!({"messages": [], "max_tokens": 1.5}),
                "max_tokens",
            ),
            (
                Api::Chat,
                json!({"messages": [], "stream": "true"}),
                "stream",
            ),
            (
                Api::Chat,
                json!({"messages": [], "temperature": "hot"}),
                "temperature",
            ),
            (
                Api::Chat,
                json!({"messages": [], "stream": true, "stream_options": true}),
                "stream_options",
            ),
            (
                Api::Chat,
                json!({"messages": [], "stream": true, "stream_options": {"include_usage": "yes"}}),
                "stream_options.include_usage",
            ),
            (Api::Completion, json!({"model": "m"}), "prompt"),
            (Api::Completion, json!({"prompt": {"text": "x"}}), "prompt"),
            (Api::Completion, json!({"prompt": ["a", 1]}), "prompt"),
            (Api::Embedding, json!({"model": "m"}), "input"),
            (Api::Embedding, json!({"input": 5}), "input"),
            (Api::Embedding, json!({"input": "x", "user": 1}), "user"),
        ];
        for (api, body, loc) in cases {
            let e = check_schema(*api, &obj(body.clone())).expect_err(&body.to_string());
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.kind, "Bad Request", "{body}");
            assert!(
                e.message.contains(&format!("\n{loc}\n")),
                "{body}: {}",
                e.message
            );
            assert_eq!(e.body()["error"]["code"], 400);
        }
        for (api, body) in [
            (
                Api::Chat,
                json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}], "stream": true, "stream_options": {"include_usage": true}, "max_tokens": 5, "temperature": 0}),
            ),
            (Api::Completion, json!({"prompt": [1, 2, 3], "model": null})),
            (Api::Completion, json!({"prompt": [[1, 2], [3]]})),
            (Api::Embedding, json!({"input": ["a", "b"]})),
        ] {
            assert!(check_schema(api, &obj(body.clone())).is_ok(), "{body}");
        }
    }

    #[test]
    fn unknown_model_is_vllm_not_found() {
        let e = check_model(&obj(json!({"model": "gpt-9"})), "m").unwrap_err();
        assert_eq!(
            e.body(),
            json!({"error": {"message": "The model `gpt-9` does not exist.", "type": "NotFoundError", "param": "model", "code": 404}})
        );
        assert!(check_model(&obj(json!({"model": "m"})), "m").is_ok());
        assert!(check_model(&obj(json!({})), "m").is_ok());
    }

    #[test]
    fn context_length_like_vllm() {
        assert_eq!(output_budget(100, Some(50), 1000, 256), Ok((50, "length")));
        assert_eq!(output_budget(100, None, 1000, 256), Ok((256, "stop")));
        // Without a limit the output is capped by the rest of the context.
        assert_eq!(output_budget(900, None, 1000, 256), Ok((100, "length")));
        let e = output_budget(900, Some(101), 1000, 256).unwrap_err();
        assert_eq!(
            (e.status.as_u16(), e.kind.as_str(), e.param),
            (400, "BadRequestError", Some("max_tokens"))
        );
        assert!(
            e.message
                .contains("This model's maximum context length is 1000 tokens"),
            "{}",
            e.message
        );
        assert_eq!(
            output_budget(900, Some(100), 1000, 256),
            Ok((100, "length"))
        );
        let e = output_budget(1000, None, 1000, 256).unwrap_err();
        assert_eq!(e.param, Some("input_tokens"));
        assert!(e.message.starts_with("This model's maximum context length is 1000 tokens. However, your request has 1000 input tokens."));
        assert_eq!(
            output_budget(10, Some(0), 1000, 256).unwrap_err().param,
            Some("max_tokens")
        );
        assert!(check_embedding_len(1000, 1000).is_ok());
        assert_eq!(
            check_embedding_len(1001, 1000).unwrap_err().param,
            Some("input_tokens")
        );
    }

    #[test]
    fn injected_types() {
        assert_eq!(
            ApiError::injected(StatusCode::INTERNAL_SERVER_ERROR).kind,
            "InternalServerError"
        );
        assert_eq!(
            ApiError::injected(StatusCode::SERVICE_UNAVAILABLE).kind,
            "ServiceUnavailableError"
        );
    }
}
