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
    /// `[server] trusted_proxies` (SPEC §8); empty: every peer is the client.
    pub trusted: Box<[ipnet::IpNet]>,
    /// `[admin] debug_from` (SPEC §9); empty: no request is traced.
    pub debug_from: Box<[ipnet::IpNet]>,
}

impl Snapshot {
    /// The client a request comes from: its peer, or, when the peer is a trusted
    /// proxy, the right-most address of `forwarded_for` (X-Forwarded-For) that is not
    /// one (the left-most when all are). An entry that is not an address ends the walk
    /// there: the client is then the last trusted hop's right neighbour, or the peer.
    pub fn client(&self, peer: std::net::IpAddr, forwarded_for: Option<&[u8]>) -> std::net::IpAddr {
        let trusted = |ip: &std::net::IpAddr| self.trusted.iter().any(|n| n.contains(ip));
        if self.trusted.is_empty() || !trusted(&peer) {
            return peer;
        }
        let Some(list) = forwarded_for.and_then(|v| std::str::from_utf8(v).ok()) else {
            return peer;
        };
        let mut client = peer;
        for entry in list.rsplit(',') {
            let entry = entry.trim();
            let ip = entry
                .parse::<std::net::IpAddr>()
                .ok()
                .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()));
            let Some(ip) = ip else { break };
            client = ip;
            if !trusted(&ip) {
                break;
            }
        }
        client
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn with_trusted(nets: &[&str]) -> Snapshot {
        Snapshot {
            routes: Box::new([]),
            upstreams: Box::new([]),
            trusted: nets.iter().map(|n| n.parse().unwrap()).collect(),
            debug_from: Box::new([]),
        }
    }

    #[test]
    fn the_client_is_the_right_most_untrusted_forwarded_address() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let s = with_trusted(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.1");
        assert_eq!(
            s.client(peer, Some(b"1.1.1.1, 2.2.2.2, 10.0.0.2")),
            ip("2.2.2.2")
        );
        assert_eq!(
            s.client(peer, Some(b"10.0.0.3, 10.0.0.2")),
            ip("10.0.0.3"),
            "all trusted: the left-most"
        );
        assert_eq!(
            s.client(peer, Some(b"1.1.1.1, junk, 10.0.0.2")),
            ip("10.0.0.2"),
            "the walk stops at junk"
        );
        assert_eq!(
            s.client(peer, Some(b"[2001:db8::1]:443")),
            ip("2001:db8::1")
        );
        assert_eq!(s.client(peer, None), peer);
        assert_eq!(
            s.client(ip("192.0.2.1"), Some(b"1.1.1.1")),
            ip("192.0.2.1"),
            "an untrusted peer"
        );
        assert_eq!(
            with_trusted(&[]).client(peer, Some(b"1.1.1.1")),
            peer,
            "no list"
        );
    }
}
