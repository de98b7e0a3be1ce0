//! Listeners: bind first (so callers learn the real addresses, port 0 included), then
//! serve until told to stop, then drain. Each accepted connection runs HTTP/1.1 or h2c
//! (by preface) in its own task, with a watchdog for `idle_timeout` and
//! `header_read_timeout`, and counts against `max_connections`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use super::Shared;
use super::conn::{Activity, Tracked, Verdict};
use super::forward::{ConnInfo, handle};
use crate::admin;

/// hyper's HTTP/1 read buffer cannot be smaller than this.
const HYPER_MIN_BUF: usize = 8192;
/// After an accept error (e.g. out of file descriptors), wait before trying again so
/// the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A listener that could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("listener {0}: TLS listeners are not supported by this build yet")]
    TlsUnsupported(SocketAddr),
}

/// Bound listeners, ready to serve.
pub struct Server {
    shared: Arc<Shared>,
    listeners: Vec<TcpListener>,
    admin: Option<TcpListener>,
}

async fn bind_one(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError::Io { addr, source })
}

impl Server {
    /// Opens every listener of the running config, and the admin listener.
    pub async fn bind(shared: Arc<Shared>) -> Result<Server, BindError> {
        let config = shared.config.load_full();
        let mut listeners = Vec::new();
        for l in &config.listeners {
            if l.tls.is_some() {
                // TODO(#4): TLS listeners.
                return Err(BindError::TlsUnsupported(l.address));
            }
            listeners.push(bind_one(l.address).await?);
        }
        let admin = match &config.admin {
            Some(a) => Some(bind_one(a.address).await?),
            None => None,
        };
        Ok(Server {
            shared,
            listeners,
            admin,
        })
    }

    /// The proxy listeners' bound addresses, in config order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Serves until `shutdown` resolves, then stops accepting and lets open requests
    /// finish for up to `shutdown_timeout`.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let graceful = Arc::new(GracefulShutdown::new());
        let limits = self.shared.limits.load_full();
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        let builder = http_builder(limits.max_header_bytes);

        let mut loops = Vec::new();
        for listener in self.listeners {
            loops.push(tokio::spawn(accept_loop(
                listener,
                Arc::clone(&self.shared),
                Arc::clone(&permits),
                builder.clone(),
                Arc::clone(&graceful),
                stop_rx.clone(),
            )));
        }
        if let Some(listener) = self.admin {
            loops.push(tokio::spawn(admin::serve(
                listener,
                Arc::clone(&self.shared),
                stop_rx.clone(),
            )));
        }

        shutdown.await;
        tracing::info!("shutting down: no new connections, draining open requests");
        let _ = stop_tx.send(true);
        for l in loops {
            let _ = l.await;
        }
        let timeout = self.shared.config.load().server.shutdown_timeout;
        // Every accept loop has ended, so this is the last reference.
        let Ok(graceful) = Arc::try_unwrap(graceful) else {
            return;
        };
        if tokio::time::timeout(timeout, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                timeout_ms = timeout.as_millis() as u64,
                "shutdown_timeout reached; closing remaining connections"
            );
        }
    }
}

fn http_builder(max_header_bytes: usize) -> Builder<TokioExecutor> {
    let mut b = Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // sluice runs its own header and idle timers (see conn.rs); hyper's would also
        // fire on idle keep-alive connections.
        .header_read_timeout(None)
        .max_buf_size(max_header_bytes.max(HYPER_MIN_BUF))
        .max_headers(512);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX));
    b
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    builder: Builder<TokioExecutor>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(address = %addr, "listening");
    }
    loop {
        // Over max_connections, stop accepting: new clients wait in the kernel backlog.
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        let (stream, client) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let shared = Arc::clone(&shared);
        let builder = builder.clone();
        tokio::spawn(async move {
            serve_connection(stream, client, shared, builder, watcher).await;
            drop(permit);
        });
    }
}

async fn serve_connection(
    stream: TcpStream,
    client: SocketAddr,
    shared: Arc<Shared>,
    builder: Builder<TokioExecutor>,
    watcher: Watcher,
) {
    let (header_read_timeout, idle_timeout) = {
        let l = shared.limits.load();
        (l.header_read_timeout, l.idle_timeout)
    };
    let activity = Arc::new(Activity::new());
    let info = Arc::new(ConnInfo {
        client,
        client_ip: crate::proxy::headers::ip_value(client.ip()),
        https: false,
        activity: Arc::clone(&activity),
    });
    let io = TokioIo::new(Tracked::new(stream, Arc::clone(&activity)));
    let service = service_fn(move |req| {
        let shared = Arc::clone(&shared);
        let info = Arc::clone(&info);
        async move { Ok::<_, std::convert::Infallible>(handle(&shared, &info, req).await) }
    });
    let conn = watcher.watch(
        builder
            .serve_connection_with_upgrades(io, service)
            .into_owned(),
    );
    tokio::pin!(conn);
    let sleep = tokio::time::sleep(std::time::Duration::ZERO);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            res = &mut conn => {
                if let Err(e) = res {
                    tracing::debug!(client = %client, error = %e, "client connection ended with an error");
                }
                return;
            }
            _ = &mut sleep => match activity.check(header_read_timeout, idle_timeout) {
                Verdict::WaitUntil(t) => sleep.as_mut().reset(t),
                Verdict::Close(why) => {
                    tracing::debug!(client = %client, reason = why, "closing client connection");
                    return;
                }
            },
        }
    }
}
