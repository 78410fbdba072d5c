//! The admin listener's security findings of issue #12, end to end:
//! secrets kept out of the audit trail (3), versions that reveal nothing
//! about the token (4), Host and Origin checks against DNS rebinding (5)
//! and the bearer scheme in any case (8). Priority trust (7) is in
//! `tests/resilience.rs` next to the queue it protects.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::common::*;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use infergate::admin::{self, AdminConfig};
use serde_json::{json, Value};

const TOKEN: &str = "test-token-123";

fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("infergate-security-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An admin request with any headers; `body` is sent as JSON.
async fn request(
    admin: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    body: Option<Value>,
) -> Reply {
    let mut r = Request::builder()
        .method(method)
        .uri(format!("http://{admin}{path}"));
    for (name, value) in headers {
        r = r.header(*name, value);
    }
    let body = body.map_or(Bytes::new(), |b| Bytes::from(b.to_string()));
    send(r.body(Full::new(body)).unwrap()).await
}

fn bearer() -> (&'static str, String) {
    ("authorization", format!("Bearer {TOKEN}"))
}

fn any_version() -> (&'static str, String) {
    ("if-match", "*".to_string())
}

#[tokio::test]
async fn rotated_token_and_slack_urls_never_reach_audit_history_log_or_audit_file() {
    let dir = scratch("audit-secrets");
    let (config, audit, log) = (
        dir.join("gateway.toml"),
        dir.join("audit.jsonl"),
        dir.join("gateway.log"),
    );
    std::fs::write(
        &config,
        format!(
            "[listener]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\naudit_file = \"{}\"\n\n\
             [[pools]]\nname = \"p\"\n[[pools.nodes]]\nname = \"n0\"\naddr = \"127.0.0.1:9\"\n\n\
             [[routes]]\nname = \"r\"\npool = \"p\"\n[routes.match]\nfamily = \"openai\"\n",
            audit.display()
        ),
    )
    .unwrap();
    let (mut child, admin) = spawn_serve(&config, TOKEN, "info", Some(&log)).await;
    const NEW_TOKEN: &str = "rotated-Secret-4711";
    const REFUSED_SLACK: &str = "SlackSecret42refused";
    const SLACK: &str = "SlackSecret43applied";

    // The documented rotation: a merge patch of admin.token.
    let reply = request(
        admin,
        Method::PATCH,
        "/api/v1/config",
        &[bearer(), any_version()],
        Some(json!({"admin": {"token": NEW_TOKEN}})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["secrets_changed"], json!(["admin.token"]));
    assert!(std::fs::read_to_string(&config)
        .unwrap()
        .contains(NEW_TOKEN));

    // A Slack webhook in a refused change (an unknown field beside it)...
    let reply = request(
        admin,
        Method::PATCH,
        "/api/v1/config",
        &[bearer(), any_version()],
        Some(json!({"alerts": {"notifiers": [
            {"kind": "slack", "url": format!("https://hooks.slack.com/services/T0/B0/{REFUSED_SLACK}"), "colour": "red"}
        ]}})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    // ... and in an applied one.
    let reply = request(
        admin,
        Method::PATCH,
        "/api/v1/config",
        &[bearer(), any_version()],
        Some(json!({"alerts": {"notifiers": [
            {"kind": "slack", "url": format!("http://hooks.slack.example/services/T0/B0/{SLACK}")}
        ]}})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        reply.json()["secrets_changed"],
        json!(["alerts.notifiers[0].url"])
    );

    let audit_api = request(admin, Method::GET, "/api/v1/config/audit", &[], None).await;
    let history_api = request(admin, Method::GET, "/api/v1/config/history", &[], None).await;
    let entries = audit_api.json()["entries"].clone();
    assert_eq!(entries[2]["outcome"], "applied", "{entries}");
    assert_eq!(entries[2]["secrets_changed"], json!(["admin.token"]));
    assert!(
        entries[2]["action"]
            .as_str()
            .unwrap()
            .contains("\"token\":\"<redacted>\""),
        "{entries}"
    );
    assert_eq!(entries[1]["outcome"], "refused", "{entries}");
    child.start_kill().unwrap();
    let _ = child.wait().await;

    let trail = [
        ("the audit API", audit_api.text()),
        ("the history API", history_api.text()),
        ("the audit file", std::fs::read_to_string(&audit).unwrap()),
        ("the log", std::fs::read_to_string(&log).unwrap()),
    ];
    for (place, text) in &trail {
        for secret in [NEW_TOKEN, REFUSED_SLACK, SLACK, TOKEN] {
            assert!(!text.contains(secret), "{secret} is in {place}:\n{text}");
        }
    }
    assert!(
        trail[3].1.contains("config change"),
        "the log has the audit lines"
    );
}

#[tokio::test]
async fn the_version_cannot_be_used_to_test_token_guesses() {
    use xxhash_rust::xxh3::xxh3_64;
    let nodes = start_nodes(1, &fast_sim()).await;
    let text = format!(
        "[admin]\ntoken = \"weak\"\n\n{}",
        config_text(&unweighted(&nodes), "round_robin", "")
    );
    let (gw, store, admin, path) = start_with_console("version-guess", &text, TOKEN).await;
    let read = request(admin.addr, Method::GET, "/api/v1/config", &[], None).await;
    let body = read.json();
    let version = body["version"].as_str().unwrap().to_string();
    let shown = body["text"].as_str().unwrap().to_string();
    assert!(!shown.contains("\"weak\""), "{shown}");
    assert_eq!(
        read.headers["etag"].to_str().unwrap(),
        format!("\"{version}\"")
    );

    // The attack of the finding: put each guess in place of the
    // placeholder and hash; the version must not confirm the right one.
    for guess in ["admin", "secret", "password", "token", "weak", "changeme"] {
        let candidate = shown.replace("\"<redacted>\"", &format!("\"{guess}\""));
        assert_ne!(
            format!("{:016x}", xxh3_64(candidate.as_bytes())),
            version,
            "the version confirms the guess `{guess}`"
        );
    }
    // The version is the same whatever the token...
    assert_eq!(
        infergate::console::version_of(&text.replace("weak", "another")),
        version
    );
    // ...stable while nothing changes...
    let again = request(admin.addr, Method::GET, "/api/v1/config", &[], None).await;
    assert_eq!(again.json()["version"], version.as_str());

    // ...and still moves when the token alone changes, so If-Match works.
    let reply = request(
        admin.addr,
        Method::PATCH,
        "/api/v1/config",
        &[bearer(), ("if-match", format!("\"{version}\""))],
        Some(json!({"admin": {"token": "stronger-token-value"}})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let rotated = reply.json()["version"].as_str().unwrap().to_string();
    assert_ne!(rotated, version);
    assert_eq!(reply.json()["diff"], "", "the redacted text did not change");
    let stale = request(
        admin.addr,
        Method::PUT,
        "/api/v1/config/pools/p/nodes/n0/weight",
        &[bearer(), ("if-match", format!("\"{version}\""))],
        Some(json!({"weight": 2})),
    )
    .await;
    assert_eq!(stale.status, StatusCode::CONFLICT, "{}", stale.text());
    assert_eq!(stale.json()["error"]["current_version"], rotated.as_str());

    // A hand edit of the token alone moves it too.
    let file = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        file.replace("stronger-token-value", "edited-by-hand"),
    )
    .unwrap();
    store.poll_file(false).await;
    let after = request(admin.addr, Method::GET, "/api/v1/config", &[], None).await;
    let edited = after.json()["version"].as_str().unwrap().to_string();
    assert_ne!(edited, rotated);
    let audit = store.audit.latest(1);
    assert_eq!(audit[0].actor, "file");
    assert_eq!(audit[0].secrets_changed, ["admin.token"]);
    admin.stop().await;
    gw.stop().await;
}

#[tokio::test]
async fn foreign_host_and_origin_are_refused() {
    let nodes = start_nodes(1, &fast_sim()).await;
    let text = config_text(&unweighted(&nodes), "round_robin", "");
    let (gw, _store, admin, path) = start_with_console("rebinding", &text, TOKEN).await;
    let addr = admin.addr;
    let port = addr.port();
    let host = |h: String| ("host", h);

    // A page on another name rebound to 127.0.0.1 can read nothing.
    for path in [
        "/api/v1/config",
        "/api/v1/config/audit",
        "/api/v1/config/history",
        "/api/v1/nodes",
        "/metrics",
        "/",
    ] {
        let reply = request(
            addr,
            Method::GET,
            path,
            &[host(format!("rebind.attacker.example:{port}"))],
            None,
        )
        .await;
        assert_eq!(reply.status, StatusCode::MISDIRECTED_REQUEST, "{path}");
        assert!(
            reply.text().contains("admin.allowed_hosts"),
            "{}",
            reply.text()
        );
    }
    // ... nor change anything, token or not.
    let drain = "/api/v1/config/pools/p/nodes/n0/drain";
    let reply = request(
        addr,
        Method::POST,
        drain,
        &[
            host(format!("rebind.attacker.example:{port}")),
            bearer(),
            any_version(),
        ],
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::MISDIRECTED_REQUEST);

    // The listener's own names work.
    for name in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ] {
        let reply = request(
            addr,
            Method::GET,
            "/api/v1/config",
            &[host(name.clone())],
            None,
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{name}");
    }

    // A change from a foreign page (its Origin) is refused even with the
    // right Host and token; from the listener's own page it goes through.
    let reply = request(
        addr,
        Method::POST,
        drain,
        &[
            ("origin", format!("http://rebind.attacker.example:{port}")),
            bearer(),
            any_version(),
        ],
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert!(!std::fs::read_to_string(&path).unwrap().contains("draining"));
    let reply = request(
        addr,
        Method::POST,
        drain,
        &[("origin", "null".into()), bearer(), any_version()],
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let reply = request(
        addr,
        Method::POST,
        drain,
        &[
            ("origin", format!("http://127.0.0.1:{port}")),
            bearer(),
            any_version(),
        ],
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .contains("draining = true"));
    admin.stop().await;

    // A name of the gateway's own (a DNS name, a reverse proxy's) is added
    // with admin.allowed_hosts.
    let named = admin::start(
        gw.gateway.clone(),
        &AdminConfig {
            allowed_hosts: vec!["admin.internal".into()],
            ..AdminConfig::default()
        },
        Some("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let reply = request(
        named.addr,
        Method::GET,
        "/api/v1/nodes",
        &[host("admin.internal".into())],
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = request(
        named.addr,
        Method::GET,
        "/api/v1/nodes",
        &[host("other.internal".into())],
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::MISDIRECTED_REQUEST);
    named.stop().await;
    gw.stop().await;
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let nodes = start_nodes(1, &fast_sim()).await;
    let text = config_text(&unweighted(&nodes), "round_robin", "");
    let (gw, _store, admin, path) = start_with_console("bearer-case", &text, TOKEN).await;
    for (i, scheme) in ["bearer", "BEARER", "Bearer"].into_iter().enumerate() {
        let reply = request(
            admin.addr,
            Method::PUT,
            "/api/v1/config/pools/p/nodes/n0/weight",
            &[
                ("authorization", format!("{scheme} {TOKEN}")),
                any_version(),
            ],
            Some(json!({"weight": 2 + i})),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{scheme}: {}", reply.text());
    }
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .contains("weight = 4"));
    let reply = request(
        admin.addr,
        Method::PUT,
        "/api/v1/config/pools/p/nodes/n0/weight",
        &[("authorization", format!("Basic {TOKEN}")), any_version()],
        Some(json!({"weight": 9})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    admin.stop().await;
    gw.stop().await;
}
