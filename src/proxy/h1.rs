//! HTTP/1.1 from clients, served in sluice's own loop: request heads parsed by
//! `httparse`, request bodies read as the backend side consumes them (`ClientBody`),
//! responses written head and first body bytes together. The mirror image of the
//! backend side (client.rs, wire.rs), with the same framing rules (RFC 9112).
//!
//! One connection task runs `serve`: read a head, hand the request to `forward`, write
//! the answer, and go on while the connection may be kept alive. Between requests the
//! loop waits for the next head in a state the connection task can leave at any time
//! (to park the connection or close it); `Flags` tells it when that is.

use std::cell::Cell;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::Shared;
use super::body::{ClientBody, ResponseBody};
use super::client::Upgraded;
use super::error::ProxyError;
use super::forward::{After, Answered, ConnInfo, handle};
use super::head::{self, Framing, HEAD_READ, Lines, MAX_HEADERS, Refused, Side, Span};
use super::headers;
use super::wire::{self, Chunked, Framed, Piece, WireError};
use crate::telemetry::{self, Refusal};

/// Room reserved up front for writing a response head.
const OUT_GUESS: usize = 1024;
/// Response body pieces up to this size are copied behind the head or chunk header and
/// written with it; larger ones are written from where they are.
const COALESCE: usize = 16 * 1024;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What the connection task and the loop tell each other (within one task: the
/// atomics only make the task's future `Send`).
#[derive(Default)]
pub struct Flags {
    /// The loop waits for the first byte of a new request, holding nothing but the
    /// socket: the connection can be parked or closed now.
    idle: AtomicBool,
    /// Shutdown: finish the request under way, then close.
    closing: AtomicBool,
}

impl Flags {
    pub fn idle(&self) -> bool {
        self.idle.load(Ordering::Relaxed)
    }

    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    pub fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    fn set_idle(&self, idle: bool) {
        self.idle.store(idle, Ordering::Relaxed);
    }
}

/// How a connection's loop ended.
pub enum End {
    /// Close the connection.
    Close,
    /// Close, but the client may still be sending a request body sluice did not read:
    /// stop sending and read for a while first, so that the answer already written is
    /// not destroyed by a reset.
    Linger,
    /// The backend switched protocols (101): join the two into a tunnel.
    Upgrade(Upgraded),
    /// Idle: park the connection (decided by the connection task, not the loop).
    Park,
    /// A response broke off mid-body: reset the connection, so that a client whose
    /// response ends with the connection (HTTP/1.0, length unknown) can tell.
    Reset,
}

/// A client connection as the loop holds it: the two halves of its socket and the
/// bytes read and not used yet.
pub struct Sock {
    /// None while a request body's reader holds it (see `lent`).
    rd: Option<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    pub buf: BytesMut,
    /// The link to the request body holding the reading half and the buffer.
    lent: Option<Arc<Link>>,
}

impl Sock {
    pub fn new(stream: TcpStream, buf: BytesMut) -> Sock {
        let (rd, wr) = stream.into_split();
        Sock {
            rd: Some(rd),
            wr,
            buf,
            lent: None,
        }
    }

    /// Takes the reading half and the buffer back from the request body they were lent
    /// to, if it has given them back. Some(true): the body was read to its end.
    fn reclaim(&mut self) -> Option<bool> {
        let r = self.lent.as_ref()?.returned.lock().ok()?.take()?;
        self.lent = None;
        self.rd = Some(r.rd);
        self.buf = r.buf;
        Some(r.complete)
    }

    /// The socket whole again, with the bytes read and not used; None if a request
    /// body's reader still holds the reading half.
    pub fn into_stream(mut self) -> Option<(TcpStream, BytesMut)> {
        self.reclaim();
        let stream = self.rd?.reunite(self.wr).ok()?;
        Some((stream, self.buf))
    }

    /// Closes the connection with a reset (RST), dropping whatever is still unsent.
    pub fn reset(self) {
        let _ = socket2::SockRef::from(self.wr.as_ref()).set_linger(Some(Duration::ZERO));
        // No FIN first: the peer must see the reset, not an orderly end.
        self.wr.forget();
    }

    /// Closes the connection. With `linger`, first stops sending and reads what the
    /// client still sends for a short while: closing with unread bytes would reset the
    /// connection and could destroy the answer just written (a refused upload). A
    /// request body still reading elsewhere (an upload being stopped) is waited for.
    pub async fn close(mut self, linger: bool) {
        let _ = self.wr.shutdown().await;
        if !linger {
            return;
        }
        const FOR: Duration = Duration::from_secs(2);
        const AT_MOST: usize = 4 << 20;
        let _ = tokio::time::timeout(FOR, async {
            if let Some(link) = self.lent.clone() {
                if self.reclaim().is_none() {
                    link.back.notified().await;
                    self.reclaim();
                }
            }
            let Some(rd) = self.rd.as_mut() else {
                return;
            };
            // On the heap: in the future it would make every connection task this
            // much larger.
            let mut scratch = vec![0u8; 16 * 1024];
            let mut total = 0;
            while total < AT_MOST {
                match rd.read(&mut scratch).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => total += n,
                }
            }
        })
        .await;
    }
}

/// Serves requests on `sock` until the connection should close or be upgraded. What
/// is left in `sock.buf` when it returns belongs to the connection (a tunnel's first
/// bytes).
pub async fn serve(sock: &mut Sock, shared: &Shared, info: &Arc<ConnInfo>, flags: &Flags) -> End {
    let max_head = shared.limits.load().max_header_bytes;
    // The last response's header map, emptied, to be filled by the next request.
    let mut spare: Option<HeaderMap> = None;
    let mut out: Vec<u8> = Vec::with_capacity(OUT_GUESS);
    loop {
        let head = loop {
            if !sock.buf.is_empty() {
                match parse_head(&mut sock.buf, max_head, &mut spare) {
                    Ok(Some(head)) => break head,
                    Ok(None) => {}
                    Err(e) => {
                        let (status, reason) = match e {
                            HeadError::TooLarge => (431, Refusal::HeaderTooLarge),
                            HeadError::Bad(why) => (400, Refusal::BadRequest(why)),
                        };
                        shared.unrouted.add(status);
                        telemetry::refused_request(&shared.refused, info.client, status, reason);
                        let _ = refuse(&mut sock.wr, &mut out, &e).await;
                        return End::Linger;
                    }
                }
            } else if flags.closing() {
                return End::Close;
            }
            let Some(rd) = sock.rd.as_mut() else {
                return End::Close;
            };
            flags.set_idle(sock.buf.is_empty());
            sock.buf.reserve(HEAD_READ);
            let n = rd.read_buf(&mut sock.buf).await;
            flags.set_idle(false);
            match n {
                Ok(0) | Err(_) => return End::Close,
                Ok(_) => info.activity.on_read(),
            }
        };

        let Head {
            parts,
            raw,
            framing,
            keep_alive,
            expect_continue,
        } = head;
        let head_only = parts.method == Method::HEAD;
        let http10 = parts.version == Version::HTTP_10;
        // A request with a body takes the reading half and the read buffer along; they
        // come back (with any pipelined bytes behind the body) when the body is done.
        let (body, has_body) = match framing {
            Framing::None => (ClientBody::Empty, false),
            f => {
                let Some(rd) = sock.rd.take() else {
                    return End::Close;
                };
                let link = Arc::new(Link::default());
                // Nothing to ask for if the body is already arriving.
                let ask = expect_continue && sock.buf.is_empty();
                let buf = std::mem::take(&mut sock.buf);
                let body = H1Body::new(rd, buf, f, ask, Arc::clone(&link));
                sock.lent = Some(link);
                (ClientBody::H1(body), true)
            }
        };
        // Pinned where it is made: the future is large, and every move copies it.
        let mut answer =
            std::pin::pin!(handle(shared, info, Request::from_parts(parts, body), raw));
        // Meanwhile: tell the client to go on when its body is first wanted, and watch
        // it while the loop holds its reading half (no body, or the body is done). If
        // it leaves, the answer is dropped, which abandons the backend request; bytes it
        // sends meanwhile (pipelined requests) wait in the buffer.
        let mut watch = true;
        let mut body_done = (!has_body).then_some(true);
        let mut may_ask = has_body && expect_continue;
        let resp = std::future::poll_fn(|cx| {
            if let Some(link) = sock.lent.as_ref().filter(|_| may_ask) {
                link.wake_on_ask(cx.waker());
            }
            if let Poll::Ready(r) = answer.as_mut().poll(cx) {
                return Poll::Ready(Some(r));
            }
            if let Some(link) = &sock.lent {
                if link.want_continue.swap(false, Ordering::Relaxed) {
                    may_ask = false;
                    if sock.wr.try_write(CONTINUE).ok() != Some(CONTINUE.len()) {
                        return Poll::Ready(None);
                    }
                }
                if body_done.is_none() {
                    body_done = sock.reclaim();
                }
            }
            if let (true, Some(true), Some(rd)) = (watch, body_done, sock.rd.as_mut()) {
                match tokio_util::io::poll_read_buf(Pin::new(rd), cx, &mut sock.buf) {
                    Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(None),
                    Poll::Ready(Ok(_)) => watch = false,
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await;
        let Some(Answered { response, after }) = resp else {
            return End::Close;
        };
        if body_done.is_none() {
            body_done = sock.reclaim();
        }
        let (mut parts, mut body) = response.into_parts();
        let next = Next::of(keep_alive, flags.closing(), body_done == Some(true), after);
        let watch = match (watch && body_done == Some(true), sock.rd.as_mut()) {
            (true, Some(rd)) => Some((rd, &mut sock.buf)),
            _ => None,
        };
        let written = write_response(
            &mut sock.wr,
            &mut out,
            &parts,
            &mut body,
            Options {
                head_only,
                http10,
                keep: matches!(next, Next::KeepAlive),
                upgrade: matches!(next, Next::Tunnel(_)),
            },
            watch,
        )
        .await;
        // Emptied now: its values hold on to the backend connection's read buffer.
        parts.headers.clear();
        spare = Some(parts.headers);
        // Writing may still end the connection: the client or the backend cut it, or
        // the answer's framing ends with the connection.
        let still_keep = match written {
            Ok(keep) => keep,
            Err(Cut::Backend) => return End::Reset,
            Err(Cut::Client) => return End::Close,
        };
        match next {
            Next::Tunnel(up) => return End::Upgrade(up),
            Next::Linger => return End::Linger,
            Next::Close => return End::Close,
            Next::KeepAlive if !still_keep => return End::Close,
            Next::KeepAlive => {}
        }
    }
}

/// What the connection does after an answer: decided here, once, from what the client
/// allowed (`keep_alive`), whether sluice is shutting down, whether the request body
/// was read to its end, and what the answer calls for (`After`, from forward.rs).
enum Next {
    KeepAlive,
    Close,
    /// Close, after reading what the client still sends of a body sluice did not read
    /// (where the next request would begin is unknown).
    Linger,
    /// The backend switched protocols: the connection becomes a tunnel.
    Tunnel(Upgraded),
}

impl Next {
    fn of(keep_alive: bool, closing: bool, body_read: bool, after: After) -> Next {
        match after {
            After::Tunnel(up) => Next::Tunnel(up),
            _ if !body_read => Next::Linger,
            After::Close => Next::Close,
            After::Reuse if keep_alive && !closing => Next::KeepAlive,
            After::Reuse => Next::Close,
        }
    }
}

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
    /// The Content-Length (its line is passed on).
    pub length: Option<u64>,
    /// An HTTP/1.1 protocol switch (Connection: upgrade and Upgrade).
    pub upgrade: bool,
}

impl RawRequest {
    /// Appends the lines passed on to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        self.lines.write_to(out);
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
}

impl Outgoing {
    /// Appends the header lines to `out` (SPEC §4: X-Forwarded-For keeps what the
    /// client sent and adds the client's address; X-Forwarded-Proto and -Host are
    /// sluice's; X-Request-Id is the request's).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        self.raw.write_to(out);
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
    }
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
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

/// How `write_response` frames the answer.
struct Options {
    head_only: bool,
    http10: bool,
    keep: bool,
    upgrade: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    None,
    Length,
    Chunked,
    /// Until sluice closes the connection (an HTTP/1.0 client, length unknown).
    Close,
}

/// Writes the response head and streams its body. Ok(keep): the connection may serve
/// another request.
async fn write_response(
    wr: &mut OwnedWriteHalf,
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    body: &mut ResponseBody,
    o: Options,
    mut watch: Option<(&mut OwnedReadHalf, &mut BytesMut)>,
) -> Result<bool, Cut> {
    let status = parts.status;
    let mut keep = o.keep;
    status_line(out, status);
    // A proxied response's own lines as the backend wrote them, then the headers in
    // the map (all of them, or what sluice added to the raw lines).
    let raw = body.raw_head();
    if let Some(r) = raw {
        r.write_to(out);
    }
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let has_length =
        raw.is_some_and(|r| r.has_length) || parts.headers.contains_key(header::CONTENT_LENGTH);
    let has_date = raw.is_some_and(|r| r.has_date) || parts.headers.contains_key(header::DATE);
    let no_body = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let exact = body.size_hint().exact();
    let framing = if no_body {
        Out::None
    } else if has_length {
        if o.head_only { Out::None } else { Out::Length }
    } else if o.head_only {
        // A proxied answer to HEAD says what the backend said; sluice's own tell the
        // length their GET would have.
        if let (true, Some(n)) = (body.is_local(), exact) {
            content_length_line(out, n);
        }
        Out::None
    } else if let Some(n) = exact {
        content_length_line(out, n);
        Out::Length
    } else if !o.http10 {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Out::Chunked
    } else {
        keep = false;
        Out::Close
    };
    if !has_date {
        date_line(out);
    }
    if o.upgrade {
        // The backend's Connection: upgrade and Upgrade headers were kept for this.
    } else if !keep {
        out.extend_from_slice(b"connection: close\r\n");
    } else if o.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if framing == Out::None {
        wr.write_all(out).await?;
        return Ok(keep);
    }

    let mut body = Pin::new(body);
    loop {
        // Whatever is ready goes out with what is already in `out`; only when the body
        // has to wait is `out` written first.
        let frame = match std::future::poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await
        {
            Poll::Ready(f) => f,
            Poll::Pending => {
                if !out.is_empty() {
                    wr.write_all(out).await?;
                    out.clear();
                }
                // While the body waits, a client that leaves ends the response.
                std::future::poll_fn(|cx| {
                    if let Poll::Ready(f) = body.as_mut().poll_frame(cx) {
                        return Poll::Ready(Ok(f));
                    }
                    if let Some((rd, buf)) = watch.as_mut() {
                        match tokio_util::io::poll_read_buf(Pin::new(&mut **rd), cx, *buf) {
                            Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Err(Cut::Client)),
                            Poll::Ready(Ok(_)) => watch = None,
                            Poll::Pending => {}
                        }
                    }
                    Poll::Pending
                })
                .await?
            }
        };
        match frame {
            None => {
                if framing == Out::Chunked {
                    out.extend_from_slice(wire::LAST_CHUNK);
                }
                wr.write_all(out).await?;
                out.clear();
                return Ok(keep);
            }
            Some(Err(e)) => {
                // The backend broke off: what came is passed on, then the client must
                // see a cut, not an end (End::Reset).
                tracing::debug!(error = %e, "response body broke off");
                let _ = wr.write_all(out).await;
                return Err(Cut::Backend);
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue; // trailers are not passed on
                };
                if data.is_empty() {
                    continue;
                }
                if framing == Out::Chunked {
                    wire::chunk_header(out, data.len());
                }
                if data.len() <= COALESCE {
                    out.extend_from_slice(&data);
                } else {
                    write_two(wr, out, &data).await?;
                    out.clear();
                }
                if framing == Out::Chunked {
                    out.extend_from_slice(b"\r\n");
                }
                // A body that keeps coming in small pieces goes out as it comes.
                if out.len() >= COALESCE {
                    wr.write_all(out).await?;
                    out.clear();
                }
            }
        }
    }
}

/// Why a response could not be written to its end.
enum Cut {
    /// The client left, or its socket failed.
    Client,
    /// The backend broke off mid-body.
    Backend,
}

impl From<io::Error> for Cut {
    fn from(_: io::Error) -> Cut {
        Cut::Client
    }
}

/// Answers a head refused before routing, and asks for the connection to close.
async fn refuse(wr: &mut OwnedWriteHalf, out: &mut Vec<u8>, e: &HeadError) -> io::Result<()> {
    let err = match e {
        HeadError::TooLarge => ProxyError::HeadTooLarge,
        HeadError::Bad(why) => ProxyError::BadRequest(why),
    };
    tracing::debug!(error = %err, "request head refused");
    let status = err.status();
    let text = err.body();
    status_line(out, status);
    out.extend_from_slice(b"content-type: text/plain; charset=utf-8\r\n");
    content_length_line(out, text.len() as u64);
    date_line(out);
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.extend_from_slice(text.as_bytes());
    wr.write_all(out).await
}

/// Starts `out` afresh with the status line (canonical reason phrase).
fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn content_length_line(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa(n, &mut [0u8; 20]));
    out.extend_from_slice(b"\r\n");
}

fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// `date: <now>` in IMF-fixdate, formatted once a second.
fn date_line(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: Cell<(u64, [u8; 29])> = const { Cell::new((0, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (at, mut text) = DATE.get();
    if at != secs {
        let s = httpdate::fmt_http_date(now);
        if s.len() == text.len() {
            text.copy_from_slice(s.as_bytes());
            DATE.set((secs, text));
        }
    }
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(&text);
    out.extend_from_slice(b"\r\n");
}

/// Writes `a` then `b`, in one call when the socket takes it.
async fn write_two(wr: &mut OwnedWriteHalf, a: &[u8], b: &[u8]) -> io::Result<()> {
    let (mut a, mut b) = (a, b);
    while !a.is_empty() {
        let n = wr
            .write_vectored(&[io::IoSlice::new(a), io::IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if n >= a.len() {
            b = &b[n - a.len()..];
            a = &[];
        } else {
            a = &a[n..];
        }
    }
    wr.write_all(b).await
}

/// Why a client's request body broke off.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("the client closed the connection mid-body")]
    Closed,
    #[error("reading the request body")]
    Read(#[source] io::Error),
    #[error("bad chunked request body")]
    Wire(#[source] WireError),
}

/// What a request body gives back to its connection.
struct Returned {
    rd: OwnedReadHalf,
    buf: BytesMut,
    /// The body was read to its end: the buffer holds what follows it.
    complete: bool,
}

/// What a request body and its connection's loop share.
#[derive(Default)]
pub struct Link {
    returned: Mutex<Option<Returned>>,
    /// Signalled when `returned` is filled.
    back: tokio::sync::Notify,
    /// The body is wanted and the client waits to be told to send it.
    want_continue: AtomicBool,
    /// The connection loop's waker, while the body may still ask for `100 Continue`:
    /// the body may be read on another task (hyper's, for an HTTP/2 backend), whose
    /// wakeups the loop would not see.
    loop_waker: Mutex<Option<std::task::Waker>>,
}

impl Link {
    /// Asks the loop to send `100 Continue` and wakes it.
    fn ask_continue(&self) {
        self.want_continue.store(true, Ordering::Relaxed);
        if let Some(w) = self
            .loop_waker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            w.wake();
        }
    }

    /// Keeps the loop's waker for `ask_continue`.
    fn wake_on_ask(&self, waker: &std::task::Waker) {
        let mut slot = self.loop_waker.lock().unwrap_or_else(|p| p.into_inner());
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }
}

/// A client's request body, read from its connection as the backend side consumes it.
/// When it ends or is dropped, the reading half and the buffer go back to the
/// connection's loop through the link.
pub struct H1Body {
    rd: Option<OwnedReadHalf>,
    buf: BytesMut,
    state: Framed,
    /// `Expect: 100-continue` not answered yet.
    ask: bool,
    link: Arc<Link>,
}

impl H1Body {
    fn new(
        rd: OwnedReadHalf,
        buf: BytesMut,
        framing: Framing,
        ask: bool,
        link: Arc<Link>,
    ) -> H1Body {
        let state = match framing {
            // (A request is never framed until close.)
            Framing::None | Framing::Length(0) | Framing::UntilClose => Framed::Done,
            Framing::Length(n) => Framed::Length(n),
            Framing::Chunked => Framed::Chunked(Chunked::Size),
        };
        H1Body {
            rd: Some(rd),
            buf,
            state,
            ask,
            link,
        }
    }

    fn give_back(&mut self, complete: bool) {
        if let Some(rd) = self.rd.take() {
            let r = Returned {
                rd,
                buf: std::mem::take(&mut self.buf),
                complete,
            };
            *self.link.returned.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
            self.link.back.notify_one();
        }
    }

    fn finish(&mut self) {
        self.state = Framed::Done;
        self.give_back(true);
    }

    fn fail(&mut self, e: ClientBodyError) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        self.state = Framed::Done;
        self.give_back(false);
        Poll::Ready(Some(Err(e)))
    }

    /// Skips what is left of the body if all of it is already in the buffer (a small
    /// body nobody read, for a request refused or answered without it), so that the
    /// connection can go on.
    fn skip_buffered(&mut self) -> bool {
        loop {
            match self.state.next(&mut self.buf) {
                Ok(Piece::Data(_)) => {}
                Ok(Piece::End) => return true,
                Ok(Piece::More(_)) | Err(_) => return false,
            }
        }
    }
}

impl Drop for H1Body {
    fn drop(&mut self) {
        let complete = self.rd.is_some() && self.skip_buffered();
        self.give_back(complete);
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = &mut *self;
        if this.ask {
            // The loop sends `100 Continue` (it holds the writing half), then polls
            // this again.
            this.ask = false;
            this.link.ask_continue();
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        loop {
            let room = match this.state.next(&mut this.buf) {
                Ok(Piece::Data(data)) => {
                    if this.state.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Piece::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Piece::More(room)) => room,
                Err(e) => return this.fail(ClientBodyError::Wire(e)),
            };
            let Some(rd) = this.rd.as_mut() else {
                return this.fail(ClientBodyError::Closed);
            };
            this.buf.reserve(room);
            match ready!(tokio_util::io::poll_read_buf(
                Pin::new(rd),
                cx,
                &mut this.buf
            )) {
                Ok(0) => return this.fail(ClientBodyError::Closed),
                Ok(_) => {}
                Err(e) => return this.fail(ClientBodyError::Read(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.state.size_hint()
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
        h.raw.as_ref().expect("raw lines").write_to(&mut out);
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
        let h = parse("GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\nA: b\r\n\r\n")
            .unwrap()
            .unwrap();
        let o = Outgoing {
            raw: h.raw.unwrap(),
            host: Some(HeaderValue::from_static("backend:80")),
            forwarded_host: Some(HeaderValue::from_static("h")),
            client_ip: HeaderValue::from_static("10.0.0.9"),
            https: false,
            request_id: HeaderValue::from_static("id1"),
        };
        let mut out = Vec::new();
        o.write_to(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "A: b\r\nhost: backend:80\r\nx-forwarded-for: 1.2.3.4, 10.0.0.9\r\nx-forwarded-proto: http\r\nx-forwarded-host: h\r\nx-request-id: id1\r\n"
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
    fn what_follows_an_answer_is_decided_in_one_place() {
        let next = |keep, closing, read, after| match Next::of(keep, closing, read, after) {
            Next::KeepAlive => "keep",
            Next::Close => "close",
            Next::Linger => "linger",
            Next::Tunnel(_) => "tunnel",
        };
        assert_eq!(next(true, false, true, After::Reuse), "keep");
        assert_eq!(
            next(false, false, true, After::Reuse),
            "close",
            "the client said close"
        );
        assert_eq!(
            next(true, true, true, After::Reuse),
            "close",
            "shutting down"
        );
        assert_eq!(next(true, false, true, After::Close), "close", "a refusal");
        assert_eq!(
            next(true, false, false, After::Reuse),
            "linger",
            "body left unread"
        );
        assert_eq!(next(true, false, false, After::Close), "linger");
    }

    /// The body of a request to an HTTP/2 backend is read on hyper's task: asking for
    /// `100 Continue` must wake the connection loop, not only the task reading.
    #[test]
    fn asking_for_continue_wakes_the_connection_loop() {
        struct Flag(std::sync::atomic::AtomicBool);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let loop_flag = Arc::new(Flag(AtomicBool::new(false)));
        let link = Link::default();
        link.wake_on_ask(&std::task::Waker::from(loop_flag.clone()));
        link.ask_continue();
        assert!(loop_flag.0.load(Ordering::SeqCst), "the loop was woken");
        assert!(link.want_continue.load(Ordering::SeqCst));
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

    #[test]
    fn numbers_and_dates_are_written_plainly() {
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(itoa(1234567, &mut [0; 20]), b"1234567");
        assert_eq!(
            itoa(u64::MAX, &mut [0; 20]),
            u64::MAX.to_string().as_bytes()
        );
        let mut out = Vec::new();
        date_line(&mut out);
        assert_eq!(out.len(), "date: Wed, 25 Nov 2026 10:00:00 GMT\r\n".len());
    }
}
