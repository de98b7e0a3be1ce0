//! Active health checks (SPEC §2 `[upstream.X.health]`, CLI `--health-path`): verdicts
//! follow rise/fall, show in /status and in the log, and steer traffic.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use http::StatusCode;

use crate::support::process::start_json;
use crate::support::*;

/// A backend answering `name` on every path, and `/healthz` with the status in `health`.
async fn checked(name: &'static str, health: Arc<AtomicU16>) -> TestBackend {
    TestBackend::start(move |req: http::Request<hyper::body::Incoming>| {
        let health = health.clone();
        async move {
            if req.uri().path() == "/healthz" {
                let code = health.load(Ordering::SeqCst);
                return http::Response::builder()
                    .status(code)
                    .body(full(""))
                    .unwrap();
            }
            http::Response::new(full(name))
        }
    })
    .await
}

/// Waits until `lb`'s backend `i` of its first upstream shows `state` in /status.
async fn wait_state(lb: &Sluice, i: usize, state: &str) {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let (_, body) = lb.admin("GET", "/status").await;
            let j: serde_json::Value = serde_json::from_str(&body).unwrap();
            if j["upstreams"][0]["backends"][i]["state"] == state {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("backend {i} never became {state}"));
}

fn config(backends: &[String], health: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ url = \"{b}\" }}"))
        .collect();
    format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n[upstream.web]\nbackends = [{}]\n[upstream.web.health]\n{health}\n",
        list.join(", ")
    )
}

#[tokio::test]
async fn an_http_check_takes_a_failing_backend_out_and_brings_it_back() {
    let a_health = Arc::new(AtomicU16::new(200));
    let a = checked("a", a_health.clone()).await;
    let b = checked("b", Arc::new(AtomicU16::new(200))).await;
    let lb = Sluice::start(&config(
        &[a.url(), b.url()],
        "path = \"/healthz\"\ninterval = \"50ms\"\ntimeout = \"1s\"\nrise = 2\nfall = 2",
    ))
    .await;
    let bodies = lb.get_many("/", 4).await;
    assert!(bodies.iter().any(|x| x == "a"));

    a_health.store(503, Ordering::SeqCst);
    wait_state(&lb, 0, "unhealthy").await;
    let bodies = lb.get_many("/", 10).await;
    assert!(bodies.iter().all(|x| x == "b"), "{bodies:?}");

    a_health.store(200, Ordering::SeqCst);
    wait_state(&lb, 0, "healthy").await;
    let bodies = lb.get_many("/", 4).await;
    assert!(bodies.iter().any(|x| x == "a"), "{bodies:?}");
}

#[tokio::test]
async fn a_tcp_check_spares_clients_a_dead_backend() {
    let dead = dead_addr().await;
    let b = TestBackend::replying("b").await;
    let lb = Sluice::start(&config(
        &[format!("http://{dead}"), b.url()],
        // No retries: a request sent to the dead backend would be a 502, not saved by
        // a retry on the live one.
        "interval = \"50ms\"\ntimeout = \"500ms\"\nfall = 1\n[upstream.web.retry]\nattempts = 0",
    ))
    .await;
    wait_state(&lb, 0, "unhealthy").await;
    // Every request now reaches the live backend: no 502 for anyone.
    let bodies = lb.get_many("/", 10).await;
    assert!(bodies.iter().all(|x| x == "b"));
}

#[tokio::test]
async fn expect_status_decides_what_passes() {
    let health = Arc::new(AtomicU16::new(200));
    let a = checked("a", health.clone()).await;
    let lb = Sluice::start(&config(
        &[a.url()],
        "path = \"/healthz\"\ninterval = \"50ms\"\nfall = 1\nrise = 1\nexpect_status = \"204\"",
    ))
    .await;
    wait_state(&lb, 0, "unhealthy").await;
    assert_eq!(lb.get("/").await.0, StatusCode::SERVICE_UNAVAILABLE);
    health.store(204, Ordering::SeqCst);
    wait_state(&lb, 0, "healthy").await;
    assert_eq!(lb.get("/").await.0, StatusCode::OK);
}

#[tokio::test]
async fn health_path_flag_turns_checks_on_and_transitions_are_logged() {
    let down = Arc::new(AtomicU16::new(500));
    let a = checked("a", down).await;
    let b = checked("b", Arc::new(AtomicU16::new(200))).await;
    let (p, _addr) = start_json(&[
        "-l",
        "127.0.0.1:0",
        "-b",
        &a.url(),
        "-b",
        &b.url(),
        "--health-path",
        "/healthz",
        "--health-interval",
        "50ms",
        "--access-log",
        "off",
    ])
    .await;
    let line = tokio::task::spawn_blocking(move || p.line_with("backend unhealthy"))
        .await
        .unwrap();
    let j: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(j["level"], "info", "{line}");
    assert_eq!(j["upstream"], "default", "{line}");
    assert_eq!(j["backend"], a.addr.to_string(), "{line}");
    assert!(j["reason"].as_str().unwrap_or("").contains("500"), "{line}");
}

#[tokio::test]
async fn a_reload_keeps_known_verdicts_and_keeps_checking() {
    let health = Arc::new(AtomicU16::new(503));
    let a = checked("a", health.clone()).await;
    let b = checked("b", Arc::new(AtomicU16::new(200))).await;
    // fall = 5: a checker that forgot the verdict would take five probes to find it
    // again, and the requests below would reach a meanwhile.
    let text = config(
        &[a.url(), b.url()],
        "path = \"/healthz\"\ninterval = \"50ms\"\nfall = 5\nrise = 2",
    );
    let lb = Sluice::start(&text).await;
    wait_state(&lb, 0, "unhealthy").await;
    let reloaded = sluice::config::parse_str(&text, std::path::Path::new("test.toml")).unwrap();
    lb.state.apply(reloaded);
    // Still unhealthy right after the reload: no request reaches a.
    let bodies = lb.get_many("/", 6).await;
    assert!(bodies.iter().all(|x| x == "b"), "{bodies:?}");
    // And the new checker still watches it.
    health.store(200, Ordering::SeqCst);
    wait_state(&lb, 0, "healthy").await;
}

#[tokio::test]
async fn a_reload_without_health_checks_drops_their_verdicts() {
    let a = checked("a", Arc::new(AtomicU16::new(503))).await;
    let b = checked("b", Arc::new(AtomicU16::new(200))).await;
    let text = config(
        &[a.url(), b.url()],
        "path = \"/healthz\"\ninterval = \"50ms\"\nfall = 1\nrise = 1",
    );
    let lb = Sluice::start(&text).await;
    wait_state(&lb, 0, "unhealthy").await;
    // The same upstream without [upstream.web.health]: nothing would ever revise the
    // verdict, so it must not outlive the checks.
    let unchecked = text.replace("[upstream.web.health]\n", "").replace(
        "path = \"/healthz\"\ninterval = \"50ms\"\nfall = 1\nrise = 1\n",
        "",
    );
    let reloaded =
        sluice::config::parse_str(&unchecked, std::path::Path::new("test.toml")).unwrap();
    lb.state.apply(reloaded);
    wait_state(&lb, 0, "healthy").await;
    let bodies = lb.get_many("/", 4).await;
    assert!(bodies.iter().any(|x| x == "a"), "{bodies:?}");
}
