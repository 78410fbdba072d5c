//! The inference node simulator: an OpenAI-compatible HTTP server in front of
//! a vLLM-style continuous-batching engine with a paged, prefix-cached KV
//! cache. See `docs/simulator.md` for the cost model and its defaults.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use infergate::sim::{SimConfig, SimNode};
//! let node = SimNode::start("sim-0", "127.0.0.1:0".parse().unwrap(), SimConfig::small()).await?;
//! println!("serving on {}", node.addr());
//! node.shutdown().await;
//! # Ok(()) }
//! ```

pub mod config;
mod engine;
mod kv;
pub mod kv_events;
mod lora;
pub mod metrics;
pub mod power;
mod server;
#[cfg(test)]
mod tests;
mod tokenize;
mod validate;

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

pub use config::{Faults, SimConfig};
pub use kv_events::KvEventsConfig;
pub use metrics::SimStats;
pub use power::PowerModel;

use engine::{run_engine, Core};
use server::{handle, Ctx};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Tasks of one life of a node (between start/restart and crash).
struct Running {
    stop: watch::Sender<bool>,
    accept: JoinHandle<()>,
    engine: JoinHandle<()>,
}

impl Running {
    fn launch(name: &str, listener: TcpListener, core: Arc<Core>) -> Running {
        let (stop, stop_rx) = watch::channel(false);
        let engine = tokio::spawn(run_engine(core.clone()));
        let ctx = Arc::new(Ctx::new(name, core));
        let accept = tokio::spawn(accept_loop(listener, ctx, stop_rx));
        Running {
            stop,
            accept,
            engine,
        }
    }

    async fn kill(self) {
        self.stop.send_replace(true);
        self.engine.abort();
        let _ = self.accept.await;
        let _ = self.engine.await;
    }
}

/// Handle to one running simulated node.
pub struct SimNode {
    name: String,
    addr: SocketAddr,
    cfg: SimConfig,
    faults: Arc<Mutex<Faults>>,
    core: Mutex<Arc<Core>>,
    run: tokio::sync::Mutex<Option<Running>>,
    /// The KV event publisher (its sockets outlive engine restarts, as a
    /// new vLLM process binds the same ports again).
    publisher: Option<kv_events::Publisher>,
    tokenizer: Option<Arc<crate::kvindex::PromptTokenizer>>,
}

impl std::fmt::Debug for SimNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimNode")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl SimNode {
    /// Bind `addr` (port 0 picks a free port) and start serving.
    pub async fn start(name: &str, addr: SocketAddr, cfg: SimConfig) -> io::Result<SimNode> {
        let tokenizer = match &cfg.tokenizer {
            Some(path) => {
                use crate::kvindex::{ChatTemplate, PromptTokenizer};
                let path = std::path::Path::new(path);
                let explicit = cfg.chat_template.as_deref().map(std::path::Path::new);
                let template =
                    ChatTemplate::configured(explicit, path).map_err(io::Error::other)?;
                let tokenizer = PromptTokenizer::from_file(path).map_err(io::Error::other)?;
                Some(Arc::new(tokenizer.with_chat_template(template)))
            }
            None => None,
        };
        let publisher = if cfg.kv_events.enabled() {
            Some(kv_events::Publisher::start(&cfg.kv_events).await?)
        } else {
            None
        };
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let faults = Arc::new(Mutex::new(cfg.faults.clone()));
        let core = Core::with_io(
            cfg.clone(),
            faults.clone(),
            publisher.as_ref().map(kv_events::Publisher::sink),
            tokenizer.clone(),
        );
        let running = Running::launch(name, listener, core.clone());
        tracing::debug!(node = name, %addr, "simulated node started");
        Ok(SimNode {
            name: name.to_string(),
            addr,
            cfg,
            faults,
            core: Mutex::new(core),
            run: tokio::sync::Mutex::new(Some(running)),
            publisher,
            tokenizer,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The node's name (also sent as the `x-sim-node` response header).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's configuration.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// The bound KV events endpoint (`tcp://host:port`), when publishing.
    pub fn kv_events_endpoint(&self) -> Option<&str> {
        self.publisher.as_ref().map(|p| p.events.as_str())
    }

    /// The bound KV replay endpoint, when configured.
    pub fn kv_replay_endpoint(&self) -> Option<&str> {
        self.publisher.as_ref().and_then(|p| p.replay.as_deref())
    }

    /// Lose the next `n` KV event batches on the PUB socket (they stay in
    /// the replay buffer): a sequence gap for every subscriber.
    pub fn drop_kv_batches(&self, n: u32) {
        if let Some(p) = &self.publisher {
            p.drop_next(n);
        }
    }

    /// Engine hashes of the blocks the prefix cache holds (tests compare
    /// them with what a subscriber learnt).
    pub fn cached_block_hashes(&self) -> Vec<u64> {
        lock(&self.core).state().cached_hashes()
    }

    /// Snapshot of counters and gauges of the current engine.
    pub fn stats(&self) -> SimStats {
        lock(&self.core).stats(&self.name)
    }

    /// The current faults.
    pub fn faults(&self) -> Faults {
        lock(&self.faults).clone()
    }

    /// Replace the faults (they apply to requests arriving from now on;
    /// `slowdown` from the next engine step). Faults survive a restart.
    pub fn set_faults(&self, f: Faults) {
        lock(&self.core).set_faults(f);
    }

    /// The process died: the listener is closed (connections are refused)
    /// and every open connection and stream is aborted. Idempotent.
    pub async fn crash(&self) {
        let r = self.run.lock().await.take();
        if let Some(r) = r {
            r.kill().await;
            tracing::debug!(node = %self.name, "simulated node crashed");
        }
    }

    /// Listen again on the same address with a fresh engine (empty cache,
    /// counters reset like a new process). Crashes the node first if it runs.
    pub async fn restart(&self) -> io::Result<()> {
        let mut run = self.run.lock().await;
        if let Some(r) = run.take() {
            r.kill().await;
        }
        let listener = TcpListener::bind(self.addr).await?;
        if let Some(p) = &self.publisher {
            p.reset();
        }
        let core = Core::with_io(
            self.cfg.clone(),
            self.faults.clone(),
            self.publisher.as_ref().map(kv_events::Publisher::sink),
            self.tokenizer.clone(),
        );
        *lock(&self.core) = core.clone();
        *run = Some(Running::launch(&self.name, listener, core));
        Ok(())
    }

    /// Stop the node (same as [`SimNode::crash`], consuming the handle).
    pub async fn shutdown(self) {
        self.crash().await;
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        if let Some(r) = self.run.get_mut().take() {
            r.stop.send_replace(true);
            r.accept.abort();
            r.engine.abort();
        }
    }
}

/// Start `count` nodes named `sim-0`, `sim-1`, ... on `host`, node `i` on
/// `base_port + i` (every node on an ephemeral port when `base_port` is 0),
/// with speed factor `cfg.speed * speeds[i]` (`speeds[i]` defaults to 1.0).
pub async fn start_fleet(
    host: IpAddr,
    base_port: u16,
    count: usize,
    cfg: &SimConfig,
    speeds: &[f64],
) -> io::Result<Vec<SimNode>> {
    start_named_fleet(host, base_port, count, cfg, speeds, None).await
}

/// [`start_fleet`] with node names from `name`: `name` itself for a single
/// node, `name-i` for several (`None`: `sim-i`).
pub async fn start_named_fleet(
    host: IpAddr,
    base_port: u16,
    count: usize,
    cfg: &SimConfig,
    speeds: &[f64],
    name: Option<&str>,
) -> io::Result<Vec<SimNode>> {
    let node_name = |i: usize| match name {
        Some(name) if count == 1 => name.to_string(),
        Some(name) => format!("{name}-{i}"),
        None => format!("sim-{i}"),
    };
    let mut nodes = Vec::with_capacity(count);
    for i in 0..count {
        let port = if base_port == 0 {
            Some(0)
        } else {
            u16::try_from(i).ok().and_then(|i| base_port.checked_add(i))
        };
        let res = match port {
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "fleet ports exceed 65535",
            )),
            Some(port) => {
                let mut c = cfg.clone();
                c.speed = cfg.speed * speeds.get(i).copied().unwrap_or(1.0);
                // Like vLLM's data-parallel ranks: node i publishes on the
                // configured port + i.
                c.kv_events.endpoint = kv_events::offset_port(&cfg.kv_events.endpoint, i);
                c.kv_events.replay_endpoint = cfg
                    .kv_events
                    .replay_endpoint
                    .as_deref()
                    .map(|ep| kv_events::offset_port(ep, i));
                SimNode::start(&node_name(i), SocketAddr::new(host, port), c).await
            }
        };
        match res {
            Ok(n) => nodes.push(n),
            Err(e) => {
                for n in nodes {
                    n.shutdown().await;
                }
                return Err(e);
            }
        }
    }
    Ok(nodes)
}

/// Resolves once the node is told to stop (or its handle is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>, stop: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    let mut stop_loop = stop.clone();
    loop {
        tokio::select! {
            _ = stopped(&mut stop_loop) => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    conns.spawn(serve_conn(stream, ctx.clone(), stop.clone()));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.shutdown().await;
}

async fn serve_conn(stream: TcpStream, ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let builder = auto::Builder::new(StopExec(stop.clone()));
    let svc = service_fn(move |req| handle(ctx.clone(), req));
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        r = conn => if let Err(e) = r { tracing::trace!(error = %e, "connection ended") },
        _ = stopped(&mut stop) => {}
    }
}

/// Executor for hyper's HTTP/2 stream tasks that drops them on crash.
#[derive(Clone)]
struct StopExec(watch::Receiver<bool>);

impl<F> hyper::rt::Executor<F> for StopExec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let mut stop = self.0.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = fut => {}
                _ = stopped(&mut stop) => {}
            }
        });
    }
}
