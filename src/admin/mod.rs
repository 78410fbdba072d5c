//! The admin listener: Prometheus `/metrics`, the JSON API, the live
//! dashboard with its configuration console, and the config API
//! ([`config_api`]) that changes the running config.
//!
//! Security (`docs/security.md`): bound to loopback by default. Binding to
//! any other address needs a token (`admin.token` or
//! `INFERGATE_ADMIN_TOKEN`); every non-GET request must then carry
//! `Authorization: Bearer <token>` (scheme in any case; without a token
//! configured, non-GET requests are refused). Off loopback, reads need the
//! token too (header, or the dashboard's [`READ_COOKIE`]) unless
//! `admin.open_reads = true`. Every request's `Host` must be one of the
//! listener's names and a change's `Origin` its own ([`hosts`]), against
//! DNS rebinding. The token is never logged and is redacted from the
//! config's `Debug` output.

pub mod config_api;
pub mod hosts;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::proxy::Gateway;
use crate::telemetry::prom;

/// Environment variable that supplies the token when the config has none.
pub const TOKEN_ENV: &str = "INFERGATE_ADMIN_TOKEN";

/// `[admin]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Run the admin listener.
    pub enabled: bool,
    /// Address to listen on.
    pub addr: String,
    /// Bearer token for changes; required off loopback.
    pub token: Option<String>,
    /// Whether reads (dashboard data, API, metrics) are open without the
    /// token. Absent: open on a loopback address, token required anywhere
    /// else. Set `true` to let e.g. an unauthenticated Prometheus scrape a
    /// non-loopback listener.
    pub open_reads: Option<bool>,
    /// Time a client has to send complete request headers.
    #[serde(deserialize_with = "crate::config::duration::deserialize")]
    pub header_timeout: Duration,
    /// Append every config change attempt to this file as a JSON line
    /// (absent: the audit log lives in memory and the log only).
    pub audit_file: Option<std::path::PathBuf>,
    /// More names the listener answers to in `Host` (and `Origin`), besides
    /// its own address (and `localhost` on loopback): `name` for any port,
    /// `name:port` for one; `"*"` turns the check off. See [`hosts`].
    pub allowed_hosts: Vec<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            addr: "127.0.0.1:9090".into(),
            token: None,
            open_reads: None,
            header_timeout: Duration::from_secs(10),
            audit_file: None,
            allowed_hosts: Vec::new(),
        }
    }
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("enabled", &self.enabled)
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("open_reads", &self.open_reads)
            .field("header_timeout", &self.header_timeout)
            .field("audit_file", &self.audit_file)
            .field("allowed_hosts", &self.allowed_hosts)
            .finish()
    }
}

impl AdminConfig {
    /// Every problem, as (field path, message) under `admin.`.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, message: String| {
            problems.push((format!("admin.{field}"), message));
        };
        if self.addr.parse::<SocketAddr>().is_err() {
            problem("addr", format!("`{}` is not IP:port", self.addr));
        }
        if self.token.as_ref().is_some_and(|t| t.trim().is_empty()) {
            problem("token", "must not be empty".into());
        }
        if self.token.as_deref() == Some(crate::console::redact::PLACEHOLDER) {
            problem(
                "token",
                "is the redaction placeholder: send the real token, or leave the line as it was read".into(),
            );
        }
        if self.header_timeout.is_zero() {
            problem("header_timeout", "must be more than 0s".into());
        }
        for (i, entry) in self.allowed_hosts.iter().enumerate() {
            if entry.trim() != "*" && hosts::parse_entry(entry).is_none() {
                problem(
                    &format!("allowed_hosts[{i}]"),
                    format!(
                        "`{}` is not a host name or IP address with an optional port (e.g. \"admin.example.com\", \"gw-1:9090\", or \"*\" for any)",
                        entry.escape_debug()
                    ),
                );
            }
        }
        problems
    }

    /// The token from the config, else from [`TOKEN_ENV`].
    pub fn effective_token(&self) -> Option<String> {
        self.token.clone().or_else(|| {
            std::env::var(TOKEN_ENV)
                .ok()
                .filter(|t| !t.trim().is_empty())
        })
    }
}

/// Refuse a non-loopback bind without a token.
pub fn check_exposure(addr: SocketAddr, token: Option<&str>) -> Result<(), String> {
    if addr.ip().is_loopback() || token.is_some() {
        Ok(())
    } else {
        Err(format!(
            "refusing to start the admin listener on {addr}: it is not a loopback address and no token is set \
             (set admin.token or {TOKEN_ENV}, or bind admin.addr to 127.0.0.1)"
        ))
    }
}

struct AdminState {
    gateway: Arc<Gateway>,
    token: Option<String>,
    /// Where config changes go; `None` when the gateway has no config file
    /// (the config API then answers 501).
    store: Option<Arc<crate::console::ConfigStore>>,
    /// Reads need the token too (non-loopback listener by default).
    reads_need_token: bool,
    /// Names the listener answers to (`Host`, `Origin`).
    hosts: hosts::AllowedHosts,
}

/// The cookie the dashboard sets (from the token the user typed) so its
/// event stream, which cannot send headers, can read a listener whose
/// reads need the token. Accepted for reads only: changes always need the
/// `Authorization` header, which a browser never adds by itself, so a
/// forged cross-site request cannot change anything.
pub const READ_COOKIE: &str = "infergate_token";

/// Paths served without the token even when reads need it: the page and
/// its scripts, which hold no data and ask for the token.
const PUBLIC_ASSETS: [&str; 4] = ["/", "/app.js", "/app.css", "/console.js"];

/// A running admin listener.
pub struct AdminServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// Stop it and wait (open SSE streams are cut).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Start the admin listener for `gateway` on `config.addr` (`addr` given
/// overrides it, e.g. a free port for the demo), without the config API.
pub async fn start(
    gateway: Arc<Gateway>,
    config: &AdminConfig,
    addr: Option<SocketAddr>,
) -> Result<AdminServer, String> {
    serve(gateway, None, config, addr).await
}

/// Start the admin listener with the config API and console writing
/// through `store`.
pub async fn start_with_store(
    store: Arc<crate::console::ConfigStore>,
    config: &AdminConfig,
    addr: Option<SocketAddr>,
) -> Result<AdminServer, String> {
    serve(Arc::clone(store.gateway()), Some(store), config, addr).await
}

async fn serve(
    gateway: Arc<Gateway>,
    store: Option<Arc<crate::console::ConfigStore>>,
    config: &AdminConfig,
    addr: Option<SocketAddr>,
) -> Result<AdminServer, String> {
    let addr = match addr {
        Some(a) => a,
        None => config
            .addr
            .parse()
            .map_err(|_| format!("admin.addr `{}` is not IP:port", config.addr))?,
    };
    let token = config.effective_token();
    check_exposure(addr, token.as_deref())?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} (admin): {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("admin listener: {e}"))?;
    tracing::info!(addr = %local, token = if token.is_some() { "set" } else { "none" }, "admin listener started");
    let reads_need_token = !config.open_reads.unwrap_or(addr.ip().is_loopback());
    let app = router(Arc::new(AdminState {
        gateway,
        token,
        store,
        reads_need_token,
        hosts: hosts::AllowedHosts::new(local, &config.allowed_hosts),
    }));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(accept_loop(listener, app, config.header_timeout, stopped));
    Ok(AdminServer {
        addr: local,
        stop: Some(stop),
        task: Some(task),
    })
}

/// Most admin connections open at once; more wait in the accept backlog.
const MAX_CONNECTIONS: usize = 256;
/// How long open connections (e.g. dashboards' event streams) get to
/// finish when the listener stops.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Serve admin connections until `stopped`: a bounded number at once, each
/// with a header read timeout, so a slow or stalled client cannot hold the
/// listener (axum's own `serve` has neither).
async fn accept_loop(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    stopped: oneshot::Receiver<()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new());
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    tokio::pin!(stopped);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = &mut stopped => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = &mut stopped => break,
        };
        // The config API names who changed what by the caller's address.
        let service = TowerToHyperService::new(
            app.clone()
                .layer(axum::Extension(axum::extract::ConnectInfo(peer))),
        );
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(STOP_GRACE, graceful.shutdown()).await;
}

fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/console.js", get(console_js))
        .route("/app.css", get(app_css))
        .route("/metrics", get(metrics))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/series", get(series))
        .route("/api/v1/events", get(events))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/config/status", get(config_status))
        .merge(config_api::routes())
        .layer(middleware::from_fn_with_state(Arc::clone(&state), auth))
        // Outermost: a foreign Host or Origin is refused before anything.
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            check_host,
        ))
        .with_state(state)
}

/// Constant-time comparison, so the token cannot be guessed byte by byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token from a `Cookie` header's [`READ_COOKIE`].
fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == READ_COOKIE)
        .map(|(_, value)| value)
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is
/// case-insensitive (RFC 9110 §11.1), so `bearer` works too.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Refuse requests whose `Host` or `Origin` is not this listener's.
async fn check_host(
    State(state): State<Arc<AdminState>>,
    request: Request,
    next: Next,
) -> Response {
    match state
        .hosts
        .check(request.method(), request.uri(), request.headers())
    {
        Some(refused) => refused,
        None => next.run(request).await,
    }
}

async fn auth(State(state): State<Arc<AdminState>>, request: Request, next: Next) -> Response {
    let read = matches!(*request.method(), Method::GET | Method::HEAD);
    if read && (!state.reads_need_token || PUBLIC_ASSETS.contains(&request.uri().path())) {
        return next.run(request).await;
    }
    let Some(token) = &state.token else {
        return (
            StatusCode::FORBIDDEN,
            "mutating admin requests need admin.token (or INFERGATE_ADMIN_TOKEN)\n",
        )
            .into_response();
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .or_else(|| read.then(|| cookie_token(request.headers())).flatten());
    if given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
        next.run(request).await
    } else {
        tracing::warn!(method = %request.method(), path = %request.uri().path(), "admin request refused: missing or wrong bearer token");
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "missing or wrong bearer token\n",
        )
            .into_response()
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The running config's generation, version and whether the last reload
/// was refused.
async fn config_status(State(state): State<Arc<AdminState>>) -> Response {
    let mut status =
        serde_json::to_value(state.gateway.config_status()).unwrap_or(serde_json::Value::Null);
    if let (Some(store), Some(map)) = (&state.store, status.as_object_mut()) {
        map.insert(
            "config_version".into(),
            store.current().version.clone().into(),
        );
    }
    axum::Json(status).into_response()
}

async fn index() -> Response {
    asset(
        "text/html; charset=utf-8",
        include_str!("assets/index.html"),
    )
}

async fn app_js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    )
}

async fn console_js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/console.js"),
    )
}

async fn app_css() -> Response {
    asset("text/css; charset=utf-8", include_str!("assets/app.css"))
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    let table = state.gateway.table();
    let text = prom::render(&state.gateway.telemetry, &table);
    ([(header::CONTENT_TYPE, prom::CONTENT_TYPE)], text).into_response()
}

fn json(value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn nodes(State(state): State<Arc<AdminState>>) -> Response {
    json(&*state.gateway.telemetry.window.snapshot())
}

#[derive(Deserialize)]
struct WindowQuery {
    /// Seconds (default 300, at most 900).
    window: Option<String>,
}

async fn series(State(state): State<Arc<AdminState>>, Query(q): Query<WindowQuery>) -> Response {
    let seconds = match q.window.as_deref() {
        None => 300,
        Some(w) => match crate::config::duration::parse(w)
            .map(|d| d.as_secs() as usize)
            .or_else(|_| w.parse::<usize>())
        {
            Ok(s) => s.clamp(1, crate::telemetry::window::WINDOW_POINTS),
            Err(_) => {
                return (
                    StatusCode::BAD_REQUEST,
                    "window: seconds (e.g. 300) or a duration (e.g. 5m)\n",
                )
                    .into_response()
            }
        },
    };
    json(&state.gateway.telemetry.window.series(seconds))
}

async fn alerts(State(state): State<Arc<AdminState>>) -> Response {
    let a = &state.gateway.telemetry.alerts;
    let rules: Vec<serde_json::Value> = a
        .rules()
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name, "kind": r.kind, "pool": r.pool, "threshold": r.threshold,
                "resolve_threshold": r.resolve_threshold.unwrap_or(r.threshold),
                "for_s": r.for_.as_secs_f64(), "resolve_for_s": r.resolve_for.as_secs_f64(),
                "repeat_interval_s": r.repeat_interval.as_secs_f64(), "severity": r.severity,
            })
        })
        .collect();
    json(&serde_json::json!({
        "active": a.active(),
        "history": a.history(usize::MAX),
        "rules": rules,
    }))
}

async fn events(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    let _ = headers;
    let rx = state.gateway.telemetry.window.subscribe();
    let stream = futures_util::stream::unfold((rx, true), |(mut rx, first)| async move {
        if !first && rx.changed().await.is_err() {
            return None;
        }
        let snapshot = std::sync::Arc::clone(&rx.borrow_and_update());
        let event = Event::default()
            .event("snapshot")
            .json_data(&*snapshot)
            .unwrap_or_else(|_| Event::default().comment("encode error"));
        Some((Ok::<_, std::convert::Infallible>(event), (rx, false)))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposure_rules() {
        let lo: SocketAddr = "127.0.0.1:9090".parse().unwrap();
        let lo6: SocketAddr = "[::1]:9090".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:9090".parse().unwrap();
        assert!(check_exposure(lo, None).is_ok());
        assert!(check_exposure(lo6, None).is_ok());
        let err = check_exposure(any, None).unwrap_err();
        assert!(err.contains("not a loopback address"), "{err}");
        assert!(check_exposure(any, Some("t")).is_ok());
    }

    #[test]
    fn debug_redacts_the_token() {
        let c = AdminConfig {
            token: Some("s3cret-value".into()),
            ..AdminConfig::default()
        };
        let text = format!("{c:?}");
        assert!(!text.contains("s3cret-value"));
        assert!(text.contains("redacted"));
    }

    #[test]
    fn bearer_scheme_in_any_case() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER   abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }

    #[test]
    fn problems_name_the_field() {
        let c = AdminConfig {
            addr: "nowhere".into(),
            token: Some(" ".into()),
            header_timeout: Duration::ZERO,
            allowed_hosts: vec!["ok.example".into(), "http://bad/".into(), "*".into()],
            ..AdminConfig::default()
        };
        let fields: Vec<String> = c.problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "admin.addr",
                "admin.token",
                "admin.header_timeout",
                "admin.allowed_hosts[1]"
            ]
        );
        assert!(AdminConfig::default().problems().is_empty());
    }

    #[test]
    fn constant_time_compare() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }
}
