//! `sluice demo`: a few local backends that name themselves, the balancer in front of
//! them and the dashboard, so a newcomer sees balancing with one command.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;

use crate::app::App;
use crate::config::{
    AdminConfig, BackendConfig, BackendUrl, Config, DEFAULT_UPSTREAM, ListenerConfig, Scheme,
    UpstreamConfig,
};
use crate::proxy::Shared;
use crate::state::State;

/// Demo backend N listens on this port plus N when it is free, so that the README's
/// first config (127.0.0.1:9001, 9002, 9003) runs against the demo as it is.
const PREFERRED_PORT_BASE: u16 = 9000;

/// Starts one demo backend on 127.0.0.1, on port 9000 + `index` when that is free and
/// on any free port otherwise; it answers every request with its name and port.
/// `taken`: ports the demo's balancer and dashboard will bind, never preferred.
pub async fn start_backend(index: usize, taken: &[u16]) -> std::io::Result<SocketAddr> {
    let preferred = u16::try_from(index)
        .ok()
        .and_then(|i| PREFERRED_PORT_BASE.checked_add(i))
        .filter(|p| !taken.contains(p));
    let listener = match preferred {
        Some(port) => match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => l,
            Err(_) => TcpListener::bind("127.0.0.1:0").await?,
        },
        None => TcpListener::bind("127.0.0.1:0").await?,
    };
    let addr = listener.local_addr()?;
    let name: Arc<str> = format!("backend-{index}").into();
    tokio::spawn(async move {
        let builder = Builder::new(TokioExecutor::new());
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let name = Arc::clone(&name);
            let builder = builder.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let body = format!(
                        "hello from demo {name} ({addr}): {} {}\n",
                        req.method(),
                        req.uri()
                    );
                    let mut resp = Response::new(Full::new(Bytes::from(body)));
                    if let Ok(v) = http::HeaderValue::from_str(&name) {
                        resp.headers_mut().insert("x-backend", v);
                    }
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Runs the demo until Ctrl-C. `summary`: instead of an access line per request, one
/// line per second of traffic, so a load test does not flood the terminal.
pub async fn run(
    backends: u16,
    listen: SocketAddr,
    admin: SocketAddr,
    summary: bool,
) -> Result<(), String> {
    let mut configs = Vec::new();
    for i in 1..=usize::from(backends) {
        let addr = start_backend(i, &[listen.port(), admin.port()])
            .await
            .map_err(|e| format!("cannot start demo backend: {e}"))?;
        configs.push(BackendConfig {
            url: BackendUrl {
                scheme: Scheme::Http,
                host: addr.ip().to_string(),
                port: addr.port(),
            },
            weight: 1,
            backup: false,
        });
    }
    let config = Config {
        server: Default::default(),
        listeners: vec![ListenerConfig::plain(listen)],
        admin: Some(AdminConfig {
            address: admin,
            token: None,
            debug_from: Vec::new(),
        }),
        limits: Default::default(),
        routes: Vec::new(),
        upstreams: vec![UpstreamConfig::with_defaults(
            DEFAULT_UPSTREAM,
            configs.clone(),
        )],
        telemetry: Default::default(),
    };
    let state = State::new(config, None, None);
    let shared = Arc::clone(&state.shared);
    let server = App::bind(state)
        .await
        .map_err(|e| crate::proxy::error::chain(&e))?;
    let lb = server.local_addrs()[0];
    let dash = server.admin_addr().unwrap_or(admin);
    println!("sluice demo: round_robin over {backends} local backends");
    for b in &configs {
        println!("  backend    {}", b.url);
    }
    println!("  balancer   http://{lb}/");
    println!("  dashboard  http://{dash}/");
    println!();
    println!("try:");
    println!("  for i in 1 2 3 4 5 6; do curl -s http://{lb}/; done   # the backend rotates");
    println!("  curl -s http://{dash}/status                        # live counters as JSON");
    println!("  curl -s http://{dash}/metrics                       # the same, for Prometheus");
    if let Some(first) = configs.first() {
        println!(
            "  curl -s -XDELETE http://{dash}/upstreams/default/backends/{}   # one backend out",
            first.url.id()
        );
    }
    println!("  open http://{dash}/ in a browser                    # the dashboard");
    println!("Ctrl-C stops everything.");
    if summary {
        println!("(one line per second of traffic; --access-log on shows every request)");
        tokio::spawn(summarize(shared));
    }
    println!();
    server
        .serve(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    Ok(())
}

/// Prints, for every second in which requests were answered, how many and by which
/// backend.
async fn summarize(shared: Arc<Shared>) {
    // By backend id: an admin edit may add, remove or reorder backends.
    let mut last: std::collections::HashMap<Box<str>, u64> = Default::default();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let snap = shared.snapshot.load();
        let Some(upstream) = snap.upstreams.first() else {
            continue;
        };
        let mut deltas = Vec::with_capacity(upstream.all.len());
        let mut seen = std::collections::HashMap::with_capacity(upstream.all.len());
        for b in upstream.all.iter() {
            let n = b.stats.requests.load(std::sync::atomic::Ordering::Relaxed);
            let before = last.get(&b.id).copied().unwrap_or(0);
            deltas.push(n.saturating_sub(before));
            seen.insert(b.id.clone(), n);
        }
        last = seen;
        let total: u64 = deltas.iter().sum();
        if total == 0 {
            continue;
        }
        let each: Vec<String> = upstream
            .all
            .iter()
            .zip(&deltas)
            .map(|(b, d)| format!("{} {d}", b.id))
            .collect();
        println!(
            "{} {total} requests in the last second: {}",
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
            each.join(", ")
        );
    }
}
