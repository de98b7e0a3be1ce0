//! Discovery from a JSON file (SPEC §6): the set follows the file within a second, a
//! backend that stays keeps its state, an invalid file keeps the last set (`stale`), an
//! empty one empties the upstream (503), and admin drains survive refreshes.

use http::StatusCode;

use crate::support::process::{replace_file as write, temp_config};
use crate::support::upstream::{ids, wait_for};
use crate::support::*;

fn entries(backends: &[&TestBackend]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{\"url\": \"{}\"}}", b.addr))
        .collect();
    format!("[{}]", list.join(", "))
}

async fn discovered(file: &std::path::Path) -> Sluice {
    Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [upstream.web.discovery]\nsource = \"file\"\npath = \"{}\"\n",
        file.display()
    ))
    .await
}

#[tokio::test]
async fn the_set_follows_the_file_and_survivors_keep_their_state() {
    let (a, b) = (
        TestBackend::replying("a").await,
        TestBackend::replying("b").await,
    );
    let file = temp_config("file-follow.json", &entries(&[&a]));
    let lb = discovered(&file).await;
    let u = wait_for(&lb, "first answer", |u| u["discovery"]["state"] == "ok").await;
    assert_eq!(ids(&u), [a.addr.to_string()]);
    assert_eq!(u["discovery"]["source"], "file");
    assert!(u["discovery"]["updated"].is_string(), "{u}");
    assert_eq!(lb.get_many("/", 4).await, ["a"; 4]);

    let started = std::time::SystemTime::now();
    write(&file, &entries(&[&b, &a]));
    let u = wait_for(&lb, "both", |u| {
        u["backends"].as_array().unwrap().len() == 2
    })
    .await;
    assert!(
        applied_after(&u, started) < std::time::Duration::from_secs(1),
        "applied within 1 s: {u}"
    );
    // Listed by id whatever the file's order; `a` kept its counters.
    let mut want = vec![a.addr.to_string(), b.addr.to_string()];
    want.sort();
    assert_eq!(ids(&u), want);
    let a_status = u["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == a.addr.to_string())
        .unwrap()
        .clone();
    assert_eq!(a_status["requests"], 4, "{a_status}");
    let bodies = lb.get_many("/", 6).await;
    assert!(
        count(&bodies, "a") > 0 && count(&bodies, "b") > 0,
        "{bodies:?}"
    );

    write(&file, &entries(&[&b]));
    wait_for(&lb, "a gone", |u| ids(u) == [b.addr.to_string()]).await;
    assert_eq!(lb.get_many("/", 3).await, ["b"; 3]);
}

#[tokio::test]
async fn an_invalid_file_keeps_the_last_set_and_an_empty_one_empties_it() {
    let a = TestBackend::replying("a").await;
    let file = temp_config("file-invalid.json", &entries(&[&a]));
    let lb = discovered(&file).await;
    wait_for(&lb, "first answer", |u| u["discovery"]["state"] == "ok").await;

    write(&file, "[{\"url\": ");
    let u = wait_for(&lb, "stale", |u| u["discovery"]["state"] == "stale").await;
    assert!(
        u["discovery"]["error"]
            .as_str()
            .unwrap()
            .contains("not JSON"),
        "{u}"
    );
    assert_eq!(ids(&u), [a.addr.to_string()], "the last set stays");
    assert_eq!(lb.get("/").await.0, StatusCode::OK);
    assert_eq!(
        lb.metric("sluice_discovery_stale{upstream=\"web\"}").await,
        Some(1.0)
    );

    write(&file, "[]");
    let u = wait_for(&lb, "empty", |u| u["discovery"]["state"] == "ok").await;
    assert!(ids(&u).is_empty());
    assert_eq!(lb.get("/").await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        lb.metric("sluice_discovery_stale{upstream=\"web\"}").await,
        Some(0.0)
    );
    assert_eq!(
        lb.metric("sluice_upstream_backends{upstream=\"web\"}")
            .await,
        Some(0.0)
    );
    assert!(
        lb.metric("sluice_discovery_updates_total{upstream=\"web\"}")
            .await
            >= Some(2.0)
    );
    assert!(
        lb.metric("sluice_discovery_errors_total{upstream=\"web\"}")
            .await
            >= Some(1.0)
    );
}

#[tokio::test]
async fn admin_edits_are_refused_and_drains_survive_refreshes() {
    let (a, b) = (
        TestBackend::replying("a").await,
        TestBackend::replying("b").await,
    );
    let file = temp_config("file-admin.json", &entries(&[&a]));
    let lb = discovered(&file).await;
    wait_for(&lb, "first answer", |u| u["discovery"]["state"] == "ok").await;

    let (s, body) = lb
        .admin_with(
            "POST",
            "/upstreams/web/backends",
            &format!("{{\"url\": \"{}\"}}", b.addr),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    let (s, _) = lb
        .admin("DELETE", &format!("/upstreams/web/backends/{}", a.addr))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);

    let (s, _) = lb
        .admin("POST", &format!("/upstreams/web/backends/{}/drain", a.addr))
        .await;
    assert_eq!(s, StatusCode::OK);
    write(&file, &entries(&[&a, &b]));
    let u = wait_for(&lb, "both", |u| {
        u["backends"].as_array().unwrap().len() == 2
    })
    .await;
    let a_state = u["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == a.addr.to_string())
        .map(|x| x["state"].clone());
    assert_eq!(a_state, Some("draining".into()), "{u}");
    assert_eq!(lb.get_many("/", 4).await, ["b"; 4]);
}

#[tokio::test]
async fn a_source_that_never_answered_is_stale_and_its_upstream_answers_503() {
    let file = temp_config("file-missing.json", "");
    std::fs::remove_file(&file).unwrap();
    let lb = discovered(&file).await;
    let u = wait_for(&lb, "an error", |u| !u["discovery"]["error"].is_null()).await;
    assert_eq!(
        u["discovery"]["state"], "stale",
        "SPEC §6: a failing source is stale: {u}"
    );
    assert!(u["discovery"]["updated"].is_null());
    assert!(ids(&u).is_empty());
    assert_eq!(
        lb.metric("sluice_discovery_stale{upstream=\"web\"}").await,
        Some(1.0)
    );
    assert_eq!(lb.get("/").await.0, StatusCode::SERVICE_UNAVAILABLE);
    let a = TestBackend::replying("a").await;
    write(&file, &entries(&[&a]));
    wait_for(&lb, "answer", |u| u["discovery"]["state"] == "ok").await;
    assert_eq!(lb.get("/").await.2, "a");
}

#[tokio::test]
async fn a_request_in_flight_to_a_backend_that_leaves_completes() {
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let slow = TestBackend::held(gate.clone(), "slow").await;
    let other = TestBackend::replying("other").await;
    let file = temp_config("file-inflight.json", &entries(&[&slow]));
    let lb = std::sync::Arc::new(discovered(&file).await);
    wait_for(&lb, "first answer", |u| u["discovery"]["state"] == "ok").await;
    let in_flight = {
        let lb = lb.clone();
        tokio::spawn(async move { lb.get("/").await })
    };
    slow.wait_hits(1, "the slow request").await;
    write(&file, &entries(&[&other]));
    wait_for(&lb, "slow gone", |u| ids(u) == [other.addr.to_string()]).await;
    assert_eq!(lb.get("/").await.2, "other");
    gate.notify_one();
    let (s, _, body) = in_flight.await.unwrap();
    assert_eq!((s, body.as_str()), (StatusCode::OK, "slow"));
}

/// With active checks, a discovered backend is probed at once (not at the next
/// interval, a minute away here) and serves once the probe passes.
#[tokio::test]
async fn a_new_backend_is_probed_at_once_when_checks_are_on() {
    let (a, b) = (
        TestBackend::replying("a").await,
        TestBackend::replying("b").await,
    );
    let file = temp_config("file-health.json", &entries(&[&a]));
    let lb = Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [upstream.web.health]\npath = \"/health\"\ninterval = \"60s\"\n\
         [upstream.web.discovery]\nsource = \"file\"\npath = \"{}\"\n",
        file.display()
    ))
    .await;
    wait_for(&lb, "a healthy", |u| u["backends"][0]["state"] == "healthy").await;
    let t = std::time::Instant::now();
    write(&file, &entries(&[&a, &b]));
    wait_for(&lb, "b healthy", |u| {
        u["backends"].as_array().unwrap().len() == 2
            && u["backends"]
                .as_array()
                .unwrap()
                .iter()
                .all(|x| x["state"] == "healthy")
    })
    .await;
    assert!(
        t.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        t.elapsed()
    );
    assert!(b.hits() >= 1, "probed");
    let bodies = lb.get_many("/", 4).await;
    assert_eq!(count(&bodies, "b"), 2, "{bodies:?}");
}

/// A reload keeps a discovered upstream's set and its running source while its
/// discovery section is the same; a changed section starts the new source.
#[tokio::test]
async fn a_reload_keeps_the_set_unless_the_source_changes() {
    let (a, b) = (
        TestBackend::replying("a").await,
        TestBackend::replying("b").await,
    );
    let (first, second) = (
        temp_config("file-reload-1.json", &entries(&[&a])),
        temp_config("file-reload-2.json", &entries(&[&b])),
    );
    let toml = |file: &std::path::Path, timeout: &str| {
        format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
             [upstream.web]\nresponse_timeout = \"{timeout}\"\n\
             [upstream.web.discovery]\nsource = \"file\"\npath = \"{}\"\n",
            file.display()
        )
    };
    let config = temp_config("file-reload.toml", &toml(&first, "30s"));
    let lb = Sluice::start_file(&config).await;
    let u = wait_for(&lb, "first answer", |u| u["discovery"]["state"] == "ok").await;
    let updated = u["discovery"]["updated"].clone();

    // Another setting changes; the source does not: same set, same running source.
    write(&config, &toml(&first, "20s"));
    let (s, body) = lb.admin("POST", "/reload").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let u = lb.status().await["upstreams"][0].clone();
    assert_eq!(ids(&u), [a.addr.to_string()], "{u}");
    assert_eq!(u["discovery"]["updated"], updated, "not asked again: {u}");
    assert_eq!(lb.get("/").await.2, "a");

    // The source changes: its own set.
    write(&config, &toml(&second, "20s"));
    let (s, _) = lb.admin("POST", "/reload").await;
    assert_eq!(s, StatusCode::OK);
    wait_for(&lb, "the new source", |u| ids(u) == [b.addr.to_string()]).await;
    assert_eq!(lb.get("/").await.2, "b");
}

/// A set that does not fit its upstream (here an https entry for an h2c upstream) is
/// not applied: the last set stays, and the source is stale with the reason.
#[tokio::test]
async fn a_set_that_does_not_fit_the_upstream_is_not_applied() {
    let a = TestBackend::replying("a").await;
    let file = temp_config("file-misfit.json", &entries(&[&a]));
    let lb = Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [upstream.web]\nprotocol = \"h2c\"\n\
         [upstream.web.discovery]\nsource = \"file\"\npath = \"{}\"\n",
        file.display()
    ))
    .await;
    wait_for(&lb, "first answer", |u| u["discovery"]["state"] == "ok").await;
    write(&file, "[{\"url\": \"https://127.0.0.1:9\"}]");
    let u = wait_for(&lb, "refused", |u| u["discovery"]["state"] == "stale").await;
    assert!(
        u["discovery"]["error"].as_str().unwrap().contains("h2c"),
        "{u}"
    );
    assert_eq!(ids(&u), [a.addr.to_string()]);
}
