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

pub mod browser;
pub mod daemon;
pub mod dns;
pub mod etcd;
pub mod fake_dns;
pub mod process;
pub mod redis;
pub mod tls;
pub mod upstream;

/// Upper bound for any single wait in a test.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;
type HandlerFut = Pin<Box<dyn Future<Output = Response<BoxBody>> + Send>>;
pub type Handler = Arc<dyn Fn(Request<Incoming>) -> HandlerFut + Send + Sync>;

pub fn full(b: impl Into<Bytes>) -> BoxBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A real HTTP server (HTTP/1.1 and h2c) bound to 127.0.0.1:0.
pub struct TestBackend {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    conns: Arc<AtomicUsize>,
    /// Connections open now (accepted and not yet closed by either side).
    open: Arc<AtomicUsize>,
    task: JoinHandle<()>,
    /// Connection tasks, aborted with the backend so that dropping it is a crash:
    /// every socket closes.
    conn_tasks: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    handler: Handler,
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.task.abort();
        for t in self.conn_tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// A port kept for a backend's restart (`TestBackend::hold_port`).
pub struct PortHold(tokio::net::TcpSocket);

impl PortHold {
    /// The backend up again on its port, with `handler` (taken from the dropped one).
    pub fn restart(self, handler: Handler) -> TestBackend {
        TestBackend::serve(self.0.listen(1024).unwrap(), handler)
    }
}

/// A socket bound to `addr` with SO_REUSEPORT, not listening yet.
fn reusable(addr: SocketAddr) -> tokio::net::TcpSocket {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseport(true).unwrap();
    socket.bind(addr).unwrap();
    socket
}

impl TestBackend {
    /// Serves every request with `handler`.
    pub async fn start<F, Fut>(handler: F) -> TestBackend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<BoxBody>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |r| Box::pin(handler(r)));
        let socket = reusable("127.0.0.1:0".parse().unwrap());
        Self::serve(socket.listen(1024).unwrap(), handler)
    }

    /// `n` backends on one port of 127.0.0.2, 127.0.0.3, … (distinct hosts, as DNS A
    /// records give them), each answering with its own address.
    pub async fn on_hosts(n: u8) -> Vec<TestBackend> {
        'again: loop {
            let first = reusable("127.0.0.2:0".parse().unwrap());
            let port = first.local_addr().unwrap().port();
            let mut sockets = vec![first];
            for i in 1..n {
                let addr = SocketAddr::from(([127, 0, 0, 2 + i], port));
                let s = tokio::net::TcpSocket::new_v4().unwrap();
                s.set_reuseport(true).unwrap();
                if s.bind(addr).is_err() {
                    continue 'again; // taken on that host: another port
                }
                sockets.push(s);
            }
            return sockets
                .into_iter()
                .map(|s| {
                    let ip = s.local_addr().unwrap().ip().to_string();
                    let handler: Handler = Arc::new(move |_r| {
                        let ip = ip.clone();
                        Box::pin(async move { Response::new(full(ip)) })
                    });
                    Self::serve(s.listen(1024).unwrap(), handler)
                })
                .collect();
        }
    }

    /// Holds this backend's port for a restart: a second socket bound to it (both
    /// with SO_REUSEPORT) but not listening, so that once this backend is dropped,
    /// connections to the port are refused, as by a crashed server, and no other
    /// process can take the port meanwhile.
    pub fn hold_port(&self) -> PortHold {
        PortHold(reusable(self.addr))
    }

    /// Stops this backend as a crash would: every connection closes, and so has the
    /// listener when this returns (dropping a backend closes it a moment later).
    pub async fn crash(mut self) {
        for t in self.conn_tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        let task = std::mem::replace(&mut self.task, tokio::spawn(async {}));
        task.abort();
        let _ = task.await;
    }

    /// The request handler, to restart this backend after dropping it.
    pub fn handler(&self) -> Handler {
        self.handler.clone()
    }

    fn serve(listener: TcpListener, handler: Handler) -> TestBackend {
        Self::serve_with(listener, handler, None)
    }

    /// Answers 200 with `name` as the body over TLS, with the test certificate for
    /// 127.0.0.1 and localhost (signed by tests/data/tls/ca.pem); see `https_url`.
    pub async fn tls_replying(name: &'static str) -> TestBackend {
        Self::start_tls("backend", move |_req| async move {
            Response::builder()
                .header("x-backend", name)
                .body(full(name))
                .unwrap()
        })
        .await
    }

    /// Serves every request with `handler` over TLS, with the certificate
    /// tests/data/tls/`cert`.pem (and its key).
    pub async fn start_tls<F, Fut>(cert: &str, handler: F) -> TestBackend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<BoxBody>> + Send + 'static,
    {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls");
        let acceptor = sluice::proxy::tls::acceptor(&sluice::config::TlsConfig {
            certificates: vec![sluice::config::CertificateConfig {
                cert: dir.join(format!("{cert}.pem")),
                key: dir.join(format!("{cert}.key")),
            }],
            resumption: true,
        })
        .unwrap();
        let handler: Handler = Arc::new(move |r| Box::pin(handler(r)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve_with(listener, handler, Some(acceptor))
    }

    /// `https://127.0.0.1:PORT`, for a TLS backend.
    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn serve_with(
        listener: TcpListener,
        handler: Handler,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> TestBackend {
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let conns = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let conn_tasks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let now_open = open.clone();
        let (h, c, tasks, served) = (
            hits.clone(),
            conns.clone(),
            conn_tasks.clone(),
            handler.clone(),
        );
        let task = tokio::spawn(async move {
            let builder = Builder::new(TokioExecutor::new());
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                now_open.fetch_add(1, Ordering::SeqCst);
                let closed = Closed(now_open.clone());
                let handler = served.clone();
                let hits = h.clone();
                let builder = builder.clone();
                let tls = tls.clone();
                let t = tokio::spawn(async move {
                    let _closed = closed;
                    let svc = service_fn(move |req| {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let f = handler(req);
                        async move { Ok::<_, Infallible>(f.await) }
                    });
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                                .await;
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                                .await;
                        }
                    }
                });
                tasks.lock().unwrap().push(t.abort_handle());
            }
        });
        TestBackend {
            addr,
            hits,
            conns,
            open,
            task,
            conn_tasks,
            handler,
        }
    }

    /// Answers 200 with `name` as the body and `x-backend: name`.
    pub async fn replying(name: &'static str) -> TestBackend {
        Self::start(move |_req| async move {
            Response::builder()
                .header("x-backend", name)
                .body(full(name))
                .unwrap()
        })
        .await
    }

    /// Answers with `status` and an empty body.
    pub async fn status(status: u16) -> TestBackend {
        Self::start(move |_req| async move {
            Response::builder().status(status).body(full("")).unwrap()
        })
        .await
    }

    /// Answers with a JSON description of the request it got: method, uri, version,
    /// headers (lower-case name → list of values) and body.
    pub async fn echo() -> TestBackend {
        Self::start(|req: Request<Incoming>| async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let mut headers = serde_json::Map::new();
            for (k, v) in parts.headers.iter() {
                let e = headers
                    .entry(k.as_str().to_owned())
                    .or_insert_with(|| serde_json::Value::Array(vec![]));
                if let serde_json::Value::Array(a) = e {
                    a.push(String::from_utf8_lossy(v.as_bytes()).into_owned().into());
                }
            }
            let j = serde_json::json!({
                "method": parts.method.as_str(),
                "uri": parts.uri.to_string(),
                "version": format!("{:?}", parts.version),
                "headers": headers,
                "body": String::from_utf8_lossy(&body),
            });
            Response::builder()
                .header("content-type", "application/json")
                .header("connection", "keep-alive, x-hop")
                .header("x-hop", "must not pass")
                .header("keep-alive", "timeout=5")
                .body(full(j.to_string()))
                .unwrap()
        })
        .await
    }

    /// Accepts any Upgrade with 101 (`Upgrade: echo`), then echoes bytes upper-cased.
    pub async fn upgrade_echo() -> TestBackend {
        Self::start(|mut req: Request<Incoming>| async move {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(up) = on.await else { return };
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 64];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let upper = buf[..n].to_ascii_uppercase();
                    if io.write_all(&upper).await.is_err() {
                        break;
                    }
                }
            });
            Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "echo")
                .body(full(""))
                .unwrap()
        })
        .await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests handled so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Waits (up to `DEADLINE`) until `n` requests have reached this backend; panics
    /// with `what` otherwise.
    pub async fn wait_hits(&self, n: usize, what: &str) {
        tokio::time::timeout(DEADLINE, async {
            while self.hits() < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect(what);
    }

    /// Answers `body` to each request once `gate` is notified.
    pub async fn held(gate: Arc<tokio::sync::Notify>, body: &'static str) -> TestBackend {
        Self::start(move |_req| {
            let gate = gate.clone();
            async move {
                gate.notified().await;
                Response::new(full(body))
            }
        })
        .await
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    /// Waits until exactly `n` connections are open (sluice closed the others).
    pub async fn wait_open(&self, n: usize, what: &str) {
        tokio::time::timeout(DEADLINE, async {
            while self.open.load(Ordering::SeqCst) != n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{what}: {} connections open, not {n}",
                self.open.load(Ordering::SeqCst)
            )
        });
    }
}

/// Counts a test backend's connection as closed when its task ends (or is aborted).
struct Closed(Arc<AtomicUsize>);

impl Drop for Closed {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

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
