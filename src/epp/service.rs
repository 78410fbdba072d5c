//! One ext_proc stream per HTTP request: collect the request headers and
//! body, pick, answer in the order Envoy expects for the body mode, pass
//! every other message through unchanged, and hold the node's slot until
//! the response ends (or the stream does).
//!
//! Body modes: with `FULL_DUPLEX_STREAMED` (what GIE asks gateways to
//! configure, and the assumption when the proxy does not say) the headers
//! answer waits until the whole body is in, then carries the destination,
//! and the body goes back unchanged as a streamed body mutation; with
//! `BUFFERED` the headers are let through at once and the body answer
//! carries the destination header. Without a body the headers answer
//! carries it.

use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    processing_request, processing_response, BodyResponse, CommonResponse, HeaderMutation,
    HeadersResponse, HttpHeaders, ImmediateResponse, ProcessingRequest, ProcessingResponse,
    TrailersResponse,
};
use futures_util::Stream;
use http::{HeaderMap, Method};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::wire::{
    destination, destination_metadata, header, header_text, read_headers, served_of, streamed_body,
    subset_of,
};
use crate::health::FailureKind;
use crate::proxy::pick::{pick, Picked, Spares};
use crate::proxy::{Gateway, Slot};

/// Longest a request waits in a pool's queue for the picker (the pool's
/// own `queue_timeout` is usually shorter and wins).
const PICK_DEADLINE: Duration = Duration::from_secs(300);

/// The ext_proc service.
#[derive(Clone)]
pub struct Picker {
    gateway: Arc<Gateway>,
    fail_open: bool,
    fallbacks: usize,
}

impl Picker {
    /// A picker over `gateway`'s running table, naming up to `fallbacks`
    /// endpoints after the picked one.
    pub fn new(gateway: Arc<Gateway>, fail_open: bool, fallbacks: usize) -> Picker {
        Picker {
            gateway,
            fail_open,
            fallbacks,
        }
    }

    /// The tonic service.
    pub fn into_service(self) -> ExternalProcessorServer<Picker> {
        ExternalProcessorServer::new(self)
    }
}

type Outbound = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for Picker {
    type ProcessStream = Outbound;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Outbound>, Status> {
        let peer = request
            .remote_addr()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let exchange = Exchange {
            picker: self.clone(),
            peer,
            tx,
            head: None,
            body: Vec::new(),
            subset: None,
            mode: BodySendMode::FullDuplexStreamed,
            slot: None,
            picked: None,
            spares: None,
            decided: false,
        };
        tokio::spawn(exchange.run(inbound));
        let outbound = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Response::new(Box::pin(outbound)))
    }
}

/// The state of one request's stream.
struct Exchange {
    picker: Picker,
    peer: IpAddr,
    tx: mpsc::Sender<Result<ProcessingResponse, Status>>,
    /// Method, path and headers, once the request headers came.
    head: Option<(Method, String, HeaderMap)>,
    /// The request body so far.
    body: Vec<u8>,
    /// The proxy's endpoint subset, if it sent one.
    subset: Option<Vec<String>>,
    /// How the proxy sends the request body.
    mode: BodySendMode,
    /// The hold on the node serving the request, until the response ends.
    slot: Option<Slot>,
    /// `ip:port` of the node the slot is on.
    picked: Option<String>,
    /// The fallbacks named with the pick.
    spares: Option<Spares>,
    /// Whether the request has been answered (picked, refused or let through).
    decided: bool,
}

/// What the picker decided for a request.
enum Decision {
    /// Route to these endpoints (`ip:port,ip:port,...`: the pick, then
    /// its fallbacks).
    Endpoint(String),
    /// Answer the client with this status and message.
    Refuse(u16, String),
    /// Let the proxy route it (fail open).
    PassThrough,
}

impl Exchange {
    async fn run(mut self, mut inbound: Streaming<ProcessingRequest>) {
        loop {
            let message = match inbound.message().await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(%status, "ext_proc stream ended with an error");
                    break;
                }
            };
            if let Some(metadata) = &message.metadata_context {
                if let Some(subset) = subset_of(metadata) {
                    self.subset = Some(subset);
                }
                if let Some(served) = served_of(metadata) {
                    self.on_served(served);
                }
            }
            if let Some(config) = &message.protocol_config {
                if let Ok(mode) = BodySendMode::try_from(config.request_body_mode) {
                    self.mode = mode;
                }
            }
            let Some(request) = message.request else {
                continue;
            };
            let sent = match request {
                processing_request::Request::RequestHeaders(headers) => {
                    self.on_request_headers(headers).await
                }
                processing_request::Request::RequestBody(body) => {
                    self.on_request_body(body.body, body.end_of_stream).await
                }
                processing_request::Request::RequestTrailers(_) => {
                    self.send(processing_response::Response::RequestTrailers(
                        TrailersResponse::default(),
                    ))
                    .await
                }
                processing_request::Request::ResponseHeaders(headers) => {
                    self.on_response_headers(&headers);
                    self.send(processing_response::Response::ResponseHeaders(
                        HeadersResponse::default(),
                    ))
                    .await
                }
                processing_request::Request::ResponseBody(body) => {
                    if body.end_of_stream {
                        self.slot = None;
                    }
                    let answer = if self.response_streamed(&message.protocol_config) {
                        streamed_body(body.body, body.end_of_stream)
                    } else {
                        BodyResponse::default()
                    };
                    self.send(processing_response::Response::ResponseBody(answer))
                        .await
                }
                processing_request::Request::ResponseTrailers(_) => {
                    self.slot = None;
                    self.send(processing_response::Response::ResponseTrailers(
                        TrailersResponse::default(),
                    ))
                    .await
                }
            };
            if !sent {
                break;
            }
        }
        // The slot (if the response never ended) is released here.
    }

    fn response_streamed(
        &self,
        config: &Option<envoy_types::pb::envoy::service::ext_proc::v3::ProtocolConfiguration>,
    ) -> bool {
        config.as_ref().is_none_or(|c| {
            BodySendMode::try_from(c.response_body_mode)
                .is_ok_and(|m| m == BodySendMode::FullDuplexStreamed)
        })
    }

    async fn send(&self, response: processing_response::Response) -> bool {
        self.send_full(ProcessingResponse {
            response: Some(response),
            ..ProcessingResponse::default()
        })
        .await
    }

    async fn send_full(&self, response: ProcessingResponse) -> bool {
        self.tx.send(Ok(response)).await.is_ok()
    }

    async fn on_request_headers(&mut self, headers: HttpHeaders) -> bool {
        let (method, path, map) = read_headers(&headers);
        self.head = Some((method, path, map));
        if headers.end_of_stream {
            let decision = self.decide().await;
            return self.answer_headers(decision).await;
        }
        if self.mode != BodySendMode::FullDuplexStreamed {
            // The proxy waits for this answer before it sends the body;
            // the destination goes with the body's answer.
            return self
                .send(processing_response::Response::RequestHeaders(
                    HeadersResponse::default(),
                ))
                .await;
        }
        true
    }

    async fn on_request_body(&mut self, chunk: Vec<u8>, end: bool) -> bool {
        if self.decided {
            // Past the decision (a refused or let-through request): pass on.
            return self
                .send(processing_response::Response::RequestBody(streamed_body(
                    chunk, end,
                )))
                .await;
        }
        let limit =
            usize::try_from(self.picker.gateway.table().max_body_bytes).unwrap_or(usize::MAX);
        if self.body.len().saturating_add(chunk.len()) > limit {
            let decision = if self.picker.fail_open {
                Decision::PassThrough
            } else {
                Decision::Refuse(413, format!("request body over {limit} bytes"))
            };
            self.body.extend_from_slice(&chunk);
            return self.answer_body(decision, end).await;
        }
        self.body.extend_from_slice(&chunk);
        if !end {
            return true;
        }
        let decision = self.decide().await;
        self.answer_body(decision, true).await
    }

    /// Classify, route and pick for the request read so far.
    async fn decide(&mut self) -> Decision {
        self.decided = true;
        let Some((method, path, headers)) = &self.head else {
            return Decision::Refuse(400, "request body before its headers".into());
        };
        let table = self.picker.gateway.table();
        let deadline = tokio::time::Instant::now() + PICK_DEADLINE;
        let picked = pick(
            &table,
            method,
            path,
            headers,
            &self.body,
            self.subset.as_deref(),
            self.peer,
            deadline,
            self.picker.fallbacks,
        )
        .await;
        match picked {
            Picked::Node {
                addr,
                pool,
                node,
                slot,
                spares,
            } => {
                tracing::debug!(%pool, %node, %addr, "endpoint picked");
                let endpoints = std::iter::once(addr.clone())
                    .chain(spares.addrs())
                    .collect::<Vec<_>>()
                    .join(",");
                self.slot = Some(slot);
                self.picked = Some(addr);
                self.spares = Some(spares);
                Decision::Endpoint(endpoints)
            }
            Picked::Refused { status, message } => {
                tracing::debug!(status, %message, "no endpoint picked");
                if self.picker.fail_open && matches!(status, 400 | 404) {
                    Decision::PassThrough
                } else {
                    Decision::Refuse(status, message)
                }
            }
        }
    }

    /// Answer a request without a body (or a refused one) on its headers.
    async fn answer_headers(&self, decision: Decision) -> bool {
        match decision {
            Decision::Endpoint(addr) => {
                self.send_full(ProcessingResponse {
                    response: Some(processing_response::Response::RequestHeaders(
                        HeadersResponse {
                            response: Some(destination(&addr)),
                        },
                    )),
                    dynamic_metadata: Some(destination_metadata(&addr)),
                    ..ProcessingResponse::default()
                })
                .await
            }
            Decision::Refuse(status, message) => self.refuse(status, &message).await,
            Decision::PassThrough => {
                self.send(processing_response::Response::RequestHeaders(
                    HeadersResponse::default(),
                ))
                .await
            }
        }
    }

    /// Answer once the body is decided: in full-duplex mode the held
    /// headers answer, then the body so far back unchanged; in buffered
    /// mode the body answer with the destination.
    async fn answer_body(&mut self, decision: Decision, end: bool) -> bool {
        self.decided = true;
        if let Decision::Refuse(status, message) = decision {
            return self.refuse(status, &message).await;
        }
        let body = std::mem::take(&mut self.body);
        if self.mode == BodySendMode::FullDuplexStreamed {
            let (common, metadata) = match &decision {
                Decision::Endpoint(addr) => (destination(addr), Some(destination_metadata(addr))),
                _ => (CommonResponse::default(), None),
            };
            return self
                .send_full(ProcessingResponse {
                    response: Some(processing_response::Response::RequestHeaders(
                        HeadersResponse {
                            response: Some(common),
                        },
                    )),
                    dynamic_metadata: metadata,
                    ..ProcessingResponse::default()
                })
                .await
                && self
                    .send(processing_response::Response::RequestBody(streamed_body(
                        body, end,
                    )))
                    .await;
        }
        match decision {
            Decision::Endpoint(addr) => {
                self.send_full(ProcessingResponse {
                    response: Some(processing_response::Response::RequestBody(BodyResponse {
                        response: Some(destination(&addr)),
                    })),
                    dynamic_metadata: Some(destination_metadata(&addr)),
                    ..ProcessingResponse::default()
                })
                .await
            }
            _ => {
                self.send(processing_response::Response::RequestBody(
                    BodyResponse::default(),
                ))
                .await
            }
        }
    }

    /// End the request with an immediate response in the OpenAI error
    /// shape (the API GIE pools serve).
    async fn refuse(&self, status: u16, message: &str) -> bool {
        let kind = match status {
            400 | 413 => "invalid_request_error",
            404 => "not_found_error",
            429 => "rate_limit_exceeded",
            _ => "service_unavailable",
        };
        let body = serde_json::json!({
            "error": {"message": message, "type": kind, "param": null, "code": status}
        })
        .to_string();
        let mut headers = vec![header("content-type", "application/json")];
        if matches!(status, 429 | 503) {
            headers.push(header("retry-after", "1"));
        }
        self.send(processing_response::Response::ImmediateResponse(
            ImmediateResponse {
                status: Some(HttpStatus {
                    code: i32::from(status),
                }),
                headers: Some(HeaderMutation {
                    set_headers: headers,
                    remove_headers: Vec::new(),
                }),
                body: body.into_bytes(),
                details: format!("infergate_epp_{status}"),
                ..ImmediateResponse::default()
            },
        ))
        .await
    }

    /// The proxy reports the endpoint that served: when it went down the
    /// list, the picked node failed the request (counted for outlier
    /// detection like a 5xx, the proxy does not say why) and the hold
    /// moves to the fallback that served; an endpoint the picker did not
    /// name is not this pool's request to count.
    fn on_served(&mut self, served: &str) {
        if self.picked.as_deref() == Some(served) {
            return;
        }
        let Some(old) = self.slot.take() else {
            return;
        };
        let moved = self.spares.as_ref().and_then(|s| s.served_by(&old, served));
        if moved.is_some() {
            tracing::debug!(picked = ?self.picked, %served, "the proxy fell back");
            old.failure(FailureKind::Status5xx);
        } else {
            tracing::debug!(picked = ?self.picked, %served, "served by an endpoint the picker did not name");
        }
        self.picked = moved.as_ref().map(|_| served.to_string());
        self.slot = moved;
    }

    /// Feed passive health with the node's answer, as the data plane does.
    fn on_response_headers(&self, headers: &HttpHeaders) {
        let Some(slot) = &self.slot else {
            return;
        };
        let status = headers
            .headers
            .iter()
            .flat_map(|m| &m.headers)
            .find(|h| h.key == ":status")
            .and_then(|h| header_text(h).parse::<u16>().ok());
        match status {
            Some(s) if s >= 500 => slot.failure(FailureKind::Status5xx),
            Some(_) => slot.success(),
            None => {}
        }
    }
}
