//! Reasons in `/status` (SPEC §9): every backend out of rotation says since when and
//! why, in the admin API's own rendering; one in rotation has `"reason": null`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use http::StatusCode;

use crate::support::*;

/// Backend `i` of the first upstream in `/status`, once `ready` holds for it.
async fn backend_when(
    lb: &Sluice,
    i: usize,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let status: serde_json::Value =
                serde_json::from_str(&sluice::admin::status_json(&lb.state)).unwrap();
            let b = status["upstreams"][0]["backends"][i].clone();
            if ready(&b) {
                return b;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("backend {i} never: {what}"))
}

fn is_rfc3339(v: &serde_json::Value) -> bool {
    v.as_str()
        .is_some_and(|s| humantime::parse_rfc3339(s).is_ok())
}

#[tokio::test]
async fn a_failing_check_is_the_reason_and_the_last_probe_is_shown() {
    let health = Arc::new(AtomicU16::new(200));
    let checked = {
        let health = health.clone();
        TestBackend::start(move |_| {
            let code = health.load(Ordering::SeqCst);
            async move {
                http::Response::builder()
                    .status(code)
                    .body(full(""))
                    .unwrap()
            }
        })
        .await
    };
    let lb = Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [upstream.web]\nbackends = [{{ url = \"{}\", weight = 3 }}]\n\
         [upstream.web.health]\npath = \"/healthz\"\ninterval = \"30ms\"\nrise = 2\nfall = 2\n",
        checked.url()
    ))
    .await;
    let b = backend_when(&lb, 0, "probed", |b| b["check"]["ok"] == true).await;
    assert_eq!(b["reason"], serde_json::Value::Null, "{b}");
    assert_eq!(b["check"]["detail"], "GET /healthz answered 200");
    assert!(is_rfc3339(&b["check"]["at"]), "{b}");
    assert_eq!(b["effective_weight"], 3.0);

    health.store(503, Ordering::SeqCst);
    let b = backend_when(&lb, 0, "unhealthy", |b| b["state"] == "unhealthy").await;
    let reason = &b["reason"];
    assert_eq!(
        reason["why"], "2 failed checks in a row: GET /healthz answered 503, expected 200-399",
        "{b}"
    );
    assert!(is_rfc3339(&reason["since"]), "{b}");
    assert_eq!(reason["check"]["ok"], false, "{b}");

    health.store(200, Ordering::SeqCst);
    // Between verdicts, the probe says how far the backend is from rising.
    let b = backend_when(&lb, 0, "on its way up", |b| {
        b["state"] == "unhealthy" && b["check"]["ok"] == true
    })
    .await;
    assert_eq!(
        b["check"]["progress"], "1 of 2 passed checks to rise",
        "{b}"
    );
    let b = backend_when(&lb, 0, "healthy again", |b| b["state"] == "healthy").await;
    assert_eq!(b["reason"], serde_json::Value::Null, "{b}");
}

#[tokio::test]
async fn an_ejection_names_its_cause_and_its_end() {
    let bad = TestBackend::status(502).await;
    let good = TestBackend::replying("good").await;
    let lb = Sluice::over(
        &[bad.url(), good.url()],
        "[upstream.web.outlier]\nconsecutive_failures = 2\nejection = \"5m\"",
    )
    .await;
    for _ in 0..4 {
        lb.get("/").await;
    }
    let b = backend_when(&lb, 0, "ejected", |b| b["state"] == "ejected").await;
    let reason = &b["reason"];
    let why = reason["why"].as_str().unwrap();
    assert!(
        why.starts_with("ejected after 2 consecutive failures (answered 502) until "),
        "{b}"
    );
    assert_eq!(reason["ejections"], 1, "{b}");
    let since = humantime::parse_rfc3339(reason["since"].as_str().unwrap()).unwrap();
    let until = humantime::parse_rfc3339(reason["until"].as_str().unwrap()).unwrap();
    assert_eq!(
        until.duration_since(since).unwrap(),
        Duration::from_secs(300)
    );
    assert!(reason.get("check").is_none(), "no active checks: {b}");
    assert!(b.get("check").is_none(), "{b}");
}

#[tokio::test]
async fn an_unreachable_backend_is_ejected_for_its_connect_error() {
    let dead = dead_addr().await;
    let good = TestBackend::replying("good").await;
    let lb = Sluice::over(
        &[format!("http://{dead}"), good.url()],
        "[upstream.web.outlier]\nconsecutive_failures = 1\nejection = \"5m\"",
    )
    .await;
    for _ in 0..2 {
        assert_eq!(lb.get("/").await.0, StatusCode::OK, "retried elsewhere");
    }
    let b = backend_when(&lb, 0, "ejected", |b| b["state"] == "ejected").await;
    let why = b["reason"]["why"].as_str().unwrap();
    assert!(
        why.starts_with("ejected after 1 consecutive failures (connect"),
        "{b}"
    );
    assert!(why.contains("refused"), "{b}");
}

#[tokio::test]
async fn a_pause_asked_with_retry_after_is_the_reason() {
    let pausing = TestBackend::start(|_| async {
        http::Response::builder()
            .status(503)
            .header("retry-after", "120")
            .body(full(""))
            .unwrap()
    })
    .await;
    let other = TestBackend::replying("other").await;
    let lb = Sluice::over(&[pausing.url(), other.url()], "").await;
    for _ in 0..2 {
        lb.get("/").await;
    }
    let b = backend_when(&lb, 0, "paused", |b| b["state"] == "ejected").await;
    let why = b["reason"]["why"].as_str().unwrap();
    assert!(
        why.starts_with("asked for a pause: answered 503 with Retry-After; out until "),
        "{b}"
    );
    assert!(b["reason"].get("ejections").is_none(), "not a failure: {b}");
}

#[tokio::test]
async fn a_drain_says_who_made_it_and_enable_clears_it() {
    let a = TestBackend::replying("a").await;
    let lb = Sluice::over(&[a.url()], "[admin]\naddress = \"127.0.0.1:0\"").await;
    let id = a.addr.to_string();
    let (code, _) = lb
        .admin("POST", &format!("/upstreams/web/backends/{id}/drain"))
        .await;
    assert_eq!(code, StatusCode::OK);
    let b = backend_when(&lb, 0, "draining", |b| b["state"] == "draining").await;
    assert_eq!(b["reason"]["why"], "drained through the admin API", "{b}");
    assert!(is_rfc3339(&b["reason"]["since"]), "{b}");
    lb.admin("POST", &format!("/upstreams/web/backends/{id}/enable"))
        .await;
    let b = backend_when(&lb, 0, "back", |b| b["state"] == "healthy").await;
    assert_eq!(b["reason"], serde_json::Value::Null, "{b}");
}

#[tokio::test]
async fn a_backend_added_while_running_shows_its_slow_start() {
    let a = TestBackend::replying("a").await;
    let b = TestBackend::replying("b").await;
    let lb = Sluice::over(
        &[a.url()],
        "slow_start = \"1h\"\n[admin]\naddress = \"127.0.0.1:0\"",
    )
    .await;
    let (code, _) = lb
        .admin_with(
            "POST",
            "/upstreams/web/backends",
            &format!("{{\"url\": \"{}\", \"weight\": 2}}", b.url()),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);
    let added = backend_when(&lb, 1, "listed", |b| b["weight"] == 2).await;
    let w = added["effective_weight"].as_f64().unwrap();
    assert!(
        w > 0.0 && w < 0.01,
        "an hour's ramp has barely begun: {added}"
    );
    assert_eq!(
        added["reason"],
        serde_json::Value::Null,
        "in rotation: {added}"
    );
    let first = backend_when(&lb, 0, "listed", |_| true).await;
    assert_eq!(
        first["effective_weight"], 1.0,
        "present from the start: {first}"
    );
}
