//! The client side: one hyper client per upstream, each with its own keep-alive pool,
//! because protocol, timeouts and pool size are upstream settings.

use hyper_util::client::legacy::{Client as HyperClient, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::RequestBody;
use crate::config::UpstreamConfig;

/// How long an unused pooled connection is kept. Shorter than common backend keep-alive
/// timeouts (nginx 75s, Node 5s is the outlier) would be safer; TODO(#3) retries cover
/// the stale-connection race.
const POOL_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);

/// A cheaply clonable handle to an upstream's connection pools.
#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, RequestBody>,
}

impl Client {
    pub fn new(cfg: &UpstreamConfig) -> Client {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(cfg.connect_timeout));
        let inner = HyperClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(cfg.max_idle_per_backend)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            // sluice sets Host itself (host_header), never the client library.
            .set_host(false)
            .build(connector);
        Client { inner }
    }

    /// Whether a client built for `a` serves `b` just as well (so reloads keep pools).
    pub fn same_settings(a: &UpstreamConfig, b: &UpstreamConfig) -> bool {
        a.connect_timeout == b.connect_timeout
            && a.max_idle_per_backend == b.max_idle_per_backend
            && a.protocol == b.protocol
            && a.ca_file == b.ca_file
    }

    pub fn request(
        &self,
        req: http::Request<RequestBody>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        self.inner.request(req)
    }
}
