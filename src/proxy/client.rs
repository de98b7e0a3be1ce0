//! The client side: HTTP/1.1 connections to backends, kept alive in a small pool per
//! backend. hyper does the HTTP (`hyper::client::conn::http1`); this module only
//! decides which connection carries a request.
//!
//! A connection is checked out for one request and goes back to its backend's idle
//! list when the response body has been read to the end (`Pooled::release`). A response
//! abandoned half-way drops its connection instead, so a backend never sees a client's
//! leftovers. The idle list is LIFO: the most recently used connection is the one least
//! likely to have been closed by the backend.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
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

/// Idle connections to one backend. Shared by every snapshot holding that backend, so
/// reloads keep warm connections.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
}

impl Pool {
    fn pop(&self) -> Option<Idle> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Idle connections now held (for tests and status).
    pub fn idle_len(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A connection lent to one request.
pub struct Pooled {
    sender: http1::SendRequest<RequestBody>,
    pool: Arc<Pool>,
    max_idle: usize,
}

impl Pooled {
    /// Gives the connection back after its response ended cleanly.
    pub fn release(self) {
        if self.sender.is_closed() || self.max_idle == 0 {
            return;
        }
        let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(Idle {
                sender: self.sender,
                since: Instant::now(),
            });
        }
    }
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

    /// Whether a client built for `a` serves `b` just as well.
    pub fn same_settings(a: &UpstreamConfig, b: &UpstreamConfig) -> bool {
        a.connect_timeout == b.connect_timeout
            && a.max_idle_per_backend == b.max_idle_per_backend
            && a.protocol == b.protocol
            && a.ca_file == b.ca_file
    }

    /// Sends `req` (origin-form URI) to `backend` on a pooled or new connection.
    /// Returns the response head and the connection, to be released at end of body.
    pub async fn send(
        &self,
        backend: &Backend,
        req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Pooled), SendError> {
        let mut sender = match self.checkout(backend).await {
            Some(s) => s,
            None => self.connect(backend).await?,
        };
        let resp = sender.send_request(req).await.map_err(SendError::Request)?;
        Ok((
            resp,
            Pooled {
                sender,
                pool: Arc::clone(&backend.pool),
                max_idle: self.max_idle,
            },
        ))
    }

    async fn checkout(&self, backend: &Backend) -> Option<http1::SendRequest<RequestBody>> {
        while let Some(mut idle) = backend.pool.pop() {
            if idle.sender.is_closed() || idle.since.elapsed() > POOL_IDLE_TIMEOUT {
                continue;
            }
            // Ready at once unless the connection task is still finishing the previous
            // exchange; an error means the backend closed it.
            if idle.sender.ready().await.is_ok() {
                return Some(idle.sender);
            }
        }
        None
    }

    async fn connect(
        &self,
        backend: &Backend,
    ) -> Result<http1::SendRequest<RequestBody>, SendError> {
        let stream = tokio::time::timeout(self.connect_timeout, connect_tcp(backend))
            .await
            .map_err(|_| SendError::ConnectTimeout(self.connect_timeout))?
            .map_err(SendError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "backend connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// Connects to the backend's address, resolving its name when it is not an IP literal.
async fn connect_tcp(backend: &Backend) -> io::Result<TcpStream> {
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
