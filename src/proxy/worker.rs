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
            let gateway = Arc::clone(&gateway);
            let aborted = aborted.clone();
            let thread = std::thread::Builder::new()
                .name(format!("infergate-worker-{i}"))
                .spawn(move || runtime.block_on(run(rx, builder, gateway, aborted)))?;
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
    gateway: Arc<Gateway>,
    mut aborted: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            job = jobs.recv() => match job {
                Some(job) => {
                    connections.spawn(serve_connection(job, builder.clone(), Arc::clone(&gateway)));
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

async fn serve_connection(job: Job, builder: auto::Builder<TokioExecutor>, gateway: Arc<Gateway>) {
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
    let stream = DeadlineIo::new(
        stream,
        Arc::clone(&activity),
        listener.header_timeout,
        listener.idle_timeout,
    );
    let service = service_fn(move |req| {
        let guard = activity.begin();
        let handled = forward::handle(Arc::clone(&gateway), peer, req);
        async move {
            let response = handled.await?;
            Ok::<_, Infallible>(response.map(|body| Tracked::new(body, guard)))
        }
    });
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .into_owned();
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(error = %e, %peer, "client connection ended with error");
    }
    drop(permit);
}
