//! What requests are routed by: the model's routes and upstreams, each upstream served
//! with its transport (the client and its connection pools), as one immutable snapshot
//! swapped whole through an `ArcSwap` when the config is reloaded or edited. Built by
//! build.rs.

use std::ops::Deref;
use std::sync::Arc;

use super::client::Client;
use crate::balance::Upstream;
use crate::upstream::Route;

/// Routes and upstreams as one unit; replaced, never mutated.
pub struct Snapshot {
    pub routes: Box<[Route]>,
    pub upstreams: Box<[Arc<Served>]>,
}

impl Snapshot {
    /// The first route matching `host` and `path`, with its upstream.
    /// The route a request for `host` and `path` takes, and its upstream (none for a
    /// route that only redirects).
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<(&Route, Option<&Arc<Served>>)> {
        let r = self.routes.iter().find(|r| r.matches(host, path))?;
        Some((r, r.upstream.and_then(|i| self.upstreams.get(i))))
    }

    pub fn upstream(&self, name: &str) -> Option<&Arc<Served>> {
        self.upstreams.iter().find(|u| &*u.name == name)
    }
}

/// An upstream of the model with the client that reaches its backends.
pub struct Served {
    pub upstream: Upstream,
    pub client: Client,
}

impl Deref for Served {
    type Target = Upstream;

    fn deref(&self) -> &Upstream {
        &self.upstream
    }
}
