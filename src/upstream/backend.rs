//! One backend of an upstream and the numbers about it that change while requests run.
//! `Backend` is immutable and lives in a snapshot; `BackendStats` is shared by every
//! snapshot that contains the same backend URL, so reloads and admin edits keep
//! in-flight counts, health and latency. Health checks and outlier detection write the
//! state bits here; strategies only read them through `available` and `effective_weight`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::BackendUrl;

/// State bits; several may be set at once.
const UNHEALTHY: u8 = 1 << 0;
const DRAINING: u8 = 1 << 1;
/// Added while sluice runs to an upstream with active checks: out of rotation until
/// its first probe passes (SPEC §3). Shown as unhealthy.
const PENDING: u8 = 1 << 2;

/// A backend as the balancer sees it in one snapshot.
pub struct Backend {
    pub url: BackendUrl,
    /// `host:port`, precomputed for logs, metrics and the admin API.
    pub id: Box<str>,
    /// The URI authority requests to this backend are sent to.
    pub authority: http::uri::Authority,
    /// `host:port` as a Host header value (`host_header = "backend"`).
    pub host_value: http::HeaderValue,
    pub weight: u32,
    pub backup: bool,
    /// The upstream's `slow_start` (zero: none).
    pub slow_start: Duration,
    /// The opaque id a sticky cookie carries for this backend (set by the build, from
    /// balance/sticky.rs).
    pub sticky_id: Box<str>,
    pub stats: Arc<BackendStats>,
    /// Its place in its upstream's `all`: where the transport keeps its connections
    /// (the model owns no connection).
    pub slot: usize,
    /// The address to connect to when the host is an IP literal (no lookup needed).
    pub socket_addr: Option<std::net::SocketAddr>,
    /// The upstream's `max_inflight_per_backend` (0: unlimited).
    pub max_inflight: u32,
    /// The upstream's queue, woken when this backend frees a slot; None without a limit.
    pub queue: Option<Arc<super::queue::Queue>>,
}

/// What `/status` reports as a backend's `state` (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Healthy,
    Unhealthy,
    Ejected,
    Draining,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Unhealthy => "unhealthy",
            State::Ejected => "ejected",
            State::Draining => "draining",
        }
    }
}

/// Counters and state shared across snapshots; every field is an atomic so the request
/// path never takes a lock.
#[derive(Debug)]
pub struct BackendStats {
    pub inflight: AtomicU32,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    /// Client requests this backend gave the final answer to, by status (`/metrics`).
    pub codes: crate::metrics::CodeCounts,
    state: AtomicU8,
    /// Nanoseconds since `epoch` until which the backend is ejected; 0 = never was.
    ejected_until: AtomicU64,
    /// Failures in a row (outlier detection); a success resets it.
    pub consecutive_failures: AtomicU32,
    /// Past its failure threshold, kept in rotation by `max_ejected_percent`.
    failing: AtomicBool,
    /// How many ejections the next one counts as (grows on repeats, decays when quiet).
    ejections: AtomicU32,
    /// Peak-EWMA latency estimate in nanoseconds (f64 bits) and when it was last updated
    /// (nanoseconds since `epoch`; 0 = no sample yet).
    peak_ns_bits: AtomicU64,
    peak_stamp: AtomicU64,
    /// When the backend last came back (turned healthy, or was added by a reload), in
    /// nanoseconds since `epoch`; 0 = present from the start. Slow start ramps from here
    /// or from the end of its last ejection, whichever is later.
    warm_from: AtomicU64,
    /// f64 bits of the latency EWMA in milliseconds.
    ewma_ms_bits: AtomicU64,
    /// Why the backend stands where it does, for `/status` (never read by requests).
    pub why: super::why::Reasons,
    /// The instant all the nanosecond fields count from.
    epoch: Instant,
}

impl Default for BackendStats {
    fn default() -> Self {
        BackendStats {
            inflight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            codes: Default::default(),
            state: AtomicU8::new(0),
            ejected_until: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            failing: AtomicBool::new(false),
            ejections: AtomicU32::new(0),
            peak_ns_bits: AtomicU64::new(0f64.to_bits()),
            peak_stamp: AtomicU64::new(0),
            warm_from: AtomicU64::new(0),
            ewma_ms_bits: AtomicU64::new(0f64.to_bits()),
            why: Default::default(),
            epoch: Instant::now(),
        }
    }
}

/// Weight of the EWMA's newest sample; about the last 10 responses dominate.
const EWMA_ALPHA: f64 = 0.1;
/// Time constant of the peak-EWMA estimate. Shorter than tower's 10 s: a backend that
/// was slow and stopped getting traffic (so gets no new samples) should win it back
/// within seconds of recovering, as its old peak decays.
const PEAK_DECAY_SECS: f64 = 2.0;
/// Estimate for a backend with no sample yet: zero, so a new backend gets tried at once
/// (one request gives it a real estimate) instead of losing to any measured one.
const PEAK_DEFAULT_NS: f64 = 0.0;

impl BackendStats {
    fn nanos_since_epoch(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Found unhealthy by active checks, or not yet probed (see `set_pending`).
    pub fn is_unhealthy(&self) -> bool {
        self.state.load(Ordering::Relaxed) & (UNHEALTHY | PENDING) != 0
    }

    /// Waiting for its first probe?
    pub fn is_pending(&self) -> bool {
        self.state.load(Ordering::Relaxed) & PENDING != 0
    }

    /// Holds a backend added at run time out of rotation until the health checker
    /// has probed it (`true`), or ends that wait (`false`).
    pub fn set_pending(&self, on: bool) -> bool {
        self.set_bit(PENDING, on)
    }

    pub fn is_draining(&self) -> bool {
        self.state.load(Ordering::Relaxed) & DRAINING != 0
    }

    pub fn is_ejected(&self, now: Instant) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && self.nanos_since_epoch(now) < until
    }

    /// Marks the backend (un)healthy; returns true when this changed the state. Turning
    /// healthy starts its slow start.
    pub fn set_unhealthy(&self, on: bool) -> bool {
        let changed = self.set_bit(UNHEALTHY, on);
        if changed && !on {
            self.start_warming(Instant::now());
        }
        changed
    }

    /// Starts a slow-start ramp at `now` (a backend that came back or was added).
    pub fn start_warming(&self, now: Instant) {
        let t = self.nanos_since_epoch(now).max(1);
        self.warm_from.store(t, Ordering::Relaxed);
    }

    /// Nanoseconds since `epoch` when the current ramp started, if any.
    fn ramp_start(&self, t: u64) -> Option<u64> {
        let warm = self.warm_from.load(Ordering::Relaxed);
        let ejected = self.ejected_until.load(Ordering::Relaxed);
        let start = if ejected <= t {
            warm.max(ejected)
        } else {
            warm
        };
        (start != 0).then_some(start)
    }

    /// Past its failure threshold but kept in rotation (`/status` `failing`).
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Marks the backend failing or not; returns true when this changed it.
    pub fn set_failing(&self, on: bool) -> bool {
        self.failing.swap(on, Ordering::Relaxed) != on
    }

    /// Starts or ends draining; returns true when this changed the state.
    pub fn set_draining(&self, on: bool) -> bool {
        self.set_bit(DRAINING, on)
    }

    fn set_bit(&self, bit: u8, on: bool) -> bool {
        let old = if on {
            self.state.fetch_or(bit, Ordering::Relaxed)
        } else {
            self.state.fetch_and(!bit, Ordering::Relaxed)
        };
        (old & bit != 0) != on
    }

    /// The ejection fields, to undo an ejection with `restore_ejection`.
    pub fn ejection_state(&self) -> (u64, u32) {
        (
            self.ejected_until.load(Ordering::Relaxed),
            self.ejections.load(Ordering::Relaxed),
        )
    }

    /// Puts back what `ejection_state` read.
    pub fn restore_ejection(&self, (until, ejections): (u64, u32)) {
        self.ejected_until.store(until, Ordering::Relaxed);
        self.ejections.store(ejections, Ordering::Relaxed);
    }

    /// Ejects the backend until `now + for_`.
    pub fn eject(&self, now: Instant, for_: Duration) {
        let until = self.nanos_since_epoch(now + for_).max(1);
        self.ejected_until.store(until, Ordering::Relaxed);
    }

    /// Ejects again for `base` times the number of recent ejections (this one
    /// included), at most `cap`. The count decays by one for every `base` period that
    /// passed since the last ejection ended, so a backend that behaved for a while
    /// starts over at `base` (Envoy's outlier detection grows and decays the same way).
    pub fn eject_growing(&self, now: Instant, base: Duration, cap: Duration) -> Duration {
        let until = self.ejected_until.load(Ordering::Relaxed);
        let prev = self.ejections.load(Ordering::Relaxed);
        let quiet_periods = if until == 0 || base.is_zero() {
            u64::from(prev)
        } else {
            self.nanos_since_epoch(now).saturating_sub(until) / base.as_nanos().max(1) as u64
        };
        let times = prev.saturating_sub(u32::try_from(quiet_periods).unwrap_or(u32::MAX)) + 1;
        self.ejections.store(times, Ordering::Relaxed);
        let d = base.saturating_mul(times).min(cap.max(base));
        self.eject(now, d);
        d
    }

    /// The state `/status` shows: draining, unhealthy, ejected, in that precedence.
    pub fn state(&self, now: Instant) -> State {
        if self.is_draining() {
            State::Draining
        } else if self.is_unhealthy() || self.is_pending() {
            // Waiting for its first probe: out of rotation, as an unhealthy one is.
            State::Unhealthy
        } else if self.is_ejected(now) {
            State::Ejected
        } else {
            State::Healthy
        }
    }

    /// Folds one response latency into the EWMA. Racing updates may lose a sample, which
    /// an average shrugs off; a CAS loop would cost more than the sample is worth.
    pub fn observe_latency(&self, latency: Duration) {
        let sample = latency.as_secs_f64() * 1000.0;
        let old = f64::from_bits(self.ewma_ms_bits.load(Ordering::Relaxed));
        let new = if old == 0.0 {
            sample
        } else {
            old + EWMA_ALPHA * (sample - old)
        };
        self.ewma_ms_bits.store(new.to_bits(), Ordering::Relaxed);
    }

    /// Folds one response latency into the peak-EWMA estimate (Finagle's peak EWMA, as
    /// in tower and Linkerd): a slower sample replaces the estimate at once, a faster one
    /// pulls it down with weight growing with the time since the last sample. Two
    /// atomics updated without a lock; a lost update between racing samples is noise.
    pub fn observe_peak(&self, now: Instant, latency: Duration) {
        let t = self.nanos_since_epoch(now).max(1);
        let rtt = latency.as_nanos() as f64;
        let est = self.peak_estimate(t);
        let new = if rtt > est || self.peak_stamp.load(Ordering::Relaxed) == 0 {
            rtt
        } else {
            let last = self.peak_stamp.load(Ordering::Relaxed);
            let w = (-(t.saturating_sub(last) as f64) / 1e9 / PEAK_DECAY_SECS).exp();
            est * w + rtt * (1.0 - w)
        };
        self.peak_ns_bits.store(new.to_bits(), Ordering::Relaxed);
        self.peak_stamp.store(t, Ordering::Relaxed);
    }

    /// The estimate decayed toward zero for the time since its last sample.
    fn peak_estimate(&self, t: u64) -> f64 {
        let last = self.peak_stamp.load(Ordering::Relaxed);
        if last == 0 {
            return PEAK_DEFAULT_NS;
        }
        let est = f64::from_bits(self.peak_ns_bits.load(Ordering::Relaxed));
        est * (-(t.saturating_sub(last) as f64) / 1e9 / PEAK_DECAY_SECS).exp()
    }

    /// peak_ewma's load: decayed peak latency × (in-flight + 1).
    pub fn peak_cost(&self, now: Instant) -> f64 {
        let t = self.nanos_since_epoch(now);
        self.peak_estimate(t) * f64::from(self.inflight.load(Ordering::Relaxed) + 1)
    }

    pub fn latency_ewma_ms(&self) -> f64 {
        f64::from_bits(self.ewma_ms_bits.load(Ordering::Relaxed))
    }
}

impl Backend {
    pub fn new(url: BackendUrl, weight: u32, backup: bool, stats: Arc<BackendStats>) -> Self {
        let id = url.id();
        // A validated BackendUrl is always a valid authority; the fallback only keeps
        // this constructor total.
        let authority = id
            .parse()
            .unwrap_or_else(|_| http::uri::Authority::from_static("invalid"));
        let host_value = http::HeaderValue::from_str(&id)
            .unwrap_or_else(|_| http::HeaderValue::from_static("invalid"));
        Backend {
            slow_start: Duration::ZERO,
            sticky_id: Box::default(),
            socket_addr: literal_addr(&url.host, url.port),
            slot: 0,
            max_inflight: 0,
            queue: None,
            authority,
            host_value,
            id: id.into_boxed_str(),
            url,
            weight,
            backup,
            stats,
        }
    }

    /// May this backend take a new request now? Combines health, ejection and draining.
    #[inline]
    pub fn available(&self, now: Instant) -> bool {
        let s = &self.stats;
        s.state.load(Ordering::Relaxed) == 0 && !s.is_ejected(now)
    }

    /// The weight strategies should use now, in thousandths of the configured weight
    /// (so a weight-1 backend can ramp too): the full `weight * 1000`, or during slow
    /// start a linear ramp from 1 up to it over `slow_start`.
    #[inline]
    pub fn effective_weight(&self, now: Instant) -> u32 {
        let full = self.weight.saturating_mul(1000);
        if self.slow_start.is_zero() {
            return full;
        }
        let t = self.stats.nanos_since_epoch(now);
        let Some(start) = self.stats.ramp_start(t) else {
            return full;
        };
        let elapsed = t.saturating_sub(start) as u128;
        let span = self.slow_start.as_nanos();
        if elapsed >= span {
            return full;
        }
        ((u128::from(full) * elapsed / span) as u32).max(1)
    }

    pub fn inflight(&self) -> u32 {
        self.stats.inflight.load(Ordering::Relaxed)
    }

    /// Can it take one more request under `max_inflight_per_backend`?
    #[inline]
    pub fn has_room(&self) -> bool {
        self.max_inflight == 0 || self.inflight() < self.max_inflight
    }

    /// Takes a slot of its in-flight count for a request; false when the backend is
    /// full (another request took its last slot since the pick).
    #[inline]
    pub fn take_slot(&self) -> bool {
        let n = &self.stats.inflight;
        if self.max_inflight == 0 {
            n.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        n.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |c| {
            (c < self.max_inflight).then_some(c + 1)
        })
        .is_ok()
    }

    /// Gives back a slot taken by `take_slot`, waking a queued request if any waits.
    #[inline]
    pub fn release_slot(&self) {
        self.stats.inflight.fetch_sub(1, Ordering::AcqRel);
        if let Some(q) = &self.queue {
            q.wake_one();
        }
    }
}

/// The address of a host that is an IP literal (no lookup needed).
pub fn literal_addr(host: &str, port: u16) -> Option<std::net::SocketAddr> {
    host.parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| std::net::SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_peak_is_taken_at_once_and_decays_away() {
        let s = BackendStats::default();
        let now = Instant::now();
        s.observe_peak(now, Duration::from_millis(1));
        s.observe_peak(now, Duration::from_millis(50));
        let peak = s.peak_cost(now);
        assert!((peak - 50e6).abs() < 1.0, "{peak}");
        // Faster samples pull it down gradually, not at once.
        s.observe_peak(now + Duration::from_millis(10), Duration::from_millis(1));
        assert!(s.peak_cost(now + Duration::from_millis(10)) > 40e6);
        // With no samples, it decays below a fast backend's cost within seconds.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(s.peak_cost(Instant::now()) < 1e6);
    }

    fn backend(slow_start_s: u64) -> Backend {
        let url = BackendUrl::parse("10.0.0.1:80").unwrap();
        let mut b = Backend::new(url, 2, false, Arc::default());
        b.slow_start = Duration::from_secs(slow_start_s);
        b
    }

    #[tokio::test(start_paused = true)]
    async fn slow_start_ramps_linearly_after_recovery_and_ejection() {
        let b = backend(10);
        let t0 = Instant::now();
        assert_eq!(
            b.effective_weight(t0),
            2000,
            "present from the start: full weight"
        );
        b.stats.set_unhealthy(true);
        b.stats.set_unhealthy(false);
        assert_eq!(b.effective_weight(t0), 1, "just back: nearly nothing");
        // (A ramp start is stored as at least 1 ns, hence 999.)
        let half = b.effective_weight(t0 + Duration::from_secs(5));
        assert!((999..=1000).contains(&half), "{half}");
        assert_eq!(b.effective_weight(t0 + Duration::from_secs(11)), 2000);
        // After an ejection the ramp starts when the ejection ends.
        let t1 = t0 + Duration::from_secs(20);
        b.stats.eject(t1, Duration::from_secs(4));
        let half = b.effective_weight(t1 + Duration::from_secs(4 + 5));
        assert!((999..=1000).contains(&half), "{half}");
        assert_eq!(backend(0).effective_weight(t1), 2000, "no slow start");
    }

    #[test]
    fn state_precedence_is_draining_unhealthy_ejected() {
        let s = BackendStats::default();
        let now = Instant::now();
        assert_eq!(s.state(now), State::Healthy);
        s.eject(now, Duration::from_secs(5));
        assert_eq!(s.state(now), State::Ejected);
        assert!(s.set_unhealthy(true));
        assert!(!s.set_unhealthy(true));
        assert_eq!(s.state(now), State::Unhealthy);
        s.set_draining(true);
        assert_eq!(s.state(now), State::Draining);
        s.set_draining(false);
        s.set_unhealthy(false);
        assert_eq!(s.state(now + Duration::from_secs(6)), State::Healthy);
    }
}
