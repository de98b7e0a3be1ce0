//! Why a backend stands where it does (SPEC §9: `reason` in `/status`). Each thing that
//! can take a backend out of rotation leaves its last word here where it acts: the
//! prober after every probe, outlier detection when it ejects, a `Retry-After` pause,
//! the admin API, discovery and reloads when they drain. A request that goes well
//! never writes here; one that fails writes only when it ejects its backend.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Something that happened to a backend: when, and in a plain sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub since: SystemTime,
    pub why: String,
}

/// The last active probe of a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub at: SystemTime,
    pub ok: bool,
    /// What it found: `GET /healthz answered 200`, `connect: connection refused`…
    pub detail: String,
    /// Where the backend stands between rise and fall: "2 of 3 failed checks to fall".
    /// Empty when the last probe agreed with its state.
    pub progress: String,
}

/// An ejection in force: outlier detection or a pause the backend asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ejection {
    pub since: SystemTime,
    pub until: SystemTime,
    pub why: String,
    /// How many ejections in a row this one counts as (they grow longer on repeats).
    pub times: u32,
}

/// The last word of each thing that decides a backend's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Why {
    pub check: Option<Check>,
    /// Active checks found it unhealthy (or it waits for its first probe).
    pub unhealthy: Option<Note>,
    pub ejected: Option<Ejection>,
    /// Who drained it.
    pub drained: Option<Note>,
}

/// A backend's `Why`, shared like its other stats. A lock that is held only to copy
/// or change a few strings, never across an await, and never by a request that
/// succeeds.
#[derive(Debug, Default)]
pub struct Reasons(Mutex<Why>);

impl Reasons {
    pub fn get(&self) -> Why {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut Why)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Notes a drain (`by` says who and why), or its end.
    pub fn drained(&self, by: Option<&str>) {
        self.update(|w| {
            w.drained = by.map(|by| Note {
                since: SystemTime::now(),
                why: by.to_owned(),
            });
        });
    }

    /// Notes an ejection of `d` that starts now; `why` words it, given its end as a
    /// time of day (`12:00:31`).
    pub fn ejected(&self, d: Duration, times: u32, why: impl FnOnce(&str) -> String) {
        let since = SystemTime::now();
        let until = since + d;
        let why = why(&clock(until));
        self.update(|w| {
            w.ejected = Some(Ejection {
                since,
                until,
                why,
                times,
            });
        });
    }
}

/// A time as `/status` shows it: RFC 3339 in UTC, to the millisecond.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A time of day for a sentence: `12:00:31` (UTC).
pub fn clock(t: SystemTime) -> String {
    let s = humantime::format_rfc3339_seconds(t).to_string();
    // 2026-12-05T12:00:31Z
    s.get(11..19).map_or(s.clone(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_rfc3339_and_as_a_clock() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_780_000_031_250);
        assert_eq!(rfc3339(t), "2026-05-28T20:27:11.250Z");
        assert_eq!(clock(t), "20:27:11");
    }

    #[test]
    fn a_drain_is_noted_and_undone() {
        let r = Reasons::default();
        r.drained(Some("drained through the admin API"));
        assert_eq!(
            r.get().drained.map(|n| n.why).as_deref(),
            Some("drained through the admin API")
        );
        r.drained(None);
        assert_eq!(r.get(), Why::default());
    }
}
