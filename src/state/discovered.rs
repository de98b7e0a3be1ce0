//! Discovered upstreams (SPEC §6): one task per upstream runs its source (discovery/)
//! and applies every set it reports as one atomic change of the running configuration,
//! the way an admin edit is applied: backends that stay keep their health, ejection,
//! counters, drains and pooled connections; new ones start slow (and are probed first
//! when health checks are on); those that leave stop getting requests while the ones
//! in flight finish.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::State;
use crate::config::{BackendConfig, Config, DiscoveryConfig};
use crate::discovery::{self, Report};

/// Where an upstream's discovery stands (`/status`, metrics).
pub struct Status {
    /// "dns", "etcd" or "file".
    pub source: &'static str,
    seen: Mutex<Seen>,
    /// Answers applied.
    pub updates: AtomicU64,
    /// Failed attempts.
    pub errors: AtomicU64,
}

/// The latest of what a source reported.
#[derive(Debug, Clone)]
pub struct Seen {
    pub phase: Phase,
    /// When the last answer was applied.
    pub updated: Option<SystemTime>,
    /// The last failure, until an answer comes.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Nothing heard from the source yet (no backends).
    Pending,
    /// The last attempt brought an answer.
    Ok,
    /// The last attempt failed: the last known set (if any) stays.
    Stale,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Ok => "ok",
            Phase::Stale => "stale",
        }
    }
}

impl Status {
    fn new(source: &'static str) -> Status {
        Status {
            source,
            seen: Mutex::new(Seen {
                phase: Phase::Pending,
                updated: None,
                error: None,
            }),
            updates: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    pub fn seen(&self) -> Seen {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn applied(&self) {
        self.updates.fetch_add(1, Ordering::Relaxed);
        let mut s = self.lock();
        s.phase = Phase::Ok;
        s.updated = Some(SystemTime::now());
        s.error = None;
    }

    /// Records a failure; true if it differs from the last one (worth a log line).
    /// SPEC §6: a source that fails is reported stale, with the set it had (none
    /// before its first answer).
    fn failed(&self, error: String) -> bool {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut s = self.lock();
        s.phase = Phase::Stale;
        let new = s.error.as_deref() != Some(error.as_str());
        s.error = Some(error);
        new
    }
}

/// The discovery tasks of the running configuration, by upstream name.
#[derive(Default)]
pub struct Discovered {
    running: Mutex<HashMap<String, Running>>,
}

struct Running {
    config: DiscoveryConfig,
    status: Arc<Status>,
    task: AbortHandle,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Discovered {
    /// The discovery status of upstream `name`, if it is discovered.
    pub fn status(&self, name: &str) -> Option<Arc<Status>> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.get(name).map(|r| Arc::clone(&r.status))
    }

    /// Stops every task (shutdown).
    pub(super) fn stop(&self) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

impl State {
    /// Starts, keeps or stops discovery tasks to match the running configuration: a
    /// task whose upstream keeps the same discovery settings goes on (a reload does not
    /// ask again), others start anew. Must run inside the runtime.
    pub fn sync_discovery(self: &Arc<Self>) {
        let mut running = self
            .discovered
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Read under the lock: two syncs (startup, a reload) end with the newer config.
        let config = self.shared.config.load();
        if self.stopped() {
            running.clear();
            return;
        }
        running.retain(|name, r| {
            config
                .upstreams
                .iter()
                .any(|u| u.name == *name && u.discovery.as_ref() == Some(&r.config))
        });
        for u in &config.upstreams {
            let Some(d) = &u.discovery else { continue };
            if running.contains_key(&u.name) {
                continue;
            }
            let status = Arc::new(Status::new(d.source.kind()));
            let task = spawn(
                Arc::downgrade(self),
                u.name.clone(),
                d.clone(),
                Arc::clone(&status),
            );
            running.insert(
                u.name.clone(),
                Running {
                    config: d.clone(),
                    status,
                    task,
                },
            );
        }
    }

    /// Applies a set discovered for upstream `name` by the source whose status is
    /// `status`, unless that source is no longer the upstream's (a reload replaced it).
    fn apply_discovered(
        &self,
        name: &str,
        status: &Arc<Status>,
        set: Vec<BackendConfig>,
    ) -> Applied {
        let _edit = self.edit();
        // Checked under the edit lock: a task replaced meanwhile applies nothing.
        if !self
            .discovered
            .status(name)
            .is_some_and(|s| Arc::ptr_eq(&s, status))
        {
            return Applied::NotCurrent;
        }
        let current = self.shared.config.load();
        let Some(at) = current.upstreams.iter().position(|u| u.name == name) else {
            return Applied::NotCurrent;
        };
        let old = &current.upstreams[at].backends;
        if *old == set {
            return Applied::Yes;
        }
        let mut config: Config = (**current).clone();
        config.upstreams[at].backends = set;
        // What an admin edit must pass: backends that fit the protocol, trust for
        // https ones. A set that does not is not applied.
        if let Err(e) = super::check_upstream(&config.upstreams[at]) {
            return Applied::Refused(crate::proxy::error::chain(&e).to_string());
        }
        let set = &config.upstreams[at].backends;
        let (added, removed) = diff(old, set);
        // Requests routed before the swap hold the old snapshot, where the backends
        // that leave are still listed: draining them keeps their retries off.
        if let Some(u) = self.shared.snapshot.load().upstream(name) {
            for b in u
                .all
                .iter()
                .filter(|b| !set.iter().any(|n| n.url.id() == *b.id))
            {
                b.stats.set_draining(true);
            }
        }
        let total = set.len();
        self.apply_edit(config);
        tracing::info!(
            upstream = name,
            source = status.source,
            added,
            removed,
            backends = total,
            "discovered backends applied"
        );
        Applied::Yes
    }
}

/// What became of a discovered set.
enum Applied {
    Yes,
    /// The source is no longer the upstream's.
    NotCurrent,
    /// The set does not fit the upstream (protocol, trust): why.
    Refused(String),
}

/// How many backends `new` adds to `old` and removes from it (by id; a changed weight
/// counts as neither).
fn diff(old: &[BackendConfig], new: &[BackendConfig]) -> (usize, usize) {
    let has =
        |set: &[BackendConfig], b: &BackendConfig| set.iter().any(|o| o.url.id() == b.url.id());
    let added = new.iter().filter(|b| !has(old, b)).count();
    let removed = old.iter().filter(|b| !has(new, b)).count();
    (added, removed)
}

/// Carries the discovered sets of `old` over to `new` where an upstream keeps the same
/// source (a reload: the file has no backends for them). Other discovery settings
/// (TTL bounds, resolver, endpoints) may change: the source then starts again, from
/// the set it had.
pub(super) fn carry_over(old: &Config, new: &mut Config) {
    for u in new.upstreams.iter_mut() {
        let Some(d) = &u.discovery else { continue };
        let same = |o: &&crate::config::UpstreamConfig| {
            o.name == u.name && o.discovery.as_ref().is_some_and(|od| same_source(od, d))
        };
        if let Some(o) = old.upstreams.iter().find(same) {
            u.backends = o.backends.clone();
        }
    }
}

/// Do `a` and `b` name the same set of backends (the same name, prefix or file, and
/// the same scheme)?
fn same_source(a: &DiscoveryConfig, b: &DiscoveryConfig) -> bool {
    use crate::config::discovery::Source;
    a.scheme == b.scheme
        && match (&a.source, &b.source) {
            (Source::Dns(x), Source::Dns(y)) => x.name == y.name,
            (Source::Etcd(x), Source::Etcd(y)) => x.prefix == y.prefix,
            (Source::File(x), Source::File(y)) => x == y,
            _ => false,
        }
}

/// One upstream's discovery: its source and the loop applying what it reports. Holds
/// the state only while applying, so that a dropped state ends it.
fn spawn(
    state: Weak<State>,
    name: String,
    cfg: DiscoveryConfig,
    status: Arc<Status>,
) -> AbortHandle {
    tokio::spawn(async move {
        let (tx, mut rx) = mpsc::channel(1);
        let source = discovery::run(cfg.clone(), tx);
        let apply = async {
            while let Some(report) = rx.recv().await {
                let Some(state) = state.upgrade() else { return };
                let failure = match report {
                    Report::Set(set) => match state.apply_discovered(&name, &status, set) {
                        Applied::Yes => {
                            status.applied();
                            None
                        }
                        Applied::NotCurrent => return,
                        Applied::Refused(why) => Some(why),
                    },
                    Report::Failed(e) => Some(e),
                };
                if let Some(e) = failure.filter(|e| status.failed(e.clone())) {
                    tracing::warn!(
                        upstream = %name,
                        source = cfg.source.kind(),
                        error = %e,
                        "discovery failed; keeping the last known backends"
                    );
                }
            }
        };
        tokio::join!(source, apply);
    })
    .abort_handle()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(path: &str, with_backend: bool) -> Config {
        let text = format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.web.discovery]\nsource = \"file\"\npath = \"{path}\"\n"
        );
        let mut c = crate::config::parse_str(&text, std::path::Path::new("t.toml")).unwrap();
        if with_backend {
            c.upstreams[0].backends = crate::discovery::canonical(vec![BackendConfig {
                url: crate::config::BackendUrl::parse("10.0.0.1:80").unwrap(),
                weight: 1,
                backup: false,
            }]);
        }
        c
    }

    #[test]
    fn the_set_is_carried_over_while_the_name_is_the_same() {
        let dns = |name: &str, ttl: &str| {
            let text = format!(
                "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.web.discovery]\nsource = \"dns\"\nname = \"{name}\"\nmax_ttl = \"{ttl}\"\n"
            );
            crate::config::parse_str(&text, std::path::Path::new("t.toml"))
                .unwrap()
                .upstreams[0]
                .discovery
                .clone()
                .unwrap()
        };
        assert!(same_source(
            &dns("a.test:80", "60s"),
            &dns("a.test:80", "30s")
        ));
        assert!(!same_source(
            &dns("a.test:80", "60s"),
            &dns("b.test:80", "60s")
        ));
    }

    #[test]
    fn a_reload_keeps_the_discovered_set_only_while_the_source_is_the_same() {
        let running = config("a.json", true);
        let mut same = config("a.json", false);
        carry_over(&running, &mut same);
        assert_eq!(same.upstreams[0].backends.len(), 1);
        let mut changed = config("b.json", false);
        carry_over(&running, &mut changed);
        assert!(
            changed.upstreams[0].backends.is_empty(),
            "a new source starts pending"
        );
    }

    #[test]
    fn failures_make_the_source_stale_and_an_answer_makes_it_ok() {
        let s = Status::new("dns");
        assert_eq!(s.seen().phase, Phase::Pending);
        assert!(s.failed("timed out".into()), "the first failure is news");
        assert!(!s.failed("timed out".into()), "the same again is not");
        assert_eq!(
            s.seen().phase,
            Phase::Stale,
            "SPEC §6: a failing source is stale"
        );
        s.applied();
        assert_eq!(s.seen().phase, Phase::Ok);
        assert!(s.seen().error.is_none());
        s.failed("timed out".into());
        assert_eq!(s.seen().phase, Phase::Stale);
        assert_eq!(s.errors.load(Ordering::Relaxed), 3);
        assert_eq!(s.updates.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_change_counts_by_id() {
        let b = |id: &str, w| BackendConfig {
            url: crate::config::BackendUrl::parse(id).unwrap(),
            weight: w,
            backup: false,
        };
        let old = [b("10.0.0.1:80", 1), b("10.0.0.2:80", 1)];
        let new = [b("10.0.0.2:80", 5), b("10.0.0.3:80", 1)];
        assert_eq!(diff(&old, &new), (1, 1));
    }
}
