//! `workers > 1` (proxy/workers.rs): one single-threaded runtime per worker, each client
//! connection served whole by the least busy one, idle backend connections kept per
//! worker. Run through the binary, since the workers are set up by `main`.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;

use crate::support::process::start_json;
use crate::support::*;

/// `sluice_worker_connections` per worker, from the admin listener at `admin`.
async fn per_worker(admin: &str) -> Vec<f64> {
    let req = http::Request::get(format!("http://{admin}/metrics"))
        .body(Full::default())
        .unwrap();
    let (status, _, body) = send_with(&client(), req).await;
    assert_eq!(status, StatusCode::OK);
    body.lines()
        .filter_map(|l| l.strip_prefix("sluice_worker_connections{worker=\""))
        .map(|l| l.split_once(' ').unwrap().1.parse().unwrap())
        .collect()
}

#[tokio::test]
async fn two_workers_take_the_connections_in_turn() {
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let held = TestBackend::held(gate.clone(), "held").await;
    let admin = dead_addr().await.to_string();
    let (_p, addr) = start_json(&[
        "-l",
        "127.0.0.1:0",
        "-b",
        &held.url(),
        "--workers",
        "2",
        "--admin",
        &admin,
    ])
    .await;
    assert_eq!(per_worker(&admin).await, [0.0, 0.0]);

    // Four requests held by the backend: two connections on each worker.
    let url = format!("http://{addr}/");
    let waiting: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            // A client each, so each request has a connection of its own.
            tokio::spawn(async move {
                let req = http::Request::get(url).body(Full::default()).unwrap();
                send_with(&client(), req).await
            })
        })
        .collect();
    held.wait_hits(4, "four requests at the backend").await;
    assert_eq!(per_worker(&admin).await, [2.0, 2.0]);
    while held.hits() < 4 || !waiting.iter().all(|w| w.is_finished()) {
        gate.notify_waiters();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for w in waiting {
        let (status, _, body) = w.await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "held"));
    }
}

#[tokio::test]
async fn two_workers_reuse_backend_connections_and_multiplex_http2() {
    let be = TestBackend::replying("a").await;
    let (_p, addr) = start_json(&["-l", "127.0.0.1:0", "-b", &be.url(), "--workers", "2"]).await;
    let url = format!("http://{addr}/");

    // Four keep-alive clients, ten requests each: the backend connections are reused,
    // each by the worker that opened it.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let c = client();
                for _ in 0..10 {
                    let req = http::Request::get(&url).body(Full::default()).unwrap();
                    assert_eq!(send_with(&c, req).await.0, StatusCode::OK);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(be.hits(), 40);
    assert!(
        be.connections() <= 4,
        "{} backend connections",
        be.connections()
    );

    // HTTP/2: 50 streams at once on one connection, each a task on its worker.
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let streams: Vec<_> = (0..50)
        .map(|i| {
            let (h2, url) = (h2.clone(), format!("{url}s{i}"));
            tokio::spawn(async move {
                let req = http::Request::get(url).body(Full::default()).unwrap();
                send_with(&h2, req).await
            })
        })
        .collect();
    for s in streams {
        let (status, _, body) = s.await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "a"));
    }
}
