//! Semantic checks of `[[route]]`: what it matches (host, path prefix), where it goes,
//! and its traffic policy (SPEC §8: access lists, redirects, header rules, rate limits).

use std::net::Ipv6Addr;

use toml::Spanned;

use super::Check;
use crate::config::raw::RawRoute;
use crate::config::{HostPattern, RouteConfig};

impl Check<'_> {
    pub(super) fn route(&mut self, raw: Spanned<RawRoute>, upstreams: &[&str]) -> RouteConfig {
        let at = raw.span();
        let raw = raw.into_inner();
        let host = raw.host.and_then(|h| match host_pattern(h.get_ref()) {
            Ok(p) => Some(p),
            Err(e) => {
                self.report(h.span(), format!("route.host: {e}"));
                None
            }
        });
        let path_prefix = raw
            .path_prefix
            .and_then(|p| match path_prefix(p.get_ref()) {
                Ok(p) => Some(p),
                Err(e) => {
                    self.report(p.span(), format!("route.path_prefix: {e}"));
                    None
                }
            });
        let redirect = raw.redirect.as_ref().and_then(|r| self.redirect(r));
        // A redirect answers by itself: no upstream needed.
        let given = if raw.redirect.is_some() {
            raw.upstream.as_ref()
        } else {
            self.required(&raw.upstream, "upstream", "[[route]]", at)
        };
        if let Some(given) = given {
            let upstream = given.get_ref();
            if !upstreams.contains(&upstream.as_str()) {
                let defined = if upstreams.is_empty() {
                    "no upstreams are defined".to_owned()
                } else {
                    format!("defined upstreams: {}", upstreams.join(", "))
                };
                self.report(
                    given.span(),
                    format!("route: unknown upstream \"{upstream}\"; {defined}"),
                );
            }
        }
        RouteConfig {
            host,
            path_prefix,
            strip_prefix: raw.strip_prefix.unwrap_or(false),
            upstream: given.map(|g| g.get_ref().clone()).unwrap_or_default(),
            allow: self.networks("route.allow", raw.allow.as_deref().unwrap_or_default()),
            deny: self.networks("route.deny", raw.deny.as_deref().unwrap_or_default()),
            redirect,
            request_headers: self.header_rules(
                "route.request_headers",
                raw.request_headers.as_ref(),
                true,
            ),
            response_headers: self.header_rules(
                "route.response_headers",
                raw.response_headers.as_ref(),
                false,
            ),
            rate_limit: raw.rate_limit.as_ref().and_then(|r| self.rate_limit(r)),
        }
    }

    fn rate_limit(
        &mut self,
        raw: &Spanned<crate::config::raw::RawRateLimit>,
    ) -> Option<crate::config::RateLimitConfig> {
        use crate::config::{RateKey, RateLimitConfig};
        let r = raw.get_ref();
        let shared = r.shared.as_ref().and_then(|s| {
            let url = s.get_ref();
            let why = if url.starts_with("rediss://") {
                Some("uses TLS (rediss://), which is not supported; use redis:// on a trusted network")
            } else if !url.starts_with("redis://") || redis::Client::open(url.as_str()).is_err() {
                Some("is not a Redis URL; expected e.g. \"redis://127.0.0.1:6379\" or \"redis://:password@10.0.0.5:6379/2\"")
            } else {
                None
            };
            match why {
                Some(why) => {
                    self.report(s.span(), format!("route.rate_limit.shared: \"{url}\" {why}"));
                    None
                }
                None => Some(url.clone()),
            }
        });
        let key = match r.key.as_ref().map(|k| (k.get_ref().as_str(), k.span())) {
            None | Some(("client_ip", _)) => RateKey::ClientIp,
            Some((k, span)) => match k
                .strip_prefix("header:")
                .and_then(|n| http::HeaderName::from_bytes(n.as_bytes()).ok())
            {
                Some(name) => RateKey::Header(name),
                None => {
                    self.report(
                        span,
                        format!(
                            "route.rate_limit.key \"{k}\" is not one of client_ip, header:NAME"
                        ),
                    );
                    return None;
                }
            },
        };
        let rate = self.required(&r.rate, "rate", "route.rate_limit", raw.span())?;
        let parsed = rate.get_ref().split_once('/').and_then(|(n, per)| {
            let n: u32 = n.trim().parse().ok().filter(|n| *n > 0)?;
            let secs = match per.trim() {
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return None,
            };
            Some((n, f64::from(n) / secs))
        });
        let Some((n, per_sec)) = parsed else {
            self.report(
                rate.span(),
                format!("route.rate_limit.rate \"{}\" is not a rate; expected e.g. \"100/s\", \"600/m\" or \"1000/h\"", rate.get_ref()),
            );
            return None;
        };
        let burst = self.int_in(
            "route.rate_limit.burst",
            r.burst.as_ref(),
            1,
            i64::from(u32::MAX),
            i64::from(n),
        );
        Some(RateLimitConfig {
            key,
            per_sec,
            burst: u32::try_from(burst).unwrap_or(n),
            shared,
        })
    }

    /// Header rules; names that would change the routing (`Host`, in requests), the
    /// framing or a hop-by-hop header are refused.
    fn header_rules(
        &mut self,
        key: &str,
        raw: Option<&Spanned<crate::config::raw::RawHeaderRules>>,
        request: bool,
    ) -> crate::config::HeaderRules {
        let mut rules = crate::config::HeaderRules::default();
        let Some(raw) = raw else { return rules };
        let raw = raw.get_ref();
        const FORBIDDEN: &[&str] = &[
            "content-length",
            "transfer-encoding",
            "connection",
            "keep-alive",
            "te",
            "trailer",
            "upgrade",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
        ];
        let name_of = |this: &mut Self, n: &Spanned<String>| -> Option<http::HeaderName> {
            let Ok(name) = http::HeaderName::from_bytes(n.get_ref().as_bytes()) else {
                this.report(
                    n.span(),
                    format!("{key}: \"{}\" is not a header name", n.get_ref()),
                );
                return None;
            };
            if FORBIDDEN.contains(&name.as_str()) || (request && name == http::header::HOST) {
                this.report(
                    n.span(),
                    format!(
                        "{key}: \"{}\" cannot be changed here: it frames or routes the message",
                        n.get_ref()
                    ),
                );
                return None;
            }
            Some(name)
        };
        let pairs = |this: &mut Self, map: &Option<std::collections::BTreeMap<Spanned<String>, Spanned<String>>>| {
            let mut out = Vec::new();
            for (n, v) in map.iter().flatten() {
                let Some(name) = name_of(this, n) else { continue };
                match http::HeaderValue::from_str(v.get_ref()) {
                    Ok(value) => out.push((name, value)),
                    Err(_) => this.report(v.span(), format!("{key}: the value of \"{}\" is not a valid header value", n.get_ref())),
                }
            }
            out
        };
        rules.set = pairs(self, &raw.set);
        rules.add = pairs(self, &raw.add);
        rules.remove = raw
            .remove
            .iter()
            .flatten()
            .filter_map(|n| name_of(self, n))
            .collect();
        rules
    }

    fn redirect(
        &mut self,
        raw: &Spanned<crate::config::raw::RawRedirect>,
    ) -> Option<crate::config::RedirectConfig> {
        let r = raw.get_ref();
        let to = self.required(&r.to, "to", "route.redirect", raw.span())?;
        let text = to.get_ref();
        // Only the SPEC's placeholders, and a whole Location.
        let mut rest = text.as_str();
        while let Some(open) = rest.find('{') {
            let close = rest[open..].find('}').map(|c| open + c);
            let name = close.map(|c| &rest[open + 1..c]);
            if !matches!(name, Some("host" | "uri" | "scheme")) {
                self.report(
                    to.span(),
                    format!("route.redirect.to: \"{text}\" has an unknown placeholder; use {{host}}, {{uri}} or {{scheme}}"),
                );
                return None;
            }
            rest = &rest[close.map_or(rest.len(), |c| c + 1)..];
        }
        if text.is_empty() || text.chars().any(|c| c.is_ascii_control() || c == ' ') {
            self.report(
                to.span(),
                format!("route.redirect.to: \"{text}\" is not a URL"),
            );
            return None;
        }
        let status = match &r.status {
            None => 301,
            Some(s) if matches!(*s.get_ref(), 301 | 302 | 307 | 308) => *s.get_ref() as u16,
            Some(s) => {
                self.report(
                    s.span(),
                    format!(
                        "route.redirect.status: {} is not one of 301, 302, 307, 308",
                        s.get_ref()
                    ),
                );
                return None;
            }
        };
        Some(crate::config::RedirectConfig {
            to: text.clone(),
            status,
        })
    }
}

/// `api.example.com` -> Exact, `*.example.com` -> Suffix(".example.com"), lower-cased.
pub(super) fn host_pattern(s: &str) -> Result<HostPattern, String> {
    let expected = "expected a host name such as \"api.example.com\" or \"*.example.com\"";
    if s.is_empty() {
        return Err(format!("the host is empty; {expected}"));
    }
    let lower = s.to_ascii_lowercase();
    if let Some(inner) = lower.strip_prefix('[').and_then(|r| r.strip_suffix(']'))
        && inner.parse::<Ipv6Addr>().is_ok()
    {
        return Ok(HostPattern::Exact(lower));
    }
    let (suffix, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    if name.contains(':') {
        return Err(format!(
            "\"{s}\" must not contain a port; routes match the host without its port"
        ));
    }
    let valid = name.split('.').all(|label| {
        !label.is_empty()
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    });
    if !valid {
        return Err(format!("\"{s}\" is not a host name; {expected}"));
    }
    Ok(if suffix {
        HostPattern::Suffix(format!(".{name}"))
    } else {
        HostPattern::Exact(name.to_owned())
    })
}

/// Must start with '/'; trailing slashes are dropped except for "/" itself.
pub(super) fn path_prefix(s: &str) -> Result<String, String> {
    if !s.starts_with('/') {
        return Err(format!("\"{s}\" must start with \"/\""));
    }
    if s.contains(['?', '#']) || s.contains(char::is_whitespace) {
        return Err(format!(
            "\"{s}\" must be a plain path, without \"?\", \"#\" or spaces"
        ));
    }
    let trimmed = s.trim_end_matches('/');
    Ok(if trimmed.is_empty() { "/" } else { trimmed }.to_owned())
}
