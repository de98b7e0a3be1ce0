//! Routes: which upstream serves a request, by host and path prefix (SPEC §2 `[[route]]`).
//! Matching runs per request over a short list in file order; it allocates nothing.

use super::rate::{RateLimit, SharedBuckets};
use crate::config::{HostPattern, RouteConfig};

/// A compiled route; `upstream` indexes `Snapshot::upstreams`.
#[derive(Debug)]
pub struct Route {
    host: Option<HostPattern>,
    /// Normalised: no trailing '/' unless "/" itself.
    prefix: Option<Box<str>>,
    strip: bool,
    /// None for a route that only redirects.
    pub upstream: Option<usize>,
    /// Its traffic policy (SPEC §8); None for a route without any, which then costs
    /// one branch per request.
    pub policy: Option<Box<Policy>>,
}

/// A route's traffic policy.
#[derive(Debug)]
pub struct Policy {
    /// Who may use the route.
    pub acl: Option<Acl>,
    /// Answer with a redirect instead of proxying.
    pub redirect: Option<crate::config::RedirectConfig>,
    /// Header rules for requests and answers.
    pub headers: Option<std::sync::Arc<RouteHeaders>>,
    /// A token bucket per key; shared with the previous snapshot's route while its
    /// settings stay (an edit or a discovered set does not reset the buckets).
    pub rate: Option<std::sync::Arc<super::rate::RateLimit>>,
}

/// A route's header rules, for requests and for answers.
#[derive(Debug)]
pub struct RouteHeaders {
    pub request: crate::config::HeaderRules,
    pub response: crate::config::HeaderRules,
    /// The request rules leave the lines sluice writes itself alone, so they can be
    /// applied to a request's raw lines (else the request goes through a header map).
    pub request_raw_ok: bool,
}

/// The request header lines sluice writes itself after a client's raw lines.
const OWN_REQUEST_LINES: [&str; 4] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
];

/// A route's access list: `deny` wins over `allow`; an empty `allow` allows all.
#[derive(Debug)]
pub struct Acl {
    allow: Box<[ipnet::IpNet]>,
    deny: Box<[ipnet::IpNet]>,
}

impl Acl {
    pub fn permits(&self, client: std::net::IpAddr) -> bool {
        // An IPv4 client on an IPv6 socket is matched as IPv4.
        let client = match client {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, std::net::IpAddr::V4),
            v4 => v4,
        };
        !self.deny.iter().any(|n| n.contains(&client))
            && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&client)))
    }
}

impl Route {
    /// The route as a decision trace names it: its host (`*` for any) and path prefix,
    /// `api.example.com/api` or `*/`.
    pub fn describe(&self) -> String {
        let host = match &self.host {
            Some(HostPattern::Exact(h)) => h.clone(),
            Some(HostPattern::Suffix(s)) => format!("*{s}"),
            None => "*".to_owned(),
        };
        format!("{host}{}", self.prefix.as_deref().unwrap_or("/"))
    }

    /// `stores`: the fleet's store at a URL, for limits with `shared`.
    pub fn new(
        cfg: &RouteConfig,
        upstream: Option<usize>,
        previous: Option<&Route>,
        stores: &mut dyn FnMut(&str) -> std::sync::Arc<dyn SharedBuckets>,
    ) -> Route {
        let policy = Policy {
            acl: (!cfg.allow.is_empty() || !cfg.deny.is_empty()).then(|| Acl {
                allow: cfg.allow.clone().into_boxed_slice(),
                deny: cfg.deny.clone().into_boxed_slice(),
            }),
            redirect: cfg.redirect.clone(),
            headers: (!cfg.request_headers.is_empty() || !cfg.response_headers.is_empty()).then(
                || {
                    std::sync::Arc::new(RouteHeaders {
                        request: cfg.request_headers.clone(),
                        response: cfg.response_headers.clone(),
                        request_raw_ok: !cfg.request_headers.touches(&OWN_REQUEST_LINES),
                    })
                },
            ),
            rate: cfg.rate_limit.as_ref().map(|r| {
                let kept = previous
                    .and_then(|p| p.policy.as_ref()?.rate.as_ref())
                    .filter(|old| old.same_settings(r));
                match kept {
                    Some(old) => std::sync::Arc::clone(old),
                    None => {
                        let limit = RateLimit::new(r.key.clone(), r.per_sec, r.burst);
                        std::sync::Arc::new(match &r.shared {
                            Some(url) => limit.shared_in(stores(url), shared_prefix(cfg)),
                            None => limit,
                        })
                    }
                }
            }),
        };
        let any = policy.acl.is_some()
            || policy.redirect.is_some()
            || policy.headers.is_some()
            || policy.rate.is_some();
        Route {
            host: cfg.host.clone(),
            prefix: cfg.path_prefix.as_deref().map(Into::into),
            strip: cfg.strip_prefix,
            upstream,
            policy: any.then(|| Box::new(policy)),
        }
    }

    /// A route that matches everything (a config with one upstream and no routes).
    pub fn catch_all(upstream: usize) -> Route {
        Route {
            host: None,
            prefix: None,
            strip: false,
            upstream: Some(upstream),
            policy: None,
        }
    }

    /// Does this route take a request for `host` (without port, any case) and `path`?
    pub fn matches(&self, host: Option<&str>, path: &str) -> bool {
        if let Some(pattern) = &self.host {
            let Some(host) = host else { return false };
            let ok = match pattern {
                HostPattern::Exact(h) => host.eq_ignore_ascii_case(h),
                // ".example.com": the host must be longer than the suffix, so the apex
                // "example.com" itself does not match.
                HostPattern::Suffix(s) => {
                    host.len() > s.len()
                        && host.is_char_boundary(host.len() - s.len())
                        && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
                }
            };
            if !ok {
                return false;
            }
        }
        match &self.prefix {
            None => true,
            Some(p) => prefix_matches(p, path),
        }
    }

    /// The path to send upstream: `path` less the prefix when `strip_prefix` is on,
    /// keeping a leading '/'. None when nothing changes.
    pub fn rewrite<'p>(&self, path: &'p str) -> Option<&'p str> {
        let p = self.prefix.as_deref().filter(|_| self.strip)?;
        if p == "/" {
            return None;
        }
        let rest = &path[p.len()..];
        Some(if rest.is_empty() { "/" } else { rest })
    }
}

/// Whole-segment prefix match: "/api" matches "/api", "/api/x", not "/apix".
/// What a shared limit's keys start with in the fleet's store: the route's host and
/// path prefix, so that instances with the same routes share buckets, and different
/// routes on one store do not (`sluice:rl:api.example.com/v1:` then the key).
fn shared_prefix(cfg: &RouteConfig) -> Box<[u8]> {
    let host = match &cfg.host {
        None => "*".to_owned(),
        Some(HostPattern::Exact(h)) => h.clone(),
        Some(HostPattern::Suffix(s)) => format!("*{s}"),
    };
    let path = cfg.path_prefix.as_deref().unwrap_or("/");
    format!("sluice:rl:{host}{path}:")
        .into_bytes()
        .into_boxed_slice()
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    path.starts_with(prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
}

/// The host a request names: the URI authority (HTTP/2, absolute-form) or the Host
/// header, without the port.
pub fn request_host<B>(req: &http::Request<B>) -> Option<&str> {
    host_of(req.uri(), req.headers().get(http::header::HOST))
}

/// `request_host` from the URI and the Host header's value.
pub fn host_of<'a>(uri: &'a http::Uri, host: Option<&'a http::HeaderValue>) -> Option<&'a str> {
    if let Some(h) = uri.host() {
        return Some(h);
    }
    Some(strip_port(host?.to_str().ok()?))
}

fn strip_port(hostport: &str) -> &str {
    if let Some(rest) = hostport.strip_prefix('[') {
        // IPv6 literal: "[::1]:8080" -> "::1"
        return rest.split(']').next().unwrap_or(rest);
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => hostport,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<HostPattern>, prefix: Option<&str>, strip: bool) -> Route {
        Route {
            host,
            prefix: prefix.map(Into::into),
            strip,
            upstream: Some(0),
            policy: None,
        }
    }

    #[test]
    fn deny_wins_over_allow_and_no_allow_means_everyone() {
        let net = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let acl = Acl {
            allow: vec![net("10.0.0.0/8"), net("2001:db8::/32")].into(),
            deny: vec![net("10.1.2.3/32")].into(),
        };
        assert!(acl.permits(ip("10.9.9.9")));
        assert!(acl.permits(ip("2001:db8::1")));
        assert!(acl.permits(ip("::ffff:10.0.0.1")), "IPv4 on an IPv6 socket");
        assert!(!acl.permits(ip("10.1.2.3")), "deny wins");
        assert!(!acl.permits(ip("192.168.0.1")), "not allowed");
        let deny_only = Acl {
            allow: Vec::new().into(),
            deny: vec![net("192.168.0.0/16")].into(),
        };
        assert!(deny_only.permits(ip("10.0.0.1")));
        assert!(!deny_only.permits(ip("192.168.3.4")));
    }

    #[test]
    fn prefix_matches_whole_segments() {
        let r = route(None, Some("/api"), false);
        assert!(r.matches(None, "/api"));
        assert!(r.matches(None, "/api/x"));
        assert!(!r.matches(None, "/apix"));
        assert!(!r.matches(None, "/"));
    }

    #[test]
    fn strip_keeps_a_leading_slash() {
        let r = route(None, Some("/api"), true);
        assert_eq!(r.rewrite("/api/v1"), Some("/v1"));
        assert_eq!(r.rewrite("/api"), Some("/"));
        assert_eq!(route(None, Some("/api"), false).rewrite("/api/v1"), None);
    }

    #[test]
    fn wildcard_host_excludes_the_apex() {
        let r = route(
            Some(HostPattern::Suffix(".example.com".into())),
            None,
            false,
        );
        assert!(r.matches(Some("a.example.com"), "/"));
        assert!(r.matches(Some("A.B.Example.COM"), "/"));
        assert!(!r.matches(Some("example.com"), "/"));
        assert!(!r.matches(None, "/"));
        let e = route(
            Some(HostPattern::Exact("api.example.com".into())),
            None,
            false,
        );
        assert!(e.matches(Some("API.example.com"), "/"));
        assert!(!e.matches(Some("x.api.example.com"), "/"));
    }

    #[test]
    fn host_header_port_is_ignored() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("[::1]:8080"), "::1");
        assert_eq!(strip_port("example.com"), "example.com");
    }
}
