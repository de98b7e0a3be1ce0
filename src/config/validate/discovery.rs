//! Semantic checks of `[upstream.NAME.discovery]` (SPEC §6): the source, the keys that
//! belong to it, and their values.

use std::net::{IpAddr, SocketAddr};

use toml::Spanned;

use super::Check;
use crate::config::discovery::{
    DEFAULT_MAX_TTL, DEFAULT_MIN_TTL, DiscoveryConfig, DnsName, DnsSource, EtcdEndpoint,
    EtcdSource, Source,
};
use crate::config::raw::RawDiscovery;
use crate::config::{BackendUrl, Scheme};

const SOURCES: &str = "dns, etcd, file";

impl Check<'_> {
    pub(super) fn discovery(
        &mut self,
        ctx: &str,
        raw: Spanned<RawDiscovery>,
    ) -> Option<DiscoveryConfig> {
        let at = raw.span();
        let raw = raw.into_inner();
        let table = "[upstream.NAME.discovery]";
        let given = self.required(&raw.source, "source", table, at.clone())?;
        let kind = given.get_ref().as_str();
        // Keys that belong to another source are a mistake worth naming.
        let foreign: &[(&str, bool)] = &[
            ("name", raw.name.is_some()),
            ("resolver", raw.resolver.is_some()),
            ("min_ttl", raw.min_ttl.is_some()),
            ("max_ttl", raw.max_ttl.is_some()),
            ("endpoints", raw.endpoints.is_some()),
            ("prefix", raw.prefix.is_some()),
            ("path", raw.path.is_some()),
        ];
        let own: &[&str] = match kind {
            "dns" => &["name", "resolver", "min_ttl", "max_ttl"],
            "etcd" => &["endpoints", "prefix"],
            "file" => &["path"],
            other => {
                self.report(
                    given.span(),
                    format!("{ctx} discovery.source \"{other}\" is not one of {SOURCES}"),
                );
                return None;
            }
        };
        for (key, present) in foreign {
            if *present && !own.contains(key) {
                self.report(
                    at.clone(),
                    format!("{ctx} discovery key \"{key}\" does not apply to source \"{kind}\""),
                );
            }
        }
        let scheme = match raw
            .scheme
            .as_ref()
            .map(|s| (s.get_ref().as_str(), s.span()))
        {
            None | Some(("http", _)) => Scheme::Http,
            Some(("https", _)) => Scheme::Https,
            Some((other, span)) => {
                self.report(
                    span,
                    format!("{ctx} discovery.scheme \"{other}\" is not one of http, https"),
                );
                Scheme::Http
            }
        };
        let source = match kind {
            "dns" => Source::Dns(self.dns_source(ctx, &raw, table, at)?),
            "etcd" => Source::Etcd(self.etcd_source(ctx, &raw, table, at)?),
            _ => {
                let path = self.required(&raw.path, "path", table, at)?;
                Source::File(self.file_path(&format!("{ctx} discovery.path"), path))
            }
        };
        Some(DiscoveryConfig { source, scheme })
    }

    fn dns_source(
        &mut self,
        ctx: &str,
        raw: &RawDiscovery,
        table: &str,
        at: std::ops::Range<usize>,
    ) -> Option<DnsSource> {
        let given = self.required(&raw.name, "name", table, at)?;
        let text = given.get_ref();
        let name = if text.starts_with('_') {
            valid_dns_name(text).then(|| DnsName::Srv(text.to_ascii_lowercase()))
        } else if text.contains("://") {
            None
        } else {
            match BackendUrl::parse(text) {
                Ok(u) if valid_dns_name(&u.host) || u.host.parse::<IpAddr>().is_ok() => {
                    Some(DnsName::Host {
                        host: u.host,
                        port: u.port,
                    })
                }
                _ => None,
            }
        };
        let Some(name) = name else {
            self.report(
                given.span(),
                format!(
                    "{ctx} discovery.name \"{text}\" is neither an SRV name (\"_http._tcp.api.internal\") nor host:port (\"api.internal:8080\")"
                ),
            );
            return None;
        };
        let resolver = raw.resolver.as_ref().and_then(|r| {
            // A bare address means port 53.
            let text = r.get_ref();
            match text.parse::<IpAddr>() {
                Ok(ip) => Some(SocketAddr::new(ip, 53)),
                Err(_) => self.socket_addr(&format!("{ctx} discovery.resolver"), r),
            }
        });
        let min_ttl = self.duration(
            &format!("{ctx} discovery.min_ttl"),
            raw.min_ttl.as_ref(),
            DEFAULT_MIN_TTL,
            true,
        );
        let max_ttl = self.duration(
            &format!("{ctx} discovery.max_ttl"),
            raw.max_ttl.as_ref(),
            DEFAULT_MAX_TTL.max(min_ttl),
            true,
        );
        if max_ttl < min_ttl {
            let span = raw
                .max_ttl
                .as_ref()
                .or(raw.min_ttl.as_ref())
                .map(|s| s.span())
                .unwrap_or_default();
            self.report(
                span,
                format!("{ctx} discovery.max_ttl is shorter than discovery.min_ttl"),
            );
        }
        Some(DnsSource {
            name,
            resolver,
            min_ttl,
            max_ttl,
        })
    }

    fn etcd_source(
        &mut self,
        ctx: &str,
        raw: &RawDiscovery,
        table: &str,
        at: std::ops::Range<usize>,
    ) -> Option<EtcdSource> {
        let prefix = self.required(&raw.prefix, "prefix", table, at.clone())?;
        if prefix.get_ref().is_empty() {
            self.report(
                prefix.span(),
                format!(
                    "{ctx} discovery.prefix is empty; expected e.g. \"/sluice/upstreams/api/\""
                ),
            );
        }
        let list = self.required(&raw.endpoints, "endpoints", table, at)?;
        if list.get_ref().is_empty() {
            self.report(
                list.span(),
                format!(
                    "{ctx} discovery.endpoints is empty; expected e.g. [\"http://127.0.0.1:2379\"]"
                ),
            );
        }
        let mut endpoints = Vec::new();
        for e in list.get_ref() {
            match BackendUrl::parse(e.get_ref()) {
                Ok(u) if u.scheme == Scheme::Http => endpoints.push(EtcdEndpoint {
                    host: u.host,
                    port: u.port,
                }),
                Ok(_) => self.report(
                    e.span(),
                    format!(
                        "{ctx} discovery endpoint \"{}\" is https; sluice speaks to etcd over plain http (run it on a trusted network or through a local proxy)",
                        e.get_ref()
                    ),
                ),
                Err(_) => self.report(
                    e.span(),
                    format!(
                        "{ctx} discovery endpoint \"{}\" is not an address; expected e.g. \"http://127.0.0.1:2379\"",
                        e.get_ref()
                    ),
                ),
            }
        }
        Some(EtcdSource {
            endpoints,
            prefix: prefix.get_ref().clone(),
        })
    }
}

/// A DNS name: dot-separated labels of letters, digits, '-' and '_', each 1 to 63
/// bytes, at most 253 bytes in all; one trailing dot allowed.
fn valid_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::discovery::{DnsName, Source};
    use crate::config::{Config, Scheme};

    const HEAD: &str = "[[listener]]\naddress = \"127.0.0.1:8080\"\n[upstream.api.discovery]\n";

    fn parse(section: &str) -> Result<Config, Vec<String>> {
        crate::config::parse_str(&format!("{HEAD}{section}"), Path::new("s.toml"))
            .map_err(|e| e.lines())
    }

    fn errors(section: &str) -> Vec<String> {
        parse(section).expect_err("errors")
    }

    #[test]
    fn each_source_reads_its_keys() {
        let c = parse("source = \"dns\"\nname = \"_http._tcp.Api.internal\"\nresolver = \"127.0.0.1:5353\"\nmin_ttl = \"2s\"\nmax_ttl = \"30s\"\n").unwrap();
        let d = c.upstreams[0].discovery.clone().unwrap();
        let Source::Dns(dns) = d.source else { panic!() };
        assert_eq!(dns.name, DnsName::Srv("_http._tcp.api.internal".into()));
        assert_eq!(dns.resolver, Some("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(
            (dns.min_ttl, dns.max_ttl),
            (Duration::from_secs(2), Duration::from_secs(30))
        );
        assert!(c.upstreams[0].backends.is_empty(), "none until discovered");

        let c = parse("source = \"dns\"\nname = \"api.internal:8443\"\nscheme = \"https\"\nresolver = \"10.0.0.53\"\n").unwrap();
        let d = c.upstreams[0].discovery.clone().unwrap();
        assert_eq!(d.scheme, Scheme::Https);
        let Source::Dns(dns) = d.source else { panic!() };
        assert_eq!(
            dns.name,
            DnsName::Host {
                host: "api.internal".into(),
                port: 8443
            }
        );
        assert_eq!(
            dns.resolver,
            Some("10.0.0.53:53".parse().unwrap()),
            "port 53 by default"
        );

        let c = parse("source = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\", \"10.0.0.2:2379\"]\nprefix = \"/sluice/upstreams/api/\"\n").unwrap();
        let Source::Etcd(e) = c.upstreams[0].discovery.clone().unwrap().source else {
            panic!()
        };
        assert_eq!(e.endpoints.len(), 2);
        assert_eq!(e.endpoints[1].to_string(), "http://10.0.0.2:2379");

        let c = parse("source = \"file\"\npath = \"backends/api.json\"\n").unwrap();
        let d = c.upstreams[0].discovery.clone().unwrap();
        assert_eq!(d.source, Source::File("backends/api.json".into()));
    }

    #[test]
    fn mistakes_are_reported_where_they_are() {
        assert_eq!(
            errors("source = \"consul\"\n"),
            [
                "s.toml:4:10: upstream \"api\": discovery.source \"consul\" is not one of dns, etcd, file"
            ]
        );
        assert_eq!(
            errors("source = \"dns\"\n"),
            ["s.toml:3:1: missing key \"name\" in [upstream.NAME.discovery]"]
        );
        assert_eq!(
            errors("source = \"dns\"\nname = \"api.internal\"\n"),
            [
                "s.toml:5:8: upstream \"api\": discovery.name \"api.internal\" is neither an SRV name (\"_http._tcp.api.internal\") nor host:port (\"api.internal:8080\")"
            ]
        );
        assert_eq!(
            errors("source = \"file\"\npath = \"a.json\"\nprefix = \"/x/\"\n"),
            [
                "s.toml:3:1: upstream \"api\": discovery key \"prefix\" does not apply to source \"file\""
            ]
        );
        assert_eq!(
            errors("source = \"dns\"\nname = \"a.b:80\"\nmin_ttl = \"10s\"\nmax_ttl = \"5s\"\n"),
            ["s.toml:7:11: upstream \"api\": discovery.max_ttl is shorter than discovery.min_ttl"]
        );
        assert_eq!(
            errors("source = \"etcd\"\nendpoints = [\"https://e:2379\"]\nprefix = \"/p/\"\n"),
            [
                "s.toml:5:14: upstream \"api\": discovery endpoint \"https://e:2379\" is https; sluice speaks to etcd over plain http (run it on a trusted network or through a local proxy)"
            ]
        );
        let both = "[[listener]]\naddress = \"127.0.0.1:8080\"\n[upstream.api]\nbackends = [{ url = \"127.0.0.1:9\" }]\n[upstream.api.discovery]\nsource = \"file\"\npath = \"a.json\"\n";
        let e = crate::config::parse_str(both, Path::new("s.toml"))
            .unwrap_err()
            .lines();
        assert_eq!(
            e,
            [
                "s.toml:5:1: upstream \"api\": has both \"backends\" and a discovery section; use one: backends listed here, or discovered"
            ]
        );
        let h2 = "[[listener]]\naddress = \"127.0.0.1:8080\"\n[upstream.api]\nprotocol = \"h2\"\n[upstream.api.discovery]\nsource = \"file\"\npath = \"a.json\"\n";
        let e = crate::config::parse_str(h2, Path::new("s.toml"))
            .unwrap_err()
            .lines();
        assert_eq!(
            e,
            ["s.toml:5:1: upstream \"api\": protocol \"h2\" needs discovery.scheme = \"https\""]
        );
    }
}
