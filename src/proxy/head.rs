//! One analysis of an HTTP/1 head for both directions (RFC 9112): a request head from a
//! client (h1.rs) and a response head from a backend (wire.rs) are parsed by `httparse`
//! and then scanned here, once, by the same rules: where each header line lies, the
//! `Connection`, `Transfer-Encoding` and `Content-Length` scan, the lines a raw head
//! leaves out, and every refusal that framing calls for. Each RFC 9112 framing rule is
//! written in this file and nowhere else; the callers add what only their side has (a
//! request's method, target and Host; a response's status).
//!
//! Refusals carry a reason that the log and `sluice_refused_total` share.

use bytes::Bytes;

use super::headers::{self, HOP_CONNECTION, HOP_TE, HOP_TRANSFER_ENCODING, HOP_UPGRADE};

/// The most header lines a head may carry, on either side; more is refused (431 to a
/// client, 502 from a backend). hyper allows 100 too; HAProxy 101.
pub const MAX_HEADERS: usize = 100;
/// Room reserved for each read of a head, on either side: most heads, and the first
/// bytes of a body behind them, arrive in one read.
pub const HEAD_READ: usize = 4 * 1024;
/// The most header lines a raw head leaves out before the map's path is taken instead.
pub const MAX_CUTS: usize = 8;

/// How a message body is delimited (RFC 9112 §6), on the way in or out, either side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes: a response only (HTTP/1.0, or no length given).
    UntilClose,
}

/// Why a head is refused: 400 (or 431) to a client, 502 from a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `httparse` refused the bytes: a bad request or status line, a bad header name
    /// or value byte, a space before a colon, obs-fold.
    Malformed,
    TooManyLines,
    ContentLength,
    DifferingLengths,
    BothFramings,
    TransferEncoding,
    TransferEncodingTwice,
    TransferEncodingHttp10,
    DuplicateHost,
    MissingHost,
    /// An invalid Host value or target authority; the detail says what.
    Host(&'static str),
    Method,
    Target,
    HeaderValue,
}

impl Refused {
    /// The reason for logs and refusal metrics (`bad_request: <this>`).
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Malformed => "malformed head",
            Refused::TooManyLines => "too many header lines",
            Refused::ContentLength => "invalid Content-Length",
            Refused::DifferingLengths => "differing Content-Length values",
            Refused::BothFramings => "both Content-Length and Transfer-Encoding",
            Refused::TransferEncoding => "Transfer-Encoding other than chunked",
            Refused::TransferEncodingTwice => "Transfer-Encoding given twice",
            Refused::TransferEncodingHttp10 => "Transfer-Encoding in HTTP/1.0",
            Refused::DuplicateHost => "duplicate Host",
            Refused::MissingHost => "missing Host",
            Refused::Host(why) => why,
            Refused::Method => "invalid method",
            Refused::Target => "invalid request target",
            Refused::HeaderValue => "invalid header value",
        }
    }
}

/// Where one header line's name and value lie in the head's bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Span {
    pub name: u32,
    pub name_len: u32,
    pub value: u32,
    pub value_len: u32,
}

impl Span {
    pub fn name<'a>(&self, raw: &'a [u8]) -> &'a [u8] {
        &raw[self.name as usize..(self.name + self.name_len) as usize]
    }

    pub fn value<'a>(&self, raw: &'a [u8]) -> &'a [u8] {
        &raw[self.value as usize..(self.value + self.value_len) as usize]
    }

    /// The value as a slice of the head's shared bytes (no copy).
    pub fn value_bytes(&self, raw: &Bytes) -> Bytes {
        raw.slice(self.value as usize..(self.value + self.value_len) as usize)
    }
}

/// Records where `headers` (parsed from the buffer starting at `base`) lie, as offsets:
/// the parse borrows the buffer, and the values are cut from it once the head is split
/// off.
pub fn locate(headers: &[httparse::Header<'_>], base: *const u8, spans: &mut [Span]) {
    let at = |s: &[u8]| (s.as_ptr() as usize - base as usize) as u32;
    for (span, h) in spans.iter_mut().zip(headers) {
        *span = Span {
            name: at(h.name.as_bytes()),
            name_len: h.name.len() as u32,
            value: at(h.value),
            value_len: h.value.len() as u32,
        };
    }
}

/// Which side of the proxy a head came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A request from a client.
    Request,
    /// A response from a backend.
    Response,
}

/// What a header line is to sluice, told from its name's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Other,
    ContentLength,
    TransferEncoding,
    Connection,
    Upgrade,
    Te,
    /// Another hop-by-hop header (Keep-Alive, Proxy-Connection).
    Hop,
    RequestId,
    /// A request's `traceparent`: sluice writes its own for each attempt (SPEC §9).
    TraceParent,
    /// Request lines sluice reads and writes itself.
    Host,
    Expect,
    ForwardedFor,
    /// X-Forwarded-Proto, X-Forwarded-Host: sluice writes its own.
    ForwardedOther,
    /// A response's Date (sluice adds one where there is none).
    Date,
}

impl Kind {
    #[inline]
    pub fn of(name: &[u8], side: Side) -> Kind {
        match headers::hop_bit(name) {
            0 => {}
            HOP_CONNECTION => return Kind::Connection,
            HOP_TRANSFER_ENCODING => return Kind::TransferEncoding,
            HOP_UPGRADE => return Kind::Upgrade,
            HOP_TE => return Kind::Te,
            _ => return Kind::Hop,
        }
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        match (name.len(), side) {
            (12, _) if is(b"x-request-id") => Kind::RequestId,
            (14, _) if is(b"content-length") => Kind::ContentLength,
            (4, Side::Request) if is(b"host") => Kind::Host,
            (6, Side::Request) if is(b"expect") => Kind::Expect,
            (11, Side::Request) if is(b"traceparent") => Kind::TraceParent,
            (15, Side::Request) if is(b"x-forwarded-for") => Kind::ForwardedFor,
            (16, Side::Request) if is(b"x-forwarded-host") => Kind::ForwardedOther,
            (17, Side::Request) if is(b"x-forwarded-proto") => Kind::ForwardedOther,
            (4, Side::Response) if is(b"date") => Kind::Date,
            _ => Kind::Other,
        }
    }

    /// Is a line of this kind left out of a raw head passed on? Hop-by-hop lines (a
    /// request's `TE: trailers` excepted: its value is checked by the caller) and the
    /// lines sluice writes itself.
    #[inline]
    fn cut(self, side: Side) -> bool {
        match self {
            Kind::Connection | Kind::TransferEncoding | Kind::Upgrade | Kind::Hop => true,
            Kind::Te | Kind::RequestId => true,
            Kind::Host | Kind::ForwardedFor | Kind::ForwardedOther | Kind::TraceParent => {
                side == Side::Request
            }
            Kind::Other | Kind::ContentLength | Kind::Expect | Kind::Date => false,
        }
    }
}

/// What the scan of a head's header lines found.
#[derive(Debug, Default)]
pub struct Scan {
    /// The Content-Length (every line carried the same value).
    pub length: Option<u64>,
    /// Content-Length lines.
    pub lengths: u32,
    /// `Transfer-Encoding: chunked` (the only one accepted).
    pub chunked: bool,
    /// `Connection` tokens.
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade_token: bool,
    /// `Connection` names other headers (to drop).
    pub named: bool,
    /// An `Upgrade` line.
    pub has_upgrade: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// A `Date` line.
    pub has_date: bool,
    /// Values sluice reads from a request: Host, X-Forwarded-For, X-Request-Id.
    pub host: Option<Span>,
    pub forwarded_for: Option<Span>,
    pub request_id: Option<Span>,
    /// `traceparent`; two make the head go the map's way (then neither is valid).
    pub trace_parent: Option<Span>,
    /// The header lines, with the ones a raw head leaves out cut (when `raw_ok`).
    pub lines: Lines,
    /// The lines may pass on as they are: each ends in CRLF, none needs a closer look,
    /// and the cuts fit.
    pub raw_ok: bool,
}

/// Scans the header lines `spans` of the head `raw` (its whole bytes, ending with the
/// blank line) from `side`. `raw_ok`: the caller would pass the lines on raw.
#[inline]
pub fn scan(raw: &Bytes, spans: &[Span], side: Side, raw_ok: bool) -> Result<Scan, Refused> {
    let mut s = Scan {
        raw_ok: raw_ok && raw.ends_with(b"\r\n\r\n"),
        ..Scan::default()
    };
    // The lines begin where the first name does and end before the blank line.
    let lines_end = raw.len().saturating_sub(2);
    let lines_at = spans.first().map_or(lines_end, |s| s.name as usize);
    let mut connections = 0;
    for (i, span) in spans.iter().enumerate() {
        let name = span.name(raw);
        let value = span.value(raw);
        let kind = Kind::of(name, side);
        let mut cut = kind.cut(side);
        match kind {
            Kind::ContentLength => {
                let v = parse_length(value).ok_or(Refused::ContentLength)?;
                if s.length.is_some_and(|l| l != v) {
                    return Err(Refused::DifferingLengths);
                }
                s.length = Some(v);
                s.lengths += 1;
            }
            Kind::TransferEncoding => {
                // sluice decodes chunked and nothing else: a message with another
                // coding (`gzip, chunked`), or chunked twice, cannot be re-framed
                // without losing what the coding says (RFC 9112 §6.1 lets a recipient
                // refuse codings it does not understand; guessing is a smuggling hole).
                if s.chunked {
                    return Err(Refused::TransferEncodingTwice);
                }
                if !is_chunked(value) {
                    return Err(Refused::TransferEncoding);
                }
                s.chunked = true;
            }
            Kind::Connection => {
                connections += 1;
                for t in value.split(|&b| b == b',') {
                    let t = t.trim_ascii();
                    let (c, k, u) = (
                        t.eq_ignore_ascii_case(b"close"),
                        t.eq_ignore_ascii_case(b"keep-alive"),
                        t.eq_ignore_ascii_case(b"upgrade"),
                    );
                    s.close |= c;
                    s.keep_alive |= k;
                    s.upgrade_token |= u;
                    s.named |= !t.is_empty() && !c && !k && !u;
                }
            }
            Kind::Upgrade => s.has_upgrade = true,
            // A request's `TE: trailers` passes on (gRPC needs it).
            Kind::Te if side == Side::Request => {
                cut = !value.trim_ascii().eq_ignore_ascii_case(b"trailers");
            }
            Kind::Expect => {
                s.expect_continue = value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
            }
            Kind::Host => {
                // RFC 9112 §3.2: one Host, and a valid one.
                if s.host.is_some() {
                    return Err(Refused::DuplicateHost);
                }
                headers::check_host(value).map_err(Refused::Host)?;
                s.host = Some(*span);
            }
            // Passed on raw only once: two would need joining.
            Kind::ForwardedFor => s.raw_ok &= s.forwarded_for.replace(*span).is_none(),
            Kind::RequestId => s.raw_ok &= s.request_id.replace(*span).is_none(),
            Kind::TraceParent => s.raw_ok &= s.trace_parent.replace(*span).is_none(),
            Kind::Date => s.has_date = true,
            Kind::Te | Kind::Hop | Kind::ForwardedOther | Kind::Other => {}
        }
        if !s.raw_ok {
            continue;
        }
        // This line runs to the next one's name, or to the blank line.
        let next = spans.get(i + 1).map_or(lines_end, |s| s.name as usize);
        s.raw_ok &= raw[..next].ends_with(b"\r\n");
        if cut {
            s.raw_ok &= s.lines.cut(span.name as usize - lines_at, next - lines_at);
        }
    }
    if s.chunked && s.length.is_some() {
        // RFC 9112 §6.3 lets a recipient pick one; a proxy whose pick differs from the
        // next hop's is how requests are smuggled. Refused on both sides.
        return Err(Refused::BothFramings);
    }
    // Headers a Connection line names, and repeated lines, are left to the map's path.
    s.raw_ok &= !s.named && s.lengths <= 1 && connections <= 1;
    if s.raw_ok {
        s.lines.set(raw.slice(lines_at..lines_end));
    }
    Ok(s)
}

/// Is a Transfer-Encoding value exactly `chunked`, the one coding sluice accepts?
#[inline]
pub fn is_chunked(value: &[u8]) -> bool {
    value.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

/// Is the request target of a form its method may use (RFC 9112 §3.2)? Origin-form
/// (`/path`) and absolute-form (`http://host/path`) for any method, asterisk-form (`*`)
/// for OPTIONS, authority-form (`host:port`) for CONNECT (refused later with 405).
/// Anything else, such as `GET host` (which would route by `host` whatever the Host
/// line says), is refused.
pub fn target_form(method: &http::Method, uri: &http::Uri) -> Result<(), Refused> {
    let ok = match (uri.scheme(), uri.authority()) {
        (Some(_), _) => true,
        (None, Some(_)) => *method == http::Method::CONNECT,
        (None, None) if uri.path() == "*" => *method == http::Method::OPTIONS,
        (None, None) => uri.path().starts_with('/'),
    };
    if ok { Ok(()) } else { Err(Refused::Target) }
}

/// A Content-Length value: digits only (no sign, no list), at most 19 of them, so it
/// fits in 64 bits; spaces around are allowed.
#[inline]
pub fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// A head's header lines as they were written, less some: what sluice passes on of
/// them without building a header map (`RawRequest` in h1.rs, `RawHead` in wire.rs).
#[derive(Debug, Default)]
pub struct Lines {
    /// The header lines, each ending in CRLF.
    bytes: Bytes,
    /// Ranges of `bytes` left out, in order.
    cuts: [(u32, u32); MAX_CUTS],
    ncuts: usize,
}

impl Lines {
    /// Leaves out `from..to` (offsets within the lines, after any earlier cut); false
    /// when no room is left.
    pub fn cut(&mut self, from: usize, to: usize) -> bool {
        let Some(slot) = self.cuts.get_mut(self.ncuts) else {
            return false;
        };
        *slot = (from as u32, to as u32);
        self.ncuts += 1;
        true
    }

    /// Takes lines back in where `keep` says so of the line a cut begins with (after
    /// `set`).
    pub fn uncut(&mut self, keep: impl Fn(&[u8]) -> bool) {
        let mut kept = 0;
        for k in 0..self.ncuts {
            let cut = self.cuts[k];
            if !keep(&self.bytes[cut.0 as usize..]) {
                self.cuts[kept] = cut;
                kept += 1;
            }
        }
        self.ncuts = kept;
    }

    pub fn set(&mut self, bytes: Bytes) {
        self.bytes = bytes;
    }

    /// Every line, the ones left out included.
    pub fn all(&self) -> &Bytes {
        &self.bytes
    }

    /// Appends the lines passed on to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut at = 0;
        for &(from, to) in &self.cuts[..self.ncuts] {
            out.extend_from_slice(&self.bytes[at..from as usize]);
            at = to as usize;
        }
        out.extend_from_slice(&self.bytes[at..]);
    }

    /// Appends the lines passed on to `out`, less those `drop` says of (a route's
    /// header rules removing or replacing them).
    pub fn write_without(&self, out: &mut Vec<u8>, drop: impl Fn(&[u8]) -> bool) {
        let mut at = 0;
        let ends = self.cuts[..self.ncuts]
            .iter()
            .map(|&(from, to)| (from as usize, to as usize));
        for (from, to) in ends.chain(std::iter::once((self.bytes.len(), self.bytes.len()))) {
            for line in self.bytes[at..from].split_inclusive(|&b| b == b'\n') {
                if !drop(line) {
                    out.extend_from_slice(line);
                }
            }
            at = to;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans the header lines of `text` (a head without its start line).
    fn scanned(text: &str, side: Side) -> Result<Scan, Refused> {
        let raw = Bytes::from(format!("X\r\n{text}\r\n"));
        let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let httparse::Status::Complete((_, parsed)) =
            httparse::parse_headers(&raw[3..], &mut lines).unwrap()
        else {
            panic!("incomplete");
        };
        let mut spans = [Span::default(); MAX_HEADERS];
        locate(parsed, raw.as_ptr(), &mut spans);
        scan(&raw, &spans[..parsed.len()], side, true)
    }

    #[test]
    fn both_sides_refuse_the_same_framing() {
        for side in [Side::Request, Side::Response] {
            let bad = |t: &str| scanned(t, side).unwrap_err();
            assert_eq!(
                bad("Content-Length: 1\r\nContent-Length: 2\r\n"),
                Refused::DifferingLengths
            );
            assert_eq!(
                bad("Content-Length: 1\r\nTransfer-Encoding: chunked\r\n"),
                Refused::BothFramings
            );
            assert_eq!(
                bad("Transfer-Encoding: gzip, chunked\r\n"),
                Refused::TransferEncoding
            );
            assert_eq!(
                bad("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
                Refused::TransferEncodingTwice
            );
            assert_eq!(bad("Content-Length: 1, 1\r\n"), Refused::ContentLength);
            let s = scanned("Content-Length: 5\r\nContent-Length: 5\r\n", side).unwrap();
            assert_eq!(
                (s.length, s.raw_ok),
                (Some(5), false),
                "same value twice: the map's path"
            );
        }
        assert_eq!(
            scanned("Host: a\r\nHost: a\r\n", Side::Request).unwrap_err(),
            Refused::DuplicateHost
        );
        assert!(
            scanned("Host: a\r\nHost: a\r\n", Side::Response).is_ok(),
            "only requests"
        );
    }

    #[test]
    fn raw_lines_leave_out_hop_by_hop_and_what_sluice_writes() {
        let s = scanned(
            "Host: h\r\nConnection: keep-alive\r\nX-A: 1\r\nTE: trailers\r\nX-Request-Id: r\r\nKeep-Alive: 5\r\n",
            Side::Request,
        )
        .unwrap();
        let mut out = Vec::new();
        s.lines.write_to(&mut out);
        assert_eq!(out, b"X-A: 1\r\nTE: trailers\r\n");
        assert!(s.keep_alive && s.raw_ok);
        let s = scanned("Host: h\r\nTE: trailers\r\nDate: x\r\n", Side::Response).unwrap();
        let mut out = Vec::new();
        s.lines.write_to(&mut out);
        assert_eq!(out, b"Host: h\r\nDate: x\r\n");
        assert!(s.has_date);
    }
}
