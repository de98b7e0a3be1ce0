//! The client side: HTTP/1.1 to backends over connections kept alive in a small pool
//! per backend. The exchange runs inside the request's own task: the head is written,
//! the response head read and parsed (wire.rs), and the response body is read from the
//! socket as the client side consumes it (`BackendBody`). No task or channel sits
//! between a request and its backend connection.
//!
//! A connection is checked out for one exchange and goes back to its backend's idle
//! list when the response body has been read to its end, the request was sent whole
//! and both sides agree to keep it alive. A response abandoned half-way drops its
//! connection instead, so a backend never sees a client's leftovers. The idle list is
//! LIFO: the most recently used connection is the one least likely to have been closed
//! by the backend. A connection that stays idle gives up its buffers too, when free
//! memory is next given back (memory.rs).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::decode::Refill;
use super::stream::{ReadHalf, Stream};
use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body::Body;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::backend_body::Upload;
pub use super::backend_body::{BackendBody, BodyError};
use super::body::{RequestBody, RequestBodyError};
use super::h1::Outgoing;
use super::head::{Framing, HEAD_READ};
pub use super::pool::Pool;
use super::pool::{Conn, Dedicated};
use super::proxy_header;
use super::request_head;
use super::upload::{send_body, upload_rest};
use super::wire::{self, WireError};
use crate::config::{ProxyVersion, UpstreamConfig};
use crate::upstream::Backend;

/// Room reserved for writing a request head.
const HEAD_GUESS: usize = 1024;

/// What a response is read from: its whole connection, or only the reading half while
/// the rest of the request body is still being sent beside the response (see `send`).
pub(super) enum Source {
    Conn(Conn),
    Half {
        read: ReadHalf,
        buf: BytesMut,
    },
    /// An HTTP/2 backend's body, read by hyper (`buf` stays empty; it is here so
    /// every variant has one, and costs no allocation).
    H2 {
        body: hyper::body::Incoming,
        buf: BytesMut,
    },
}

impl Refill for Source {
    #[inline(always)]
    fn buf(&mut self) -> &mut BytesMut {
        match self {
            Source::Conn(c) => &mut c.buf,
            Source::Half { buf, .. } | Source::H2 { buf, .. } => buf,
        }
    }

    fn poll_refill(&mut self, cx: &mut Context<'_>, room: usize) -> Poll<io::Result<usize>> {
        match self {
            Source::Conn(c) => {
                c.buf.reserve(room);
                tokio_util::io::poll_read_buf(Pin::new(&mut c.stream), cx, &mut c.buf)
            }
            Source::Half { read, buf } => {
                buf.reserve(room);
                tokio_util::io::poll_read_buf(Pin::new(read), cx, buf)
            }
            // Not read this way (see `BackendBody::poll_frame`).
            Source::H2 { .. } => Poll::Ready(Ok(0)),
        }
    }
}

impl Source {
    async fn read_more(&mut self, room: usize) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_refill(cx, room)).await
    }
}

/// The backend side of an upgraded connection (101): its socket and any bytes the
/// backend sent after the 101 head.
pub struct Upgraded {
    pub stream: Stream,
    pub read: Bytes,
}

/// A failed exchange, with what a retry needs to know.
#[derive(Debug)]
pub struct Failure {
    pub error: SendError,
    /// Nothing of the request reached the backend (connect failure, or nothing could
    /// be written): safe to send again whatever its method.
    pub unsent: bool,
    /// The connection came from the pool (a failure there may just be a stale
    /// keep-alive connection, not the backend's fault).
    pub reused: bool,
}

/// Why a request could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connect failed")]
    Connect(#[source] io::Error),
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("writing the request")]
    Write(#[source] io::Error),
    #[error("reading the response")]
    Read(#[source] io::Error),
    #[error("the backend closed the connection before answering")]
    Closed,
    #[error("bad response")]
    Response(#[source] WireError),
    #[error("request body")]
    Body(#[source] RequestBodyError),
    #[error("HTTP/2 to the backend")]
    H2(#[source] hyper::Error),
    #[error("a protocol switch (Upgrade) cannot go to an HTTP/2 backend")]
    UpgradeToH2,
}

impl Failure {
    /// A failure before any of the request reached the backend.
    pub(super) fn not_sent(error: SendError) -> Failure {
        Failure {
            error,
            unsent: true,
            reused: false,
        }
    }
}

impl SendError {
    /// Nothing reached the backend: always safe to try another one.
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_) | SendError::ConnectTimeout(_))
    }

    /// The backend's side turned the connection down: refused, no route to its host,
    /// or a failed TLS handshake. A timeout is not this: an overloaded backend whose
    /// backlog is full times out too, and must stay under the ejection cap.
    pub fn is_unreachable(&self) -> bool {
        let SendError::Connect(e) = self else {
            return false;
        };
        matches!(
            e.kind(),
            io::ErrorKind::ConnectionRefused
                | io::ErrorKind::HostUnreachable
                | io::ErrorKind::NetworkUnreachable
                // How tokio-rustls reports a failed handshake.
                | io::ErrorKind::InvalidData
        )
    }

    /// This machine failed, not the backend: out of file descriptors, local ports or
    /// buffers. Not held against the backend.
    pub fn is_local(&self) -> bool {
        let SendError::Connect(e) = self else {
            return false;
        };
        matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::EADDRNOTAVAIL | libc::ENOBUFS | libc::ENOMEM)
        )
    }
}

/// How `Client::send` goes about one exchange.
#[derive(Debug, Clone, Copy)]
pub struct How {
    /// The request asks for a protocol switch (a 101 answer is then accepted).
    pub upgrade: bool,
    /// Use a new connection, not a pooled one.
    pub fresh: bool,
    /// The request will not be sent again once a response head is in: its header map
    /// may serve the response.
    pub recycle: bool,
    /// The response's header lines may travel raw (the client speaks HTTP/1.x).
    pub raw_ok: bool,
    /// When the attempt began: the clock read once serves the pool's idle check too.
    pub now: tokio::time::Instant,
    /// The attempt's `traceparent` (SPEC §9): written as a line of the head, not put in
    /// the request's header map (one more entry there can make the map grow).
    pub traceparent: [u8; crate::otel::context::LEN],
}

/// An upstream's client settings.
#[derive(Clone)]
pub struct Client {
    /// Each backend's connections, by its `slot` in the upstream.
    pools: Box<[Arc<Pool>]>,
    pub(super) connect_timeout: Duration,
    max_idle: usize,
    /// HTTP/2 (h2c or h2) rather than HTTP/1.1 to the backends.
    h2: bool,
    /// For `https://` backends (None when the upstream has none).
    tls: Option<tokio_rustls::TlsConnector>,
    /// Each backend connection opens with a PROXY header naming its client, and serves
    /// that client only (`pool::Dedicated`).
    proxy: Option<ProxyVersion>,
}

impl Client {
    /// The upstream's trust settings were checked before (`check_supported`); if they
    /// fail now (a file changed since), its https backends fail to connect.
    /// `pools`: one per backend, in the upstream's order (`Backend::slot`).
    pub fn new(cfg: &UpstreamConfig, pools: Box<[Arc<Pool>]>) -> Client {
        let tls = super::stream::connector(cfg).unwrap_or_else(|e| {
            tracing::warn!(upstream = %cfg.name, error = %super::error::chain(&e), "https backends will fail");
            None
        });
        Client {
            pools,
            connect_timeout: cfg.connect_timeout,
            max_idle: cfg.max_idle_per_backend,
            h2: cfg.protocol != crate::config::Protocol::Http1,
            tls,
            proxy: cfg.proxy_protocol,
        }
    }

    /// `backend`'s connections. A backend and this client always come from the same
    /// `Served` upstream (build.rs gives each backend its slot and the client one pool
    /// per slot), so the slot is in range.
    pub fn pool(&self, backend: &Backend) -> &Arc<Pool> {
        &self.pools[backend.slot]
    }

    /// The PROXY header a health check opens with (v2 `LOCAL`, v1 `UNKNOWN`), for an
    /// upstream whose backends expect one on every connection.
    pub fn probe_header(&self) -> Option<&'static [u8]> {
        self.proxy.map(proxy_header::local_header)
    }

    /// Does this upstream speak HTTP/2 to its backends?
    pub fn is_h2(&self) -> bool {
        self.h2
    }

    /// Sends `req` (origin-form URI; its head's lines in `outgoing` when they travel
    /// raw) to `backend` on a pooled connection, or a new one when there is none or
    /// `how.fresh` is set, and reads the response head. The request stays with the
    /// caller, so it can be sent again; its body is consumed. After a 101 (only
    /// accepted for `how.upgrade`) the connection can be taken with
    /// `BackendBody::take_upgraded`. With `how.recycle` the request's header map serves
    /// the response (it is then left empty).
    pub async fn send(
        &self,
        backend: &Backend,
        req: &mut Request<RequestBody>,
        outgoing: Option<&Outgoing>,
        how: How,
        dedicated: &Dedicated,
    ) -> Result<Response<BackendBody>, Failure> {
        if self.h2 {
            if let Ok(v) = http::HeaderValue::from_bytes(&how.traceparent) {
                req.headers_mut().insert(&super::headers::TRACEPARENT, v);
            }
            // forward.rs refuses upgrades to HTTP/2 upstreams before they come here.
            return Box::pin(self.send_h2(backend, req)).await;
        }
        let How {
            upgrade,
            fresh,
            recycle,
            raw_ok,
            now,
            traceparent,
        } = how;
        // A client's own connections, with PROXY headers; else the backend's pool.
        let own = self.proxy.map(|_| dedicated.pool(backend));
        let pool = own.as_ref().unwrap_or_else(|| self.pool(backend));
        let pooled = if fresh { None } else { pool.take(now) };
        let reused = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            // Boxed: the common path (a pooled connection) keeps this future small.
            None => {
                let header = self
                    .proxy
                    .map(|v| proxy_header::encode(v, dedicated.client, dedicated.local));
                Box::pin(self.connect(backend, header.as_deref()))
                    .await
                    .map_err(Failure::not_sent)?
            }
        };
        let fail = |error, unsent| Failure {
            error,
            unsent,
            reused,
        };

        let has_body = !req.body().is_end_stream();
        let method = req.method().clone();
        conn.out.clear();
        // One allocation for a typical head, not a doubling series (new or shed).
        conn.out.reserve(HEAD_GUESS);
        let framing =
            request_head::encode_request_head(&mut conn.out, req, outgoing, &traceparent, has_body);
        // What the first write takes is what decides whether any of the request reached
        // the backend.
        match conn.stream.write(&conn.out).await {
            Ok(n) => conn.stream.write_all(&conn.out[n..]).await,
            Err(e) => return Err(fail(SendError::Write(e), true)),
        }
        .map_err(|e| fail(SendError::Write(e), false))?;
        // TLS may hold written bytes back until flushed (a full socket); plain TCP
        // holds none.
        if framing == Framing::None && conn.stream.is_tls() {
            conn.stream
                .flush()
                .await
                .map_err(|e| fail(SendError::Write(e), false))?;
        }
        let mut upload = None;
        let early = match framing {
            Framing::None => None,
            // Boxed: requests without a body keep this future small.
            _ => Box::pin(send_body(&mut conn, req.body_mut(), framing))
                .await
                .map_err(|e| fail(e, false))?,
        };
        let mut src = if let Some(unsent) = early {
            // The backend answers while the body is still coming (an echo, a stream, an
            // early refusal): go on sending it beside the response.
            let body = std::mem::replace(req.body_mut(), RequestBody::empty());
            let Conn { stream, buf, out } = conn;
            let (read, write) = stream.into_split();
            let rest = upload_rest(write, (unsent, body), framing, out);
            upload = Some(Upload(tokio::spawn(rest).abort_handle()));
            Source::Half { read, buf }
        } else {
            Source::Conn(conn)
        };

        let head = loop {
            // Once the head is in, a request that will not be sent again gives its
            // header map to the response (the HTTP/1.1 loop in turn reuses that map for the next
            // request head): no header map is allocated per request.
            let spare = || recycle.then(|| std::mem::take(req.headers_mut()));
            match wire::parse_response_head(src.buf(), &method, upgrade, raw_ok, spare) {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(e) => return Err(fail(SendError::Response(e), false)),
            }
            match src.read_more(HEAD_READ).await {
                Ok(0) => return Err(fail(SendError::Closed, false)),
                Ok(_) => {}
                Err(e) => return Err(fail(SendError::Read(e), false)),
            }
        };
        let reuse = (head.keep_alive && upload.is_none() && self.max_idle > 0).then(|| {
            let pool = own.unwrap_or_else(|| Arc::clone(self.pool(backend)));
            (pool, self.max_idle)
        });
        let mut body = BackendBody::new(src, head.framing, reuse, upload);
        body.raw = head.raw;
        let mut resp = Response::new(body);
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        Ok(resp)
    }

    async fn connect(&self, backend: &Backend, header: Option<&[u8]>) -> Result<Conn, SendError> {
        let connecting = self.connect_stream(backend, header);
        let stream = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| SendError::ConnectTimeout(self.connect_timeout))?
            .map_err(SendError::Connect)?;
        Ok(Conn::new(stream))
    }

    /// A new connection to `backend`: TCP, the PROXY `header` if given, and the TLS
    /// handshake for an `https://` one (a failed handshake counts as a failed connect:
    /// no request was sent).
    pub async fn connect_stream(
        &self,
        backend: &Backend,
        header: Option<&[u8]>,
    ) -> io::Result<Stream> {
        let mut tcp = connect_tcp(backend).await?;
        let _ = tcp.set_nodelay(true);
        if let Some(h) = header {
            tcp.write_all(h).await?;
        }
        if backend.url.scheme != crate::config::Scheme::Https {
            return Ok(Stream::Plain(tcp));
        }
        let Some(tls) = &self.tls else {
            return Err(io::Error::other(
                "no TLS client for this upstream (see the startup log)",
            ));
        };
        let name = super::stream::server_name(&backend.url.host)?;
        let tls = tls.connect(name, tcp).await?;
        Ok(Stream::Tls(Box::new(tls)))
    }
}

/// Connects to the backend's address, resolving its name when it is not an IP literal.
pub(crate) async fn connect_tcp(backend: &Backend) -> io::Result<TcpStream> {
    if let Some(addr) = backend.socket_addr {
        return TcpStream::connect(addr).await;
    }
    let mut last = io::Error::new(io::ErrorKind::NotFound, "name resolved to no address");
    for addr in tokio::net::lookup_host((backend.url.host.as_str(), backend.url.port)).await? {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_error(kind: io::ErrorKind) -> SendError {
        SendError::Connect(io::Error::from(kind))
    }

    #[test]
    fn only_a_backend_turning_the_connection_down_is_unreachable() {
        assert!(connect_error(io::ErrorKind::ConnectionRefused).is_unreachable());
        assert!(connect_error(io::ErrorKind::HostUnreachable).is_unreachable());
        assert!(
            connect_error(io::ErrorKind::InvalidData).is_unreachable(),
            "TLS"
        );
        assert!(!SendError::ConnectTimeout(Duration::from_secs(3)).is_unreachable());
        assert!(!SendError::Closed.is_unreachable());
        let emfile = SendError::Connect(io::Error::from_raw_os_error(libc::EMFILE));
        assert!(emfile.is_local() && !emfile.is_unreachable());
        assert!(!connect_error(io::ErrorKind::ConnectionRefused).is_local());
    }
}
