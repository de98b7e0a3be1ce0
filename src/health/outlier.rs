//! Passive health (SPEC §2 `[upstream.X.outlier]`, on by default): every finished
//! attempt is an outcome; `consecutive_failures` failures in a row (connect errors,
//! resets, timeouts, 502/503/504 answers) eject a backend for `ejection`, longer on
//! repeats, never more than `max_ejected_percent` of its pool at once. An ejected
//! backend gets traffic again when its time is up, on probation: its first failure
//! ejects it again. Plain functions over the backend's atomics, so tests need no sockets.
//!
//! The cap protects a pool from a wave of bad answers that may be the requests' fault,
//! not the backends' (Envoy's reason for it). A backend that cannot be reached at all
//! (connection refused or timed out, TLS handshake failed) is another matter: keeping
//! it in rotation only adds a failed connect to some requests. Such a backend is
//! ejected past the cap, as long as another backend of its upstream stays in rotation.
//! One the cap keeps in rotation past its threshold is marked `failing` (shown in
//! `/status`) and logged once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::OutlierConfig;
use crate::upstream::Backend;

/// Longest ejection, however often a backend failed (Envoy's default cap).
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

/// What one attempt on a backend says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A bad answer, a reset or a timeout after the request was sent.
    Failure,
    /// No connection: refused, timed out, or the TLS handshake failed.
    Unreachable,
}

/// What recording a failure did to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing changed that is worth a log line.
    Nothing,
    /// Ejected for this long.
    Ejected(Duration),
    /// Past its threshold, but `max_ejected_percent` keeps it in rotation; returned
    /// once per run of failures (the backend is now marked `failing`).
    Kept,
}

impl Outcome {
    /// A response head's status: 502, 503 and 504 count against the backend.
    pub fn of_status(status: u16) -> Outcome {
        if matches!(status, 502..=504) {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }
}

/// Records a success of `b`: ends its run of failures. Runs per request; costs one
/// atomic load when there was no run.
pub fn success(b: &Backend) {
    let s = &b.stats;
    if s.consecutive_failures.load(Ordering::Relaxed) != 0 {
        s.consecutive_failures.store(0, Ordering::Relaxed);
        s.set_failing(false);
    }
}

/// Records `outcome` for `b`, one of `pool`, at `now`, and says what it did.
pub fn record(
    b: &Backend,
    pool: &[Arc<Backend>],
    cfg: &OutlierConfig,
    now: Instant,
    outcome: Outcome,
) -> Verdict {
    if outcome == Outcome::Success {
        success(b);
        return Verdict::Nothing;
    }
    let s = &b.stats;
    let failures = s.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
    if failures < cfg.consecutive_failures || s.is_ejected(now) {
        return Verdict::Nothing;
    }
    let by_cap = room_to_eject(pool, cfg, now);
    let past_cap = !by_cap && outcome == Outcome::Unreachable && another_in_rotation(b, pool, now);
    let room = by_cap || past_cap;
    if !room {
        // The counter stays high, so the next failure asks again.
        return if s.set_failing(true) {
            Verdict::Kept
        } else {
            Verdict::Nothing
        };
    }
    let before = s.ejection_state();
    let d = s.eject_growing(now, cfg.ejection, MAX_EJECTION);
    if past_cap && !another_in_rotation(b, pool, now) {
        // Another backend was ejected at the same moment (another thread): undo this
        // one, so the pool never empties on this path. Both may undo; then both stay.
        s.restore_ejection(before);
        return if s.set_failing(true) {
            Verdict::Kept
        } else {
            Verdict::Nothing
        };
    }
    s.set_failing(false);
    // Probation: one more failure once the ejection ends ejects it again.
    s.consecutive_failures.store(
        cfg.consecutive_failures.saturating_sub(1),
        Ordering::Relaxed,
    );
    Verdict::Ejected(d)
}

/// Is a backend of `pool` other than `b` in rotation at `now`?
fn another_in_rotation(b: &Backend, pool: &[Arc<Backend>], now: Instant) -> bool {
    pool.iter()
        .any(|p| !std::ptr::eq(&**p, b) && p.available(now))
}

/// May one more backend of `pool` be out of rotation at `now`, under
/// `max_ejected_percent`?
fn room_to_eject(pool: &[Arc<Backend>], cfg: &OutlierConfig, now: Instant) -> bool {
    let ejected = pool.iter().filter(|p| p.stats.is_ejected(now)).count();
    (ejected + 1) * 100 <= cfg.max_ejected_percent as usize * pool.len()
}

/// Notes why `b` was just ejected for `d` (`record` said `Ejected`), for `/status`:
/// `cause` is what its last failure was.
pub fn note_ejection(b: &Backend, cfg: &OutlierConfig, d: Duration, cause: &str) {
    let times = b.stats.ejection_state().1;
    b.stats.why.ejected(d, times, |until| {
        if times > 1 {
            format!(
                "ejected again ({times} times recently) after a failure on probation ({cause}) until {until}"
            )
        } else {
            format!(
                "ejected after {} consecutive failures ({cause}) until {until}",
                cfg.consecutive_failures
            )
        }
    });
}

/// Takes `b` out of rotation for `d` because it asked (`retry_after`) in an answer of
/// `status`, under the same `max_ejected_percent` cap as ejections: a pool whose
/// backends all ask for a pause keeps serving from some. True if `b` is now out.
pub fn pause(
    b: &Backend,
    pool: &[Arc<Backend>],
    cfg: &OutlierConfig,
    now: Instant,
    d: Duration,
    status: u16,
) -> bool {
    if !b.stats.is_ejected(now) && !room_to_eject(pool, cfg, now) {
        return false;
    }
    b.stats.eject(now, d);
    b.stats.why.ejected(d, 0, |until| {
        format!("asked for a pause: answered {status} with Retry-After; out until {until}")
    });
    true
}

/// How long a backend asked to be left alone: `Retry-After` on a 503 or 429, as
/// delta-seconds or an HTTP-date, at most `MAX_EJECTION`. None for other answers, no
/// header, or a time already past. `now` is read only for an HTTP-date.
pub fn retry_after(
    status: u16,
    headers: &http::HeaderMap,
    now: impl FnOnce() -> std::time::SystemTime,
) -> Option<Duration> {
    if status != 503 && status != 429 {
        return None;
    }
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let d = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(v)
            .ok()?
            .duration_since(now())
            .ok()?,
    };
    (!d.is_zero()).then(|| d.min(MAX_EJECTION))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendUrl;

    fn pool(n: usize) -> Vec<Arc<Backend>> {
        (0..n)
            .map(|i| {
                let url = BackendUrl::parse(&format!("10.0.0.{i}:80")).unwrap();
                Arc::new(Backend::new(url, 1, false, Arc::default()))
            })
            .collect()
    }

    fn cfg(failures: u32, ejection_s: u64, max_pct: u32) -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: failures,
            ejection: Duration::from_secs(ejection_s),
            max_ejected_percent: max_pct,
        }
    }

    fn fail(p: &[Arc<Backend>], i: usize, c: &OutlierConfig, now: Instant) -> Option<Duration> {
        match record(&p[i], p, c, now, Outcome::Failure) {
            Verdict::Ejected(d) => Some(d),
            _ => None,
        }
    }

    fn refuse(p: &[Arc<Backend>], i: usize, c: &OutlierConfig, now: Instant) -> Verdict {
        record(&p[i], p, c, now, Outcome::Unreachable)
    }

    #[test]
    fn only_consecutive_failures_eject() {
        let p = pool(3);
        let c = cfg(3, 10, 50);
        let now = Instant::now();
        assert_eq!(fail(&p, 0, &c, now), None);
        assert_eq!(fail(&p, 0, &c, now), None);
        assert_eq!(
            record(&p[0], &p, &c, now, Outcome::Success),
            Verdict::Nothing
        );
        assert_eq!(fail(&p, 0, &c, now), None);
        assert_eq!(fail(&p, 0, &c, now), None);
        assert_eq!(fail(&p, 0, &c, now), Some(Duration::from_secs(10)));
        assert!(!p[0].available(now));
        assert!(p[0].available(now + Duration::from_secs(10)));
    }

    #[test]
    fn a_returning_backend_is_on_probation_and_repeats_eject_longer() {
        let p = pool(3);
        let c = cfg(5, 10, 50);
        let mut now = Instant::now();
        for _ in 0..4 {
            fail(&p, 0, &c, now);
        }
        assert_eq!(fail(&p, 0, &c, now), Some(Duration::from_secs(10)));
        now += Duration::from_secs(10);
        assert_eq!(
            fail(&p, 0, &c, now),
            Some(Duration::from_secs(20)),
            "first failure back"
        );
        now += Duration::from_secs(20);
        assert_eq!(fail(&p, 0, &c, now), Some(Duration::from_secs(30)));
        // Quiet for three ejection periods after that: back to the base time.
        now += Duration::from_secs(30 + 30);
        record(&p[0], &p, &c, now, Outcome::Success);
        for _ in 0..4 {
            assert_eq!(fail(&p, 0, &c, now), None);
        }
        assert_eq!(fail(&p, 0, &c, now), Some(Duration::from_secs(10)));
    }

    #[test]
    fn never_more_than_max_ejected_percent() {
        let p = pool(4);
        let c = cfg(1, 10, 50);
        let now = Instant::now();
        assert!(fail(&p, 0, &c, now).is_some());
        assert!(fail(&p, 1, &c, now).is_some());
        assert_eq!(fail(&p, 2, &c, now), None, "half of 4 already out");
        // Once one returns, the next failure of the capped backend ejects it.
        let later = now + Duration::from_secs(10);
        assert!(fail(&p, 2, &c, later).is_some());
    }

    #[test]
    fn a_backend_the_cap_keeps_is_failing_once_until_it_succeeds() {
        let p = pool(2);
        let c = cfg(2, 10, 40);
        let now = Instant::now();
        assert!(fail(&p, 0, &c, now).is_none());
        assert!(fail(&p, 0, &c, now).is_none(), "1 of 2 is over 40%");
        assert!(p[0].stats.is_failing());
        assert_eq!(
            record(&p[0], &p, &c, now, Outcome::Failure),
            Verdict::Nothing
        );
        assert!(p[0].stats.is_failing(), "still failing, said once");
        record(&p[0], &p, &c, now, Outcome::Success);
        assert!(!p[0].stats.is_failing());
        assert!(fail(&p, 0, &c, now).is_none());
        assert_eq!(
            record(&p[0], &p, &c, now, Outcome::Failure),
            Verdict::Kept,
            "a new run is said again"
        );
    }

    #[test]
    fn unreachable_backends_are_ejected_past_the_cap_but_not_the_last() {
        let p = pool(3);
        let c = cfg(2, 10, 50);
        let now = Instant::now();
        let ejected = |v: Verdict| matches!(v, Verdict::Ejected(_));
        refuse(&p, 0, &c, now);
        assert!(ejected(refuse(&p, 0, &c, now)));
        refuse(&p, 1, &c, now);
        assert!(
            ejected(refuse(&p, 1, &c, now)),
            "2 of 3 out: past 50%, but 2 is in rotation"
        );
        refuse(&p, 2, &c, now);
        assert_eq!(refuse(&p, 2, &c, now), Verdict::Kept, "the last one stays");
        assert!(p[2].available(now) && p[2].stats.is_failing());
        // Bad answers keep to the cap.
        let q = pool(3);
        fail(&q, 0, &c, now);
        assert!(fail(&q, 0, &c, now).is_some());
        fail(&q, 1, &c, now);
        assert!(fail(&q, 1, &c, now).is_none());
    }

    #[test]
    fn growth_is_capped() {
        let p = pool(1);
        let c = cfg(1, 200, 100);
        let mut now = Instant::now();
        assert_eq!(fail(&p, 0, &c, now), Some(Duration::from_secs(200)));
        now += Duration::from_secs(200);
        assert_eq!(fail(&p, 0, &c, now), Some(MAX_EJECTION));
    }

    #[test]
    fn retry_after_is_read_from_503_and_429_only() {
        let at = std::time::SystemTime::now();
        let now = || at;
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("7"),
        );
        assert_eq!(retry_after(503, &h, now), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(429, &h, now), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(500, &h, now), None);
        let later = httpdate::fmt_http_date(at + Duration::from_secs(120));
        h.insert(http::header::RETRY_AFTER, later.parse().unwrap());
        let d = retry_after(503, &h, now).unwrap();
        assert!(
            d > Duration::from_secs(118) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        h.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("999999"),
        );
        assert_eq!(retry_after(503, &h, now), Some(MAX_EJECTION));
        h.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("soon"),
        );
        assert_eq!(retry_after(503, &h, now), None);
    }

    #[test]
    fn statuses_502_to_504_are_failures() {
        assert_eq!(Outcome::of_status(502), Outcome::Failure);
        assert_eq!(Outcome::of_status(504), Outcome::Failure);
        assert_eq!(Outcome::of_status(500), Outcome::Success);
        assert_eq!(Outcome::of_status(404), Outcome::Success);
    }
}
