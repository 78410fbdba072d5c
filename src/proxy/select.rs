//! Choosing the node for one attempt.
//!
//! Candidates are the route pool's nodes that are available (healthy, not
//! ejected, not draining — or, in panic mode, also those out on a health
//! signal alone, never a node known to refuse or fail; with no node
//! available at all the request fails fast with 503), not at
//! their concurrency limit, and not already tried for this request. Nodes
//! in slow start are thinned at random in proportion to their ramp. When
//! every candidate is busy the request waits in the pool's admission queue;
//! when none is available at all it fails fast.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::header_lines::RequestHeaders;
use tokio::time::Instant;

use super::queue::{AdmissionQueue, Shed, Waited};
use super::table::Route;
use crate::balance::PickContext;
use crate::classify::RequestClass;
use crate::fleet::{InFlight, Node, NodeLoad, Pool};
use crate::health::{self, FailureKind, OutlierConfig};

/// A node picked for an attempt.
#[derive(Debug, Clone, Copy)]
pub struct Chosen {
    /// Its index in the pool.
    pub index: usize,
    /// Leading prompt blocks the policy expects it to hold in its prefix
    /// cache (0: unknown; see `Policy::pick_expecting`).
    pub cached_blocks: u32,
    /// The clock the pick read (or was given): when the attempt begins.
    pub at: std::time::Instant,
}

/// Outcome of [`select`].
pub enum Selection {
    /// Send the attempt to this node.
    Node(Chosen),
    /// Every candidate stayed busy: shed the request.
    Shed(Shed),
    /// No node can serve the request at all (down, ejected, draining, tried).
    Unavailable,
}

enum Pick {
    Node(Chosen),
    Busy,
    Unavailable,
}

/// Pick a node for the next attempt, waiting in the pool's queue while all
/// candidates are at their limit (until the queue timeout or `deadline`).
/// `now`: the caller's recent read of the clock, for the first look; a
/// request that waited reads it again.
pub async fn select(
    route: &Route,
    class: &RequestClass,
    headers: RequestHeaders<'_>,
    tried: &[usize],
    now: Instant,
    deadline: Instant,
) -> Selection {
    let settings = &route.pool_settings;
    let mut until = None;
    let mut ticket = None;
    let mut clock = Some(now);
    loop {
        let now = clock.take().unwrap_or_else(Instant::now);
        match try_pick(route, class, headers, tried, now.into_std()) {
            Pick::Node(chosen) => return Selection::Node(chosen),
            Pick::Unavailable => return Selection::Unavailable,
            Pick::Busy => {}
        }
        if settings.queue_size == 0 {
            return Selection::Shed(Shed::QueueFull);
        }
        let until =
            *until.get_or_insert_with(|| (Instant::now() + settings.queue_timeout).min(deadline));
        let waiting = match &mut ticket {
            Some(ticket) => ticket,
            None => {
                let joined = match route.queue.enqueue(class.priority, settings.queue_size) {
                    Ok(joined) => joined,
                    Err(shed) => return Selection::Shed(shed),
                };
                // A slot may have freed between the pick and joining: look again.
                ticket = Some(joined);
                continue;
            }
        };
        // Slots freed by this gateway's requests wake the queue at once;
        // nodes that stop being saturated by their scraped metrics, or come
        // back up, do not, so waiters also look again every RECHECK.
        let wake = (Instant::now() + RECHECK).min(until);
        match waiting.wait_some(wake).await {
            Waited::Woken => ticket = None,
            Waited::Displaced => return Selection::Shed(Shed::Displaced),
            Waited::Elapsed if Instant::now() >= until => return Selection::Shed(Shed::TimedOut),
            Waited::Elapsed => {}
        }
    }
}

/// How often a queued request looks for a free node without being woken.
const RECHECK: std::time::Duration = std::time::Duration::from_millis(50);

fn try_pick(
    route: &Route,
    class: &RequestClass,
    headers: RequestHeaders<'_>,
    tried: &[usize],
    clock: std::time::Instant,
) -> Pick {
    let nodes = &route.pool.nodes;
    // One read of the clock for both of the fleet's clocks.
    let now = health::at_ms(clock);
    // Panic mode (Envoy): too few nodes available, so trust the health
    // signal less and use them all. With none available at all, fail fast
    // instead (HAProxy): every node is down, and sending traffic anyway
    // would only add latency and load to servers that are recovering.
    let window = route.pool.failure_window_ms;
    let panic = route.pool.in_panic(now) && nodes.iter().any(|n| n.load.health.is_available(now));
    if route.panicking.load(Ordering::Relaxed) != panic
        && route.panicking.swap(panic, Ordering::Relaxed) != panic
    {
        if panic {
            tracing::warn!(route = %route.name, pool = %route.pool.name, threshold = route.pool.panic_threshold,
                "panic mode: too few nodes available, routing across all nodes");
        } else {
            tracing::info!(route = %route.name, pool = %route.pool.name, "panic mode over");
        }
    }
    let usable = |node: &Node| {
        let health = &node.load.health;
        // A parked or waking node (`crate::energy`) serves nothing, panic or not.
        !node.load.power.is_asleep(now)
            && (health.is_available(now) || (panic && health::usable_in_panic(health, now, window)))
    };
    // Busy: at its concurrency limit, or saturated by its own metrics.
    let now_ns = crate::fleet::at_ns(clock);
    let candidate = |i: usize| {
        !tried.contains(&i)
            && nodes
                .get(i)
                .is_some_and(|node| usable(node) && !node.is_full() && !node.is_saturated(now_ns))
    };
    let ctx = PickContext {
        request: Some(class),
        headers: Some(headers),
    };
    let ramp = route.pool_settings.slow_start;
    // Thin relative to the most ramped-up node, so nodes that all
    // started together (gateway start) are not thinned at all; nor is
    // anything when every node is as far as the most ramped-up one (the
    // usual case: nobody came back lately).
    let (low, top) = if ramp.is_zero() {
        (1.0, 1.0)
    } else {
        nodes
            .iter()
            .map(|n| n.load.health.slow_start_factor(now, ramp))
            .fold((f64::MAX, 0.0), |(low, top), f| (f.min(low), f.max(top)))
    };
    if low < top {
        let thinned = |i: usize| {
            candidate(i)
                && nodes.get(i).is_some_and(|node| {
                    let factor = node.load.health.slow_start_factor(now, ramp);
                    factor >= top || fastrand::f64() * top < factor
                })
        };
        if let Some((index, cached_blocks)) = route.policy.pick_expecting(nodes, &thinned, &ctx) {
            return Pick::Node(Chosen {
                at: clock,
                index,
                cached_blocks,
            });
        }
    }
    if let Some((index, cached_blocks)) = route.policy.pick_expecting(nodes, &candidate, &ctx) {
        return Pick::Node(Chosen {
            at: clock,
            index,
            cached_blocks,
        });
    }
    let any_usable = nodes
        .iter()
        .enumerate()
        .any(|(i, node)| !tried.contains(&i) && usable(node));
    if any_usable {
        Pick::Busy
    } else {
        Pick::Unavailable
    }
}

/// Up to `n` nodes besides those in `tried` that could take the request
/// now (available, awake, under their limits, not saturated), least
/// loaded first: the fallbacks a proxy may go down to when the picked node
/// fails. Asks no policy, so no policy state (prefix index, counters)
/// records a request that may never go there.
pub fn spares(route: &Route, tried: &[usize], n: usize) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let now = health::now_ms();
    let now_ns = crate::fleet::now_ns();
    let mut ready: Vec<(u64, usize)> = route
        .pool
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, node)| {
            !tried.contains(i)
                && !node.load.power.is_asleep(now)
                && node.load.health.is_available(now)
                && !node.is_full()
                && !node.is_saturated(now_ns)
        })
        .map(|(i, node)| (node.outstanding(), i))
        .collect();
    ready.sort_unstable();
    ready.into_iter().take(n).map(|(_, i)| i).collect()
}

/// One attempt's hold on a node: counts it in flight, feeds passive health
/// with the outcome, and on release wakes the next request waiting for the
/// pool.
pub struct Slot {
    in_flight: Option<InFlight>,
    node: Arc<Node>,
    pool: Arc<Pool>,
    outlier: Arc<OutlierConfig>,
    queue: Arc<AdmissionQueue>,
}

impl Slot {
    /// Start an attempt on `node` of `route`, which the policy expects to
    /// hold `cached_blocks` leading blocks of the prompt.
    pub fn begin(
        route: &Route,
        node: &Arc<Node>,
        class: &RequestClass,
        cached_blocks: u32,
    ) -> Slot {
        let mut in_flight = node.begin_request_for(class);
        in_flight.expect_cached(cached_blocks);
        Slot {
            in_flight: Some(in_flight),
            node: Arc::clone(node),
            pool: Arc::clone(&route.pool),
            outlier: Arc::clone(&route.outlier),
            queue: Arc::clone(&route.queue),
        }
    }

    /// Start an attempt of the same request on another `node` of the same
    /// pool (the proxy went down the picker's fallback list).
    pub fn begin_on(&self, node: &Arc<Node>, class: &RequestClass) -> Slot {
        Slot {
            in_flight: Some(node.begin_request_for(class)),
            node: Arc::clone(node),
            pool: Arc::clone(&self.pool),
            outlier: Arc::clone(&self.outlier),
            queue: Arc::clone(&self.queue),
        }
    }

    /// The node's counters.
    pub fn load(&self) -> &NodeLoad {
        &self.node.load
    }

    /// A data frame of the node's response went to the client (feeds the
    /// node's TTFT and per-token latency estimates).
    pub fn on_data_frame(&mut self, now: std::time::Instant) {
        if let Some(in_flight) = self.in_flight.as_mut() {
            in_flight.on_data_frame(now);
        }
    }

    /// The node answered well (for outlier detection).
    pub fn success(&self) {
        self.node.load.health.record_success();
    }

    /// The attempt failed at the node.
    pub fn failure(&self, kind: FailureKind) {
        self.node.load.record_failure();
        let ejected = self.node.load.health.record_failure(
            kind,
            &self.outlier,
            &self.pool.nodes,
            health::now_ms(),
        );
        if ejected {
            tracing::warn!(pool = %self.pool.name, node = %self.node.name, ?kind, "node ejected by outlier detection");
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Free the slot first so the woken waiter finds it free.
        self.in_flight.take();
        self.queue.notify_one();
    }
}
