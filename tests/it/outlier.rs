//! Passive outlier ejection (SPEC §2 `[upstream.X.outlier]`, on by default).

use std::time::Duration;

use http::StatusCode;

use crate::support::*;

fn states(lb: &Sluice) -> Vec<&'static str> {
    let snap = lb.shared.snapshot.load();
    let now = tokio::time::Instant::now();
    snap.upstreams[0]
        .all
        .iter()
        .map(|b| b.stats.state(now).as_str())
        .collect()
}

/// `/status` as the admin API renders it.
fn status_of(lb: &Sluice) -> serde_json::Value {
    serde_json::from_str(&sluice::admin::status_json(&lb.state)).unwrap()
}

async fn wait_until(lb: &Sluice, what: &str, f: impl Fn(&[&str]) -> bool) {
    tokio::time::timeout(DEADLINE, async {
        while !f(&states(lb)) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never: {what}; states {:?}", states(lb)));
}

#[tokio::test]
async fn a_backend_answering_502_is_ejected_then_back_on_probation() {
    let bad = TestBackend::status(502).await;
    let good = TestBackend::replying("good").await;
    let lb = Sluice::over(
        &[bad.url(), good.url()],
        "[upstream.web.outlier]\nconsecutive_failures = 3\nejection = \"400ms\"",
    )
    .await;
    let mut bad_answers = 0;
    for _ in 0..6 {
        if lb.get("/").await.0 == StatusCode::BAD_GATEWAY {
            bad_answers += 1;
        }
    }
    assert_eq!(
        bad_answers, 3,
        "round robin: every other request, three in a row at the backend"
    );
    assert_eq!(states(&lb), ["ejected", "healthy"]);
    let bodies = lb.get_many("/", 6).await;
    assert!(bodies.iter().all(|b| b == "good"));
    // Back after its ejection, on probation: its next failure ejects it again, longer.
    wait_until(&lb, "bad returns", |s| s[0] == "healthy").await;
    let hits = bad.hits();
    for _ in 0..2 {
        lb.get("/").await;
    }
    assert_eq!(bad.hits(), hits + 1);
    assert_eq!(
        states(&lb)[0],
        "ejected",
        "one failure on probation ejects again"
    );
}

#[tokio::test]
async fn a_hanging_backend_is_ejected_after_timeouts() {
    let hang = TestBackend::start(|_| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        http::Response::new(full("late"))
    })
    .await;
    let good = TestBackend::replying("good").await;
    let lb = Sluice::over(
        &[hang.url(), good.url()],
        "response_timeout = \"100ms\"\n[upstream.web.outlier]\nconsecutive_failures = 2",
    )
    .await;
    let mut timeouts = 0;
    for _ in 0..4 {
        if lb.get("/").await.0 == StatusCode::GATEWAY_TIMEOUT {
            timeouts += 1;
        }
    }
    assert_eq!(timeouts, 2);
    assert_eq!(states(&lb)[0], "ejected");
    assert!(lb.get_many("/", 4).await.iter().all(|b| b == "good"));
}

#[tokio::test]
async fn never_more_than_max_ejected_percent_of_the_pool() {
    let bad1 = TestBackend::status(503).await;
    let bad2 = TestBackend::status(503).await;
    let lb = Sluice::over(
        &[bad1.url(), bad2.url()],
        "[upstream.web.outlier]\nconsecutive_failures = 1\nmax_ejected_percent = 50",
    )
    .await;
    for _ in 0..6 {
        assert_eq!(lb.get("/").await.0, StatusCode::SERVICE_UNAVAILABLE);
    }
    let s = states(&lb);
    assert_eq!(s.iter().filter(|x| **x == "ejected").count(), 1, "{s:?}");
}

#[tokio::test]
async fn retry_after_on_503_takes_a_backend_out_for_that_long() {
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let pausing = {
        let answered = answered.clone();
        TestBackend::start(move |_| {
            let first = answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
            async move {
                if first {
                    http::Response::builder()
                        .status(503)
                        .header("retry-after", "1")
                        .body(full(""))
                        .unwrap()
                } else {
                    http::Response::new(full("pausing"))
                }
            }
        })
        .await
    };
    let other = TestBackend::replying("other").await;
    let lb = Sluice::over(&[pausing.url(), other.url()], "").await;
    let mut saw_503 = false;
    for _ in 0..2 {
        saw_503 |= lb.get("/").await.0 == StatusCode::SERVICE_UNAVAILABLE;
    }
    assert!(saw_503);
    assert_eq!(states(&lb)[0], "ejected");
    let started = std::time::Instant::now();
    let bodies = lb.get_many("/", 6).await;
    assert!(bodies.iter().all(|b| b == "other"), "{bodies:?}");
    wait_until(&lb, "the pause ends", |s| s[0] == "healthy").await;
    assert!(started.elapsed() >= Duration::from_millis(800));
    let bodies = lb.get_many("/", 4).await;
    assert!(bodies.iter().any(|b| b == "pausing"), "{bodies:?}");
}

#[tokio::test]
async fn pauses_asked_by_retry_after_respect_max_ejected_percent() {
    let busy = || {
        TestBackend::start(|_| async {
            http::Response::builder()
                .status(503)
                .header("retry-after", "60")
                .body(full("busy"))
                .unwrap()
        })
    };
    let (a, b) = (busy().await, busy().await);
    let lb = Sluice::over(
        &[a.url(), b.url()],
        "[upstream.web.outlier]\nmax_ejected_percent = 50",
    )
    .await;
    for _ in 0..4 {
        assert_eq!(lb.get("/").await.2, "busy", "a backend still answers");
    }
    let s = states(&lb);
    assert_eq!(s.iter().filter(|x| **x == "ejected").count(), 1, "{s:?}");
}

/// Issue #9: two backends refusing connections and one live, default settings, no
/// active checks. Unsent requests retry past the budget (SPEC §2), and unreachable
/// backends are ejected past `max_ejected_percent` while the live one serves.
#[tokio::test]
async fn refusing_backends_never_cost_a_client_a_502() {
    let live = TestBackend::replying("live").await;
    let (dead1, dead2) = (dead_addr().await, dead_addr().await);
    let lb = Sluice::over(
        &[
            format!("http://{dead1}"),
            format!("http://{dead2}"),
            live.url(),
        ],
        "",
    )
    .await;
    for i in 0..200 {
        let (status, _, body) = lb.get("/").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "live"),
            "request {i}"
        );
    }
    assert_eq!(states(&lb), ["ejected", "ejected", "healthy"]);
    let status = status_of(&lb);
    let backends = &status["upstreams"][0]["backends"];
    assert_eq!(backends[0]["id"], format!("{dead1}"));
    assert_eq!(backends[2]["failing"], false);

    // A fresh pool, hit with 1,000 requests at once before anything is ejected.
    let lb = Sluice::over(
        &[
            format!("http://{dead1}"),
            format!("http://{dead2}"),
            live.url(),
        ],
        "",
    )
    .await;
    let lb = std::sync::Arc::new(lb);
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let lb = lb.clone();
            tokio::spawn(async move { lb.get("/").await.0 })
        })
        .collect();
    let mut failed = 0;
    for t in tasks {
        if t.await.unwrap() != StatusCode::OK {
            failed += 1;
        }
    }
    assert_eq!(failed, 0, "of 1,000 concurrent GETs");
}

/// The wrk scenario of issue #9: steady concurrent load while one refusing backend is
/// already ejected and another starts refusing: not one failed request, and `/status`
/// does not call the dead backend healthy.
#[tokio::test]
async fn steady_load_through_a_dying_pool_loses_nothing() {
    let live = TestBackend::replying("live").await;
    let dead = dead_addr().await;
    let dying = TestBackend::replying("dying").await;
    // Ejections long enough to outlast the test on a busy machine.
    let lb = Sluice::over(
        &[format!("http://{dead}"), dying.url(), live.url()],
        "[upstream.web.outlier]\nejection = \"5m\"",
    )
    .await;
    for _ in 0..20 {
        assert_eq!(lb.get("/").await.0, StatusCode::OK);
    }
    assert_eq!(states(&lb), ["ejected", "healthy", "healthy"]);
    let lb = std::sync::Arc::new(lb);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (lb, stop) = (lb.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u32, 0u32);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match lb.get("/").await.0 {
                        StatusCode::OK => ok += 1,
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    // Under load, the second backend dies: it refuses from now on.
    lb.get("/").await;
    drop(dying);
    wait_until(&lb, "the dying backend is ejected", |s| s[1] == "ejected").await;
    for _ in 0..200 {
        lb.get("/").await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for w in workers {
        let (o, f) = w.await.unwrap();
        ok += o;
        failed += f;
    }
    assert!(ok > 200, "{ok} requests served");
    assert_eq!(failed, 0, "of {} requests", ok + failed);
    assert_eq!(states(&lb), ["ejected", "ejected", "healthy"]);
}

/// A backend past its failure threshold that the cap keeps in rotation is shown as
/// failing beside its state, until it answers well again.
#[tokio::test]
async fn a_backend_the_cap_keeps_is_shown_failing() {
    let bad = TestBackend::status(503).await;
    let good = TestBackend::replying("good").await;
    let lb = Sluice::over(
        &[bad.url(), good.url()],
        "[upstream.web.outlier]\nconsecutive_failures = 2\nmax_ejected_percent = 40\n[upstream.web.retry]\nattempts = 0",
    )
    .await;
    for _ in 0..8 {
        lb.get("/").await;
    }
    let status = status_of(&lb);
    let b = &status["upstreams"][0]["backends"];
    assert_eq!(b[0]["state"], "healthy");
    assert_eq!(b[0]["failing"], true, "{status}");
    assert_eq!(b[1]["failing"], false);
}
