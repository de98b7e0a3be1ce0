//! Backends from discovery sources (SPEC §6): DNS names, etcd prefixes and JSON files.
//! Each source runs as one task and reports whole sets of backends (or why it could not
//! get one); the control side (state) applies each set as one atomic change. Sources
//! know nothing of snapshots, health or pools: they only say who the backends are.

mod dns;
mod etcd;
mod file;

use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::discovery::Source;
use crate::config::{BackendConfig, BackendUrl, DiscoveryConfig, MAX_WEIGHT, Scheme};

/// What a source reports.
#[derive(Debug, PartialEq)]
pub enum Report {
    /// The whole set of backends now, in canonical order (`canonical`). It may be empty
    /// (NXDOMAIN, an empty prefix, `[]`): the upstream then has no backends.
    Set(Vec<BackendConfig>),
    /// The source could not be read or answered with an error: the last set stays.
    Failed(String),
}

/// Where a source sends its reports; a closed channel stops the source.
pub type Reports = mpsc::Sender<Report>;

/// Runs the source `cfg` names until the receiving side of `tx` is dropped.
pub async fn run(cfg: DiscoveryConfig, tx: Reports) {
    match cfg.source {
        Source::Dns(d) => dns::run(d, cfg.scheme, tx).await,
        Source::Etcd(e) => etcd::run(e, cfg.scheme, tx).await,
        Source::File(path) => file::run(path, cfg.scheme, tx).await,
    }
}

/// A set in canonical order: sorted by id, one entry per id, so that two instances
/// given the same backends in any order build the same tables. Of several entries for
/// one id, a primary wins over a backup, then the higher weight: whatever order they
/// came in (DNS servers rotate records), every instance keeps the same one.
pub fn canonical(mut set: Vec<BackendConfig>) -> Vec<BackendConfig> {
    set.sort_by_cached_key(|b| (b.url.id(), b.backup, std::cmp::Reverse(b.weight)));
    set.dedup_by(|b, a| b.url.id() == a.url.id());
    set
}

/// One backend as etcd values and file entries describe it:
/// `{"url": "10.0.0.1:8080", "weight": 1, "backup": false}` (weight and backup optional).
/// A url without a scheme takes the discovery's `scheme`.
pub fn member(value: &serde_json::Value, scheme: Scheme) -> Result<BackendConfig, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Entry {
        url: String,
        weight: Option<u64>,
        backup: Option<bool>,
    }
    let e: Entry = serde_json::from_value(value.clone()).map_err(|e| {
        format!("{e}; expected {{\"url\": \"host:port\", \"weight\": 1, \"backup\": false}}")
    })?;
    let mut url = BackendUrl::parse(&e.url)?;
    if !e.url.contains("://") {
        url.scheme = scheme;
    }
    let weight = match e.weight {
        None => 1,
        Some(w) if (1..=u64::from(MAX_WEIGHT)).contains(&w) => w as u32,
        Some(w) => {
            return Err(format!(
                "weight {w} is out of range; expected 1 to {MAX_WEIGHT}"
            ));
        }
    };
    Ok(BackendConfig {
        url,
        weight,
        backup: e.backup.unwrap_or(false),
    })
}

/// Waits between failed attempts: 250 ms doubling to 10 s, with ±25% jitter so that a
/// fleet of instances does not retry in step.
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(10);

    pub(crate) fn new() -> Backoff {
        Backoff { next: Self::FIRST }
    }

    pub(crate) fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// The wait before the next attempt.
    pub(crate) fn step(&mut self) -> Duration {
        let wait = jitter(self.next, 4);
        self.next = (self.next * 2).min(Self::MAX);
        wait
    }
}

/// `d` give or take `d / divisor`, at random.
pub(crate) fn jitter(d: Duration, divisor: u32) -> Duration {
    let spread = d / divisor;
    let nanos = u64::try_from(spread.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return d;
    }
    let off = Duration::from_nanos(fastrand::u64(0..=nanos * 2));
    (d + off).saturating_sub(spread)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(url: &str) -> BackendConfig {
        BackendConfig {
            url: BackendUrl::parse(url).unwrap(),
            weight: 1,
            backup: false,
        }
    }

    #[test]
    fn sets_are_canonical_whatever_order_they_come_in() {
        let one = canonical(vec![b("10.0.0.2:80"), b("10.0.0.1:80"), b("10.0.0.2:80")]);
        let two = canonical(vec![b("10.0.0.1:80"), b("10.0.0.2:80")]);
        assert_eq!(one, two);
        assert_eq!(one.len(), 2);
        // One address named twice: the same entry wins in any order.
        let backup = BackendConfig {
            backup: true,
            weight: 9,
            ..b("10.0.0.5:80")
        };
        let light = BackendConfig {
            weight: 1,
            ..b("10.0.0.5:80")
        };
        let heavy = BackendConfig {
            weight: 5,
            ..b("10.0.0.5:80")
        };
        let x = canonical(vec![backup.clone(), light.clone(), heavy.clone()]);
        let y = canonical(vec![heavy.clone(), backup, light]);
        assert_eq!(x, y);
        assert_eq!(x, [heavy]);
    }

    #[test]
    fn members_are_read_as_the_spec_describes_them() {
        let v = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        let m = member(
            &v(r#"{"url": "10.0.0.1:8080", "weight": 3, "backup": true}"#),
            Scheme::Http,
        )
        .unwrap();
        assert_eq!(
            (m.url.id(), m.weight, m.backup),
            ("10.0.0.1:8080".into(), 3, true)
        );
        let m = member(&v(r#"{"url": "10.0.0.1:8443"}"#), Scheme::Https).unwrap();
        assert_eq!(m.url.scheme, Scheme::Https, "the discovery's scheme");
        let m = member(&v(r#"{"url": "http://10.0.0.1:80"}"#), Scheme::Https).unwrap();
        assert_eq!(m.url.scheme, Scheme::Http, "a written scheme wins");
        for bad in [
            r#"{"url": "10.0.0.1"}"#,
            r#"{"url": "10.0.0.1:80", "weight": 0}"#,
            r#"{"url": "10.0.0.1:80", "weight": 1001}"#,
            r#"{"url": "10.0.0.1:80", "colour": "red"}"#,
            r#"{"weight": 1}"#,
            r#""10.0.0.1:80""#,
        ] {
            assert!(member(&v(bad), Scheme::Http).is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter() {
        let mut b = Backoff::new();
        let first = b.step();
        assert!(first >= Duration::from_millis(187) && first <= Duration::from_millis(313));
        for _ in 0..10 {
            b.step();
        }
        let late = b.step();
        assert!(late <= Duration::from_millis(12_500) && late >= Duration::from_millis(7_500));
        b.reset();
        assert!(b.step() <= Duration::from_millis(313));
    }
}
