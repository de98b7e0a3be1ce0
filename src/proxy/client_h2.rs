//! HTTP/2 to backends (`protocol = "h2c"` / `"h2"`): one multiplexed connection per
//! backend, opened once for all the requests that arrive while it is being opened, and
//! pinged so that one that died silently is replaced.

use super::body::{RequestBody, RequestBodyError};
use super::client::{BackendBody, Client, Failure, SendError};
use super::pool::{H2Sender, OpeningGuard};
use super::stream::Stream;
use crate::upstream::Backend;
use http::{Request, Response};
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// How often an HTTP/2 backend connection is pinged, and how long a ping may go
/// unanswered before the connection is given up.
const H2_PING_EVERY: Duration = Duration::from_secs(10);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

impl Client {
    /// `send` over HTTP/2: the backend's one connection is shared by all requests to it
    /// (opened when there is none open; `how.fresh` has no say, as a connection that
    /// failed is closed and so not used again). The request is sent with
    /// the header map (prepare() keeps HTTP/2 upstreams on it), its `Host` as
    /// `:authority`; response bodies and trailers stream back as hyper gives them.
    pub(super) async fn send_h2(
        &self,
        backend: &Backend,
        req: &mut Request<RequestBody>,
    ) -> Result<Response<BackendBody>, Failure> {
        let pool = self.pool(backend);
        let pooled = pool.h2_sender();
        let reused = pooled.is_some();
        let mut sender = match pooled {
            Some(s) => s,
            None => self
                .join_or_open_h2(backend)
                .await
                .map_err(Failure::not_sent)?,
        };
        if let Err(e) = sender.ready().await {
            pool.drop_closed_h2();
            return Err(Failure {
                error: SendError::H2(e),
                unsent: true,
                reused,
            });
        }
        let scheme = match backend.url.scheme {
            crate::config::Scheme::Https => http::uri::Scheme::HTTPS,
            crate::config::Scheme::Http => http::uri::Scheme::HTTP,
        };
        // :authority is the Host the request would carry over HTTP/1.1.
        let authority = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
            .unwrap_or_else(|| backend.authority.clone());
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(scheme);
        parts.authority = Some(authority);
        parts.path_and_query = req.uri().path_and_query().cloned();
        let uri = http::Uri::from_parts(parts).map_err(|_| Failure {
            error: SendError::Closed,
            unsent: true,
            reused,
        })?;
        let mut body = std::mem::replace(req.body_mut(), RequestBody::empty());
        // hyper sends the body in its own task and reports only that the stream
        // failed; the body notes whether the client was the cause.
        let stopped = body.watch_stop();
        let mut out = Request::new(body);
        *out.method_mut() = req.method().clone();
        *out.uri_mut() = uri;
        *out.version_mut() = http::Version::HTTP_2;
        let headers = out.headers_mut();
        headers.clone_from(req.headers());
        headers.remove(http::header::HOST);
        match sender.try_send_request(out).await {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                Ok(Response::from_parts(parts, BackendBody::from_h2(body)))
            }
            Err(mut e) => {
                pool.drop_closed_h2();
                // hyper hands back a request it never sent (the connection was
                // closing): its body goes back with it, and it may go elsewhere.
                let unsent = match e.take_message() {
                    Some(back) => {
                        *req.body_mut() = back.into_body();
                        true
                    }
                    None => false,
                };
                let error = match stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    super::body::STOPPED_TOO_LARGE => SendError::Body(RequestBodyError::TooLarge),
                    super::body::STOPPED_BY_CLIENT => SendError::Body(RequestBodyError::Client(
                        "the client's body broke off".into(),
                    )),
                    _ => SendError::H2(e.into_error()),
                };
                Err(Failure {
                    error,
                    unsent,
                    reused,
                })
            }
        }
    }

    /// The connection being opened to `backend`, once it is (or its failure), or a new
    /// one opened here if none is underway.
    async fn join_or_open_h2(&self, backend: &Backend) -> Result<H2Sender, SendError> {
        let pool = self.pool(backend);
        let tx = {
            let mut opening = pool.h2_opening.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = pool.h2_sender() {
                return Ok(s);
            }
            match &*opening {
                Some(rx) => Err(rx.clone()),
                None => {
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    *opening = Some(rx);
                    Ok(tx)
                }
            }
        };
        match tx {
            Ok(tx) => {
                let _done = OpeningGuard(pool);
                let opened = self.connect_h2(backend).await;
                let told = match &opened {
                    Ok(s) => Ok(s.clone()),
                    Err(e) => Err(Arc::from(crate::proxy::error::chain(e).as_str())),
                };
                tx.send_replace(Some(told));
                opened
            }
            Err(mut rx) => {
                let outcome = rx
                    .wait_for(Option::is_some)
                    .await
                    .ok()
                    .and_then(|v| v.clone());
                match outcome {
                    Some(Ok(s)) => Ok(s),
                    Some(Err(why)) => Err(SendError::Connect(io::Error::other(why.to_string()))),
                    None => Err(SendError::Connect(io::Error::other(
                        "the HTTP/2 connection being opened was abandoned",
                    ))),
                }
            }
        }
    }

    /// A new HTTP/2 connection to `backend` (prior knowledge for h2c, ALPN h2 for h2),
    /// whose sender goes into the backend's pool for the next requests.
    async fn connect_h2(&self, backend: &Backend) -> Result<H2Sender, SendError> {
        let handshake = async {
            let stream = self
                .connect_stream(backend, None)
                .await
                .map_err(SendError::Connect)?;
            if let Stream::Tls(tls) = &stream
                && tls.get_ref().1.alpn_protocol() != Some(b"h2")
            {
                return Err(SendError::Connect(io::Error::other(
                    "the backend did not agree to HTTP/2 (ALPN h2)",
                )));
            }
            let mut builder =
                hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
            // Pings find a connection that died silently (the backend's host gone):
            // it closes, and the next request opens a new one.
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(H2_PING_EVERY)
                .keep_alive_timeout(H2_PING_TIMEOUT)
                .keep_alive_while_idle(true);
            let (sender, conn) = builder
                .handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| SendError::Connect(io::Error::other(e)))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "HTTP/2 backend connection ended");
                }
            });
            Ok::<_, SendError>(sender)
        };
        let sender = tokio::time::timeout(self.connect_timeout, handshake)
            .await
            .map_err(|_| SendError::ConnectTimeout(self.connect_timeout))??;
        *self.pool(backend).h2_slot() = Some(sender.clone());
        Ok(sender)
    }
}
