//! Backends from DNS (hickory-resolver): the A/AAAA records of `host:port`, or an SRV
//! name's targets. One lookup in flight per upstream, again at the answer's TTL clamped
//! to `[min_ttl, max_ttl]` with a little jitter (no storm from TTL 0, no stale set from
//! a long TTL). UDP first, TCP when an answer comes back truncated. NXDOMAIN or no
//! records is an answer (an empty set); SERVFAIL, REFUSED or a timeout is a failure
//! that keeps the last set.

use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

use super::{Backoff, Report, Reports, canonical, jitter};
use crate::config::discovery::{DnsName, DnsSource};
use crate::config::{BackendConfig, BackendUrl, MAX_WEIGHT, Scheme};

/// How long one lookup may take (each server try; hickory tries twice).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) async fn run(src: DnsSource, scheme: Scheme, tx: Reports) {
    let resolver = match resolver(&src) {
        Ok(r) => r,
        Err(e) => {
            // No resolver configuration at all: nothing will change that but a reload.
            let _ = tx.send(Report::Failed(format!("DNS resolver: {e}"))).await;
            return;
        }
    };
    let mut backoff = Backoff::new();
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

fn resolver(src: &DnsSource) -> Result<TokioResolver, NetError> {
    let mut builder = match src.resolver {
        None => TokioResolver::builder_tokio()?,
        Some(addr) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            let server = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![server]),
                TokioRuntimeProvider::default(),
            )
        }
    };
    let o = builder.options_mut();
    // sluice keeps to the TTL itself; a cache would only serve old answers.
    o.cache_size = 0;
    o.timeout = LOOKUP_TIMEOUT;
    o.attempts = 2;
    o.ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv4AndIpv6;
    o.try_tcp_on_error = true;
    builder.build()
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
    r: &TokioResolver,
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
            let lookup = r.srv_lookup(fqdn(srv)).await?;
            let mut ttl = u32::MAX;
            let records: Vec<_> = lookup
                .answers()
                .iter()
                .filter_map(|rec| {
                    ttl = ttl.min(rec.ttl);
                    match &rec.data {
                        RData::SRV(s) => Some(s.clone()),
                        _ => None,
                    }
                })
                .collect();
            // SPEC §6: the lowest priority's targets are the primaries, the rest backups.
            let best = records.iter().map(|s| s.priority).min();
            let mut set = Vec::new();
            let mut min_ttl = Duration::from_secs(u64::from(ttl));
            for s in &records {
                // "." means the service is not offered there (RFC 2782).
                if s.target.is_root() {
                    continue;
                }
                let (ips, t) = addresses(r, &s.target.to_ascii()).await?;
                min_ttl = min_ttl.min(t);
                let weight = u32::from(s.weight).clamp(1, MAX_WEIGHT);
                let backup = Some(s.priority) != best;
                set.extend(
                    ips.into_iter()
                        .map(|ip| backend(scheme, ip, s.port, weight, backup)),
                );
            }
            Ok((canonical(set), min_ttl))
        }
    }
}

/// A host's addresses (A and AAAA) and their TTL. An address literal is itself.
async fn addresses(r: &TokioResolver, host: &str) -> Result<(Vec<IpAddr>, Duration), NetError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok((vec![ip], Duration::MAX));
    }
    let lookup = r.lookup_ip(fqdn(host)).await?;
    let ttl = lookup
        .as_lookup()
        .answers()
        .iter()
        .map(|rec| rec.ttl)
        .min()
        .unwrap_or(0);
    Ok((lookup.iter().collect(), Duration::from_secs(u64::from(ttl))))
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
