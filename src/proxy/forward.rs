//! The request path: classify, route, pick a node, forward, and retry on
//! another node while nothing has reached the client yet.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::body::{PassThrough, ResponseBody};
use super::errors::{error_response, ErrorKind};
use super::headers::{add_forwarded, request_id, strip_hop_by_hop, REQUEST_ID};
use super::queue::Shed;
use super::retry::RetryGuard;
use super::select::{select, Selection, Slot};
use super::table::{Route, RouteTable};
use super::upstream::{self, UpstreamBody};
use super::Gateway;
use crate::classify::{classify_body, classify_head, ApiFamily, Endpoint, RequestClass};
use crate::config::UpstreamProtocol;
use crate::health::FailureKind;
use crate::telemetry::{RequestInfo, ShedReason};

/// A request answered by the gateway itself.
type Reject = Response<ResponseBody>;

/// Entry point for one client request (hyper service function).
pub async fn handle(
    gateway: Arc<Gateway>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let started = std::time::Instant::now();
    let table = gateway.table();
    let id = request_id(req.headers());
    let mut response = match proxy(&table, peer, req, &id, started).await {
        Ok(response) => response,
        Err(response) => {
            let telemetry = &gateway.telemetry;
            if telemetry.enabled() {
                telemetry.local_response(
                    id.to_str().unwrap_or("-"),
                    response.status().as_u16(),
                    started,
                );
            }
            response
        }
    };
    response.headers_mut().insert(REQUEST_ID.clone(), id);
    Ok(response)
}

/// What is forwarded as the request body: bytes already read (replayable on
/// retry) or the client's stream (one attempt only).
enum RequestBody {
    Buffered(Bytes),
    Streaming(Option<Limited<Incoming>>),
}

impl RequestBody {
    fn for_attempt(&mut self) -> Option<UpstreamBody> {
        match self {
            RequestBody::Buffered(bytes) => Some(
                Full::new(bytes.clone())
                    .map_err(|e| match e {})
                    .boxed_unsync(),
            ),
            RequestBody::Streaming(stream) => stream.take().map(|s| s.boxed_unsync()),
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, RequestBody::Buffered(_))
    }
}

async fn proxy(
    table: &RouteTable,
    peer: SocketAddr,
    req: Request<Incoming>,
    id: &HeaderValue,
    started: std::time::Instant,
) -> Result<Response<ResponseBody>, Reject> {
    let (parts, incoming) = req.into_parts();
    let head = classify_head(&parts.method, parts.uri.path(), &parts.headers);
    let family = head.family;

    if head.endpoint == Endpoint::Models && parts.method == Method::GET {
        return Ok(models_response(table, parts.uri.path()));
    }

    let declared_len = content_length(&parts.headers);
    let (mut class, buffered, incoming) = if head.parse_body {
        if declared_len.is_some_and(|n| n > table.max_body_bytes) {
            return Err(too_large(family, table.max_body_bytes));
        }
        let bytes = read_body(incoming, table, family).await?;
        let class = classify_body(head, &bytes, &table.classify)
            .map_err(|e| error_response(family, ErrorKind::BadRequest, &e.to_string()))?;
        (class, Some(bytes), None)
    } else {
        (RequestClass::from_head(head), None, Some(incoming))
    };

    let Some(route) = table.route(&parts.method, parts.uri.path(), &parts.headers, &class) else {
        return Err(match &class.model {
            Some(model) if !table.serves_model(model) || family == ApiFamily::OpenAi => {
                error_response(
                    family,
                    ErrorKind::ModelNotFound,
                    &format!(
                        "The model `{}` does not exist or is not served here.",
                        printable(model)
                    ),
                )
            }
            _ => error_response(family, ErrorKind::NoRoute, "No route serves this request."),
        });
    };

    // The header's priority only counts from clients the route trusts.
    class.priority = route.priority.decide(class.asked_priority, peer.ip());

    let body = match (buffered, incoming) {
        (Some(bytes), _) => {
            if bytes.len() as u64 > route.max_body_bytes {
                return Err(too_large(family, route.max_body_bytes));
            }
            RequestBody::Buffered(bytes)
        }
        (None, Some(incoming)) => {
            if declared_len.is_some_and(|n| n > route.max_body_bytes) {
                return Err(too_large(family, route.max_body_bytes));
            }
            let limit = usize::try_from(route.max_body_bytes).unwrap_or(usize::MAX);
            RequestBody::Streaming(Some(Limited::new(incoming, limit)))
        }
        (None, None) => RequestBody::Buffered(Bytes::new()),
    };
    forward(route, parts, body, &class, peer, id, started).await
}

/// How one attempt ended without a usable response (see `retry.rs` for
/// what each may cost).
#[derive(Clone, Copy, PartialEq, Eq)]
enum AttemptError {
    /// No connection was made: nothing reached the node.
    Connect,
    /// No response head within the first-byte timeout.
    Timeout,
    /// The exchange broke before the response head.
    Other,
}

impl AttemptError {
    fn response(self, family: ApiFamily) -> Reject {
        match self {
            // Like HAProxy: no server could take the request, so the
            // client may come back (503 with Retry-After), as when every
            // node is known down.
            AttemptError::Connect => error_response(
                family,
                ErrorKind::NoCapacity,
                "No model server could be reached; retry later.",
            ),
            AttemptError::Other => error_response(
                family,
                ErrorKind::Upstream,
                "The model server failed to answer.",
            ),
            AttemptError::Timeout => error_response(
                family,
                ErrorKind::Timeout,
                "The model server did not answer in time.",
            ),
        }
    }
}

/// The retry budget's clock.
fn budget_now() -> std::time::Duration {
    std::time::Duration::from_millis(crate::health::now_ms())
}

async fn forward(
    route: &Route,
    parts: Parts,
    mut body: RequestBody,
    class: &RequestClass,
    peer: SocketAddr,
    id: &HeaderValue,
    started: std::time::Instant,
) -> Result<Response<ResponseBody>, Reject> {
    let family = class.family;
    let telemetry = &route.telemetry;
    let deadline = Instant::now() + route.timeouts.total;
    let nodes = &route.pool.nodes;
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut headers = parts.headers;
    let grpc = family == ApiFamily::Grpc;
    strip_hop_by_hop(
        &mut headers,
        grpc && route.protocol == UpstreamProtocol::H2c,
    );
    add_forwarded(&mut headers, peer, "http");
    headers.insert(REQUEST_ID.clone(), id.clone());
    if !headers.contains_key(HOST) {
        if let Some(authority) = parts.uri.authority() {
            if let Ok(value) = HeaderValue::from_str(authority.as_str()) {
                headers.insert(HOST, value);
            }
        }
    }

    route.retry_budget.deposit(budget_now());
    // Retries that cost a node something (it may have started on the
    // request) draw on `retries` and the budget; a failed connect does not.
    let mut budgeted_left = route.retries;
    let mut budget_guard: Option<RetryGuard<'_>> = None;
    let mut budgeted_retry = || {
        if budgeted_left == 0 {
            return false;
        }
        match route.retry_budget.withdraw(budget_now()) {
            Some(guard) => {
                budgeted_left -= 1;
                budget_guard = Some(guard);
                true
            }
            None => {
                tracing::debug!(route = %route.name, "retry budget exhausted");
                false
            }
        }
    };
    let mut tried: Vec<usize> = Vec::with_capacity(2);
    let mut last_error: Option<AttemptError> = None;
    let mut attempt = 0u32;
    loop {
        let index = match select(route, class, &headers, &tried, deadline).await {
            Selection::Node(index) => index,
            Selection::Shed(reason) => {
                tracing::debug!(route = %route.name, ?reason, "request shed");
                telemetry.shed(match reason {
                    Shed::QueueFull => ShedReason::QueueFull,
                    Shed::Displaced => ShedReason::Displaced,
                    Shed::TimedOut => ShedReason::QueueTimeout,
                });
                return Err(last_error.map_or_else(
                    || {
                        error_response(
                            family,
                            ErrorKind::Overloaded,
                            "All model servers are busy; retry later.",
                        )
                    },
                    |e| e.response(family),
                ));
            }
            Selection::Unavailable => {
                if last_error.is_none() {
                    telemetry.shed(ShedReason::Unavailable);
                }
                break;
            }
        };
        let Some(node) = nodes.get(index) else {
            break;
        };
        tried.push(index);
        let Some(upstream_body) = body.for_attempt() else {
            break;
        };
        let uri = match Uri::builder()
            .scheme("http")
            .authority(node.addr.clone())
            .path_and_query(path_and_query.clone())
            .build()
        {
            Ok(uri) => uri,
            Err(_) => {
                return Err(error_response(
                    family,
                    ErrorKind::BadRequest,
                    "Invalid request path.",
                ))
            }
        };
        // Keep the headers for another attempt only when one can happen: a
        // replayable body and a node not yet tried.
        let retry_possible = body.replayable() && tried.len() < nodes.len();
        let mut request = Request::new(upstream_body);
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = match route.protocol {
            UpstreamProtocol::Http1 => Version::HTTP_11,
            UpstreamProtocol::H2c => Version::HTTP_2,
        };
        *request.headers_mut() = if retry_possible {
            headers.clone()
        } else {
            std::mem::take(&mut headers)
        };

        let slot = Slot::begin(route, node, class);
        let first_byte_deadline = (Instant::now() + route.timeouts.first_byte).min(deadline);
        let outcome = tokio::time::timeout_at(
            first_byte_deadline,
            upstream::client(route.timeouts.connect, route.protocol).request(request),
        )
        .await;
        let error = match outcome {
            Ok(Ok(response)) => {
                let status = response.status();
                telemetry.attempt_status(index, status.as_u16());
                let server_error = status.is_server_error();
                if server_error {
                    slot.failure(FailureKind::Status5xx);
                } else if response.body().is_end_stream() {
                    slot.success();
                }
                if retry_possible
                    && route.retries_status(status.as_u16())
                    && Instant::now() < deadline
                    && budgeted_retry()
                {
                    tracing::debug!(node = %node.name, %status, "retrying on another node");
                    telemetry.retried(index);
                    attempt += 1;
                    continue;
                }
                let (mut resp_parts, resp_body) = response.into_parts();
                strip_hop_by_hop(&mut resp_parts.headers, false);
                let sse = family == ApiFamily::OpenAi
                    && resp_parts
                        .headers
                        .get(CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.starts_with("text/event-stream"));
                let body = ResponseBody::upstream(
                    resp_body,
                    PassThrough {
                        idle: route.timeouts.idle,
                        deadline,
                        success_at_end: !server_error,
                        slot,
                        sse,
                        telemetry: telemetry.tracker(
                            index,
                            RequestInfo {
                                id: id.to_str().unwrap_or("-").to_string(),
                                start: started,
                                status: status.as_u16(),
                                attempts: attempt + 1,
                                tokens_in: class.prompt_tokens,
                                sse,
                            },
                        ),
                    },
                );
                return Ok(Response::from_parts(resp_parts, body));
            }
            Ok(Err(e)) if e.is_connect() => {
                slot.failure(FailureKind::Connect);
                tracing::warn!(node = %node.name, error = %e, "could not connect");
                AttemptError::Connect
            }
            Ok(Err(e)) => {
                slot.failure(FailureKind::StreamBroken);
                tracing::warn!(node = %node.name, error = %e, "attempt failed");
                AttemptError::Other
            }
            Err(_) => {
                slot.failure(FailureKind::Timeout);
                tracing::warn!(node = %node.name, "no response within the first-byte timeout");
                AttemptError::Timeout
            }
        };
        drop(slot);
        telemetry.attempt_error(index);
        // Report the most telling failure: a node that broke or timed out
        // rather than a later one that could not be reached.
        if last_error.is_none() || error != AttemptError::Connect {
            last_error = Some(error);
        }
        let again = retry_possible
            && Instant::now() < deadline
            && (error == AttemptError::Connect || budgeted_retry());
        if !again {
            break;
        }
        telemetry.retried(index);
        attempt += 1;
    }
    drop(budget_guard);
    Err(last_error.map_or_else(
        || {
            error_response(
                family,
                ErrorKind::NoCapacity,
                "No model server is available for this request; retry later.",
            )
        },
        |e| e.response(family),
    ))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn too_large(family: ApiFamily, limit: u64) -> Reject {
    error_response(
        family,
        ErrorKind::TooLarge,
        &format!("Request body is larger than the limit of {limit} bytes."),
    )
}

/// Read a whole inference body, bounded in size and time.
async fn read_body(
    incoming: Incoming,
    table: &RouteTable,
    family: ApiFamily,
) -> Result<Bytes, Reject> {
    let limit = usize::try_from(table.max_body_bytes).unwrap_or(usize::MAX);
    let read = Limited::new(incoming, limit).collect();
    match tokio::time::timeout(table.listener.body_timeout, read).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large(family, table.max_body_bytes))
        }
        Ok(Err(_)) => Err(error_response(
            family,
            ErrorKind::BadRequest,
            "Could not read the request body.",
        )),
        Err(_) => Err(error_response(
            family,
            ErrorKind::ClientTimeout,
            "The request body was not sent in time.",
        )),
    }
}

/// `GET /v1/models` (and `/v1/models/{id}`) answered from the routes.
fn models_response(table: &RouteTable, path: &str) -> Response<ResponseBody> {
    let model_entry = |id: &str| serde_json::json!({ "id": id, "object": "model", "created": 0, "owned_by": "infergate" });
    let path = path.trim_end_matches('/');
    let body = match path.strip_prefix("/v1/models/") {
        Some(id) if table.models.iter().any(|m| m == id) => model_entry(id),
        Some(id) => {
            return error_response(
                ApiFamily::OpenAi,
                ErrorKind::ModelNotFound,
                &format!(
                    "The model `{}` does not exist or is not served here.",
                    printable(id)
                ),
            )
        }
        None => serde_json::json!({
            "object": "list",
            "data": table.models.iter().map(|m| model_entry(m)).collect::<Vec<_>>(),
        }),
    };
    let mut response = Response::new(ResponseBody::full(Bytes::from(body.to_string())));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A client-supplied name made safe to echo: bounded and without control characters.
fn printable(name: &str) -> String {
    name.chars().filter(|c| !c.is_control()).take(200).collect()
}
