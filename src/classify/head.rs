//! Step one of classification: method, path and headers.
//!
//! Allocation-free except for the KServe model name taken from the path.
use http::{header::CONTENT_TYPE, HeaderName, Method};

use crate::ascii_case::eq_lower;
use crate::header_lines::{visible_str, RequestHeaders};

use super::{ApiFamily, Endpoint, Head, Priority, PRIORITY_HEADER};

const GRPC_CONTENT_TYPE: &[u8] = b"application/grpc";

/// OpenAI paths classified without their `/v1` prefix, as OpenAI SDKs send
/// them when the base URL lacks `/v1` and as servers such as infinity
/// (`/embeddings`, `/rerank`, `/models`) and LiteLLM serve them. `/rerank`
/// and `/v2/rerank` (vLLM, Jina, Cohere) are classified as well. Other
/// unprefixed paths (`/tokenize`, `/score`, ...) stay "other" traffic.
pub const UNPREFIXED_OPENAI_PATHS: &[&str] = &[
    "/chat/completions",
    "/completions",
    "/embeddings",
    "/responses",
    "/models",
    "/models/{id}",
    "/rerank",
];

/// Classify a request by method, path and headers.
///
/// `path` is the URI path without the query string. One trailing slash is
/// tolerated (`/v1/chat/completions/` is the same endpoint). gRPC is recognised
/// by a `content-type` starting with `application/grpc`, whatever the path.
pub fn classify_head(method: &Method, path: &str, headers: RequestHeaders<'_>) -> Head {
    let asked_priority = asked_priority(headers);
    if is_grpc(headers) {
        return Head {
            family: ApiFamily::Grpc,
            endpoint: Endpoint::Grpc,
            path_model: None,
            parse_body: false,
            asked_priority,
        };
    }

    let path = match path.strip_suffix('/') {
        Some(p) if !p.is_empty() => p,
        _ => path,
    };
    let (family, endpoint, path_model) = route(path);
    let parse_body = *method == Method::POST && carries_routing_body(endpoint);
    Head {
        family,
        endpoint,
        path_model,
        parse_body,
        asked_priority,
    }
}

/// Endpoints whose JSON body names the model and holds the prompt.
fn carries_routing_body(endpoint: Endpoint) -> bool {
    match endpoint {
        Endpoint::ChatCompletions
        | Endpoint::Completions
        | Endpoint::Embeddings
        | Endpoint::Rerank
        | Endpoint::Responses
        | Endpoint::TgiGenerate
        | Endpoint::TgiGenerateStream
        | Endpoint::OllamaGenerate
        | Endpoint::OllamaChat
        | Endpoint::OllamaEmbed => true,
        // KServe tensors are not parsed; the model comes from the path.
        Endpoint::KServeInfer | Endpoint::Models | Endpoint::Grpc | Endpoint::Other => false,
    }
}

fn route(path: &str) -> (ApiFamily, Endpoint, Option<String>) {
    use ApiFamily as F;
    use Endpoint as E;
    let (family, endpoint) = match path {
        // The OpenAI paths are also accepted without `/v1` (see
        // `UNPREFIXED_OPENAI_PATHS`); the path is forwarded as sent.
        "/v1/chat/completions" | "/chat/completions" => (F::OpenAi, E::ChatCompletions),
        "/v1/completions" | "/completions" => (F::OpenAi, E::Completions),
        "/v1/embeddings" | "/embeddings" => (F::OpenAi, E::Embeddings),
        "/v1/rerank" | "/rerank" | "/v2/rerank" => (F::OpenAi, E::Rerank),
        "/v1/models" | "/models" => (F::OpenAi, E::Models),
        "/v1/responses" | "/responses" => (F::OpenAi, E::Responses),
        "/generate" => (F::Tgi, E::TgiGenerate),
        "/generate_stream" => (F::Tgi, E::TgiGenerateStream),
        "/api/generate" => (F::Ollama, E::OllamaGenerate),
        "/api/chat" => (F::Ollama, E::OllamaChat),
        "/api/embed" | "/api/embeddings" => (F::Ollama, E::OllamaEmbed),
        _ => {
            if let Some(id) = path
                .strip_prefix("/v1/models/")
                .or_else(|| path.strip_prefix("/models/"))
            {
                if !id.is_empty() {
                    return (F::OpenAi, E::Models, None);
                }
                return (F::Other, E::Other, None);
            }
            if path == "/v2" || path.starts_with("/v2/") {
                return match kserve_infer_model(path) {
                    Some(name) => (F::KServe, E::KServeInfer, Some(name.to_owned())),
                    None => (F::KServe, E::Other, None),
                };
            }
            (F::Other, E::Other)
        }
    };
    (family, endpoint, None)
}

/// The model name of `/v2/models/{name}/infer` or
/// `/v2/models/{name}/versions/{v}/infer`; `None` for any other `/v2` path or
/// an empty name or version.
fn kserve_infer_model(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/models/")?;
    let mut segs = rest.split('/');
    let name = segs.next().filter(|s| !s.is_empty())?;
    match (segs.next(), segs.next(), segs.next(), segs.next()) {
        (Some("infer"), None, None, None) => Some(name),
        (Some("versions"), Some(v), Some("infer"), None) if !v.is_empty() => Some(name),
        _ => None,
    }
}

fn is_grpc(headers: RequestHeaders<'_>) -> bool {
    headers.get(&CONTENT_TYPE).is_some_and(|v| {
        v.len() >= GRPC_CONTENT_TYPE.len()
            && eq_lower(&v[..GRPC_CONTENT_TYPE.len()], GRPC_CONTENT_TYPE)
    })
}

/// The priority the header asks for; `None` when absent or not a known
/// name. Whether it counts is the route's decision.
fn asked_priority(headers: RequestHeaders<'_>) -> Option<Priority> {
    // A name made once: looking up by `&str` parses it on every request.
    static PRIORITY: HeaderName = HeaderName::from_static(PRIORITY_HEADER);
    let value = visible_str(headers.get(&PRIORITY)?)?;
    Priority::from_name(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    fn head(method: Method, path: &str, headers: &[(&'static str, &'static str)]) -> Head {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(*k, HeaderValue::from_static(v));
        }
        classify_head(&method, path, (&map).into())
    }

    /// method, path, family, endpoint, path model, parse_body
    type Case<'a> = (
        &'a Method,
        &'a str,
        ApiFamily,
        Endpoint,
        Option<&'a str>,
        bool,
    );

    #[test]
    fn path_table() {
        use ApiFamily as F;
        use Endpoint as E;
        let post = Method::POST;
        let get = Method::GET;
        #[rustfmt::skip]
        let cases: &[Case] = &[
            (&post, "/v1/chat/completions", F::OpenAi, E::ChatCompletions, None, true),
            (&post, "/v1/chat/completions/", F::OpenAi, E::ChatCompletions, None, true),
            (&get, "/v1/chat/completions", F::OpenAi, E::ChatCompletions, None, false),
            (&post, "/v1/completions", F::OpenAi, E::Completions, None, true),
            (&post, "/v1/embeddings", F::OpenAi, E::Embeddings, None, true),
            (&post, "/v1/rerank", F::OpenAi, E::Rerank, None, true),
            (&post, "/rerank", F::OpenAi, E::Rerank, None, true),
            (&post, "/v2/rerank", F::OpenAi, E::Rerank, None, true),
            (&post, "/v2/rerank/", F::OpenAi, E::Rerank, None, true),
            (&get, "/v1/models", F::OpenAi, E::Models, None, false),
            (&get, "/v1/models/", F::OpenAi, E::Models, None, false),
            (&get, "/v1/models/meta-llama/Llama-3.1-8B", F::OpenAi, E::Models, None, false),
            (&post, "/v1/models", F::OpenAi, E::Models, None, false),
            (&post, "/v1/responses", F::OpenAi, E::Responses, None, true),
            (&post, "/generate", F::Tgi, E::TgiGenerate, None, true),
            (&post, "/generate_stream", F::Tgi, E::TgiGenerateStream, None, true),
            (&post, "/generate_stream/", F::Tgi, E::TgiGenerateStream, None, true),
            (&post, "/api/generate", F::Ollama, E::OllamaGenerate, None, true),
            (&post, "/api/chat", F::Ollama, E::OllamaChat, None, true),
            (&post, "/api/embed", F::Ollama, E::OllamaEmbed, None, true),
            (&post, "/api/embeddings", F::Ollama, E::OllamaEmbed, None, true),
            (&get, "/api/tags", F::Other, E::Other, None, false),
            (&post, "/v2/models/resnet/infer", F::KServe, E::KServeInfer, Some("resnet"), false),
            (&post, "/v2/models/resnet/infer/", F::KServe, E::KServeInfer, Some("resnet"), false),
            (&post, "/v2/models/bert/versions/3/infer", F::KServe, E::KServeInfer, Some("bert"), false),
            (&post, "/v2/models//infer", F::KServe, E::Other, None, false),
            (&post, "/v2/models/bert/versions//infer", F::KServe, E::Other, None, false),
            (&post, "/v2/models/bert/infer/extra", F::KServe, E::Other, None, false),
            (&get, "/v2/models/bert", F::KServe, E::Other, None, false),
            (&get, "/v2/models/bert/ready", F::KServe, E::Other, None, false),
            (&get, "/v2/health/ready", F::KServe, E::Other, None, false),
            (&get, "/v2", F::KServe, E::Other, None, false),
            (&get, "/v2x", F::Other, E::Other, None, false),
            (&get, "/", F::Other, E::Other, None, false),
            (&get, "", F::Other, E::Other, None, false),
            (&get, "/health", F::Other, E::Other, None, false),
            (&post, "/chat/completions", F::OpenAi, E::ChatCompletions, None, true),
            (&post, "/completions", F::OpenAi, E::Completions, None, true),
            (&post, "/embeddings", F::OpenAi, E::Embeddings, None, true),
            (&post, "/embeddings/", F::OpenAi, E::Embeddings, None, true),
            (&post, "/responses", F::OpenAi, E::Responses, None, true),
            (&get, "/models", F::OpenAi, E::Models, None, false),
            (&get, "/models/bge-small", F::OpenAi, E::Models, None, false),
            (&get, "/models/", F::OpenAi, E::Models, None, false),
            (&post, "/tokenize", F::Other, E::Other, None, false),
            (&post, "/api/v1/chat/completions", F::Other, E::Other, None, false),
            (&post, "/v1/chat/completionsx", F::Other, E::Other, None, false),
            (&post, "/v1/chat/completions//", F::Other, E::Other, None, false),
        ];
        for (method, path, family, endpoint, model, parse) in cases {
            let h = head((*method).clone(), path, &[]);
            assert_eq!(h.family, *family, "{method} {path}");
            assert_eq!(h.endpoint, *endpoint, "{method} {path}");
            assert_eq!(h.path_model.as_deref(), *model, "{method} {path}");
            assert_eq!(h.parse_body, *parse, "{method} {path}");
            assert_eq!(h.asked_priority, None);
        }
    }

    #[test]
    fn grpc_by_content_type_on_any_path() {
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC",
        ] {
            for path in [
                "/inference.GRPCInferenceService/ModelInfer",
                "/v1/chat/completions",
            ] {
                let h = head(Method::POST, path, &[("content-type", ct)]);
                assert_eq!(h.family, ApiFamily::Grpc, "{ct} {path}");
                assert_eq!(h.endpoint, Endpoint::Grpc);
                assert!(!h.parse_body);
                assert_eq!(h.path_model, None);
            }
        }
        let h = head(
            Method::POST,
            "/v1/chat/completions",
            &[("content-type", "application/json")],
        );
        assert_eq!(h.endpoint, Endpoint::ChatCompletions);
    }

    #[test]
    fn priorities() {
        let cases = [
            (Some("critical"), Some(Priority::Critical)),
            (Some("CRITICAL"), Some(Priority::Critical)),
            (Some(" Sheddable "), Some(Priority::Sheddable)),
            (Some("standard"), Some(Priority::Standard)),
            (Some("urgent"), None),
            (Some(""), None),
            (None, None),
        ];
        for (value, want) in cases {
            let headers: Vec<_> = value.map(|v| (PRIORITY_HEADER, v)).into_iter().collect();
            let h = head(Method::POST, "/v1/chat/completions", &headers);
            assert_eq!(h.asked_priority, want, "{value:?}");
        }
        let h = head(
            Method::POST,
            "/x",
            &[
                ("content-type", "application/grpc"),
                (PRIORITY_HEADER, "critical"),
            ],
        );
        assert_eq!(h.asked_priority, Some(Priority::Critical));
    }
}
