//! The data plane: accept client connections, route and forward requests.
//!
//! [`Gateway`] holds the current [`RouteTable`] behind an `ArcSwap`: each
//! request loads the table once and keeps it for its whole life, so a reload
//! ([`Gateway::reload`]) never disturbs requests in flight. [`serve`] runs the
//! accept loop with a connection limit and graceful drain.

mod attempt;
pub mod body;
mod client_body;
pub mod deadline;
mod drain;
pub mod errors;
mod fd_limit;
mod forward;
mod h1;
pub mod h1_server;
pub mod headers;
pub mod heap_release;
mod kept_box;
pub mod models;
pub mod pick;
pub mod priority;
pub mod probe;
mod queue;
pub mod retry;
mod select;
mod spare;
mod stall;
pub mod table;
mod table_cell;
mod upstream;
mod worker;
pub use h1_server::PARK_AFTER;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::{Config, ConfigError};
use crate::discovery::{self, DiscoveryConfig, FoundNode, SourceHandle};
use crate::fleet::LoadRegistry;
use crate::health;
use crate::telemetry::unix_ms;
pub use select::Slot;
pub use table::RouteTable;
pub use upstream::MAX_IDLE_PER_NODE;

/// `Box::pin(make())`, the future made in its box. `Box::pin` builds the
/// future on the stack and copies it into its allocation: the whole type,
/// the size of its largest state (a request's is 6.2 KB, about 620
/// instructions of `memcpy`), although only the captured arguments are
/// set. Allocated first and made by `make` after, it is written straight
/// into the box (checked in the LTO build's code; a future passed in by
/// value was still copied).
pub(crate) fn boxed_in_place<F: Future>(make: impl FnOnce() -> F) -> std::pin::Pin<Box<F>> {
    let slot = Box::new_uninit();
    Box::into_pin(Box::write(slot, make()))
}

/// The gateway's shared state.
pub struct Gateway {
    table: table_cell::TableCell,
    loads: LoadRegistry,
    queues: queue::QueueRegistry,
    indexes: table::IndexRegistry,
    /// Active health checks of the running config, by what they check;
    /// kept across reloads that leave a pool's checks and nodes as they
    /// were, so their rise/fall counts are not reset by every change.
    checks: Mutex<Vec<(CheckKey, health::CheckHandle)>>,
    /// Request telemetry, rolling window and alerts.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    /// What the last config reloads did, for the admin API and dashboard.
    config_status: Mutex<ConfigStatus>,
    /// Models the nodes say they serve, for `GET /v1/models`.
    pub models: models::ModelCatalog,
    /// The loaded config, the nodes discovery found and the sources
    /// running; also what serializes every table swap.
    discovery: Mutex<Discovered>,
    /// This gateway, for the discovery sources' reports.
    me: Weak<Gateway>,
}

/// The config as loaded and what discovery added to it.
struct Discovered {
    /// The running config as loaded (discovered pools without nodes).
    base: Config,
    /// The last set each discovered pool's source reported.
    found: HashMap<String, Vec<FoundNode>>,
    /// Running sources by pool and settings.
    sources: Vec<(String, DiscoveryConfig, SourceHandle)>,
}

/// What a pool's active checks check: the pool, its nodes' names and
/// addresses, and the check settings.
type CheckKey = (String, Vec<(String, String)>, health::ActiveCheckConfig);

/// The running config's version and the outcome of the last reload.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ConfigStatus {
    /// Counts configs applied since start (1 = the initial one).
    pub version: u64,
    /// When the running config was applied (ms since the Unix epoch).
    pub applied_unix_ms: u64,
    /// Why the last attempted reload was refused, if it was (cleared by
    /// the next successful one). The running config stays in force.
    pub last_error: Option<String>,
    /// When that refusal happened (ms since the Unix epoch).
    pub last_error_unix_ms: Option<u64>,
}

impl Gateway {
    /// A gateway running `config`.
    pub fn new(config: &Config) -> Result<Arc<Gateway>, ConfigError> {
        let loads = LoadRegistry::default();
        let queues = queue::QueueRegistry::default();
        let telemetry = crate::telemetry::Telemetry::new(config);
        let indexes = table::IndexRegistry::default();
        let table = Arc::new(RouteTable::build_with(
            config, &loads, &queues, &indexes, &telemetry,
        )?);
        let gateway = Arc::new_cyclic(|me| Gateway {
            me: me.clone(),
            discovery: Mutex::new(Discovered {
                base: config.clone(),
                found: HashMap::new(),
                sources: Vec::new(),
            }),
            table: table_cell::TableCell::new(Arc::clone(&table)),
            loads,
            queues,
            indexes,
            checks: Mutex::new(Vec::new()),
            config_status: Mutex::new(ConfigStatus {
                version: 1,
                applied_unix_ms: unix_ms(),
                ..ConfigStatus::default()
            }),
            telemetry,
            models: models::ModelCatalog::default(),
        });
        gateway.apply(&table, config);
        if tokio::runtime::Handle::try_current().is_ok() {
            spawn_telemetry_ticker(Arc::downgrade(&gateway));
        }
        gateway.start_sources(&mut gateway.lock_discovery());
        Ok(gateway)
    }

    fn lock_discovery(&self) -> std::sync::MutexGuard<'_, Discovered> {
        self.discovery.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Build and swap in the table of `config` (the loaded config with the
    /// discovered nodes in), then apply its node state and checks.
    fn swap(&self, config: &Config) -> Result<(), ConfigError> {
        let table = Arc::new(RouteTable::build_with(
            config,
            &self.loads,
            &self.queues,
            &self.indexes,
            &self.telemetry,
        )?);
        self.table.store(Arc::clone(&table));
        self.apply(&table, config);
        Ok(())
    }

    /// Start the discovery sources `state.base` asks for that are not
    /// running with the same settings; stop the others. Pools no longer
    /// discovered forget their found nodes; a pool whose source changed
    /// keeps its last set until the new source reports.
    fn start_sources(&self, state: &mut Discovered) {
        let wanted: Vec<(String, DiscoveryConfig)> = state
            .base
            .pools
            .iter()
            .filter_map(|p| Some((p.name.clone(), p.discovery.clone()?)))
            .collect();
        state
            .found
            .retain(|pool, _| wanted.iter().any(|(p, _)| p == pool));
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let mut previous = std::mem::take(&mut state.sources);
        for (pool, settings) in wanted {
            let source = match previous
                .iter()
                .position(|(p, s, _)| *p == pool && *s == settings)
            {
                Some(i) => previous.swap_remove(i).2,
                None => {
                    let me = self.me.clone();
                    let name = pool.clone();
                    discovery::spawn(
                        &pool,
                        &settings,
                        Arc::new(move |nodes| {
                            if let Some(gateway) = me.upgrade() {
                                gateway.discovered(&name, nodes);
                            }
                        }),
                    )
                }
            };
            state.sources.push((pool, settings, source));
        }
    }

    /// A discovery source's report: `pool` now has `nodes`. Builds a new
    /// table like a reload (node state carries over by name; new nodes
    /// slow-start; removed ones finish what they have in flight).
    pub fn discovered(&self, pool: &str, nodes: Vec<FoundNode>) {
        let mut state = self.lock_discovery();
        if !state
            .base
            .pools
            .iter()
            .any(|p| p.name == pool && p.discovery.is_some())
        {
            return;
        }
        let old = state.found.get(pool).cloned();
        if old.as_ref() == Some(&nodes) {
            return;
        }
        let (added, removed) = discovery::difference(old.as_deref().unwrap_or_default(), &nodes);
        let count = nodes.len();
        state.found.insert(pool.to_string(), nodes);
        let config = discovery::effective(&state.base, &state.found);
        match self.swap(&config) {
            Ok(()) => tracing::info!(
                pool,
                nodes = count,
                ?added,
                ?removed,
                "discovered nodes changed"
            ),
            Err(e) => {
                tracing::warn!(pool, error = %e, "discovered nodes refused; keeping the previous set");
                match old {
                    Some(old) => state.found.insert(pool.to_string(), old),
                    None => state.found.remove(pool),
                };
            }
        }
    }

    /// Apply what a config says about node state (draining) and start the
    /// active health checks of pools whose checks or nodes changed (others
    /// keep running, counts and all).
    fn apply(&self, table: &RouteTable, config: &Config) {
        for (pool, pool_config) in table.pools.iter().zip(&config.pools) {
            // Discovered nodes have no `draining` in the file: a drain set
            // at run time stays through the source's updates.
            for (node, node_config) in pool.nodes.iter().zip(&pool_config.nodes) {
                if node_config.source.is_none() {
                    node.load.health.set_draining(node_config.draining);
                }
            }
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let mut running = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        let mut previous = std::mem::take(&mut *running);
        for (pool, pool_config) in table.pools.iter().zip(&config.pools) {
            let Some(active) = &pool_config.health else {
                continue;
            };
            let key: CheckKey = (
                pool.name.clone(),
                pool.nodes
                    .iter()
                    .map(|n| (n.name.clone(), n.addr.to_string()))
                    .collect(),
                active.clone(),
            );
            let handle = match previous.iter().position(|(k, _)| *k == key) {
                // Same checks of the same nodes: keep them running (their
                // nodes' health lives in the shared load registry anyway).
                Some(i) => previous.swap_remove(i).1,
                None => health::spawn_checks(Arc::clone(pool), active.clone()),
            };
            running.push((key, handle));
        }
        // Dropping the handles left over stops checks no longer configured.
        drop(running);
        drop(previous);
    }

    /// Set or clear draining on a node of the running config: a draining
    /// node gets no new requests and finishes those in flight. Returns false
    /// when there is no such node. Not persisted: the next reload applies
    /// the file's `draining`; the config API (`console::ConfigStore`)
    /// drains through the file so it lasts.
    pub fn set_draining(&self, pool: &str, node: &str, draining: bool) -> bool {
        let table = self.table();
        let Some(node) = table
            .pools
            .iter()
            .filter(|p| p.name == pool)
            .flat_map(|p| p.nodes.iter())
            .find(|n| n.name == node)
        else {
            return false;
        };
        node.load.health.set_draining(draining);
        tracing::info!(pool, node = %node.name, draining, "drain state changed");
        true
    }

    /// Nodes in the running table, over every pool (the readiness probe:
    /// a gateway with none can route nothing).
    pub fn known_nodes(&self) -> usize {
        self.table.load().pools.iter().map(|p| p.nodes.len()).sum()
    }

    /// The current routing table.
    pub fn table(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// The current routing table for a request on a worker thread: held
    /// through the thread's own handle (`table_cell`), so requests on two
    /// workers do not write one count.
    pub(crate) fn table_snapshot(&self) -> table_cell::Snapshot {
        self.table.snapshot()
    }

    /// Told of every table swap (workers then let go of their handle).
    pub(crate) fn table_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.table.changes()
    }

    /// Replace the running config. On error nothing changes. Listener
    /// settings take effect only at the next start.
    pub fn reload(&self, config: &Config) -> Result<(), ConfigError> {
        let mut state = self.lock_discovery();
        self.swap(&discovery::effective(config, &state.found))?;
        state.base = config.clone();
        self.start_sources(&mut state);
        drop(state);
        self.telemetry.alerts.reconfigure(&config.alerts);
        let version = {
            let mut status = self.config_status.lock().unwrap_or_else(|p| p.into_inner());
            status.version += 1;
            status.applied_unix_ms = unix_ms();
            status.last_error = None;
            status.last_error_unix_ms = None;
            status.version
        };
        tracing::info!(version, "config reloaded");
        Ok(())
    }

    /// Record that a reload was refused (the running config stays).
    pub fn note_reload_refused(&self, why: &str) {
        let mut status = self.config_status.lock().unwrap_or_else(|p| p.into_inner());
        status.last_error = Some(why.to_string());
        status.last_error_unix_ms = Some(unix_ms());
    }

    /// The running config's version and the last reload's outcome.
    pub fn config_status(&self) -> ConfigStatus {
        self.config_status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Aborts a background task when dropped (the task lives as long as the
/// server).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Run the once-a-second telemetry ticker for `gateway` until it is
/// dropped: fold counters into the window, evaluate alert rules, publish
/// the snapshot (over the running table's [`crate::telemetry::FleetView`]).
fn spawn_telemetry_ticker(gateway: std::sync::Weak<Gateway>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(gateway) = gateway.upgrade() else {
                return;
            };
            let telemetry = Arc::clone(&gateway.telemetry);
            let table = gateway.table();
            drop(gateway);
            telemetry.window.tick(&telemetry, &table.fleet_view());
        }
    })
}

/// A gateway with one route to one node that is never reached
/// (127.0.0.1:9), for unit tests that need a route table.
#[cfg(test)]
pub(crate) fn one_node_gateway() -> Arc<Gateway> {
    let text = "[listener]\naddr = \"127.0.0.1:0\"\n[[pools]]\nname = \"p\"\n[[pools.nodes]]\nname = \"n\"\naddr = \"127.0.0.1:9\"\n[[routes]]\nname = \"r\"\npool = \"p\"\npolicy = \"least_outstanding\"\n";
    let config = Config::from_toml(text).unwrap();
    Gateway::new(&config).unwrap()
}

/// Bind the listener address of the gateway's config, with its backlog.
pub async fn bind(gateway: &Gateway) -> io::Result<TcpListener> {
    let listener = gateway.table().listener.clone();
    let addr: SocketAddr = listener
        .addr
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "listener.addr is not IP:port"))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(listener.backlog)
}

/// Serve client connections on `listener` until `shutdown` resolves, then
/// stop accepting and let open requests finish for up to `drain`.
///
/// This task only accepts; each connection is handed to one of
/// `listener.workers` threads, each running its own single-threaded runtime
/// with its own upstream connection pools, so a request never hops threads
/// (thread-per-core, as Envoy and nginx workers do).
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> io::Result<()> {
    let settings = gateway.table().listener.clone();
    fd_limit::check(settings.max_connections);
    let builder = connection_builder(&settings);
    let count = match settings.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let (tls, _cert_reloader) = match &settings.tls {
        Some(tls) => {
            let (config, cert) = crate::tls::server_config(tls, settings.http2)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            // Certificate files are looked at every few seconds; a renewed
            // pair takes over for new handshakes, open connections stay.
            let reloader = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(crate::tls::RELOAD_EVERY).await;
                    cert.reload_if_changed();
                }
            });
            (
                Some(tokio_rustls::TlsAcceptor::from(config)),
                Some(AbortOnDrop(reloader)),
            )
        }
        None => (None, None),
    };
    let mut workers = worker::Workers::start(count, Arc::new(builder), tls, Arc::clone(&gateway))?;

    let permits = Arc::new(Semaphore::new(settings.max_connections));
    // Open connections, and those of them holding HTTP buffers (not parked).
    let counts = {
        let (permits, max) = (Arc::clone(&permits), settings.max_connections);
        let telemetry = Arc::clone(&gateway.telemetry);
        move || {
            let open = max.saturating_sub(permits.available_permits());
            let parked = telemetry
                .parked
                .now
                .load(std::sync::atomic::Ordering::Relaxed);
            (open, open.saturating_sub(parked))
        }
    };
    let peaks = Arc::new(heap_release::Peaks::default());
    let _heap_release = AbortOnDrop(tokio::spawn(heap_release::run(
        Arc::clone(&peaks),
        counts.clone(),
    )));
    // Drained also when this future is dropped (its task aborted): the
    // gateway is gone then, and its connections must not wait for it.
    let draining = drain::StartOnDrop::default();
    tokio::pin!(shutdown);
    let mut next_worker = 0usize;
    let (mut accept_errors, mut last_accept_warning) = (0u64, None);
    loop {
        // Take a connection slot before accepting: over the limit, clients
        // wait in the kernel's accept backlog instead of being served badly.
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning, and
                    // say so once a second, not fifty times.
                    accept_errors += 1;
                    if last_accept_warning.is_none_or(|at: std::time::Instant| at.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(error = %e, failures = accept_errors, "accept failed");
                        last_accept_warning = Some(std::time::Instant::now());
                        accept_errors = 0;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        peaks.saw(counts());
        let _ = stream.set_nodelay(true);
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "could not hand a connection to a worker");
                continue;
            }
        };
        workers.dispatch(
            next_worker,
            worker::Job {
                stream,
                peer,
                permit,
                draining: Arc::clone(&draining.0),
            },
        );
        next_worker = next_worker.wrapping_add(1);
    }
    drop(listener);
    tracing::info!("listener closed; draining open connections");
    workers.close();
    // Every connection finishes its request in flight and closes; each
    // gives its slot back when it has.
    draining.0.start();
    let every_slot = u32::try_from(settings.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(drain, permits.acquire_many(every_slot))
        .await
        .is_err()
    {
        tracing::warn!("drain deadline reached with connections still open");
    }
    workers.stop().await;
    Ok(())
}

fn connection_builder(settings: &crate::config::ListenerConfig) -> worker::Protocols {
    worker::Protocols {
        auto: auto_builder(settings),
        http2: settings.http2,
    }
}

/// HTTP/1 and HTTP/2 by the client's first bytes (or HTTP/1 only).
fn auto_builder(settings: &crate::config::ListenerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // HTTP/1 here is TLS connections' (plain ones have `h1_server`).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        .max_buf_size(settings.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        // Pings find peers that vanished with streams open; idle sessions
        // are closed by `deadline` after `idle_timeout`.
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20));
    if settings.http2 {
        builder
    } else {
        builder.http1_only()
    }
}
