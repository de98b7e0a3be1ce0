//! Test backends: hyper servers on 127.0.0.1:0 that reply as a test tells them, count
//! their requests and connections, and can be held, closed or refused.

use super::*;

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
