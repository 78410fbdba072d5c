//! The attempts of one routed request: pick a node, send the request,
//! and retry on another node while nothing has reached the client yet
//! (within `retries` and the route's retry budget, free after a refused
//! connection, see `retry.rs`).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, Uri, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use tokio::time::Instant;

use super::body::{PassThrough, ResponseBody};
use super::client_body::{BodyState, BodyWatch, ClientFault, WatchedBody};
use super::errors::{error_response, ErrorKind};
use super::h1_server::body::ClientBody;
use super::headers::{
    add_forwarded, forwarded_for, strip_hop_by_hop, with_forwarded_for, REQUEST_ID,
    X_FORWARDED_FOR, X_FORWARDED_PROTO,
};
use super::queue::Shed;
use super::retry::RetryGuard;
use super::select::{select, Selection, Slot};
use super::table::Route;
use super::upstream::{self, OutBody};
use crate::classify::{ApiFamily, RequestClass};
use crate::config::UpstreamProtocol;
use crate::header_lines::{HeaderLines, RequestHeaders};
use crate::health::FailureKind;
use crate::telemetry::{grpc_http_status, grpc_status, RequestInfo, ShedReason};

/// A request answered by the gateway itself.
pub(super) type Reject = Response<ResponseBody>;

/// What is forwarded as the request body: bytes already read (replayable on
/// retry) or the client's stream (one attempt only; watched so that a slow
/// or broken upload is the client's fault, not the node's).
pub(super) enum RequestBody {
    Buffered(Bytes),
    Streaming(Option<(Limited<ClientBody>, Duration)>),
}

impl RequestBody {
    fn for_attempt(&mut self) -> Option<(OutBody, Option<BodyWatch>)> {
        match self {
            RequestBody::Buffered(bytes) => Some((OutBody::Full(bytes.clone()), None)),
            RequestBody::Streaming(stream) => stream.take().map(|(body, idle)| {
                let (body, watch) = WatchedBody::new(body, idle);
                (OutBody::Stream(body.boxed_unsync()), Some(watch))
            }),
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, RequestBody::Buffered(_))
    }
}

/// Wait for the node's response head. The first-byte timeout starts once
/// the request has been sent whole (at once for a buffered body): a slow
/// upload is the client's time, bounded by the body timeout, not the
/// node's. `None` when the head did not come in time.
///
/// `send` comes pinned by the caller: taken by value and pinned here, the
/// future (kilobytes) had two places in this one's state, both copied.
async fn response_head<F: std::future::Future>(
    mut send: std::pin::Pin<&mut F>,
    watch: Option<BodyWatch>,
    first_byte: Duration,
    deadline: Instant,
) -> Option<F::Output> {
    if let Some(watch) = watch {
        // While the body goes out, look every so often whether the node
        // stopped taking it (a hung node with an upload in its socket):
        // that is the node's first-byte timeout, not the client's time.
        let check = first_byte.min(Duration::from_secs(1));
        let mut settled = watch.clone();
        loop {
            tokio::select! {
                out = &mut send => return Some(out),
                _ = settled.settled() => break,
                () = tokio::time::sleep(check) => {
                    if watch.node_stalled(first_byte) {
                        return None;
                    }
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
        }
    }
    // On the connection task's own timer (`clock::Within`): a head that
    // comes in a millisecond no longer puts a timer into tokio's wheel.
    let now = crate::clock::now();
    crate::clock::Within::new(send, (now + first_byte).min(deadline.into_std())).await
}

/// The answer to a client whose own body failed the attempt.
fn client_fault(watch: Option<&BodyWatch>, family: ApiFamily) -> Option<Reject> {
    let BodyState::ClientFailed(fault) = watch?.state() else {
        return None;
    };
    let (kind, message) = match fault {
        ClientFault::Malformed => (
            ErrorKind::BadRequest,
            "The request body could not be read (malformed or cut off).",
        ),
        ClientFault::TooLarge => (
            ErrorKind::TooLarge,
            "Request body is larger than the limit.",
        ),
        ClientFault::TooSlow => (
            ErrorKind::ClientTimeout,
            "The request body was not sent in time.",
        ),
    };
    Some(error_response(family, kind, message))
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
        let (kind, message) = match self {
            // Like HAProxy: no server could take the request, so the
            // client may come back (503 with Retry-After), as when every
            // node is known down.
            AttemptError::Connect => (
                ErrorKind::NoCapacity,
                "No model server could be reached; retry later.",
            ),
            AttemptError::Other => (ErrorKind::Upstream, "The model server failed to answer."),
            AttemptError::Timeout => (
                ErrorKind::Timeout,
                "The model server did not answer in time.",
            ),
        };
        error_response(family, kind, message)
    }
}

/// The retry budget's clock.
fn budget_now() -> Duration {
    budget_at(std::time::Instant::now())
}

/// The retry budget's clock at `t` (read already).
fn budget_at(t: std::time::Instant) -> Duration {
    Duration::from_millis(crate::health::at_ms(t))
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn forward(
    route: &Route,
    // Borrowed: the request's future then holds a reference, not the
    // parts (224 bytes) moved into it; the header map is taken out.
    parts: &mut Parts,
    lines: Option<HeaderLines>,
    mut body: RequestBody,
    class: &RequestClass,
    peer: SocketAddr,
    id: &HeaderValue,
    started: std::time::Instant,
    ready: std::time::Instant,
    mut budget: Option<crate::tenant::Charge>,
) -> Result<Response<ResponseBody>, Reject> {
    let family = class.family;
    let telemetry = &route.telemetry;
    // `ready`: when the request could go to a node (its start, microseconds
    // ago, for a body that came with its head): one clock read serves the
    // request up to its first attempt. `started` is its start for the
    // access record's latency.
    let ready = Instant::from_std(ready);
    let deadline = ready + route.timeouts.total;
    let nodes = &route.pool.nodes;
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let grpc = family == ApiFamily::Grpc;
    // A plain HTTP/1.1 client's lines go to an HTTP/1.1 node as they came,
    // and the map holds only what the gateway adds; hyper's client (h2c
    // nodes) takes one map.
    let (map, mut lines) = match lines {
        Some(lines) if route.protocol == UpstreamProtocol::Http1 => {
            (http::HeaderMap::new(), Some(lines))
        }
        Some(lines) => (lines.to_map(), None),
        None => (std::mem::take(&mut parts.headers), None),
    };
    // Back to the thread's maps when the attempts are over.
    let mut headers = super::spare::KeptHeaders(map);
    if lines.is_none() {
        strip_hop_by_hop(
            &mut headers,
            grpc && route.protocol == UpstreamProtocol::H2c,
        );
    }
    let proto = if parts.extensions.get::<super::worker::OverTls>().is_some() {
        "https"
    } else {
        "http"
    };
    let mut has_host = RequestHeaders::client(&headers, lines.as_ref())
        .get(&HOST)
        .is_some();
    match &mut lines {
        // The gateway's own lines, written after the client's.
        Some(lines) => {
            with_forwarded_for(None, peer, |ip| {
                lines.add_appended(&X_FORWARDED_FOR, ip);
            });
            lines.add(&X_FORWARDED_PROTO, proto.as_bytes());
            lines.add(&REQUEST_ID, id.as_bytes());
        }
        None => {
            let existing = headers.get(&X_FORWARDED_FOR).map(HeaderValue::as_bytes);
            let forwarded_for = forwarded_for(existing, peer);
            add_forwarded(&mut headers, forwarded_for, proto);
            headers.insert(REQUEST_ID.clone(), id.clone());
        }
    }
    if !has_host {
        if let Some(authority) = parts.uri.authority() {
            if let Ok(value) = HeaderValue::from_str(authority.as_str()) {
                headers.insert(HOST, value);
                has_host = true;
            }
        }
    }

    route.retry_budget.deposit(budget_at(ready.into_std()));
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
        let forwarded = RequestHeaders::forwarded(&headers, lines.as_ref());
        // A first attempt picks as of `ready`; a later one reads the
        // clock (time has passed on the node that failed).
        let now = if tried.is_empty() {
            ready
        } else {
            Instant::now()
        };
        let chosen = match select(route, class, forwarded, &tried, now, deadline).await {
            Selection::Node(chosen) => chosen,
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
        let index = chosen.index;
        let Some(node) = nodes.get(index) else {
            break;
        };
        tried.push(index);
        let Some((upstream_body, watch)) = body.for_attempt() else {
            break;
        };
        // Another attempt can happen with a replayable body and a node not
        // yet tried.
        let retry_possible = body.replayable() && tried.len() < nodes.len();
        // The request's own map holds what this attempt adds; the rest
        // (`headers`) is borrowed by every attempt, not copied.
        let mut request = Request::new(upstream_body);
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = Uri::from(path_and_query.clone());
        *request.version_mut() = match route.protocol {
            UpstreamProtocol::Http1 => Version::HTTP_11,
            UpstreamProtocol::H2c => Version::HTTP_2,
        };
        if !has_host {
            // An HTTP/1.0 client may send none; HTTP/1.1 needs one.
            if let Ok(host) = HeaderValue::from_str(node.addr.as_str()) {
                request.headers_mut().insert(HOST, host);
            }
        }

        let slot = Slot::begin(route, node, class, chosen.cached_blocks);
        let target = upstream::Target {
            https: node.https,
            authority: &node.addr,
            connect_timeout: route.timeouts.connect,
            protocol: route.protocol,
            tls: &route.pool.tls,
            now: chosen.at,
        };
        let outcome = response_head(
            std::pin::pin!(upstream::send(target, request, &headers, lines.as_ref())),
            watch.clone(),
            route.timeouts.first_byte,
            deadline,
        )
        .await;
        if !matches!(outcome, Some(Ok(_))) {
            // The client's body failed the attempt: its fault, not the
            // node's (no outlier failure, no retry).
            if let Some(reply) = client_fault(watch.as_ref(), family) {
                return Err(reply);
            }
        }
        let error = match outcome {
            Some(Ok(response)) if response.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
                // Upgrade headers are hop-by-hop and never forwarded, so a
                // node switching protocols is answering something else.
                drop(slot);
                tracing::warn!(node = %node.name, "node answered 101 to a request without Upgrade");
                return Err(error_response(
                    family,
                    ErrorKind::Upstream,
                    "The model server switched protocols; upgrades are not proxied.",
                ));
            }
            Some(Ok(mut response)) => {
                if grpc {
                    // gRPC reads its status from the head's map (an
                    // HTTP/1.1 node answering gRPC is a misconfiguration,
                    // but read all the same).
                    if let Some(lines) = response.body_mut().take_node_headers() {
                        lines.append_to(response.headers_mut());
                    }
                }
                let status = response.status();
                // A gRPC call's outcome is its grpc-status: in the head of
                // a trailers-only answer, else in the trailers (counted
                // when they pass, see `RequestInfo::grpc_deferred`).
                let grpc_head = grpc.then(|| grpc_status(response.headers())).flatten();
                let grpc_deferred = grpc && grpc_head.is_none() && status.is_success();
                let counted = grpc_head.map_or(status.as_u16(), grpc_http_status);
                if !grpc_deferred {
                    telemetry.attempt_status(index, counted);
                }
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
                // An HTTP/1.1 node's lines were sorted when they were read
                // (`h1::node_headers`); an h2c node's come in the map.
                let content_type = match resp_body.node_headers() {
                    Some(lines) => lines.content_type(),
                    None => {
                        strip_hop_by_hop(&mut resp_parts.headers, false);
                        resp_parts.headers.get(CONTENT_TYPE).map(|v| v.as_bytes())
                    }
                };
                let sse = family == ApiFamily::OpenAi
                    && content_type.is_some_and(|v| v.starts_with(b"text/event-stream"));
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
                                id: id.clone(),
                                client: peer,
                                start: started,
                                status: counted,
                                attempts: attempt + 1,
                                tokens_in: class.prompt_tokens,
                                sse,
                                grpc_deferred,
                            },
                        ),
                        budget: budget.take(),
                    },
                );
                return Ok(Response::from_parts(resp_parts, body));
            }
            Some(Err(e)) if is_local_exhaustion(&e) => {
                // Out of descriptors or buffers here: not the node's fault,
                // and another node would fail the same way.
                tracing::warn!(node = %node.name, error = %e, "no local resources to reach a node");
                return Err(error_response(
                    family,
                    ErrorKind::NoCapacity,
                    "The gateway is out of connections; retry later.",
                ));
            }
            Some(Err(e)) if e.is_connect() => {
                slot.failure(FailureKind::Connect);
                tracing::warn!(node = %node.name, error = %e, "could not connect");
                AttemptError::Connect
            }
            Some(Err(e)) => {
                slot.failure(FailureKind::StreamBroken);
                tracing::warn!(node = %node.name, error = %e, "attempt failed");
                AttemptError::Other
            }
            None => {
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

/// Whether an attempt failed for lack of local resources (descriptors,
/// buffers, memory, ephemeral ports) rather than anything the node did.
fn is_local_exhaustion(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(err) = cause {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return matches!(
                io.raw_os_error(),
                Some(
                    libc::EMFILE
                        | libc::ENFILE
                        | libc::ENOBUFS
                        | libc::ENOMEM
                        | libc::EADDRNOTAVAIL
                )
            );
        }
        cause = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error wrapping `inner`, as hyper-util wraps connector errors.
    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client error (Connect)")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn local_exhaustion_is_told_from_a_node_failure() {
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::EADDRNOTAVAIL,
        ] {
            let e = Wrapped(std::io::Error::from_raw_os_error(errno));
            assert!(is_local_exhaustion(&e), "errno {errno}");
        }
        for errno in [libc::ECONNREFUSED, libc::ECONNRESET, libc::ETIMEDOUT] {
            let e = Wrapped(std::io::Error::from_raw_os_error(errno));
            assert!(!is_local_exhaustion(&e), "errno {errno}");
        }
        let timeout = Wrapped(std::io::Error::new(std::io::ErrorKind::TimedOut, "t"));
        assert!(!is_local_exhaustion(&timeout));
    }

    /// A request's future is boxed once and moved at every `async` call
    /// on its way down (see forward.rs's test of the whole future): the
    /// parts here are the largest, so paths a request on a kept
    /// connection does not take are boxed and futures are pinned by their
    /// caller (sending was 2,072 bytes, waiting for the head 4,640).
    #[test]
    fn sending_carries_no_rarely_used_state() {
        let gateway = crate::proxy::one_node_gateway();
        let table = gateway.table();
        let route = &table.routes[0];
        let node = &route.pool.nodes[0];
        let target = upstream::Target {
            https: false,
            authority: &node.addr,
            connect_timeout: Duration::from_secs(1),
            protocol: route.protocol,
            tls: &route.pool.tls,
            now: std::time::Instant::now(),
        };
        let request = Request::new(OutBody::Full(Bytes::new()));
        let shared = http::HeaderMap::new();
        let send = upstream::send(target, request, &shared, None);
        let size = std::mem::size_of_val(&send);
        assert!(size <= 1536, "sending to a node is {size} bytes");
        let mut send = std::pin::pin!(send);
        let head = response_head(send.as_mut(), None, Duration::from_secs(1), Instant::now());
        let size = std::mem::size_of_val(&head);
        assert!(
            size <= 1024,
            "waiting for the response head is {size} bytes"
        );
    }
}
