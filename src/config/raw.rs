//! The configuration file exactly as written: a serde mirror of the TOML (SPEC §2).
//!
//! Unknown keys are rejected by the deserializer. Values that a later check may complain
//! about are kept as `Spanned` so the complaint can point at them. Integers are read as
//! `i64` and range-checked in `validate.rs`, so that "workers = 0" and "weight = -1"
//! become ordinary problems (all of them reported) instead of deserializer errors (only
//! the first reported). For the same reason, enumerations such as `protocol` are read as
//! strings.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Unexpected, Visitor};
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub server: Option<RawServer>,
    #[serde(default)]
    pub listener: Vec<Spanned<RawListener>>,
    pub admin: Option<Spanned<RawAdmin>>,
    pub limits: Option<RawLimits>,
    #[serde(default)]
    pub route: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    pub upstream: RawUpstreams,
    pub telemetry: Option<RawTelemetry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    pub otlp: Option<Spanned<String>>,
    pub service_name: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub workers: Option<Spanned<i64>>,
    pub shutdown_timeout: Option<Spanned<DurationValue>>,
    pub upgrade_socket: Option<Spanned<String>>,
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    /// Required; optional here so that a missing one is an ordinary problem and the
    /// checks after it still run (as for the other required keys below).
    pub address: Option<Spanned<String>>,
    pub tls: Option<Spanned<RawTls>>,
    pub proxy_protocol: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub certificates: Option<Spanned<Vec<Spanned<RawCertificate>>>>,
    pub resumption: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCertificate {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub address: Option<Spanned<String>>,
    pub token: Option<Spanned<String>>,
    pub debug_from: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub max_header_bytes: Option<Spanned<SizeValue>>,
    pub max_body_bytes: Option<Spanned<SizeValue>>,
    pub header_read_timeout: Option<Spanned<DurationValue>>,
    pub idle_timeout: Option<Spanned<DurationValue>>,
    pub max_connections: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub host: Option<Spanned<String>>,
    pub path_prefix: Option<Spanned<String>>,
    pub strip_prefix: Option<bool>,
    pub upstream: Option<Spanned<String>>,
    pub allow: Option<Vec<Spanned<String>>>,
    pub deny: Option<Vec<Spanned<String>>>,
    pub redirect: Option<Spanned<RawRedirect>>,
    pub request_headers: Option<Spanned<RawHeaderRules>>,
    pub response_headers: Option<Spanned<RawHeaderRules>>,
    pub rate_limit: Option<Spanned<RawRateLimit>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    pub key: Option<Spanned<String>>,
    pub rate: Option<Spanned<String>>,
    pub burst: Option<Spanned<i64>>,
    pub shared: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeaderRules {
    pub set: Option<std::collections::BTreeMap<Spanned<String>, Spanned<String>>>,
    pub add: Option<std::collections::BTreeMap<Spanned<String>, Spanned<String>>>,
    pub remove: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedirect {
    pub to: Option<Spanned<String>>,
    pub status: Option<Spanned<i64>>,
}

/// `[upstream.NAME]` tables in file order, with the span of each name.
#[derive(Debug, Default)]
pub(super) struct RawUpstreams(pub Vec<(Spanned<String>, Spanned<RawUpstream>)>);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub strategy: Option<Spanned<String>>,
    pub hash_key: Option<Spanned<String>>,
    pub backends: Option<Vec<Spanned<RawBackend>>>,
    pub host_header: Option<Spanned<String>>,
    pub protocol: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<DurationValue>>,
    pub response_timeout: Option<Spanned<DurationValue>>,
    pub max_idle_per_backend: Option<Spanned<i64>>,
    pub slow_start: Option<Spanned<DurationValue>>,
    pub sticky: Option<Spanned<RawSticky>>,
    pub health: Option<Spanned<RawHealth>>,
    pub outlier: Option<RawOutlier>,
    pub retry: Option<RawRetry>,
    pub discovery: Option<Spanned<RawDiscovery>>,
    pub max_inflight_per_backend: Option<Spanned<i64>>,
    pub queue: Option<Spanned<RawQueue>>,
    pub proxy_protocol: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueue {
    pub max: Option<Spanned<i64>>,
    pub timeout: Option<Spanned<DurationValue>>,
}

/// `[upstream.NAME.discovery]`: the keys of every source; which belong to the chosen
/// one is checked in validation, so that a key of another source gets a clear message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDiscovery {
    pub source: Option<Spanned<String>>,
    pub scheme: Option<Spanned<String>>,
    pub name: Option<Spanned<String>>,
    pub resolver: Option<Spanned<String>>,
    pub min_ttl: Option<Spanned<DurationValue>>,
    pub max_ttl: Option<Spanned<DurationValue>>,
    pub endpoints: Option<Spanned<Vec<Spanned<String>>>>,
    pub prefix: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub url: Option<Spanned<String>>,
    pub weight: Option<Spanned<i64>>,
    pub backup: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSticky {
    pub cookie: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub path: Option<Spanned<String>>,
    pub interval: Option<Spanned<DurationValue>>,
    pub timeout: Option<Spanned<DurationValue>>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
    pub expect_status: Option<Spanned<StatusValue>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutlier {
    pub consecutive_failures: Option<Spanned<i64>>,
    pub ejection: Option<Spanned<DurationValue>>,
    pub max_ejected_percent: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetry {
    pub attempts: Option<Spanned<i64>>,
    pub on: Option<Vec<Spanned<RetryValue>>>,
    pub budget_percent: Option<Spanned<i64>>,
}

/// A TOML string or integer; which one is allowed is decided in `validate.rs`, so that a
/// bare number where a duration belongs gets a helpful message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum StrOrInt {
    Str(String),
    Int(i64),
}

impl fmt::Display for StrOrInt {
    /// As written in TOML: strings quoted, integers bare.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StrOrInt::Str(s) => write!(f, "\"{s}\""),
            StrOrInt::Int(n) => write!(f, "{n}"),
        }
    }
}

fn str_or_int<'de, D: Deserializer<'de>>(
    d: D,
    expecting: &'static str,
) -> Result<StrOrInt, D::Error> {
    struct V(&'static str);
    impl Visitor<'_> for V {
        type Value = StrOrInt;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<StrOrInt, E> {
            Ok(StrOrInt::Str(v.to_owned()))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<StrOrInt, E> {
            Ok(StrOrInt::Int(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<StrOrInt, E> {
            i64::try_from(v)
                .map(StrOrInt::Int)
                .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
        }
    }
    d.deserialize_any(V(expecting))
}

macro_rules! str_or_int_type {
    ($(#[$doc:meta])* $name:ident, $expecting:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub(super) struct $name(pub StrOrInt);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                str_or_int(d, $expecting).map($name)
            }
        }
    };
}

str_or_int_type!(
    /// A duration: must be a string such as "5s"; a bare integer is reported in validation.
    DurationValue,
    "a duration string such as \"5s\""
);
str_or_int_type!(
    /// A size: an integer of bytes or a string such as "64KiB".
    SizeValue,
    "a size: an integer of bytes or a string such as \"64KiB\""
);
str_or_int_type!(
    /// An HTTP status or inclusive range: 200 or "200" or "200-399".
    StatusValue,
    "a status or range such as \"200-399\""
);
str_or_int_type!(
    /// A retry condition: "reset", "502" or 502.
    RetryValue,
    "a retry condition such as \"reset\" or \"502\""
);

impl<'de> Deserialize<'de> for RawUpstreams {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawUpstreams;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of upstreams such as [upstream.api]")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawUpstreams, A::Error> {
                let mut out: Vec<(Spanned<String>, Spanned<RawUpstream>)> = Vec::new();
                while let Some(name) = map.next_key::<Spanned<String>>()? {
                    let upstream = map.next_value::<Spanned<RawUpstream>>()?;
                    out.push((name, upstream));
                }
                // The deserializer may hand out keys sorted by name; restore file order.
                out.sort_by_key(|(name, _)| name.span().start);
                Ok(RawUpstreams(out))
            }
        }
        d.deserialize_map(V)
    }
}
