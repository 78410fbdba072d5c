//! Deadlines on client connections, whatever the protocol: a connection
//! must start its first request within `listener.header_timeout` (counted
//! from the accept, not reset by a trickle of bytes, so a silent socket, a
//! slowloris or a half-sent HTTP/2 preface is closed), and a connection
//! with no request in flight is closed after `listener.idle_timeout`
//! without traffic (HTTP/1 keep-alive and idle HTTP/2 sessions alike).
//! A write that waits longer than `listener.send_timeout` for the client
//! to take more fails, so a client that stops reading lets go of its
//! response and node.
//!
//! This layer is under hyper's connections (TLS, HTTP/2): hyper's own
//! `header_read_timeout` starts only once its HTTP/1 parser runs, and
//! HTTP/2 sessions and TLS handshakes have no deadline of their own.
//! Closing is an end of file on the read side: hyper then closes the
//! connection. (Plain HTTP/1.1 connections keep their deadlines in
//! `proxy::h1_server`.)

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
}

impl Activity {
    /// A request starts; it counts until the guard (kept with its
    /// response body) drops.
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        self.started.store(true, Relaxed);
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
    idle: Duration,
    last_activity: Instant,
    first_deadline: Instant,
    timer: Pin<Box<Sleep>>,
    /// The timer was polled since it was last reset (its waker is set).
    timer_registered: bool,
    expired: bool,
    /// How long a write may wait for the client to take more
    /// (`listener.send_timeout`); `None`: as long as it takes.
    send_timeout: Option<Duration>,
    /// When a waiting write gives up; made on the first wait (most
    /// connections never have one).
    send_timer: Option<Pin<Box<Sleep>>>,
    /// A write is waiting and `send_timer` is set for it.
    send_waiting: bool,
}

impl<T> DeadlineIo<T> {
    /// Wrap `inner`: the first request must start within `first`, and the
    /// connection may then sit without a request for `idle`.
    pub fn new(inner: T, activity: Arc<Activity>, first: Duration, idle: Duration) -> Self {
        let now = Instant::now();
        DeadlineIo {
            inner,
            activity,
            idle,
            last_activity: now,
            first_deadline: now + first,
            timer: Box::pin(tokio::time::sleep_until(now + first)),
            timer_registered: false,
            expired: false,
            send_timeout: None,
            send_timer: None,
            send_waiting: false,
        }
    }

    /// Give up a write that waited `timeout` for the client to take more
    /// (from the last write that went through, as nginx's `send_timeout`):
    /// the write fails with `TimedOut`, hyper closes the connection, and
    /// the response and its node are let go. A client that stops reading
    /// an HTTP/2 stream stalls it by flow control instead, which no write
    /// here sees; that case is not covered.
    pub fn with_send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = Some(timeout);
        self
    }

    /// The send timeout set by [`Self::with_send_timeout`].
    pub fn send_timeout(&self) -> Option<Duration> {
        self.send_timeout
    }

    /// Account for a write's outcome: progress ends a wait; a write that
    /// must wait starts one, or fails once it has waited too long.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match result {
            Poll::Ready(Ok(n)) if n > 0 => {
                self.last_activity = Instant::now();
                self.send_waiting = false;
                result
            }
            Poll::Pending => {
                let Some(timeout) = self.send_timeout else {
                    return Poll::Pending;
                };
                if !self.send_waiting {
                    self.send_waiting = true;
                    let at = Instant::now() + timeout;
                    match &mut self.send_timer {
                        Some(timer) => timer.as_mut().reset(at),
                        None => self.send_timer = Some(Box::pin(tokio::time::sleep_until(at))),
                    }
                }
                let expired = self
                    .send_timer
                    .as_mut()
                    .is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
                } else {
                    Poll::Pending
                }
            }
            other => other,
        }
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
        if self.timer.deadline() != close {
            self.timer.as_mut().reset(close);
        }
        self.timer_registered = true;
        if self.timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        self.expired = true;
        true
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for DeadlineIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.last_activity = Instant::now();
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
        this.after_write(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, result)
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

    #[tokio::test(start_paused = true)]
    async fn a_write_the_client_does_not_take_fails_after_the_send_timeout() {
        const SEND: Duration = Duration::from_millis(500);
        let (mut client, server) = tokio::io::duplex(64);
        let activity = Arc::new(Activity::default());
        let _request = activity.begin();
        let mut io = DeadlineIo::new(server, activity, FIRST, IDLE).with_send_timeout(SEND);
        // A client that reads slowly but keeps reading is not cut off:
        // each write that goes through starts the wait again.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            for _ in 0..10 {
                tokio::time::sleep(SEND / 2).await;
                let _ = client.read(&mut buf).await;
            }
            client
        });
        let started = Instant::now();
        let chunk = [b'x'; 64];
        for _ in 0..10 {
            io.write_all(&chunk).await.unwrap();
        }
        assert!(
            started.elapsed() >= SEND * 2,
            "the writes waited for the reader"
        );
        let _client = reader.await.unwrap();
        // Then it stops reading: the next write that waits fails.
        io.write_all(&chunk).await.unwrap();
        let waited = Instant::now();
        let error = tokio::time::timeout(SEND * 4, io.write_all(&chunk))
            .await
            .expect("the waiting write was not given up")
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(waited.elapsed() >= SEND && waited.elapsed() < SEND * 2);
    }
}
