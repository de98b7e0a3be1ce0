//! The last five minutes, for the dashboard's charts: once a second, while the admin API
//! serves, each upstream's answers per second, 5xx answers per second, and the p50 and
//! p99 of the requests that ended in that second (from its latency histogram), and the
//! same over all upstreams. Read from the counters the proxy keeps anyway: nothing is
//! added to the request path. `GET /status/history` returns it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::quantile;
use crate::state::State;

/// Samples kept: five minutes of one a second.
const KEPT: usize = 300;
const EVERY: Duration = Duration::from_secs(1);

/// One upstream's (or all upstreams') numbers over one interval.
#[derive(Clone, Copy, Default, serde::Serialize)]
struct Rates {
    rps: f64,
    errors: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
}

struct Sample {
    /// Unix time, milliseconds.
    t: u64,
    connections: usize,
    total: Rates,
    upstreams: Vec<(Arc<str>, Rates)>,
}

/// Counters as last read: answers, 5xx answers, latency buckets (cumulative).
#[derive(Clone, Copy, Default)]
struct Reading {
    answers: u64,
    errors: u64,
    buckets: [u64; 17],
}

impl Reading {
    fn add(&mut self, other: &Reading) {
        self.answers += other.answers;
        self.errors += other.errors;
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
    }

    /// The rates from `before` to this reading, `secs` apart. A counter that went
    /// back (a backend removed) counts as no traffic.
    fn since(&self, before: &Reading, secs: f64) -> Rates {
        let mut d = [0u64; 17];
        for (i, v) in d.iter_mut().enumerate() {
            *v = self.buckets[i].saturating_sub(before.buckets[i]);
        }
        let ms = |q| quantile(&d, q).map(|s| (s * 1e6).round() / 1e3);
        Rates {
            rps: self.answers.saturating_sub(before.answers) as f64 / secs,
            errors: self.errors.saturating_sub(before.errors) as f64 / secs,
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
        }
    }
}

#[derive(Default)]
pub struct History {
    samples: VecDeque<Sample>,
    last: Option<(Instant, HashMap<Arc<str>, Reading>)>,
}

impl History {
    /// Reads the counters now and keeps a sample of the rates since the last reading.
    fn sample(&mut self, state: &State) {
        let now = Instant::now();
        let snap = state.shared.snapshot.load();
        let readings: HashMap<Arc<str>, Reading> = snap
            .upstreams
            .iter()
            .map(|u| {
                let classes = super::status::upstream_classes(u);
                let reading = Reading {
                    answers: classes.iter().sum(),
                    errors: classes[4],
                    buckets: u.stats.duration.read().0,
                };
                (Arc::clone(&u.stats.name), reading)
            })
            .collect();
        if let Some((at, before)) = &self.last {
            let secs = now.saturating_duration_since(*at).as_secs_f64().max(1e-3);
            let (mut all_now, mut all_before) = (Reading::default(), Reading::default());
            let mut upstreams = Vec::with_capacity(readings.len());
            for u in snap.upstreams.iter() {
                let Some(r) = readings.get(&*u.stats.name) else {
                    continue;
                };
                let b = before.get(&*u.stats.name).copied().unwrap_or(*r);
                all_now.add(r);
                all_before.add(&b);
                upstreams.push((Arc::clone(&u.stats.name), r.since(&b, secs)));
            }
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            if self.samples.len() == KEPT {
                self.samples.pop_front();
            }
            self.samples.push_back(Sample {
                t,
                connections: super::status::open_connections(state),
                total: all_now.since(&all_before, secs),
                upstreams,
            });
        }
        self.last = Some((now, readings));
    }

    /// `GET /status/history`: columns of equal length, oldest first. An upstream that
    /// is newer than the oldest sample has null where it did not exist yet.
    pub fn json(&self) -> String {
        #[derive(serde::Serialize, Default)]
        struct Columns {
            rps: Vec<Option<f64>>,
            errors: Vec<Option<f64>>,
            p50_ms: Vec<Option<f64>>,
            p99_ms: Vec<Option<f64>>,
        }
        impl Columns {
            fn push(&mut self, r: Option<&Rates>) {
                self.rps.push(r.map(|r| round(r.rps)));
                self.errors.push(r.map(|r| round(r.errors)));
                self.p50_ms.push(r.and_then(|r| r.p50_ms));
                self.p99_ms.push(r.and_then(|r| r.p99_ms));
            }
        }
        #[derive(serde::Serialize)]
        struct Out<'a> {
            interval_ms: u64,
            t: Vec<u64>,
            connections: Vec<usize>,
            total: Columns,
            upstreams: HashMap<&'a str, Columns>,
        }
        let mut out = Out {
            interval_ms: EVERY.as_millis() as u64,
            t: self.samples.iter().map(|s| s.t).collect(),
            connections: self.samples.iter().map(|s| s.connections).collect(),
            total: Columns::default(),
            upstreams: HashMap::new(),
        };
        // The upstreams of the newest sample: removed ones are not charted any more.
        let names: Vec<&Arc<str>> = self
            .samples
            .back()
            .map(|s| s.upstreams.iter().map(|(n, _)| n).collect())
            .unwrap_or_default();
        for s in &self.samples {
            out.total.push(Some(&s.total));
            for name in &names {
                let r = s.upstreams.iter().find(|(n, _)| n == *name).map(|(_, r)| r);
                out.upstreams.entry(&***name).or_default().push(r);
            }
        }
        serde_json::to_string(&out).unwrap_or_else(|_| "{}".to_owned())
    }
}

fn round(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Samples `history` every second until `stop` turns true.
pub async fn keep(
    state: Arc<State>,
    history: Arc<Mutex<History>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return,
        }
        history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sample(&state);
    }
}
