//! From TOML text to a typed `Config`, collecting every problem instead of stopping at the
//! first.
//!
//! Two stages: the `toml` deserializer checks syntax, unknown keys and value types against
//! `raw.rs`; then every semantic check runs on the raw values and each failure is recorded
//! with the span of the offending value or key. The deserializer stops at its first error,
//! so the first stage (`recover.rs`) takes the offending key out of the parsed document and
//! tries again, until the rest deserializes: one misspelt key no longer hides the problems
//! after it. The `Config` is only returned when no problem was found.

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::diag::{Problem, line_col};
use super::raw::{
    DurationValue, RawAdmin, RawConfig, RawLimits, RawListener, RawRoute, RawServer, SizeValue,
    StrOrInt,
};
use super::{
    AdminConfig, CertificateConfig, Config, ConfigErrors, DEFAULT_HEADER_READ_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_SHUTDOWN_TIMEOUT, HostPattern, Limits, ListenerConfig, RouteConfig, ServerConfig,
    TlsConfig, units,
};

/// Smallest accepted `[limits] max_header_bytes`: below this, ordinary browser requests
/// (cookies, user agents) would already be refused with 431.
const MIN_MAX_HEADER_BYTES: u64 = 1024;
/// Cookie name used when `sticky = {}` gives none.
const DEFAULT_STICKY_COOKIE: &str = "sluice_sticky";

/// Parses and checks `text`; `path` only names the file in messages. Returns every
/// semantic problem found, or the deserializer's single first error.
pub(super) fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let recovered = recover::deserialize(text);
    let Some(raw) = recovered.raw else {
        return Err(ConfigErrors::new(path, text, recovered.problems));
    };
    let mut check = Check {
        text,
        problems: recovered.problems,
        misspelt_in: recovered.misspelt_in,
    };
    let config = check.config(raw);
    if check.problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors::new(path, text, check.problems))
    }
}

mod discovery;
mod recover;
mod upstream;

// ---------------------------------------------------------------------------------------
// Semantic checks

struct Check<'t> {
    text: &'t str,
    problems: Vec<Problem>,
    /// Tables an unknown key was taken out of (see `recover::Recovered`).
    misspelt_in: Vec<Range<usize>>,
}

impl Check<'_> {
    fn report(&mut self, span: Range<usize>, message: String) {
        self.problems.push(Problem::new(span, message));
    }

    /// A required key's value, or None after reporting it missing from `table` (written
    /// as the user sees it, e.g. `[[listener]]`), whose span is `at`.
    fn required<'v, T>(
        &mut self,
        v: &'v Option<Spanned<T>>,
        key: &str,
        table: &str,
        at: Range<usize>,
    ) -> Option<&'v Spanned<T>> {
        // A misspelt key was reported already; "missing" would say it twice.
        if v.is_none() && !self.misspelt_in.contains(&at) {
            self.report(at, format!("missing key \"{key}\" in {table}"));
        }
        v.as_ref()
    }

    fn line_of(&self, offset: usize) -> usize {
        line_col(self.text, offset).0
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let server = self.server(raw.server.unwrap_or_default());
        if raw.listener.is_empty() {
            self.report(
                0..0,
                "no [[listener]] is defined; add at least one, e.g. [[listener]] with address = \"0.0.0.0:8080\"".to_owned(),
            );
        }
        let listeners = self.listeners(&raw.listener);
        let admin = raw.admin.and_then(|a| self.admin(a, &raw.listener));
        let limits = self.limits(raw.limits.unwrap_or_default());

        let names: Vec<&str> = raw
            .upstream
            .0
            .iter()
            .map(|(n, _)| n.get_ref().as_str())
            .collect();
        // A config whose routes all redirect (an HTTP-to-HTTPS listener) needs none.
        let only_redirects =
            !raw.route.is_empty() && raw.route.iter().all(|r| r.get_ref().redirect.is_some());
        match raw.upstream.0.as_slice() {
            [] if only_redirects => {}
            [] => self.report(
                0..0,
                "no upstream is defined; add one, e.g. [upstream.web] with backends = [{ url = \"127.0.0.1:9000\" }]".to_owned(),
            ),
            [_] => {}
            [(first, _), ..] if raw.route.is_empty() => self.report(
                first.span(),
                format!(
                    "{} upstreams are defined ({}) but there is no [[route]]; add [[route]] sections saying which requests go to which upstream",
                    names.len(),
                    names.join(", ")
                ),
            ),
            _ => {}
        }
        let routes = raw
            .route
            .into_iter()
            .map(|r| self.route(r, &names))
            .collect();
        let upstreams = raw
            .upstream
            .0
            .into_iter()
            .map(|(name, u)| self.upstream(name, u))
            .collect();

        Config {
            server,
            listeners,
            admin,
            limits,
            routes,
            upstreams,
        }
    }

    fn server(&mut self, raw: RawServer) -> ServerConfig {
        let workers = raw.workers.as_ref().map(|w| {
            let n = self.int_in("server.workers", Some(w), 1, i64::MAX, 1);
            usize::try_from(n).unwrap_or(usize::MAX)
        });
        ServerConfig {
            workers,
            shutdown_timeout: self.duration(
                "server.shutdown_timeout",
                raw.shutdown_timeout.as_ref(),
                DEFAULT_SHUTDOWN_TIMEOUT,
                false,
            ),
            upgrade_socket: raw
                .upgrade_socket
                .as_ref()
                .map(|p| self.file_path("server.upgrade_socket", p)),
            trusted_proxies: self.networks(
                "server.trusted_proxies",
                raw.trusted_proxies.as_deref().unwrap_or_default(),
            ),
        }
    }

    fn listeners(&mut self, raw: &[Spanned<RawListener>]) -> Vec<ListenerConfig> {
        let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
        let mut out = Vec::new();
        for spanned in raw {
            let listener = spanned.get_ref();
            let given = self.required(&listener.address, "address", "[[listener]]", spanned.span());
            let address = given.and_then(|a| self.socket_addr("listener.address", a));
            if let (Some(addr), Some(given)) = (address, given) {
                // Port 0 asks for a fresh ephemeral port each time, so it never collides.
                if addr.port() != 0 {
                    let start = given.span().start;
                    if let Some(&first) = seen.get(&addr) {
                        let line = self.line_of(first);
                        self.report(
                            given.span(),
                            format!(
                                "listener.address: duplicate listener address \"{}\" (also at line {line})",
                                given.get_ref()
                            ),
                        );
                    } else {
                        seen.insert(addr, start);
                    }
                }
            }
            let tls = listener.tls.as_ref().and_then(|tls| self.tls(tls));
            if let Some(address) = address {
                out.push(ListenerConfig { address, tls });
            }
        }
        out
    }

    fn tls(&mut self, raw: &Spanned<super::raw::RawTls>) -> Option<TlsConfig> {
        let Some(certs) = &raw.get_ref().certificates else {
            self.report(
                raw.span(),
                "listener.tls has no certificates; expected certificates = [{ cert = \"cert.pem\", key = \"key.pem\" }]".to_owned(),
            );
            return None;
        };
        if certs.get_ref().is_empty() {
            self.report(
                certs.span(),
                "listener.tls.certificates is empty; expected at least one { cert = \"cert.pem\", key = \"key.pem\" }".to_owned(),
            );
            return None;
        }
        let mut out = Vec::new();
        for c in certs.get_ref() {
            let c = c.get_ref();
            let cert = self.file_path("listener.tls.certificates.cert", &c.cert);
            let key = self.file_path("listener.tls.certificates.key", &c.key);
            out.push(CertificateConfig { cert, key });
        }
        Some(TlsConfig { certificates: out })
    }

    fn admin(
        &mut self,
        raw: Spanned<RawAdmin>,
        listeners: &[Spanned<RawListener>],
    ) -> Option<AdminConfig> {
        let at = raw.span();
        let raw = raw.into_inner();
        let given = self.required(&raw.address, "address", "[admin]", at)?;
        let address = self.socket_addr("admin.address", given);
        if let Some(addr) = address.filter(|a| a.port() != 0) {
            let clash = listeners.iter().find_map(|l| {
                let a = l.get_ref().address.as_ref()?;
                (a.get_ref().parse::<SocketAddr>().ok() == Some(addr)).then_some(a)
            });
            if let Some(l) = clash {
                let line = self.line_of(l.span().start);
                self.report(
                    given.span(),
                    format!(
                        "admin.address: \"{}\" is also a listener address (line {line}); the admin API needs its own address",
                        given.get_ref()
                    ),
                );
            }
        }
        let token = raw.token.map(|t| {
            if t.get_ref().is_empty() {
                self.report(
                    t.span(),
                    "admin.token is empty; remove it or set a non-empty secret".to_owned(),
                );
            }
            t.into_inner()
        });
        Some(AdminConfig {
            address: address?,
            token,
        })
    }

    fn limits(&mut self, raw: RawLimits) -> Limits {
        let max_header_bytes = match raw.max_header_bytes.as_ref() {
            None => DEFAULT_MAX_HEADER_BYTES,
            Some(v) => {
                let default = DEFAULT_MAX_HEADER_BYTES as u64;
                let n = self.size("limits.max_header_bytes", Some(v), default);
                if n < MIN_MAX_HEADER_BYTES {
                    self.report(
                        v.span(),
                        format!(
                            "limits.max_header_bytes: {} is too small; expected at least {MIN_MAX_HEADER_BYTES} bytes",
                            v.get_ref().0
                        ),
                    );
                }
                usize::try_from(n).unwrap_or(usize::MAX)
            }
        };
        let max_connections = self.int_in(
            "limits.max_connections",
            raw.max_connections.as_ref(),
            1,
            i64::MAX,
            DEFAULT_MAX_CONNECTIONS as i64,
        );
        Limits {
            max_header_bytes,
            max_body_bytes: self.size("limits.max_body_bytes", raw.max_body_bytes.as_ref(), 0),
            header_read_timeout: self.duration(
                "limits.header_read_timeout",
                raw.header_read_timeout.as_ref(),
                DEFAULT_HEADER_READ_TIMEOUT,
                true,
            ),
            idle_timeout: self.duration(
                "limits.idle_timeout",
                raw.idle_timeout.as_ref(),
                DEFAULT_IDLE_TIMEOUT,
                true,
            ),
            max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
        }
    }

    fn route(&mut self, raw: Spanned<RawRoute>, upstreams: &[&str]) -> RouteConfig {
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
        if let Some(s) = &r.shared {
            self.report(
                s.span(),
                "route.rate_limit.shared: limits shared through Redis are not built yet; the limit is per instance".to_owned(),
            );
        }
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

    /// CIDRs (`10.0.0.0/8`, `2001:db8::/32`) or single addresses (`127.0.0.1`, as /32
    /// or /128).
    fn networks(&mut self, key: &str, raw: &[Spanned<String>]) -> Vec<ipnet::IpNet> {
        raw.iter()
            .filter_map(|v| {
                let text = v.get_ref().trim();
                let net = text
                    .parse::<ipnet::IpNet>()
                    .ok()
                    .or_else(|| text.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from));
                if net.is_none() {
                    self.report(
                        v.span(),
                        format!(
                            "{key}: \"{text}\" is not an address or network; expected e.g. \"10.0.0.0/8\", \"2001:db8::/32\" or \"127.0.0.1\""
                        ),
                    );
                }
                net.map(|n| n.trunc())
            })
            .collect()
    }

    fn socket_addr(&mut self, key: &str, v: &Spanned<String>) -> Option<SocketAddr> {
        match v.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.report(
                    v.span(),
                    format!(
                        "{key}: \"{}\" is not a socket address; expected IP:PORT such as \"127.0.0.1:8080\" or \"[::1]:8080\"",
                        v.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn file_path(&mut self, key: &str, v: &Spanned<String>) -> PathBuf {
        if v.get_ref().is_empty() {
            self.report(v.span(), format!("{key} is empty; expected a file path"));
        }
        PathBuf::from(v.get_ref())
    }

    /// `key` names the setting in messages; `nonzero` rejects "0s".
    fn duration(
        &mut self,
        key: &str,
        v: Option<&Spanned<DurationValue>>,
        default: Duration,
        nonzero: bool,
    ) -> Duration {
        let Some(v) = v else { return default };
        let parsed = match &v.get_ref().0 {
            StrOrInt::Str(s) => units::parse_duration(s),
            StrOrInt::Int(n) => Err(units::bare_number_duration(*n)),
        };
        match parsed {
            Ok(d) if nonzero && d.is_zero() => {
                self.report(
                    v.span(),
                    format!("{key}: {} must be greater than zero", v.get_ref().0),
                );
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.report(v.span(), format!("{key}: {e}"));
                default
            }
        }
    }

    fn size(&mut self, key: &str, v: Option<&Spanned<SizeValue>>, default: u64) -> u64 {
        let Some(v) = v else { return default };
        let parsed = match &v.get_ref().0 {
            StrOrInt::Str(s) => units::parse_size(s),
            StrOrInt::Int(n) => {
                u64::try_from(*n).map_err(|_| format!("{n} is negative; {}", units::SIZE_EXAMPLES))
            }
        };
        parsed.unwrap_or_else(|e| {
            self.report(v.span(), format!("{key}: {e}"));
            default
        })
    }

    /// An integer in `lo..=hi`; `hi` of `u32::MAX` or more counts as "no upper bound"
    /// in messages.
    fn int_in(
        &mut self,
        key: &str,
        v: Option<&Spanned<i64>>,
        lo: i64,
        hi: i64,
        default: i64,
    ) -> i64 {
        let Some(v) = v else { return default };
        let n = *v.get_ref();
        if (lo..=hi).contains(&n) {
            return n;
        }
        let unbounded = hi >= i64::from(u32::MAX);
        let message = if n < lo && unbounded {
            format!("{key}: {n} is too small; expected at least {lo}")
        } else if unbounded {
            format!("{key}: {n} is too large; expected at most {hi}")
        } else {
            format!("{key}: {n} is out of range; expected {lo} to {hi}")
        };
        self.report(v.span(), message);
        default
    }

    fn u32_in(&mut self, key: &str, v: Option<&Spanned<i64>>, lo: u32, default: u32) -> u32 {
        let n = self.int_in(
            key,
            v,
            i64::from(lo),
            i64::from(u32::MAX),
            i64::from(default),
        );
        u32::try_from(n).unwrap_or(default)
    }
}

/// Letters, digits, '_', '.', '-'; not empty. Used for upstream and cookie names.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `api.example.com` -> Exact, `*.example.com` -> Suffix(".example.com"), lower-cased.
fn host_pattern(s: &str) -> Result<HostPattern, String> {
    let expected = "expected a host name such as \"api.example.com\" or \"*.example.com\"";
    if s.is_empty() {
        return Err(format!("the host is empty; {expected}"));
    }
    let lower = s.to_ascii_lowercase();
    if let Some(inner) = lower.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        if inner.parse::<Ipv6Addr>().is_ok() {
            return Ok(HostPattern::Exact(lower));
        }
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
fn path_prefix(s: &str) -> Result<String, String> {
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

/// `200`, `"200"` or `"200-399"`, codes 100..=599, low <= high.
fn status_range(v: &StrOrInt) -> Option<(u16, u16)> {
    let (lo, hi) = match v {
        StrOrInt::Int(n) => {
            let n = u16::try_from(*n).ok()?;
            (n, n)
        }
        StrOrInt::Str(s) => match s.split_once('-') {
            Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
            None => {
                let n = s.trim().parse().ok()?;
                (n, n)
            }
        },
    };
    let code = 100..=599;
    (code.contains(&lo) && code.contains(&hi) && lo <= hi).then_some((lo, hi))
}

#[cfg(test)]
mod tests;
