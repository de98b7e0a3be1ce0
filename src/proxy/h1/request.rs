//! A request head from a client: its line, Host, and the raw lines passed on.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};

use crate::config::HeaderRules;
use crate::proxy::head::{self, Framing, Lines, MAX_HEADERS, Refused, Side, Span};
use crate::proxy::headers;
use crate::proxy::wire;

/// A request's header lines as the client wrote them, to be passed on to the backend
/// as they are, less what sluice does not pass on or writes itself: hop-by-hop lines
/// (`Connection` and `Upgrade` stay for a protocol switch, `TE: trailers` stays),
/// `Host`, `X-Forwarded-*` and `X-Request-Id`. What sluice reads from those is kept
/// here. This spares building a header map for every request; a request whose
/// upstream needs to look at its headers (sticky, hashing on a header or cookie) gets
/// its map after all (`fill_map`).
#[derive(Debug)]
pub struct RawRequest {
    lines: Lines,
    pub host: Option<HeaderValue>,
    pub forwarded_for: Option<HeaderValue>,
    pub request_id: Option<HeaderValue>,
    pub trace_parent: Option<HeaderValue>,
    /// The Content-Length (its line is passed on).
    pub length: Option<u64>,
    /// An HTTP/1.1 protocol switch (Connection: upgrade and Upgrade).
    pub upgrade: bool,
}

impl RawRequest {
    /// Appends the lines passed on to `out`, less those a route's request rules
    /// remove or replace.
    #[inline]
    pub fn write_to(&self, out: &mut Vec<u8>, rules: Option<&HeaderRules>) {
        match rules {
            None => self.lines.write_to(out),
            Some(r) => write_ruled(&self.lines, out, r),
        }
    }

    /// The value of the first header line named `name` (a rate limit's key).
    pub fn get(&self, name: &HeaderName) -> Option<&[u8]> {
        let lines = self.lines.all();
        lines.split(|&b| b == b'\n').find_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = line.iter().position(|&b| b == b':')?;
            line[..colon]
                .eq_ignore_ascii_case(name.as_str().as_bytes())
                .then(|| line[colon + 1..].trim_ascii())
        })
    }

    /// Puts every header line into `map`, as the map's path expects a request.
    pub fn fill_map(&self, map: &mut HeaderMap) {
        let lines = self.lines.all();
        for line in lines.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let value = line[colon + 1..].trim_ascii();
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(&line[..colon]),
                HeaderValue::from_maybe_shared(lines.slice_ref(value)),
            ) {
                map.append(name, value);
            }
        }
    }
}

/// Raw lines less those a route's rules remove or replace; out of line, so that a
/// route without rules does not pay for it.
#[inline(never)]
fn write_ruled(lines: &Lines, out: &mut Vec<u8>, rules: &HeaderRules) {
    lines.write_without(out, |line| rules.drops(line));
}

/// A header value cut from the head's bytes.
fn value_of(raw: &Bytes, span: &Span) -> Result<HeaderValue, HeadError> {
    HeaderValue::from_maybe_shared(span.value_bytes(raw))
        .map_err(|_| HeadError::Bad(Refused::HeaderValue.reason()))
}

/// A request head on its way to a backend in raw form: the client's lines passed on,
/// then the ones sluice writes.
#[derive(Debug)]
pub struct Outgoing {
    pub raw: RawRequest,
    /// The Host to send: the client's, or the backend's (`host_header = "backend"`).
    pub host: Option<HeaderValue>,
    pub forwarded_host: Option<HeaderValue>,
    pub client_ip: HeaderValue,
    pub https: bool,
    pub request_id: HeaderValue,
    /// The route's header rules (SPEC §8), applied to the lines as they are written:
    /// only rules that leave sluice's own lines alone (`RouteHeaders::request_raw_ok`).
    pub rules: Option<std::sync::Arc<crate::upstream::RouteHeaders>>,
}

impl Outgoing {
    /// Appends the header lines to `out` (SPEC §4: X-Forwarded-For keeps what the
    /// client sent and adds the client's address; X-Forwarded-Proto and -Host are
    /// sluice's; X-Request-Id is the request's).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let rules = self.rules.as_deref().map(|r| &r.request);
        self.raw.write_to(out, rules);
        if let Some(h) = &self.host {
            line(out, b"host", h.as_bytes());
        }
        out.extend_from_slice(b"x-forwarded-for: ");
        if let Some(prev) = &self.raw.forwarded_for {
            out.extend_from_slice(prev.as_bytes());
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(self.client_ip.as_bytes());
        out.extend_from_slice(b"\r\n");
        let proto: &[u8] = if self.https { b"https" } else { b"http" };
        line(out, b"x-forwarded-proto", proto);
        if let Some(h) = &self.forwarded_host {
            line(out, b"x-forwarded-host", h.as_bytes());
        }
        line(out, b"x-request-id", self.request_id.as_bytes());
        // SPEC §8: the route's rules come after sluice's own.
        if let Some(r) = rules {
            write_rule_lines(r, out);
        }
    }
}

#[inline(never)]
fn write_rule_lines(rules: &HeaderRules, out: &mut Vec<u8>) {
    rules.write_lines(out);
}

pub(crate) fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Does `line` start with header `name` and its colon?
fn starts_with_name(line: &[u8], name: &[u8]) -> bool {
    line.len() > name.len()
        && line[..name.len()].eq_ignore_ascii_case(name)
        && line[name.len()] == b':'
}

/// A parsed request head.
#[derive(Debug)]
pub struct Head {
    pub parts: http::request::Parts,
    /// The header lines as the client wrote them, when they can be passed on so (the
    /// map in `parts` is then empty).
    pub raw: Option<RawRequest>,
    pub framing: Framing,
    /// The client allows another request on this connection.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for a go-ahead before its body.
    pub expect_continue: bool,
}

/// Why a request head was refused before any routing.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    TooLarge,
    Bad(&'static str),
}

/// Parses a request head from the start of `buf`, consuming it. None: incomplete.
/// Header values share the head's bytes. `spare`, if any, is the map to fill.
/// The framing rules are head.rs's; what is here is a request's own: its line, Host,
/// and what a request of each version may carry.
pub fn parse_head(
    buf: &mut BytesMut,
    max_head: usize,
    spare: &mut Option<HeaderMap>,
) -> Result<Option<Head>, HeadError> {
    let mut spans = [Span::default(); MAX_HEADERS];
    let (len, n, minor, target, method) = {
        let mut lines = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let parsed = match req.parse_with_uninit_headers(buf, &mut lines) {
            Ok(p) => p,
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(_) => return Err(HeadError::Bad(Refused::Malformed.reason())),
        };
        let len = match parsed {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial if buf.len() > max_head => {
                return Err(HeadError::TooLarge);
            }
            httparse::Status::Partial => return Ok(None),
        };
        let base = buf.as_ptr();
        head::locate(req.headers, base, &mut spans);
        // httparse skips empty lines before the request line: the method's place is
        // found like the rest.
        let at = |s: &str| (s.as_ptr() as usize - base as usize, s.len());
        (
            len,
            req.headers.len(),
            req.version.unwrap_or(1),
            at(req.path.unwrap_or("/")),
            at(req.method.unwrap_or("")),
        )
    };
    if len > max_head {
        return Err(HeadError::TooLarge);
    }
    let raw = buf.split_to(len).freeze();
    let method = Method::from_bytes(&raw[method.0..method.0 + method.1])
        .map_err(|_| HeadError::Bad(Refused::Method.reason()))?;
    let uri = Uri::from_maybe_shared(raw.slice(target.0..target.0 + target.1))
        .map_err(|_| HeadError::Bad(Refused::Target.reason()))?;
    // Origin-form, by far the most common, passes at a glance.
    if raw.get(target.0) != Some(&b'/') {
        head::target_form(&method, &uri)?;
    }
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let spans = &spans[..n];
    let scan = head::scan(&raw, spans, Side::Request, true)?;
    if scan.host.is_none() && version == Version::HTTP_11 {
        return Err(Refused::MissingHost.into());
    }
    if let Some(a) = uri.authority() {
        // Absolute- or authority-form: the same rules as a Host value.
        headers::check_host(a.as_str().as_bytes())
            .map_err(|_| HeadError::Bad("invalid authority in the request target"))?;
    }
    if scan.chunked && version == Version::HTTP_10 {
        // RFC 9112 §6.1: framing an HTTP/1.0 message cannot have.
        return Err(Refused::TransferEncodingHttp10.into());
    }
    let upgrade = version == Version::HTTP_11 && scan.has_upgrade && scan.upgrade_token;
    let mut headers = match spare.take() {
        Some(mut map) => {
            map.clear();
            map
        }
        None => HeaderMap::new(),
    };
    let raw_head = if scan.raw_ok {
        let mut lines = scan.lines;
        if upgrade {
            // A protocol switch keeps its Connection and Upgrade lines.
            lines.uncut(|line| {
                starts_with_name(line, b"connection") || starts_with_name(line, b"upgrade")
            });
        }
        Some(RawRequest {
            lines,
            host: scan.host.map(|s| value_of(&raw, &s)).transpose()?,
            forwarded_for: scan.forwarded_for.map(|s| value_of(&raw, &s)).transpose()?,
            request_id: scan.request_id.map(|s| value_of(&raw, &s)).transpose()?,
            trace_parent: scan.trace_parent.map(|s| value_of(&raw, &s)).transpose()?,
            length: scan.length,
            upgrade,
        })
    } else {
        headers.reserve(n + wire::EXTRA_HEADERS);
        let mut length_passed = false;
        for span in spans {
            let name = HeaderName::from_bytes(span.name(&raw))
                .map_err(|_| HeadError::Bad(Refused::Malformed.reason()))?;
            // A repeated Content-Length (the same value: others were refused) goes once.
            if name == header::CONTENT_LENGTH && std::mem::replace(&mut length_passed, true) {
                continue;
            }
            headers.append(name, value_of(&raw, span)?);
        }
        None
    };
    let framing = match (scan.chunked, scan.length) {
        (true, _) => Framing::Chunked,
        (false, None | Some(0)) => Framing::None,
        (false, Some(n)) => Framing::Length(n),
    };
    let keep_alive = !scan.close && (version == Version::HTTP_11 || scan.keep_alive);
    let mut parts = Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(Head {
        parts,
        raw: raw_head,
        framing,
        keep_alive,
        expect_continue: scan.expect_continue && version == Version::HTTP_11,
    }))
}

impl From<Refused> for HeadError {
    fn from(r: Refused) -> HeadError {
        match r {
            Refused::TooManyLines => HeadError::TooLarge,
            other => HeadError::Bad(other.reason()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Option<Head>, HeadError> {
        let mut b = BytesMut::from(with_host(raw).as_str());
        parse_head(&mut b, 8192, &mut None)
    }

    /// `raw` with a `Host: x` line after its request line when it is HTTP/1.1 and has
    /// none (RFC 9112 §3.2 requires one; most tests are about other lines).
    fn with_host(raw: &str) -> String {
        let first = raw.find("\r\n").map_or(raw.len(), |i| i + 2);
        if raw[..first].contains("HTTP/1.1") && !raw.to_ascii_lowercase().contains("\nhost:") {
            format!("{}Host: x\r\n{}", &raw[..first], &raw[first..])
        } else {
            raw.to_owned()
        }
    }

    #[test]
    fn request_heads_give_their_framing_and_keep_alive() {
        let h = parse("GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.parts.method, Method::GET);
        assert_eq!(h.parts.uri, "/a?b=1");
        assert!(h.parts.headers.is_empty(), "the lines travel raw");
        assert_eq!(h.raw.as_ref().unwrap().host.as_ref().unwrap(), "x");
        assert_eq!((h.framing, h.keep_alive), (Framing::None, true));
        let h = parse("POST / HTTP/1.1\r\nContent-Length: 5\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(5), false));
        let h =
            parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        assert!(h.expect_continue);
        let h = parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let h = parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        let h = parse("GET http://h:8/p HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.parts.uri.path(), "/p");
    }

    #[test]
    fn bad_partial_and_oversized_heads() {
        assert!(parse("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        assert!(matches!(
            parse("GET / HTTP/1.1\r\nBad Header\r\n\r\n"),
            Err(HeadError::Bad(_))
        ));
        assert!(matches!(
            parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
            Err(HeadError::Bad(_))
        ));
        assert!(matches!(
            parse("POST / HTTP/1.1\r\nContent-Length: 5x\r\n\r\n"),
            Err(HeadError::Bad(_))
        ));
        let big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(9000));
        assert_eq!(parse(&big).unwrap_err(), HeadError::TooLarge);
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..MAX_HEADERS + 1 {
            many.push_str(&format!("X-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(parse(&many).unwrap_err(), HeadError::TooLarge);
    }

    #[test]
    fn both_framings_are_refused_by_the_parser() {
        assert_eq!(
            parse("POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap_err(),
            HeadError::Bad("both Content-Length and Transfer-Encoding")
        );
    }

    fn passed_on(h: &Head) -> String {
        let mut out = Vec::new();
        h.raw.as_ref().expect("raw lines").write_to(&mut out, None);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn raw_request_lines_leave_out_what_sluice_rewrites_or_drops() {
        let h = parse(
            "GET / HTTP/1.1\r\nHost: h:8\r\nConnection: keep-alive\r\nX-Forwarded-For: 1.2.3.4\r\nKeep-Alive: 5\r\nUser-Agent: t\r\nTE: trailers\r\nX-Forwarded-Proto: https\r\nX-Request-Id: abc\r\nAccept: */*\r\nX-Forwarded-Host: evil\r\nProxy-Connection: x\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            passed_on(&h),
            "User-Agent: t\r\nTE: trailers\r\nAccept: */*\r\nContent-Length: 0\r\n"
        );
        let r = h.raw.as_ref().unwrap();
        assert_eq!(r.forwarded_for.as_ref().unwrap(), "1.2.3.4");
        assert_eq!(r.request_id.as_ref().unwrap(), "abc");
        assert_eq!((r.length, r.upgrade), (Some(0), false));
        // The map's path gets every line.
        let mut map = HeaderMap::new();
        r.fill_map(&mut map);
        assert_eq!(map.len(), 12);
        assert_eq!(map["host"], "h:8");
        assert_eq!(map["x-request-id"], "abc");
        // A protocol switch keeps its pair; TE other than trailers goes.
        let h = parse(
            "GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nTE: gzip\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(h.raw.as_ref().unwrap().upgrade);
        assert_eq!(
            passed_on(&h),
            "Connection: Upgrade\r\nUpgrade: websocket\r\n"
        );
        let h = parse("GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.raw.as_ref().unwrap().upgrade);
        assert_eq!(passed_on(&h), "");
    }

    #[test]
    fn odd_request_heads_take_the_map() {
        for text in [
            "GET / HTTP/1.1\r\nConnection: x-named\r\nX-Named: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nX-Forwarded-For: a\r\nX-Forwarded-For: b\r\n\r\n",
            "GET / HTTP/1.1\r\nX-A: 1\nX-B: 2\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
        ] {
            let h = parse(text).unwrap().unwrap();
            assert!(h.raw.is_none(), "{text}");
            assert!(!h.parts.headers.is_empty(), "{text}");
        }
        let h = parse("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.parts.headers.get_all("content-length").iter().count(), 1);
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for _ in 0..=head::MAX_CUTS {
            many.push_str("Keep-Alive: 1\r\n");
        }
        many.push_str("\r\n");
        assert!(parse(&many).unwrap().unwrap().raw.is_none());
    }

    #[test]
    fn outgoing_heads_add_the_forwarding_lines() {
        let theirs = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let h = parse(&format!(
            "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\ntraceparent: {theirs}\r\nA: b\r\n\r\n"
        ))
        .unwrap()
        .unwrap();
        assert_eq!(
            h.raw.as_ref().unwrap().trace_parent.as_ref().unwrap(),
            theirs
        );
        let o = Outgoing {
            raw: h.raw.unwrap(),
            host: Some(HeaderValue::from_static("backend:80")),
            forwarded_host: Some(HeaderValue::from_static("h")),
            client_ip: HeaderValue::from_static("10.0.0.9"),
            https: false,
            request_id: HeaderValue::from_static("id1"),
            rules: None,
        };
        let mut out = Vec::new();
        o.write_to(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "A: b\r\nhost: backend:80\r\nx-forwarded-for: 1.2.3.4, 10.0.0.9\r\nx-forwarded-proto: http\r\nx-forwarded-host: h\r\nx-request-id: id1\r\n"
        );
    }

    #[test]
    fn header_rules_apply_to_raw_lines_after_sluices_own() {
        let h = parse("GET / HTTP/1.1\r\nHost: h\r\nA: b\r\nB: old\r\nx-debug: 1\r\nC: c\r\n\r\n")
            .unwrap()
            .unwrap();
        let name = |n: &'static str| http::HeaderName::from_static(n);
        let value = HeaderValue::from_static;
        let request = HeaderRules {
            set: vec![(name("b"), value("new"))],
            add: vec![(name("c"), value("more"))],
            remove: vec![name("x-debug")],
        };
        let o = Outgoing {
            raw: h.raw.unwrap(),
            host: None,
            forwarded_host: None,
            client_ip: HeaderValue::from_static("10.0.0.9"),
            https: true,
            request_id: HeaderValue::from_static("id1"),
            rules: Some(std::sync::Arc::new(crate::upstream::RouteHeaders {
                request,
                response: HeaderRules::default(),
                request_raw_ok: true,
            })),
        };
        let mut out = Vec::new();
        o.write_to(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "A: b\r\nC: c\r\nx-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: https\r\nx-request-id: id1\r\nb: new\r\nc: more\r\n"
            )
        );
    }

    #[test]
    fn pipelined_bytes_stay_in_the_buffer() {
        let mut b = BytesMut::from("GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\n\r\n");
        let h = parse_head(&mut b, 8192, &mut None).unwrap().unwrap();
        assert_eq!(h.parts.uri, "/1");
        assert_eq!(&b[..], b"GET /2 HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn host_is_required_once_and_valid() {
        let bad = |raw: &str| {
            let mut b = BytesMut::from(raw);
            match parse_head(&mut b, 8192, &mut None) {
                Err(HeadError::Bad(why)) => why,
                other => panic!("{raw:?}: {other:?}"),
            }
        };
        assert_eq!(bad("GET / HTTP/1.1\r\n\r\n"), "missing Host");
        assert_eq!(
            bad("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"),
            "duplicate Host"
        );
        assert!(bad("GET / HTTP/1.1\r\nHost: exa mple\r\n\r\n").starts_with("invalid Host"));
        assert!(bad("GET / HTTP/1.1\r\nHost: a/../x\r\n\r\n").starts_with("invalid Host"));
        assert!(bad("GET / HTTP/1.1\r\nHost: u@a\r\n\r\n").starts_with("invalid Host"));
        assert_eq!(
            bad("GET http://u:p@a/ HTTP/1.1\r\nHost: a\r\n\r\n"),
            "invalid authority in the request target"
        );
        // HTTP/1.0 may go without.
        let mut b = BytesMut::from("GET / HTTP/1.0\r\n\r\n");
        assert!(parse_head(&mut b, 8192, &mut None).unwrap().is_some());
    }
}
