//! Worker threads: each runs a single-threaded tokio runtime and serves the
//! client connections the accept loop hands it, start to finish.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::deadline::{Activity, DeadlineIo, Tracked};
use super::{forward, Gateway};

/// One accepted connection on its way to a worker.
pub struct Job {
    /// The client socket (non-blocking), registered with no runtime yet.
    pub stream: std::net::TcpStream,
    /// Client address.
    pub peer: SocketAddr,
    /// The connection's slot under `listener.max_connections`.
    pub permit: OwnedSemaphorePermit,
    /// Lets the accept loop drain this connection on shutdown.
    pub watcher: Watcher,
}

/// The worker threads.
pub struct Workers {
    senders: Vec<mpsc::UnboundedSender<Job>>,
    abort: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Start `count` worker threads.
    pub fn start(
        count: usize,
        builder: auto::Builder<TokioExecutor>,
        tls: Option<TlsAcceptor>,
        gateway: Arc<Gateway>,
    ) -> std::io::Result<Workers> {
        let (abort, aborted) = watch::channel(false);
        let mut senders = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for i in 0..count.max(1) {
            let (tx, rx) = mpsc::unbounded_channel();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let builder = builder.clone();
            let tls = tls.clone();
            let gateway = Arc::clone(&gateway);
            let aborted = aborted.clone();
            let thread = std::thread::Builder::new()
                .name(format!("infergate-worker-{i}"))
                .spawn(move || runtime.block_on(run(rx, builder, tls, gateway, aborted)))?;
            senders.push(tx);
            threads.push(thread);
        }
        Ok(Workers {
            senders,
            abort,
            threads,
        })
    }

    /// Hand a connection to worker `index` (modulo the worker count).
    pub fn dispatch(&self, index: usize, job: Job) {
        if let Some(sender) = self.senders.get(index % self.senders.len().max(1)) {
            // A closed worker drops the job, closing the connection.
            let _ = sender.send(job);
        }
    }

    /// No more connections will come; workers exit once theirs have ended.
    pub fn close(&mut self) {
        self.senders.clear();
    }

    /// Abort whatever is still open and wait for the threads to exit.
    pub async fn stop(self) {
        let _ = self.abort.send(true);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

async fn run(
    mut jobs: mpsc::UnboundedReceiver<Job>,
    builder: auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    gateway: Arc<Gateway>,
    mut aborted: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            job = jobs.recv() => match job {
                Some(job) => {
                    connections.spawn(serve_connection(job, builder.clone(), tls.clone(), Arc::clone(&gateway)));
                }
                None => break,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = aborted.changed() => break,
        }
    }
    tokio::select! {
        () = async { while connections.join_next().await.is_some() {} } => {}
        _ = aborted.wait_for(|a| *a) => connections.abort_all(),
    }
}

/// Marks requests that came over TLS (for `X-Forwarded-Proto`).
#[derive(Debug, Clone, Copy)]
pub struct OverTls;

async fn serve_connection(
    job: Job,
    builder: auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    gateway: Arc<Gateway>,
) {
    let Job {
        stream,
        peer,
        permit,
        watcher,
    } = job;
    let stream = match tokio::net::TcpStream::from_std(stream) {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!(error = %e, "could not register a client connection");
            return;
        }
    };
    let listener = gateway.table().listener.clone();
    let activity = Arc::new(Activity::default());
    // The deadlines sit under TLS too: a handshake that stalls is a
    // connection that never starts a request.
    let stream = DeadlineIo::new(
        stream,
        Arc::clone(&activity),
        listener.header_timeout,
        listener.idle_timeout,
    );
    match tls {
        None => serve_io(stream, peer, activity, false, builder, gateway, watcher).await,
        Some(acceptor) => match acceptor.accept(stream).await {
            Ok(stream) => serve_io(stream, peer, activity, true, builder, gateway, watcher).await,
            Err(e) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
        },
    }
    drop(permit);
}

async fn serve_io<I>(
    io: I,
    peer: SocketAddr,
    activity: Arc<Activity>,
    over_tls: bool,
    builder: auto::Builder<TokioExecutor>,
    gateway: Arc<Gateway>,
    watcher: Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        let guard = activity.begin();
        if over_tls {
            req.extensions_mut().insert(OverTls);
        }
        let handled = forward::handle(Arc::clone(&gateway), peer, req);
        async move {
            let response = handled.await?;
            Ok::<_, Infallible>(response.map(|body| Tracked::new(body, guard)))
        }
    });
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(error = %e, %peer, "client connection ended with error");
    }
}
