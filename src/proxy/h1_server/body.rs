//! A client's request body as the request path reads it: straight from the
//! client's socket on a plain HTTP/1.1 connection (no task, no channel
//! between the socket and the node's request), or hyper's body on TLS and
//! HTTP/2 connections.
//!
//! The body reads the socket itself while it is being read; what it read
//! past its end (the next, pipelined request) goes back to the connection
//! when it ends, through [`Shared`].

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::io::ReadBuf;
use tokio::net::tcp::OwnedReadHalf;

use crate::proxy::h1::codec::{BodyFraming, Decoded};
use crate::proxy::h1::BoxError;

/// Reads of a body are at least this large.
const READ_SIZE: usize = 16 * 1024;

/// What the connection and its request's body share.
pub struct Shared {
    /// The client socket's read side: read by the body while it is out,
    /// by the connection otherwise (never both; the lock is only held
    /// within a poll). Read through `AsyncRead`, which takes a short read
    /// for a drained socket and saves the `read` that would only say so
    /// (`try_read` made one more per request).
    reader: Mutex<OwnedReadHalf>,
    /// Where the current request's body stands.
    pub body: Mutex<BodyEnd>,
    /// The response head has gone out: no `100 Continue` any more.
    pub responded: AtomicBool,
    /// `listener.send_timeout` (kept here, on the heap, rather than in
    /// the connection's task, whose size every idle connection pays
    /// several times over).
    pub send_timeout: std::time::Duration,
}

/// Where a request body stands, for the connection.
#[derive(Debug, Default)]
pub enum BodyEnd {
    /// Still being read (or waiting to be).
    #[default]
    Reading,
    /// Read to its end; the bytes read past it.
    Done(BytesMut),
    /// Dropped before its end: the connection cannot read another request.
    Abandoned,
}

impl Shared {
    /// A connection's shared state over its read side.
    pub fn new(reader: OwnedReadHalf, send_timeout: std::time::Duration) -> Shared {
        Shared {
            reader: Mutex::new(reader),
            body: Mutex::new(BodyEnd::Done(BytesMut::new())),
            responded: AtomicBool::new(false),
            send_timeout,
        }
    }

    /// Where the body stands, taking the bytes past it if it has ended.
    pub fn take_body_end(&self) -> BodyEnd {
        let mut end = self.body.lock().unwrap_or_else(PoisonError::into_inner);
        match &mut *end {
            BodyEnd::Reading => BodyEnd::Reading,
            BodyEnd::Abandoned => BodyEnd::Abandoned,
            BodyEnd::Done(rest) => BodyEnd::Done(std::mem::take(rest)),
        }
    }

    fn set_body_end(&self, to: BodyEnd) {
        *self.body.lock().unwrap_or_else(PoisonError::into_inner) = to;
    }

    /// Read what the client sent into `buf` (at least `min` bytes of room
    /// made first); `Ok(0)`: it closed.
    pub fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        min: usize,
    ) -> Poll<io::Result<usize>> {
        if buf.capacity() - buf.len() < min / 4 {
            buf.reserve(min);
        }
        let mut reader = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
        tokio_util::io::poll_read_buf(Pin::new(&mut *reader), cx, buf)
    }

    /// Whether the client has sent something (or closed).
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let reader = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
        let stream: &tokio::net::TcpStream = (*reader).as_ref();
        stream.poll_read_ready(cx)
    }

    /// Read what the client sent into `buf`; nothing filled: it closed.
    pub fn poll_read_into(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut reader = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
        tokio::io::AsyncRead::poll_read(Pin::new(&mut *reader), cx, buf)
    }

    /// Write `bytes` without the connection's
    /// writer (for `100 Continue`, before any response); bytes written.
    fn poll_write_interim(&self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        let reader = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
        let stream: &tokio::net::TcpStream = (*reader).as_ref();
        loop {
            ready!(stream.poll_write_ready(cx))?;
            match stream.try_write(bytes) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }
}

/// The answer that lets a client waiting on `Expect: 100-continue` send.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A request body read from a plain HTTP/1.1 connection.
pub struct InBody {
    shared: Arc<Shared>,
    /// Bytes read and not yet handed on (the first come with the head).
    buf: BytesMut,
    framing: BodyFraming,
    /// How much of `100 Continue` is still to be written (`None`: none).
    continue_left: Option<usize>,
    ended: bool,
}

impl InBody {
    /// The body framed by `framing`, whose first bytes are in `buf`.
    pub fn new(
        shared: Arc<Shared>,
        buf: BytesMut,
        framing: BodyFraming,
        expect_continue: bool,
    ) -> InBody {
        shared.set_body_end(BodyEnd::Reading);
        InBody {
            shared,
            // A client that sent body bytes already did not wait.
            continue_left: (expect_continue && buf.is_empty()).then_some(0),
            buf,
            framing,
            ended: false,
        }
    }

    fn end(&mut self) {
        self.ended = true;
        // The buffer goes back whole (what follows the body, and the room
        // for the next request's reads).
        let rest = std::mem::take(&mut self.buf);
        self.shared.set_body_end(BodyEnd::Done(rest));
    }

    /// Write `100 Continue` (once, before the first read that would wait).
    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(at) = self.continue_left {
            if at == CONTINUE.len() || self.shared.responded.load(Relaxed) {
                self.continue_left = None;
                break;
            }
            let n = ready!(self.shared.poll_write_interim(cx, &CONTINUE[at..]))?;
            self.continue_left = Some(at + n);
        }
        Poll::Ready(Ok(()))
    }
}

fn closed_mid_body() -> BoxError {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the client closed the connection before the end of its body",
    )
    .into()
}

impl Body for InBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        loop {
            match this.framing.decode(&mut this.buf) {
                Ok(Decoded::Data(data)) => {
                    this.continue_left = None;
                    // Past what follows the data (a chunk's CRLF, the last
                    // chunk), so a body that has all arrived ends now.
                    if this.framing.settle(&mut this.buf).is_ok() && this.framing.is_done() {
                        this.end();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::End) => {
                    this.end();
                    return Poll::Ready(None);
                }
                Ok(Decoded::More) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
            if let Err(e) = ready!(this.poll_continue(cx)) {
                return Poll::Ready(Some(Err(e.into())));
            }
            match ready!(this.shared.poll_read(cx, &mut this.buf, READ_SIZE)) {
                Ok(0) => return Poll::Ready(Some(Err(closed_mid_body()))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.framing.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            BodyFraming::Length(n) => SizeHint::with_exact(n),
            BodyFraming::Empty => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for InBody {
    fn drop(&mut self) {
        if !self.ended {
            self.shared.set_body_end(BodyEnd::Abandoned);
        }
    }
}

/// A client's request body, whichever side of the gateway read its head.
pub enum ClientBody {
    /// The request has no body.
    Empty,
    /// Read by the gateway's own HTTP/1.1 (plain connections).
    Own(InBody),
    /// Read by hyper (TLS connections, HTTP/2).
    Hyper(hyper::body::Incoming),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::Own(body) => Pin::new(body).poll_frame(cx),
            ClientBody::Hyper(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as BoxError),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::Own(body) => body.is_end_stream(),
            ClientBody::Hyper(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::Own(body) => body.size_hint(),
            ClientBody::Hyper(body) => body.size_hint(),
        }
    }
}
