//! Strategy simulation: every balancing strategy against the same simulated pool, so
//! users can choose from evidence. Four backends answer after a fixed delay (1, 2, 4 and
//! 2 ms); the last one degrades to 40 ms half-way through. A closed loop of 32 clients
//! sends the same number of requests through sluice for each strategy, and the table
//! shows latency, errors, each backend's share, and the degraded backend's share after
//! it degraded.
//!
//! Run: `cargo run --release --example simulate` (about 15 s).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;

const CLIENTS: usize = 32;
const REQUESTS: usize = 6_000;
const DELAYS_MS: [u64; 4] = [1, 2, 4, 2];
const DEGRADED_MS: u64 = 40;

struct SimBackend {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    hits_after: Arc<AtomicUsize>,
}

async fn backend(delay: Duration, degrade: Option<Arc<AtomicBool>>) -> SimBackend {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let hits_after = Arc::new(AtomicUsize::new(0));
    let (h, ha) = (hits.clone(), hits_after.clone());
    tokio::spawn(async move {
        let builder = Builder::new(TokioExecutor::new());
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let (h, ha, degrade, builder) =
                (h.clone(), ha.clone(), degrade.clone(), builder.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let degraded = degrade.as_ref().is_some_and(|d| d.load(Ordering::Relaxed));
                    h.fetch_add(1, Ordering::Relaxed);
                    let after = ha.clone();
                    async move {
                        if degraded {
                            after.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(DEGRADED_MS)).await;
                        } else {
                            tokio::time::sleep(delay).await;
                        }
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                            b"ok",
                        ))))
                    }
                });
                let _ = builder.serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
    SimBackend {
        addr,
        hits,
        hits_after,
    }
}

struct Row {
    strategy: &'static str,
    p50: f64,
    p99: f64,
    errors: usize,
    shares: Vec<f64>,
    degraded_share_after: f64,
}

async fn run(strategy: &'static str) -> Row {
    let degrade = Arc::new(AtomicBool::new(false));
    let mut backends = Vec::new();
    for (i, ms) in DELAYS_MS.iter().enumerate() {
        let flag = (i == DELAYS_MS.len() - 1).then(|| degrade.clone());
        backends.push(backend(Duration::from_millis(*ms), flag).await);
    }
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ url = \"http://{}\" }}", b.addr))
        .collect();
    let toml = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.sim]\nstrategy = \"{strategy}\"\nhash_key = \"header:x-user\"\nbackends = [{}]\n",
        list.join(", ")
    );
    let config = sluice::config::parse_str(&toml, Path::new("simulate.toml")).expect("config");
    let state = sluice::state::State::new(config, None, None);
    let server = sluice::app::App::bind(state).await.expect("bind");
    let addr = server.local_addrs()[0];
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async {
        let _ = stop_rx.await;
    }));

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (client, next, degrade) = (client.clone(), next.clone(), degrade.clone());
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), 0);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= REQUESTS {
                    return (latencies, errors);
                }
                if n == REQUESTS / 2 {
                    degrade.store(true, Ordering::Relaxed);
                }
                let req = hyper::Request::get(format!("http://{addr}/"))
                    .header("x-user", format!("user-{}", n % 500))
                    .body(Full::default())
                    .unwrap();
                let started = Instant::now();
                match client.request(req).await {
                    Ok(resp) if resp.status().is_success() => {
                        let _ = resp.into_body().collect().await;
                        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
                    }
                    _ => errors += 1,
                }
            }
        }));
    }
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.unwrap();
        latencies.extend(l);
        errors += e;
    }
    let _ = stop_tx.send(());
    let _ = serving.await;
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    let total: usize = backends
        .iter()
        .map(|b| b.hits.load(Ordering::Relaxed))
        .sum();
    let last = backends.last().unwrap();
    Row {
        strategy,
        p50: pct(0.50),
        p99: pct(0.99),
        errors,
        shares: backends
            .iter()
            .map(|b| 100.0 * b.hits.load(Ordering::Relaxed) as f64 / total as f64)
            .collect(),
        degraded_share_after: 100.0 * last.hits_after.load(Ordering::Relaxed) as f64
            / (REQUESTS / 2) as f64,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut rows = Vec::new();
    for s in [
        "round_robin",
        "random",
        "least_conn",
        "p2c",
        "peak_ewma",
        "consistent_hash",
        "first",
    ] {
        eprintln!("simulating {s}...");
        rows.push(run(s).await);
    }
    println!(
        "{CLIENTS} closed-loop clients, {REQUESTS} requests per strategy; backends answer in {DELAYS_MS:?} ms, the last one degrades to {DEGRADED_MS} ms half-way\n"
    );
    println!(
        "| strategy | p50 ms | p99 ms | errors | share b1 (1 ms) | b2 (2 ms) | b3 (4 ms) | b4 (2 → {DEGRADED_MS} ms) | b4 share after degrading |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        let shares: Vec<String> = r.shares.iter().map(|s| format!("{s:.1}%")).collect();
        println!(
            "| `{}` | {:.2} | {:.2} | {} | {} | {:.1}% |",
            r.strategy,
            r.p50,
            r.p99,
            r.errors,
            shares.join(" | "),
            r.degraded_share_after
        );
    }
}
