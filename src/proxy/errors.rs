//! Error responses the gateway itself produces, in the format of the
//! client's API family, so an OpenAI SDK sees an OpenAI error and a gRPC
//! client sees a gRPC status.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};

use super::body::ResponseBody;
use crate::classify::ApiFamily;

/// Why the gateway answered instead of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed request (400).
    BadRequest,
    /// The request names no model but the routes need one (400, `param: model`).
    MissingModel,
    /// Body over the limit (413).
    TooLarge,
    /// No route serves the model (404).
    ModelNotFound,
    /// No route matches the request (404).
    NoRoute,
    /// No node can take the request now (503, with Retry-After).
    NoCapacity,
    /// Every node is busy and the queue is full or timed out: shed (429,
    /// with Retry-After).
    Overloaded,
    /// Connecting to or talking to the node failed (502).
    Upstream,
    /// The node did not answer in time (504).
    Timeout,
    /// The client was too slow sending its request (408).
    ClientTimeout,
    /// The method is not proxied (405).
    MethodNotAllowed,
    /// The tenant is over its budget (429; the budget sets Retry-After
    /// and the `x-ratelimit-*` headers).
    RateLimited,
    /// The route needs a tenant and the request names none (401).
    NoTenant,
}

impl ErrorKind {
    /// The HTTP status for this kind.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::BadRequest | ErrorKind::MissingModel => StatusCode::BAD_REQUEST,
            ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::ModelNotFound | ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::NoCapacity => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Upstream => StatusCode::BAD_GATEWAY,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::NoTenant => StatusCode::UNAUTHORIZED,
        }
    }

    fn openai_type_and_code(self) -> (&'static str, &'static str) {
        match self {
            ErrorKind::BadRequest => ("invalid_request_error", "invalid_request"),
            ErrorKind::MissingModel => ("invalid_request_error", "missing_model"),
            ErrorKind::TooLarge => ("invalid_request_error", "request_too_large"),
            ErrorKind::ModelNotFound => ("invalid_request_error", "model_not_found"),
            ErrorKind::NoRoute => ("invalid_request_error", "not_found"),
            ErrorKind::NoCapacity => ("server_error", "no_capacity"),
            ErrorKind::Overloaded => ("rate_limit_error", "overloaded"),
            ErrorKind::Upstream => ("server_error", "upstream_error"),
            ErrorKind::Timeout => ("server_error", "upstream_timeout"),
            ErrorKind::ClientTimeout => ("invalid_request_error", "request_timeout"),
            ErrorKind::MethodNotAllowed => ("invalid_request_error", "method_not_allowed"),
            ErrorKind::RateLimited => ("rate_limit_error", "rate_limit_exceeded"),
            ErrorKind::NoTenant => ("invalid_request_error", "invalid_api_key"),
        }
    }

    fn grpc_status(self) -> u8 {
        match self {
            ErrorKind::BadRequest | ErrorKind::MissingModel | ErrorKind::TooLarge => 3, // INVALID_ARGUMENT
            ErrorKind::MethodNotAllowed => 12, // UNIMPLEMENTED
            ErrorKind::ModelNotFound | ErrorKind::NoRoute => 5, // NOT_FOUND
            ErrorKind::NoCapacity | ErrorKind::Upstream => 14, // UNAVAILABLE
            ErrorKind::Overloaded | ErrorKind::RateLimited => 8, // RESOURCE_EXHAUSTED
            ErrorKind::NoTenant => 16,         // UNAUTHENTICATED
            ErrorKind::Timeout | ErrorKind::ClientTimeout => 4, // DEADLINE_EXCEEDED
        }
    }
}

/// Build an error response for `family`. `message` must be safe to show a
/// client: no node addresses, no config internals.
pub fn error_response(family: ApiFamily, kind: ErrorKind, message: &str) -> Response<ResponseBody> {
    let mut response = match family {
        ApiFamily::Grpc => grpc_error(kind, message),
        ApiFamily::OpenAi => {
            let (kind_type, code) = kind.openai_type_and_code();
            let param = if matches!(kind, ErrorKind::ModelNotFound | ErrorKind::MissingModel) {
                serde_json::Value::from("model")
            } else {
                serde_json::Value::Null
            };
            let body = serde_json::json!({
                "error": { "message": message, "type": kind_type, "param": param, "code": code }
            });
            json_response(kind.status(), &body)
        }
        ApiFamily::Tgi => {
            let (kind_type, _) = kind.openai_type_and_code();
            json_response(
                kind.status(),
                &serde_json::json!({ "error": message, "error_type": kind_type }),
            )
        }
        ApiFamily::KServe | ApiFamily::Ollama | ApiFamily::Other => {
            json_response(kind.status(), &serde_json::json!({ "error": message }))
        }
    };
    if matches!(kind, ErrorKind::NoCapacity | ErrorKind::Overloaded) {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A trailers-only gRPC response: HTTP 200 with the status in headers.
fn grpc_error(kind: ErrorKind, message: &str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::empty());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(
        "grpc-status",
        HeaderValue::from(u16::from(kind.grpc_status())),
    );
    // grpc-message is percent-encoded (gRPC over HTTP/2 spec): every byte
    // outside visible ASCII, and `%` itself, becomes %XX; space too, which
    // the spec allows either way.
    let safe = grpc_percent_encode(message);
    if let Ok(value) = HeaderValue::from_str(&safe) {
        headers.insert("grpc-message", value);
    }
    response
}

/// Percent-encode a grpc-message value: bytes 0x21..=0x7E other than `%`
/// stay, every other byte (space, `%`, control, UTF-8) becomes `%XX`.
fn grpc_percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_json(r: Response<ResponseBody>) -> serde_json::Value {
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn openai_format() {
        let r = error_response(
            ApiFamily::OpenAi,
            ErrorKind::ModelNotFound,
            "The model `x` does not exist",
        );
        assert_eq!(r.status(), 404);
        let v = body_json(r).await;
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
    }

    #[tokio::test]
    async fn shedding_has_retry_after() {
        let r = error_response(ApiFamily::Ollama, ErrorKind::NoCapacity, "busy");
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[RETRY_AFTER], "1");
        assert_eq!(body_json(r).await["error"], "busy");
    }

    #[test]
    fn grpc_is_trailers_only() {
        let r = error_response(ApiFamily::Grpc, ErrorKind::Timeout, "node timed out");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["grpc-status"], "4");
        assert_eq!(r.headers()["grpc-message"], "node%20timed%20out");
    }

    #[test]
    fn grpc_message_keeps_punctuation_and_encodes_the_rest() {
        let r = error_response(
            ApiFamily::Grpc,
            ErrorKind::NoCapacity,
            "busy; retry later (100%) – ok?",
        );
        assert_eq!(
            r.headers()["grpc-message"],
            "busy;%20retry%20later%20(100%25)%20%E2%80%93%20ok?"
        );
    }

    #[test]
    fn missing_model_names_the_param() {
        let r = error_response(ApiFamily::OpenAi, ErrorKind::MissingModel, "no model");
        assert_eq!(r.status(), 400);
    }
}
