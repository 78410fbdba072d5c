//! Active health checks: one task per node GETs the health path every
//! interval (± jitter) and applies HAProxy-style `rise`/`fall` thresholds.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request, Uri};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinHandle;

use super::config::{ActiveCheckConfig, InitialState};
use super::node::{CheckResult, NodeHealth};
use super::now_ms;
use crate::config::duration;
use crate::fleet::{Node, Pool};

type CheckClient = Client<crate::tls::HttpsConnector, Empty<Bytes>>;

/// Ids of `spawn_checks` calls; 0 means "never checked".
static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

/// Running checks of one pool; dropping it stops them.
///
/// On drop, nodes whose checks no later [`spawn_checks`] took over count as
/// up again (no active checks configured). So on a reload, spawn the new
/// checks before dropping the old handle, and a node keeps its known state.
#[derive(Debug)]
pub struct CheckHandle {
    owner: u64,
    pool: Arc<Pool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for CheckHandle {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for node in &self.pool.nodes {
            node.load.health.release_checks(self.owner);
        }
    }
}

/// Start checking every node of `pool` on the current tokio runtime.
///
/// A node never checked before starts in `cfg.initial_state`; one already
/// known (its [`crate::fleet::NodeLoad`] kept across a reload) keeps its
/// state. The first check runs at once, then every `interval` ± `jitter`.
/// A check is a GET of the health path with `timeout` (connect included);
/// a status in `expected_status` is a success, anything else (connect
/// error, timeout, other status) a failure. `unhealthy_threshold` failures
/// in a row mark the node down, `healthy_threshold` successes up; the very
/// first check of a fresh node decides at once (HAProxy `init-state`).
pub fn spawn_checks(pool: Arc<Pool>, cfg: ActiveCheckConfig) -> CheckHandle {
    let owner = NEXT_OWNER.fetch_add(1, Relaxed);
    // `https://` nodes are checked over TLS with the pool's settings.
    let connector = crate::tls::https_connector(Arc::clone(&pool.tls), cfg.timeout);
    // A fresh connection per check, like HAProxy: a check also proves the
    // node still accepts connections.
    let client: CheckClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector);
    let cfg = Arc::new(cfg);
    let now = now_ms();
    let mut tasks = Vec::with_capacity(pool.nodes.len());
    for node in &pool.nodes {
        let health = &node.load.health;
        health.set_label(&format!("{}/{}", pool.name, node.name));
        let fresh = health.claim_checks(owner);
        if fresh && cfg.initial_state == InitialState::Unhealthy {
            health.set_active(
                false,
                "initial state: unhealthy until a check succeeds",
                now,
            );
        }
        let uri = format!("{}://{}{}", Pool::scheme(node), node.addr, cfg.check_path());
        let uri: Uri = match uri.parse() {
            Ok(uri) => uri,
            Err(e) => {
                // Validated paths and node addresses always parse.
                tracing::error!(node = %node.name, %uri, error = %e, "cannot build health check URI");
                continue;
            }
        };
        tasks.push(tokio::spawn(run(
            Arc::clone(node),
            uri,
            Arc::clone(&cfg),
            client.clone(),
            owner,
            fresh,
        )));
    }
    CheckHandle { owner, pool, tasks }
}

async fn run(
    node: Arc<Node>,
    uri: Uri,
    cfg: Arc<ActiveCheckConfig>,
    client: CheckClient,
    owner: u64,
    fresh: bool,
) {
    let health: &NodeHealth = &node.load.health;
    // The first check of a fresh node decides at once.
    let mut first = fresh;
    let (mut successes, mut failures) = (0u32, 0u32);
    // Passing checks in a row while the node is ejected.
    let mut passes_while_ejected = 0u32;
    loop {
        let started = Instant::now();
        let at_ms = now_ms();
        if node.load.power.is_asleep(at_ms) {
            // Parked or waking on purpose (`crate::energy`): not checked
            // into failure; counting starts afresh once it is awake.
            (successes, failures, passes_while_ejected) = (0, 0, 0);
            tokio::time::sleep_until((started + jittered(&cfg)).into()).await;
            continue;
        }
        let (outcome, detail) = check(&client, &uri, &cfg).await;
        let ok = outcome == Outcome::Passed;
        let latency_ms = started.elapsed().as_millis() as u64;
        if !health.checks_owned_by(owner) {
            return; // a newer checker took over
        }
        let now = now_ms();
        if cfg.uneject_on_pass && health.is_ejected(now) {
            passes_while_ejected = if ok { passes_while_ejected + 1 } else { 0 };
            if passes_while_ejected >= cfg.healthy_threshold {
                health.uneject(
                    &format!(
                        "active check: {passes_while_ejected} passing checks ended the ejection"
                    ),
                    now,
                );
                passes_while_ejected = 0;
            }
        } else {
            passes_while_ejected = 0;
        }
        if ok {
            health.record_check_passed();
            successes = successes.saturating_add(1);
            failures = 0;
            if !health.active_up() && (first || successes >= cfg.healthy_threshold) {
                let reason = if first {
                    "active check: first check succeeded".to_string()
                } else {
                    format!("active check: {successes} consecutive successes")
                };
                health.set_active(true, &reason, now);
            }
        } else {
            if outcome == Outcome::Refused {
                // Certain: nothing listens there (panic mode skips it).
                health.record_refused(now);
            }
            failures = failures.saturating_add(1);
            successes = 0;
            if health.active_up() && (first || failures >= cfg.unhealthy_threshold) {
                let reason = if first {
                    format!("active check: first check failed ({detail})")
                } else {
                    format!("active check: {failures} consecutive failures ({detail})")
                };
                health.set_active(false, &reason, now);
            }
        }
        health.record_check(CheckResult {
            at_ms,
            ok,
            latency_ms,
            detail,
        });
        first = false;
        tokio::time::sleep_until((started + jittered(&cfg)).into()).await;
    }
}

/// `interval` spread uniformly by ± `jitter` × interval.
fn jittered(cfg: &ActiveCheckConfig) -> Duration {
    let spread = cfg.jitter.clamp(0.0, 1.0) * (2.0 * fastrand::f64() - 1.0);
    cfg.interval.mul_f64(1.0 + spread)
}

/// How one check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Passed,
    /// No connection could be made: the node is certainly not serving.
    Refused,
    /// A timeout, a broken exchange or an unexpected status.
    Failed,
}

/// One check: its outcome and a detail for the dashboard.
async fn check(client: &CheckClient, uri: &Uri, cfg: &ActiveCheckConfig) -> (Outcome, String) {
    let req = match Request::get(uri.clone())
        .header(header::USER_AGENT, "infergate-health-check")
        .body(Empty::<Bytes>::new())
    {
        Ok(req) => req,
        Err(e) => return (Outcome::Failed, format!("bad request: {e}")),
    };
    match tokio::time::timeout(cfg.timeout, client.request(req)).await {
        Err(_) => (
            Outcome::Failed,
            format!("timeout after {}", duration::format(cfg.timeout)),
        ),
        Ok(Err(e)) if e.is_connect() && !is_timeout(&e) => (
            Outcome::Refused,
            format!("connect error: {}", root_cause(&e)),
        ),
        Ok(Err(e)) => {
            let what = if e.is_connect() {
                "connect error"
            } else {
                "request error"
            };
            (Outcome::Failed, format!("{what}: {}", root_cause(&e)))
        }
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            let outcome = if cfg.expected_status.contains(&status) {
                Outcome::Passed
            } else {
                Outcome::Failed
            };
            (outcome, format!("status {status}"))
        }
    }
}

/// Whether a connect error was a timeout (the node may be only slow to
/// accept) rather than a refusal.
fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(err) = cause {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::TimedOut;
        }
        cause = err.source();
    }
    false
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::HealthState;
    use crate::sim::{Faults, SimConfig, SimNode};
    use http::uri::Authority;
    use http::{Response, StatusCode};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicU16;
    use tokio::net::TcpListener;

    const INTERVAL: Duration = Duration::from_millis(50);

    fn fast(cfg: ActiveCheckConfig) -> ActiveCheckConfig {
        ActiveCheckConfig {
            interval: INTERVAL,
            timeout: Duration::from_millis(30),
            jitter: 0.0,
            ..cfg
        }
    }

    fn pool_of(addrs: &[SocketAddr]) -> Arc<Pool> {
        let nodes = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let addr: Authority = a.to_string().parse().unwrap();
                Arc::new(Node::new(format!("n{i}"), addr, 1))
            })
            .collect();
        Arc::new(Pool::new("p", nodes))
    }

    async fn sim() -> SimNode {
        SimNode::start("sim", "127.0.0.1:0".parse().unwrap(), SimConfig::small())
            .await
            .unwrap()
    }

    /// Poll `cond` until it holds or `within` passes; the time it took.
    async fn wait_for(what: &str, within: Duration, cond: impl Fn() -> bool) -> Duration {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < within,
                "timed out after {within:?} waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        start.elapsed()
    }

    fn checks_done(h: &NodeHealth) -> bool {
        h.status(now_ms()).last_check.is_some()
    }

    /// Eject node 0 of `pool` by outlier detection (long ejection).
    fn eject(pool: &Pool) {
        let cfg = crate::health::OutlierConfig {
            consecutive_failures: 1,
            base_ejection_time: Duration::from_secs(600),
            max_ejection_time: Duration::from_secs(600),
            ..Default::default()
        };
        let h = &pool.nodes[0].load.health;
        assert!(h.record_failure(
            crate::health::FailureKind::Status5xx,
            &cfg,
            &pool.nodes,
            now_ms()
        ));
        assert!(!h.is_available(now_ms()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passing_checks_end_an_ejection_only_when_asked() {
        let node = sim().await;
        // Default: the node answers /health but stays ejected; it counts
        // as failing (panic mode leaves it alone).
        let pool = pool_of(&[node.addr()]);
        let h = &pool.nodes[0].load.health;
        eject(&pool);
        let checks = spawn_checks(pool.clone(), fast(ActiveCheckConfig::default()));
        let count = || h.status(now_ms()).last_check.map_or(0, |c| c.at_ms);
        let first = {
            wait_for("a check", Duration::from_secs(2), || checks_done(h)).await;
            count()
        };
        // Several passing checks later: still ejected.
        wait_for("more checks", Duration::from_secs(3), || {
            count() >= first + 4 * INTERVAL.as_millis() as u64
        })
        .await;
        assert!(!h.is_available(now_ms()));
        assert_eq!(h.status(now_ms()).state, HealthState::Ejected);
        drop(checks);

        // uneject_on_pass: back after healthy_threshold passing checks.
        let pool = pool_of(&[node.addr()]);
        let h = &pool.nodes[0].load.health;
        eject(&pool);
        let cfg = ActiveCheckConfig {
            uneject_on_pass: true,
            ..fast(ActiveCheckConfig::default())
        };
        let _checks = spawn_checks(pool.clone(), cfg);
        wait_for("un-ejected", Duration::from_secs(3), || {
            h.is_available(now_ms())
        })
        .await;
        let s = h.status(now_ms());
        assert_eq!(s.state, HealthState::Healthy);
        assert_eq!(
            s.reason,
            "active check: 2 passing checks ended the ejection"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refused_checks_mark_the_node_known_dead() {
        let node = sim().await;
        let pool = pool_of(&[node.addr()]);
        let h = &pool.nodes[0].load.health;
        let _checks = spawn_checks(pool.clone(), fast(ActiveCheckConfig::default()));
        wait_for("a check", Duration::from_secs(2), || checks_done(h)).await;
        assert!(!h.failed_recently(now_ms(), 60_000));
        node.crash().await;
        wait_for("refused", Duration::from_secs(3), || {
            h.failed_recently(now_ms(), 60_000)
        })
        .await;
        node.restart().await.unwrap();
        // A passing check disproves the refusal, down or not by then.
        wait_for("cleared", Duration::from_secs(3), || {
            !h.failed_recently(now_ms(), 60_000)
        })
        .await;
        wait_for("up", Duration::from_secs(3), || h.is_available(now_ms())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crashed_node_goes_down_and_comes_back() {
        let node = sim().await;
        let pool = pool_of(&[node.addr()]);
        let h = &pool.nodes[0].load.health;
        let _checks = spawn_checks(pool.clone(), fast(ActiveCheckConfig::default()));
        assert!(h.is_available(now_ms()), "initial state healthy");
        wait_for("a check", Duration::from_secs(2), || checks_done(h)).await;
        let last = h.status(now_ms()).last_check.unwrap();
        assert!(last.ok, "{last:?}");
        assert_eq!(last.detail, "status 200");

        node.crash().await;
        let took = wait_for("down", Duration::from_secs(3), || !h.is_available(now_ms())).await;
        // Three failed checks: at least two intervals, at most about four.
        assert!(took >= INTERVAL * 2 - Duration::from_millis(10), "{took:?}");
        assert!(
            took <= INTERVAL * 4 + Duration::from_millis(250),
            "{took:?}"
        );
        let s = h.status(now_ms());
        assert_eq!(s.state, HealthState::Unhealthy);
        assert!(
            s.reason
                .starts_with("active check: 3 consecutive failures (connect error"),
            "{}",
            s.reason
        );
        assert!(!s.last_check.unwrap().ok);

        node.restart().await.unwrap();
        let took = wait_for("up", Duration::from_secs(3), || h.is_available(now_ms())).await;
        assert!(
            took <= INTERVAL * 3 + Duration::from_millis(250),
            "{took:?}"
        );
        let s = h.status(now_ms());
        assert_eq!(s.state, HealthState::Healthy);
        assert_eq!(s.reason, "active check: 2 consecutive successes");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hung_node_is_marked_down_by_timeouts() {
        let node = sim().await;
        let pool = pool_of(&[node.addr()]);
        let h = &pool.nodes[0].load.health;
        let _checks = spawn_checks(pool.clone(), fast(ActiveCheckConfig::default()));
        wait_for("a check", Duration::from_secs(2), || checks_done(h)).await;
        node.set_faults(Faults {
            hang: true,
            ..Faults::default()
        });
        wait_for("down", Duration::from_secs(3), || !h.is_available(now_ms())).await;
        let s = h.status(now_ms());
        assert_eq!(
            s.reason,
            "active check: 3 consecutive failures (timeout after 30ms)"
        );
        let last = s.last_check.unwrap();
        assert!(last.latency_ms >= 25, "{last:?}");

        node.set_faults(Faults::default());
        wait_for("up", Duration::from_secs(3), || h.is_available(now_ms())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn initial_state_unhealthy_starts_down_and_comes_up() {
        let node = sim().await;
        let pool = pool_of(&[node.addr()]);
        let h = &pool.nodes[0].load.health;
        let cfg = ActiveCheckConfig {
            initial_state: InitialState::Unhealthy,
            ..fast(ActiveCheckConfig::default())
        };
        let _checks = spawn_checks(pool.clone(), cfg);
        assert!(!h.is_available(now_ms()), "down before the first check");
        assert_eq!(
            h.status(now_ms()).reason,
            "initial state: unhealthy until a check succeeds"
        );
        wait_for("up", Duration::from_secs(2), || h.is_available(now_ms())).await;
        assert_eq!(
            h.status(now_ms()).reason,
            "active check: first check succeeded"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn initial_state_healthy_goes_down_on_first_failed_check() {
        let node = sim().await;
        let addr = node.addr();
        node.crash().await;
        let pool = pool_of(&[addr]);
        let h = &pool.nodes[0].load.health;
        let _checks = spawn_checks(pool.clone(), fast(ActiveCheckConfig::default()));
        wait_for("down", Duration::from_secs(2), || !h.is_available(now_ms())).await;
        let s = h.status(now_ms());
        assert!(
            s.reason.starts_with("active check: first check failed"),
            "{}",
            s.reason
        );
    }

    /// A server answering every request with the status in `status`.
    async fn status_server(status: Arc<AtomicU16>) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let status = status.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |_req| {
                        let code = StatusCode::from_u16(status.load(Relaxed)).unwrap();
                        async move {
                            let mut resp = Response::new(Empty::<Bytes>::new());
                            *resp.status_mut() = code;
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (addr, task)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expected_status_is_honoured() {
        let status = Arc::new(AtomicU16::new(204));
        let (addr, server) = status_server(status.clone()).await;

        // 204 is not in the default [200].
        let pool = pool_of(&[addr]);
        let h = &pool.nodes[0].load.health;
        let checks = spawn_checks(pool.clone(), fast(ActiveCheckConfig::default()));
        wait_for("down", Duration::from_secs(2), || !h.is_available(now_ms())).await;
        assert_eq!(
            h.status(now_ms()).reason,
            "active check: first check failed (status 204)"
        );
        drop(checks);

        // With 204 expected it comes up; a 503 later takes it down again.
        let pool = pool_of(&[addr]);
        let h = &pool.nodes[0].load.health;
        let cfg = ActiveCheckConfig {
            expected_status: vec![200, 204],
            initial_state: InitialState::Unhealthy,
            ..fast(ActiveCheckConfig::default())
        };
        let _checks = spawn_checks(pool.clone(), cfg);
        wait_for("up", Duration::from_secs(2), || h.is_available(now_ms())).await;
        status.store(503, Relaxed);
        wait_for("down", Duration::from_secs(3), || !h.is_available(now_ms())).await;
        assert_eq!(
            h.status(now_ms()).reason,
            "active check: 3 consecutive failures (status 503)"
        );
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reload_keeps_state_and_drop_stops_checks() {
        let node = sim().await;
        let addr = node.addr();
        node.crash().await;
        let pool = pool_of(&[addr]);
        let h = &pool.nodes[0].load.health;
        let old = spawn_checks(pool.clone(), fast(ActiveCheckConfig::default()));
        wait_for("down", Duration::from_secs(2), || !h.is_available(now_ms())).await;

        // A reload: new Pool and Node objects sharing the same NodeLoad.
        let reloaded = Arc::new(Pool::new(
            "p",
            vec![Arc::new(Node {
                name: "n0".into(),
                addr: addr.to_string().parse().unwrap(),
                weight: 1,
                https: false,
                max_concurrent: None,
                max_inflight_tokens: None,
                load: Arc::clone(&pool.nodes[0].load),
                source: None,
            })],
        ));
        let cfg = ActiveCheckConfig {
            initial_state: InitialState::Healthy,
            ..fast(ActiveCheckConfig::default())
        };
        let new = spawn_checks(reloaded, cfg);
        drop(old);
        assert!(!h.is_available(now_ms()), "known-down node stays down");

        // The new checker brings it up once the node is back.
        node.restart().await.unwrap();
        wait_for("up", Duration::from_secs(3), || h.is_available(now_ms())).await;
        node.crash().await;
        wait_for("down", Duration::from_secs(3), || !h.is_available(now_ms())).await;

        // Without checks the node counts as up again, and no check runs.
        drop(new);
        assert!(h.is_available(now_ms()));
        let s = h.status(now_ms());
        assert_eq!(s.reason, "active checks stopped");
        assert!(s.last_check.is_none());
        tokio::time::sleep(INTERVAL * 3).await;
        assert!(h.status(now_ms()).last_check.is_none(), "checks stopped");
    }
}
