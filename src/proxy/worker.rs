//! Worker threads: each runs a single-threaded tokio runtime and serves the
//! client connections the accept loop hands it, start to finish.
//!
//! A plain HTTP/1 connection that has sat idle for [`PARK_AFTER`] is
//! *parked*: hyper stops between two requests and hands the socket back,
//! and the task waits for the client's next bytes holding no HTTP state.
//! hyper keeps an 8 KB read and an 8 KB write buffer per connection for as
//! long as it serves it, idle or not (16 of an idle connection's 19.7 KB);
//! nginx likewise frees a keep-alive connection's buffers while it waits.
//! Connections that are busy never park, so requests pay nothing for it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::deadline::{Activity, DeadlineIo, Tracked};
use super::drain::Drain;
use super::{forward, Gateway};

/// One accepted connection on its way to a worker.
pub struct Job {
    /// The client socket (non-blocking), registered with no runtime yet.
    pub stream: std::net::TcpStream,
    /// Client address.
    pub peer: SocketAddr,
    /// The connection's slot under `listener.max_connections`.
    pub permit: OwnedSemaphorePermit,
    /// Starts when the gateway shuts down: the connection finishes the
    /// request in flight and closes.
    pub draining: Arc<Drain>,
}

/// How a listener's connections speak HTTP.
#[derive(Clone)]
pub struct Protocols {
    /// HTTP/1 and, when enabled, HTTP/2 by prior knowledge, told apart by
    /// the client's first bytes (TLS connections and h2c clients).
    pub auto: auto::Builder<TokioExecutor>,
    /// HTTP/1 alone, for plain connections, which can park.
    pub http1: hyper::server::conn::http1::Builder,
    /// Whether HTTP/2 is served.
    pub http2: bool,
}

/// How long a plain HTTP/1 connection sits without a request before it
/// parks (see the module docs). Longer than the gap between a busy
/// client's requests, so only idle connections pay for taking up their
/// buffers again.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

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
        builder: Arc<Protocols>,
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
            let builder = Arc::clone(&builder);
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
    builder: Arc<Protocols>,
    tls: Option<TlsAcceptor>,
    gateway: Arc<Gateway>,
    mut aborted: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            job = jobs.recv() => match job {
                Some(job) => {
                    connections.spawn(serve_connection(job, Arc::clone(&builder), tls.clone(), Arc::clone(&gateway)));
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
    protocols: Arc<Protocols>,
    tls: Option<TlsAcceptor>,
    gateway: Arc<Gateway>,
) {
    let Job {
        stream,
        peer,
        permit,
        draining,
    } = job;
    let stream = match tokio::net::TcpStream::from_std(stream) {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!(error = %e, "could not register a client connection");
            return;
        }
    };
    // The two timeouts only: a copy of the listener's config would be
    // held, with its strings, for as long as the connection is open.
    let (first, idle) = {
        let table = gateway.table();
        (table.listener.header_timeout, table.listener.idle_timeout)
    };
    let activity = Arc::new(Activity::default());
    // The deadlines sit under TLS too: a handshake that stalls is a
    // connection that never starts a request.
    let stream = DeadlineIo::new(stream, Arc::clone(&activity), first, idle);
    // The TLS path is boxed: a connection's task is as large as its
    // largest state, and TLS state is kilobytes (6.8 KB per connection
    // with it inline, 3.1 KB without) that a plain connection would hold
    // for as long as it stays open, idle or not.
    match tls {
        None => serve_plain(stream, peer, activity, &protocols, gateway, draining).await,
        Some(acceptor) => {
            let auto = protocols.auto.clone();
            Box::pin(serve_tls(
                acceptor, stream, peer, activity, auto, gateway, draining,
            ))
            .await;
        }
    }
    drop(permit);
}

/// A plain connection: HTTP/1 requests served by hyper while the client is
/// active, parked without hyper in between (see the module docs). HTTP/2
/// by prior knowledge goes to [`serve_io`] for good.
async fn serve_plain(
    mut io: DeadlineIo<TcpStream>,
    peer: SocketAddr,
    activity: Arc<Activity>,
    protocols: &Protocols,
    gateway: Arc<Gateway>,
    draining: Arc<Drain>,
) {
    io.park_after(PARK_AFTER);
    let mut parked = Parked(None);
    loop {
        // No buffer of ours while waiting for the (next) request.
        let ready = tokio::select! {
            ready = io.readable() => ready,
            () = draining.wait() => false,
        };
        parked.end();
        let next = if ready {
            first_bytes(io.get_ref(), protocols.http2).await
        } else {
            FirstBytes::Closed
        };
        match next {
            FirstBytes::Http1 => {}
            FirstBytes::MaybeHttp2 => {
                let auto = protocols.auto.clone();
                Box::pin(serve_io(io, peer, activity, false, auto, gateway, draining)).await;
                return;
            }
            // A deadline, the drain, or the client closed (often a parked
            // connection): no hyper connection, and its buffers, just to
            // read the end.
            FirstBytes::Closed => {
                let _ = io.shutdown().await;
                return;
            }
        }
        let service = client_service(Arc::clone(&activity), false, Arc::clone(&gateway), peer);
        // Boxed: hyper's connection state exists only while it serves.
        let mut conn = Box::new(protocols.http1.serve_connection(TokioIo::new(io), service));
        let ended = tokio::select! {
            ended = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => ended,
            () = draining.wait() => {
                std::pin::Pin::new(&mut *conn).graceful_shutdown();
                std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)).await
            }
        };
        let parts = conn.into_parts();
        io = parts.io.into_inner();
        if let Err(e) = ended {
            tracing::debug!(error = %e, %peer, "client connection ended with error");
            return;
        }
        // Anything but parking (the client closed, asked to close, or a
        // deadline passed): close as hyper would have.
        if !io.take_parked() || !parts.read_buf.is_empty() {
            let _ = io.shutdown().await;
            return;
        }
        parked = Parked::start(&gateway);
    }
}

/// Counts a connection as parked in the telemetry while it is.
struct Parked(Option<Arc<Gateway>>);

impl Parked {
    fn start(gateway: &Arc<Gateway>) -> Parked {
        let counts = &gateway.telemetry.parked;
        counts.now.fetch_add(1, Relaxed);
        counts.total.fetch_add(1, Relaxed);
        Parked(Some(Arc::clone(gateway)))
    }

    fn end(&mut self) {
        if let Some(gateway) = self.0.take() {
            gateway.telemetry.parked.now.fetch_sub(1, Relaxed);
        }
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.end();
    }
}

/// What a connection's next bytes are.
enum FirstBytes {
    Http1,
    /// The HTTP/2 connection preface, or too few bytes to tell.
    MaybeHttp2,
    /// End of file or an error.
    Closed,
}

/// Peek at the client's next bytes; `http2`: whether the listener serves
/// HTTP/2 by prior knowledge.
async fn first_bytes(stream: &TcpStream, http2: bool) -> FirstBytes {
    const PREFACE: &[u8] = b"PRI ";
    let mut head = [0u8; 4];
    match stream.peek(&mut head).await {
        Ok(0) | Err(_) => FirstBytes::Closed,
        Ok(n) if http2 && head[..n] == PREFACE[..n] => FirstBytes::MaybeHttp2,
        Ok(_) => FirstBytes::Http1,
    }
}

/// [`serve_io`] after a TLS handshake.
async fn serve_tls(
    acceptor: TlsAcceptor,
    stream: DeadlineIo<tokio::net::TcpStream>,
    peer: SocketAddr,
    activity: Arc<Activity>,
    builder: auto::Builder<TokioExecutor>,
    gateway: Arc<Gateway>,
    draining: Arc<Drain>,
) {
    match acceptor.accept(stream).await {
        Ok(stream) => serve_io(stream, peer, activity, true, builder, gateway, draining).await,
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
    draining: Arc<Drain>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = client_service(activity, over_tls, gateway, peer);
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = draining.wait() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = ended {
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
    /// for as long as the connection stays open, parked or not: the TLS
    /// handshake and stream, HTTP/2 and hyper's HTTP/1 connection are
    /// boxed, so a parked plain connection does not carry them (6,792
    /// bytes per connection with TLS inline, 3,088 with hyper's
    /// connection inline, 1,272 now).
    #[test]
    fn a_plain_connection_task_carries_no_tls_state() {
        fn size<A, B, C, D, R>(_: fn(A, B, C, D) -> R) -> usize {
            std::mem::size_of::<R>()
        }
        let task = size(
            serve_connection as fn(Job, Arc<Protocols>, Option<TlsAcceptor>, Arc<Gateway>) -> _,
        );
        assert!(task <= 1536, "a connection's task is {task} bytes");
    }

    /// A connection's next bytes decide how it is served, and an end of
    /// file (a parked connection's client closing) needs no HTTP at all.
    #[tokio::test]
    async fn first_bytes_tell_http1_http2_and_a_close_apart() {
        use tokio::io::AsyncWriteExt;
        async fn after(sent: &[u8], close: bool, http2: bool) -> FirstBytes {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut client = TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (server, _) = listener.accept().await.unwrap();
            client.write_all(sent).await.unwrap();
            if close {
                client.shutdown().await.unwrap();
            }
            first_bytes(&server, http2).await
        }
        assert!(matches!(
            after(b"GET / HTTP/1.1\r\n", false, true).await,
            FirstBytes::Http1
        ));
        assert!(matches!(
            after(b"PRI * HTTP/2.0\r\n", false, true).await,
            FirstBytes::MaybeHttp2
        ));
        assert!(matches!(
            after(b"P", false, true).await,
            FirstBytes::MaybeHttp2
        ));
        assert!(matches!(
            after(b"PRI * HTTP/2.0\r\n", false, false).await,
            FirstBytes::Http1
        ));
        assert!(matches!(after(b"", true, true).await, FirstBytes::Closed));
    }
}
