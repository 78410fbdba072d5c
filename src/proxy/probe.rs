//! The health probe the data-plane listener answers itself
//! (`listener.health_path`, `/health` by default), for load balancers in
//! front of the gateway and clients that check their backend before they
//! start (guidellm).
//!
//! The answer is the gateway's own state, not a node's: 200 while at least
//! one route has an available node (active checks up or none, not ejected,
//! not draining), else 503 with `Retry-After`, so an L4/L7 balancer takes a
//! gateway with nothing to serve out of rotation. The JSON body gives counts
//! only (no names or addresses):
//! `{"status": "ok", "routes": 2, "routes_ready": 1, "nodes": 4, "nodes_available": 3}`.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Response, StatusCode};

use super::body::ResponseBody;
use super::table::RouteTable;

/// Whether `method path` is the health probe of this table's listener.
pub fn is_health_probe(table: &RouteTable, method: &Method, path: &str) -> bool {
    let probe = table.listener.health_path.as_str();
    !probe.is_empty() && path == probe && (*method == Method::GET || *method == Method::HEAD)
}

/// Routes with an available node, all routes, available nodes, all nodes
/// (each node counted once, whichever routes use its pool).
pub fn readiness(table: &RouteTable) -> (usize, usize, usize, usize) {
    let now = crate::health::now_ms();
    let ready = table
        .routes
        .iter()
        .filter(|r| r.pool.nodes.iter().any(|n| n.load.health.is_available(now)))
        .count();
    let nodes = table.pools.iter().map(|p| p.nodes.len()).sum();
    let available = table
        .pools
        .iter()
        .flat_map(|p| p.nodes.iter())
        .filter(|n| n.load.health.is_available(now))
        .count();
    (ready, table.routes.len(), available, nodes)
}

/// The probe's answer.
pub fn health_response(table: &RouteTable, method: &Method) -> Response<ResponseBody> {
    let (ready, routes, available, nodes) = readiness(table);
    let (status, word) = if ready > 0 {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    let body = if *method == Method::HEAD {
        ResponseBody::empty()
    } else {
        ResponseBody::full(Bytes::from(
            serde_json::json!({
                "status": word,
                "routes": routes,
                "routes_ready": ready,
                "nodes": nodes,
                "nodes_available": available,
            })
            .to_string(),
        ))
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    if status != StatusCode::OK {
        headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::fleet::LoadRegistry;
    use crate::proxy::queue::QueueRegistry;

    fn table(extra: &str) -> RouteTable {
        let text = format!(
            "[listener]\n{extra}\n[[pools]]\nname = \"p\"\n[[pools.nodes]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n\
             [[pools.nodes]]\nname = \"b\"\naddr = \"127.0.0.1:2\"\n\
             [[routes]]\nname = \"r\"\npool = \"p\"\n"
        );
        let config = Config::from_toml(&text).unwrap();
        RouteTable::build(&config, &LoadRegistry::default(), &QueueRegistry::default()).unwrap()
    }

    #[test]
    fn probe_path_and_methods() {
        let t = table("");
        assert!(is_health_probe(&t, &Method::GET, "/health"));
        assert!(is_health_probe(&t, &Method::HEAD, "/health"));
        assert!(!is_health_probe(&t, &Method::POST, "/health"));
        assert!(!is_health_probe(&t, &Method::GET, "/healthz"));
        let t = table("health_path = \"/ready\"");
        assert!(is_health_probe(&t, &Method::GET, "/ready"));
        assert!(!is_health_probe(&t, &Method::GET, "/health"));
        let t = table("health_path = \"\"");
        assert!(!is_health_probe(&t, &Method::GET, "/health"));
        assert!(!is_health_probe(&t, &Method::GET, ""));
    }

    #[test]
    fn ready_while_some_node_is_available() {
        let t = table("");
        assert_eq!(readiness(&t), (1, 1, 2, 2));
        assert_eq!(health_response(&t, &Method::GET).status(), 200);
        t.pools[0].nodes[0].load.health.set_draining(true);
        assert_eq!(readiness(&t), (1, 1, 1, 2));
        t.pools[0].nodes[1].load.health.set_draining(true);
        let r = health_response(&t, &Method::GET);
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[RETRY_AFTER], "1");
    }
}
