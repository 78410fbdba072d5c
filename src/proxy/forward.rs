//! The request path up to its route: classify, answer what the gateway
//! answers itself (health probe, model list, refusals), read and bound the
//! body, route, check the tenant's budget, then hand the request to
//! [`attempt::forward`](super::attempt::forward).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, Version};
use http_body_util::{BodyExt, Limited};

use super::attempt::{forward, Reject, RequestBody};
use super::body::ResponseBody;
use super::errors::{error_response, ErrorKind};
use super::h1_server::body::ClientBody;
use super::headers::{request_id, REQUEST_ID};
use super::probe;
use super::table::RouteTable;
use super::Gateway;
use crate::classify::{classify_body, classify_head, ApiFamily, Endpoint, RequestClass};
use crate::config::ModelsMode;
use crate::header_lines::{HeaderLines, RequestHeaders};
use crate::telemetry::{grpc_http_status, grpc_status};

/// Entry point for one client request. `started`: when its head had been
/// read (the connection read the clock then): its latency and body
/// deadline count from there, and, when its body needs no wait, its first
/// attempt too (pick, pool, total deadline), with no clock read of their
/// own.
pub async fn handle(
    gateway: &Gateway,
    peer: SocketAddr,
    req: Request<ClientBody>,
    lines: Option<HeaderLines>,
    started: std::time::Instant,
) -> Result<Response<ResponseBody>, Infallible> {
    let table = gateway.table_snapshot();
    let id = request_id(RequestHeaders::client(req.headers(), lines.as_ref()));
    // The listener's own probe: answered from the gateway's state, not
    // counted as traffic (load balancers ask every few seconds).
    if probe::is_health_probe(&table, req.method(), req.uri().path()) {
        let mut response = probe::health_response(&table, req.method());
        response.headers_mut().insert(REQUEST_ID.clone(), id);
        return Ok(response);
    }
    let mut response = match proxy(gateway, &table, peer, req, lines, &id, started).await {
        Ok(response) => response,
        Err(response) => {
            let telemetry = &gateway.telemetry;
            if telemetry.enabled() {
                // A gateway-made gRPC error is HTTP 200 with a grpc-status.
                let status = grpc_status(response.headers())
                    .map_or(response.status().as_u16(), grpc_http_status);
                telemetry.local_response(id.to_str().unwrap_or("-"), peer, status, started);
            }
            response
        }
    };
    response.headers_mut().insert(REQUEST_ID.clone(), id);
    Ok(response)
}

async fn proxy(
    gateway: &Gateway,
    table: &RouteTable,
    peer: SocketAddr,
    req: Request<ClientBody>,
    lines: Option<HeaderLines>,
    id: &HeaderValue,
    started: std::time::Instant,
) -> Result<Response<ResponseBody>, Reject> {
    let (mut parts, incoming) = req.into_parts();
    let headers = RequestHeaders::client(&parts.headers, lines.as_ref());
    let head = classify_head(&parts.method, parts.uri.path(), headers);
    let family = head.family;
    if let Some(refusal) = refuse_framing(&parts, headers, family) {
        return Err(refusal);
    }

    if head.endpoint == Endpoint::Models
        && parts.method == Method::GET
        && table.listener.models == ModelsMode::Gateway
    {
        let cards = gateway.models.list(table).await;
        return Ok(models_response(&cards, parts.uri.path()));
    }

    // The length the body declared, as its reader took it from the head
    // (no second look-up and parse of `Content-Length`).
    let declared_len = http_body::Body::size_hint(&incoming).exact();
    let reads_body = head.parse_body;
    // When the request is ready to go to a node: its start, unless reading
    // its body had to wait (then the clock is read again, so the first
    // attempt's clocks and the total deadline count from the body's end).
    let mut ready = started;
    let (mut class, buffered, incoming) = if head.parse_body {
        if declared_len.is_some_and(|n| n > table.max_body_bytes) {
            return Err(too_large(family, table.max_body_bytes));
        }
        let mut waited = false;
        let read = read_body(incoming, table, family, started);
        let mut read = std::pin::pin!(read);
        let bytes = std::future::poll_fn(|cx| {
            let polled = std::future::Future::poll(read.as_mut(), cx);
            waited |= polled.is_pending();
            polled
        })
        .await?;
        if waited {
            ready = std::time::Instant::now();
        }
        let class = classify_body(head, &bytes, &table.classify)
            .map_err(|e| error_response(family, ErrorKind::BadRequest, &e.to_string()))?;
        (class, Some(bytes), None)
    } else {
        (RequestClass::from_head(head), None, Some(incoming))
    };

    let Some(route) = table.route(&parts.method, parts.uri.path(), headers, &class) else {
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
            None if reads_body
                && table.needs_model(&parts.method, parts.uri.path(), headers, &class) =>
            {
                error_response(
                    family,
                    ErrorKind::MissingModel,
                    "You must provide a model parameter.",
                )
            }
            _ => error_response(family, ErrorKind::NoRoute, "No route serves this request."),
        });
    };

    // The header's priority only counts from clients the route trusts.
    class.priority = route.priority.decide(class.asked_priority, peer.ip());

    // The tenant's budget, before any node is asked.
    let charge = match &route.budget {
        Some(budgets) => Some(budgets.admit(headers, &class).map_err(|r| {
            let r = *r;
            let kind = if r.unidentified {
                ErrorKind::NoTenant
            } else {
                ErrorKind::RateLimited
            };
            let mut response = error_response(family, kind, &r.message);
            response.headers_mut().extend(r.headers);
            response
        })?),
        None => None,
    };
    let rate_headers = charge.as_ref().map(|c| c.headers().clone());

    // Routing on the engines' caches needs the prompt's token ids: made
    // once, off this worker, for every pick of every attempt.
    if let (Some(precise), Some(prompt)) = (route.policy.precise(), class.prompt.clone()) {
        class.prompt_keys = precise.keys_off_worker(&prompt).await.map(Arc::from);
    }

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
            RequestBody::Streaming(Some((
                Limited::new(incoming, limit),
                table.listener.body_timeout,
            )))
        }
        (None, None) => RequestBody::Buffered(Bytes::new()),
    };
    let mut response = forward(
        route, &mut parts, lines, body, &class, peer, id, started, ready, charge,
    )
    .await?;
    if let Some(h) = rate_headers {
        response.headers_mut().extend(h);
    }
    Ok(response)
}

/// Requests a proxy must not forward (RFC 9112 §3.2, RFC 9110 §9.3.6):
/// an HTTP/1.1 request with no `Host` or several, and `CONNECT` (tunnels
/// are not proxied). (`Transfer-Encoding` with `Content-Length`: hyper
/// drops the length and reads the chunks, as RFC 9112 §6.3 and HAProxy do,
/// so only the chunked body is forwarded.)
fn refuse_framing(parts: &Parts, headers: RequestHeaders<'_>, family: ApiFamily) -> Option<Reject> {
    if parts.method == Method::CONNECT {
        return Some(error_response(
            family,
            ErrorKind::MethodNotAllowed,
            "CONNECT is not supported.",
        ));
    }
    if parts.version == Version::HTTP_11 && headers.count(&HOST) != 1 {
        return Some(error_response(
            family,
            ErrorKind::BadRequest,
            "An HTTP/1.1 request needs exactly one Host header.",
        ));
    }
    None
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
    incoming: ClientBody,
    table: &RouteTable,
    family: ApiFamily,
    started: std::time::Instant,
) -> Result<Bytes, Reject> {
    let limit = usize::try_from(table.max_body_bytes).unwrap_or(usize::MAX);
    let read = Limited::new(incoming, limit).collect();
    // From the head's arrival, microseconds before: no clock read here.
    // On the connection task's timer (`clock::Within`): a body that came
    // with its head makes no timer at all.
    let until = started + table.listener.body_timeout;
    match crate::clock::Within::new(read, until).await {
        Some(Ok(collected)) => Ok(collected.to_bytes()),
        Some(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large(family, table.max_body_bytes))
        }
        Some(Err(_)) => Err(error_response(
            family,
            ErrorKind::BadRequest,
            "Could not read the request body.",
        )),
        None => Err(error_response(
            family,
            ErrorKind::ClientTimeout,
            "The request body was not sent in time.",
        )),
    }
}

/// `GET /v1/models` (and `/v1/models/{id}`, `/models`) answered from the
/// cards [`super::models::ModelCatalog`] gathered.
fn models_response(cards: &[serde_json::Value], path: &str) -> Response<ResponseBody> {
    let path = path.trim_end_matches('/');
    let id = path
        .strip_prefix("/v1/models/")
        .or_else(|| path.strip_prefix("/models/"));
    let body = match id {
        Some(id) => match cards.iter().find(|c| c["id"].as_str() == Some(id)) {
            Some(card) => card.clone(),
            None => {
                return error_response(
                    ApiFamily::OpenAi,
                    ErrorKind::ModelNotFound,
                    &format!(
                        "The model `{}` does not exist or is not served here.",
                        printable(id)
                    ),
                )
            }
        },
        None => serde_json::json!({ "object": "list", "data": cards }),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<F: std::future::Future>(_: &F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A request's future is boxed once and moved at every `async` call
    /// on its way down, so its size is copied per request: paths a request
    /// on a kept connection does not take (a new connection's TLS
    /// handshake, h2c through hyper-util) are boxed, and futures that
    /// were stored twice (taken by value, then pinned) are pinned by their
    /// caller. Callgrind, 5,000 small POSTs: 68.7k -> 60.1k instructions
    /// per request; the future went from 8,088 to 5,152 bytes.
    #[test]
    fn a_request_future_carries_no_rarely_used_state() {
        let gateway = crate::proxy::one_node_gateway();
        // Made, never polled: its size is its type's.
        let future = handle(
            &gateway,
            SocketAddr::from(([127, 0, 0, 1], 1)),
            Request::new(ClientBody::Empty),
            None,
            std::time::Instant::now(),
        );
        let handle = future_size(&future);
        assert!(handle <= 6 * 1024, "the request's future is {handle} bytes");
    }
}
