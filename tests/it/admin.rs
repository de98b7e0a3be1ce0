//! Admin API basics (SPEC §5): health, status JSON, drain/enable, reload errors.

use http::StatusCode;

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
    lb.shared
        .apply(sluice::config::parse_str(&text, std::path::Path::new("t.toml")).unwrap());
    assert_eq!(
        lb.get("/").await.0,
        StatusCode::OK,
        "the reload undid the drain"
    );
}
