//! Tests of `parse`: the SPEC §2 example, defaults, and golden `FILE:LINE:COL: message`
//! lines. Line and column numbers in the golden tests were counted by hand.

use super::*;
use crate::config::{
    BackendConfig, BackendUrl, HashKey, HealthConfig, HostHeader, HostPattern, MAX_WEIGHT,
    OutlierConfig, Protocol, RetryConfig, RetryOn, RouteConfig, StickyConfig, StrategyKind,
    UpstreamConfig,
};

pub(super) const FILE: &str = "conf/sluice.toml";

pub(super) fn ok(text: &str) -> Config {
    match parse(text, Path::new(FILE)) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

fn errors(text: &str) -> Vec<String> {
    match parse(text, Path::new(FILE)) {
        Ok(c) => panic!("expected errors, got {c:#?}"),
        Err(e) => e.lines(),
    }
}

/// Asserts the exact lines, with `FILE:` prepended to each expected line.
pub(super) fn golden(text: &str, expected: &[&str]) {
    let expected: Vec<String> = expected.iter().map(|l| format!("{FILE}:{l}")).collect();
    assert_eq!(errors(text), expected);
}

/// The example of SPEC §2, verbatim.
const SPEC_EXAMPLE: &str = r#"[server]
workers = 2                        # worker threads (default: CPU cores)
shutdown_timeout = "30s"           # graceful drain on SIGTERM

[[listener]]                       # one or more
address = "0.0.0.0:8080"           # plain HTTP: HTTP/1.1, and HTTP/2 with prior knowledge (h2c)

[[listener]]
address = "0.0.0.0:8443"
tls = { certificates = [ { cert = "a.pem", key = "a.key" },     # chosen by SNI
                         { cert = "b.pem", key = "b.key" } ] } # ALPN h2 and http/1.1

[admin]
address = "127.0.0.1:9901"
token = "secret"                   # when set, every mutating call needs
                                   # "Authorization: Bearer secret" (else 401)

[limits]
max_header_bytes = "64KiB"         # request head larger than this: 431
max_body_bytes = 0                 # 0 = unlimited; larger request bodies: 413
header_read_timeout = "10s"        # slow request heads are cut off
idle_timeout = "60s"               # idle client keep-alive connections are closed
max_connections = 10000            # concurrent client connections

[[route]]                          # optional; first match wins; with no routes, a config
host = "api.example.com"           # with exactly one upstream sends everything to it
path_prefix = "/api/"              # (several upstreams and no route: a config error)
strip_prefix = false
upstream = "api"
# host: exact, or "*.example.com" (any subdomain, not example.com itself); compared without
# the port and case-insensitively. path_prefix matches whole segments: "/api" and "/api/"
# both match "/api", "/api/x" and not "/apix". strip_prefix removes the prefix and keeps
# a leading "/": "/api/v1" -> "/v1", "/api" -> "/".

[upstream.api]
strategy = "round_robin"           # section 3
hash_key = "header:x-user-id"      # for consistent_hash
backends = [
  { url = "http://10.0.0.1:8080", weight = 3 },
  { url = "http://10.0.0.2:8080" },
  { url = "http://10.0.0.9:8080", backup = true },   # used only when no primary is healthy
]
host_header = "preserve"           # "preserve" (client's Host) or "backend" (backend authority)
protocol = "http1"                 # to backends: "http1", "h2c", or "h2" (https backends)
ca_file = "ca.pem"                 # trust for https backends (default: system roots)
connect_timeout = "3s"
response_timeout = "60s"           # until the backend's response head: else 504
max_idle_per_backend = 64          # keep-alive pool to each backend
slow_start = "0s"                  # ramp a recovered backend's share over this time
sticky = { cookie = "sluice_sticky" }   # optional cookie affinity

[upstream.api.health]              # active checks (optional)
path = "/healthz"                  # omitted: TCP connect check
interval = "5s"
timeout = "2s"
rise = 2                           # consecutive passes to mark healthy
fall = 3                           # consecutive failures to mark unhealthy
expect_status = "200-399"

[upstream.api.outlier]             # passive checks (on by default)
consecutive_failures = 5           # connect errors, resets, timeouts, 502/503/504
ejection = "30s"                   # first ejection time; repeated ejections grow
max_ejected_percent = 50

[upstream.api.retry]
attempts = 2                       # extra tries, each on another backend where there is one
on = ["connect_failure", "reset", "timeout", "502", "503", "504"]
budget_percent = 20                # retries stay under this share of requests
"#;

const MINIMAL: &str = r#"[[listener]]
address = "127.0.0.1:0"

[upstream.web]
backends = [{ url = "127.0.0.1:9000" }]
"#;

fn backend(url: &str, weight: u32, backup: bool) -> BackendConfig {
    BackendConfig {
        url: BackendUrl::parse(url).unwrap(),
        weight,
        backup,
    }
}

#[test]
fn spec_example_parses_with_default_values() {
    let c = ok(SPEC_EXAMPLE);

    assert_eq!(c.server.workers, Some(2));
    assert_eq!(
        c.server.shutdown_timeout,
        ServerConfig::default().shutdown_timeout
    );

    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.listeners[0].address, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(c.listeners[0].tls, None);
    assert_eq!(c.listeners[1].address, "0.0.0.0:8443".parse().unwrap());
    let tls = c.listeners[1].tls.as_ref().unwrap();
    assert_eq!(
        tls.certificates,
        vec![
            CertificateConfig {
                cert: "a.pem".into(),
                key: "a.key".into()
            },
            CertificateConfig {
                cert: "b.pem".into(),
                key: "b.key".into()
            },
        ]
    );

    assert_eq!(
        c.admin,
        Some(AdminConfig {
            address: "127.0.0.1:9901".parse().unwrap(),
            token: Some("secret".into()),
            debug_from: Vec::new(),
        })
    );
    assert_eq!(c.limits, Limits::default());

    assert_eq!(
        c.routes,
        vec![RouteConfig {
            host: Some(HostPattern::Exact("api.example.com".into())),
            path_prefix: Some("/api".into()),
            strip_prefix: false,
            upstream: "api".into(),
            allow: Vec::new(),
            deny: Vec::new(),
            redirect: None,
            request_headers: Default::default(),
            response_headers: Default::default(),
            rate_limit: None,
        }]
    );

    assert_eq!(c.upstreams.len(), 1);
    let u = &c.upstreams[0];
    let d = UpstreamConfig::with_defaults("api", Vec::new());
    assert_eq!(u.name, "api");
    assert_eq!(u.strategy, d.strategy);
    assert_eq!(
        u.hash_key,
        HashKey::Header(http::HeaderName::from_static("x-user-id"))
    );
    assert_eq!(
        u.backends,
        vec![
            backend("http://10.0.0.1:8080", 3, false),
            backend("http://10.0.0.2:8080", 1, false),
            backend("http://10.0.0.9:8080", 1, true),
        ]
    );
    assert_eq!(u.host_header, d.host_header);
    assert_eq!(u.protocol, d.protocol);
    assert_eq!(u.ca_file, Some(PathBuf::from("ca.pem")));
    assert_eq!(u.connect_timeout, d.connect_timeout);
    assert_eq!(u.response_timeout, d.response_timeout);
    assert_eq!(u.max_idle_per_backend, d.max_idle_per_backend);
    assert_eq!(u.slow_start, d.slow_start);
    assert_eq!(
        u.sticky,
        Some(StickyConfig {
            cookie: "sluice_sticky".into()
        })
    );
    assert_eq!(
        u.health,
        Some(HealthConfig {
            path: Some("/healthz".into()),
            ..HealthConfig::default()
        })
    );
    assert_eq!(u.outlier, OutlierConfig::default());
    assert_eq!(u.retry.attempts, RetryConfig::default().attempts);
    assert_eq!(
        u.retry.budget_percent,
        RetryConfig::default().budget_percent
    );
    assert_eq!(
        u.retry.on,
        vec![
            RetryOn::ConnectFailure,
            RetryOn::Reset,
            RetryOn::Timeout,
            RetryOn::Status(502),
            RetryOn::Status(503),
            RetryOn::Status(504),
        ]
    );
}

#[test]
fn minimal_config_gets_all_defaults() {
    let c = ok(MINIMAL);
    assert_eq!(
        c,
        Config {
            server: ServerConfig::default(),
            listeners: vec![ListenerConfig::plain("127.0.0.1:0".parse().unwrap())],
            admin: None,
            limits: Limits::default(),
            routes: Vec::new(),
            upstreams: vec![UpstreamConfig::with_defaults(
                "web",
                vec![backend("127.0.0.1:9000", 1, false)],
            )],
            telemetry: Default::default(),
        }
    );
    assert_eq!(c.server.workers, None);
}

#[test]
fn upstreams_keep_file_order() {
    let c = ok(r#"
[[listener]]
address = "127.0.0.1:0"

[[route]]
upstream = "zeta"

[upstream.zeta]
backends = [{ url = "127.0.0.1:9000" }]

[upstream.alpha.health]
path = "/up"

[upstream.alpha]
backends = []

[upstream]
mid.backends = []
"#);
    let names: Vec<&str> = c.upstreams.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["zeta", "alpha", "mid"]);
    assert!(c.upstreams[1].health.is_some());
}

#[test]
fn optional_sections_and_normalisation() {
    let c = ok(r#"
[[listener]]
address = "[::1]:8080"

[[route]]
host = "*.Example.COM"
path_prefix = "/v1//"
strip_prefix = true
upstream = "a"

[[route]]
host = "WWW.example.com"
path_prefix = "/"
upstream = "b"

[[route]]
upstream = "b"

[upstream.a]
strategy = "consistent_hash"
hash_key = "cookie:sid"
backends = [{ url = "https://A.example.net", weight = 1000 }]
protocol = "h2"
host_header = "backend"
connect_timeout = "250ms"
response_timeout = "1m30s"
max_idle_per_backend = 0
slow_start = "10s"
sticky = {}

[upstream.a.health]

[upstream.a.retry]
on = [502, "timeout"]
attempts = 0
budget_percent = 0

[upstream.b]
backends = [{ url = "http://10.0.0.1:80" }, { url = "10.0.0.2:80", backup = true }]
protocol = "h2c"

[upstream.b.health]
expect_status = 204
rise = 1

[upstream.b.outlier]
max_ejected_percent = 100
"#);
    assert_eq!(c.listeners[0].address, "[::1]:8080".parse().unwrap());
    assert_eq!(
        c.routes[0].host,
        Some(HostPattern::Suffix(".example.com".into()))
    );
    assert_eq!(c.routes[0].path_prefix.as_deref(), Some("/v1"));
    assert!(c.routes[0].strip_prefix);
    assert_eq!(
        c.routes[1].host,
        Some(HostPattern::Exact("www.example.com".into()))
    );
    assert_eq!(c.routes[1].path_prefix.as_deref(), Some("/"));
    assert!(!c.routes[1].strip_prefix);
    assert_eq!(c.routes[2].host, None);
    assert_eq!(c.routes[2].path_prefix, None);

    let a = &c.upstreams[0];
    assert_eq!(a.strategy, StrategyKind::ConsistentHash);
    assert_eq!(a.hash_key, HashKey::Cookie("sid".into()));
    assert_eq!(
        a.backends,
        vec![backend("https://a.example.net:443", MAX_WEIGHT, false)]
    );
    assert_eq!(a.protocol, Protocol::H2);
    assert_eq!(a.host_header, HostHeader::Backend);
    assert_eq!(a.connect_timeout, Duration::from_millis(250));
    assert_eq!(a.response_timeout, Duration::from_secs(90));
    assert_eq!(a.max_idle_per_backend, 0);
    assert_eq!(a.slow_start, Duration::from_secs(10));
    assert_eq!(
        a.sticky,
        Some(StickyConfig {
            cookie: DEFAULT_STICKY_COOKIE.into()
        })
    );
    assert_eq!(a.health, Some(HealthConfig::default()));
    assert_eq!(
        a.retry,
        RetryConfig {
            attempts: 0,
            on: vec![RetryOn::Status(502), RetryOn::Timeout],
            budget_percent: 0,
        }
    );

    let b = &c.upstreams[1];
    assert_eq!(b.protocol, Protocol::H2c);
    assert_eq!(b.backends[1], backend("10.0.0.2:80", 1, true));
    let health = b.health.as_ref().unwrap();
    assert_eq!(health.expect_status, (204, 204));
    assert_eq!(health.rise, 1);
    assert_eq!(health.fall, HealthConfig::default().fall);
    assert_eq!(b.outlier.max_ejected_percent, 100);
    assert_eq!(b.retry, RetryConfig::default());
}

#[test]
fn sizes_as_integers_and_strings() {
    let c = ok(&format!(
        "{MINIMAL}\n[limits]\nmax_header_bytes = 1024\nmax_body_bytes = \"10MiB\"\n"
    ));
    assert_eq!(c.limits.max_header_bytes, 1024);
    assert_eq!(c.limits.max_body_bytes, 10 * 1024 * 1024);
}

// ---- golden error lines ----

#[test]
fn golden_unknown_key() {
    golden(
        r#"[[listener]]
address = "127.0.0.1:8080"

[limits]
idle_timeout = "60s"
max_conections = 100

[upstream.web]
backends = [{ url = "127.0.0.1:9000" }]
"#,
        &[
            "6:1: unknown key \"max_conections\" in [limits]; expected one of max_header_bytes, max_body_bytes, header_read_timeout, idle_timeout, max_connections",
        ],
    );
}

#[test]
fn golden_unknown_key_at_top_level_and_in_inline_table() {
    golden(
        "[limit]\nidle_timeout = \"60s\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.web]\nbackends = []\n",
        &[
            "1:2: unknown key \"limit\" at the top level; expected one of server, listener, admin, limits, route, upstream, telemetry",
        ],
    );
    golden(
        r#"[[listener]]
address = "127.0.0.1:0"
[upstream.web]
backends = [{ url = "127.0.0.1:9000", wieght = 2 }]
"#,
        &[
            "4:39: unknown key \"wieght\" in upstream.web.backends; expected one of url, weight, backup",
        ],
    );
}

/// One misspelt key does not hide the problems after it, and all come sorted by line.
#[test]
fn golden_every_problem_after_unknown_keys() {
    golden(
        r#"[[listener]]
adress = "127.0.0.1:8080"
address = "127.0.0.1:99999"

[limits]
idle_timeout = "forever"
max_conection = 10

[upstream.web]
strategy = "fastest"
backends = [{ url = "127.0.0.1:9001", wieght = 2 }, { url = "ftp://x:1" }]
"#,
        &[
            "2:1: unknown key \"adress\" in [[listener]]; expected one of address, tls, proxy_protocol",
            "3:11: listener.address: \"127.0.0.1:99999\" is not a socket address; expected IP:PORT such as \"127.0.0.1:8080\" or \"[::1]:8080\"",
            "6:16: limits.idle_timeout: \"forever\" is not a duration; expected e.g. \"250ms\", \"5s\", \"2m\"",
            "7:1: unknown key \"max_conection\" in [limits]; expected one of max_header_bytes, max_body_bytes, header_read_timeout, idle_timeout, max_connections",
            "10:12: upstream \"web\": strategy \"fastest\" is not one of round_robin, random, least_conn, p2c, peak_ewma, consistent_hash, first",
            "11:39: unknown key \"wieght\" in upstream.web.backends; expected one of url, weight, backup",
            "11:61: upstream \"web\": backend url \"ftp://x:1\" has scheme \"ftp\"; expected http or https",
        ],
    );
}

/// Required keys that are missing are problems like others: the checks go on. Where an
/// unknown key was found in the same table, that (a misspelling) is the one reported.
#[test]
fn golden_missing_required_keys() {
    golden(
        r#"[[listener]]
port = 80
[admin]
token = "t"
[[route]]
upstrem = "web"
[upstream.web]
backends = [{ weight = 2 }, { url = "bad url" }]
[upstream.api]
backend = []
"#,
        &[
            "2:1: unknown key \"port\" in [[listener]]; expected one of address, tls, proxy_protocol",
            "3:1: missing key \"address\" in [admin]",
            "6:1: unknown key \"upstrem\" in [[route]]; expected one of host, path_prefix, strip_prefix, upstream, allow, deny, redirect, request_headers, response_headers, rate_limit",
            "8:13: missing key \"url\" in upstream backend ({ url = \"host:port\" })",
            "8:37: upstream \"web\": backend url \"bad url\" has no port; expected host:port",
            "10:1: unknown key \"backend\" in [upstream.api]; expected one of strategy, hash_key, backends, host_header, protocol, ca_file, connect_timeout, response_timeout, max_idle_per_backend, slow_start, sticky, health, outlier, retry, discovery, max_inflight_per_backend, queue, proxy_protocol",
        ],
    );
}

/// A value of the wrong type is taken out and the search goes on; the semantic checks
/// then do not run (the value they would read is gone).
#[test]
fn golden_several_wrong_types() {
    golden(
        r#"[server]
workers = "four"
[[listener]]
address = 8080
[upstream.web]
backends = [{ url = 5 }]
"#,
        &[
            "2:11: server.workers has the wrong type: found string \"four\", expected an integer",
            "4:11: listener.address has the wrong type: found integer 8080, expected a string",
            "6:21: upstream.web.backends.url has the wrong type: found integer 5, expected a string",
        ],
    );
}

#[test]
fn golden_wrong_type() {
    golden(
        r#"[server]
workers = "four"
"#,
        &["2:11: server.workers has the wrong type: found string \"four\", expected an integer"],
    );
}

#[test]
fn golden_syntax_error() {
    golden(
        "[[listener]]\naddress = \"127.0.0.1:8080\"\naddress = \"127.0.0.1:8081\"\n",
        &["3:1: duplicate key \"address\""],
    );
}

#[test]
fn golden_bad_duration() {
    golden(
        r#"[[listener]]
address = "127.0.0.1:8080"

[limits]
idle_timeout = "5 parsecs"

[upstream.web]
backends = [{ url = "127.0.0.1:9000" }]
"#,
        &[
            "5:16: limits.idle_timeout: \"5 parsecs\" is not a duration; expected e.g. \"250ms\", \"5s\", \"2m\"",
        ],
    );
}

#[test]
fn golden_bare_number_duration() {
    golden(
        r#"[server]
shutdown_timeout = 30
[[listener]]
address = "127.0.0.1:8080"
[upstream.web]
backends = [{ url = "127.0.0.1:9000" }]
"#,
        &[
            "2:20: server.shutdown_timeout: 30 is a bare number but durations are strings with a unit; write e.g. \"30s\"",
        ],
    );
}

#[test]
fn golden_bad_size() {
    golden(
        r#"[[listener]]
address = "127.0.0.1:8080"

[limits]
max_body_bytes = "ten megs"

[upstream.web]
backends = [{ url = "127.0.0.1:9000" }]
"#,
        &[
            "5:18: limits.max_body_bytes: \"ten megs\" is not a size; expected a number of bytes or e.g. \"512B\", \"64KiB\", \"10MiB\", \"1GiB\", \"100kB\"",
        ],
    );
}

#[test]
fn golden_unknown_upstream_in_route() {
    golden(
        r#"[[listener]]
address = "127.0.0.1:8080"

[[route]]
path_prefix = "/api"
upstream = "nope"

[[route]]
upstream = "web"

[upstream.api]
backends = [{ url = "127.0.0.1:9001" }]

[upstream.web]
backends = [{ url = "127.0.0.1:9000" }]
"#,
        &["6:12: route: unknown upstream \"nope\"; defined upstreams: api, web"],
    );
}

#[test]
fn golden_duplicate_listener_address() {
    golden(
        r#"[[listener]]
address = "127.0.0.1:8080"

[[listener]]
address = "127.0.0.1:8080"

[upstream.web]
backends = [{ url = "127.0.0.1:9000" }]
"#,
        &["5:11: listener.address: duplicate listener address \"127.0.0.1:8080\" (also at line 2)"],
    );
}

#[test]
fn golden_several_upstreams_no_route() {
    golden(
        r#"[[listener]]
address = "127.0.0.1:8080"

[upstream.api]
backends = [{ url = "127.0.0.1:9001" }]

[upstream.web]
backends = [{ url = "127.0.0.1:9000" }]
"#,
        &[
            "4:11: 2 upstreams are defined (api, web) but there is no [[route]]; add [[route]] sections saying which requests go to which upstream",
        ],
    );
}

#[test]
fn golden_three_semantic_errors_all_reported_in_file_order() {
    // Checked in the order server, listeners, limits, upstreams; reported in file order.
    golden(
        r#"[upstream.api]
strategy = "fastest"
backends = [
  { url = "10.0.0.1:8080" },
  { url = "10.0.0.2:8080", weight = 3 },
]

[[listener]]
address = "localhost:8080"

[limits]
max_connections = 0
"#,
        &[
            "2:12: upstream \"api\": strategy \"fastest\" is not one of round_robin, random, least_conn, p2c, peak_ewma, consistent_hash, first",
            "9:11: listener.address: \"localhost:8080\" is not a socket address; expected IP:PORT such as \"127.0.0.1:8080\" or \"[::1]:8080\"",
            "12:19: limits.max_connections: 0 is too small; expected at least 1",
        ],
    );
}

#[test]
fn golden_empty_file() {
    golden(
        "",
        &[
            "1:1: no [[listener]] is defined; add at least one, e.g. [[listener]] with address = \"0.0.0.0:8080\"",
            "1:1: no upstream is defined; add one, e.g. [upstream.web] with backends = [{ url = \"127.0.0.1:9000\" }]",
        ],
    );
}

#[test]
fn golden_column_counts_characters() {
    // "é" is two bytes but one column.
    golden(
        r#"[[listener]]
address = "127.0.0.1:8443"
tls = { certificates = [{ cert = "é.pem", key = "" }] }
[upstream.web]
backends = [{ url = "127.0.0.1:9000" }]
"#,
        &["3:49: listener.tls.certificates.key is empty; expected a file path"],
    );
}

#[test]
fn every_semantic_problem_is_reported() {
    let text = r#"[server]
workers = 0
shutdown_timeout = "soon"

[[listener]]
address = "0.0.0.0"
tls = { certificates = [] }

[[listener]]
address = "127.0.0.1:9901"
tls = {}

[admin]
address = "127.0.0.1:9901"
token = ""

[limits]
max_header_bytes = "512B"
max_body_bytes = -1
header_read_timeout = "0s"
idle_timeout = "1 fortnight"
max_connections = -5

[[route]]
host = "api.example.com:8080"
path_prefix = "api"
upstream = "bad name"

[[route]]
host = "a..b"
path_prefix = "/x?y"
upstream = "web"

[[route]]
host = ""
upstream = "web"

[upstream."bad name"]
strategy = "fastest"
hash_key = "header:"
backends = [
  { url = "htp://10.0.0.1:8080" },
  { url = "10.0.0.2:8080", weight = 0 },
  { url = "http://10.0.0.2:8080", weight = 1001 },
]
host_header = "client"
protocol = "h3"
ca_file = ""
connect_timeout = 3
response_timeout = "0s"
max_idle_per_backend = -1
slow_start = "slowly"
sticky = { cookie = "my cookie" }

[upstream."bad name".health]
path = "healthz"
interval = "0s"
timeout = "two seconds"
rise = 0
fall = -1
expect_status = "399-200"

[upstream."bad name".outlier]
consecutive_failures = 0
ejection = 30
max_ejected_percent = 101

[upstream."bad name".retry]
attempts = -1
on = ["reset", "404", "sometimes"]
budget_percent = 200

[upstream.web]
backends = [{ url = "10.0.0.3:8080" }]
protocol = "h2"

[upstream.tls]
backends = [{ url = "https://10.0.0.4" }]
protocol = "h2c"

[upstream.fine]
backends = []
[upstream.fine.health]
expect_status = "99"
"#;
    let lines = errors(text);
    let expect = [
        "2:11: server.workers: 0 is too small; expected at least 1",
        "3:20: server.shutdown_timeout: \"soon\" is not a duration",
        "6:11: listener.address: \"0.0.0.0\" is not a socket address",
        "7:24: listener.tls.certificates is empty",
        "11:7: listener.tls has no certificates",
        "14:11: admin.address: \"127.0.0.1:9901\" is also a listener address (line 10)",
        "15:9: admin.token is empty",
        "18:20: limits.max_header_bytes: \"512B\" is too small; expected at least 1024 bytes",
        "19:18: limits.max_body_bytes: -1 is negative",
        "20:23: limits.header_read_timeout: \"0s\" must be greater than zero",
        "21:16: limits.idle_timeout: \"1 fortnight\" is not a duration",
        "22:19: limits.max_connections: -5 is too small; expected at least 1",
        "25:8: route.host: \"api.example.com:8080\" must not contain a port",
        "26:15: route.path_prefix: \"api\" must start with \"/\"",
        "30:8: route.host: \"a..b\" is not a host name",
        "31:15: route.path_prefix: \"/x?y\" must be a plain path",
        "35:8: route.host: the host is empty",
        "38:11: upstream name \"bad name\" is not allowed",
        "39:12: upstream \"bad name\": strategy \"fastest\"",
        "40:12: upstream \"bad name\": hash_key \"header:\" is not one of",
        "42:11: upstream \"bad name\": backend url \"htp://10.0.0.1:8080\" has scheme \"htp\"; expected http or https",
        "43:37: upstream \"bad name\": backend weight: 0 is out of range; expected 1 to 1000",
        "44:11: upstream \"bad name\": duplicate backend \"10.0.0.2:8080\" (also at line 43)",
        "44:44: upstream \"bad name\": backend weight: 1001 is out of range; expected 1 to 1000",
        "46:15: upstream \"bad name\": host_header \"client\" is not one of preserve, backend",
        "47:12: upstream \"bad name\": protocol \"h3\" is not one of http1, h2c, h2",
        "48:11: upstream \"bad name\": ca_file is empty",
        "49:19: upstream \"bad name\": connect_timeout: 3 is a bare number",
        "50:20: upstream \"bad name\": response_timeout: \"0s\" must be greater than zero",
        "51:24: upstream \"bad name\": max_idle_per_backend: -1 is too small; expected at least 0",
        "52:14: upstream \"bad name\": slow_start: \"slowly\" is not a duration",
        "53:21: upstream \"bad name\": sticky.cookie \"my cookie\" is not a valid cookie name",
        "56:8: upstream \"bad name\": health.path \"healthz\" must start with \"/\"",
        "57:12: upstream \"bad name\": health.interval: \"0s\" must be greater than zero",
        "58:11: upstream \"bad name\": health.timeout: \"two seconds\" is not a duration",
        "59:8: upstream \"bad name\": health.rise: 0 is too small; expected at least 1",
        "60:8: upstream \"bad name\": health.fall: -1 is too small; expected at least 1",
        "61:17: upstream \"bad name\": health.expect_status \"399-200\" is not a status or range",
        "64:24: upstream \"bad name\": outlier.consecutive_failures: 0 is too small",
        "65:12: upstream \"bad name\": outlier.ejection: 30 is a bare number",
        "66:23: upstream \"bad name\": outlier.max_ejected_percent: 101 is out of range; expected 0 to 100",
        "69:12: upstream \"bad name\": retry.attempts: -1 is too small; expected at least 0",
        "70:16: upstream \"bad name\": retry.on: retry condition \"404\" is not one of",
        "70:23: upstream \"bad name\": retry.on: retry condition \"sometimes\"",
        "71:18: upstream \"bad name\": retry.budget_percent: 200 is out of range; expected 0 to 100",
        "75:12: upstream \"web\": protocol \"h2\" needs https backends but backend \"10.0.0.3:8080\" is plain http; use \"h2c\" for HTTP/2 without TLS",
        "79:12: upstream \"tls\": protocol \"h2c\" needs plain http backends but backend \"https://10.0.0.4\" is https; use \"h2\" for HTTP/2 over TLS",
        "84:17: upstream \"fine\": health.expect_status \"99\" is not a status or range",
    ];
    for (i, (got, want)) in lines.iter().zip(expect.iter()).enumerate() {
        let want = format!("{FILE}:{want}");
        assert!(
            got.starts_with(&want),
            "line {i}:\n got: {got}\nwant: {want}..."
        );
    }
    assert_eq!(lines.len(), expect.len(), "{lines:#?}");
    // The route to "bad name" is fine: the name is defined, only malformed.
    assert!(!lines.iter().any(|l| l.contains("unknown upstream")));
    assert!(lines.iter().all(|l| !l.contains('\n') && !l.contains('`')));
}

#[test]
fn errors_display_and_single() {
    let e = parse("[server]\nworkers = 0\n", Path::new("x.toml")).unwrap_err();
    assert_eq!(e.problems().len(), 3);
    assert_eq!(e.to_string(), e.lines().join("\n"));
    assert_eq!(e.path(), Path::new("x.toml"));

    let single = ConfigErrors::single(Path::new("x.toml"), "", "--workers: \"x\" is not a number");
    assert_eq!(
        single.to_string(),
        "x.toml:1:1: --workers: \"x\" is not a number"
    );
}

#[test]
fn host_patterns() {
    assert_eq!(
        host_pattern("API.example.com"),
        Ok(HostPattern::Exact("api.example.com".into()))
    );
    assert_eq!(
        host_pattern("*.a.b"),
        Ok(HostPattern::Suffix(".a.b".into()))
    );
    assert_eq!(
        host_pattern("localhost"),
        Ok(HostPattern::Exact("localhost".into()))
    );
    assert_eq!(
        host_pattern("[::1]"),
        Ok(HostPattern::Exact("[::1]".into()))
    );
    for bad in [
        "", "*", "*.", "a.*.b", "a b", "a:80", "*.a:80", "[::1]:80", ".a", "a/b",
    ] {
        assert!(host_pattern(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn path_prefixes() {
    assert_eq!(path_prefix("/").as_deref(), Ok("/"));
    assert_eq!(path_prefix("//").as_deref(), Ok("/"));
    assert_eq!(path_prefix("/api/").as_deref(), Ok("/api"));
    assert_eq!(path_prefix("/api").as_deref(), Ok("/api"));
    assert!(path_prefix("").is_err());
    assert!(path_prefix("api").is_err());
}

#[test]
fn status_ranges() {
    assert_eq!(
        status_range(&StrOrInt::Str("200-399".into())),
        Some((200, 399))
    );
    assert_eq!(status_range(&StrOrInt::Str("200".into())), Some((200, 200)));
    assert_eq!(status_range(&StrOrInt::Int(204)), Some((204, 204)));
    assert_eq!(
        status_range(&StrOrInt::Str("100-599".into())),
        Some((100, 599))
    );
    for bad in ["", "99", "600", "399-200", "2xx", "200-", "-200"] {
        assert_eq!(status_range(&StrOrInt::Str(bad.into())), None, "{bad:?}");
    }
    assert_eq!(status_range(&StrOrInt::Int(-1)), None);
}

#[test]
fn telemetry_keys() {
    let c = ok(&format!(
        "{MINIMAL}[telemetry]\notlp = \"http://127.0.0.1:4318\"\nservice_name = \"edge\"\n"
    ));
    assert_eq!(c.telemetry.otlp.unwrap(), "http://127.0.0.1:4318/");
    assert_eq!(c.telemetry.service_name, "edge");
    assert_eq!(ok(MINIMAL).telemetry.otlp, None);
}

#[test]
fn golden_bad_telemetry() {
    golden(
        r#"[[listener]]
address = "127.0.0.1:0"
[upstream.web]
backends = [{ url = "127.0.0.1:9000" }]
[telemetry]
otlp = "grpc://127.0.0.1:4317"
service_name = ""
"#,
        &[
            "6:8: telemetry.otlp: \"grpc://127.0.0.1:4317\" is not an http:// URL; expected the collector's OTLP/HTTP address, e.g. \"http://127.0.0.1:4318\"",
            "7:16: telemetry.service_name is empty; remove it (default \"sluice\") or name the service",
        ],
    );
}
