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
    // The TLS path is boxed: a connection's task is as large as its
    // largest state, and TLS state is kilobytes (6.8 KB per connection
    // with it inline, 3.1 KB without) that a plain connection would hold
    // for as long as it stays open, idle or not.
    match tls {
        None => serve_io(stream, peer, activity, false, builder, gateway, watcher).await,
        Some(acceptor) => {
            Box::pin(serve_tls(
                acceptor, stream, peer, activity, builder, gateway, watcher,
            ))
            .await;
        }
    }
    drop(permit);
}

/// [`serve_io`] after a TLS handshake.
async fn serve_tls(
    acceptor: TlsAcceptor,
    stream: DeadlineIo<tokio::net::TcpStream>,
    peer: SocketAddr,
    activity: Arc<Activity>,
    builder: auto::Builder<TokioExecutor>,
    gateway: Arc<Gateway>,
    watcher: Watcher,
) {
    match acceptor.accept(stream).await {
        Ok(stream) => serve_io(stream, peer, activity, true, builder, gateway, watcher).await,
        Err(e) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
    }
}

/// The service answering one client connection's requests.
fn client_service(
    activity: Arc<Activity>,
    over_tls: bool,
    gateway: Arc<Gateway>,
    peer: SocketAddr,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<Tracked<super::body::ResponseBody>>,
    Error = Infallible,
    Future = ResponseFuture,
> + Clone {
    service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        let guard = activity.begin();
        if over_tls {
            req.extensions_mut().insert(OverTls);
        }
        let gateway = Arc::clone(&gateway);
        // Boxed: hyper keeps a box the size of the service's future for
        // every client connection, idle or not, and the request's future
        // is about 8 KB; boxed, an idle connection holds a pointer and the
        // kilobytes exist only while a request is in flight. The request's
        // future is made inside the box, on the first poll: made before
        // and moved in, it was copied twice (callgrind: +15.6k
        // instructions of memcpy per request).
        Box::pin(async move {
            let response = forward::handle(gateway, peer, req).await?;
            Ok::<_, Infallible>(response.map(|body| Tracked::new(body, guard)))
        }) as ResponseFuture
    })
}

/// A request's future, boxed (see [`client_service`]).
type ResponseFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<http::Response<Tracked<super::body::ResponseBody>>, Infallible>,
            > + Send,
    >,
>;

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
    let service = client_service(activity, over_tls, gateway, peer);
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(error = %e, %peer, "client connection ended with error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<S: hyper::service::Service<http::Request<hyper::body::Incoming>>>(
        _: &S,
    ) -> usize {
        std::mem::size_of::<S::Future>()
    }

    /// hyper keeps a box of the service's future size for every client
    /// connection, idle ones too: it must be a pointer, not the request's
    /// whole future (8 KB; 15,000 idle connections measured 40.0 KB each
    /// with it, 25.7 KB without, `bench/scale.sh`).
    #[test]
    fn an_idle_connection_holds_no_request_future() {
        let gateway = crate::proxy::one_node_gateway();
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let service = client_service(Arc::default(), false, gateway, peer);
        assert!(future_size(&service) <= 16, "{}", future_size(&service));
    }

    /// A connection's task is allocated at the size of its largest state
    /// for as long as the connection stays open: the TLS handshake and
    /// TLS stream are boxed, so a plain connection does not carry them
    /// (6,792 bytes per connection with them inline).
    #[test]
    fn a_plain_connection_task_carries_no_tls_state() {
        fn size<A, B, C, D, R>(_: fn(A, B, C, D) -> R) -> usize {
            std::mem::size_of::<R>()
        }
        let task = size(
            serve_connection
                as fn(Job, auto::Builder<TokioExecutor>, Option<TlsAcceptor>, Arc<Gateway>) -> _,
        );
        assert!(task <= 3584, "a connection's task is {task} bytes");
    }
}
