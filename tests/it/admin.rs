//! Admin API basics (SPEC §5): health, status JSON, drain/enable, reload errors.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use http_body_util::Full;
use tokio::sync::Notify;

use crate::support::*;

#[tokio::test]
async fn healthz_and_status_report_live_counters() {
    let a = TestBackend::replying("a").await;
    let b = TestBackend::replying("b").await;
    let lb = Sluice::start(&format!(
        r#"[[listener]]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[upstream.api]
strategy = "least_conn"
backends = [{{ url = "{}", weight = 3 }}, {{ url = "{}", backup = true }}]
"#,
        a.url(),
        b.url()
    ))
    .await;
    assert_eq!(
        lb.admin("GET", "/healthz").await,
        (StatusCode::OK, "ok\n".into())
    );
    lb.get_many("/", 5).await;
    let (s, body) = lb.admin("GET", "/status").await;
    assert_eq!(s, StatusCode::OK);
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["version"], env!("CARGO_PKG_VERSION"));
    let u = &j["upstreams"][0];
    assert_eq!(u["name"], "api");
    assert_eq!(u["strategy"], "least_conn");
    let be = &u["backends"][0];
    assert_eq!(be["url"], a.url());
    assert_eq!(be["weight"], 3);
    assert_eq!(be["backup"], false);
    assert_eq!(be["state"], "healthy");
    assert_eq!(be["inflight"], 0);
    assert_eq!(be["requests"], 5);
    assert_eq!(be["failures"], 0);
    assert!(be["latency_ewma_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(u["backends"][1]["backup"], true);
    assert_eq!(u["backends"][1]["requests"], 0);

    lb.admin("POST", &format!("/upstreams/api/backends/{}/drain", a.addr))
        .await;
    let (_, body) = lb.admin("GET", "/status").await;
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["upstreams"][0]["backends"][0]["state"], "draining");
}

#[tokio::test]
async fn failures_are_counted_and_unknown_names_are_404() {
    let dead = dead_addr().await;
    let lb = Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n[upstream.web]\nbackends = [{{ url = \"http://{dead}\" }}]\n"
    ))
    .await;
    assert_eq!(lb.get("/").await.0, StatusCode::BAD_GATEWAY);
    let (_, body) = lb.admin("GET", "/status").await;
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    // The first try and the two default retries of a connect failure (the only
    // backend is tried again when there is no other).
    assert_eq!(j["upstreams"][0]["backends"][0]["failures"], 3);
    assert_eq!(j["upstreams"][0]["backends"][0]["requests"], 3);
    assert_eq!(
        lb.admin("POST", "/upstreams/nope/backends/1.2.3.4:5/drain")
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        lb.admin("POST", "/upstreams/web/backends/1.2.3.4:5/drain")
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(lb.admin("GET", "/nothing").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn dashboard_is_self_contained_html() {
    let a = TestBackend::replying("a").await;
    let lb = Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n[upstream.web]\nbackends = [{{ url = \"{}\" }}]\n",
        a.url()
    ))
    .await;
    let (s, body) = lb.admin("GET", "/").await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.contains("<html") && body.contains("status"));
    assert!(
        !body.contains("http://") && !body.contains("https://"),
        "no external assets"
    );
}

#[tokio::test]
async fn a_token_guards_mutating_calls_only() {
    let a = TestBackend::replying("a").await;
    let lb = Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"s3cret\"\n[upstream.web]\nbackends = [{{ url = \"{}\" }}]\n",
        a.url()
    ))
    .await;
    let drain = format!("/upstreams/web/backends/{}/drain", a.addr);
    assert_eq!(lb.admin("POST", &drain).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(lb.admin("GET", "/status").await.0, StatusCode::OK);
    let admin = lb.admin.unwrap();
    for (auth, want) in [
        ("Bearer wrong", StatusCode::UNAUTHORIZED),
        ("Bearer s3cret", StatusCode::OK),
    ] {
        let req = http::Request::post(format!("http://{admin}{drain}"))
            .header("authorization", auth)
            .body(Default::default())
            .unwrap();
        assert_eq!(send_with(&client(), req).await.0, want, "{auth}");
    }
    assert_eq!(
        lb.get("/").await.0,
        StatusCode::SERVICE_UNAVAILABLE,
        "drained by the authorised call"
    );
}

#[tokio::test]
async fn admin_changes_last_until_the_next_reload() {
    let a = TestBackend::replying("a").await;
    let text = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n[upstream.web]\nbackends = [{{ url = \"{}\" }}]\n",
        a.url()
    );
    let lb = Sluice::start(&text).await;
    lb.admin("POST", &format!("/upstreams/web/backends/{}/drain", a.addr))
        .await;
    assert_eq!(lb.get("/").await.0, StatusCode::SERVICE_UNAVAILABLE);
    lb.state
        .apply(sluice::config::parse_str(&text, std::path::Path::new("t.toml")).unwrap());
    assert_eq!(
        lb.get("/").await.0,
        StatusCode::OK,
        "the reload undid the drain"
    );
}

fn web_with_admin(backends: &[String]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ url = \"{b}\" }}"))
        .collect();
    format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n[upstream.web]\nbackends = [{}]\n",
        list.join(", ")
    )
}

fn status_of(body: &str) -> Vec<(String, u64, String)> {
    let j: serde_json::Value = serde_json::from_str(body).unwrap();
    j["upstreams"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["url"].as_str().unwrap().to_owned(),
                b["weight"].as_u64().unwrap(),
                b["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn backends_are_added_and_removed_through_the_api() {
    let a = TestBackend::replying("a").await;
    let b = TestBackend::replying("b").await;
    let text = web_with_admin(&[a.url()]);
    let lb = Sluice::start(&text).await;
    let add = |body: String| {
        let lb = &lb;
        async move {
            lb.admin_with("POST", "/upstreams/web/backends", &body)
                .await
        }
    };

    let (s, msg) = add(format!(r#"{{"url": "{}", "weight": 3}}"#, b.url())).await;
    assert_eq!(
        (s, msg.as_str()),
        (StatusCode::CREATED, &*format!("added: {}\n", b.addr))
    );
    let (_, body) = lb.admin("GET", "/status").await;
    assert_eq!(
        status_of(&body),
        vec![
            (a.url(), 1, "healthy".into()),
            (b.url(), 3, "healthy".into())
        ]
    );
    let bodies = lb.get_many("/", 8).await;
    assert_eq!(
        (count(&bodies, "a"), count(&bodies, "b")),
        (2, 6),
        "the added backend takes its 3:1 share: {bodies:?}"
    );

    // Refusals: each a clear status, the running set unchanged.
    let c = TestBackend::replying("c").await;
    for (body, want) in [
        (format!(r#"{{"url": "{}"}}"#, b.url()), StatusCode::CONFLICT),
        ("{\"url\": ".to_owned(), StatusCode::BAD_REQUEST),
        (r#"{"weight": 2}"#.to_owned(), StatusCode::BAD_REQUEST),
        (
            format!(r#"{{"url": "{}", "wieght": 2}}"#, c.url()),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!(r#"{{"url": "{}", "weight": 0}}"#, c.url()),
            StatusCode::BAD_REQUEST,
        ),
        (
            r#"{"url": "ftp://127.0.0.1:21"}"#.to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        (
            r#"{"url": "127.0.0.1"}"#.to_owned(),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        assert_eq!(add(body.clone()).await.0, want, "{body}");
    }
    assert_eq!(
        lb.admin_with(
            "POST",
            "/upstreams/nope/backends",
            &format!(r#"{{"url": "{}"}}"#, c.url())
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    let (_, body) = lb.admin("GET", "/status").await;
    assert_eq!(status_of(&body).len(), 2);

    // Removal: out of rotation when the answer comes.
    let (s, msg) = lb
        .admin("DELETE", &format!("/upstreams/web/backends/{}", a.addr))
        .await;
    assert_eq!(
        (s, msg.as_str()),
        (StatusCode::OK, &*format!("removed: {}\n", a.addr))
    );
    let bodies = lb.get_many("/", 6).await;
    assert_eq!(count(&bodies, "b"), 6, "{bodies:?}");
    for (path, want) in [
        (
            format!("/upstreams/web/backends/{}", a.addr),
            StatusCode::NOT_FOUND,
        ),
        (
            "/upstreams/nope/backends/1.2.3.4:5".to_owned(),
            StatusCode::NOT_FOUND,
        ),
    ] {
        assert_eq!(lb.admin("DELETE", &path).await.0, want, "{path}");
    }
    // The last one too: the upstream is then empty, and answers 503.
    let last = format!("/upstreams/web/backends/{}", b.addr);
    assert_eq!(lb.admin("DELETE", &last).await.0, StatusCode::OK);
    assert_eq!(lb.get("/").await.0, StatusCode::SERVICE_UNAVAILABLE);
    let (_, body) = lb.admin("GET", "/status").await;
    assert_eq!(status_of(&body), vec![]);

    // Like the other admin changes, these last until the next reload.
    lb.state
        .apply(sluice::config::parse_str(&text, std::path::Path::new("t.toml")).unwrap());
    let bodies = lb.get_many("/", 3).await;
    assert_eq!(count(&bodies, "a"), 3, "{bodies:?}");
}

#[tokio::test]
async fn an_edit_keeps_drains_and_counters() {
    let a = TestBackend::replying("a").await;
    let b = TestBackend::replying("b").await;
    let c = TestBackend::replying("c").await;
    let lb = Sluice::start(&web_with_admin(&[a.url(), b.url()])).await;
    lb.get_many("/", 4).await;
    lb.admin("POST", &format!("/upstreams/web/backends/{}/drain", a.addr))
        .await;
    let (s, _) = lb
        .admin_with(
            "POST",
            "/upstreams/web/backends",
            &format!(r#"{{"url": "{}"}}"#, c.url()),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let j = lb.status().await;
    let be = &j["upstreams"][0]["backends"];
    assert_eq!(be[0]["state"], "draining", "the drain outlived the edit");
    assert_eq!(be[0]["requests"], 2, "counters carry over");
    assert_eq!(
        be[2]["weight"], 1,
        "weight is optional when adding (SPEC §5)"
    );
    let bodies = lb.get_many("/", 10).await;
    assert_eq!(count(&bodies, "a"), 0, "{bodies:?}");
}

#[tokio::test]
async fn a_removed_backend_finishes_its_requests() {
    let gate = Arc::new(Notify::new());
    let slow = TestBackend::held(gate.clone(), "finished").await;
    let other = TestBackend::replying("other").await;
    let text = web_with_admin(&[slow.url(), other.url()]) + "strategy = \"first\"\n";
    let lb = Arc::new(Sluice::start(&text).await);
    let pending = {
        let lb = lb.clone();
        tokio::spawn(async move { lb.get("/").await })
    };
    slow.wait_hits(1, "the first request reached the slow backend")
        .await;
    let (s, _) = lb
        .admin("DELETE", &format!("/upstreams/web/backends/{}", slow.addr))
        .await;
    assert_eq!(s, StatusCode::OK, "answered while its request is in flight");
    assert!(!pending.is_finished());
    let bodies = lb.get_many("/", 4).await;
    assert_eq!(count(&bodies, "other"), 4, "{bodies:?}");
    gate.notify_waiters();
    let (s, _, body) = pending.await.unwrap();
    assert_eq!((s, body.as_str()), (StatusCode::OK, "finished"));
}

#[tokio::test]
async fn a_request_in_flight_does_not_retry_onto_a_removed_backend() {
    // `c` holds the first request until released, then answers 503 (retried; with
    // `a` gone, on `c` again, which answers at once); `a` would answer 200 at once,
    // but is removed while that first request is in flight.
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let c = TestBackend::start(move |_req| {
        let (g, first) = (g.clone(), first.clone());
        async move {
            if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                g.notified().await;
            }
            http::Response::builder()
                .status(503)
                .body(full("c"))
                .unwrap()
        }
    })
    .await;
    let a = TestBackend::replying("a").await;
    let text = web_with_admin(&[c.url(), a.url()])
        + "strategy = \"first\"\n[upstream.web.retry]\non = [\"503\"]\n";
    let lb = Arc::new(Sluice::start(&text).await);
    let held = {
        let lb = lb.clone();
        tokio::spawn(async move { lb.get("/held").await })
    };
    c.wait_hits(1, "the request reached c").await;
    let (s, _) = lb
        .admin("DELETE", &format!("/upstreams/web/backends/{}", a.addr))
        .await;
    assert_eq!(s, StatusCode::OK);
    gate.notify_waiters();
    let (s, _, body) = held.await.unwrap();
    assert_eq!((s, body.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "c"));
    assert_eq!(a.hits(), 0, "the retry went to the removed backend");
}

/// Issue #9: `/status` shows each backend's id (the form admin paths take) beside its
/// URL; admin paths take the URL form too; a wrong id gets a 404 naming the right ones.
#[tokio::test]
async fn backends_are_named_by_id_or_url_and_a_wrong_one_is_told_the_choices() {
    let a = TestBackend::replying("a").await;
    let b = TestBackend::replying("b").await;
    let lb = Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [upstream.web]\nbackends = [{{ url = \"{}\" }}, {{ url = \"{}\" }}]\n",
        a.url(),
        b.url()
    ))
    .await;
    let j = lb.status().await;
    let first = &j["upstreams"][0]["backends"][0];
    assert_eq!(first["id"], a.addr.to_string());
    assert_eq!(first["url"], a.url());
    // The URL exactly as /status shows it, and percent-encoded.
    let (s, _) = lb
        .admin(
            "POST",
            &format!("/upstreams/web/backends/{}/drain", a.url()),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        lb.status().await["upstreams"][0]["backends"][0]["state"],
        "draining"
    );
    let encoded = a.url().replace(':', "%3A").replace('/', "%2F");
    let (s, _) = lb
        .admin("POST", &format!("/upstreams/web/backends/{encoded}/enable"))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        lb.status().await["upstreams"][0]["backends"][0]["state"],
        "healthy"
    );
    let (s, body) = lb
        .admin("POST", "/upstreams/web/backends/127.0.0.1:1/drain")
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(
        body.contains(&a.addr.to_string()) && body.contains(&b.addr.to_string()),
        "{body}"
    );
    let (s, body) = lb
        .admin("DELETE", &format!("/upstreams/web/backends/{}", b.url()))
        .await;
    assert_eq!(
        (s, body),
        (StatusCode::OK, format!("removed: {}\n", b.addr))
    );
}

/// SPEC §3 (issue #9): a backend added while active checks run is probed at once and
/// takes requests only after that first probe passes.
#[tokio::test]
async fn a_backend_added_under_active_checks_waits_for_its_first_probe() {
    let old = TestBackend::replying("old").await;
    let gate = Arc::new(Notify::new());
    let new = {
        let gate = gate.clone();
        TestBackend::start(move |req| {
            let gate = gate.clone();
            async move {
                if req.uri().path() == "/health" {
                    gate.notified().await;
                }
                http::Response::new(full("new"))
            }
        })
        .await
    };
    let lb = Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [upstream.web]\nbackends = [{{ url = \"{}\" }}]\n\
         [upstream.web.health]\npath = \"/health\"\ninterval = \"1h\"\ntimeout = \"30s\"\n",
        old.url()
    ))
    .await;
    let (s, _) = lb
        .admin_with(
            "POST",
            "/upstreams/web/backends",
            &format!("{{\"url\": \"{}\"}}", new.url()),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    // The probe was sent at once (it waits on the gate); meanwhile no request goes there.
    new.wait_hits(1, "the first probe").await;
    assert_eq!(
        lb.status().await["upstreams"][0]["backends"][1]["state"],
        "unhealthy"
    );
    for body in lb.get_many("/", 10).await {
        assert_eq!(body, "old");
    }
    assert_eq!(new.hits(), 1, "only the probe");
    gate.notify_one();
    tokio::time::timeout(DEADLINE, async {
        while lb.status().await["upstreams"][0]["backends"][1]["state"] != "healthy" {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("healthy after its first probe passed");
    let bodies = lb.get_many("/", 10).await;
    assert!(bodies.iter().any(|b| b == "new"), "{bodies:?}");
}

/// What the dashboard reads besides the backends: answers by status class, open
/// connections, listeners, routes, and the last five minutes once a second.
#[tokio::test]
async fn status_and_history_carry_what_the_dashboard_shows() {
    let a = TestBackend::replying("a").await;
    let lb = Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nhost = \"*.example.com\"\npath_prefix = \"/api\"\nupstream = \"web\"\n\
         [upstream.web]\nbackends = [{{ url = \"{}\" }}]\n",
        a.url()
    ))
    .await;
    let s = lb.status().await;
    assert_eq!(s["token_required"], false);
    assert_eq!(s["listeners"][0]["address"], lb.addr.to_string());
    assert_eq!(s["listeners"][0]["tls"], false);
    assert_eq!(s["routes"][0]["host"], "*.example.com");
    assert_eq!(s["routes"][0]["path_prefix"], "/api");
    assert_eq!(s["routes"][0]["upstream"], "web");
    // Traffic for a few seconds: 200s and 404s (no route), spread over samples.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let req = http::Request::get(lb.url("/api/x"))
            .header("host", "a.example.com")
            .body(Full::default())
            .unwrap();
        assert_eq!(lb.send(req).await.0, StatusCode::OK);
        let (_, history) = lb.admin("GET", "/status/history").await;
        let h: serde_json::Value = serde_json::from_str(&history).unwrap();
        let rps = h["upstreams"]["web"]["rps"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if rps.iter().any(|v| v.as_f64().unwrap_or(0.0) > 0.0) {
            assert_eq!(h["interval_ms"], 1000);
            assert_eq!(h["t"].as_array().unwrap().len(), rps.len());
            assert!(
                h["total"]["p99_ms"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|v| v.is_f64())
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no rate in {history}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = lb.status().await;
    let web = &s["upstreams"][0];
    assert!(web["responses"]["2xx"].as_u64().unwrap() > 0, "{web}");
    assert_eq!(
        web["backends"][0]["responses"]["2xx"],
        web["responses"]["2xx"]
    );
    assert_eq!(web["responses"]["5xx"], 0);
    assert!(s["connections"].as_u64().is_some());
}
