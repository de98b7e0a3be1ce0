//! Semantic checks of `[upstream.NAME]` and its sub-sections (backends, health,
//! outlier, retry): the upstream half of `validate.rs`.

use std::collections::HashMap;
use std::time::Duration;

use toml::Spanned;

use super::{Check, DEFAULT_STICKY_COOKIE, is_token, status_range};
use crate::config::raw::{RawBackend, RawHealth, RawOutlier, RawRetry, RawUpstream, StrOrInt};
use crate::config::{
    BackendConfig, BackendUrl, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_IDLE_PER_BACKEND,
    DEFAULT_RESPONSE_TIMEOUT, HashKey, HealthConfig, HostHeader, MAX_WEIGHT, OutlierConfig,
    Protocol, ProxyVersion, QueueConfig, RetryConfig, RetryOn, Scheme, StickyConfig, StrategyKind,
    UpstreamConfig,
};

impl Check<'_> {
    pub(super) fn upstream(
        &mut self,
        name: Spanned<String>,
        raw: Spanned<RawUpstream>,
    ) -> UpstreamConfig {
        let name_span = name.span();
        let name = name.into_inner();
        if !is_token(&name) {
            self.report(
                name_span,
                format!(
                    "upstream name \"{name}\" is not allowed; expected only letters, digits, \"_\", \".\" and \"-\""
                ),
            );
        }
        let at = raw.span();
        let raw = raw.into_inner();
        let ctx = format!("upstream \"{name}\":");
        match (&raw.backends, &raw.discovery) {
            (None, None) if !self.misspelt_in.contains(&at) => self.report(
                at.clone(),
                format!(
                    "missing key \"backends\" in [upstream.{name}] (or a [upstream.{name}.discovery] section)"
                ),
            ),
            (Some(_), Some(d)) => self.report(
                d.span(),
                format!(
                    "{ctx} has both \"backends\" and a discovery section; use one: backends listed here, or discovered"
                ),
            ),
            _ => {}
        }
        let raw_backends = raw.backends.as_deref().unwrap_or_default();
        let mut u = UpstreamConfig::with_defaults(&name, Vec::new());

        if let Some(s) = &raw.strategy {
            match StrategyKind::parse(s.get_ref()) {
                Some(k) => u.strategy = k,
                None => {
                    let all: Vec<&str> = StrategyKind::ALL.iter().map(|k| k.as_str()).collect();
                    self.report(
                        s.span(),
                        format!(
                            "{ctx} strategy \"{}\" is not one of {}",
                            s.get_ref(),
                            all.join(", ")
                        ),
                    );
                }
            }
        }
        if let Some(h) = &raw.hash_key {
            match HashKey::parse(h.get_ref()) {
                Ok(k) => u.hash_key = k,
                Err(e) => self.report(h.span(), format!("{ctx} {e}")),
            }
        }
        u.backends = self.backends(&ctx, raw_backends);
        if let Some(h) = &raw.host_header {
            match h.get_ref().as_str() {
                "preserve" => u.host_header = HostHeader::Preserve,
                "backend" => u.host_header = HostHeader::Backend,
                other => self.report(
                    h.span(),
                    format!("{ctx} host_header \"{other}\" is not one of preserve, backend"),
                ),
            }
        }
        if let Some(p) = &raw.protocol {
            match p.get_ref().as_str() {
                "http1" => u.protocol = Protocol::Http1,
                "h2c" => u.protocol = Protocol::H2c,
                "h2" => u.protocol = Protocol::H2,
                other => self.report(
                    p.span(),
                    format!("{ctx} protocol \"{other}\" is not one of http1, h2c, h2"),
                ),
            }
            self.protocol_matches_backends(&ctx, p, u.protocol, raw_backends, &u.backends);
        }
        u.ca_file = raw
            .ca_file
            .as_ref()
            .map(|f| self.file_path(&format!("{ctx} ca_file"), f));
        u.connect_timeout = self.duration(
            &format!("{ctx} connect_timeout"),
            raw.connect_timeout.as_ref(),
            DEFAULT_CONNECT_TIMEOUT,
            true,
        );
        u.response_timeout = self.duration(
            &format!("{ctx} response_timeout"),
            raw.response_timeout.as_ref(),
            DEFAULT_RESPONSE_TIMEOUT,
            true,
        );
        let idle = self.int_in(
            &format!("{ctx} max_idle_per_backend"),
            raw.max_idle_per_backend.as_ref(),
            0,
            i64::MAX,
            DEFAULT_MAX_IDLE_PER_BACKEND as i64,
        );
        u.max_idle_per_backend = usize::try_from(idle).unwrap_or(usize::MAX);
        u.slow_start = self.duration(
            &format!("{ctx} slow_start"),
            raw.slow_start.as_ref(),
            Duration::ZERO,
            false,
        );
        u.sticky = raw.sticky.as_ref().map(|s| {
            let cookie = match &s.get_ref().cookie {
                None => DEFAULT_STICKY_COOKIE.to_owned(),
                Some(c) => {
                    if !is_token(c.get_ref()) {
                        self.report(
                            c.span(),
                            format!(
                                "{ctx} sticky.cookie \"{}\" is not a valid cookie name; expected letters, digits, \"_\", \".\" or \"-\"",
                                c.get_ref()
                            ),
                        );
                    }
                    c.get_ref().clone()
                }
            };
            StickyConfig { cookie }
        });
        self.queue(&ctx, &mut u, &raw);
        if let Some(p) = &raw.proxy_protocol {
            match p.get_ref().as_str() {
                "off" => {}
                "v1" => u.proxy_protocol = Some(ProxyVersion::V1),
                "v2" => u.proxy_protocol = Some(ProxyVersion::V2),
                other => self.report(
                    p.span(),
                    format!("{ctx} proxy_protocol \"{other}\" is not one of off, v1, v2"),
                ),
            }
            if u.proxy_protocol.is_some() && u.protocol != Protocol::Http1 {
                self.report(
                    p.span(),
                    format!("{ctx} proxy_protocol needs protocol = \"http1\": an HTTP/2 backend connection is shared by many clients, and a PROXY header names one"),
                );
            }
        }
        u.health = raw.health.map(|h| self.health(&ctx, h.into_inner()));
        u.outlier = self.outlier(&ctx, raw.outlier.unwrap_or_default());
        u.retry = self.retry(&ctx, raw.retry.unwrap_or_default());
        if let Some(d) = raw.discovery {
            let span = d.span();
            u.discovery = self.discovery(&ctx, d);
            let needs = match u.protocol {
                Protocol::Http1 => None,
                Protocol::H2 => Some(("h2", Scheme::Https)),
                Protocol::H2c => Some(("h2c", Scheme::Http)),
            };
            if let (Some((p, scheme)), Some(d)) = (needs, &u.discovery)
                && d.scheme != scheme
            {
                let want = if scheme == Scheme::Https {
                    "https"
                } else {
                    "http"
                };
                self.report(
                    span,
                    format!("{ctx} protocol \"{p}\" needs discovery.scheme = \"{want}\""),
                );
            }
        }
        u
    }

    /// `max_inflight_per_backend` and its `queue`, which means nothing without it.
    fn queue(&mut self, ctx: &str, u: &mut UpstreamConfig, raw: &RawUpstream) {
        let max = self.int_in(
            &format!("{ctx} max_inflight_per_backend"),
            raw.max_inflight_per_backend.as_ref(),
            0,
            i64::from(u32::MAX),
            0,
        );
        u.max_inflight_per_backend = u32::try_from(max).unwrap_or(u32::MAX);
        let Some(q) = &raw.queue else { return };
        let given = raw.max_inflight_per_backend.as_ref().map(|m| *m.get_ref());
        if given.is_none_or(|m| m == 0) {
            self.report(
                q.span(),
                format!("{ctx} queue needs max_inflight_per_backend (requests queue only when every backend is at it)"),
            );
        }
        let q = q.get_ref();
        let waiting = self.int_in(
            &format!("{ctx} queue.max"),
            q.max.as_ref(),
            0,
            1_000_000,
            QueueConfig::default().max as i64,
        );
        u.queue.max = usize::try_from(waiting).unwrap_or(0);
        u.queue.timeout = self.duration(
            &format!("{ctx} queue.timeout"),
            q.timeout.as_ref(),
            QueueConfig::default().timeout,
            true,
        );
    }

    fn backends(&mut self, ctx: &str, raw: &[Spanned<RawBackend>]) -> Vec<BackendConfig> {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::new();
        for spanned in raw {
            let b: &RawBackend = spanned.get_ref();
            let table = "upstream backend ({ url = \"host:port\" })";
            let Some(given) = self.required(&b.url, "url", table, spanned.span()) else {
                continue;
            };
            let weight = self.int_in(
                &format!("{ctx} backend weight"),
                b.weight.as_ref(),
                1,
                i64::from(MAX_WEIGHT),
                1,
            );
            let url = match BackendUrl::parse(given.get_ref()) {
                Ok(url) => url,
                Err(e) => {
                    self.report(given.span(), format!("{ctx} {e}"));
                    continue;
                }
            };
            let id = url.id();
            if let Some(&first) = seen.get(&id) {
                let line = self.line_of(first);
                self.report(
                    given.span(),
                    format!("{ctx} duplicate backend \"{id}\" (also at line {line})"),
                );
            } else {
                seen.insert(id, given.span().start);
            }
            out.push(BackendConfig {
                url,
                weight: u32::try_from(weight).unwrap_or(1),
                backup: b.backup.unwrap_or(false),
            });
        }
        out
    }

    /// h2 runs over TLS only and h2c over plain TCP only, so the backends' schemes must fit.
    fn protocol_matches_backends(
        &mut self,
        ctx: &str,
        p: &Spanned<String>,
        protocol: Protocol,
        raw: &[Spanned<RawBackend>],
        parsed: &[BackendConfig],
    ) {
        let (wrong, advice) = match protocol {
            Protocol::Http1 => return,
            Protocol::H2 => (Scheme::Http, "use \"h2c\" for HTTP/2 without TLS"),
            Protocol::H2c => (Scheme::Https, "use \"h2\" for HTTP/2 over TLS"),
        };
        let Some(b) = parsed.iter().find(|b| b.url.scheme == wrong) else {
            return;
        };
        // Show the backend as written.
        let written = raw
            .iter()
            .filter_map(|r| r.get_ref().url.as_ref().map(|u| u.get_ref()))
            .find(|w| BackendUrl::parse(w).as_ref() == Ok(&b.url))
            .cloned()
            .unwrap_or_else(|| b.url.to_string());
        let message = match protocol {
            Protocol::H2 => format!(
                "{ctx} protocol \"h2\" needs https backends but backend \"{written}\" is plain http; {advice}"
            ),
            _ => format!(
                "{ctx} protocol \"h2c\" needs plain http backends but backend \"{written}\" is https; {advice}"
            ),
        };
        self.report(p.span(), message);
    }

    fn health(&mut self, ctx: &str, raw: RawHealth) -> HealthConfig {
        let d = HealthConfig::default();
        let path = raw.path.map(|p| {
            if !p.get_ref().starts_with('/') {
                self.report(
                    p.span(),
                    format!(
                        "{ctx} health.path \"{}\" must start with \"/\"",
                        p.get_ref()
                    ),
                );
            }
            p.into_inner()
        });
        let expect_status = match &raw.expect_status {
            None => d.expect_status,
            Some(v) => status_range(&v.get_ref().0).unwrap_or_else(|| {
                self.report(
                    v.span(),
                    format!(
                        "{ctx} health.expect_status {} is not a status or range; expected e.g. \"200\" or \"200-399\" with codes from 100 to 599",
                        v.get_ref().0
                    ),
                );
                d.expect_status
            }),
        };
        HealthConfig {
            path,
            interval: self.duration(
                &format!("{ctx} health.interval"),
                raw.interval.as_ref(),
                d.interval,
                true,
            ),
            timeout: self.duration(
                &format!("{ctx} health.timeout"),
                raw.timeout.as_ref(),
                d.timeout,
                true,
            ),
            rise: self.u32_in(&format!("{ctx} health.rise"), raw.rise.as_ref(), 1, d.rise),
            fall: self.u32_in(&format!("{ctx} health.fall"), raw.fall.as_ref(), 1, d.fall),
            expect_status,
        }
    }

    fn outlier(&mut self, ctx: &str, raw: RawOutlier) -> OutlierConfig {
        let d = OutlierConfig::default();
        let percent = self.int_in(
            &format!("{ctx} outlier.max_ejected_percent"),
            raw.max_ejected_percent.as_ref(),
            0,
            100,
            i64::from(d.max_ejected_percent),
        );
        OutlierConfig {
            consecutive_failures: self.u32_in(
                &format!("{ctx} outlier.consecutive_failures"),
                raw.consecutive_failures.as_ref(),
                1,
                d.consecutive_failures,
            ),
            ejection: self.duration(
                &format!("{ctx} outlier.ejection"),
                raw.ejection.as_ref(),
                d.ejection,
                true,
            ),
            max_ejected_percent: u32::try_from(percent).unwrap_or(d.max_ejected_percent),
        }
    }

    fn retry(&mut self, ctx: &str, raw: RawRetry) -> RetryConfig {
        let d = RetryConfig::default();
        let on = match raw.on {
            None => d.on.clone(),
            Some(list) => list
                .iter()
                .filter_map(|c| {
                    let text = match &c.get_ref().0 {
                        StrOrInt::Str(s) => s.clone(),
                        StrOrInt::Int(n) => n.to_string(),
                    };
                    RetryOn::parse(&text)
                        .map_err(|e| self.report(c.span(), format!("{ctx} retry.on: {e}")))
                        .ok()
                })
                .collect(),
        };
        let percent = self.int_in(
            &format!("{ctx} retry.budget_percent"),
            raw.budget_percent.as_ref(),
            0,
            100,
            i64::from(d.budget_percent),
        );
        RetryConfig {
            attempts: self.u32_in(
                &format!("{ctx} retry.attempts"),
                raw.attempts.as_ref(),
                0,
                d.attempts,
            ),
            on,
            budget_percent: u32::try_from(percent).unwrap_or(d.budget_percent),
        }
    }

    // -- value helpers: each reports its own problem and returns a stand-in on error --
}
