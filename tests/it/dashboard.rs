//! The dashboard in a real browser (SPEC §5 `GET /`, issue #15): headless Chromium loads
//! the page while traffic flows, sees the numbers and charts move, sorts and folds an
//! upstream of 50 backends, drains a backend with the admin token, and saves
//! screenshots.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::browser::Browser;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_moves_with_traffic_and_drains_a_backend() {
    let web = [
        TestBackend::replying("a").await,
        TestBackend::replying("b").await,
        TestBackend::replying("c").await,
    ];
    // 50 backends nobody calls (no health checks: all in rotation), weights 1..50.
    let many: Vec<String> = (1..=50)
        .map(|i| format!("{{ url = \"127.0.0.1:{}\", weight = {i} }}", 20000 + i))
        .collect();
    let lb = Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\
         [admin]\naddress = \"127.0.0.1:0\"\ntoken = \"s3cret\"\n\
         [[route]]\npath_prefix = \"/many\"\nupstream = \"many\"\n\
         [[route]]\npath_prefix = \"/\"\nupstream = \"web\"\n\
         [upstream.web]\nbackends = [{}]\n\
         [upstream.many]\nbackends = [{}]\n",
        web.iter()
            .map(|b| format!("{{ url = \"{}\" }}", b.url()))
            .collect::<Vec<_>>()
            .join(", "),
        many.join(", ")
    ))
    .await;
    let admin = lb.admin.expect("admin address");

    // Traffic until the test ends: a request every few milliseconds.
    let flowing = Arc::new(AtomicBool::new(true));
    let traffic = {
        let (flowing, url) = (Arc::clone(&flowing), lb.url("/"));
        tokio::spawn(async move {
            let c = client();
            while flowing.load(Ordering::Relaxed) {
                let req = http::Request::get(&url).body(Default::default()).unwrap();
                let _ = send_with(&c, req).await;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };

    let browser = Browser::start().await;
    browser.goto(&format!("http://{admin}/")).await;

    // Totals: requests per second above zero, open connections counted.
    browser
        .wait_for(
            "requests per second",
            "return parseFloat(document.getElementById('total-rps').textContent) > 0",
        )
        .await;
    browser
        .wait_for(
            "a p99",
            "return document.getElementById('total-p99').textContent.endsWith('ms')",
        )
        .await;
    // The chart and a backend's request count move while traffic flows.
    let chart = "return document.querySelector('svg[data-chart=\"web-rps\"] polyline').getAttribute('points')";
    let count =
        "return document.querySelector('tr[data-backend^=\"web/\"] td:nth-child(9)').textContent";
    let (points, requests) = (browser.js(chart).await, browser.js(count).await);
    browser
        .wait_for(
            "the chart moving",
            &format!("return document.querySelector('svg[data-chart=\"web-rps\"] polyline').getAttribute('points') !== {points}"),
        )
        .await;
    browser
        .wait_for(
            "the request count moving",
            &format!("return document.querySelector('tr[data-backend^=\"web/\"] td:nth-child(9)').textContent !== {requests}"),
        )
        .await;
    // Listeners and routes.
    let routes = browser
        .js("return document.getElementById('routes').textContent")
        .await;
    assert!(routes.as_str().unwrap().contains("/many"), "{routes}");
    let listeners = browser
        .js("return document.getElementById('listeners').textContent")
        .await;
    assert!(
        listeners.as_str().unwrap().contains(&lb.addr.to_string()),
        "{listeners}"
    );

    // 50 backends: sorted by weight (heaviest first), then folded away.
    browser
        .click("th[data-sort=\"weight\"][data-upstream=\"many\"]")
        .await;
    let first = browser
        .wait_for(
            "the heaviest backend first",
            "const r = document.querySelector('tr[data-backend^=\"many/\"]'); return r && r.children[1].textContent === '50' && r.dataset.backend",
        )
        .await;
    assert_eq!(first, "many/127.0.0.1:20050");
    browser
        .click("details[data-upstream=\"many\"] > summary")
        .await;
    let ticks = browser.js("return window.sluiceTicks").await;
    browser
        .wait_for(
            "a refresh after folding",
            &format!("return window.sluiceTicks > {ticks} + 1"),
        )
        .await;
    let open = browser
        .js("return document.querySelector('details[data-upstream=\"many\"]').open")
        .await;
    assert_eq!(
        open, false,
        "a folded upstream stays folded across refreshes"
    );

    // Drain without the token: told to enter it. With it: the state changes.
    let target = web[1].addr.to_string();
    let button =
        format!("button[data-action=\"drain\"][data-upstream=\"web\"][data-id=\"{target}\"]");
    browser.click(&button).await;
    browser
        .wait_for(
            "the token request",
            "return document.getElementById('msg').textContent.includes('token')",
        )
        .await;
    browser.type_into("#token", "s3cret").await;
    browser.click(&button).await;
    let state = format!(
        "return document.querySelector('tr[data-backend=\"web/{target}\"] [data-state]').textContent === 'draining'"
    );
    browser.wait_for("the backend draining", &state).await;
    let status = lb.status().await;
    let drained = status["upstreams"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == target.as_str())
        .unwrap()["state"]
        .clone();
    assert_eq!(drained, "draining");

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    browser.screenshot(&shot).await;
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "a real picture"
    );

    flowing.store(false, Ordering::Relaxed);
    let _ = traffic.await;
    browser.close().await;
}
