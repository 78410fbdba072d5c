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

use crate::proxy::deadline::{Activity, DeadlineIo, Tracked};
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
    /// Time a connection may stay open with no request in flight.
    #[serde(deserialize_with = "crate::config::duration::deserialize")]
    pub idle_timeout: Duration,
    /// Serve the admin listener over TLS (`[admin.tls]`: cert, key,
    /// optional client_ca), like `[listener.tls]`.
    pub tls: Option<crate::tls::ServerTls>,
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
            idle_timeout: Duration::from_secs(60),
            tls: None,
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
            .field("idle_timeout", &self.idle_timeout)
            .field("tls", &self.tls)
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
        if self.idle_timeout.is_zero() {
            problem("idle_timeout", "must be more than 0s".into());
        }
        if let Some(tls) = &self.tls {
            for e in tls.validate("tls") {
                problem(&e.path, e.message);
            }
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
    /// Event streams (`/api/v1/events`) open at once are capped apart from
    /// the connection limit, so dashboards cannot starve the API.
    event_streams: Arc<tokio::sync::Semaphore>,
}

/// The cookie the dashboard sets (from the token the user typed) so its
/// event stream, which cannot send headers, can read a listener whose
/// reads need the token. Accepted for reads only: changes always need the
/// `Authorization` header, which a browser never adds by itself, so a
/// forged cross-site request cannot change anything.
pub const READ_COOKIE: &str = "infergate_token";

/// Paths served without the token even when reads need it: the page and
/// its scripts, which hold no data and ask for the token.
const PUBLIC_ASSETS: [&str; 6] = [
    "/",
    "/app.js",
    "/app.css",
    "/console.js",
    LIVEZ_PATH,
    READYZ_PATH,
];

/// Liveness probe path: 200 while the admin listener answers (the
/// process is not wedged). Open without the token, like the assets: a
/// kubelet probe carries none, and the answer says nothing secret.
pub const LIVEZ_PATH: &str = "/livez";

/// Readiness probe path: 200 once the config is loaded and some pool has
/// a node (a pool fed by discovery starts empty), else 503.
pub const READYZ_PATH: &str = "/readyz";

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
        event_streams: Arc::new(tokio::sync::Semaphore::new(MAX_EVENT_STREAMS)),
    }));
    let tls = match &config.tls {
        Some(tls) => {
            let (server, cert) = crate::tls::server_config(tls, true)?;
            Some((tokio_rustls::TlsAcceptor::from(server), cert))
        }
        None => None,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let limits = ConnectionLimits {
        header_timeout: config.header_timeout,
        idle_timeout: config.idle_timeout,
    };
    let task = tokio::spawn(accept_loop(listener, app, limits, tls, stopped));
    Ok(AdminServer {
        addr: local,
        stop: Some(stop),
        task: Some(task),
    })
}

/// Most admin connections open at once; more wait in the accept backlog.
const MAX_CONNECTIONS: usize = 256;
/// Most `/api/v1/events` streams open at once (a quarter of the
/// connections: the rest stay for the API, metrics and the console).
const MAX_EVENT_STREAMS: usize = 64;

/// Deadlines of admin connections (see `proxy::deadline`).
#[derive(Debug, Clone, Copy)]
struct ConnectionLimits {
    header_timeout: Duration,
    idle_timeout: Duration,
}
/// How long open connections (e.g. dashboards' event streams) get to
/// finish when the listener stops.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Serve admin connections until `stopped`: a bounded number at once,
/// each with a deadline for its first request, an idle timeout and a
/// header read timeout, over TLS when configured, so a slow, silent or
/// stalled client cannot hold the listener (axum's own `serve` has none).
async fn accept_loop(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    tls: Option<(tokio_rustls::TlsAcceptor, Arc<crate::tls::ReloadingCert>)>,
    stopped: oneshot::Receiver<()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    use hyper_util::server::conn::auto;
    use hyper_util::server::graceful::GracefulShutdown;

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    let mut next_reload = tokio::time::Instant::now() + crate::tls::RELOAD_EVERY;
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
        if let Some((_, cert)) = &tls {
            // Renewed certificate files take over for new handshakes.
            if tokio::time::Instant::now() >= next_reload {
                cert.reload_if_changed();
                next_reload = tokio::time::Instant::now() + crate::tls::RELOAD_EVERY;
            }
        }
        let activity = Arc::new(Activity::default());
        let io = DeadlineIo::new(
            stream,
            Arc::clone(&activity),
            limits.header_timeout,
            limits.idle_timeout,
        );
        let acceptor = tls.as_ref().map(|(acceptor, _)| acceptor.clone());
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            match acceptor {
                None => serve_admin(io, peer, activity, app, builder, watcher).await,
                Some(acceptor) => match acceptor.accept(io).await {
                    Ok(io) => serve_admin(io, peer, activity, app, builder, watcher).await,
                    Err(e) => tracing::debug!(error = %e, %peer, "admin TLS handshake failed"),
                },
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(STOP_GRACE, graceful.shutdown()).await;
}

/// One admin connection: every request is counted in flight until its
/// response body ends (an event stream for as long as it lasts).
async fn serve_admin<I>(
    io: I,
    peer: SocketAddr,
    activity: Arc<Activity>,
    app: Router,
    builder: hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tower::ServiceExt as _;
    // The config API names who changed what by the caller's address.
    let app = app.layer(axum::Extension(axum::extract::ConnectInfo(peer)));
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let guard = activity.begin();
        let app = app.clone();
        async move {
            let response = app
                .oneshot(req.map(axum::body::Body::new))
                .await
                .unwrap_or_else(|never| match never {});
            Ok::<_, std::convert::Infallible>(
                response.map(|body| axum::body::Body::new(Tracked::new(body, guard))),
            )
        }
    });
    let connection = builder
        .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), service)
        .into_owned();
    let _ = watcher.watch(connection).await;
}

fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/console.js", get(console_js))
        .route("/app.css", get(app_css))
        .route("/metrics", get(metrics))
        .route(LIVEZ_PATH, get(livez))
        .route(READYZ_PATH, get(readyz))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/series", get(series))
        .route("/api/v1/events", get(events))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/energy", get(energy))
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

async fn livez() -> Response {
    ([(header::CACHE_CONTROL, "no-store")], "ok\n").into_response()
}

async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    let nodes = state.gateway.known_nodes();
    if nodes > 0 {
        (
            [(header::CACHE_CONTROL, "no-store")],
            format!("ok: {nodes} nodes known\n"),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CACHE_CONTROL, "no-store")],
            "not ready: no pool has a node yet (discovery has found none)\n",
        )
            .into_response()
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    let table = state.gateway.table();
    let text = prom::render(&state.gateway.telemetry, &table.fleet_view());
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

/// Energy figures of every pool with `[pools.energy]` (`crate::energy`).
async fn energy(State(state): State<Arc<AdminState>>) -> Response {
    let table = state.gateway.table();
    let pools: Vec<_> = table.energy.iter().map(|h| h.state.summary()).collect();
    json(&serde_json::json!({ "pools": pools }))
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
    let Ok(slot) = Arc::clone(&state.event_streams).try_acquire_owned() else {
        let mut response = (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many event streams are open; retry later",
        )
            .into_response();
        response.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("5"),
        );
        return response;
    };
    let rx = state.gateway.telemetry.window.subscribe();
    // The slot rides with the stream and is freed when it ends.
    let stream =
        futures_util::stream::unfold((rx, true, slot), |(mut rx, first, slot)| async move {
            if !first && rx.changed().await.is_err() {
                return None;
            }
            let snapshot = std::sync::Arc::clone(&rx.borrow_and_update());
            let event = Event::default()
                .event("snapshot")
                .json_data(&*snapshot)
                .unwrap_or_else(|_| Event::default().comment("encode error"));
            Some((Ok::<_, std::convert::Infallible>(event), (rx, false, slot)))
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
