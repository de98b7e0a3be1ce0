//! `[upstream.NAME.discovery]` (SPEC §6): where an upstream's backends come from when they
//! are not listed in the file. The typed form; `validate/discovery.rs` checks the TOML.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::Scheme;

/// Defaults for a DNS name's refresh: at its TTL, but within these bounds.
pub const DEFAULT_MIN_TTL: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(60);

/// How an upstream discovers its backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    pub source: Source,
    /// The scheme of the discovered backends whose address carries none (DNS answers;
    /// etcd and file entries written as `host:port`).
    pub scheme: Scheme,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Dns(DnsSource),
    Etcd(EtcdSource),
    File(PathBuf),
}

impl Source {
    /// As written in `source = "..."`.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Dns(_) => "dns",
            Source::Etcd(_) => "etcd",
            Source::File(_) => "file",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSource {
    pub name: DnsName,
    /// None: the system's resolver configuration (/etc/resolv.conf).
    pub resolver: Option<SocketAddr>,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
}

/// What a DNS name stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsName {
    /// An SRV name (`_http._tcp.api.internal`): targets, ports, weights, priorities.
    Srv(String),
    /// A/AAAA records of `host`, each an address with `port`.
    Host { host: String, port: u16 },
}

impl std::fmt::Display for DnsName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsName::Srv(name) => f.write_str(name),
            DnsName::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSource {
    /// Base URLs of etcd's v3 JSON gateway (`http://host:port`), tried in turn.
    pub endpoints: Vec<EtcdEndpoint>,
    /// Every key under it is one backend.
    pub prefix: String,
}

/// An etcd endpoint: plain HTTP to `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdEndpoint {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for EtcdEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "http://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "http://{}:{}", self.host, self.port)
        }
    }
}
