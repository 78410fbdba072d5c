//! TLS on both sides: the data listener terminates TLS (ALPN h2 and
//! http/1.1, optional client certificates), and nodes and their health
//! checks are reached over https with a pool's CA bundle. Certificates are
//! made in the test (rcgen).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use infergate::health::now_ms;
use infergate::tls::{client_config, https_connector, ClientTls};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let dir = std::env::temp_dir().join(format!("ig-tls-test-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca }
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for 127.0.0.1/localhost signed by the CA: (cert, key).
    fn leaf(&self, name: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (c, k) = (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A client's TLS settings that trust `pki`'s CA.
fn trusting(pki: &Pki) -> ClientTls {
    ClientTls {
        ca: Some(pki.ca_path()),
        ..ClientTls::default()
    }
}

fn https_client(
    tls: &ClientTls,
    http2: bool,
) -> Client<infergate::tls::HttpsConnector, Full<Bytes>> {
    let connector = https_connector(client_config(tls).unwrap(), Duration::from_secs(5));
    Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build(connector)
}

fn with_listener_tls(text: &str, cert: &Path, key: &Path, client_ca: Option<&Path>) -> String {
    let mut tls = format!(
        "[listener.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    if let Some(ca) = client_ca {
        tls.push_str(&format!("client_ca = \"{}\"\n", ca.display()));
    }
    text.replacen("\n\n[[pools]]", &format!("\n{tls}\n[[pools]]"), 1)
}

async fn chat_over(
    client: &Client<infergate::tls::HttpsConnector, Full<Bytes>>,
    addr: SocketAddr,
) -> Result<(u16, http::Version), String> {
    let request = Request::post(format!(
        "https://127.0.0.1:{}/v1/chat/completions",
        addr.port()
    ))
    .header("content-type", "application/json")
    .body(Full::new(Bytes::from(chat("tls", false, 1))))
    .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    let version = response.version();
    let status = response.status().as_u16();
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, version))
}

#[tokio::test]
async fn the_listener_terminates_tls_with_alpn() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("gw");
    let nodes = start_nodes(1, &fast_sim()).await;
    let text = with_listener_tls(
        &config_text(&unweighted(&nodes), "round_robin", ""),
        &cert,
        &key,
        None,
    );
    let gw = start_gateway(&text).await;
    let trust = trusting(&pki);
    // The client offers h2 and http/1.1 by ALPN; the gateway picks h2.
    assert_eq!(
        chat_over(&https_client(&trust, false), gw.addr).await,
        Ok((200, http::Version::HTTP_2))
    );
    // Without http2 on the listener, ALPN settles on http/1.1.
    let gw = start_gateway(&text.replacen(
        "addr = \"127.0.0.1:0\"\n",
        "addr = \"127.0.0.1:0\"\nhttp2 = false\n",
        1,
    ))
    .await;
    assert_eq!(
        chat_over(&https_client(&trust, false), gw.addr).await,
        Ok((200, http::Version::HTTP_11))
    );
    // A client that does not trust the CA fails the handshake.
    assert!(
        chat_over(&https_client(&ClientTls::default(), false), gw.addr)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn client_certificates_are_required_when_configured() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("gw");
    let (client_cert, client_key) = pki.leaf("client");
    let nodes = start_nodes(1, &fast_sim()).await;
    let ca = pki.ca_path();
    let text = with_listener_tls(
        &config_text(&unweighted(&nodes), "round_robin", ""),
        &cert,
        &key,
        Some(&ca),
    );
    let gw = start_gateway(&text).await;
    let anonymous = ClientTls {
        ca: Some(ca.clone()),
        ..ClientTls::default()
    };
    assert!(chat_over(&https_client(&anonymous, false), gw.addr)
        .await
        .is_err());
    let known = ClientTls {
        ca: Some(ca),
        cert: Some(client_cert),
        key: Some(client_key),
    };
    assert_eq!(
        chat_over(&https_client(&known, false), gw.addr)
            .await
            .map(|(status, _)| status),
        Ok(200)
    );
}

/// A node that speaks only TLS: answers `proto=<x-forwarded-proto>
/// len=<request body bytes>`.
async fn tls_node(cert: &Path, key: &Path) -> SocketAddr {
    let certs: Vec<_> = rustls_pki_types::pem::PemObject::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<rustls_pki_types::CertificateDer<'static>>, _>>()
        .unwrap();
    let key: rustls_pki_types::PrivateKeyDer<'static> =
        rustls_pki_types::pem::PemObject::from_pem_file(key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    // A small receive buffer (inherited by accepted sockets), so the
    // gateway's TLS writes meet a full socket and wait for room.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(64).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(|req: Request<Incoming>| async move {
                    let proto = req
                        .headers()
                        .get("x-forwarded-proto")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_string();
                    let len = match req.into_body().collect().await {
                        Ok(body) => body.to_bytes().len() as i64,
                        Err(_) => -1,
                    };
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                        "proto={proto} len={len}"
                    )))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_nodes_and_their_health_checks() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("node");
    let node = tls_node(&cert, &key).await;
    let (gw_cert, gw_key) = pki.leaf("gw");
    let text = format!(
        "[listener]\naddr = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"{}\"\nkey = \"{}\"\n\n\
         [[pools]]\nname = \"p\"\n[[pools.nodes]]\nname = \"n0\"\naddr = \"https://127.0.0.1:{}\"\n\
         [pools.tls]\nca = \"{}\"\n\
         [pools.health]\ninterval = \"1s\"\ntimeout = \"900ms\"\npath = \"/health\"\n\n\
         [[routes]]\nname = \"any\"\npool = \"p\"\n",
        gw_cert.display(),
        gw_key.display(),
        node.port(),
        pki.ca_path().display()
    );
    let gw = start_gateway(&text).await;
    let client = https_client(&trusting(&pki), false);
    let request = Request::get(format!("https://127.0.0.1:{}/anything", gw.addr.port()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "proto=https len=0", "the node saw the client's TLS");

    // Large bodies reach a TLS node whole: streamed (a path the gateway
    // does not read) and buffered (an inference request, written after
    // its head as more TLS records than one write takes).
    let big = "x".repeat(2 * 1024 * 1024);
    let chat = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "y".repeat(1024 * 1024)
    );
    for (path, body) in [("/anything", big), ("/v1/chat/completions", chat)] {
        let len = body.len();
        let request = Request::post(format!("https://127.0.0.1:{}{path}", gw.addr.port()))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        // A request stuck in TLS's buffer never gets its answer.
        let exchange = async {
            let response = client.request(request).await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
            response.into_body().collect().await.unwrap().to_bytes()
        };
        let answer = tokio::time::timeout(Duration::from_secs(20), exchange)
            .await
            .unwrap_or_else(|_| panic!("{path}: no answer; the body did not reach the node whole"));
        assert_eq!(answer, format!("proto=https len={len}"), "{path}");
    }

    // Checks go over TLS too, and pass.
    let table = gw.gateway.table();
    let health = &table.pools[0].nodes[0].load.health;
    assert!(
        eventually(Duration::from_secs(3), || health
            .status(now_ms())
            .last_check
            .is_some_and(|c| c.ok))
        .await,
        "{:?}",
        health.status(now_ms()).last_check
    );
}

#[tokio::test]
async fn a_bad_certificate_is_refused_with_the_field_named() {
    let pki = Pki::new();
    let nodes = start_nodes(1, &fast_sim()).await;
    let missing = pki.dir.join("missing.crt");
    let text = with_listener_tls(
        &config_text(&unweighted(&nodes), "round_robin", ""),
        &missing,
        &missing,
        None,
    );
    let error = infergate::config::Config::from_toml(&text)
        .unwrap_err()
        .to_string();
    assert!(error.contains("listener.tls.cert"), "{error}");
}

#[tokio::test]
async fn the_admin_listener_speaks_tls() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("admin");
    let nodes = start_nodes(1, &fast_sim()).await;
    let gw = start_gateway(&config_text(&unweighted(&nodes), "round_robin", "")).await;
    let admin = infergate::admin::start(
        Arc::clone(&gw.gateway),
        &infergate::admin::AdminConfig {
            tls: Some(infergate::tls::ServerTls {
                cert,
                key,
                client_ca: None,
            }),
            ..infergate::admin::AdminConfig::default()
        },
        Some("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .expect("admin over TLS");
    let client = https_client(&trusting(&pki), false);
    let request = Request::get(format!("https://127.0.0.1:{}/metrics", admin.addr.port()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_tls_client_that_stops_reading_is_let_go_after_the_send_timeout() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("gw");
    let node = endless_stream_node().await;
    let text = with_listener_tls(
        &with_send_timeout(&config_text(&[(node, 1)], "round_robin", ""), "300ms"),
        &cert,
        &key,
        None,
    );
    let gw = start_gateway(&text).await;
    let connector = tokio_rustls::TlsConnector::from(client_config(&trusting(&pki)).unwrap());
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    assert_a_client_that_stops_reading_is_let_go(tls, &gw).await;
}
