//! Decision traces (SPEC §9): why one request went where it went. A request from a
//! client in `[admin] debug_from` that carries `X-Sluice-Debug: 1` gets a `Trace`,
//! which the request's handling fills as it decides: the route, the upstream and its
//! strategy, the candidates with the numbers the strategy reads, the pick, and every
//! attempt with its outcome and why it was retried. The trace goes back to the client
//! as one `X-Sluice-Trace` header line and is kept, with the request's end, in a
//! bounded ring that `GET /debug/requests` reads. Any other request has no trace and
//! pays one branch where one would be written.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The most traces kept for `GET /debug/requests`.
pub const KEPT: usize = 1000;

/// The response header a trace travels in.
pub const HEADER: &str = "x-sluice-trace";
/// The request header that asks for one.
pub const ASK: &str = "x-sluice-debug";

/// One request's decisions, in the order they were made.
#[derive(Debug)]
pub struct Trace {
    ring: Arc<Ring>,
    at: SystemTime,
    method: String,
    path: String,
    /// `key=value` pairs, in order; a key may repeat (`retry`).
    fields: Vec<(Cow<'static, str>, String)>,
    attempts: u32,
}

impl Trace {
    /// A trace for a request of `method` to `path`, kept in `ring` when it ends.
    pub fn new(ring: Arc<Ring>, method: &str, path: &str) -> Trace {
        Trace {
            ring,
            at: SystemTime::now(),
            method: method.to_owned(),
            path: path.to_owned(),
            fields: Vec::with_capacity(8),
            attempts: 0,
        }
    }

    /// Adds a field. Values are cleaned of what would break the header line.
    pub fn note(&mut self, key: &'static str, value: impl std::fmt::Display) {
        self.push(Cow::Borrowed(key), value);
    }

    fn push(&mut self, key: Cow<'static, str>, value: impl std::fmt::Display) {
        let mut v = String::new();
        let _ = write!(v, "{value}");
        v.retain(|c| c != ';' && !c.is_control());
        self.fields.push((key, v.trim().to_owned()));
    }

    /// The next attempt, on backend `id`, ended with `outcome` (a status code,
    /// `refused`, `reset`, `timeout`…): `attemptN=id:outcome`.
    pub fn attempt(&mut self, id: &str, outcome: impl std::fmt::Display) {
        self.attempts += 1;
        let key = format!("attempt{}", self.attempts);
        self.push(Cow::Owned(key), format_args!("{id}:{outcome}"));
    }

    /// The `X-Sluice-Trace` value: `key=value` fields joined by `; `.
    pub fn header_value(&self) -> String {
        let mut out = String::with_capacity(128);
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push_str("; ");
            }
            let _ = write!(out, "{k}={v}");
        }
        out
    }

    /// The request is over, answered with `status` after `duration_ms`: the trace goes
    /// into its ring.
    pub fn finish(self, status: u16, duration_ms: f64) {
        let ring = Arc::clone(&self.ring);
        ring.push(Kept {
            trace: self,
            status,
            duration_ms,
        });
    }
}

/// A finished trace, as `GET /debug/requests` shows it.
#[derive(Debug)]
struct Kept {
    trace: Trace,
    status: u16,
    duration_ms: f64,
}

impl Kept {
    /// The trace's fields, plus `ts`, `method`, `path`, `status` and `duration_ms`. A
    /// repeated key (`retry`) holds its values in order, joined by `,`.
    fn to_json(&self) -> serde_json::Value {
        let t = &self.trace;
        let mut o = serde_json::Map::new();
        o.insert(
            "ts".into(),
            humantime::format_rfc3339_millis(t.at).to_string().into(),
        );
        o.insert("method".into(), t.method.clone().into());
        o.insert("path".into(), t.path.clone().into());
        o.insert("status".into(), self.status.into());
        let ms = (self.duration_ms * 1000.0).round() / 1000.0;
        o.insert("duration_ms".into(), ms.into());
        for (k, v) in &t.fields {
            match o.get_mut(k.as_ref()) {
                Some(serde_json::Value::String(s)) => {
                    s.push(',');
                    s.push_str(v);
                }
                _ => {
                    o.insert(k.to_string(), v.clone().into());
                }
            }
        }
        serde_json::Value::Object(o)
    }
}

/// The last `KEPT` traces, newest last. Locked only by traced requests as they end and
/// by the admin API as it reads.
#[derive(Debug, Default)]
pub struct Ring(Mutex<VecDeque<Kept>>);

impl Ring {
    fn push(&self, k: Kept) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == KEPT {
            q.pop_front();
        }
        q.push_back(k);
    }

    /// The last `limit` traces, oldest first, as a JSON array.
    pub fn last_json(&self, limit: usize) -> String {
        let q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let skip = q.len().saturating_sub(limit);
        let list: Vec<serde_json::Value> = q.iter().skip(skip).map(Kept::to_json).collect();
        drop(q);
        serde_json::Value::Array(list).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ring: &Arc<Ring>) -> Trace {
        let mut t = Trace::new(Arc::clone(ring), "GET", "/api/x");
        t.note("route", "api.example.com/api");
        t.note("upstream", "api");
        t.note("strategy", "least_conn");
        t.note("candidates", "10.0.0.1:80:0,10.0.0.2:80:3");
        t.note("picked", "10.0.0.1:80");
        t.attempt("10.0.0.1:80", "refused");
        t.note("retry", "connect_failure");
        t.attempt("10.0.0.2:80", 200);
        t
    }

    #[test]
    fn the_header_is_one_line_of_fields() {
        let ring = Arc::new(Ring::default());
        assert_eq!(
            sample(&ring).header_value(),
            "route=api.example.com/api; upstream=api; strategy=least_conn; \
             candidates=10.0.0.1:80:0,10.0.0.2:80:3; picked=10.0.0.1:80; \
             attempt1=10.0.0.1:80:refused; retry=connect_failure; attempt2=10.0.0.2:80:200"
        );
    }

    #[test]
    fn values_cannot_break_the_line() {
        let ring = Arc::new(Ring::default());
        let mut t = Trace::new(ring, "GET", "/");
        t.note("route", " a;b\r\nc ");
        assert_eq!(t.header_value(), "route=abc");
    }

    #[test]
    fn the_ring_keeps_the_last_thousand_with_the_request() {
        let ring = Arc::new(Ring::default());
        for i in 0..KEPT + 5 {
            let mut t = Trace::new(Arc::clone(&ring), "GET", &format!("/{i}"));
            t.note("retry", "reset");
            t.note("retry", "timeout");
            t.finish(200, 1.23456);
        }
        let all: Vec<serde_json::Value> = serde_json::from_str(&ring.last_json(5000)).unwrap();
        assert_eq!(all.len(), KEPT);
        assert_eq!(all[0]["path"], "/5");
        let last: Vec<serde_json::Value> = serde_json::from_str(&ring.last_json(2)).unwrap();
        assert_eq!(last.len(), 2);
        assert_eq!(last[1]["path"], format!("/{}", KEPT + 4));
        assert_eq!(last[1]["status"], 200);
        assert_eq!(last[1]["duration_ms"], 1.235);
        assert_eq!(last[1]["retry"], "reset,timeout");
        assert_eq!(last[1]["method"], "GET");
        assert!(humantime::parse_rfc3339(last[1]["ts"].as_str().unwrap()).is_ok());
    }
}
