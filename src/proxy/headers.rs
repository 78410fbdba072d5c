//! Header rewriting between client and node: hop-by-hop headers (RFC 9110
//! §7.6.1), forwarding headers and the request id.

use std::net::SocketAddr;

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue};

use crate::ascii_case::eq_lower;
use crate::header_lines::RequestHeaders;

/// The request-id header, generated when absent and passed to the node and
/// back to the client.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Remove hop-by-hop headers: the fixed list plus every header the
/// `Connection` header names. `keep_te_trailers` keeps `te: trailers`, which
/// gRPC needs end to end over HTTP/2.
///
/// One pass over the names present finds what must go, so a request
/// without hop-by-hop headers costs no lookups at all (this runs on every
/// request and response). The usual `Connection: keep-alive` or `close`
/// names nothing beyond the fixed list, so it costs no parsing either.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_te_trailers: bool) {
    // Fixed hop-by-hop headers present, by their index in HOP_BY_HOP.
    let mut present = 0u16;
    let mut named: Vec<HeaderName> = Vec::new();
    let mut te_trailers = false;
    for name in headers.keys() {
        // Most names are told apart by their length alone, before any
        // comparison (this loop was most of the function's cost).
        let len = name.as_str().len();
        if len >= 32 || HOP_BY_HOP_LENGTHS & (1 << len) == 0 {
            continue;
        }
        let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) else {
            continue;
        };
        present |= 1 << i;
        if name == header::CONNECTION {
            // Names listed in Connection are hop-by-hop too.
            let tokens = headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim);
            for token in tokens {
                if eq_lower(token.as_bytes(), b"close") || eq_lower(token.as_bytes(), b"keep-alive")
                {
                    // An option, or a fixed name: nothing more to remove.
                    continue;
                }
                if let Ok(extra) = HeaderName::from_bytes(token.as_bytes()) {
                    named.push(extra);
                }
            }
        } else if name == header::TE && keep_te_trailers {
            te_trailers = headers
                .get(header::TE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| eq_lower(v.as_bytes(), b"trailers"));
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    for name in named {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The fixed hop-by-hop headers (RFC 9110 §7.6.1, and two older ones).
pub(crate) const HOP_BY_HOP_NAMES: [&str; 9] = [
    "connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "trailer",
    "keep-alive",
    "proxy-connection",
];

/// [`HOP_BY_HOP_NAMES`] as header names (standard ones compare as such).
static HOP_BY_HOP: [HeaderName; 9] = [
    HeaderName::from_static(HOP_BY_HOP_NAMES[0]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[1]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[2]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[3]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[4]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[5]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[6]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[7]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[8]),
];

/// The lengths of [`HOP_BY_HOP_NAMES`], as bits.
const HOP_BY_HOP_LENGTHS: u32 = {
    let mut bits = 0u32;
    let mut i = 0;
    while i < HOP_BY_HOP_NAMES.len() {
        bits |= 1 << HOP_BY_HOP_NAMES[i].len();
        i += 1;
    }
    bits
};

/// `X-Forwarded-For` as the node gets it: the client's address appended
/// to the value the client sent (`existing`).
pub fn forwarded_for(existing: Option<&[u8]>, peer: SocketAddr) -> Option<HeaderValue> {
    with_forwarded_for(existing, peer, |value| HeaderValue::from_bytes(value).ok()).flatten()
}

/// [`forwarded_for`]'s value handed to `f`, without allocating unless the
/// client sent one.
pub fn with_forwarded_for<R>(
    existing: Option<&[u8]>,
    peer: SocketAddr,
    f: impl FnOnce(&[u8]) -> R,
) -> Option<R> {
    // An address is at most 45 bytes; written without allocating.
    let mut ip = [0u8; 48];
    let len = write_ip(&mut ip, peer.ip());
    if len == 0 {
        return None;
    }
    let ip = &ip[..len];
    match existing {
        Some(existing) if !existing.trim_ascii().is_empty() => {
            let mut joined = Vec::with_capacity(existing.len() + 2 + ip.len());
            joined.extend_from_slice(existing);
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(ip);
            Some(f(&joined))
        }
        _ => Some(f(ip)),
    }
}

/// Set `X-Forwarded-For` (made by [`forwarded_for`]) and
/// `X-Forwarded-Proto` to the scheme the client used.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    forwarded_for: Option<HeaderValue>,
    proto: &'static str,
) {
    if let Some(value) = forwarded_for {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
}

/// Write `ip` as text into `out`, returning the length (IPv4 by hand: the
/// formatting machinery costs more than the rest of this header).
fn write_ip(out: &mut [u8; 48], ip: std::net::IpAddr) -> usize {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    out[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    out[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                out[len] = b'0' + octet % 10;
                len += 1;
            }
            len
        }
        std::net::IpAddr::V6(v6) => {
            use std::io::Write as _;
            let mut cursor = std::io::Cursor::new(&mut out[..]);
            match write!(cursor, "{v6}") {
                Ok(()) => usize::try_from(cursor.position()).unwrap_or(0),
                Err(_) => 0,
            }
        }
    }
}

/// The client's request id if it sent a sane one (visible ASCII, at most 128
/// bytes), else a new random one (32 hex digits).
pub fn request_id(headers: RequestHeaders<'_>) -> HeaderValue {
    if let Some(bytes) = headers.get(&REQUEST_ID) {
        if !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic()) {
            if let Ok(value) = HeaderValue::from_bytes(bytes) {
                return value;
            }
        }
    }
    let id = hex_id(fastrand::u128(..));
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// `n` as 32 lowercase hex digits, two digits per byte from a table (a
/// digit at a time over a `u128` cost ~190 instructions per request).
fn hex_id(n: u128) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    const PAIRS: [[u8; 2]; 256] = {
        let mut pairs = [[0u8; 2]; 256];
        let mut i = 0;
        while i < 256 {
            pairs[i] = [HEX[i >> 4], HEX[i & 0xf]];
            i += 1;
        }
        pairs
    };
    let mut id = [0u8; 32];
    for (pair, byte) in id.chunks_exact_mut(2).zip(n.to_be_bytes()) {
        pair.copy_from_slice(&PAIRS[usize::from(byte)]);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_32_lowercase_hex_digits_of_the_number() {
        for n in [
            0u128,
            1,
            0xff,
            u128::MAX,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        ] {
            assert_eq!(hex_id(n).as_slice(), format!("{n:032x}").as_bytes());
        }
        for _ in 0..1000 {
            let n = fastrand::u128(..);
            assert_eq!(hex_id(n).as_slice(), format!("{n:032x}").as_bytes());
        }
    }

    /// The length filter lets every fixed hop-by-hop name through.
    #[test]
    fn hop_by_hop_lengths_cover_every_fixed_name() {
        for name in &HOP_BY_HOP {
            assert_ne!(HOP_BY_HOP_LENGTHS & (1 << name.as_str().len()), 0, "{name}");
        }
        let mut headers = HeaderMap::new();
        for name in &HOP_BY_HOP {
            headers.insert(name.clone(), HeaderValue::from_static("x"));
        }
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut headers, false);
        assert_eq!(headers.keys().collect::<Vec<_>>(), [&header::CONTENT_TYPE]);
    }

    #[test]
    fn strips_fixed_and_listed_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn keeps_te_trailers_for_grpc() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::TE], "trailers");
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h, true);
        assert!(!h.contains_key(header::TE));
    }

    #[test]
    fn forwarded_for_appends() {
        let peer: SocketAddr = "10.0.0.9:5555".parse().unwrap();
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, forwarded_for(None, peer), "http");
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        let again = forwarded_for(h.get("x-forwarded-for").map(|v| v.as_bytes()), peer);
        add_forwarded(&mut h, again, "http");
        assert_eq!(h["x-forwarded-for"], "10.0.0.9, 10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        let v6: SocketAddr = "[2001:db8::ffff:1]:443".parse().unwrap();
        assert_eq!(forwarded_for(Some(b"  "), v6).unwrap(), "2001:db8::ffff:1");
        for ip in ["0.0.0.0", "255.255.255.255", "10.100.9.200", "1.20.103.4"] {
            let mut out = [0u8; 48];
            let len = write_ip(&mut out, ip.parse().unwrap());
            assert_eq!(&out[..len], ip.as_bytes());
        }
    }

    #[test]
    fn request_id_propagates_or_generates() {
        let mut h = HeaderMap::new();
        let generated = request_id((&h).into());
        assert_eq!(generated.len(), 32);
        assert!(generated.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_ne!(request_id((&h).into()), generated);
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id((&h).into()), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        assert_ne!(request_id((&h).into()), "has space");
    }
}
