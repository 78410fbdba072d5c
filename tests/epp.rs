//! The endpoint picker over ext_proc: a tonic client plays Envoy's side of
//! the Endpoint Picker Protocol against `infergate::epp` serving a real
//! gateway's table.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, Metadata};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    body_mutation, processing_request, processing_response, CommonResponse, HttpBody, HttpHeaders,
    ProcessingRequest, ProcessingResponse, ProtocolConfiguration,
};
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
use infergate::config::Config;
use infergate::epp::EppConfig;
use infergate::proxy::Gateway;
use tokio::sync::mpsc;
use tonic::Streaming;

const WITHIN: Duration = Duration::from_secs(10);

/// A gateway for `nodes` (pool `p`, `extra` appended to each node) and its
/// endpoint picker on a loopback port.
/// The answers name one endpoint (`fallbacks = 0`).
async fn start(
    nodes: &[SocketAddr],
    node_extra: &str,
    pool_extra: &str,
    fail_open: bool,
) -> (Arc<Gateway>, infergate::epp::EppServer, String) {
    let text = config_text(nodes, node_extra, pool_extra);
    let epp = EppConfig {
        fail_open,
        fallbacks: 0,
        ..EppConfig::default()
    };
    let (gateway, server) = start_with(&text, &epp).await;
    (gateway, server, text)
}

async fn start_with(text: &str, epp: &EppConfig) -> (Arc<Gateway>, infergate::epp::EppServer) {
    let gateway = Gateway::new(&Config::from_toml(text).unwrap()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = infergate::epp::serve(Arc::clone(&gateway), epp, listener)
        .await
        .unwrap();
    (gateway, server)
}

fn config_text(nodes: &[SocketAddr], node_extra: &str, pool_extra: &str) -> String {
    let mut text = format!("[[pools]]\nname = \"p\"\n{pool_extra}\n");
    for (i, addr) in nodes.iter().enumerate() {
        text.push_str(&format!(
            "[[pools.nodes]]\nname = \"n{i}\"\naddr = \"{addr}\"\n{node_extra}\n"
        ));
    }
    text.push_str(&format!(
        "[[routes]]\nname = \"r\"\npool = \"p\"\npolicy = \"least_outstanding\"\n\
         [routes.match]\nfamily = \"openai\"\nmodel = \"{MODEL}\"\n"
    ));
    text
}

/// One ext_proc stream, driven message by message as Envoy would.
struct Envoy {
    tx: mpsc::Sender<ProcessingRequest>,
    rx: Streaming<ProcessingResponse>,
}

impl Envoy {
    async fn open(epp: SocketAddr) -> Envoy {
        let mut client = ExternalProcessorClient::connect(format!("http://{epp}"))
            .await
            .expect("connect to the picker");
        let (tx, rx) = mpsc::channel::<ProcessingRequest>(16);
        let outbound =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        let rx = client
            .process(outbound)
            .await
            .expect("process")
            .into_inner();
        Envoy { tx, rx }
    }

    async fn send(&self, request: processing_request::Request, first: Option<(Metadata, i32)>) {
        let (metadata_context, protocol_config) = match first {
            Some((metadata, mode)) => (
                Some(metadata),
                Some(ProtocolConfiguration {
                    request_body_mode: mode,
                    response_body_mode: 4,
                    ..ProtocolConfiguration::default()
                }),
            ),
            None => (None, None),
        };
        self.tx
            .send(ProcessingRequest {
                request: Some(request),
                metadata_context,
                protocol_config,
                ..ProcessingRequest::default()
            })
            .await
            .unwrap();
    }

    async fn next(&mut self) -> ProcessingResponse {
        tokio::time::timeout(WITHIN, self.rx.message())
            .await
            .expect("an answer in time")
            .expect("no stream error")
            .expect("stream open")
    }

    /// Headers of a chat request (not the end of the stream), with the
    /// proxy's subset when given, body mode `mode` (4: full duplex).
    async fn request_headers(&self, subset: Option<&[String]>, mode: i32) {
        let headers = [
            (":method", "POST"),
            (":path", "/v1/chat/completions"),
            (":authority", "gateway.example"),
            ("content-type", "application/json"),
        ];
        self.send(
            processing_request::Request::RequestHeaders(HttpHeaders {
                headers: Some(HeaderMap {
                    headers: headers
                        .iter()
                        .map(|(k, v)| HeaderValue {
                            key: k.to_string(),
                            raw_value: v.as_bytes().to_vec(),
                            ..HeaderValue::default()
                        })
                        .collect(),
                }),
                end_of_stream: false,
                ..HttpHeaders::default()
            }),
            Some((subset.map(subset_metadata).unwrap_or_default(), mode)),
        )
        .await;
    }

    async fn body(&self, chunk: &[u8], end: bool) {
        self.send(
            processing_request::Request::RequestBody(HttpBody {
                body: chunk.to_vec(),
                end_of_stream: end,
                ..HttpBody::default()
            }),
            None,
        )
        .await;
    }

    /// The whole request in full-duplex mode, body in three chunks; the
    /// picked endpoint (after checking the answer's shape).
    async fn pick(
        &mut self,
        body: &str,
        subset: Option<&[String]>,
    ) -> Result<String, (u16, String)> {
        self.request_headers(subset, 4).await;
        let bytes = body.as_bytes();
        let third = bytes.len() / 3;
        self.body(&bytes[..third], false).await;
        self.body(&bytes[third..2 * third], false).await;
        self.body(&bytes[2 * third..], true).await;
        let first = self.next().await;
        let headers = match first.response {
            Some(processing_response::Response::RequestHeaders(h)) => h,
            Some(processing_response::Response::ImmediateResponse(i)) => {
                return Err((
                    i.status.map_or(0, |s| s.code as u16),
                    String::from_utf8_lossy(&i.body).into_owned(),
                ))
            }
            other => panic!("unexpected first answer {other:?}"),
        };
        let endpoint = destination_header(headers.response.as_ref().unwrap());
        let metadata = first.dynamic_metadata.expect("dynamic metadata");
        let Some(Kind::StructValue(lb)) = &metadata.fields["envoy.lb"].kind else {
            panic!("envoy.lb is a struct");
        };
        let Some(Kind::StringValue(in_metadata)) =
            &lb.fields["x-gateway-destination-endpoint"].kind
        else {
            panic!("the endpoint is a string");
        };
        assert_eq!(*in_metadata, endpoint, "header and metadata agree");
        // The body goes back unchanged, as one streamed mutation.
        let second = self.next().await;
        let Some(processing_response::Response::RequestBody(b)) = second.response else {
            panic!("the body answer follows");
        };
        let Some(body_mutation::Mutation::StreamedResponse(streamed)) =
            b.response.unwrap().body_mutation.unwrap().mutation
        else {
            panic!("a streamed body mutation");
        };
        assert_eq!(streamed.body, bytes);
        assert!(streamed.end_of_stream);
        Ok(endpoint)
    }

    /// The node's response: headers with `status`, then the body's end.
    async fn respond(&mut self, status: u16) {
        self.response_headers(status, None).await;
        self.response_end().await;
    }

    /// The response headers, with the endpoint that served in the
    /// metadata as a conforming proxy reports it.
    async fn response_headers(&mut self, status: u16, served: Option<&str>) {
        let metadata_context = served.map(|served| Metadata {
            filter_metadata: [(
                "envoy.lb".to_string(),
                Struct {
                    fields: [(
                        "x-gateway-destination-endpoint-served".to_string(),
                        Value {
                            kind: Some(Kind::StringValue(served.to_string())),
                        },
                    )]
                    .into_iter()
                    .collect(),
                },
            )]
            .into_iter()
            .collect(),
            ..Metadata::default()
        });
        self.tx
            .send(ProcessingRequest {
                request: Some(processing_request::Request::ResponseHeaders(HttpHeaders {
                    headers: Some(HeaderMap {
                        headers: vec![HeaderValue {
                            key: ":status".into(),
                            raw_value: status.to_string().into_bytes(),
                            ..HeaderValue::default()
                        }],
                    }),
                    ..HttpHeaders::default()
                })),
                metadata_context,
                ..ProcessingRequest::default()
            })
            .await
            .unwrap();
        assert!(matches!(
            self.next().await.response,
            Some(processing_response::Response::ResponseHeaders(_))
        ));
    }

    /// The end of the response body.
    async fn response_end(&mut self) {
        self.send(
            processing_request::Request::ResponseBody(HttpBody {
                body: b"data: [DONE]\n\n".to_vec(),
                end_of_stream: true,
                ..HttpBody::default()
            }),
            None,
        )
        .await;
        let Some(processing_response::Response::ResponseBody(b)) = self.next().await.response
        else {
            panic!("response body answer");
        };
        let Some(body_mutation::Mutation::StreamedResponse(streamed)) =
            b.response.unwrap().body_mutation.unwrap().mutation
        else {
            panic!("streamed back");
        };
        assert_eq!(streamed.body, b"data: [DONE]\n\n");
    }
}

fn destination_header(common: &CommonResponse) -> String {
    let mutation = common.header_mutation.as_ref().expect("header mutation");
    let header = mutation
        .set_headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "x-gateway-destination-endpoint")
        .expect("destination header");
    assert!(common.clear_route_cache, "the route is chosen again");
    String::from_utf8(header.raw_value.clone()).unwrap()
}

fn subset_metadata(subset: &[String]) -> Metadata {
    let list = Value {
        kind: Some(Kind::ListValue(ListValue {
            values: subset
                .iter()
                .map(|s| Value {
                    kind: Some(Kind::StringValue(s.clone())),
                })
                .collect(),
        })),
    };
    let hint = Struct {
        fields: [("x-gateway-destination-endpoint-subset".to_string(), list)]
            .into_iter()
            .collect(),
    };
    Metadata {
        filter_metadata: [("envoy.lb.subset_hint".to_string(), hint)]
            .into_iter()
            .collect(),
        ..Metadata::default()
    }
}

fn outstanding(gateway: &Gateway, addr: &str) -> u64 {
    gateway.table().pools[0]
        .nodes
        .iter()
        .find(|n| n.addr.as_str() == addr)
        .map_or(0, |n| n.outstanding())
}

fn fake_addrs(n: u16) -> Vec<SocketAddr> {
    // The picker never connects to nodes: addresses need not listen.
    (0..n)
        .map(|i| format!("127.0.0.1:{}", 40_000 + i).parse().unwrap())
        .collect()
}

#[tokio::test]
async fn picks_over_a_streamed_body_and_counts_the_request_in_flight() {
    let nodes = fake_addrs(3);
    let (gateway, epp, _) = start(&nodes, "", "", false).await;
    let mut envoy = Envoy::open(epp.addr).await;
    let endpoint = envoy
        .pick(&chat("hello there", true, 16), None)
        .await
        .unwrap();
    assert!(
        nodes.iter().any(|n| n.to_string() == endpoint),
        "{endpoint}"
    );
    // The pick holds the node like a proxied request would ...
    assert_eq!(outstanding(&gateway, &endpoint), 1);
    // ... so least_outstanding spreads concurrent picks.
    let mut second = Envoy::open(epp.addr).await;
    let other = second
        .pick(&chat("and again", false, 16), None)
        .await
        .unwrap();
    assert_ne!(other, endpoint);
    envoy.respond(200).await;
    second.respond(200).await;
    assert!(eventually(WITHIN, || outstanding(&gateway, &endpoint) == 0).await);
    assert!(eventually(WITHIN, || outstanding(&gateway, &other) == 0).await);
}

#[tokio::test]
async fn honours_the_subset_and_refuses_when_nothing_in_it_can_serve() {
    let nodes = fake_addrs(3);
    let (_gateway, epp, _) = start(&nodes, "", "", false).await;
    let only = vec![nodes[2].to_string()];
    for _ in 0..5 {
        let mut envoy = Envoy::open(epp.addr).await;
        let picked = envoy
            .pick(&chat("subset", false, 8), Some(&only))
            .await
            .unwrap();
        assert_eq!(picked, only[0]);
    }
    let mut envoy = Envoy::open(epp.addr).await;
    let outside = vec!["10.9.9.9:8000".to_string()];
    let refused = envoy
        .pick(&chat("subset", false, 8), Some(&outside))
        .await
        .unwrap_err();
    assert_eq!(refused.0, 503, "{}", refused.1);
    let mut envoy = Envoy::open(epp.addr).await;
    let refused = envoy
        .pick(&chat("empty", false, 8), Some(&[]))
        .await
        .unwrap_err();
    assert_eq!(refused.0, 503);
}

#[tokio::test]
async fn a_picked_node_that_goes_away_is_not_picked_again() {
    let nodes = fake_addrs(2);
    let (gateway, epp, _) = start(&nodes, "", "", false).await;
    let gone = nodes[1].to_string();
    let mut held = Envoy::open(epp.addr).await;
    assert_eq!(
        held.pick(&chat("x", true, 8), Some(std::slice::from_ref(&gone)))
            .await
            .unwrap(),
        gone
    );
    // The node leaves the pool while its request runs.
    let text = config_text(&nodes[..1], "", "");
    gateway.reload(&Config::from_toml(&text).unwrap()).unwrap();
    let mut envoy = Envoy::open(epp.addr).await;
    let refused = envoy
        .pick(&chat("x", false, 8), Some(std::slice::from_ref(&gone)))
        .await
        .unwrap_err();
    assert_eq!(refused.0, 503);
    for _ in 0..4 {
        let mut envoy = Envoy::open(epp.addr).await;
        assert_eq!(
            envoy.pick(&chat("y", false, 8), None).await.unwrap(),
            nodes[0].to_string()
        );
        envoy.respond(200).await;
    }
    // The request on the node that left still ends cleanly.
    held.respond(200).await;
    // A node taken down by the data plane's health state is not picked either.
    let table = gateway.table();
    table.pools[0].nodes[0].load.health.set_draining(true);
    let mut envoy = Envoy::open(epp.addr).await;
    assert_eq!(
        envoy.pick(&chat("z", false, 8), None).await.unwrap_err().0,
        503
    );
}

#[tokio::test]
async fn sheds_with_429_when_the_subset_is_at_its_limit() {
    let nodes = fake_addrs(2);
    let (_gateway, epp, _) = start(&nodes, "max_concurrent = 1", "queue_size = 0", false).await;
    let subset = vec![nodes[0].to_string()];
    let mut first = Envoy::open(epp.addr).await;
    first
        .pick(&chat("a", false, 8), Some(&subset))
        .await
        .unwrap();
    let mut second = Envoy::open(epp.addr).await;
    let shed = second
        .pick(&chat("b", false, 8), Some(&subset))
        .await
        .unwrap_err();
    assert_eq!(shed.0, 429, "{}", shed.1);
    first.respond(200).await;
    let mut third = Envoy::open(epp.addr).await;
    assert!(third
        .pick(&chat("c", false, 8), Some(&subset))
        .await
        .is_ok());
}

#[tokio::test]
async fn unknown_models_fail_closed_or_open_as_configured() {
    let nodes = fake_addrs(1);
    let body = serde_json::json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]})
        .to_string();
    let (_g, closed, _) = start(&nodes, "", "", false).await;
    let mut envoy = Envoy::open(closed.addr).await;
    let refused = envoy.pick(&body, None).await.unwrap_err();
    assert_eq!(refused.0, 404);
    assert!(refused.1.contains("nope"), "{}", refused.1);

    let (_g, open, _) = start(&nodes, "", "", true).await;
    let mut envoy = Envoy::open(open.addr).await;
    envoy.request_headers(None, 4).await;
    envoy.body(body.as_bytes(), true).await;
    let Some(processing_response::Response::RequestHeaders(h)) = envoy.next().await.response else {
        panic!("let through");
    };
    assert!(
        h.response.unwrap_or_default().header_mutation.is_none(),
        "no destination"
    );
    let Some(processing_response::Response::RequestBody(_)) = envoy.next().await.response else {
        panic!("the body follows unchanged");
    };
}

#[tokio::test]
async fn buffered_body_mode_answers_the_headers_first() {
    let nodes = fake_addrs(2);
    let (_gateway, epp, _) = start(&nodes, "", "", false).await;
    let mut envoy = Envoy::open(epp.addr).await;
    envoy.request_headers(None, 2).await;
    let Some(processing_response::Response::RequestHeaders(h)) = envoy.next().await.response else {
        panic!("headers let through before the body");
    };
    assert!(h.response.unwrap_or_default().header_mutation.is_none());
    envoy
        .body(chat("buffered", false, 8).as_bytes(), true)
        .await;
    let answer = envoy.next().await;
    let Some(processing_response::Response::RequestBody(b)) = answer.response else {
        panic!("body answer");
    };
    let endpoint = destination_header(b.response.as_ref().unwrap());
    assert!(nodes.iter().any(|n| n.to_string() == endpoint));
    assert!(answer.dynamic_metadata.is_some());
}

/// A pool of `n` fake nodes answered with the picked endpoint and up to
/// `fallbacks` more.
async fn start_fallbacks(
    n: u16,
    fallbacks: usize,
) -> (Arc<Gateway>, infergate::epp::EppServer, Vec<SocketAddr>) {
    let nodes = fake_addrs(n);
    let epp = EppConfig {
        fallbacks,
        ..EppConfig::default()
    };
    let (gateway, server) = start_with(&config_text(&nodes, "", ""), &epp).await;
    (gateway, server, nodes)
}

fn list(endpoints: &str) -> Vec<String> {
    endpoints.split(',').map(str::to_string).collect()
}

#[tokio::test]
async fn names_available_fallbacks_after_the_pick_without_holding_them() {
    let (gateway, epp, nodes) = start_fallbacks(4, 2).await;
    let all: Vec<String> = nodes.iter().map(ToString::to_string).collect();
    // Two requests in flight first: the fallbacks are the least loaded.
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut envoy = Envoy::open(epp.addr).await;
        let picked = list(&envoy.pick(&chat("busy", true, 8), None).await.unwrap());
        busy.push((envoy, picked[0].clone()));
    }
    let mut envoy = Envoy::open(epp.addr).await;
    let endpoints = list(&envoy.pick(&chat("hello", true, 8), None).await.unwrap());
    assert_eq!(
        endpoints.len(),
        3,
        "the pick and two fallbacks: {endpoints:?}"
    );
    let mut distinct = endpoints.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{endpoints:?}");
    assert!(endpoints.iter().all(|e| all.contains(e)), "{endpoints:?}");
    // least_outstanding picked an idle node; the only other idle node is
    // the first fallback.
    for (_, held) in &busy {
        assert_ne!(endpoints[0], *held);
        assert_ne!(
            endpoints[1], *held,
            "an idle node falls back first: {endpoints:?}"
        );
    }
    // Only the pick is held.
    assert_eq!(outstanding(&gateway, &endpoints[0]), 1);
    assert_eq!(outstanding(&gateway, &endpoints[1]), 0);
    // Fallbacks stay in the subset, and a node out of service is not one.
    gateway.table().pools[0].nodes[3]
        .load
        .health
        .set_draining(true);
    let subset = all[1..].to_vec();
    let mut envoy = Envoy::open(epp.addr).await;
    let endpoints = list(
        &envoy
            .pick(&chat("subset", false, 8), Some(&subset))
            .await
            .unwrap(),
    );
    assert_eq!(endpoints.len(), 2, "{endpoints:?}");
    assert!(
        endpoints.iter().all(|e| *e == all[1] || *e == all[2]),
        "{endpoints:?}"
    );
}

#[tokio::test]
async fn the_served_fallback_takes_the_hold_and_the_pick_counts_a_failure() {
    let (gateway, epp, _) = start_fallbacks(3, 2).await;
    let failures = |addr: &str| {
        gateway.table().pools[0]
            .nodes
            .iter()
            .find(|n| n.addr.as_str() == addr)
            .map_or(0, |n| n.load.failures())
    };
    // The proxy's retry went down the list: the second endpoint served.
    let mut envoy = Envoy::open(epp.addr).await;
    let endpoints = list(&envoy.pick(&chat("retry", true, 8), None).await.unwrap());
    let (picked, fallback) = (endpoints[0].clone(), endpoints[1].clone());
    envoy.response_headers(200, Some(&fallback)).await;
    assert_eq!(outstanding(&gateway, &picked), 0, "the pick's hold is gone");
    assert_eq!(
        outstanding(&gateway, &fallback),
        1,
        "the server's request is held"
    );
    assert_eq!(failures(&picked), 1, "the picked node failed it");
    envoy.response_end().await;
    assert!(eventually(WITHIN, || outstanding(&gateway, &fallback) == 0).await);

    // Served by the pick itself: nothing moves, nothing failed.
    let mut envoy = Envoy::open(epp.addr).await;
    let endpoints = list(&envoy.pick(&chat("plain", true, 8), None).await.unwrap());
    envoy.response_headers(200, Some(&endpoints[0])).await;
    assert_eq!(outstanding(&gateway, &endpoints[0]), 1);
    assert_eq!(failures(&endpoints[0]), u64::from(endpoints[0] == picked));
    envoy.response_end().await;

    // Served by an endpoint the picker never named: not this pool's to count.
    let mut envoy = Envoy::open(epp.addr).await;
    let endpoints = list(&envoy.pick(&chat("elsewhere", true, 8), None).await.unwrap());
    envoy.response_headers(200, Some("10.9.9.9:8000")).await;
    assert!(endpoints.iter().all(|e| outstanding(&gateway, e) == 0));
    envoy.response_end().await;
}

#[tokio::test]
async fn grpc_health_serves_liveness_and_readiness_from_the_node_set() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    // A discovered pool that has found nothing yet: alive, not ready.
    let text = "[[pools]]\nname = \"p\"\n[pools.discovery.dns]\nnames = [\"vllm.invalid:8000\"]\n\
                [[routes]]\nname = \"r\"\npool = \"p\"\n";
    let (gateway, epp) = start_with(text, &EppConfig::default()).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", epp.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let probe = client.clone();
    let status = move |service: &'static str| {
        let mut client = probe.clone();
        async move {
            let answer = client
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .expect("a known service");
            ServingStatus::try_from(answer.into_inner().status).unwrap()
        }
    };
    let ext_proc = "envoy.service.ext_proc.v3.ExternalProcessor";
    assert_eq!(status("liveness").await, ServingStatus::Serving);
    assert_eq!(status("readiness").await, ServingStatus::NotServing);
    assert_eq!(status(ext_proc).await, ServingStatus::NotServing);
    let unknown = client
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    // Discovery finds a node: ready.
    gateway.discovered(
        "p",
        vec![infergate::discovery::FoundNode {
            name: "a".into(),
            addr: "127.0.0.1:40000".into(),
            weight: None,
            max_concurrent: None,
            pod: None,
        }],
    );
    let deadline = tokio::time::Instant::now() + WITHIN;
    while status("readiness").await != ServingStatus::Serving {
        assert!(
            tokio::time::Instant::now() < deadline,
            "readiness never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status(ext_proc).await, ServingStatus::Serving);
    assert_eq!(status("").await, ServingStatus::Serving);
}
