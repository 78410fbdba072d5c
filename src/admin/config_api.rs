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
//! | GET | `/history` | the last configs in force (version, when, who, what), newest first |
//! | POST | `/rollback` | put an earlier version back in force (`{"version": "..."}`) |
//! | POST | `/pools`, `/routes`, `/alerts/rules`, `/pools/{pool}/nodes` | create an entry (JSON) |
//! | PATCH, DELETE | `/pools/{pool}`, `/routes/{route}`, `/alerts/rules/{rule}`, `/pools/{pool}/nodes/{node}` | change (merge patch) or remove it |
//! | POST | `/pools/{pool}/nodes/{node}/drain`, `/enable` | drain or put back a node |
//! | PUT | `/pools/{pool}/nodes/{node}/weight` | set a node's weight (`{"weight": N}`) |
//!
//! Paths below `/api/v1/config/` other than `audit` are parsed by
//! [`Target::parse`], so each method has one handler for every collection.
//!
//! `?dry_run=true` on any change validates it and returns the diff without
//! applying it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
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
        .route("/api/v1/config/history", get(history))
        .route("/api/v1/config/rollback", post(rollback))
        // Everything else names an entry or a collection: see `Target`.
        .route(
            "/api/v1/config/{*target}",
            post(post_target)
                .patch(patch_target)
                .delete(delete_target)
                .put(put_target),
        )
}

/// What a path under `/api/v1/config/` names.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// A collection (`pools`, `routes`, `alerts/rules`, `pools/P/nodes`).
    List(Collection),
    /// One entry of a collection.
    Entry(Collection, String),
    /// An action on a node: `drain`, `enable` or `weight`.
    NodeAction(String, String, &'static str),
}

impl Target {
    fn parse(path: &str) -> Option<Target> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let nodes = |pool: &str| Collection::Nodes {
            pool: pool.to_string(),
        };
        Some(match parts.as_slice() {
            ["pools"] => Target::List(Collection::Pools),
            ["routes"] => Target::List(Collection::Routes),
            ["alerts", "rules"] => Target::List(Collection::AlertRules),
            ["pools", pool] => Target::Entry(Collection::Pools, pool.to_string()),
            ["routes", route] => Target::Entry(Collection::Routes, route.to_string()),
            ["alerts", "rules", rule] => Target::Entry(Collection::AlertRules, rule.to_string()),
            ["pools", pool, "nodes"] => Target::List(nodes(pool)),
            ["pools", pool, "nodes", node] => Target::Entry(nodes(pool), node.to_string()),
            ["pools", pool, "nodes", node, action] => {
                let action = ["drain", "enable", "weight"]
                    .into_iter()
                    .find(|a| a == action)?;
                Target::NodeAction(pool.to_string(), node.to_string(), action)
            }
            _ => return None,
        })
    }

    /// How the entry is named in audit lines: `p`, `p/n`.
    fn label(collection: &Collection, name: &str) -> String {
        match collection {
            Collection::Nodes { pool } => format!("{pool}/{name}"),
            _ => name.to_string(),
        }
    }
}

fn unknown_path(path: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("no config API at /api/v1/config/{path} (see docs/console.md)"),
    )
}

fn wrong_method(allowed: &str) -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, allowed.to_string())],
        axum::Json(json!({"error": {"type": "method_not_allowed", "message": format!("use {allowed} here")}})),
    )
        .into_response()
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

async fn history(State(state): State<Arc<AdminState>>) -> Response {
    let Some(store) = &state.store else {
        return no_store();
    };
    let current = store.current().version.clone();
    axum::Json(json!({"current": current, "versions": store.history()})).into_response()
}

async fn rollback(r: ChangeRequest, body: Bytes) -> Response {
    let a = match r.ask() {
        Ok(a) => a,
        Err(resp) => return *resp,
    };
    let version = match parse_json(&body) {
        Ok(v) => match v.get("version").and_then(Json::as_str) {
            Some(version) => version.to_string(),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    "version: send {\"version\": \"...\"} with a version from GET /api/v1/config/history",
                )
            }
        },
        Err(resp) => return *resp,
    };
    run(a, format!("rollback to {version}"), Edit::Rollback(version)).await
}

async fn replace_config(r: ChangeRequest, body: Bytes) -> Response {
    let a = match r.ask() {
        Ok(a) => a,
        Err(resp) => return *resp,
    };
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

async fn merge_config(r: ChangeRequest, body: Bytes) -> Response {
    let a = match r.ask() {
        Ok(a) => a,
        Err(resp) => return *resp,
    };
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

/// A short rendering of a JSON body for the audit line and the history,
/// with anything that may be a credential blanked (a merge patch may set
/// `admin.token` or a Slack webhook URL).
fn brief(value: &Json) -> String {
    let mut text = crate::console::redact::redact_json(value).to_string();
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

/// The pieces every change handler extracts.
struct ChangeRequest {
    state: Arc<AdminState>,
    peer: Peer,
    query: ChangeQuery,
    headers: HeaderMap,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ChangeRequest
where
    Arc<AdminState>: axum::extract::FromRef<S>,
{
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let state: Arc<AdminState> = axum::extract::FromRef::from_ref(state);
        let peer = Peer::from_request_parts(parts, &state)
            .await
            .map_err(IntoResponse::into_response)?;
        let Query(query) = Query::<ChangeQuery>::from_request_parts(parts, &state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(ChangeRequest {
            headers: parts.headers.clone(),
            state,
            peer,
            query,
        })
    }
}

impl ChangeRequest {
    fn ask(&self) -> Result<Ask, Box<Response>> {
        ask(&self.state, &self.headers, Some(self.peer.0), &self.query)
    }
}

/// POST: create an entry in a collection, or drain / enable a node.
async fn post_target(Path(target): Path<String>, r: ChangeRequest, body: Bytes) -> Response {
    let a = match r.ask() {
        Ok(a) => a,
        Err(resp) => return *resp,
    };
    match Target::parse(&target) {
        Some(Target::List(collection)) => {
            let entry = match parse_json(&body) {
                Ok(p) => p,
                Err(resp) => return *resp,
            };
            let name = entry.get("name").and_then(Json::as_str).unwrap_or("?");
            let action = format!(
                "create {} {}",
                collection.noun(),
                Target::label(&collection, name)
            );
            run(a, action, Edit::Create(collection, entry)).await
        }
        Some(Target::NodeAction(pool, node, verb @ ("drain" | "enable"))) => {
            // Enabling removes the field: the default is not draining.
            let changes = if verb == "drain" {
                json!({"draining": true})
            } else {
                json!({"draining": null})
            };
            let action = format!("{verb} node {pool}/{node}");
            run(
                a,
                action,
                Edit::Patch(Collection::Nodes { pool }, node, changes),
            )
            .await
        }
        Some(Target::NodeAction(..)) => wrong_method("PUT"),
        Some(Target::Entry(..)) => wrong_method("PATCH, DELETE"),
        None => unknown_path(&target),
    }
}

/// PATCH: merge-patch one entry.
async fn patch_target(Path(target): Path<String>, r: ChangeRequest, body: Bytes) -> Response {
    let a = match r.ask() {
        Ok(a) => a,
        Err(resp) => return *resp,
    };
    match Target::parse(&target) {
        Some(Target::Entry(collection, name)) => {
            let changes = match parse_json(&body) {
                Ok(p) => p,
                Err(resp) => return *resp,
            };
            let action = format!(
                "update {} {} {}",
                collection.noun(),
                Target::label(&collection, &name),
                brief(&changes)
            );
            run(a, action, Edit::Patch(collection, name, changes)).await
        }
        Some(Target::List(_)) => wrong_method("POST"),
        Some(Target::NodeAction(..)) => wrong_method("POST, PUT"),
        None => unknown_path(&target),
    }
}

/// DELETE: remove one entry.
async fn delete_target(Path(target): Path<String>, r: ChangeRequest) -> Response {
    let a = match r.ask() {
        Ok(a) => a,
        Err(resp) => return *resp,
    };
    match Target::parse(&target) {
        Some(Target::Entry(collection, name)) => {
            let action = format!(
                "delete {} {}",
                collection.noun(),
                Target::label(&collection, &name)
            );
            run(a, action, Edit::Delete(collection, name)).await
        }
        Some(_) => wrong_method("POST, PATCH"),
        None => unknown_path(&target),
    }
}

/// PUT: set a node's weight.
async fn put_target(Path(target): Path<String>, r: ChangeRequest, body: Bytes) -> Response {
    let a = match r.ask() {
        Ok(a) => a,
        Err(resp) => return *resp,
    };
    let Some(Target::NodeAction(pool, node, "weight")) = Target::parse(&target) else {
        return match Target::parse(&target) {
            Some(_) => wrong_method("POST, PATCH, DELETE"),
            None => unknown_path(&target),
        };
    };
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
        Err(resp) => return *resp,
    };
    let action = format!("weight {weight} for node {pool}/{node}");
    run(
        a,
        action,
        Edit::Patch(
            Collection::Nodes { pool },
            node,
            json!({ "weight": weight }),
        ),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let nodes = Collection::Nodes { pool: "p".into() };
        assert_eq!(
            Target::parse("pools"),
            Some(Target::List(Collection::Pools))
        );
        assert_eq!(
            Target::parse("alerts/rules/x"),
            Some(Target::Entry(Collection::AlertRules, "x".into()))
        );
        assert_eq!(
            Target::parse("pools/p/nodes"),
            Some(Target::List(nodes.clone()))
        );
        assert_eq!(
            Target::parse("pools/p/nodes/n"),
            Some(Target::Entry(nodes, "n".into()))
        );
        assert_eq!(
            Target::parse("pools/p/nodes/n/drain"),
            Some(Target::NodeAction("p".into(), "n".into(), "drain"))
        );
        assert_eq!(Target::parse("pools/p/nodes/n/reboot"), None);
        assert_eq!(Target::parse("listeners"), None);
    }
}
