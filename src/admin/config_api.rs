//! The config API: read the running config and change it through the
//! [`ConfigStore`] (validated like the file, applied atomically, persisted,
//! audited). Every change needs `If-Match: <version>` (or `*`); a stale
//! version gets 409. Errors are JSON: `{"error": {"type", "message",
//! "errors": [{"path", "message"}], "current_version"}}`.
//!
//! Routes (all under `/api/v1/config`):
//!
//! | method | path | does |
//! |---|---|---|
//! | GET | `` | running config: version, generation, TOML text, JSON view |
//! | PUT | `` | replace the whole file (TOML body) |
//! | PATCH | `` | JSON merge patch of the whole document |
//! | GET | `/audit` | the audit log, newest first (`?limit=`) |
//! | POST | `/pools`, `/routes`, `/alerts/rules`, `/pools/{pool}/nodes` | create an entry (JSON) |
//! | PATCH, DELETE | `/pools/{pool}`, `/routes/{route}`, `/alerts/rules/{rule}`, `/pools/{pool}/nodes/{node}` | change (merge patch) or remove it |
//! | POST | `/pools/{pool}/nodes/{node}/drain`, `/enable` | drain or put back a node |
//! | PUT | `/pools/{pool}/nodes/{node}/weight` | set a node's weight (`{"weight": N}`) |
//!
//! `?dry_run=true` on any change validates it and returns the diff without
//! applying it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value as Json};

use super::AdminState;
use crate::console::{Change, ChangeError, Collection, ConfigStore, Edit};

/// Header naming who makes a change, for the audit log.
pub const ACTOR_HEADER: &str = "x-infergate-actor";

pub(super) fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route(
            "/api/v1/config",
            get(read_config).put(replace_config).patch(merge_config),
        )
        .route("/api/v1/config/audit", get(audit))
        .route("/api/v1/config/pools", post(create_pool))
        .route(
            "/api/v1/config/pools/{pool}",
            axum::routing::patch(patch_pool).delete(delete_pool),
        )
        .route("/api/v1/config/pools/{pool}/nodes", post(create_node))
        .route(
            "/api/v1/config/pools/{pool}/nodes/{node}",
            axum::routing::patch(patch_node).delete(delete_node),
        )
        .route(
            "/api/v1/config/pools/{pool}/nodes/{node}/drain",
            post(drain_node),
        )
        .route(
            "/api/v1/config/pools/{pool}/nodes/{node}/enable",
            post(enable_node),
        )
        .route(
            "/api/v1/config/pools/{pool}/nodes/{node}/weight",
            put(weight_node),
        )
        .route("/api/v1/config/routes", post(create_route))
        .route(
            "/api/v1/config/routes/{route}",
            axum::routing::patch(patch_route).delete(delete_route),
        )
        .route("/api/v1/config/alerts/rules", post(create_rule))
        .route(
            "/api/v1/config/alerts/rules/{rule}",
            axum::routing::patch(patch_rule).delete(delete_rule),
        )
}

/// What every change handler gets.
struct Ask {
    store: Arc<ConfigStore>,
    actor: String,
    if_match: Option<String>,
    dry_run: bool,
}

#[derive(Deserialize, Default)]
struct ChangeQuery {
    dry_run: Option<bool>,
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({"error": {"type": kind, "message": message}});
    (status, axum::Json(body)).into_response()
}

fn no_store() -> Response {
    error(
        StatusCode::NOT_IMPLEMENTED,
        "no_config_store",
        "this gateway was started without a config file, so its config cannot be changed here",
    )
}

/// Who is asking: the caller's own name for itself (sanitized, bounded)
/// and where the request came from. The token is never part of it.
fn actor(headers: &HeaderMap, peer: Option<SocketAddr>) -> String {
    let name: String = headers
        .get(ACTOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect();
    let name = if name.trim().is_empty() {
        "token holder".to_string()
    } else {
        name.trim().to_string()
    };
    match peer {
        Some(p) => format!("{name} ({})", p.ip()),
        None => name,
    }
}

fn ask(
    state: &AdminState,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    query: &ChangeQuery,
) -> Result<Ask, Box<Response>> {
    let store = state.store.clone().ok_or_else(|| Box::new(no_store()))?;
    Ok(Ask {
        store,
        actor: actor(headers, peer),
        if_match: headers
            .get(header::IF_MATCH)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        dry_run: query.dry_run.unwrap_or(false),
    })
}

async fn run(ask: Ask, action: String, edit: Edit) -> Response {
    let change = Change {
        actor: ask.actor,
        action,
        if_match: ask.if_match,
        edit,
        dry_run: ask.dry_run,
    };
    match ask.store.change(change).await {
        Ok(applied) => {
            let etag = format!("\"{}\"", applied.version);
            (
                [(header::ETAG, etag)],
                axum::Json(serde_json::to_value(&applied).unwrap_or(Json::Null)),
            )
                .into_response()
        }
        Err(e) => change_error(&e),
    }
}

fn change_error(e: &ChangeError) -> Response {
    let message = e.to_string();
    match e {
        ChangeError::VersionRequired => error(
            StatusCode::PRECONDITION_REQUIRED,
            "version_required",
            &message,
        ),
        ChangeError::Conflict { current, .. } => {
            let body = json!({"error": {"type": "conflict", "message": message, "current_version": current}});
            (
                StatusCode::CONFLICT,
                [(header::ETAG, format!("\"{current}\""))],
                axum::Json(body),
            )
                .into_response()
        }
        ChangeError::NotFound(m) => error(StatusCode::NOT_FOUND, "not_found", m),
        ChangeError::Invalid { errors, .. } => {
            let errors: Vec<Json> = errors
                .iter()
                .map(|e| json!({"path": e.path, "message": e.message}))
                .collect();
            let body = json!({"error": {"type": "invalid", "message": message, "errors": errors}});
            (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
        }
        ChangeError::Persist(m) => error(StatusCode::INTERNAL_SERVER_ERROR, "persist_failed", m),
    }
}

fn parse_json(body: &Bytes) -> Result<Json, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid",
            &format!("the body is not JSON: {e}"),
        ))
    })
}

async fn read_config(State(state): State<Arc<AdminState>>) -> Response {
    let Some(store) = &state.store else {
        return no_store();
    };
    let current = store.current();
    let view: Json = toml::from_str::<toml::Value>(&current.text)
        .ok()
        .and_then(|v| serde_json::to_value(v).ok())
        .unwrap_or(Json::Null);
    let status = store.gateway().config_status();
    let body = json!({
        "version": current.version,
        "generation": current.generation,
        "path": current.path,
        "persisted": current.path.is_some(),
        "last_error": status.last_error,
        "text": current.text,
        "config": view,
    });
    (
        [(header::ETAG, format!("\"{}\"", current.version))],
        axum::Json(body),
    )
        .into_response()
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
}

async fn audit(State(state): State<Arc<AdminState>>, Query(q): Query<AuditQuery>) -> Response {
    let Some(store) = &state.store else {
        return no_store();
    };
    axum::Json(json!({"entries": store.audit.latest(q.limit.unwrap_or(100))})).into_response()
}

type Peer = ConnectInfo<SocketAddr>;

macro_rules! prelude {
    ($state:expr, $headers:expr, $peer:expr, $query:expr) => {
        match ask(&$state, &$headers, Some($peer.0), &$query) {
            Ok(a) => a,
            Err(r) => return *r,
        }
    };
}

async fn replace_config(
    State(state): State<Arc<AdminState>>,
    peer: Peer,
    Query(q): Query<ChangeQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let a = prelude!(state, headers, peer, q);
    let Ok(text) = String::from_utf8(body.to_vec()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid",
            "the body is not UTF-8 text",
        );
    };
    // An empty file is a valid config that serves nothing: far more often
    // a request sent without its body than a wish to stop serving.
    if text.trim().is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid",
            "the body is empty: send the whole config file as TOML",
        );
    }
    run(a, "PUT config (whole file)".into(), Edit::Replace(text)).await
}

async fn merge_config(
    State(state): State<Arc<AdminState>>,
    peer: Peer,
    Query(q): Query<ChangeQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let a = prelude!(state, headers, peer, q);
    let patch = match parse_json(&body) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    run(
        a,
        format!("PATCH config {}", brief(&patch)),
        Edit::Merge(patch),
    )
    .await
}

/// A short rendering of a JSON body for the audit line.
fn brief(value: &Json) -> String {
    let mut text = value.to_string();
    if text.len() > 200 {
        let mut cut = 200;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

async fn create_in(
    state: Arc<AdminState>,
    peer: Peer,
    q: ChangeQuery,
    headers: HeaderMap,
    body: Bytes,
    collection: Collection,
    where_: String,
) -> Response {
    let a = prelude!(state, headers, peer, q);
    let entry = match parse_json(&body) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let name = entry
        .get("name")
        .and_then(Json::as_str)
        .unwrap_or("?")
        .to_string();
    run(
        a,
        format!("create {} {where_}{name}", collection.noun()),
        Edit::Create(collection, entry),
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn patch_in(
    state: Arc<AdminState>,
    peer: Peer,
    q: ChangeQuery,
    headers: HeaderMap,
    body: Bytes,
    collection: Collection,
    label: String,
    name: String,
) -> Response {
    let a = prelude!(state, headers, peer, q);
    let changes = match parse_json(&body) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    run(
        a,
        format!("update {} {label} {}", collection.noun(), brief(&changes)),
        Edit::Patch(collection, name, changes),
    )
    .await
}

async fn delete_in(
    state: Arc<AdminState>,
    peer: Peer,
    q: ChangeQuery,
    headers: HeaderMap,
    collection: Collection,
    label: String,
    name: String,
) -> Response {
    let a = prelude!(state, headers, peer, q);
    run(
        a,
        format!("delete {} {label}", collection.noun()),
        Edit::Delete(collection, name),
    )
    .await
}

async fn create_pool(
    State(s): State<Arc<AdminState>>,
    peer: Peer,
    Query(q): Query<ChangeQuery>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    create_in(s, peer, q, h, body, Collection::Pools, String::new()).await
}

async fn patch_pool(
    State(s): State<Arc<AdminState>>,
    peer: Peer,
    Path(pool): Path<String>,
    Query(q): Query<ChangeQuery>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    patch_in(s, peer, q, h, body, Collection::Pools, pool.clone(), pool).await
}

async fn delete_pool(
    State(s): State<Arc<AdminState>>,
    peer: Peer,
    Path(pool): Path<String>,
    Query(q): Query<ChangeQuery>,
    h: HeaderMap,
) -> Response {
    delete_in(s, peer, q, h, Collection::Pools, pool.clone(), pool).await
}

async fn create_node(
    State(s): State<Arc<AdminState>>,
    peer: Peer,
    Path(pool): Path<String>,
    Query(q): Query<ChangeQuery>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    let label = format!("{pool}/");
    create_in(s, peer, q, h, body, Collection::Nodes { pool }, label).await
}

async fn patch_node(
    State(s): State<Arc<AdminState>>,
    peer: Peer,
    Path((pool, node)): Path<(String, String)>,
    Query(q): Query<ChangeQuery>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    let label = format!("{pool}/{node}");
    patch_in(s, peer, q, h, body, Collection::Nodes { pool }, label, node).await
}

async fn delete_node(
    State(s): State<Arc<AdminState>>,
    peer: Peer,
    Path((pool, node)): Path<(String, String)>,
    Query(q): Query<ChangeQuery>,
    h: HeaderMap,
) -> Response {
    let label = format!("{pool}/{node}");
    delete_in(s, peer, q, h, Collection::Nodes { pool }, label, node).await
}

#[allow(clippy::too_many_arguments)]
async fn node_action(
    s: Arc<AdminState>,
    peer: Peer,
    pool: String,
    node: String,
    q: ChangeQuery,
    h: HeaderMap,
    verb: &str,
    changes: Json,
) -> Response {
    let a = prelude!(s, h, peer, q);
    let action = format!("{verb} node {pool}/{node}");
    run(
        a,
        action,
        Edit::Patch(Collection::Nodes { pool }, node, changes),
    )
    .await
}

async fn drain_node(
    State(s): State<Arc<AdminState>>,
    peer: Peer,
    Path((pool, node)): Path<(String, String)>,
    Query(q): Query<ChangeQuery>,
    h: HeaderMap,
) -> Response {
    node_action(
        s,
        peer,
        pool,
        node,
        q,
        h,
        "drain",
        json!({"draining": true}),
    )
    .await
}

async fn enable_node(
    State(s): State<Arc<AdminState>>,
    peer: Peer,
    Path((pool, node)): Path<(String, String)>,
    Query(q): Query<ChangeQuery>,
    h: HeaderMap,
) -> Response {
    // Removing the field puts the default (not draining) back.
    node_action(
        s,
        peer,
        pool,
        node,
        q,
        h,
        "enable",
        json!({"draining": null}),
    )
    .await
}

async fn weight_node(
    State(s): State<Arc<AdminState>>,
    peer: Peer,
    Path((pool, node)): Path<(String, String)>,
    Query(q): Query<ChangeQuery>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    let weight = match parse_json(&body) {
        Ok(Json::Number(n)) => Json::Number(n),
        Ok(Json::Object(o)) if o.len() == 1 && o.get("weight").is_some_and(Json::is_number) => {
            o.get("weight").cloned().unwrap_or(Json::Null)
        }
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid",
                "weight: send {\"weight\": N} with N from 1 to 10000",
            )
        }
        Err(r) => return *r,
    };
    let verb = format!("weight {weight} for");
    node_action(s, peer, pool, node, q, h, &verb, json!({"weight": weight})).await
}

async fn create_route(
    State(s): State<Arc<AdminState>>,
    peer: Peer,
    Query(q): Query<ChangeQuery>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    create_in(s, peer, q, h, body, Collection::Routes, String::new()).await
}

async fn patch_route(
    State(s): State<Arc<AdminState>>,
    peer: Peer,
    Path(route): Path<String>,
    Query(q): Query<ChangeQuery>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    patch_in(
        s,
        peer,
        q,
        h,
        body,
        Collection::Routes,
        route.clone(),
        route,
    )
    .await
}

async fn delete_route(
    State(s): State<Arc<AdminState>>,
    peer: Peer,
    Path(route): Path<String>,
    Query(q): Query<ChangeQuery>,
    h: HeaderMap,
) -> Response {
    delete_in(s, peer, q, h, Collection::Routes, route.clone(), route).await
}

async fn create_rule(
    State(s): State<Arc<AdminState>>,
    peer: Peer,
    Query(q): Query<ChangeQuery>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    create_in(s, peer, q, h, body, Collection::AlertRules, String::new()).await
}

async fn patch_rule(
    State(s): State<Arc<AdminState>>,
    peer: Peer,
    Path(rule): Path<String>,
    Query(q): Query<ChangeQuery>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    patch_in(
        s,
        peer,
        q,
        h,
        body,
        Collection::AlertRules,
        rule.clone(),
        rule,
    )
    .await
}

async fn delete_rule(
    State(s): State<Arc<AdminState>>,
    peer: Peer,
    Path(rule): Path<String>,
    Query(q): Query<ChangeQuery>,
    h: HeaderMap,
) -> Response {
    delete_in(s, peer, q, h, Collection::AlertRules, rule.clone(), rule).await
}
