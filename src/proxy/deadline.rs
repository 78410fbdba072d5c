//! Deadlines on client connections, whatever the protocol: a connection
//! must start its first request within `listener.header_timeout` (counted
//! from the accept, not reset by a trickle of bytes, so a silent socket, a
//! slowloris or a half-sent HTTP/2 preface is closed), and a connection
//! with no request in flight is closed after `listener.idle_timeout`
//! without traffic (HTTP/1 keep-alive and idle HTTP/2 sessions alike).
//!
//! An idle HTTP/1 connection can also be *parked* ([`DeadlineIo::park_after`]):
//! once it has had no request in flight and no byte of a new one for that
//! long, reads end as if the client had closed, so hyper stops while idle
//! and hands the socket back (`proxy::worker` then waits for the next
//! request without hyper's buffers) — [`DeadlineIo::take_parked`] tells
//! that apart from a real close.
//!
//! hyper's own `header_read_timeout` starts only once its HTTP/1 parser
//! runs; the protocol sniffing before it (HTTP/1 or an HTTP/2 preface) and
//! HTTP/2 sessions have no deadline, hence this layer under both. Closing
//! is an end of file on the read side: hyper then closes the connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Requests of one connection, seen by the service and its IO.
#[derive(Debug, Default)]
pub struct Activity {
    in_flight: AtomicUsize,
    started: AtomicBool,
    /// Requests begun so far (tells whether bytes read while idle have
    /// become a request yet).
    begun: AtomicUsize,
}

impl Activity {
    /// A request starts; it counts until the guard (kept with its
    /// response body) drops.
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        self.started.store(true, Relaxed);
        self.begun.fetch_add(1, Relaxed);
        self.in_flight.fetch_add(1, Relaxed);
        RequestGuard(Arc::clone(self))
    }

    fn idle(&self) -> bool {
        self.in_flight.load(Relaxed) == 0
    }
}

/// One request in flight on a connection.
#[derive(Debug)]
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// A response body that keeps its request counted until it is done.
pub struct Tracked<B> {
    inner: B,
    _guard: RequestGuard,
}

impl<B> Tracked<B> {
    /// Keep `guard` until `inner` ends or is dropped.
    pub fn new(inner: B, guard: RequestGuard) -> Tracked<B> {
        Tracked {
            inner,
            _guard: guard,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A client connection's IO with the deadlines of the module docs.
pub struct DeadlineIo<T> {
    inner: T,
    activity: Arc<Activity>,
    first: Duration,
    idle: Duration,
    last_activity: Instant,
    first_deadline: Instant,
    timer: Pin<Box<Sleep>>,
    /// The timer was polled since it was last reset (its waker is set).
    timer_registered: bool,
    expired: bool,
    /// Park after this long idle (`None`: never).
    park_after: Option<Duration>,
    /// Reads end until [`DeadlineIo::take_parked`].
    parked: bool,
    /// Bytes were read while no request was in flight, when
    /// `activity.begun` was this: part of a request hyper has not begun
    /// yet, so the connection must not park under it.
    read_while_idle: Option<usize>,
}

impl<T> DeadlineIo<T> {
    /// Wrap `inner`: the first request must start within `first`, and the
    /// connection may then sit without a request for `idle`.
    pub fn new(inner: T, activity: Arc<Activity>, first: Duration, idle: Duration) -> Self {
        let now = Instant::now();
        DeadlineIo {
            inner,
            activity,
            first,
            idle,
            last_activity: now,
            first_deadline: now + first,
            timer: Box::pin(tokio::time::sleep_until(now + first)),
            timer_registered: false,
            expired: false,
            park_after: None,
            parked: false,
            read_while_idle: None,
        }
    }

    /// Park the connection (see the module docs) once it has been idle
    /// for `after`.
    pub fn park_after(&mut self, after: Duration) {
        self.park_after = Some(after);
    }

    /// Whether reads ended because the connection parked (not a close, a
    /// deadline or an error); ends the parking, so reads work again.
    pub fn take_parked(&mut self) -> bool {
        std::mem::take(&mut self.parked)
    }

    /// The inner IO.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Whether the connection must close now; arms the timer otherwise.
    /// Called when a read would wait, so once per wait, not per byte.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.expired {
            return true;
        }
        let started = self.activity.started.load(Relaxed);
        if started && !self.activity.idle() {
            // A request is in flight: its own timeouts apply. The timer
            // stays armed at most one idle period ahead so that, once the
            // request ends, this read is woken to start the idle clock;
            // it is moved only when it has run out (not on every chunk of
            // a streamed response), and polled only when not yet
            // registered (the waker is always this connection's task).
            let now = Instant::now();
            if self.timer.deadline() <= now {
                self.timer.as_mut().reset(now + self.idle);
                self.timer_registered = false;
            }
            if !self.timer_registered {
                let _ = self.timer.as_mut().poll(cx);
                self.timer_registered = true;
            }
            return false;
        }
        let close = if started {
            self.last_activity + self.idle
        } else {
            // No request since the accept: the first deadline holds,
            // whatever bytes trickled in.
            self.first_deadline
        };
        let begun = self.activity.begun.load(Relaxed);
        let head_pending = self.read_while_idle == Some(begun);
        let park = self
            .park_after
            .filter(|_| !head_pending)
            .map(|after| self.last_activity + after)
            .filter(|&at| at < close);
        let due = park.unwrap_or(close);
        if self.timer.deadline() != due {
            self.timer.as_mut().reset(due);
        }
        self.timer_registered = true;
        if self.timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        if park.is_some() {
            self.parked = true;
        } else {
            self.expired = true;
        }
        true
    }
}

impl DeadlineIo<tokio::net::TcpStream> {
    /// Wait until the client sends something (or closes) with no buffer
    /// of ours: `false` when the connection's deadline passed first. That
    /// is the first-request deadline, or for a parked connection the
    /// shorter of the idle timeout and the header timeout counted from
    /// its last traffic: hyper's header timer, which this connection
    /// would have had unparked, runs from the end of the last response.
    pub async fn readable(&mut self) -> bool {
        if self.expired {
            return false;
        }
        let due = if self.activity.started.load(Relaxed) {
            self.last_activity + self.idle.min(self.first)
        } else {
            self.first_deadline
        };
        self.timer.as_mut().reset(due);
        self.timer_registered = false;
        tokio::select! {
            ready = self.inner.readable() => ready.is_ok(),
            () = self.timer.as_mut() => {
                self.expired = true;
                false
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for DeadlineIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.parked {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.last_activity = Instant::now();
                    if this.activity.idle() {
                        this.read_while_idle = Some(this.activity.begun.load(Relaxed));
                    }
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                if this.poll_expired(cx) {
                    // End of file: hyper closes the connection.
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for DeadlineIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.last_activity = Instant::now();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.last_activity = Instant::now();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const FIRST: Duration = Duration::from_millis(100);
    const IDLE: Duration = Duration::from_millis(300);

    #[tokio::test(start_paused = true)]
    async fn no_first_request_in_time_is_end_of_file_even_with_a_trickle() {
        let (client, server) = tokio::io::duplex(64);
        let activity = Arc::new(Activity::default());
        let mut io = DeadlineIo::new(server, activity, FIRST, IDLE);
        let started = Instant::now();
        let trickle = tokio::spawn(async move {
            let mut client = client;
            for _ in 0..10 {
                let _ = client.write_all(b"P").await;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            client
        });
        let mut buf = [0u8; 16];
        loop {
            let n = io.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
        }
        assert_eq!(started.elapsed(), FIRST, "closed at the first deadline");
        drop(trickle);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_counts_only_without_a_request_in_flight() {
        let (mut client, server) = tokio::io::duplex(64);
        let activity = Arc::new(Activity::default());
        let mut io = DeadlineIo::new(server, Arc::clone(&activity), FIRST, IDLE);
        client.write_all(b"GET").await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(io.read(&mut buf).await.unwrap(), 3);
        let guard = activity.begin();
        // A request in flight for 10 idle periods: the connection stays.
        let read = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let n = io.read(&mut buf).await.unwrap();
            (n, Instant::now())
        });
        tokio::time::sleep(IDLE * 10).await;
        assert!(!read.is_finished());
        let released = Instant::now();
        drop(guard);
        let (n, closed) = read.await.unwrap();
        assert_eq!(n, 0, "end of file once idle");
        assert!(closed - released <= IDLE * 2, "{:?}", closed - released);
    }

    const PARK: Duration = Duration::from_millis(100);

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_parks_and_reads_again_afterwards() {
        let (mut client, server) = tokio::io::duplex(64);
        let activity = Arc::new(Activity::default());
        let mut io = DeadlineIo::new(server, Arc::clone(&activity), FIRST, IDLE);
        io.park_after(PARK);
        client.write_all(b"GET").await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(io.read(&mut buf).await.unwrap(), 3);
        drop(activity.begin());
        let idle_from = Instant::now();
        // No request in flight and no new byte: reads end at PARK, as
        // parked (not closed), and work again once taken back.
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        assert_eq!(idle_from.elapsed(), PARK);
        assert!(io.take_parked());
        assert!(!io.take_parked(), "taken once");
        client.write_all(b"GET").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn part_of_a_request_keeps_the_connection_from_parking() {
        let (mut client, server) = tokio::io::duplex(64);
        let activity = Arc::new(Activity::default());
        let mut io = DeadlineIo::new(server, Arc::clone(&activity), FIRST, IDLE);
        io.park_after(PARK);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        drop(activity.begin());
        // The first bytes of the next request, which hyper holds until
        // the rest comes: parking would cut it; the idle close is the
        // limit.
        client.write_all(b"GET / HT").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 8);
        let from = Instant::now();
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        assert_eq!(from.elapsed(), IDLE);
        assert!(!io.take_parked(), "closed, not parked");
    }

    #[tokio::test(start_paused = true)]
    async fn a_parked_connection_waits_no_longer_than_the_header_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let activity = Arc::new(Activity::default());
        let mut io = DeadlineIo::new(server, Arc::clone(&activity), FIRST, IDLE);
        drop(activity.begin());
        // Bytes come: ready at once.
        client.write_all(b"GET").await.unwrap();
        assert!(io.readable().await);
        let mut buf = [0u8; 16];
        assert_eq!(io.read(&mut buf).await.unwrap(), 3);
        // Nothing comes: given up at the header timeout (shorter than the
        // idle one here), counted from the last traffic.
        let from = Instant::now();
        assert!(!io.readable().await);
        assert_eq!(from.elapsed(), FIRST);
        assert!(!io.readable().await, "stays expired");
    }
}
