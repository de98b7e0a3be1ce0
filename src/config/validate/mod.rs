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
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::diag::{Problem, line_col};
use super::raw::{
    DurationValue, RawAdmin, RawConfig, RawLimits, RawListener, RawServer, RawTelemetry, SizeValue,
    StrOrInt,
};
use super::{
    AdminConfig, CertificateConfig, Config, ConfigErrors, DEFAULT_HEADER_READ_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_SHUTDOWN_TIMEOUT, Limits, ListenerConfig, ServerConfig, TelemetryConfig, TlsConfig,
    units,
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
mod route;
mod upstream;

#[cfg(test)]
use route::{host_pattern, path_prefix};

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
        let telemetry = self.telemetry(raw.telemetry.unwrap_or_default());

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
            telemetry,
        }
    }

    fn telemetry(&mut self, raw: RawTelemetry) -> TelemetryConfig {
        let mut t = TelemetryConfig::default();
        if let Some(name) = raw.service_name {
            if name.get_ref().trim().is_empty() {
                self.report(
                    name.span(),
                    "telemetry.service_name is empty; remove it (default \"sluice\") or name the service".to_owned(),
                );
            }
            t.service_name = name.into_inner();
        }
        t.otlp = raw.otlp.and_then(|v| {
            let text = v.get_ref().trim();
            let uri = text.parse::<http::Uri>().ok().filter(|u| {
                u.scheme_str() == Some("http") && u.host().is_some() && u.query().is_none()
            });
            if uri.is_none() {
                self.report(
                    v.span(),
                    format!(
                        "telemetry.otlp: \"{text}\" is not an http:// URL; expected the collector's OTLP/HTTP address, e.g. \"http://127.0.0.1:4318\""
                    ),
                );
            }
            uri
        });
        t
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
                out.push(ListenerConfig {
                    address,
                    tls,
                    proxy_protocol: listener.proxy_protocol.unwrap_or(false),
                });
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
        Some(TlsConfig {
            certificates: out,
            resumption: raw.get_ref().resumption.unwrap_or(true),
        })
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
        let debug_from = raw
            .debug_from
            .as_deref()
            .map(|v| self.networks("admin.debug_from", v))
            .unwrap_or_default();
        Some(AdminConfig {
            address: address?,
            token,
            debug_from,
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
mod policy_tests;
#[cfg(test)]
mod tests;
