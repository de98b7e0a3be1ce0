//! Logs on stdout: one access line per request and event lines, as text or JSON
//! (`--log-format`). Access lines are written straight to stdout from a thread-local
//! buffer, without going through `tracing`, because they are the hot path's only I/O.
//! JSON lines carry `ts`, `client`, `method`, `path`, `status`, `upstream`, `backend`,
//! `duration_ms`, `bytes`, `request_id`, `trace_id`, `attempts`, `tries` (access) or `ts`, `level`, `event`
//! and the event's fields (events).

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Why sluice refused a request or a connection itself (issue #9: every refusal is
/// logged and counted). The label is what `sluice_refused_total{reason}` counts under;
/// the log line shows the label and, for a malformed request, what was wrong with it
/// (`bad_request: duplicate Host`), so the two always agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 400: a request sluice must not pass on; the detail says why.
    BadRequest(&'static str),
    /// 431: the head is over `max_header_bytes` (or has too many lines).
    HeaderTooLarge,
    /// 413: the body is over `max_body_bytes`.
    BodyTooLarge,
    /// 404: no route matches.
    NoRoute,
    /// A request head (or a new connection's first bytes) slower than
    /// `header_read_timeout`: closed without an answer.
    HeaderTimeout,
    /// The TLS handshake failed or timed out.
    TlsHandshake,
    /// 400: plain HTTP sent to a TLS listener.
    PlainHttpOnTls,
    /// 405: `CONNECT`, which a reverse proxy does not tunnel.
    MethodNotAllowed,
    /// 403: the route's access list does not admit the client.
    Acl,
    /// 429: over the route's rate limit.
    RateLimit,
    /// A `proxy_protocol` listener's connection without a valid PROXY header: closed.
    ProxyHeader,
}

impl Refusal {
    /// Every label, in `index` order.
    pub const LABELS: [&'static str; 11] = [
        "bad_request",
        "header_too_large",
        "body_too_large",
        "no_route",
        "header_timeout",
        "tls_handshake",
        "plain_http_on_tls",
        "method_not_allowed",
        "acl",
        "rate_limit",
        "proxy_header",
    ];

    pub fn index(self) -> usize {
        match self {
            Refusal::BadRequest(_) => 0,
            Refusal::HeaderTooLarge => 1,
            Refusal::BodyTooLarge => 2,
            Refusal::NoRoute => 3,
            Refusal::HeaderTimeout => 4,
            Refusal::TlsHandshake => 5,
            Refusal::PlainHttpOnTls => 6,
            Refusal::MethodNotAllowed => 7,
            Refusal::Acl => 8,
            Refusal::RateLimit => 9,
            Refusal::ProxyHeader => 10,
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        Self::LABELS[self.index()]
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::BadRequest(why) => write!(f, "bad_request: {why}"),
            other => f.write_str(other.label()),
        }
    }
}

/// Refusals counted by reason (`sluice_refused_total`).
#[derive(Debug, Default)]
pub struct Refusals([std::sync::atomic::AtomicU64; Refusal::LABELS.len()]);

impl Refusals {
    pub fn add(&self, r: Refusal) {
        self.0[r.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Each label with its count.
    pub fn each(&self, mut f: impl FnMut(&'static str, u64)) {
        for (label, n) in Refusal::LABELS.iter().zip(&self.0) {
            f(label, n.load(Ordering::Relaxed));
        }
    }
}

/// Counts and logs a refusal of a connection on which no request was read (an event
/// line; refused requests get an access line with their reason instead).
pub fn refused_connection(
    counts: &Refusals,
    client: SocketAddr,
    r: Refusal,
    error: Option<&dyn std::fmt::Display>,
) {
    counts.add(r);
    match error {
        Some(e) => tracing::info!(client = %client.ip(), reason = %r, error = %e, "refused"),
        None => tracing::info!(client = %client.ip(), reason = %r, "refused"),
    }
}

static ACCESS_ON: AtomicBool = AtomicBool::new(false);
static FORMAT: AtomicU8 = AtomicU8::new(0);

/// Sets up event logging (level from `SLUICE_LOG`, default info) and the access log.
/// Safe to call more than once (tests); only the first call installs the subscriber.
pub fn init(format: LogFormat, access_log: bool) {
    ACCESS_ON.store(access_log, Ordering::Relaxed);
    FORMAT.store(format as u8, Ordering::Relaxed);
    let level = std::env::var("SLUICE_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stdout)
        .with_ansi(false);
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.event_format(JsonEvents).try_init(),
    };
}

/// Is the access log on? Checked once per request before gathering its fields.
#[inline]
pub fn access_log_enabled() -> bool {
    ACCESS_ON.load(Ordering::Relaxed)
}

/// One request's access-log fields.
#[derive(Debug)]
pub struct AccessRecord {
    pub client: SocketAddr,
    pub method: http::Method,
    pub uri: http::Uri,
    pub status: u16,
    pub bytes: u64,
    pub request_id: Option<http::HeaderValue>,
    /// The W3C trace id (32 hex digits) of the request's trace (SPEC §9).
    pub trace_id: Option<[u8; 32]>,
    pub attempts: u32,
    pub duration_ms: f64,
    /// Set when sluice refused the request itself.
    pub reason: Option<Refusal>,
    /// Attempts that failed (a retry followed, or sluice answered itself): kept only
    /// when one fails, so a request answered at the first try allocates nothing.
    pub failed: Vec<Attempt>,
    /// The attempt whose answer went to the client: its status and milliseconds (its
    /// backend is the line's `backend`).
    pub answered: Option<(u16, f64)>,
}

/// One attempt of a request on a backend, for the JSON access line's `tries`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Attempt {
    pub backend: String,
    /// A status code, or what went wrong in a word (`refused`, `reset`, `timeout`…).
    pub outcome: String,
    pub duration_ms: f64,
}

impl AccessRecord {
    pub fn start(client: SocketAddr, method: &http::Method, uri: &http::Uri) -> AccessRecord {
        AccessRecord {
            client,
            method: method.clone(),
            uri: uri.clone(),
            status: 0,
            bytes: 0,
            request_id: None,
            trace_id: None,
            attempts: 0,
            duration_ms: 0.0,
            reason: None,
            failed: Vec::new(),
            answered: None,
        }
    }
}

/// One access line's fields, as JSON writes them.
#[derive(serde::Serialize)]
struct Line<'a> {
    ts: &'a str,
    #[serde(serialize_with = "ip_of")]
    client: SocketAddr,
    method: &'a str,
    path: &'a str,
    status: u16,
    upstream: &'a str,
    backend: &'a str,
    duration_ms: f64,
    bytes: u64,
    request_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    trace_id: &'a str,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "shown")]
    reason: Option<Refusal>,
    /// Each attempt: its backend, outcome and duration (JSON lines only).
    #[serde(skip_serializing_if = "Tries::is_empty")]
    tries: Tries<'a>,
}

/// The attempts of an access line: those that failed, then the one that answered.
struct Tries<'a> {
    failed: &'a [Attempt],
    answered: Option<(&'a str, u16, f64)>,
}

impl Tries<'_> {
    fn is_empty(&self) -> bool {
        self.failed.is_empty() && self.answered.is_none()
    }
}

impl serde::Serialize for Tries<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(
            self.failed.len() + usize::from(self.answered.is_some()),
        ))?;
        for a in self.failed {
            seq.serialize_element(a)?;
        }
        if let Some((backend, outcome, duration_ms)) = self.answered {
            seq.serialize_element(&Answered {
                backend,
                outcome,
                duration_ms,
            })?;
        }
        seq.end()
    }
}

/// The attempt that answered, written without copying its fields.
#[derive(serde::Serialize)]
struct Answered<'a> {
    backend: &'a str,
    #[serde(serialize_with = "as_text")]
    outcome: u16,
    duration_ms: f64,
}

fn as_text<S: serde::Serializer>(n: &u16, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(n)
}

fn ip_of<S: serde::Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&a.ip())
}

fn shown<S: serde::Serializer>(r: &Option<Refusal>, s: S) -> Result<S::Ok, S::Error> {
    match r {
        Some(r) => s.collect_str(r),
        None => s.serialize_none(),
    }
}

thread_local! {
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Writes `r` as one access-log line; `upstream` and `backend` are "-" when the
/// request never got that far.
pub fn access(r: &AccessRecord, upstream: &str, backend: &str) {
    let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    write_line(&Line {
        ts: &ts,
        client: r.client,
        method: r.method.as_str(),
        path: r.uri.path_and_query().map_or("/", |p| p.as_str()),
        status: r.status,
        upstream,
        backend,
        duration_ms: (r.duration_ms * 1000.0).round() / 1000.0,
        bytes: r.bytes,
        request_id: r
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-"),
        trace_id: r
            .trace_id
            .as_ref()
            .and_then(|t| std::str::from_utf8(t).ok())
            .unwrap_or(""),
        attempts: r.attempts,
        reason: r.reason,
        tries: Tries {
            failed: &r.failed,
            answered: r.answered.map(|(status, ms)| (backend, status, ms)),
        },
    });
}

/// Counts a request refused before its head could be read as a request (too large,
/// malformed) and, when the access log is on, writes its line: method and path "-".
pub fn refused_request(counts: &Refusals, client: SocketAddr, status: u16, r: Refusal) {
    counts.add(r);
    if !access_log_enabled() {
        return;
    }
    let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    write_line(&Line {
        ts: &ts,
        client,
        method: "-",
        path: "-",
        status,
        upstream: "-",
        backend: "-",
        duration_ms: 0.0,
        bytes: 0,
        request_id: "-",
        trace_id: "",
        attempts: 0,
        reason: Some(r),
        tries: Tries {
            failed: &[],
            answered: None,
        },
    });
}

fn write_line(l: &Line<'_>) {
    LINE.with(|line| {
        let mut line = line.borrow_mut();
        line.clear();
        if FORMAT.load(Ordering::Relaxed) == LogFormat::Json as u8 {
            if let Ok(s) = serde_json::to_string(l) {
                line.push_str(&s);
            }
        } else {
            let _ = write!(
                line,
                "{} {} \"{} {}\" {} upstream={} backend={} duration_ms={} bytes={} request_id={} attempts={}",
                l.ts,
                l.client.ip(),
                l.method,
                l.path.escape_debug(),
                l.status,
                l.upstream,
                l.backend,
                l.duration_ms,
                l.bytes,
                l.request_id,
                l.attempts
            );
            if !l.trace_id.is_empty() {
                let _ = write!(line, " trace_id={}", l.trace_id);
            }
            if let Some(reason) = l.reason {
                let _ = write!(line, " reason=\"{reason}\"");
            }
        }
        line.push('\n');
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    });
}

/// Event lines as JSON objects: `ts`, `level`, `event` (the message), then fields.
struct JsonEvents;

impl<S, N> FormatEvent<S, N> for JsonEvents
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut obj = serde_json::Map::new();
        obj.insert(
            "ts".into(),
            humantime::format_rfc3339_millis(SystemTime::now())
                .to_string()
                .into(),
        );
        obj.insert(
            "level".into(),
            event
                .metadata()
                .level()
                .as_str()
                .to_ascii_lowercase()
                .into(),
        );
        let mut v = JsonVisitor(&mut obj);
        event.record(&mut v);
        let s = serde_json::to_string(&obj).map_err(|_| std::fmt::Error)?;
        writeln!(writer, "{s}")
    }
}

struct JsonVisitor<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl JsonVisitor<'_> {
    fn key(field: &Field) -> String {
        match field.name() {
            "message" => "event".to_owned(),
            n => n.to_owned(),
        }
    }
}

impl Visit for JsonVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(Self::key(field), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(Self::key(field), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(Self::key(field), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(Self::key(field), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(Self::key(field), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(Self::key(field), value.into());
    }
}
