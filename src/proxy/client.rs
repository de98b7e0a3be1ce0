//! The client side: HTTP/1.1 connections to backends, kept alive in a small pool per
//! backend. hyper does the HTTP (`hyper::client::conn::http1`); this module only
//! decides which connection carries a request.
//!
//! A connection is checked out for one request and goes back to its backend's idle
//! list when the response body has been read to the end (`Pooled::release`). A response
//! abandoned half-way drops its connection instead, so a backend never sees a client's
//! leftovers. The idle list is LIFO: the most recently used connection is the one least
//! likely to have been closed by the backend.
//!
//! Parking: a hyper client connection holds ~30 KiB (buffers and its request channel).
//! One left unused in the pool for `PARK_AFTER` is taken apart by its own driver task
//! and kept as a bare socket at the bottom of the list; using it again costs a new
//! handshake object, not a new TCP connection.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::body::RequestBody;
use crate::config::UpstreamConfig;
use crate::upstream::Backend;

/// How long an unused pooled connection may be reused. Below common backend keep-alive
/// timeouts (nginx 75s, Apache 5s is the outlier) would be safer still; TODO(#3) the
/// stale-connection retry covers the race.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a pooled connection stays inside hyper while unused. Its driver checks
/// this often, so a busy connection costs one timer wakeup per second.
const PARK_AFTER: Duration = Duration::from_secs(1);

type Sender = http1::SendRequest<RequestBody>;

/// Idle connections to one backend. Shared by every snapshot holding that backend, so
/// reloads keep warm connections.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    next_id: AtomicU64,
}

struct Idle {
    conn: IdleConn,
    /// When it was last used.
    since: Instant,
    id: u64,
}

enum IdleConn {
    Ready(Sender),
    Parked(TcpStream),
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Idle connections now held, ready and parked (for tests and status).
    pub fn idle_len(&self) -> usize {
        self.lock().len()
    }

    /// Parked connections now held.
    pub fn parked_len(&self) -> usize {
        self.lock()
            .iter()
            .filter(|i| matches!(i.conn, IdleConn::Parked(_)))
            .count()
    }

    /// Called by connection `id`'s driver: if it has sat ready in the pool for
    /// `PARK_AFTER`, takes it out (dropping its sender, which ends hyper's dispatcher)
    /// and returns None with the time it was last used. Otherwise returns when to ask
    /// again.
    fn take_for_parking(&self, id: u64) -> Result<Instant, Instant> {
        let mut idle = self.lock();
        let now = Instant::now();
        match idle.iter().position(|i| i.id == id) {
            Some(pos) if now.duration_since(idle[pos].since) >= PARK_AFTER => {
                let since = idle.remove(pos).since;
                Ok(since)
            }
            Some(pos) => Err(idle[pos].since + PARK_AFTER),
            None => Err(now + PARK_AFTER), // in use
        }
    }

    fn put_parked(&self, stream: TcpStream, since: Instant, id: u64, max_idle: usize) {
        let mut idle = self.lock();
        if idle.len() < max_idle {
            // At the bottom: ready connections are preferred.
            idle.insert(
                0,
                Idle {
                    conn: IdleConn::Parked(stream),
                    since,
                    id,
                },
            );
        }
    }
}

/// A connection lent to one request.
pub struct Pooled {
    sender: Sender,
    id: u64,
    pool: Arc<Pool>,
    max_idle: usize,
}

impl Pooled {
    /// Gives the connection back after its response ended cleanly.
    pub fn release(self) {
        if self.sender.is_closed() || self.max_idle == 0 {
            return;
        }
        let mut idle = self.pool.lock();
        if idle.len() < self.max_idle {
            idle.push(Idle {
                conn: IdleConn::Ready(self.sender),
                since: Instant::now(),
                id: self.id,
            });
        }
    }
}

/// A failed exchange, with what a retry needs to know.
pub struct Failure {
    pub error: SendError,
    /// The request, when none of it reached the backend (connect failure, or a pooled
    /// connection found closed before the request was written): safe to send again
    /// whatever its method.
    pub unsent: Option<Request<RequestBody>>,
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
    #[error("HTTP handshake failed")]
    Handshake(#[source] hyper::Error),
    #[error("request failed")]
    Request(#[source] hyper::Error),
}

impl SendError {
    /// Nothing reached the backend: always safe to try another one.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            SendError::Connect(_) | SendError::ConnectTimeout(_) | SendError::Handshake(_)
        )
    }
}

/// An upstream's client settings.
#[derive(Clone)]
pub struct Client {
    connect_timeout: Duration,
    max_idle: usize,
}

impl Client {
    pub fn new(cfg: &UpstreamConfig) -> Client {
        Client {
            connect_timeout: cfg.connect_timeout,
            max_idle: cfg.max_idle_per_backend,
        }
    }

    /// Sends `req` (origin-form URI) to `backend` on a pooled connection, or a new one
    /// when there is none or `fresh` is set. Returns the response head and the
    /// connection, to be released at end of body. An upgrade request gets a connection
    /// of its own, which its tunnel will consume. On failure the request comes back
    /// when none of it was written (see `Failure`).
    pub async fn send(
        &self,
        backend: &Backend,
        req: Request<RequestBody>,
        upgrade: bool,
        fresh: bool,
    ) -> Result<(Response<Incoming>, Pooled), Failure> {
        // The rare paths (new connections, parked sockets) are boxed: the common one, a
        // ready pooled connection, then keeps this future small, and every request's
        // future is moved several times on its way into hyper.
        let got = if upgrade || fresh {
            let id = backend.pool.next_id.fetch_add(1, Ordering::Relaxed);
            let pool_id = (!upgrade).then_some(id);
            Box::pin(self.connect(backend, pool_id))
                .await
                .map(|s| (s, id, false))
        } else {
            match self.checkout_ready(backend) {
                Some((s, id)) => Ok((s, id, true)),
                None => Box::pin(self.checkout_or_connect(backend)).await,
            }
        };
        let (mut sender, id, reused) = match got {
            Ok(g) => g,
            Err(error) => {
                return Err(Failure {
                    error,
                    unsent: Some(req),
                    reused: false,
                });
            }
        };
        match sender.try_send_request(req).await {
            Ok(resp) => Ok((
                resp,
                Pooled {
                    sender,
                    id,
                    pool: Arc::clone(&backend.pool),
                    max_idle: if upgrade { 0 } else { self.max_idle },
                },
            )),
            Err(mut e) => Err(Failure {
                unsent: e.take_message(),
                error: SendError::Request(e.into_error()),
                reused,
            }),
        }
    }

    /// A pooled connection that is ready right now, without waiting: the common case.
    fn checkout_ready(&self, backend: &Backend) -> Option<(Sender, u64)> {
        let mut idle = backend.pool.lock();
        match idle.last() {
            Some(Idle {
                conn: IdleConn::Ready(sender),
                since,
                ..
            }) if sender.is_ready() && since.elapsed() <= POOL_IDLE_TIMEOUT => {}
            _ => return None,
        }
        match idle.pop() {
            Some(Idle {
                conn: IdleConn::Ready(sender),
                id,
                ..
            }) => Some((sender, id)),
            _ => None,
        }
    }

    /// Any usable pooled connection (waiting for one to finish its last exchange, or
    /// waking a parked socket), else a new one.
    async fn checkout_or_connect(
        &self,
        backend: &Backend,
    ) -> Result<(Sender, u64, bool), SendError> {
        if let Some((s, id)) = self.checkout(backend).await {
            return Ok((s, id, true));
        }
        let id = backend.pool.next_id.fetch_add(1, Ordering::Relaxed);
        let stream = self.connect_tcp(backend).await?;
        Ok((self.handshake(backend, stream, Some(id)).await?, id, false))
    }

    async fn checkout(&self, backend: &Backend) -> Option<(Sender, u64)> {
        loop {
            let idle = backend.pool.lock().pop()?;
            if idle.since.elapsed() > POOL_IDLE_TIMEOUT {
                continue;
            }
            match idle.conn {
                IdleConn::Ready(mut sender) => {
                    // Ready at once unless the connection task is still finishing the
                    // previous exchange; an error means the backend closed it.
                    if !sender.is_closed() && sender.ready().await.is_ok() {
                        return Some((sender, idle.id));
                    }
                }
                IdleConn::Parked(stream) => {
                    if still_open(&stream) {
                        if let Ok(sender) = self.handshake(backend, stream, Some(idle.id)).await {
                            return Some((sender, idle.id));
                        }
                    }
                }
            }
        }
    }

    async fn connect(&self, backend: &Backend, id: Option<u64>) -> Result<Sender, SendError> {
        let stream = self.connect_tcp(backend).await?;
        self.handshake(backend, stream, id).await
    }

    async fn connect_tcp(&self, backend: &Backend) -> Result<TcpStream, SendError> {
        let stream = tokio::time::timeout(self.connect_timeout, connect_tcp(backend))
            .await
            .map_err(|_| SendError::ConnectTimeout(self.connect_timeout))?
            .map_err(SendError::Connect)?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Starts hyper's HTTP/1 client on `stream`. With a pool `id`, the connection can
    /// park itself in `backend`'s pool; without, it supports upgrades instead.
    async fn handshake(
        &self,
        backend: &Backend,
        stream: TcpStream,
        id: Option<u64>,
    ) -> Result<Sender, SendError> {
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Handshake)?;
        match id {
            None => {
                tokio::spawn(async move {
                    if let Err(e) = conn.with_upgrades().await {
                        tracing::debug!(error = %e, "backend connection ended with an error");
                    }
                });
            }
            Some(id) => {
                let pool = Arc::clone(&backend.pool);
                tokio::spawn(drive(conn, pool, id, self.max_idle));
            }
        }
        Ok(sender)
    }
}

/// Runs one pooled backend connection; parks it when it sits unused in the pool.
async fn drive(
    mut conn: http1::Connection<TokioIo<TcpStream>, RequestBody>,
    pool: Arc<Pool>,
    id: u64,
    max_idle: usize,
) {
    let sleep = tokio::time::sleep(PARK_AFTER);
    tokio::pin!(sleep);
    let mut parked_since = None;
    let ended = loop {
        tokio::select! {
            r = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break r,
            _ = &mut sleep, if parked_since.is_none() => match pool.take_for_parking(id) {
                // The sender is gone; hyper's dispatcher now ends without closing.
                Ok(since) => parked_since = Some(since),
                Err(next) => sleep.as_mut().reset(next),
            },
        }
    };
    match (ended, parked_since) {
        (Ok(()), Some(since)) => {
            let parts = conn.into_parts();
            if parts.read_buf.is_empty() {
                let stream = parts.io.into_inner();
                // Replace this task's wakers in the socket's slots, so the finished task
                // is freed now rather than when the socket next becomes ready.
                let mut cx = Context::from_waker(Waker::noop());
                let _ = stream.poll_read_ready(&mut cx);
                let _ = stream.poll_write_ready(&mut cx);
                pool.put_parked(stream, since, id, max_idle);
            }
            crate::memory::note_freed();
        }
        (Ok(()), None) => {}
        (Err(e), _) => tracing::debug!(error = %e, "backend connection ended with an error"),
    }
}

/// Is a parked socket still open, with nothing unexpected waiting on it? Asks the
/// kernel directly (a non-blocking peek): tokio's readiness may not have seen a FIN
/// that already arrived.
fn still_open(stream: &TcpStream) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    matches!(
        socket2::SockRef::from(stream).peek(&mut byte),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock
    )
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

/// The backend's socket address when its host is an IP literal.
pub fn literal_addr(host: &str, port: u16) -> Option<SocketAddr> {
    host.parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, port))
}
