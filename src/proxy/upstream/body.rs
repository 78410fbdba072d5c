//! The body of a node's response as the proxy reads it: from a pooled
//! HTTP/1.1 connection (given back to the pool at the body's end) or from
//! hyper-util's h2c client.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::super::body::BoxError;
use super::super::h1::codec::BodyFraming;
use super::super::h1::node_headers::NodeHeaders;
use super::PooledConn;

/// A node's response body, read as it is polled.
pub enum NodeBody {
    /// From an HTTP/1.1 connection of this thread's pool.
    H1(H1Body),
    /// From hyper-util's client (h2c).
    H2(Incoming),
}

impl NodeBody {
    /// The node's header lines, where they were not parsed into the
    /// response's map (HTTP/1.1 nodes; see `h1::node_headers`).
    pub fn node_headers(&self) -> Option<&NodeHeaders> {
        match self {
            NodeBody::H1(body) => body.headers.as_ref(),
            NodeBody::H2(_) => None,
        }
    }

    /// Take the node's header lines out (to put them in a map).
    pub fn take_node_headers(&mut self) -> Option<NodeHeaders> {
        match self {
            NodeBody::H1(body) => body.headers.take(),
            NodeBody::H2(_) => None,
        }
    }
}

impl Body for NodeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            NodeBody::H1(body) => body.poll_frame(cx),
            NodeBody::H2(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(BoxError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            NodeBody::H1(body) => body.done,
            NodeBody::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            NodeBody::H1(body) => match body.framing {
                _ if body.done => SizeHint::with_exact(0),
                BodyFraming::Length(n) => SizeHint::with_exact(n),
                _ => SizeHint::default(),
            },
            NodeBody::H2(body) => body.size_hint(),
        }
    }
}

/// A response body on an HTTP/1.1 connection. The connection goes back to
/// the pool the moment the body's end has been read (before any further
/// poll: a sized body is not polled past its last byte); a body dropped
/// before its end closes it.
pub struct H1Body {
    conn: Option<PooledConn>,
    framing: BodyFraming,
    /// The connection can carry another request after this body.
    reuse: bool,
    /// The end was read (or the body failed).
    done: bool,
    /// The response's header lines, until they are written or put in a
    /// map. They share the allocation of the connection's read buffer
    /// (the head was split off it), so both client sides take them out
    /// before the body is read: a stream does not hold them.
    headers: Option<NodeHeaders>,
}

impl H1Body {
    /// The body framed by `framing` on `conn`; `reuse`: the connection
    /// may carry another request after it.
    pub(super) fn new(
        conn: PooledConn,
        framing: BodyFraming,
        reuse: bool,
        headers: NodeHeaders,
    ) -> H1Body {
        let mut body = H1Body {
            conn: Some(conn),
            framing,
            reuse,
            done: false,
            headers: Some(headers),
        };
        if framing.is_done() {
            // Nothing to read: the connection is free already.
            body.finish();
        }
        body
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(pooled) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        match pooled.conn.poll_body(&mut self.framing, cx) {
            Poll::Ready(Some(Ok(data))) => {
                if self.framing.is_done() {
                    self.finish();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(None) => {
                self.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                // Out of step with the node: the connection is closed.
                self.conn = None;
                self.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// The body ended: keep the connection if it can carry another request.
    fn finish(&mut self) {
        self.done = true;
        if let Some(pooled) = self.conn.take() {
            if self.reuse && pooled.conn.is_clean() {
                pooled.release();
            }
        }
    }
}
