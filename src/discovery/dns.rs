//! Backends from DNS (hickory-resolver): the A/AAAA records of `host:port`, or an SRV
//! name's targets. One lookup in flight per upstream, again at the answer's TTL clamped
//! to `[min_ttl, max_ttl]` with a little jitter (no storm from TTL 0, no stale set from
//! a long TTL). UDP first, and TCP when an answer comes back truncated or may have been
//! cut without saying so (`may_be_cut`). NXDOMAIN or no records is an answer (an empty
//! set); SERVFAIL, REFUSED or a timeout is a failure that keeps the last set.

use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};

use super::{Backoff, Report, Reports, canonical, jitter};
use crate::config::discovery::{DnsName, DnsSource};
use crate::config::{BackendConfig, BackendUrl, MAX_WEIGHT, Scheme};

/// How long one lookup may take (each server try; hickory tries twice).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) async fn run(src: DnsSource, scheme: Scheme, tx: Reports) {
    let mut backoff = Backoff::new();
    // No resolver configuration yet (a container whose resolv.conf comes later): a
    // failure like any other, tried again.
    let resolver = loop {
        match Resolvers::new(&src) {
            Ok(r) => break r,
            Err(e) => {
                if tx
                    .send(Report::Failed(format!("DNS resolver: {e}")))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff.step()) => {}
                    _ = tx.closed() => return,
                }
            }
        }
    };
    backoff.reset();
    loop {
        let (report, wait) = match lookup(&resolver, &src.name, scheme).await {
            Ok((set, ttl)) => {
                backoff.reset();
                (Report::Set(set), ttl)
            }
            Err(Failure::Empty(ttl)) => {
                backoff.reset();
                (Report::Set(Vec::new()), ttl)
            }
            Err(Failure::Error(e)) => (
                Report::Failed(format!("{}: {e}", src.name)),
                backoff.step().min(src.max_ttl),
            ),
        };
        if tx.send(report).await.is_err() {
            return;
        }
        let wait = refresh_after(wait, &src);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = tx.closed() => return,
        }
    }
}

/// When to ask again after an answer valid for `ttl` (or a failure's backoff): within
/// `[min_ttl, max_ttl]` (TTL 0 does not become a query storm, a day-long TTL does not
/// hide changes), less up to a tenth at random so that instances spread their queries.
fn refresh_after(ttl: Duration, src: &DnsSource) -> Duration {
    let wait = ttl.clamp(src.min_ttl, src.max_ttl);
    wait.saturating_sub(jitter(wait / 20, 1)).max(src.min_ttl)
}

/// Two resolvers for the same servers: UDP then TCP (hickory's own fallback when an
/// answer is marked truncated), and TCP alone, to ask again for an answer that may
/// have been cut without being marked.
struct Resolvers {
    first: TokioResolver,
    tcp: TokioResolver,
}

impl Resolvers {
    fn new(src: &DnsSource) -> Result<Resolvers, NetError> {
        let servers: Vec<(IpAddr, u16)> = match src.resolver {
            Some(addr) => vec![(addr.ip(), addr.port())],
            None => {
                let (config, _) = hickory_resolver::system_conf::read_system_conf()?;
                config
                    .name_servers()
                    .iter()
                    .map(|ns| (ns.ip, ns.connections.first().map_or(53, |c| c.port)))
                    .collect()
            }
        };
        let build = |tcp_only: bool| {
            let configs = servers
                .iter()
                .map(|&(ip, port)| {
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = port;
                    let mut udp = ConnectionConfig::udp();
                    udp.port = port;
                    let connections = if tcp_only { vec![tcp] } else { vec![udp, tcp] };
                    NameServerConfig::new(ip, true, connections)
                })
                .collect();
            let mut builder = TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(configs),
                TokioRuntimeProvider::default(),
            );
            let o = builder.options_mut();
            // sluice keeps to the TTL itself; a cache would only serve old answers.
            o.cache_size = 0;
            o.timeout = LOOKUP_TIMEOUT;
            o.attempts = 2;
            o.try_tcp_on_error = true;
            builder.build()
        };
        Ok(Resolvers {
            first: build(false)?,
            tcp: build(true)?,
        })
    }

    /// The records of `name`, over TCP again when the UDP answer may have been cut.
    async fn ask(&self, name: &str, rtype: RecordType) -> Result<Lookup, NetError> {
        let answer = self.first.lookup(name, rtype).await?;
        if !may_be_cut(&answer) {
            return Ok(answer);
        }
        match self.tcp.lookup(name, rtype).await {
            Ok(whole) => Ok(whole),
            // A server that does not take TCP: the UDP answer is the best there is.
            Err(e) => {
                tracing::debug!(name, error = %e, "DNS over TCP failed; using the UDP answer");
                Ok(answer)
            }
        }
    }
}

/// Could this UDP answer be missing records without saying so? Consul, by default,
/// answers at most 3 records over UDP and sets no truncation bit; a server without EDNS
/// cuts near 512 bytes. Answers of more than two records, or of more than 400 bytes,
/// are therefore asked again over TCP (a few more queries per refresh, so that every
/// instance sees the whole set).
fn may_be_cut(answer: &Lookup) -> bool {
    answer.answers().len() > 2 || answer.message().to_vec().map_or(true, |m| m.len() > 400)
}

enum Failure {
    /// No such name, or no records: an empty set, asked again after this.
    Empty(Duration),
    Error(NetError),
}

impl From<NetError> for Failure {
    fn from(e: NetError) -> Failure {
        if e.is_no_records_found() {
            let ttl = match &e {
                NetError::Dns(hickory_resolver::net::DnsError::NoRecordsFound(n)) => n.negative_ttl,
                _ => None,
            };
            return Failure::Empty(Duration::from_secs(ttl.map_or(0, u64::from)));
        }
        Failure::Error(e)
    }
}

/// The name's backends now, and how long the answer holds.
async fn lookup(
    r: &Resolvers,
    name: &DnsName,
    scheme: Scheme,
) -> Result<(Vec<BackendConfig>, Duration), Failure> {
    match name {
        DnsName::Host { host, port } => {
            let (ips, ttl) = addresses(r, host).await?;
            let set = ips
                .into_iter()
                .map(|ip| backend(scheme, ip, *port, 1, false))
                .collect();
            Ok((canonical(set), ttl))
        }
        DnsName::Srv(srv) => {
            let lookup = r.ask(&fqdn(srv), RecordType::SRV).await?;
            let records: Vec<_> = lookup
                .answers()
                .iter()
                .filter_map(|rec| match &rec.data {
                    RData::SRV(s) => Some(s.clone()),
                    _ => None,
                })
                .collect();
            let mut ttl = ttl_of(&lookup);
            // "." means the service is not offered there (RFC 2782); port 0 is no port.
            let records: Vec<_> = records
                .into_iter()
                .filter(|s| !s.target.is_root() && s.port != 0)
                .collect();
            // SPEC §6: the lowest priority's targets are the primaries, the rest backups.
            let best = records.iter().map(|s| s.priority).min();
            let mut set = Vec::new();
            for s in &records {
                // A target without addresses is one backend fewer, not an empty set.
                let (ips, t) = match addresses(r, &s.target.to_ascii()).await {
                    Ok(found) => found,
                    Err(Failure::Empty(t)) => (Vec::new(), t),
                    Err(e) => return Err(e),
                };
                ttl = ttl.min(t);
                let weight = u32::from(s.weight).clamp(1, MAX_WEIGHT);
                let backup = Some(s.priority) != best;
                set.extend(
                    ips.into_iter()
                        .map(|ip| backend(scheme, ip, s.port, weight, backup)),
                );
            }
            Ok((canonical(set), ttl))
        }
    }
}

/// A host's addresses (A and AAAA) and their TTL. An address literal is itself; a name
/// with neither record is an empty answer.
async fn addresses(r: &Resolvers, host: &str) -> Result<(Vec<IpAddr>, Duration), Failure> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok((vec![ip], Duration::MAX));
    }
    let name = fqdn(host);
    let (v4, v6) = tokio::join!(r.ask(&name, RecordType::A), r.ask(&name, RecordType::AAAA));
    let mut ips = Vec::new();
    let mut ttl = Duration::MAX;
    let mut empty = None;
    for answer in [v4, v6] {
        match answer.map_err(Failure::from) {
            Ok(lookup) => {
                ttl = ttl.min(ttl_of(&lookup));
                ips.extend(lookup.answers().iter().filter_map(|rec| match &rec.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                }));
            }
            Err(Failure::Empty(t)) => empty = Some(empty.unwrap_or(t).min(t)),
            Err(e) => return Err(e),
        }
    }
    match (ips.is_empty(), empty) {
        (true, Some(t)) => Err(Failure::Empty(t)),
        _ => Ok((ips, ttl)),
    }
}

/// The shortest TTL of an answer's records.
fn ttl_of(lookup: &Lookup) -> Duration {
    let ttl = lookup
        .answers()
        .iter()
        .map(|rec| rec.ttl)
        .min()
        .unwrap_or(0);
    Duration::from_secs(u64::from(ttl))
}

/// Names are asked as written, fully qualified (no search domains).
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}

fn backend(scheme: Scheme, ip: IpAddr, port: u16, weight: u32, backup: bool) -> BackendConfig {
    BackendConfig {
        url: BackendUrl {
            scheme,
            host: ip.to_string(),
            port,
        },
        weight,
        backup,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_asked_again_at_their_ttl_within_bounds() {
        let src = DnsSource {
            name: DnsName::Srv("_x._tcp.a.test".into()),
            resolver: None,
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(60),
        };
        for _ in 0..100 {
            assert_eq!(
                refresh_after(Duration::ZERO, &src),
                Duration::from_secs(1),
                "TTL 0"
            );
            let t = refresh_after(Duration::from_secs(30), &src);
            assert!(
                t <= Duration::from_secs(30) && t >= Duration::from_secs(27),
                "{t:?}"
            );
            let t = refresh_after(Duration::from_secs(86_400), &src);
            assert!(
                t <= Duration::from_secs(60) && t >= Duration::from_secs(54),
                "{t:?}"
            );
        }
    }
}
