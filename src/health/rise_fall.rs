//! Hysteresis for active health checks: a backend turns unhealthy after `fall`
//! consecutive failed probes and healthy again after `rise` consecutive passes
//! (HAProxy's rise/fall). Pure state, so it is tested without sockets or time.

/// One backend's probe history, as far as the verdict needs it.
#[derive(Debug, Clone)]
pub struct RiseFall {
    rise: u32,
    fall: u32,
    healthy: bool,
    /// Consecutive results against the current verdict.
    streak: u32,
}

impl RiseFall {
    /// Starts from `healthy` (backends start healthy; a reload keeps what was known).
    pub fn new(rise: u32, fall: u32, healthy: bool) -> RiseFall {
        RiseFall {
            rise: rise.max(1),
            fall: fall.max(1),
            healthy,
            streak: 0,
        }
    }

    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Where the backend stands between verdicts, in words: "1 of 3 failed checks to
    /// fall" while a healthy one fails, "1 of 2 passed checks to rise" while an
    /// unhealthy one passes; empty when the last probe agreed with the verdict.
    pub fn progress(&self) -> String {
        match (self.streak, self.healthy) {
            (0, _) => String::new(),
            (n, true) => format!("{n} of {} failed checks to fall", self.fall),
            (n, false) => format!("{n} of {} passed checks to rise", self.rise),
        }
    }

    /// How many failed probes in a row turn a healthy backend unhealthy.
    pub fn fall(&self) -> u32 {
        self.fall
    }

    /// Records one probe; returns the new verdict when it changed.
    pub fn record(&mut self, passed: bool) -> Option<bool> {
        if passed == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.healthy { self.fall } else { self.rise };
        if self.streak >= needed {
            self.healthy = passed;
            self.streak = 0;
            Some(passed)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_after_fall_consecutive_failures_only() {
        let mut rf = RiseFall::new(2, 3, true);
        assert_eq!(rf.record(false), None);
        assert_eq!(rf.record(false), None);
        assert_eq!(rf.record(true), None, "a pass resets the streak");
        assert_eq!(rf.record(false), None);
        assert_eq!(rf.record(false), None);
        assert_eq!(rf.record(false), Some(false));
        assert!(!rf.healthy());
        assert_eq!(rf.record(false), None);
    }

    #[test]
    fn rises_after_rise_consecutive_passes() {
        let mut rf = RiseFall::new(2, 3, false);
        assert_eq!(rf.record(true), None);
        assert_eq!(rf.record(false), None);
        assert_eq!(rf.record(true), None);
        assert_eq!(rf.record(true), Some(true));
        assert!(rf.healthy());
    }

    #[test]
    fn progress_is_told_between_verdicts() {
        let mut rf = RiseFall::new(2, 3, true);
        assert_eq!(rf.progress(), "");
        rf.record(false);
        assert_eq!(rf.progress(), "1 of 3 failed checks to fall");
        rf.record(false);
        rf.record(false);
        assert_eq!(rf.progress(), "", "fallen: nothing in between");
        rf.record(true);
        assert_eq!(rf.progress(), "1 of 2 passed checks to rise");
    }

    #[test]
    fn rise_and_fall_of_one_flip_at_once() {
        let mut rf = RiseFall::new(1, 1, true);
        assert_eq!(rf.record(false), Some(false));
        assert_eq!(rf.record(true), Some(true));
    }
}
