//! Worker threads: each runs a single-threaded tokio runtime and serves the
//! client connections the accept loop hands it, start to finish: plain
//! HTTP/1.1 with the gateway's own code (`proxy::h1_server`, which also
//! parks idle connections without buffers), TLS and HTTP/2 with hyper.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::deadline::{Activity, DeadlineIo, Tracked};
use super::drain::Drain;
use super::h1_server::{self, body::ClientBody};
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
    /// Whether HTTP/2 is served.
    pub http2: bool,
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
                .spawn(move || {
                    crate::telemetry::series::set_worker(i);
                    runtime.block_on(run(rx, builder, tls, gateway, aborted))
                })?;
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
    let mut table_changes = gateway.table_changes();
    let sweep = tokio::time::sleep(super::upstream::SWEEP_EVERY);
    tokio::pin!(sweep);
    loop {
        tokio::select! {
            // Idle node connections are also swept without traffic.
            () = &mut sweep => {
                super::upstream::sweep_idle();
                sweep.as_mut().reset(tokio::time::Instant::now() + super::upstream::SWEEP_EVERY);
            }
            job = jobs.recv() => match job {
                Some(job) => {
                    // One clock reading per poll of the connection (`clock`).
                    connections.spawn(crate::clock::PerPoll::new(serve_connection(job, Arc::clone(&builder), tls.clone(), Arc::clone(&gateway))));
                }
                None => break,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            // An idle worker lets go of a swapped-out table at once.
            Ok(()) = table_changes.changed() => super::table_cell::forget_kept(),
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
    // The TLS path is boxed: a connection's task is as large as its
    // largest state, and TLS state is kilobytes (6.8 KB per connection
    // with it inline, 3.1 KB without) that a plain connection would hold
    // for as long as it stays open, idle or not.
    match tls {
        None => serve_plain(stream, peer, &protocols, gateway, draining).await,
        Some(acceptor) => {
            // The two timeouts only: a copy of the listener's config
            // would be held, with its strings, for as long as the
            // connection is open.
            let (first, idle, send) = {
                let table = gateway.table();
                (
                    table.listener.header_timeout,
                    table.listener.idle_timeout,
                    table.listener.send_timeout,
                )
            };
            let activity = Arc::new(Activity::default());
            // The deadlines sit under TLS too: a handshake that stalls
            // is a connection that never starts a request, and TLS
            // records that wait for the client are a write that waits.
            let stream =
                DeadlineIo::new(stream, Arc::clone(&activity), first, idle).with_send_timeout(send);
            let auto = protocols.auto.clone();
            super::boxed_in_place(move || {
                serve_tls(acceptor, stream, peer, activity, auto, gateway, draining)
            })
            .await;
        }
    }
    drop(permit);
}

/// A plain connection: HTTP/1.1 served by the gateway's own code
/// (`proxy::h1_server`); HTTP/2 by prior knowledge goes to hyper
/// ([`serve_io`]), told apart by the client's first bytes.
async fn serve_plain(
    stream: TcpStream,
    peer: SocketAddr,
    protocols: &Protocols,
    gateway: Arc<Gateway>,
    draining: Arc<Drain>,
) {
    let accepted = tokio::time::Instant::now();
    let limits = {
        let table = gateway.table();
        h1_server::Limits {
            header_timeout: table.listener.header_timeout,
            idle_timeout: table.listener.idle_timeout,
            send_timeout: table.listener.send_timeout,
            max_head: table.listener.max_header_bytes.max(8192),
        }
    };
    if protocols.http2 {
        // The first bytes, within the first request's deadline.
        let next = tokio::select! {
            next = first_bytes(&stream, true) => next,
            () = tokio::time::sleep_until(accepted + limits.header_timeout) => FirstBytes::Closed,
            () = draining.wait() => FirstBytes::Closed,
        };
        match next {
            FirstBytes::Http1 => {}
            FirstBytes::MaybeHttp2 => {
                let activity = Arc::new(Activity::default());
                let io = DeadlineIo::new(
                    stream,
                    Arc::clone(&activity),
                    limits.header_timeout.saturating_sub(accepted.elapsed()),
                    limits.idle_timeout,
                )
                .with_send_timeout(limits.send_timeout);
                let auto = protocols.auto.clone();
                super::boxed_in_place(move || {
                    serve_io(
                        io,
                        peer,
                        activity,
                        ConnSettings {
                            over_tls: false,
                            send_timeout: Some(limits.send_timeout),
                        },
                        auto,
                        gateway,
                        draining,
                    )
                })
                .await;
                return;
            }
            FirstBytes::Closed => return,
        }
    }
    h1_server::serve(stream, accepted, peer, limits, gateway, draining).await;
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
    let send_timeout = stream.send_timeout();
    match acceptor.accept(stream).await {
        Ok(stream) => {
            let settings = ConnSettings {
                over_tls: true,
                send_timeout,
            };
            serve_io(stream, peer, activity, settings, builder, gateway, draining).await
        }
        Err(e) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
    }
}

/// The service answering one client connection's requests.
fn client_service(
    activity: Arc<Activity>,
    settings: ConnSettings,
    gateway: Arc<Gateway>,
    peer: SocketAddr,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<Tracked<super::body::ResponseBody>>,
    Error = Infallible,
    Future = ResponseFuture,
> + Clone {
    service_fn(move |req: http::Request<hyper::body::Incoming>| {
        // HTTP/2 streams are polled only while the client's window has
        // room: their bodies watch for a client that stops taking data.
        let stall_after = settings
            .send_timeout
            .filter(|_| req.version() == http::Version::HTTP_2);
        let mut req = req.map(ClientBody::Hyper);
        let guard = activity.begin();
        if settings.over_tls {
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
        super::boxed_in_place(move || async move {
            let mut response =
                forward::handle(&gateway, peer, req, None, std::time::Instant::now()).await?;
            // hyper writes headers from the map only.
            if let Some(lines) = response.body_mut().take_node_headers() {
                lines.append_to(response.headers_mut());
            }
            Ok::<_, Infallible>(
                response.map(|body| Tracked::new(body.watched_for_stalls(stall_after), guard)),
            )
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

/// What a hyper-served connection's requests need to know about it.
#[derive(Debug, Clone, Copy)]
struct ConnSettings {
    /// Requests are marked as having come over TLS.
    over_tls: bool,
    /// `listener.send_timeout`, also per HTTP/2 stream ([`super::stall`]).
    send_timeout: Option<Duration>,
}

async fn serve_io<I>(
    io: I,
    peer: SocketAddr,
    activity: Arc<Activity>,
    settings: ConnSettings,
    builder: auto::Builder<TokioExecutor>,
    gateway: Arc<Gateway>,
    draining: Arc<Drain>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = client_service(activity, settings, gateway, peer);
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
        let settings = ConnSettings {
            over_tls: false,
            send_timeout: Some(Duration::from_secs(60)),
        };
        let service = client_service(Arc::default(), settings, gateway, peer);
        assert!(future_size(&service) <= 16, "{}", future_size(&service));
    }

    /// A connection's task is allocated at the size of its largest state
    /// for as long as the connection stays open, parked or not: the TLS
    /// handshake and stream, HTTP/2 and a plain connection's request
    /// state are boxed, so an idle plain connection does not carry them
    /// (6,792 bytes per connection with TLS inline, 3,088 with hyper's
    /// HTTP/1 connection inline, 1,272 with it boxed; with the own
    /// HTTP/1.1 server 2,248 with a request's state inline, 1,432 after;
    /// 1,512 with `send_timeout` and its state).
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
