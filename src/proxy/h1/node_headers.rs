//! A node's response header lines kept as they came, so that an HTTP/1.1
//! client of an HTTP/1.1 node gets them without a header map in between:
//! turning each line into a `HeaderName` and `HeaderValue`, hashing them
//! into a map, stripping the hop-by-hop ones and encoding them again was
//! about a tenth of a small request's instructions (callgrind). What the
//! gateway needs from the lines is read once, while the head is parsed:
//! which are forwarded (not hop-by-hop, not framing, not named by
//! `Connection`), the declared length, whether a `Date` is among them, the
//! content type. The forwarded lines are then written as a few runs of the
//! node's own bytes. Clients served through hyper (HTTP/2, TLS) get them
//! as a map ([`NodeHeaders::append_to`]).

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::codec::{named_by_connection, Span, MAX_HEADERS};
use crate::ascii_case::eq_lower;
use crate::proxy::headers::REQUEST_ID;

/// Runs of forwarded lines kept as offsets; a head needing more (many
/// lines dropped between kept ones) has its forwarded lines copied into
/// one run.
const RUNS: usize = 4;

// Offsets into a head are kept as `u16`: a head is at most `READ_MAX`
// bytes, and written again (bare LF lines) at most 2 bytes a line longer.
const _: () = assert!(super::READ_MAX + 2 * MAX_HEADERS < u16::MAX as usize);

/// A node's response header lines and what the gateway read from them.
#[derive(Debug, Default)]
pub struct NodeHeaders {
    /// The bytes the runs and the content type point into: the node's
    /// head as it came, or its forwarded lines written again.
    bytes: Bytes,
    /// The forwarded lines: `runs[..count]` ranges of whole lines (each
    /// ending in CRLF) in `bytes`.
    runs: [(u16, u16); RUNS],
    count: u8,
    /// The `Content-Length` the node declared. Its line is not forwarded:
    /// the client's framing is written by whoever frames the body.
    length: Option<u64>,
    /// A forwarded `Date` line is among them.
    has_date: bool,
    /// Where the `Content-Type` value lies in `bytes`.
    content_type: Option<(u16, u16)>,
}

/// One header line.
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    /// The name as the node wrote it.
    pub name: &'a [u8],
    /// The value without the whitespace around it.
    pub value: &'a [u8],
    /// The whole line with its CRLF, as the node wrote it.
    pub raw: &'a [u8],
}

impl NodeHeaders {
    /// The lines of a parsed head: `head` holds the node's bytes, `spans`
    /// where each header lies in them, in order, and `kinds` what each
    /// header's name is. `connection_names_headers`: a `Connection`
    /// header lists other headers, which are then not forwarded either;
    /// `length`: the length the framing headers declared.
    pub(super) fn new(
        head: Bytes,
        spans: &[Span],
        kinds: &[Name],
        connection_names_headers: bool,
        length: Option<u64>,
    ) -> NodeHeaders {
        let text = |(at, len): (u32, u32)| &head[at as usize..(at + len) as usize];
        let mut skip = 0u128;
        if connection_names_headers {
            skip |= named_by_connection(&head, spans, |i| kinds[i] == Name::Connection);
        }
        let mut has_date = false;
        let mut content_type = None;
        for (i, (&(_, _, value, value_len), kind)) in spans.iter().zip(kinds).enumerate() {
            if skip & (1 << i) != 0 {
                continue;
            }
            match kind {
                // The framing is the client side's to write; the gateway
                // sets its own request id on every response.
                Name::Connection
                | Name::TransferEncoding
                | Name::ContentLength
                | Name::HopByHop
                | Name::RequestId => skip |= 1 << i,
                Name::Date => has_date = true,
                Name::ContentType => content_type = Some((value as u16, value_len as u16)),
                Name::Other => {}
            }
        }
        let mut lines = NodeHeaders {
            length,
            has_date,
            content_type,
            ..NodeHeaders::default()
        };
        // Each line runs from its name to the next line's name; the last
        // to the empty line ending the head.
        let crlf_end = head
            .len()
            .checked_sub(2)
            .filter(|_| head.ends_with(b"\r\n\r\n"));
        let line_end = |i: usize| match spans.get(i + 1) {
            Some(next) => Some(next.0 as usize),
            None => crlf_end,
        };
        let mut fits = true;
        for (i, &(start, ..)) in spans.iter().enumerate() {
            if skip & (1 << i) != 0 {
                continue;
            }
            let Some(end) = line_end(i) else {
                fits = false;
                break;
            };
            if end < 2 || &head[end - 2..end] != b"\r\n" {
                // A bare LF ends the line (RFC 9112 lets a recipient accept
                // it; a sender must not write it).
                fits = false;
                break;
            }
            let (start, end) = (start as u16, end as u16);
            match lines.count as usize {
                n if n > 0 && lines.runs[n - 1].1 == start => lines.runs[n - 1].1 = end,
                n if n < RUNS => {
                    lines.runs[n] = (start, end);
                    lines.count += 1;
                }
                _ => {
                    fits = false;
                    break;
                }
            }
        }
        if fits {
            lines.bytes = head;
            return lines;
        }
        // The forwarded lines written again, in one run.
        let mut out = BytesMut::with_capacity(head.len());
        for (i, &(name, name_len, value, value_len)) in spans.iter().enumerate() {
            if skip & (1 << i) != 0 {
                continue;
            }
            out.put_slice(text((name, name_len)));
            out.put_slice(b": ");
            if lines
                .content_type
                .is_some_and(|(at, _)| u32::from(at) == value)
            {
                lines.content_type = Some((out.len() as u16, value_len as u16));
            }
            out.put_slice(text((value, value_len)));
            out.put_slice(b"\r\n");
        }
        lines.runs[0] = (0, out.len() as u16);
        lines.count = u8::from(!out.is_empty());
        lines.bytes = out.freeze();
        lines
    }

    /// The forwarded lines' bytes, as runs of whole lines.
    fn runs(&self) -> impl Iterator<Item = &[u8]> {
        self.runs[..self.count as usize]
            .iter()
            .map(|&(start, end)| &self.bytes[start as usize..end as usize])
    }

    /// The forwarded lines, one by one.
    pub fn forwarded(&self) -> impl Iterator<Item = Line<'_>> {
        self.runs().flat_map(|run| {
            let mut rest = run;
            std::iter::from_fn(move || {
                if rest.is_empty() {
                    return None;
                }
                let end = memchr::memchr(b'\n', rest).map_or(rest.len(), |at| at + 1);
                let (raw, tail) = rest.split_at(end);
                rest = tail;
                let colon = memchr::memchr(b':', raw).unwrap_or(raw.len());
                let name = &raw[..colon];
                let value = raw.get(colon + 1..).unwrap_or_default().trim_ascii();
                Some(Line { name, value, raw })
            })
        })
    }

    /// Write the forwarded lines to `out`, except those whose name `map`
    /// has (the gateway's own headers replace a node's, as inserting them
    /// into the node's map did). The request id, on every response, was
    /// dropped from the lines already: a map holding only it (most
    /// responses) lets the lines go as runs.
    pub fn write(&self, map: &HeaderMap, out: &mut BytesMut) {
        if !map.keys().all(|own| own == REQUEST_ID) {
            for line in self.forwarded() {
                if !overridden(map, line.name) {
                    out.put_slice(line.raw);
                }
            }
        } else {
            for run in self.runs() {
                out.put_slice(run);
            }
        }
    }

    /// The `Content-Type` the node sent.
    pub fn content_type(&self) -> Option<&[u8]> {
        self.content_type
            .map(|(at, len)| &self.bytes[at as usize..(at + len) as usize])
    }

    /// The `Content-Length` the node declared.
    pub fn length(&self) -> Option<u64> {
        self.length
    }

    /// A `Date` line is forwarded.
    pub fn has_date(&self) -> bool {
        self.has_date
    }

    /// Bytes of the forwarded lines (room to reserve when writing them).
    pub fn len(&self) -> usize {
        self.runs[..self.count as usize]
            .iter()
            .map(|&(start, end)| (end - start) as usize)
            .sum()
    }

    /// No line is forwarded.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Add the forwarded lines to `map`, except those whose name `map`
    /// has already (see [`write`](Self::write): the request id's lines
    /// are gone, so most maps give no name to check). Values are slices
    /// of the node's bytes, not copies.
    pub fn append_to(self, map: &mut HeaderMap) {
        let own: Vec<HeaderName> = map.keys().filter(|&k| k != REQUEST_ID).cloned().collect();
        for line in self.forwarded() {
            let Ok(name) = HeaderName::from_bytes(line.name) else {
                continue;
            };
            if own.contains(&name) {
                continue;
            }
            let value = self.bytes.slice_ref(line.value);
            if let Ok(value) = HeaderValue::from_maybe_shared(value) {
                map.append(name, value);
            }
        }
    }
}

/// Whether `name` is one of `map`'s.
fn overridden(map: &HeaderMap, name: &[u8]) -> bool {
    map.keys()
        .any(|own| eq_lower(name, own.as_str().as_bytes()))
}

/// What a header's name is, as far as forwarding a response goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Name {
    Connection,
    TransferEncoding,
    ContentLength,
    /// Another fixed hop-by-hop header.
    HopByHop,
    RequestId,
    Date,
    ContentType,
    #[default]
    Other,
}

impl Name {
    /// The kind of `name`, told apart by length first (most names
    /// compare with nothing).
    pub fn of(name: &[u8]) -> Name {
        let is = |known: &[u8]| eq_lower(name, known);
        match name.len() {
            2 if is(b"te") => Name::HopByHop,
            4 if is(b"date") => Name::Date,
            7 if is(b"upgrade") || is(b"trailer") => Name::HopByHop,
            10 if is(b"connection") => Name::Connection,
            10 if is(b"keep-alive") => Name::HopByHop,
            12 if is(b"content-type") => Name::ContentType,
            12 if is(b"x-request-id") => Name::RequestId,
            14 if is(b"content-length") => Name::ContentLength,
            16 if is(b"proxy-connection") => Name::HopByHop,
            17 if is(b"transfer-encoding") => Name::TransferEncoding,
            18 if is(b"proxy-authenticate") => Name::HopByHop,
            19 if is(b"proxy-authorization") => Name::HopByHop,
            _ => Name::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::h1::codec::parse_head;
    use http::Method;

    fn lines(text: &str) -> NodeHeaders {
        parse_head(&mut BytesMut::from(text), &Method::POST)
            .unwrap()
            .unwrap()
            .headers
    }

    fn written(headers: &NodeHeaders, map: &HeaderMap) -> String {
        let mut out = BytesMut::new();
        headers.write(map, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn lines_pass_as_written_less_hop_by_hop_and_framing() {
        let h = lines(
            "HTTP/1.1 200 OK\r\nServer: x\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\
             Keep-Alive: timeout=5\r\nX-Two:  a b \r\nDate: Sun, 06 Dec 2026 12:00:00 GMT\r\n\
             content-type: text/event-stream\r\n\r\nhello",
        );
        assert_eq!(
            written(&h, &HeaderMap::new()),
            "Server: x\r\nX-Two:  a b \r\nDate: Sun, 06 Dec 2026 12:00:00 GMT\r\n\
             content-type: text/event-stream\r\n"
        );
        assert_eq!(h.length(), Some(5));
        assert!(h.has_date());
        assert_eq!(h.content_type(), Some(&b"text/event-stream"[..]));
        let values: Vec<_> = h.forwarded().map(|l| l.value).collect();
        assert_eq!(values[1], b"a b");
        assert_eq!(h.len(), written(&h, &HeaderMap::new()).len());
    }

    #[test]
    fn every_hop_by_hop_name_is_known_in_any_case() {
        for name in crate::proxy::headers::HOP_BY_HOP_NAMES {
            let upper = name.to_ascii_uppercase();
            assert_ne!(Name::of(upper.as_bytes()), Name::Other, "{name}");
            assert_ne!(Name::of(name.as_bytes()), Name::Date, "{name}");
        }
        assert_eq!(Name::of(b"X-Request-ID"), Name::RequestId);
        assert_eq!(Name::of(b"Content-Typo"), Name::Other);
    }

    #[test]
    fn headers_the_connection_header_names_are_not_forwarded() {
        let h = lines(
            "HTTP/1.1 200 OK\r\nX-A: 1\r\nConnection: close, x-a, Date\r\nx-b: 2\r\n\
             Date: d\r\ncontent-length: 0\r\n\r\n",
        );
        assert_eq!(written(&h, &HeaderMap::new()), "x-b: 2\r\n");
        assert!(!h.has_date());
    }

    #[test]
    fn lines_dropped_between_many_kept_ones_are_copied_out() {
        let h = lines(
            "HTTP/1.1 200 OK\r\na: 1\r\nte: x\r\nb: 2\r\nte: x\r\nc: 3\r\nte: x\r\nd: 4\r\n\
             te: x\r\ne: 5\r\ncontent-type: t\r\n\r\n",
        );
        assert_eq!(
            written(&h, &HeaderMap::new()),
            "a: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\ne: 5\r\ncontent-type: t\r\n"
        );
        assert_eq!(h.content_type(), Some(&b"t"[..]));
    }

    #[test]
    fn bare_line_feeds_are_written_again_with_crlf() {
        let h = lines("HTTP/1.1 200 OK\nServer: x\nconnection: close\nContent-Type:b\n\n");
        assert_eq!(
            written(&h, &HeaderMap::new()),
            "Server: x\r\nContent-Type: b\r\n"
        );
        assert_eq!(h.content_type(), Some(&b"b"[..]));
        let empty = lines("HTTP/1.1 204 No Content\r\n\r\n");
        assert!(empty.is_empty());
        assert_eq!(written(&empty, &HeaderMap::new()), "");
    }

    #[test]
    fn the_gateways_own_headers_replace_the_nodes() {
        let text = "HTTP/1.1 200 OK\r\nX-Request-Id: node\r\nset-cookie: a\r\nSet-Cookie: b\r\n\
                    x-ratelimit-remaining-requests: 9\r\ncontent-length: 0\r\n\r\n";
        let mut map = HeaderMap::new();
        map.insert("x-request-id", HeaderValue::from_static("gateway"));
        assert_eq!(
            written(&lines(text), &map),
            "set-cookie: a\r\nSet-Cookie: b\r\nx-ratelimit-remaining-requests: 9\r\n"
        );
        map.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from_static("3"),
        );
        assert_eq!(
            written(&lines(text), &map),
            "set-cookie: a\r\nSet-Cookie: b\r\n"
        );
        lines(text).append_to(&mut map);
        assert_eq!(map["x-request-id"], "gateway");
        assert_eq!(map["x-ratelimit-remaining-requests"], "3");
        let cookies: Vec<_> = map.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a", "b"]);
        assert_eq!(map.len(), 4);
    }
}
