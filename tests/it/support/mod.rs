//! Test support: real backends on 127.0.0.1:0, sluice started in-process from TOML text
//! or as the real binary, and small HTTP clients. Every wait is bounded.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

mod backend;
pub mod browser;
pub mod daemon;
pub mod dns;
pub mod etcd;
pub mod fake_dns;
pub mod process;
pub mod redis;
pub mod tls;
pub mod upstream;

pub use backend::*;

/// Upper bound for any single wait in a test.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Reads a response head, byte by byte, up to and including its blank line.
pub async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(DEADLINE, s.read_exact(&mut b))
            .await
            .expect("head in time")
            .expect("head");
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// How many of `bodies` are exactly `name`.
pub fn count(bodies: &[String], name: &str) -> usize {
    bodies.iter().filter(|b| *b == name).count()
}

/// An address on 127.0.0.1 where nothing listens (bound, then released).
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// sluice running in this process from a TOML config.
pub struct Sluice {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    /// The control side: reloads and edits.
    pub state: Arc<sluice::state::State>,
    /// The data plane's view: snapshot, limits, counters.
    pub shared: Arc<sluice::proxy::Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Sluice {
    /// Parses `toml` (which must use port 0 or free ports), binds and serves.
    pub async fn start(toml: &str) -> Sluice {
        Self::start_with(toml, None).await
    }

    /// Like `start`, from the config file at `path`, which `POST /reload` reads again.
    pub async fn start_file(path: &Path) -> Sluice {
        let toml = std::fs::read_to_string(path).unwrap();
        Self::start_with(&toml, Some(path)).await
    }

    async fn start_with(toml: &str, path: Option<&Path>) -> Sluice {
        let config = match sluice::config::parse_str(toml, Path::new("test.toml")) {
            Ok(c) => c,
            Err(e) => panic!("test config invalid:\n{e}\n{toml}"),
        };
        let state = sluice::state::State::new(config, path.map(Path::to_owned), None);
        let shared = state.shared.clone();
        let server = sluice::app::App::bind(state.clone()).await.expect("bind");
        let addr = server.local_addrs()[0];
        let admin = server.admin_addr();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            server
                .serve(async {
                    let _ = rx.await;
                })
                .await;
        });
        // Serving (its listeners accept, a reload may change them) before the test goes on.
        tokio::time::timeout(DEADLINE, async {
            while !shared.listeners.serving() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("serving");
        Sluice {
            addr,
            admin,
            state,
            shared,
            stop: Some(tx),
            task: Some(task),
            client: client(),
        }
    }

    /// A config with one listener on port 0 and one upstream `web` over `backends`
    /// (`url` strings), plus `extra` lines inside `[upstream.web]`.
    pub async fn over(backends: &[String], extra: &str) -> Sluice {
        let list: Vec<String> = backends
            .iter()
            .map(|b| format!("{{ url = \"{b}\" }}"))
            .collect();
        Self::start(&format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.web]\nbackends = [{}]\n{extra}\n",
            list.join(", ")
        ))
        .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends `req` (its URI may be a bare path) and returns status, headers and body.
    pub async fn send(&self, mut req: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, String) {
        if req.uri().authority().is_none() {
            *req.uri_mut() = self.url(&req.uri().to_string()).parse().unwrap();
        }
        send_with(&self.client, req).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, HeaderMap, String) {
        self.send(Request::get(path).body(Full::default()).unwrap())
            .await
    }

    /// Bodies of `n` sequential GETs of `path`.
    pub async fn get_many(&self, path: &str, n: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let (s, _, b) = self.get(path).await;
            assert_eq!(s, StatusCode::OK, "body: {b}");
            out.push(b);
        }
        out
    }

    /// Stops accepting and drains, like SIGTERM; returns when serve() returned.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(DEADLINE, t)
                .await
                .expect("shutdown in time")
                .unwrap();
        }
    }

    /// `GET /status`, parsed.
    pub async fn status(&self) -> serde_json::Value {
        let (s, body) = self.admin("GET", "/status").await;
        assert_eq!(s, StatusCode::OK);
        serde_json::from_str(&body).unwrap()
    }

    /// A call to the admin API.
    pub async fn admin(&self, method: &str, path: &str) -> (StatusCode, String) {
        self.admin_with(method, path, "").await
    }

    /// A call to the admin API with a body.
    pub async fn admin_with(&self, method: &str, path: &str, body: &str) -> (StatusCode, String) {
        let addr = self.admin.expect("admin configured");
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let (s, _, b) = send_with(&self.client, req).await;
        (s, b)
    }

    /// The value of the `/metrics` sample written exactly as `series` (name and
    /// labels), or None when it is absent.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (s, body) = self.admin("GET", "/metrics").await;
        assert_eq!(s, StatusCode::OK);
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn send_with(
    client: &Client<HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> (StatusCode, HeaderMap, String) {
    let resp = tokio::time::timeout(DEADLINE, client.request(req))
        .await
        .expect("response within deadline")
        .expect("response");
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(DEADLINE, body.collect())
        .await
        .expect("body within deadline")
        .expect("body")
        .to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Writes `raw` on a new connection and reads until the peer closes or `wait` passes.
pub async fn raw_exchange(addr: SocketAddr, raw: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    read_until_close(&mut s, wait).await
}

/// Reads until EOF, an error, or `wait` passes; returns what arrived.
pub async fn read_until_close(s: &mut TcpStream, wait: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The body of one raw HTTP/1 response: what follows its head.
pub fn body_of(raw: &str) -> &str {
    let end = raw
        .find("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete head: {raw}"));
    &raw[end + 4..]
}

/// Reads `s` to its end: "orderly end" (FIN) or "reset" (an error), within `wait`.
pub async fn how_it_ends(s: &mut TcpStream, wait: Duration) -> &'static str {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(wait, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return "orderly end",
                Ok(_) => {}
                Err(_) => return "reset",
            }
        }
    })
    .await
    .expect("the connection ended")
}

/// Does the peer close `s` within `wait`? (Reads and discards whatever arrives.)
pub async fn closes_within(s: &mut TcpStream, wait: Duration) -> bool {
    tokio::time::timeout(wait, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// The JSON an echo backend returned.
pub fn echoed(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not echo JSON ({e}): {body}"))
}

/// The values of header `name` as the echo backend saw them.
pub fn echoed_header(j: &serde_json::Value, name: &str) -> Vec<String> {
    j["headers"][name]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// How long after `since` a discovered upstream's set was applied, by the server's own
/// clock (`discovery.updated` in its `/status` entry `u`): a measure that the test's
/// own polling, slowed by a busy machine, does not inflate.
pub fn applied_after(u: &serde_json::Value, since: std::time::SystemTime) -> Duration {
    let updated = u["discovery"]["updated"].as_str().expect("applied");
    let at = humantime::parse_rfc3339(updated).expect("RFC 3339");
    // `updated` has millisecond precision: round `since` down alike.
    at.duration_since(since).unwrap_or_default()
}
