//! Config → Snapshot: the model's upstreams and routes, each upstream with its client
//! and one connection pool per backend. Runs at startup and on reload, never per
//! request.
//! Backends present in the previous snapshot keep their `BackendStats` (in-flight counts,
//! health, latency) and their idle connections.

use std::collections::HashMap;
use std::sync::Arc;

use super::client::Client;
use super::pool::Pool;
use super::routing::{Served, Snapshot};
use super::shared_rate::RedisBuckets;
use crate::balance::{Tier, Upstream};
use crate::config::{Config, Protocol, Scheme};
use crate::metrics::UpstreamStats;
use crate::upstream::rate::SharedBuckets;
use crate::upstream::retry::Budget;
use crate::upstream::{Backend, BackendStats, Route};

/// What a backend keeps across snapshots: its counters and its idle connections, with
/// what those connections were made for (scheme, and trust for https).
type Carried<'a> = (
    &'a Arc<BackendStats>,
    &'a Arc<Pool>,
    (Scheme, Option<&'a std::path::Path>, Protocol),
);

/// Builds a snapshot of `config`, reusing state from `previous` where backends match.
/// Admin changes (drains) are undone: this is for the config file's own contents.
pub fn build(config: &Config, previous: Option<&Snapshot>) -> Snapshot {
    build_with(config, previous, true)
}

/// Like `build`, for a config the admin API edited: drains stay, as the other admin
/// changes do, until the next reload.
pub fn build_edited(config: &Config, previous: &Snapshot) -> Snapshot {
    build_with(config, Some(previous), false)
}

fn build_with(config: &Config, previous: Option<&Snapshot>, undo_admin: bool) -> Snapshot {
    let mut old_stats: HashMap<(&str, String), Carried<'_>> = HashMap::new();
    if let Some(prev) = previous {
        for u in prev.upstreams.iter() {
            for b in u.all.iter() {
                let made_for = (b.url.scheme, u.config.ca_file.as_deref(), u.config.protocol);
                let pool = u.client.pool(b);
                old_stats.insert((&u.name, b.id.to_string()), (&b.stats, pool, made_for));
            }
        }
    }

    let upstreams: Vec<Arc<Served>> = config
        .upstreams
        .iter()
        .map(|cfg| {
            // An edit (admin API, a discovered set) leaves the other upstreams as they
            // are: the same tables, client and trust, not rebuilt or read again.
            if let Some(same) = previous
                .filter(|_| !undo_admin)
                .and_then(|p| p.upstreams.iter().find(|u| u.config == *cfg))
            {
                return Arc::clone(same);
            }
            // Its queue carries over too, with its waiters, while it has a limit.
            let queue = (cfg.max_inflight_per_backend > 0).then(|| {
                previous
                    .and_then(|p| p.upstreams.iter().find(|u| *u.name == *cfg.name))
                    .and_then(|u| u.queue.clone())
                    .unwrap_or_default()
            });
            let mut pools = Vec::with_capacity(cfg.backends.len());
            let all: Vec<Arc<Backend>> = cfg
                .backends
                .iter()
                .enumerate()
                .map(|(slot, b)| {
                    let (stats, pool) = match old_stats.get(&(cfg.name.as_str(), b.url.id())) {
                        Some((s, p, made_for)) => {
                            // Health and counters carry over; admin changes (drain) last
                            // only until the next reload (SPEC §5). A health verdict is
                            // kept only while health checks run to revise it.
                            if undo_admin {
                                s.set_draining(false);
                                s.why.drained(None);
                            }
                            if cfg.health.is_none() {
                                s.set_unhealthy(false);
                                s.set_pending(false);
                                s.why.update(|w| (w.unhealthy, w.check) = (None, None));
                            }
                            // Connections made for another scheme or another trust are
                            // not to be reused: a fresh pool.
                            let (scheme, ca_file, protocol) = *made_for;
                            let same = protocol == cfg.protocol
                                && scheme == b.url.scheme
                                && (scheme == Scheme::Http || ca_file == cfg.ca_file.as_deref());
                            let pool = if same { Arc::clone(p) } else { Pool::new() };
                            (Arc::clone(s), pool)
                        }
                        None => {
                            let fresh = (Arc::<BackendStats>::default(), Pool::new());
                            // Added by a reload or the admin API (not present at start):
                            // slow start, and with active checks no request before its
                            // first probe passes (SPEC §3), as in Envoy.
                            if previous.is_some() {
                                fresh.0.start_warming(tokio::time::Instant::now());
                                if cfg.health.is_some() {
                                    fresh.0.set_pending(true);
                                    fresh.0.why.update(|w| {
                                        w.unhealthy = Some(crate::upstream::why::Note {
                                            since: std::time::SystemTime::now(),
                                            why: "added while running: out of rotation until \
                                                  its first check passes"
                                                .to_owned(),
                                        })
                                    });
                                }
                            }
                            fresh
                        }
                    };
                    let mut backend = Backend::new(b.url.clone(), b.weight, b.backup, stats);
                    backend.slow_start = cfg.slow_start;
                    backend.sticky_id = crate::balance::sticky::id_of(&backend.id).into();
                    // Its connections: the client's pool of the same slot.
                    backend.slot = slot;
                    backend.max_inflight = cfg.max_inflight_per_backend;
                    backend.queue = queue.clone();
                    pools.push(pool);
                    Arc::new(backend)
                })
                .collect();
            let (backups, primaries): (Vec<_>, Vec<_>) =
                all.iter().cloned().partition(|b| b.backup);
            let client = Client::new(cfg, pools.into_boxed_slice());
            // The retry budget's window carries over a reload, like backend state: a
            // reload must not reset an upstream to the 3-retries-a-second floor.
            let budget = previous
                .and_then(|p| p.upstreams.iter().find(|u| *u.name == *cfg.name))
                .map(|u| &u.budget)
                .filter(|b| b.percent() == cfg.retry.budget_percent)
                .map_or_else(
                    || Arc::new(Budget::new(cfg.retry.budget_percent)),
                    Arc::clone,
                );
            let stats = previous
                .and_then(|p| p.upstreams.iter().find(|u| *u.name == *cfg.name))
                .map_or_else(
                    || Arc::new(UpstreamStats::new(&cfg.name)),
                    |u| Arc::clone(&u.stats),
                );
            let upstream = Upstream {
                name: Arc::clone(&stats.name),
                stats,
                config: cfg.clone(),
                primaries: Tier::new(cfg, primaries),
                backups: Tier::new(cfg, backups),
                all: all.into_boxed_slice(),
                budget,
                queue,
            };
            Arc::new(Served { upstream, client })
        })
        .collect();

    // Shared rate limits: one store per URL, the same one the previous snapshot used.
    let mut stores: HashMap<String, Arc<dyn SharedBuckets>> = previous
        .into_iter()
        .flat_map(|p| p.routes.iter())
        .filter_map(|r| r.policy.as_ref()?.rate.as_ref()?.store().cloned())
        .map(|s| (s.url().to_owned(), s))
        .collect();
    let mut store_at = |url: &str| -> Arc<dyn SharedBuckets> {
        let made = || RedisBuckets::new(url) as Arc<dyn SharedBuckets>;
        Arc::clone(stores.entry(url.to_owned()).or_insert_with(made))
    };
    let index = |name: &str| upstreams.iter().position(|u| &*u.name == name);
    let routes: Vec<Route> = if config.routes.is_empty() {
        // Validation guarantees exactly one upstream when there are no routes.
        (0..upstreams.len().min(1)).map(Route::catch_all).collect()
    } else {
        config
            .routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let upstream = index(&r.upstream);
                let before = previous.and_then(|p| p.routes.get(i));
                // Validation leaves no route without an upstream but a redirect.
                (upstream.is_some() || r.redirect.is_some())
                    .then(|| Route::new(r, upstream, before, &mut store_at))
            })
            .collect()
    };

    Snapshot {
        routes: routes.into_boxed_slice(),
        upstreams: upstreams.into_boxed_slice(),
        trusted: config.server.trusted_proxies.clone().into_boxed_slice(),
        debug_from: config
            .admin
            .as_ref()
            .map(|a| a.debug_from.clone().into_boxed_slice())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(budget_percent: u32) -> Config {
        let text = format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.web]\nbackends = [{{ url = \"127.0.0.1:1\" }}]\n[upstream.web.retry]\nbudget_percent = {budget_percent}\n"
        );
        crate::config::parse_str(&text, std::path::Path::new("t.toml")).unwrap()
    }

    #[test]
    fn an_edit_leaves_the_other_upstreams_as_they_are() {
        let first = build(&config(20), None);
        let edited = build_edited(&config(20), &first);
        assert!(Arc::ptr_eq(&first.upstreams[0], &edited.upstreams[0]));
        let reloaded = build(&config(20), Some(&edited));
        assert!(
            !Arc::ptr_eq(&edited.upstreams[0], &reloaded.upstreams[0]),
            "a reload rebuilds (certificates, drains)"
        );
    }

    #[test]
    fn a_reload_keeps_the_retry_budget_unless_its_percentage_changes() {
        let first = build(&config(20), None);
        let again = build(&config(20), Some(&first));
        assert!(Arc::ptr_eq(
            &first.upstreams[0].budget,
            &again.upstreams[0].budget
        ));
        let changed = build(&config(30), Some(&again));
        assert!(!Arc::ptr_eq(
            &again.upstreams[0].budget,
            &changed.upstreams[0].budget
        ));
        assert_eq!(changed.upstreams[0].budget.percent(), 30);
    }

    fn with_backend(url: &str, ca_file: &str) -> Config {
        let text = format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.web]\n{ca_file}\nbackends = [{{ url = \"{url}\" }}]\n"
        );
        crate::config::parse_str(&text, std::path::Path::new("t.toml")).unwrap()
    }

    #[test]
    fn idle_connections_carry_over_only_to_the_same_scheme_and_trust() {
        let b = |s: &Snapshot| Arc::clone(s.upstreams[0].client.pool(&s.upstreams[0].all[0]));
        let plain = build(&with_backend("http://127.0.0.1:9", ""), None);
        let again = build(
            &with_backend("127.0.0.1:9", "ca_file = \"x.pem\""),
            Some(&plain),
        );
        assert!(Arc::ptr_eq(&b(&plain), &b(&again)), "plain stays plain");
        let tls = build(
            &with_backend("https://127.0.0.1:9", "ca_file = \"x.pem\""),
            Some(&again),
        );
        assert!(
            !Arc::ptr_eq(&b(&again), &b(&tls)),
            "plain connections are not TLS"
        );
        assert!(
            Arc::ptr_eq(
                &again.upstreams[0].all[0].stats,
                &tls.upstreams[0].all[0].stats
            ),
            "counters carry over"
        );
        let same = build(
            &with_backend("https://127.0.0.1:9", "ca_file = \"x.pem\""),
            Some(&tls),
        );
        assert!(Arc::ptr_eq(&b(&tls), &b(&same)));
        let other_trust = build(
            &with_backend("https://127.0.0.1:9", "ca_file = \"y.pem\""),
            Some(&same),
        );
        assert!(!Arc::ptr_eq(&b(&same), &b(&other_trust)), "trust changed");
        let h2c = build(
            &with_backend("http://127.0.0.1:9", "protocol = \"h2c\""),
            Some(&plain),
        );
        assert!(
            !Arc::ptr_eq(&b(&plain), &b(&h2c)),
            "HTTP/1.1 connections are not HTTP/2 ones"
        );
    }
}
