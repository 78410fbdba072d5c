//! A small HTTP client for the commands that talk to a running gateway
//! (`ctl`, `check --gateway`): one request at a time, whole bodies, a
//! deadline on each.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A complete response.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| {
            format!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(200)])
            )
        })
    }

    /// The message of an API error body, else the body text.
    pub fn error_message(&self) -> String {
        match self.json() {
            Ok(v) => {
                let error = &v["error"];
                let mut text = error["message"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string());
                if let Some(fields) = error["errors"].as_array() {
                    if !fields.is_empty() && !text.contains('\n') {
                        for f in fields {
                            text.push_str(&format!(
                                "\n  {}: {}",
                                f["path"].as_str().unwrap_or("?"),
                                f["message"].as_str().unwrap_or("?")
                            ));
                        }
                    }
                }
                text
            }
            Err(_) => String::from_utf8_lossy(&self.body).trim().to_string(),
        }
    }
}

/// A client for one base URL (`http://host:port`).
#[derive(Clone)]
pub struct Http {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
    headers: HeaderMap,
}

impl Http {
    /// A client for `base`; `http://` is assumed when no scheme is given.
    pub fn new(base: &str, timeout: Duration) -> Result<Http, String> {
        let base = if base.contains("://") {
            base.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", base.trim_end_matches('/'))
        };
        if !base.starts_with("http://") {
            return Err(format!("{base}: only http:// is supported"));
        }
        base.parse::<Uri>()
            .map_err(|e| format!("{base} is not a URL: {e}"))?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        Ok(Http {
            base,
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
            headers: HeaderMap::new(),
        })
    }

    /// Send `name: value` with every request.
    pub fn with_header(mut self, name: &'static str, value: &str) -> Result<Http, String> {
        let value = value
            .parse()
            .map_err(|_| format!("{name}: not a valid header value"))?;
        self.headers.insert(name, value);
        Ok(self)
    }

    /// One request; `headers` are added to the client's own.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: impl Into<Bytes>,
    ) -> Result<Reply, String> {
        let url = format!("{}{path}", self.base);
        let mut request = Request::builder().method(method).uri(&url);
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(Full::new(body.into()))
            .map_err(|e| format!("{url}: {e}"))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("{url}: {}", cause(&e)))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("{url}: reading the body: {e}"))?
                .to_bytes();
            Ok(Reply {
                status: parts.status,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("{url}: no answer within {:?}", self.timeout))?
    }

    /// GET `path`, expecting 200 and JSON.
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value, String> {
        let reply = self.send(Method::GET, path, &[], Bytes::new()).await?;
        if reply.status != StatusCode::OK {
            return Err(format!(
                "GET {path}: {} {}",
                reply.status,
                reply.error_message()
            ));
        }
        reply.json()
    }

    /// GET `path` as text, expecting 200.
    pub async fn get_text(&self, path: &str) -> Result<String, String> {
        let reply = self.send(Method::GET, path, &[], Bytes::new()).await?;
        if reply.status != StatusCode::OK {
            return Err(format!("GET {path}: {}", reply.status));
        }
        Ok(String::from_utf8_lossy(&reply.body).into_owned())
    }
}

/// The innermost error, which names what actually went wrong (e.g.
/// "Connection refused").
fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    if std::ptr::eq(inner, e) {
        e.to_string()
    } else {
        format!("{e}: {inner}")
    }
}
