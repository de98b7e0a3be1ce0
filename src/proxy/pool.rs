//! Idle connections to one backend, kept alive for reuse: a LIFO list for HTTP/1.1
//! (the most recently used connection is the least likely to have been closed by the
//! backend) and one shared sender for HTTP/2. A connection that stays idle gives up its
//! buffers when free memory is next given back (memory.rs).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Waker};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncRead;
use tokio::time::Instant;

use super::body::RequestBody;
use super::stream::Stream;

/// How long an unused pooled connection may be reused. Below common backend keep-alive
/// timeouts (nginx 75s, Apache 5s is the outlier) would be safer still; the stale
/// connection retry (forward.rs) covers the race.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// An idle connection's buffers are shed after this long unused (`shed_idle_buffers`).
const SHED_AFTER: Duration = Duration::from_millis(100);
/// One connection to a backend.
pub struct Conn {
    pub(super) stream: Stream,
    /// Bytes read and not consumed yet.
    pub(super) buf: BytesMut,
    /// The request head being written.
    pub(super) out: Vec<u8>,
}

impl Conn {
    pub(super) fn new(stream: Stream) -> Conn {
        Conn {
            stream,
            buf: BytesMut::new(),
            out: Vec::new(),
        }
    }
}

/// Idle connections to one backend. Shared by every snapshot holding that backend, so
/// reloads keep warm connections.
pub struct Pool {
    /// One list per worker (workers.rs): a connection is registered with the reactor of
    /// the worker that opened it, so only that worker takes it again.
    idle: Box<[Mutex<Vec<Idle>>]>,
    /// The backend's HTTP/2 connection (`protocol = "h2c"`/`"h2"`), shared by every
    /// request to it.
    h2: Mutex<Option<H2Sender>>,
    /// While an HTTP/2 connection is being opened: where its outcome will be told, so
    /// that requests arriving meanwhile wait for that one attempt (and share its
    /// failure) instead of each opening their own in turn.
    pub(super) h2_opening: Mutex<Option<H2Opening>>,
}

/// The outcome of opening an HTTP/2 connection, once known.
pub(super) type H2Opening = tokio::sync::watch::Receiver<Option<Result<H2Sender, Arc<str>>>>;

/// Clears a pool's `h2_opening` when its opener is done, or dropped midway.
pub(super) struct OpeningGuard<'a>(pub(super) &'a Pool);

impl Drop for OpeningGuard<'_> {
    fn drop(&mut self) {
        *self.0.h2_opening.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

pub(crate) type H2Sender = hyper::client::conn::http2::SendRequest<RequestBody>;

/// Every pool, so that idle connections' buffers can be shed (`shed_idle_buffers`).
static POOLS: Mutex<Vec<Weak<Pool>>> = Mutex::new(Vec::new());

/// Drops the buffers of connections idle for `SHED_AFTER` in every pool: they are
/// allocated again when used. Called before free memory is given back to the OS
/// (memory.rs); pools gone with their backends are forgotten here.
pub fn shed_idle_buffers() {
    let mut pools = POOLS.lock().unwrap_or_else(|p| p.into_inner());
    pools.retain(|p| match p.upgrade() {
        Some(pool) => {
            let now = Instant::now();
            for list in &pool.idle {
                for i in lock(list).iter_mut() {
                    if now.duration_since(i.since) >= SHED_AFTER && i.conn.buf.capacity() > 0 {
                        i.conn.buf = BytesMut::new();
                        i.conn.out = Vec::new();
                    }
                }
            }
            true
        }
        None => false,
    });
}

fn lock(list: &Mutex<Vec<Idle>>) -> std::sync::MutexGuard<'_, Vec<Idle>> {
    list.lock().unwrap_or_else(|p| p.into_inner())
}

struct Idle {
    conn: Conn,
    /// When it was last used.
    since: Instant,
}

impl Pool {
    pub fn new() -> Arc<Pool> {
        let pool = Arc::new(Pool {
            idle: (0..super::workers::count())
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            h2: Mutex::new(None),
            h2_opening: Mutex::new(None),
        });
        POOLS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(&pool));
        pool
    }

    /// The calling worker's idle connections.
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        let i = super::workers::index().min(self.idle.len() - 1);
        lock(&self.idle[i])
    }

    pub(super) fn h2_slot(&self) -> std::sync::MutexGuard<'_, Option<H2Sender>> {
        self.h2.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The backend's HTTP/2 connection, if it has one still open.
    pub(super) fn h2_sender(&self) -> Option<H2Sender> {
        let mut slot = self.h2_slot();
        match &*slot {
            Some(s) if !s.is_closed() => Some(s.clone()),
            _ => {
                *slot = None;
                None
            }
        }
    }

    /// Forgets the HTTP/2 connection if it is closed (not one opened since).
    pub(super) fn drop_closed_h2(&self) {
        let mut slot = self.h2_slot();
        if slot.as_ref().is_some_and(|s| s.is_closed()) {
            *slot = None;
        }
    }

    pub(super) fn put(&self, conn: Conn, max_idle: usize) {
        let mut idle = self.lock();
        if idle.len() >= max_idle {
            return;
        }
        idle.push(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// The most recently used idle connection that still looks open, at `now`.
    pub(super) fn take(&self, now: Instant) -> Option<Conn> {
        loop {
            let Idle { mut conn, since } = self.lock().pop()?;
            if now.saturating_duration_since(since) > POOL_IDLE_TIMEOUT {
                continue;
            }
            // Nothing should arrive on an idle connection. If tokio saw something (the
            // backend's FIN, most likely), ask the kernel what it is.
            // TLS: rustls may hold data already read from the socket, which the
            // socket's readiness does not show; always look.
            let stirred = conn.stream.is_tls()
                || conn
                    .stream
                    .tcp()
                    .poll_read_ready(&mut Context::from_waker(Waker::noop()))
                    .is_ready();
            if stirred && !still_open(&mut conn.stream) {
                continue;
            }
            return Some(conn);
        }
    }
}

/// The backend connections of one client connection, for upstreams that open each with
/// a PROXY header naming the client (`proxy_protocol`): such a connection must carry
/// only that client's requests, so it is kept here rather than in the backend's shared
/// pool (as HAProxy does with `send-proxy`), and closes when the client connection ends.
pub struct Dedicated {
    /// The client the headers name, and where it connected to.
    pub(super) client: SocketAddr,
    pub(super) local: SocketAddr,
    /// One pool per backend, keyed by its stats (one per upstream and backend).
    pools: Mutex<Vec<(usize, Arc<Pool>)>>,
}

impl Dedicated {
    /// No allocation until a backend connection is made for the client.
    pub fn new(client: SocketAddr, local: SocketAddr) -> Dedicated {
        Dedicated {
            client,
            local,
            pools: Mutex::new(Vec::new()),
        }
    }

    /// This client's idle connections to `backend`.
    #[cold]
    pub(super) fn pool(&self, backend: &crate::upstream::Backend) -> Arc<Pool> {
        let key = Arc::as_ptr(&backend.stats) as usize;
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, p)) = pools.iter().find(|(k, _)| *k == key) {
            return Arc::clone(p);
        }
        let p = Pool::new();
        pools.push((key, Arc::clone(&p)));
        p
    }
}

/// Is a pooled connection still open, with nothing unexpected waiting on it? Plain:
/// asks the kernel directly (a non-blocking peek). TLS: reads without waiting, so
/// records that carry no data (session tickets) are taken in; a close or any data means
/// the connection is not to be reused.
fn still_open(stream: &mut Stream) -> bool {
    match stream {
        Stream::Plain(s) => {
            let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
            matches!(
                socket2::SockRef::from(&*s).peek(&mut byte),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            )
        }
        Stream::Tls(s) => {
            let mut byte = [0u8; 1];
            let mut rb = tokio::io::ReadBuf::new(&mut byte);
            let mut cx = Context::from_waker(Waker::noop());
            Pin::new(&mut **s).poll_read(&mut cx, &mut rb).is_pending()
        }
    }
}
