//! The data plane: accept client connections, route and forward requests.
//!
//! [`Gateway`] holds the current [`RouteTable`] behind an `ArcSwap`: each
//! request loads the table once and keeps it for its whole life, so a reload
//! ([`Gateway::reload`]) never disturbs requests in flight. [`serve`] runs the
//! accept loop with a connection limit and graceful drain.

pub mod body;
pub mod errors;
mod forward;
pub mod headers;
pub mod table;
mod upstream;
mod worker;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::{Config, ConfigError};
use crate::fleet::LoadRegistry;
pub use table::RouteTable;

/// The gateway's shared state.
pub struct Gateway {
    table: ArcSwap<RouteTable>,
    loads: LoadRegistry,
}

impl Gateway {
    /// A gateway running `config`.
    pub fn new(config: &Config) -> Result<Arc<Gateway>, ConfigError> {
        let loads = LoadRegistry::default();
        let table = RouteTable::build(config, &loads)?;
        Ok(Arc::new(Gateway {
            table: ArcSwap::from_pointee(table),
            loads,
        }))
    }

    /// The current routing table.
    pub fn table(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// Replace the running config. On error nothing changes. Listener
    /// settings take effect only at the next start.
    pub fn reload(&self, config: &Config) -> Result<(), ConfigError> {
        let table = RouteTable::build(config, &self.loads)?;
        self.table.store(Arc::new(table));
        tracing::info!("config reloaded");
        Ok(())
    }
}

/// Bind the listener address of the gateway's config.
pub async fn bind(gateway: &Gateway) -> io::Result<TcpListener> {
    let addr: SocketAddr =
        gateway.table().listener.addr.parse().map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "listener.addr is not IP:port")
        })?;
    TcpListener::bind(addr).await
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
    let builder = connection_builder(&settings);
    let count = match settings.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut workers = worker::Workers::start(count, builder, Arc::clone(&gateway))?;

    let permits = Arc::new(Semaphore::new(settings.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    let mut next_worker = 0usize;
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
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
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
                watcher: graceful.watcher(),
            },
        );
        next_worker = next_worker.wrapping_add(1);
    }
    drop(listener);
    tracing::info!("listener closed; draining open connections");
    workers.close();
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain deadline reached with connections still open");
    }
    workers.stop().await;
    Ok(())
}

fn connection_builder(settings: &crate::config::ListenerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
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
        .max_concurrent_streams(256);
    if settings.http2 {
        builder
    } else {
        builder.http1_only()
    }
}
