//! Logs on stdout: one access line per request and event lines, as text or JSON
//! (`--log-format`). Access lines are written straight to stdout from a thread-local
//! buffer, without going through `tracing`, because they are the hot path's only I/O.
//! JSON lines carry `ts`, `client`, `method`, `path`, `status`, `upstream`, `backend`,
//! `duration_ms`, `bytes`, `request_id`, `attempts` (access) or `ts`, `level`, `event`
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
    pub attempts: u32,
    pub duration_ms: f64,
}

#[derive(serde::Serialize)]
struct AccessJson<'a> {
    ts: &'a str,
    client: String,
    method: &'a str,
    path: &'a str,
    status: u16,
    upstream: &'a str,
    backend: &'a str,
    duration_ms: f64,
    bytes: u64,
    request_id: &'a str,
    attempts: u32,
}

thread_local! {
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Writes `r` as one access-log line; `upstream` and `backend` are "-" when the
/// request never got that far.
pub fn access(r: &AccessRecord, upstream: &str, backend: &str) {
    let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let path = r.uri.path_and_query().map_or("/", |p| p.as_str());
    let request_id = r
        .request_id
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let duration_ms = (r.duration_ms * 1000.0).round() / 1000.0;
    LINE.with(|line| {
        let mut line = line.borrow_mut();
        line.clear();
        if FORMAT.load(Ordering::Relaxed) == LogFormat::Json as u8 {
            let j = AccessJson {
                ts: &ts,
                client: r.client.ip().to_string(),
                method: r.method.as_str(),
                path,
                status: r.status,
                upstream,
                backend,
                duration_ms,
                bytes: r.bytes,
                request_id,
                attempts: r.attempts,
            };
            if let Ok(s) = serde_json::to_string(&j) {
                line.push_str(&s);
            }
        } else {
            let _ = write!(
                line,
                "{ts} {} \"{} {}\" {} upstream={upstream} backend={backend} duration_ms={duration_ms} bytes={} request_id={request_id} attempts={}",
                r.client.ip(),
                r.method,
                path.escape_debug(),
                r.status,
                r.bytes,
                r.attempts
            );
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
