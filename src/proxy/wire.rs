//! HTTP/1.1 on the backend side of the wire: the response head sluice reads (parsed by
//! `httparse`, scanned by head.rs like a request head). Hop-by-hop response headers are
//! dropped while the head is parsed; bodies are read by decode.rs. The request head
//! sluice writes is request_head.rs.
//!
//! Kept apart from the sockets (client.rs) so every rule here is a plain function.

use std::mem::MaybeUninit;

use bytes::{Buf, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

use super::head::{self, Framing, Kind, Lines, MAX_HEADERS, Side, Span};
use super::headers::remove_connection_named;

/// Headers sluice adds to a message on its way, room reserved up front.
pub(crate) const EXTRA_HEADERS: usize = 6;
/// The largest response head accepted from a backend.
pub const MAX_HEAD: usize = 64 * 1024;

/// Why a backend's response could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("invalid response head: {0}")]
    Parse(#[from] httparse::Error),
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("invalid response header")]
    Header,
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("invalid chunked body: {0}")]
    Chunked(&'static str),
    #[error("unexpected 101 Switching Protocols")]
    UnexpectedSwitch,
    #[error("response head refused: {}", .0.reason())]
    Head(super::head::Refused),
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    /// The headers to pass on; empty when they travel as `raw`.
    pub headers: HeaderMap,
    /// The headers to pass on as the backend wrote them (see `RawHead`).
    pub raw: Option<RawHead>,
    pub framing: Framing,
    /// The connection may carry another request once this response has been read.
    pub keep_alive: bool,
}

/// A response's header lines as the backend wrote them, for an HTTP/1.x client: they
/// are copied out as they are, less the lines sluice does not pass on (hop-by-hop,
/// X-Request-Id). This spares building a header map for every response.
#[derive(Debug)]
pub struct RawHead {
    lines: Lines,
    /// A Content-Length line is among those passed on.
    pub has_length: bool,
    /// A Date line is among those passed on.
    pub has_date: bool,
    /// The route's header rules (SPEC §8): lines they remove or replace are left out
    /// (what they set or add travels in the response's map).
    pub rules: Option<std::sync::Arc<crate::upstream::RouteHeaders>>,
}

impl RawHead {
    /// Appends the lines passed on to `out`.
    #[inline]
    pub fn write_to(&self, out: &mut Vec<u8>) {
        match &self.rules {
            None => self.lines.write_to(out),
            Some(r) => write_ruled(&self.lines, out, &r.response),
        }
    }
}

/// Raw lines less those a route's rules remove or replace; out of line, so that a
/// route without rules does not pay for it.
#[inline(never)]
fn write_ruled(lines: &Lines, out: &mut Vec<u8>, rules: &crate::config::HeaderRules) {
    lines.write_without(out, |line| rules.drops(line));
}

/// Parses a response head from the start of `buf`, consuming it. None: incomplete
/// (read more). Informational responses (1xx but 101) are skipped; a 101 is accepted
/// only when `upgrade` (the request asked for one).
/// `spare` may supply the header map to fill (emptied first): a map that is no longer
/// needed, so that its allocation serves again. `raw_ok`: the headers may be handed on
/// as `RawHead` (the client speaks HTTP/1.x), which sluice does unless the response
/// needs a closer look (a protocol switch, a status that may carry Retry-After, odd
/// line endings or framing).
pub fn parse_response_head(
    buf: &mut BytesMut,
    method: &Method,
    upgrade: bool,
    raw_ok: bool,
    spare: impl FnOnce() -> Option<HeaderMap>,
) -> Result<Option<Head>, WireError> {
    let mut spare = Some(spare);
    loop {
        let mut spans = [Span::default(); MAX_HEADERS];
        let Some(Parsed {
            len,
            code,
            minor,
            n,
        }) = parse_lines(buf, &mut spans)?
        else {
            return Ok(None);
        };
        let status = StatusCode::from_u16(code).map_err(|_| WireError::Header)?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            buf.advance(len);
            continue;
        }
        let switching = status == StatusCode::SWITCHING_PROTOCOLS;
        if switching && !upgrade {
            return Err(WireError::UnexpectedSwitch);
        }
        let version = if minor == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let raw = buf.split_to(len).freeze();
        let spans = &spans[..n];
        // A protocol switch, or a status that may carry Retry-After, needs the map.
        let raw_ok = raw_ok && !switching && code != 429 && code != 503;
        let scan = head::scan(&raw, spans, Side::Response, raw_ok).map_err(WireError::Head)?;
        let (framing, keep_alive) = framing_of(method, status, version, &scan);
        // Nothing below fails: the request's header map, lent as `spare`, is taken only
        // now, so a response refused above leaves the request whole for a retry.
        let mut headers = match spare.take().and_then(|f| f()) {
            Some(mut map) => {
                map.clear();
                map
            }
            None => HeaderMap::new(),
        };
        let head_raw = if scan.raw_ok {
            Some(RawHead {
                lines: scan.lines,
                has_length: scan.length.is_some(),
                has_date: scan.has_date,
                rules: None,
            })
        } else {
            fill_map(&mut headers, &raw, spans, switching, scan.named);
            None
        };
        return Ok(Some(Head {
            status,
            version,
            headers,
            raw: head_raw,
            framing,
            keep_alive,
        }));
    }
}

/// Where a response head ends, and its status line's numbers.
struct Parsed {
    len: usize,
    code: u16,
    minor: Option<u8>,
    /// Header lines, located in `spans`.
    n: usize,
}

/// Parses the head at the start of `buf` (httparse), locating its header lines in
/// `spans`. None: not all of it is in yet.
#[inline(always)]
fn parse_lines(
    buf: &BytesMut,
    spans: &mut [Span; MAX_HEADERS],
) -> Result<Option<Parsed>, WireError> {
    let mut lines = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut lines)?;
    let len = match parsed {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial if buf.len() >= MAX_HEAD => return Err(WireError::HeadTooLarge),
        httparse::Status::Partial => return Ok(None),
    };
    head::locate(resp.headers, buf.as_ptr(), spans);
    Ok(Some(Parsed {
        len,
        code: resp.code.unwrap_or(0),
        minor: resp.version,
        n: resp.headers.len(),
    }))
}

/// A response's header lines into `headers`, for a response whose lines cannot travel
/// raw: hop-by-hop headers dropped (but the pair that completes a protocol switch), a
/// repeated Content-Length once, and the headers `Connection` names removed.
fn fill_map(
    headers: &mut HeaderMap,
    raw: &bytes::Bytes,
    spans: &[Span],
    switching: bool,
    named: bool,
) {
    // Room for what sluice adds (X-Request-Id, Set-Cookie) without a rehash; the map
    // is then reused for the connection's next request head, which gains the
    // X-Forwarded-* set.
    headers.reserve(spans.len() + EXTRA_HEADERS);
    let mut length_passed = false;
    for span in spans {
        let name = span.name(raw);
        let pass = match Kind::of(name, Side::Response) {
            Kind::Connection | Kind::Upgrade => switching,
            Kind::TransferEncoding | Kind::Te | Kind::Hop => false,
            Kind::ContentLength => !std::mem::replace(&mut length_passed, true),
            _ => true,
        };
        // httparse has checked these bytes; what http still refuses is dropped.
        if let (true, Ok(name), Ok(value)) = (
            pass,
            HeaderName::from_bytes(name),
            HeaderValue::from_maybe_shared(span.value_bytes(raw)),
        ) {
            headers.append(name, value);
        }
    }
    if named {
        for span in spans {
            if span.name(raw).eq_ignore_ascii_case(b"connection") {
                remove_connection_named(headers, span.value(raw), switching);
            }
        }
    }
}

/// How a response's body is framed (RFC 9112 §6.3) and whether its connection may
/// serve another request.
#[inline(always)]
fn framing_of(
    method: &Method,
    status: StatusCode,
    version: Version,
    scan: &head::Scan,
) -> (Framing, bool) {
    let bodyless = *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status == StatusCode::SWITCHING_PROTOCOLS;
    let framing = match (bodyless, scan.chunked, scan.length) {
        (true, _, _) => Framing::None,
        (false, true, _) => Framing::Chunked,
        (false, false, Some(0)) => Framing::None,
        (false, false, Some(n)) => Framing::Length(n),
        (false, false, None) => Framing::UntilClose,
    };
    let keep_alive = !scan.close
        && status != StatusCode::SWITCHING_PROTOCOLS
        && framing != Framing::UntilClose
        // RFC 9112 §6.1: chunked in an HTTP/1.0 message is faulty framing; read it,
        // then close.
        && !(scan.chunked && version == Version::HTTP_10)
        && (version == Version::HTTP_11 || scan.keep_alive);
    (framing, keep_alive)
}

/// Drops complete informational heads (1xx but 101) from the start of `buf`; true if
/// that left it empty (nothing else has arrived).
pub fn skip_informational(buf: &mut BytesMut) -> bool {
    loop {
        let mut lines = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut lines);
        match resp.parse(buf) {
            Ok(httparse::Status::Complete(n))
                if resp
                    .code
                    .is_some_and(|c| (100..200).contains(&c) && c != 101) =>
            {
                buf.advance(n);
                if buf.is_empty() {
                    return true;
                }
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str, method: Method) -> Result<Option<Head>, WireError> {
        let mut b = BytesMut::from(raw);
        parse_response_head(&mut b, &method, false, false, || None)
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let h = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(5), true));
        assert_eq!(h.headers["x-a"], "b");
        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        // The rules requests are held to (issue #10): chunked alone, once, without a
        // length.
        for bad in [
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(head(bad, Method::GET).is_err(), "{bad:?}");
        }
        let h = head("HTTP/1.1 200 OK\r\n\r\n", Method::GET)
            .unwrap()
            .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, false));
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", Method::HEAD)
            .unwrap()
            .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::None, true));
        let h = head(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::None);
        let h = head(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert!(!h.keep_alive);
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", Method::GET)
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = head(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert!(h.keep_alive);
    }

    #[test]
    fn hop_by_hop_headers_are_dropped_as_the_head_is_parsed() {
        let h = head(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Named\r\nKeep-Alive: timeout=5\r\nX-Named: 1\r\nUpgrade: h2\r\nProxy-Connection: x\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\nX-Kept: 2\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        let names: Vec<&str> = h.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, true));
        let mut b = BytesMut::from(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nKeep-Alive: x\r\n\r\n",
        );
        let h = parse_response_head(&mut b, &Method::GET, true, false, || None)
            .unwrap()
            .unwrap();
        let names: Vec<&str> = h.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["connection", "upgrade"], "a switch keeps its pair");
        assert!(!h.keep_alive);
    }

    fn raw(text: &str) -> Head {
        let mut b = BytesMut::from(text);
        parse_response_head(&mut b, &Method::GET, false, true, || None)
            .unwrap()
            .unwrap()
    }

    fn written(h: &Head) -> String {
        let mut out = Vec::new();
        h.raw.as_ref().expect("raw lines").write_to(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn raw_lines_pass_on_all_but_hop_by_hop_and_the_request_id() {
        let h = raw(
            "HTTP/1.1 200 OK\r\nServer: x\r\nConnection: keep-alive\r\nX-Request-Id: theirs\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\nDate: Wed, 25 Nov 2026 10:00:00 GMT\r\nX-A:  b \r\n\r\nok",
        );
        assert!(h.headers.is_empty());
        assert_eq!(
            written(&h),
            "Server: x\r\nContent-Length: 2\r\nDate: Wed, 25 Nov 2026 10:00:00 GMT\r\nX-A:  b \r\n"
        );
        let r = h.raw.as_ref().unwrap();
        assert!(r.has_length && r.has_date);
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(2), true));
        let h = raw("HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(written(&h), "");
        let h = raw("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(written(&h), "");
        assert!(!h.raw.as_ref().unwrap().has_length);
        assert_eq!(h.framing, Framing::Chunked);
    }

    #[test]
    fn heads_that_need_a_closer_look_take_the_map() {
        for text in [
            // Retry-After may matter; a header Connection names; a bare LF.
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nConnection: x-named\r\nX-Named: 1\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX-A: 1\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\n",
        ] {
            let h = raw(text);
            assert!(h.raw.is_none(), "{text}");
            assert!(!h.headers.contains_key("x-named"), "{text}");
            assert!(!h.headers.contains_key("connection"), "{text}");
        }
        let h = raw("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok");
        assert!(h.raw.is_none());
        assert_eq!(h.headers.get_all("content-length").iter().count(), 1);
        let h = raw("HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\n\r\n");
        assert_eq!(h.headers["retry-after"], "5");
        let mut many = String::from("HTTP/1.1 200 OK\r\n");
        for _ in 0..=head::MAX_CUTS {
            many.push_str("Keep-Alive: x\r\n");
        }
        many.push_str("Content-Length: 0\r\n\r\n");
        let h = raw(&many);
        assert!(h.raw.is_none());
        assert_eq!(h.headers.len(), 1);
    }

    #[test]
    fn a_spare_map_is_emptied_and_filled() {
        let mut spare = HeaderMap::new();
        spare.insert("x-old", HeaderValue::from_static("1"));
        let mut b = BytesMut::from("HTTP/1.1 200 OK\r\nX-New: 2\r\nContent-Length: 0\r\n\r\n");
        let h = parse_response_head(&mut b, &Method::GET, false, false, || Some(spare))
            .unwrap()
            .unwrap();
        let names: Vec<&str> = h.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-new", "content-length"]);
    }

    #[test]
    fn bad_or_partial_heads() {
        assert!(
            head("HTTP/1.1 200 OK\r\nContent-Le", Method::GET)
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            head(
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                Method::GET
            ),
            Err(WireError::Head(head::Refused::DifferingLengths))
        ));
        assert!(matches!(
            head("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", Method::GET),
            Err(WireError::Head(head::Refused::ContentLength))
        ));
        assert!(head("garbage\r\n\r\n", Method::GET).is_err());
        assert!(matches!(
            head("HTTP/1.1 101 Switching Protocols\r\n\r\n", Method::GET),
            Err(WireError::UnexpectedSwitch)
        ));
        let big = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEAD));
        assert!(matches!(
            head(&big, Method::GET),
            Err(WireError::HeadTooLarge)
        ));
    }

    #[test]
    fn informational_responses_are_skipped() {
        let mut b = BytesMut::from(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        );
        let h = parse_response_head(&mut b, &Method::POST, false, false, || None)
            .unwrap()
            .unwrap();
        assert_eq!((h.status.as_u16(), h.framing), (201, Framing::None));
        assert!(b.is_empty());
    }
}
