//! Listeners: bind first (so callers learn the real addresses, port 0 included), then
//! serve until told to stop, then drain. Each accepted connection runs in its own task:
//! HTTP/2 with prior knowledge (h2c) or HTTP/1.1, chosen from its first bytes, with a
//! watchdog for `idle_timeout` and `header_read_timeout`. An idle HTTP/1 connection is
//! parked: its loop lets go of it, its task ends, and only the socket waits in the
//! parking lot (park.rs) until the client sends again.
//!
//! Each connection holds one of `max_connections` permits, taken before `accept`, so
//! over the limit new clients wait in the kernel's backlog; draining waits until every
//! permit is back.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::telemetry::{self, Refusal};

use super::Shared;
use super::body::{ClientBody, ResponseBody};
use super::conn::{Activity, Expired, Timers, Tracked, Verdict};
use super::forward::{Answer, ConnInfo, handle_boxed};
use super::listeners::{AcceptCtx, Bound, Setup};
use super::park::{Lot, Woken};
use super::server_tls::serve_tls;
use super::{h1, proxy_header, upgrade, workers};

/// After an accept error (e.g. out of file descriptors), wait before trying again so
/// the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// The HTTP/2 connection preface a prior-knowledge client opens with.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A listener that could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("listener {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        #[source]
        source: super::tls::TlsError,
    },
}

/// Bound listeners, ready to serve.
pub struct Server {
    shared: Arc<Shared>,
    listeners: Vec<Bound>,
}

pub(crate) async fn bind_one(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError::Io { addr, source })
}

impl Server {
    /// Opens every proxy listener of the running config (the admin listener is the
    /// app's: app.rs).
    pub async fn bind(shared: Arc<Shared>) -> Result<Server, BindError> {
        Self::bind_inherited(shared, &mut Vec::new())
    }

    /// Like `bind`, serving a configured address on a socket `inherited` holds for it
    /// (taken over from a running sluice; taken out of the list) and binding the rest.
    pub fn bind_inherited(
        shared: Arc<Shared>,
        inherited: &mut Vec<(SocketAddr, std::net::TcpListener)>,
    ) -> Result<Server, BindError> {
        let config = shared.config.load_full();
        let listeners = config
            .listeners
            .iter()
            .map(
                |c| match inherited.iter().position(|(a, _)| *a == c.address) {
                    // In order: the same address configured twice maps first to first.
                    Some(i) => Bound::adopt(c, inherited.remove(i).1),
                    None => Bound::bind(c),
                },
            )
            .collect::<Result<_, _>>()?;
        Ok(Server { shared, listeners })
    }

    /// The proxy listeners' bound addresses, in config order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(Bound::local_addr)
            .collect()
    }

    /// Serves until `shutdown` resolves, then stops accepting and lets open requests
    /// finish for up to `shutdown_timeout`. `started` is told once every listener
    /// accepts.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()>,
        started: Option<tokio::sync::oneshot::Sender<()>>,
    ) {
        let limits = self.shared.limits.load_full();
        // acquire_many takes a u32; no machine holds that many sockets anyway.
        let max = u32::try_from(limits.max_connections).unwrap_or(u32::MAX >> 3);
        let permits = Arc::new(Semaphore::new(max as usize));
        let _ = self
            .shared
            .connections
            .set((Arc::clone(&permits), max as usize));
        let protocols = Arc::new(Protocols::new(limits.max_header_bytes));

        let (shared, protos) = (Arc::clone(&self.shared), Arc::clone(&protocols));
        let handle = tokio::runtime::Handle::current();
        let lot = Lot::start(move |woken: Woken, lot: &Arc<Lot>| {
            // Where the client connected to (for PROXY headers to backends).
            let local = woken.stream.local_addr().unwrap_or(woken.client);
            let ctx = ConnCtx {
                client: woken.client,
                local,
                shared: Arc::clone(&shared),
                protocols: Arc::clone(&protos),
                // Its listener's: a removed listener drains its woken connections too.
                stop: woken.stop,
                permit: woken.permit,
                lot: Some(Arc::clone(lot)),
            };
            workers::spawn_std(woken.stream, &handle, move |stream| {
                serve_h1(h1::Sock::new(stream, BytesMut::new()), None, ctx)
            });
        });
        let (lot, closer) = match lot {
            Ok((lot, closer)) => (Some(lot), Some(closer)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot park idle connections; they stay in their tasks");
                (None, None)
            }
        };
        let ctx = AcceptCtx {
            permits: Arc::clone(&permits),
            protocols,
            lot,
        };
        self.shared
            .listeners
            .start(ctx, self.listeners, &self.shared);
        if let Some(started) = started {
            let _ = started.send(());
        }
        shutdown.await;
        tracing::info!("shutting down: no new connections, draining open requests");
        drop(closer); // closes the parked connections
        for l in self.shared.listeners.stop_all() {
            let _ = l.await;
        }
        let timeout = self.shared.config.load().server.shutdown_timeout;
        // Every connection task holds a permit until it ends.
        if tokio::time::timeout(timeout, permits.acquire_many(max))
            .await
            .is_err()
        {
            let open = (max as usize).saturating_sub(permits.available_permits());
            self.shared
                .drains
                .cut
                .fetch_add(open as u64, Ordering::Relaxed);
            tracing::warn!(
                timeout_ms = timeout.as_millis() as u64,
                connections = open,
                "shutdown_timeout reached; closing remaining connections"
            );
        }
        let d = &self.shared.drains;
        tracing::info!(
            clean = d.clean.load(Ordering::Relaxed),
            cut = d.cut.load(Ordering::Relaxed),
            "drained"
        );
    }
}

/// hyper's server settings, shared by all connections: HTTP/2, over TLS or not
/// (HTTP/1.x is sluice's own loop, h1/).
pub(super) struct Protocols {
    pub(super) h2: http2::Builder<TokioExecutor>,
}

impl Protocols {
    fn new(max_header_bytes: usize) -> Protocols {
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX));
        Protocols { h2 }
    }
}

pub(super) async fn accept_loop(
    listener: TcpListener,
    setup: Arc<ArcSwap<Setup>>,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    protocols: Arc<Protocols>,
    lot: Option<Arc<Lot>>,
    mut stop: watch::Receiver<bool>,
) {
    let bound = listener.local_addr().ok();
    if let Some(addr) = bound {
        let s = setup.load();
        let (tls, proxy_protocol) = (s.tls.is_some(), s.proxy_protocol);
        tracing::info!(address = %addr, tls, proxy_protocol, "listening");
    }
    // The address clients connect to; asked per connection only for a wildcard bind.
    let fixed = bound.filter(|a| !a.ip().is_unspecified());
    loop {
        // Over max_connections, stop accepting: new clients wait in the kernel backlog.
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        // A permit held here is no connection yet (for the connection gauge).
        shared.accepting.fetch_add(1, Ordering::Relaxed);
        let accepted = tokio::select! {
            r = listener.accept() => Some(r),
            _ = stop.changed() => None,
        };
        shared.accepting.fetch_sub(1, Ordering::Relaxed);
        let (stream, client) = match accepted {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
            None => return,
        };
        let _ = stream.set_nodelay(true);
        let local = fixed.or_else(|| stream.local_addr().ok()).unwrap_or(client);
        let ctx = ConnCtx {
            client,
            local,
            shared: Arc::clone(&shared),
            protocols: Arc::clone(&protocols),
            stop: stop.clone(),
            permit,
            lot: lot.clone(),
        };
        // Read at each accept: a reload may have changed it.
        let setup = setup.load_full();
        if setup.proxy_protocol {
            workers::spawn(stream, move |s| behind_proxy(s, setup, ctx));
        } else {
            match &setup.tls {
                None => workers::spawn(stream, move |s| serve_connection(s, ctx)),
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    workers::spawn(stream, move |s| serve_tls(s, acceptor, ctx));
                }
            }
        }
    }
}

/// A connection on a `proxy_protocol` listener: its PROXY header first (within
/// `header_read_timeout`, which then also bounds what follows), which names the client;
/// without a valid one it is closed.
async fn behind_proxy(mut stream: TcpStream, setup: Arc<Setup>, mut ctx: ConnCtx) {
    let header_read = ctx.timers().header_read;
    let refuse = |ctx: &ConnCtx, e: &dyn std::fmt::Display| {
        let counts = &ctx.shared.refused;
        telemetry::refused_connection(counts, ctx.client, Refusal::ProxyHeader, Some(e));
    };
    match tokio::time::timeout(header_read, proxy_header::read(&mut stream)).await {
        Ok(Ok(source)) => ctx.client = source.unwrap_or(ctx.client),
        Ok(Err(proxy_header::ReadError::Closed)) => return,
        Ok(Err(e)) => return refuse(&ctx, &e),
        Err(_) => return refuse(&ctx, &"timed out (header_read_timeout)"),
    }
    match &setup.tls {
        None => serve_connection(stream, ctx).await,
        Some(acceptor) => serve_tls(stream, acceptor.clone(), ctx).await,
    }
}

/// Everything a client connection carries from task to task (active, parked, active
/// again), including its `max_connections` permit.
pub(super) struct ConnCtx {
    pub(super) client: SocketAddr,
    /// Where it connected to.
    pub(super) local: SocketAddr,
    pub(super) shared: Arc<Shared>,
    pub(super) protocols: Arc<Protocols>,
    pub(super) stop: watch::Receiver<bool>,
    pub(super) permit: OwnedSemaphorePermit,
    /// Where idle HTTP/1 connections wait; None if it could not be set up.
    pub(super) lot: Option<Arc<Lot>>,
}

impl ConnCtx {
    pub(super) fn timers(&self) -> Timers {
        let l = self.shared.limits.load();
        Timers {
            header_read: l.header_read_timeout,
            idle: l.idle_timeout,
        }
    }
}

/// The service hyper calls for each request of an HTTP/2 connection.
pub(super) fn service(
    shared: &Arc<Shared>,
    info: &Arc<ConnInfo>,
) -> impl hyper::service::Service<
    http::Request<Incoming>,
    Response = http::Response<ResponseBody>,
    Error = Infallible,
    Future = Answer,
> + Clone
+ Send
+ 'static {
    let shared = Arc::clone(shared);
    let info = Arc::clone(info);
    service_fn(move |req: http::Request<Incoming>| -> Answer {
        handle_boxed(&shared, &info, req.map(ClientBody::Hyper))
    })
}

/// A new connection: HTTP/2 with prior knowledge or HTTP/1.1, told by its first bytes.
async fn serve_connection(stream: TcpStream, ctx: ConnCtx) {
    let timers = ctx.timers();
    // A new connection's first request may be on its way: even when draining, it is
    // waited for (within `header_read_timeout`) and answered, with `Connection: close`.
    match tokio::time::timeout(timers.header_read, is_h2(&stream)).await {
        // Boxed: hyper's HTTP/2 connection is large, and every connection task would
        // otherwise reserve room for it, HTTP/1 ones included.
        Ok(Ok(Some(true))) => Box::pin(serve_h2(stream, ctx)).await,
        Ok(Ok(Some(false))) => serve_h1(h1::Sock::new(stream, BytesMut::new()), None, ctx).await,
        Err(_) => telemetry::refused_connection(
            &ctx.shared.refused,
            ctx.client,
            Refusal::HeaderTimeout,
            None,
        ),
        Ok(_) => {} // closed or failed before sending anything
    }
}

/// Does the client open with the HTTP/2 preface? Peeks, so hyper still reads every
/// byte. None: the client closed before sending anything.
async fn is_h2(stream: &TcpStream) -> io::Result<Option<bool>> {
    let mut buf = [0u8; 24];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(Some(false));
        }
        if n == H2_PREFACE.len() {
            return Ok(Some(true));
        }
        // A partial preface: rare (split packets); look again shortly.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// HTTP/1.1 (h1/) until the connection closes, goes idle (then it is parked and
/// this task ends), or is upgraded (then it becomes a tunnel). `tls`: the connection's
/// activity since its accept (the handshake counts against `header_read_timeout`), for
/// a TLS connection, which is never parked: its session lives in user space.
pub(super) async fn serve_h1(mut sock: h1::Sock, tls: Option<Arc<Activity>>, mut ctx: ConnCtx) {
    let timers = ctx.timers();
    let https = tls.is_some();
    let activity = tls.unwrap_or_else(|| Arc::new(Activity::new()));
    let may_park = !https && ctx.lot.is_some();
    let info = Arc::new(ConnInfo::new(
        (ctx.client, ctx.local),
        https,
        false,
        Arc::clone(&activity),
        Arc::clone(&ctx.shared.refused),
    ));
    let flags = h1::Flags::default();
    let end = {
        let conn = h1::serve(&mut sock, &ctx.shared, &info, &flags);
        tokio::pin!(conn);
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        // The watchdog timer and the shutdown signal are polled once to register this
        // task for them; after that they are looked at (cheaply) only when it wakes,
        // not polled again on every wakeup of a busy connection.
        let mut armed = false;
        let mut stop_rx = ctx.stop.clone();
        let stop = stop_rx.changed();
        tokio::pin!(stop);
        let mut stop_armed = false;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(end) = conn.as_mut().poll(cx) {
                return Poll::Ready(Some(end));
            }
            if !flags.closing() && (!stop_armed || ctx.stop.has_changed().unwrap_or(true)) {
                stop_armed = true;
                if stop.as_mut().poll(cx).is_ready() {
                    // Between requests: close now. Otherwise the request under way (or
                    // a new connection's first, on its way) is answered with
                    // `Connection: close`.
                    flags.close();
                    if flags.idle() && activity.answered() {
                        return Poll::Ready(None);
                    }
                }
            }
            while !armed || sleep.is_elapsed() {
                if sleep.as_mut().poll(cx).is_pending() {
                    armed = true;
                    break;
                }
                armed = false;
                match activity.check(timers, may_park) {
                    Verdict::WaitUntil(t) => sleep.as_mut().reset(t),
                    // Only between requests, when the loop holds nothing but the socket.
                    Verdict::Park if flags.idle() => return Poll::Ready(Some(h1::End::Park)),
                    Verdict::Park => sleep
                        .as_mut()
                        .reset(tokio::time::Instant::now() + super::conn::PARK_AFTER),
                    Verdict::Close(why) => {
                        closed_by_watchdog(&ctx, why);
                        return Poll::Ready(None);
                    }
                }
            }
            Poll::Pending
        })
        .await
    };
    // The loop's buffers are gone, or about to be.
    super::memory::note_freed();
    // Closed by a drain (shutdown, upgrade, a removed listener): idle, or right after
    // an answer that said `Connection: close`.
    if flags.closing() && matches!(end, None | Some(h1::End::Close | h1::End::Linger)) {
        ctx.shared.drains.clean.fetch_add(1, Ordering::Relaxed);
    }
    match end {
        // Shutdown or a timer: drop the connection as it stands.
        None => {}
        Some(h1::End::Close) => sock.close(false).await,
        Some(h1::End::Linger) => sock.close(true).await,
        Some(h1::End::Reset) => sock.reset(),
        Some(h1::End::Upgrade(backend)) => match sock.into_stream() {
            Some((h1::Stream::Tcp(stream), buf)) => {
                // Boxed: rare, and it would make every connection's task larger.
                let client = Tracked::new(stream, activity, buf.freeze());
                Box::pin(tunnel(upgrade::tunnel(client, backend), &mut ctx)).await;
            }
            Some((h1::Stream::Tls(stream), buf)) => {
                let client = Tracked::new(*stream, activity, buf.freeze());
                Box::pin(tunnel(upgrade::tunnel(client, backend), &mut ctx)).await;
            }
            None => {}
        },
        Some(h1::End::Park) => {
            // Parked: the read buffer and the task go; only the socket waits.
            let deadline = activity.idle_deadline_ms(timers);
            let stream = sock.into_stream();
            if let (Some(lot), Some((h1::Stream::Tcp(stream), _))) = (ctx.lot.as_deref(), stream) {
                lot.park(stream, ctx.client, ctx.permit, ctx.stop.clone(), deadline);
            }
        }
    }
}

/// Runs a tunnel (an upgraded connection) to its end. A drain lets it go on for
/// `shutdown_timeout`, then closes it: a WebSocket has no way to be asked to finish.
async fn tunnel(run: impl Future<Output = ()>, ctx: &mut ConnCtx) {
    tokio::pin!(run);
    tokio::select! {
        () = &mut run => return,
        _ = ctx.stop.wait_for(|stop| *stop) => {}
    }
    let grace = ctx.shared.config.load().server.shutdown_timeout;
    let drains = &ctx.shared.drains;
    match tokio::time::timeout(grace, run).await {
        Ok(()) => drains.clean.fetch_add(1, Ordering::Relaxed),
        Err(_) => {
            tracing::info!(client = %ctx.client, "tunnel closed at shutdown_timeout");
            drains.cut.fetch_add(1, Ordering::Relaxed)
        }
    };
}

/// HTTP/2 (h2c): hyper multiplexes the streams; no parking.
async fn serve_h2(stream: TcpStream, mut ctx: ConnCtx) {
    let activity = Arc::new(Activity::new());
    activity.set_multiplexed();
    let info = Arc::new(ConnInfo::new(
        (ctx.client, ctx.local),
        false,
        true,
        Arc::clone(&activity),
        Arc::clone(&ctx.shared.refused),
    ));
    let io = TokioIo::new(Tracked::new(stream, Arc::clone(&activity), Bytes::new()));
    let conn = ctx
        .protocols
        .h2
        .serve_connection(io, service(&ctx.shared, &info));
    drive(conn, |c| c.graceful_shutdown(), &activity, &mut ctx).await;
}

/// Logs and counts a connection the watchdog closes: a request head slower than
/// `header_read_timeout` is a refusal; an idle keep-alive connection closing is not.
fn closed_by_watchdog(ctx: &ConnCtx, why: Expired) {
    match why {
        Expired::HeaderRead => {
            let counts = &ctx.shared.refused;
            telemetry::refused_connection(counts, ctx.client, Refusal::HeaderTimeout, None);
        }
        Expired::Idle => {
            tracing::debug!(client = %ctx.client, "closing idle client connection (idle_timeout)");
        }
    }
}

/// Runs a hyper connection to its end under the watchdog (`idle_timeout`,
/// `header_read_timeout`), shutting it down gracefully when sluice stops.
pub(super) async fn drive<C, E>(
    conn: C,
    shutdown: impl Fn(std::pin::Pin<&mut C>),
    activity: &Activity,
    ctx: &mut ConnCtx,
) where
    C: Future<Output = Result<(), E>>,
    E: std::error::Error + 'static,
{
    let timers = ctx.timers();
    tokio::pin!(conn);
    let sleep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sleep);
    let mut closing = false;
    loop {
        tokio::select! {
            r = &mut conn => {
                if let Err(e) = r {
                    tracing::debug!(client = %ctx.client, error = %e, "connection ended with an error");
                }
                // After GOAWAY, its open streams finished.
                if closing {
                    ctx.shared.drains.clean.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            _ = &mut sleep, if !closing => match activity.check(timers, false) {
                Verdict::WaitUntil(t) => sleep.as_mut().reset(t),
                Verdict::Close(why) => {
                    closed_by_watchdog(ctx, why);
                    return;
                }
                Verdict::Park => return,
            },
            _ = ctx.stop.changed(), if !closing => {
                closing = true;
                shutdown(conn.as_mut());
            }
        }
    }
}
