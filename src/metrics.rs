//! Counters behind `GET /metrics` (SPEC §5) and their Prometheus text rendering.
//!
//! Every number is an atomic bumped on the request path without a lock: one add to a
//! status-code counter, one to a latency bucket and one to the latency sum per request.
//! Like `BackendStats`, an upstream's `UpstreamStats` is carried from snapshot to
//! snapshot by name, so a reload or an admin edit does not reset a counter.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Status codes a counter table covers: every code HTTP can carry (100–999).
const FIRST_CODE: u16 = 100;
const CODES: usize = 900;

/// The code counted for a request whose client left before an answer was chosen
/// (nginx's "client closed request").
pub const CLIENT_CLOSED: u16 = 499;

/// Requests by status code. The table is allocated on the first count, so a backend
/// that never answers costs nothing.
#[derive(Debug, Default)]
pub struct CodeCounts(OnceLock<Box<[AtomicU64]>>);

impl CodeCounts {
    #[inline]
    pub fn add(&self, code: u16) {
        let table = self
            .0
            .get_or_init(|| (0..CODES).map(|_| AtomicU64::new(0)).collect());
        let i = usize::from(code.clamp(FIRST_CODE, FIRST_CODE + CODES as u16 - 1) - FIRST_CODE);
        if let Some(c) = table.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Each code counted at least once, in code order.
    pub fn each(&self, mut f: impl FnMut(u16, u64)) {
        let Some(table) = self.0.get() else { return };
        for (i, c) in table.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            if n > 0 {
                f(FIRST_CODE + i as u16, n);
            }
        }
    }

    /// Answers by status class: 1xx, 2xx, 3xx, 4xx, 5xx (a client that left, 499,
    /// counts as 4xx).
    pub fn classes(&self) -> [u64; 5] {
        let mut out = [0u64; 5];
        self.each(|code, n| {
            let class = usize::from(code / 100).clamp(1, 5) - 1;
            out[class] += n;
        });
        out
    }

    #[cfg(test)]
    pub fn get(&self, code: u16) -> u64 {
        let mut n = 0;
        self.each(|c, v| {
            if c == code {
                n = v;
            }
        });
        n
    }
}

/// Upper bounds of the latency buckets in nanoseconds, and as Prometheus writes them
/// (`le`, seconds). Finer than the client libraries' defaults below 5 ms, where a
/// proxy's answers mostly fall.
const BOUNDS_NS: [u64; 16] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
];
const BOUNDS_LE: [&str; 17] = [
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1",
    "2.5", "5", "10", "30", "60", "+Inf",
];

/// A latency histogram: a count per bucket (not cumulative; summed when rendered) and
/// the sum of all observations.
#[derive(Debug)]
pub struct Histogram {
    /// One per bound, and the last for +Inf.
    buckets: [AtomicU64; 17],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    #[inline]
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NS.partition_point(|&b| b < ns);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Cumulative counts per bound (the last is +Inf, the total), and the sum in seconds.
    pub fn read(&self) -> ([u64; 17], f64) {
        let mut out = [0u64; 17];
        let mut total = 0;
        for (o, b) in out.iter_mut().zip(&self.buckets) {
            total += b.load(Ordering::Relaxed);
            *o = total;
        }
        (out, self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9)
    }
}

/// The `q` quantile (0..1), in seconds, of the observations whose cumulative bucket
/// counts are `cumulative` (as `Histogram::read` gives them, or a difference of two
/// readings): interpolated within its bucket. None without observations.
pub fn quantile(cumulative: &[u64; 17], q: f64) -> Option<f64> {
    let total = cumulative[16];
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).max(1.0);
    let i = cumulative.iter().position(|&c| c as f64 >= rank)?;
    let below = if i == 0 { 0 } else { cumulative[i - 1] };
    let lower = if i == 0 { 0 } else { BOUNDS_NS[i - 1] };
    let upper = BOUNDS_NS.get(i).copied().unwrap_or(BOUNDS_NS[15]);
    let inside = (cumulative[i] - below) as f64;
    let part = if inside > 0.0 {
        (rank - below as f64) / inside
    } else {
        1.0
    };
    Some((lower as f64 + part * (upper - lower) as f64) / 1e9)
}

/// An upstream's numbers that outlive its snapshots.
#[derive(Debug)]
pub struct UpstreamStats {
    pub name: std::sync::Arc<str>,
    /// Time from a request's arrival to the end of its response.
    pub duration: Histogram,
    /// Retries the policy allowed (SPEC §2 `[upstream.X.retry]`).
    pub retries: AtomicU64,
    /// Requests the upstream answered without any backend (no healthy backend).
    pub unpicked: CodeCounts,
    /// Requests its routes' access lists refused (`sluice_denied_total`).
    pub denied_acl: AtomicU64,
    /// Requests its routes' rate limits refused.
    pub denied_rate: AtomicU64,
    /// Requests a shared rate limit judged with this instance's buckets because its
    /// store (Redis) did not answer.
    pub shared_rate_fallbacks: AtomicU64,
}

impl UpstreamStats {
    pub fn new(name: &str) -> UpstreamStats {
        UpstreamStats {
            name: name.into(),
            duration: Histogram::default(),
            retries: AtomicU64::new(0),
            unpicked: CodeCounts::default(),
            denied_acl: AtomicU64::new(0),
            denied_rate: AtomicU64::new(0),
            shared_rate_fallbacks: AtomicU64::new(0),
        }
    }
}

/// A Prometheus text-format document being written.
pub struct Text(String);

impl Default for Text {
    fn default() -> Self {
        Text(String::with_capacity(4096))
    }
}

impl Text {
    /// `# HELP` and `# TYPE` lines of a metric family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample: `name{k="v",...} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                self.0.push_str(k);
                self.0.push_str("=\"");
                escape_into(&mut self.0, v);
                self.0.push('"');
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A histogram's `_bucket`, `_sum` and `_count` samples.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let (cumulative, sum) = h.read();
        let bucket = format!("{name}_bucket");
        let mut with_le: Vec<(&str, &str)> = labels.to_vec();
        for (n, le) in cumulative.iter().zip(BOUNDS_LE) {
            with_le.push(("le", le));
            self.sample(&bucket, &with_le, n);
            with_le.pop();
        }
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, cumulative[16]);
    }

    pub fn finish(self) -> String {
        self.0
    }
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn escape_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let h = super::Histogram::default();
        assert_eq!(super::quantile(&h.read().0, 0.5), None);
        // 90 answers under 0.5 ms, 10 between 5 and 10 ms.
        for _ in 0..90 {
            h.observe(std::time::Duration::from_micros(200));
        }
        for _ in 0..10 {
            h.observe(std::time::Duration::from_millis(7));
        }
        let (c, _) = h.read();
        let p50 = super::quantile(&c, 0.5).unwrap();
        assert!(p50 > 0.0 && p50 <= 0.0005, "{p50}");
        let p99 = super::quantile(&c, 0.99).unwrap();
        assert!(p99 > 0.005 && p99 <= 0.010, "{p99}");
        let codes = super::CodeCounts::default();
        for code in [200, 201, 304, 404, 499, 502, 503] {
            codes.add(code);
        }
        assert_eq!(codes.classes(), [0, 2, 1, 2, 2]);
    }

    use super::*;

    #[test]
    fn codes_are_counted_by_value_and_out_of_range_ones_clamped() {
        let c = CodeCounts::default();
        let mut seen = Vec::new();
        c.each(|code, n| seen.push((code, n)));
        assert!(seen.is_empty(), "nothing counted, nothing listed");
        c.add(200);
        c.add(200);
        c.add(503);
        c.add(999);
        c.add(7);
        c.each(|code, n| seen.push((code, n)));
        assert_eq!(seen, vec![(100, 1), (200, 2), (503, 1), (999, 1)]);
    }

    #[test]
    fn a_histogram_puts_each_duration_in_the_first_bucket_that_holds_it() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500)); // exactly on le=0.0005
        h.observe(Duration::from_micros(501)); // le=0.001
        h.observe(Duration::from_secs(61)); // +Inf only
        let (cum, sum) = h.read();
        assert_eq!(cum[0], 1);
        assert_eq!(cum[1], 2);
        assert_eq!(cum[15], 2);
        assert_eq!(cum[16], 3);
        assert!((sum - 61.001001).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn text_escapes_label_values_and_writes_cumulative_buckets() {
        let mut t = Text::default();
        t.family("x_total", "counter", "Things.");
        t.sample("x_total", &[("a", "q\"b\\c\nd")], 3);
        let h = Histogram::default();
        h.observe(Duration::from_millis(2));
        t.histogram("lat_seconds", &[("upstream", "web")], &h);
        let s = t.finish();
        assert!(s.starts_with("# HELP x_total Things.\n# TYPE x_total counter\n"));
        assert!(s.contains("x_total{a=\"q\\\"b\\\\c\\nd\"} 3\n"), "{s}");
        assert!(
            s.contains("lat_seconds_bucket{upstream=\"web\",le=\"0.001\"} 0\n"),
            "{s}"
        );
        assert!(
            s.contains("lat_seconds_bucket{upstream=\"web\",le=\"0.0025\"} 1\n"),
            "{s}"
        );
        assert!(
            s.contains("lat_seconds_bucket{upstream=\"web\",le=\"+Inf\"} 1\n"),
            "{s}"
        );
        assert!(
            s.contains("lat_seconds_sum{upstream=\"web\"} 0.002\n"),
            "{s}"
        );
        assert!(s.contains("lat_seconds_count{upstream=\"web\"} 1\n"), "{s}");
    }
}
