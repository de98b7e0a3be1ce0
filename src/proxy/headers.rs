//! Header rules of SPEC §4: hop-by-hop removal both ways, X-Forwarded-*, X-Request-Id.

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// W3C Trace Context (SPEC §9).
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The value of a header that must appear once: None when it is absent or repeated.
pub fn single<'a>(headers: &'a http::HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?;
    all.next().is_none().then_some(first)
}
pub static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
pub static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Bits for the fixed hop-by-hop headers (RFC 9110 §7.6.1), see `hop_by_hop_bit`.
pub const HOP_CONNECTION: u8 = 1;
pub const HOP_TRANSFER_ENCODING: u8 = 1 << 1;
pub const HOP_TE: u8 = 1 << 2;
pub const HOP_UPGRADE: u8 = 1 << 3;
pub const HOP_KEEP_ALIVE: u8 = 1 << 4;
pub const HOP_PROXY_CONNECTION: u8 = 1 << 5;

/// Which fixed hop-by-hop header `name` is, as its bit; 0 for any other header.
#[inline]
pub fn hop_by_hop_bit(name: &HeaderName) -> u8 {
    hop_bit(name.as_str().as_bytes())
}

/// `hop_by_hop_bit` of a header name's bytes, in any case: the one list of fixed
/// hop-by-hop headers, for header maps and for heads passed on as written (h1.rs,
/// wire.rs).
#[inline]
pub fn hop_bit(name: &[u8]) -> u8 {
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    match name.len() {
        2 if is(b"te") => HOP_TE,
        7 if is(b"upgrade") => HOP_UPGRADE,
        10 if is(b"connection") => HOP_CONNECTION,
        10 if is(b"keep-alive") => HOP_KEEP_ALIVE,
        16 if is(b"proxy-connection") => HOP_PROXY_CONNECTION,
        17 if is(b"transfer-encoding") => HOP_TRANSFER_ENCODING,
        _ => 0,
    }
}

/// Removes the headers a `Connection` value names (they are hop-by-hop too), but not
/// the keep-alive/close options, nor `Upgrade` when `upgrade` (a protocol switch keeps
/// it).
pub fn remove_connection_named(headers: &mut HeaderMap, connection: &[u8], upgrade: bool) {
    for t in connection.split(|&b| b == b',') {
        let t = t.trim_ascii();
        if t.is_empty() || t.eq_ignore_ascii_case(b"keep-alive") || t.eq_ignore_ascii_case(b"close")
        {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(t)
            && !(upgrade && name == header::UPGRADE)
        {
            headers.remove(name);
        }
    }
}

/// Removes a request's hop-by-hop headers: `Connection` and every header it names,
/// `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `TE` (except "trailers"), and
/// `Upgrade` unless `upgrade` is set (a WebSocket handshake keeps `Connection: upgrade`
/// and `Upgrade`).
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One pass over the (usually short) map, then lookups only for what is there: most
    // messages carry none of these, or only `Connection: keep-alive`.
    let present = headers
        .keys()
        .fold(0, |bits, name| bits | hop_by_hop_bit(name));
    if present == 0 {
        return;
    }
    if present & HOP_CONNECTION != 0 {
        // A copy of the value (a count on shared bytes): `headers` changes below.
        if let Some(conn) = headers.get(header::CONNECTION).cloned() {
            remove_connection_named(headers, conn.as_bytes(), upgrade);
        }
        if !upgrade {
            headers.remove(header::CONNECTION);
        }
    }
    if present & HOP_KEEP_ALIVE != 0 {
        headers.remove(&KEEP_ALIVE);
    }
    if present & HOP_PROXY_CONNECTION != 0 {
        headers.remove(&PROXY_CONNECTION);
    }
    if present & HOP_TRANSFER_ENCODING != 0 {
        headers.remove(header::TRANSFER_ENCODING);
    }
    if present & HOP_UPGRADE != 0 && !upgrade {
        headers.remove(header::UPGRADE);
    }
    if present & HOP_TE != 0 {
        // Of TE, only "trailers" passes (once, if any line says it).
        let is_trailers =
            |te: &HeaderValue| te.as_bytes().trim_ascii().eq_ignore_ascii_case(b"trailers");
        let (mut lines, mut trailers) = (0, 0);
        for te in headers.get_all(header::TE) {
            lines += 1;
            trailers += usize::from(is_trailers(te));
        }
        if trailers != lines || lines > 1 {
            headers.remove(header::TE);
            if trailers > 0 {
                headers.insert(header::TE, HeaderValue::from_static("trailers"));
            }
        }
    }
}

/// Appends the client address (`client_ip`, an IP as a header value, computed once per
/// connection) to X-Forwarded-For, keeping what the client sent, and replaces
/// X-Forwarded-Proto and X-Forwarded-Host.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client_ip: &HeaderValue,
    https: bool,
    host: Option<&HeaderValue>,
) {
    // One lookup (the entry) rather than contains_key + insert: hashing a custom
    // header name is most of what a lookup costs.
    match headers.entry(&X_FORWARDED_FOR) {
        Entry::Occupied(mut e) => {
            // Several XFF lines are folded into one, then the client is appended.
            let mut joined = Vec::with_capacity(64);
            for v in e.iter() {
                joined.extend_from_slice(v.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(client_ip.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&joined) {
                e.insert(v);
            }
        }
        Entry::Vacant(e) => {
            e.insert(client_ip.clone());
        }
    }
    headers.insert(
        &X_FORWARDED_PROTO,
        HeaderValue::from_static(if https { "https" } else { "http" }),
    );
    match host {
        Some(h) => {
            headers.insert(&X_FORWARDED_HOST, h.clone());
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

/// The header value of a client's IP address.
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Request ids made at once and handed out one by one (per thread).
const IDS_PER_BLOCK: usize = 64;
const ID_LEN: usize = 32;

/// A new request id: 32 hex digits, unique within this process and unlikely to collide
/// across processes (random per-process prefix + counter), with no syscall per request.
/// Ids are cut from a block of 64 made at once, so a request costs no allocation: its
/// id shares the block's refcounted bytes (copies for the backend request and the
/// access log cost a count). A block is freed when its last id is.
pub fn new_request_id() -> HeaderValue {
    thread_local! {
        static BLOCK: RefCell<(Bytes, usize)> = const { RefCell::new((Bytes::new(), 0)) };
    }
    BLOCK.with(|block| {
        let mut block = block.borrow_mut();
        let (bytes, next) = &mut *block;
        if *next * ID_LEN >= bytes.len() {
            *bytes = new_id_block();
            *next = 0;
        }
        let id = bytes.slice(*next * ID_LEN..(*next + 1) * ID_LEN);
        *next += 1;
        let mut v =
            HeaderValue::from_maybe_shared(id).unwrap_or_else(|_| HeaderValue::from_static("0"));
        unique(&mut v);
        v
    })
}

/// Marks a value that differs on every message (a request id) so that HTTP/2's HPACK
/// encoder sends it as a literal instead of adding it to its table, where each new one
/// would evict the entries (Server, Content-Type…) that let later heads be encoded in a
/// few bytes. HTTP/1 ignores the mark.
#[inline]
pub fn unique(v: &mut HeaderValue) {
    v.set_sensitive(true);
}

fn new_id_block() -> Bytes {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| fastrand::u64(..));
    let first = COUNTER.fetch_add(IDS_PER_BLOCK as u64, Ordering::Relaxed);
    let mut block = Vec::with_capacity(IDS_PER_BLOCK * ID_LEN);
    let mut id = [0u8; ID_LEN];
    hex(prefix, &mut id[..16]);
    for n in first..first + IDS_PER_BLOCK as u64 {
        // Scramble the counter (splitmix64, a bijection) so consecutive ids do not look
        // sequential and stay distinct.
        hex(splitmix64(n), &mut id[16..]);
        block.extend_from_slice(&id);
    }
    Bytes::from(block)
}

fn splitmix64(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn hex(mut v: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

/// Bytes of a registered name (RFC 3986 §3.2.2: unreserved, pct-encoded, sub-delims),
/// as a table: the check runs on every request.
const REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        b += 1;
    }
    t
};

/// Checks a `Host` value or a request target's authority (RFC 9110 §7.2, RFC 3986
/// §3.2): a host (a registered name, an IPv4 address, or an IP literal in brackets)
/// with an optional port of digits. No userinfo, path, query, spaces or control bytes:
/// sluice routes by this value and passes it on, and a backend or a proxy behind it
/// may read a value like `a.com@b.com` or `a.com/../x` differently (SPEC §4: 400).
#[inline]
pub fn check_host(v: &[u8]) -> Result<(), &'static str> {
    if v.is_empty() {
        return Err("empty Host");
    }
    let port = if v[0] == b'[' {
        let end = v
            .iter()
            .position(|&b| b == b']')
            .ok_or("invalid Host: unclosed IP literal")?;
        let literal = &v[1..end];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err("invalid Host: bad IP literal");
        }
        &v[end + 1..]
    } else {
        // One pass over a name (the common case): its bytes, up to a colon.
        let mut i = 0;
        while i < v.len() && REG_NAME[usize::from(v[i])] {
            i += 1;
        }
        if i == 0 {
            return Err("invalid Host: no host");
        }
        if i < v.len() && v[i] != b':' {
            return Err("invalid Host");
        }
        &v[i..]
    };
    match port.split_first() {
        None => Ok(()),
        Some((b':', digits)) if digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit) => {
            Ok(())
        }
        Some(_) => Err("invalid Host: bad port"),
    }
}

/// Is this an HTTP/1.1 upgrade handshake (Connection: upgrade + Upgrade)?
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Approximate size of a request head as sent on the wire (request line + headers).
pub fn head_size(method: &http::Method, uri: &http::Uri, headers: &HeaderMap) -> usize {
    let line = method.as_str().len() + uri.path_and_query().map_or(1, |p| p.as_str().len()) + 12;
    headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["te", "x-keep"]);
    }

    #[test]
    fn xff_appends_and_proto_host_replace() {
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        let host = HeaderValue::from_static("example.com");
        let ip = ip_value("127.0.0.1".parse().unwrap());
        set_forwarded(&mut h, &ip, false, Some(&host));
        assert_eq!(h[&X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 127.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "example.com");
    }

    #[test]
    fn request_ids_are_distinct_hex_across_blocks_and_threads() {
        let mut ids: Vec<HeaderValue> = (0..3 * IDS_PER_BLOCK).map(|_| new_request_id()).collect();
        let other = std::thread::spawn(|| {
            (0..IDS_PER_BLOCK)
                .map(|_| new_request_id())
                .collect::<Vec<_>>()
        });
        ids.extend(other.join().unwrap());
        assert!(
            ids.iter()
                .all(|a| a.len() == 32 && a.as_bytes().iter().all(u8::is_ascii_hexdigit))
        );
        let distinct: std::collections::HashSet<&[u8]> = ids.iter().map(|v| v.as_bytes()).collect();
        assert_eq!(distinct.len(), ids.len());
    }
}

#[cfg(test)]
mod host_tests {
    use super::check_host;

    #[test]
    fn hosts_are_names_or_addresses_with_a_port() {
        for ok in [
            "example.com",
            "example.com:8080",
            "EXAMPLE.com",
            "127.0.0.1",
            "[::1]:443",
            "[2001:db8::1]",
            "xn--bcher-kva.example",
            "a_b.local:",
        ] {
            assert!(check_host(ok.as_bytes()).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "exa mple.com",
            "example.com/../x",
            "user@example.com",
            "example.com:80:80",
            "example.com:http",
            "example.com?x",
            "example.com#x",
            "[::1",
            "[zz]:80",
            ":80",
            "a\tb",
            "example.com:123456",
        ] {
            assert!(check_host(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }
}
