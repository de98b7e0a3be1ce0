//! The typed configuration: what `sluice` runs with, whatever it came from (a TOML file,
//! command-line flags, or `sluice demo`). Parsing and validation live in `raw.rs` and
//! `validate.rs`; this file owns the typed model, the defaults and the entry points
//! `load` / `parse_str` shared by startup, `sluice check`, SIGHUP and `POST /reload`.

mod diag;
pub mod discovery;
mod policy;
mod raw;
pub mod units;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use diag::{ConfigErrors, Problem};
pub use discovery::DiscoveryConfig;
pub use policy::{
    HeaderRules, ProxyVersion, QueueConfig, RateKey, RateLimitConfig, RedirectConfig,
};

/// Default for `[server] shutdown_timeout`: long enough for slow downloads to finish,
/// short enough that an orchestrator's kill timeout (often 30s+) is not hit first.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `[limits] max_header_bytes`: 64 KiB, as HAProxy's default tune.bufsize range.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_IDLE_PER_BACKEND: usize = 64;
/// Largest backend weight; keeps the smooth round-robin sequence small.
pub const MAX_WEIGHT: u32 = 1000;
/// The name of the upstream built from `--backend` flags.
pub const DEFAULT_UPSTREAM: &str = "default";

/// A whole, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub server: ServerConfig,
    pub listeners: Vec<ListenerConfig>,
    pub admin: Option<AdminConfig>,
    pub limits: Limits,
    /// In file order; the first match wins.
    pub routes: Vec<RouteConfig>,
    /// In file order.
    pub upstreams: Vec<UpstreamConfig>,
    /// `[telemetry]` (SPEC §9): where spans are exported.
    pub telemetry: TelemetryConfig,
}

/// `[telemetry]`: OpenTelemetry export.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// An OTLP/HTTP collector (`http://host:port`, optionally with a base path): spans
    /// go to `{otlp}/v1/traces`. None: no spans are exported.
    pub otlp: Option<http::Uri>,
    /// The `service.name` resource attribute of the spans.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> TelemetryConfig {
        TelemetryConfig {
            otlp: None,
            service_name: "sluice".to_owned(),
        }
    }
}

impl Config {
    /// Settings that are valid but probably not what the user wants; logged at startup
    /// and printed by `sluice check`.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(a) = &self.admin
            && a.token.is_none()
            && !a.address.ip().is_loopback()
        {
            out.push(format!(
                    "the admin API on {} has no token: anyone who can reach it can drain backends and reload; set [admin] token or listen on 127.0.0.1",
                    a.address
                ));
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// None: one worker per CPU core.
    pub workers: Option<usize>,
    pub shutdown_timeout: Duration,
    /// The Unix socket a new process takes the listeners over from (SPEC §7).
    pub upgrade_socket: Option<PathBuf>,
    /// Peers whose X-Forwarded-For names the client (SPEC §8).
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    pub tls: Option<TlsConfig>,
    /// Each connection opens with a PROXY v1 or v2 header naming the client (SPEC §8).
    pub proxy_protocol: bool,
}

impl ListenerConfig {
    /// Plain HTTP on `address`, without a PROXY header.
    pub fn plain(address: SocketAddr) -> ListenerConfig {
        ListenerConfig {
            address,
            tls: None,
            proxy_protocol: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// Chosen by SNI; the first one also serves clients without SNI or with unknown names.
    pub certificates: Vec<CertificateConfig>,
    /// Session tickets and a session cache (default); false: a full handshake each time.
    pub resumption: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CertificateConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub address: SocketAddr,
    pub token: Option<String>,
    /// Clients whose `X-Sluice-Debug: 1` gets a decision trace (SPEC §9); empty: none.
    pub debug_from: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_header_bytes: usize,
    /// 0 = unlimited.
    pub max_body_bytes: u64,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub host: Option<HostPattern>,
    /// Normalised: starts with '/', no trailing '/' unless it is "/" itself.
    pub path_prefix: Option<String>,
    pub strip_prefix: bool,
    pub upstream: String,
    /// Clients allowed (empty: all) and denied (deny wins), SPEC §8.
    pub allow: Vec<ipnet::IpNet>,
    pub deny: Vec<ipnet::IpNet>,
    /// Answer with a redirect instead of proxying (SPEC §8); `upstream` is then unused.
    pub redirect: Option<RedirectConfig>,
    /// Header rules for requests on their way to the backend, and for answers on their
    /// way to the client (sluice's own included).
    pub request_headers: HeaderRules,
    pub response_headers: HeaderRules,
    /// A token bucket per key (SPEC §8).
    pub rate_limit: Option<RateLimitConfig>,
}

/// A route's host: compared case-insensitively and without the port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Lower-case host name.
    Exact(String),
    /// `*.example.com` stored as ".example.com" (lower-case): any subdomain, not the apex.
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub name: String,
    pub strategy: StrategyKind,
    pub hash_key: HashKey,
    pub backends: Vec<BackendConfig>,
    pub host_header: HostHeader,
    pub protocol: Protocol,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub max_idle_per_backend: usize,
    pub slow_start: Duration,
    pub sticky: Option<StickyConfig>,
    pub health: Option<HealthConfig>,
    pub outlier: OutlierConfig,
    pub retry: RetryConfig,
    /// Backends from DNS, etcd or a file (SPEC §6); `backends` then holds the last set
    /// discovered (none until the first answer).
    pub discovery: Option<DiscoveryConfig>,
    /// 0: unlimited. Else a backend with this many requests in flight takes no more,
    /// and when every backend is full requests wait in `queue` (SPEC §8).
    pub max_inflight_per_backend: u32,
    pub queue: QueueConfig,
    /// Open each backend connection with a PROXY header naming the client (SPEC §8).
    pub proxy_protocol: Option<ProxyVersion>,
}

impl UpstreamConfig {
    /// An upstream with every setting at its default and the given backends.
    pub fn with_defaults(name: &str, backends: Vec<BackendConfig>) -> Self {
        UpstreamConfig {
            name: name.to_owned(),
            strategy: StrategyKind::RoundRobin,
            hash_key: HashKey::ClientIp,
            backends,
            host_header: HostHeader::Preserve,
            protocol: Protocol::Http1,
            ca_file: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            max_idle_per_backend: DEFAULT_MAX_IDLE_PER_BACKEND,
            slow_start: Duration::ZERO,
            sticky: None,
            health: None,
            outlier: OutlierConfig::default(),
            retry: RetryConfig::default(),
            discovery: None,
            max_inflight_per_backend: 0,
            queue: QueueConfig::default(),
            proxy_protocol: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    pub url: BackendUrl,
    /// 1..=MAX_WEIGHT
    pub weight: u32,
    pub backup: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// A backend address: `host:port`, `http://host:port` or `https://host:port` (no path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUrl {
    pub scheme: Scheme,
    /// Lower-case host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

impl BackendUrl {
    /// Parses the forms above. The port defaults to 80 (http) or 443 (https) only when a
    /// scheme is given; a bare `host` without port is an error.
    pub fn parse(s: &str) -> Result<BackendUrl, String> {
        let (scheme, rest, explicit) = if let Some(r) = s.strip_prefix("http://") {
            (Scheme::Http, r, true)
        } else if let Some(r) = s.strip_prefix("https://") {
            (Scheme::Https, r, true)
        } else if let Some((sch, _)) = s.split_once("://") {
            return Err(format!(
                "backend url \"{s}\" has scheme \"{sch}\"; expected http or https"
            ));
        } else {
            (Scheme::Http, s, false)
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() {
            return Err(format!("backend url \"{s}\" has no host"));
        }
        if rest.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "backend url \"{s}\" has a path, query or user part; expected only scheme, host and port"
            ));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("backend url \"{s}\" has an unclosed '['"))?;
            (h, after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(format!("backend url \"{s}\" has no host"));
        }
        let port =
            match port {
                Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                    format!("backend url \"{s}\" has port \"{p}\"; expected 1-65535")
                })?,
                None if explicit => match scheme {
                    Scheme::Http => 80,
                    Scheme::Https => 443,
                },
                None => {
                    return Err(format!(
                        "backend url \"{s}\" has no port; expected host:port"
                    ));
                }
            };
        Ok(BackendUrl {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// `host:port` (IPv6 in brackets): the backend's id in the admin API and metrics.
    pub fn id(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        write!(f, "{s}://{}", self.id())
    }
}

/// SPEC §3 strategy names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    RoundRobin,
    Random,
    LeastConn,
    P2c,
    PeakEwma,
    ConsistentHash,
    First,
}

impl StrategyKind {
    pub const ALL: [StrategyKind; 7] = [
        StrategyKind::RoundRobin,
        StrategyKind::Random,
        StrategyKind::LeastConn,
        StrategyKind::P2c,
        StrategyKind::PeakEwma,
        StrategyKind::ConsistentHash,
        StrategyKind::First,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::RoundRobin => "round_robin",
            StrategyKind::Random => "random",
            StrategyKind::LeastConn => "least_conn",
            StrategyKind::P2c => "p2c",
            StrategyKind::PeakEwma => "peak_ewma",
            StrategyKind::ConsistentHash => "consistent_hash",
            StrategyKind::First => "first",
        }
    }

    pub fn parse(s: &str) -> Option<StrategyKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `consistent_hash` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    /// Parsed once here, not on every request.
    Header(http::HeaderName),
    Cookie(String),
    Path,
    Query(String),
}

impl HashKey {
    /// `client_ip`, `header:NAME`, `cookie:NAME`, `path`, `query:NAME`.
    pub fn parse(s: &str) -> Result<HashKey, String> {
        let bad = || {
            format!(
                "hash_key \"{s}\" is not one of client_ip, header:NAME, cookie:NAME, path, query:NAME"
            )
        };
        Ok(match s.split_once(':') {
            None if s == "client_ip" => HashKey::ClientIp,
            None if s == "path" => HashKey::Path,
            Some(("header", n)) if !n.is_empty() => {
                HashKey::Header(http::HeaderName::from_bytes(n.as_bytes()).map_err(|_| bad())?)
            }
            Some(("cookie", n)) if !n.is_empty() => HashKey::Cookie(n.to_owned()),
            Some(("query", n)) if !n.is_empty() => HashKey::Query(n.to_owned()),
            _ => return Err(bad()),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostHeader {
    Preserve,
    Backend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Http1,
    H2c,
    H2,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StickyConfig {
    pub cookie: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// None: TCP connect check.
    pub path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Inclusive range.
    pub expect_status: (u16, u16),
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            path: None,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            rise: 2,
            fall: 3,
            expect_status: (200, 399),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    pub consecutive_failures: u32,
    pub ejection: Duration,
    pub max_ejected_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            ejection: Duration::from_secs(30),
            max_ejected_percent: 50,
        }
    }
}

/// One condition under which a request may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    ConnectFailure,
    Reset,
    Timeout,
    Status(u16),
}

impl RetryOn {
    /// `connect_failure`, `reset`, `timeout`, or a 5xx status such as `"502"`.
    pub fn parse(s: &str) -> Result<RetryOn, String> {
        Ok(match s {
            "connect_failure" => RetryOn::ConnectFailure,
            "reset" => RetryOn::Reset,
            "timeout" => RetryOn::Timeout,
            _ => match s.parse::<u16>() {
                Ok(code) if (500..=599).contains(&code) => RetryOn::Status(code),
                _ => {
                    return Err(format!(
                        "retry condition \"{s}\" is not one of connect_failure, reset, timeout or a 5xx status"
                    ));
                }
            },
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Extra tries after the first.
    pub attempts: u32,
    pub on: Vec<RetryOn>,
    pub budget_percent: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 2,
            on: vec![RetryOn::ConnectFailure, RetryOn::Reset],
            budget_percent: 20,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            workers: None,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            upgrade_socket: None,
            trusted_proxies: Vec::new(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_body_bytes: 0,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Why a configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(#[from] ConfigErrors),
}

/// Reads and validates the file at `path`.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(parse_str(&text, path)?)
}

/// Parses and validates TOML `text`; `path` only names the file in error messages.
/// Collects every problem it can find instead of stopping at the first.
pub fn parse_str(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    validate::parse(text, path)
}
