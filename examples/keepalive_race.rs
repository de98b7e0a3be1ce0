//! Measures the keep-alive race (issue 3, item 4): a backend closes idle keep-alive
//! connections after 20 ms, far sooner than sluice's pool lets them go, and 50 clients
//! send 20,000 GETs through sluice at uneven intervals (0-40 ms), so reuses keep
//! landing on connections the backend is closing or has just closed. Prints how many
//! requests failed (the goal is none) and how many backend connections that took.
//!
//! Run: `cargo run --release --example keepalive_race` (about 10 s).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CLIENTS: usize = 50;
const PER_CLIENT: usize = 400;
const BACKEND_KEEPALIVE: Duration = Duration::from_millis(20);

/// Reads one bodyless request head; false when the peer closed first.
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            return true;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// An HTTP/1.1 backend with a 20 ms keep-alive timeout, counting its connections.
async fn backend(accepted: Arc<AtomicUsize>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            accepted.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    if !read_head(&mut s, &mut buf).await {
                        return;
                    }
                    if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    if !buf.is_empty() {
                        continue;
                    }
                    let mut peek = [0u8; 1];
                    match tokio::time::timeout(BACKEND_KEEPALIVE, s.peek(&mut peek)).await {
                        Ok(Ok(n)) if n > 0 => continue,
                        _ => return, // idle too long: close, as a real server would
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let accepted = Arc::new(AtomicUsize::new(0));
    let url = backend(accepted.clone()).await;
    let toml = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.race]\nbackends = [{{ url = \"{url}\" }}]\n"
    );
    let config = sluice::config::parse_str(&toml, Path::new("race.toml")).expect("config");
    let server = sluice::app::App::bind(sluice::state::State::new(config, None, None))
        .await
        .expect("bind");
    let addr = server.local_addrs()[0];
    tokio::spawn(server.serve(std::future::pending()));

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(c as u64);
            let mut errors = Vec::new();
            for i in 0..PER_CLIENT {
                let req = hyper::Request::get(format!("http://{addr}/{c}/{i}"))
                    .body(Full::default())
                    .unwrap();
                match client.request(req).await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.into_body().collect().await;
                    }
                    Ok(r) => errors.push(r.status().to_string()),
                    Err(e) => errors.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(rng.u64(0..40))).await;
            }
            errors
        }));
    }
    let mut errors = Vec::new();
    for t in tasks {
        errors.extend(t.await.unwrap());
    }
    println!(
        "{} requests in {:.1} s through sluice to a backend with a {} ms keep-alive: {} failed; the backend accepted {} connections",
        CLIENTS * PER_CLIENT,
        started.elapsed().as_secs_f64(),
        BACKEND_KEEPALIVE.as_millis(),
        errors.len(),
        accepted.load(Ordering::Relaxed)
    );
    if !errors.is_empty() {
        println!("first errors: {:?}", &errors[..errors.len().min(5)]);
        std::process::exit(1);
    }
}
