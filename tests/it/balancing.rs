//! Strategies over real backends (SPEC §3): rotation, weights, load awareness, backups.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, StatusCode};
use tokio::sync::Notify;

use crate::support::*;

#[tokio::test]
async fn round_robin_with_equal_weights_rotates_strictly() {
    let a = TestBackend::replying("a").await;
    let b = TestBackend::replying("b").await;
    let c = TestBackend::replying("c").await;
    let lb = Sluice::over(&[a.url(), b.url(), c.url()], "").await;
    let bodies = lb.get_many("/", 12).await;
    // Whatever the starting point, each window of 3 holds each backend once, in a
    // fixed cyclic order.
    for w in bodies.windows(3) {
        let mut sorted = w.to_vec();
        sorted.sort();
        assert_eq!(sorted, ["a", "b", "c"], "{bodies:?}");
    }
    assert_eq!(bodies[0..3], bodies[3..6]);
}

#[tokio::test]
async fn round_robin_weights_shape_the_split_exactly() {
    let a = TestBackend::replying("a").await;
    let b = TestBackend::replying("b").await;
    let lb = Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.web]\nbackends = [{{ url = \"{}\", weight = 3 }}, {{ url = \"{}\" }}]\n",
        a.url(),
        b.url()
    ))
    .await;
    let bodies = lb.get_many("/", 400).await;
    assert_eq!(count(&bodies, "a"), 300);
    assert_eq!(count(&bodies, "b"), 100);
    // Smooth: b never waits more than 3 picks.
    assert!(
        !bodies.windows(4).any(|w| w.iter().all(|x| x == "a")),
        "{bodies:?}"
    );
}

#[tokio::test]
async fn random_honours_weights() {
    let a = TestBackend::replying("a").await;
    let b = TestBackend::replying("b").await;
    let lb = Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.web]\nstrategy = \"random\"\nbackends = [{{ url = \"{}\", weight = 3 }}, {{ url = \"{}\" }}]\n",
        a.url(),
        b.url()
    ))
    .await;
    let bodies = lb.get_many("/", 400).await;
    let na = count(&bodies, "a");
    // Expected 300, standard deviation ~8.7: ±45 is over 5 sigma.
    assert!((255..=345).contains(&na), "a got {na} of 400");
}

/// Two backends answer `/slow` only when released and everything else at once. One
/// `/slow` request is parked on one of them; every later request must avoid it.
async fn avoids_the_busy_backend(strategy: &str) {
    let gate = Arc::new(Notify::new());
    let mk = |name: &'static str, gate: Arc<Notify>| async move {
        TestBackend::start(move |req| {
            let gate = gate.clone();
            async move {
                if req.uri().path() == "/slow" {
                    gate.notified().await;
                }
                http::Response::new(full(name))
            }
        })
        .await
    };
    let a = mk("a", gate.clone()).await;
    let b = mk("b", gate.clone()).await;
    let lb =
        Arc::new(Sluice::over(&[a.url(), b.url()], &format!("strategy = \"{strategy}\"")).await);
    let slow = {
        let lb = lb.clone();
        tokio::spawn(async move { lb.get("/slow").await })
    };
    // Wait until the slow request has reached a backend.
    tokio::time::timeout(DEADLINE, async {
        while a.hits() + b.hits() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    let busy = if a.hits() == 1 { "a" } else { "b" };
    let bodies = lb.get_many("/fast", 30).await;
    assert_eq!(
        count(&bodies, busy),
        0,
        "{strategy} sent requests to the busy backend: {bodies:?}"
    );
    gate.notify_waiters();
    let (s, _, body) = slow.await.unwrap();
    assert_eq!((s, body.as_str()), (StatusCode::OK, busy));
}

#[tokio::test]
async fn least_conn_avoids_a_busy_backend() {
    avoids_the_busy_backend("least_conn").await;
}

#[tokio::test]
async fn p2c_avoids_a_busy_backend() {
    avoids_the_busy_backend("p2c").await;
}

#[tokio::test]
async fn least_conn_spreads_idle_requests() {
    let a = TestBackend::replying("a").await;
    let b = TestBackend::replying("b").await;
    let lb = Sluice::over(&[a.url(), b.url()], "strategy = \"least_conn\"").await;
    let bodies = lb.get_many("/", 100).await;
    assert!(
        count(&bodies, "a") > 25 && count(&bodies, "b") > 25,
        "{bodies:?}"
    );
}

#[tokio::test]
async fn first_sends_everything_to_the_first_available() {
    let a = TestBackend::replying("a").await;
    let b = TestBackend::replying("b").await;
    let lb = Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n[upstream.web]\nstrategy = \"first\"\nbackends = [{{ url = \"{}\" }}, {{ url = \"{}\" }}]\n",
        a.url(),
        b.url()
    ))
    .await;
    assert_eq!(count(&lb.get_many("/", 10).await, "a"), 10);
    let (s, _) = lb
        .admin("POST", &format!("/upstreams/web/backends/{}/drain", a.addr))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(count(&lb.get_many("/", 10).await, "b"), 10);
}

#[tokio::test]
async fn backups_serve_only_when_no_primary_is_available() {
    let p1 = TestBackend::replying("p1").await;
    let p2 = TestBackend::replying("p2").await;
    let bk = TestBackend::replying("backup").await;
    let lb = Sluice::start(&format!(
        r#"[[listener]]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[upstream.web]
backends = [{{ url = "{}" }}, {{ url = "{}", backup = true }}, {{ url = "{}" }}]
"#,
        p1.url(),
        bk.url(),
        p2.url()
    ))
    .await;
    assert_eq!(count(&lb.get_many("/", 20).await, "backup"), 0);
    for p in [&p1, &p2] {
        let (s, _) = lb
            .admin("POST", &format!("/upstreams/web/backends/{}/drain", p.addr))
            .await;
        assert_eq!(s, StatusCode::OK);
    }
    assert_eq!(count(&lb.get_many("/", 10).await, "backup"), 10);
    lb.admin(
        "POST",
        &format!("/upstreams/web/backends/{}/enable", p2.addr),
    )
    .await;
    assert_eq!(count(&lb.get_many("/", 10).await, "p2"), 10);
    // With every backend drained, including the backup: 503.
    for p in [&p2, &bk] {
        lb.admin("POST", &format!("/upstreams/web/backends/{}/drain", p.addr))
            .await;
    }
    assert_eq!(lb.get("/").await.0, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn peak_ewma_steers_away_from_a_backend_that_turns_slow() {
    let slow_now = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let turning = {
        let slow_now = slow_now.clone();
        TestBackend::start(move |_| {
            let slow = slow_now.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                if slow {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                http::Response::new(full("turning"))
            }
        })
        .await
    };
    let steady = TestBackend::replying("steady").await;
    let lb = Sluice::over(&[turning.url(), steady.url()], "strategy = \"peak_ewma\"").await;
    // Both fast; an unmeasured backend is tried first, so both get measured.
    let bodies = lb.get_many("/", 10).await;
    assert!(count(&bodies, "turning") >= 1, "{bodies:?}");
    // 50 ms slower from now on: after its first slow answer it is avoided.
    slow_now.store(true, std::sync::atomic::Ordering::SeqCst);
    let started = std::time::Instant::now();
    let bodies = lb.get_many("/", 40).await;
    assert!(count(&bodies, "turning") <= 2, "{bodies:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn slow_start_ramps_backends_added_by_a_reload_not_those_present_at_start() {
    let a = TestBackend::replying("a").await;
    let b = TestBackend::replying("b").await;
    let both = |urls: &[&str]| {
        let list: Vec<String> = urls
            .iter()
            .map(|u| format!("{{ url = \"{u}\" }}"))
            .collect();
        format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.web]\nslow_start = \"20s\"\nbackends = [{}]\n",
            list.join(", ")
        )
    };
    // Present from the start: full share at once.
    let lb = Sluice::start(&both(&[&a.url(), &b.url()])).await;
    assert_eq!(count(&lb.get_many("/", 40).await, "b"), 20);

    // Added by a reload: nearly no share in its first moments.
    let lb = Sluice::start(&both(&[&a.url()])).await;
    let reloaded =
        sluice::config::parse_str(&both(&[&a.url(), &b.url()]), std::path::Path::new("t.toml"))
            .unwrap();
    lb.state.apply(reloaded);
    let bodies = lb.get_many("/", 100).await;
    assert!(
        count(&bodies, "b") <= 5,
        "{} of 100 to the new backend",
        count(&bodies, "b")
    );
}

#[tokio::test]
async fn consistent_hash_keeps_a_key_on_one_backend_on_every_instance() {
    let a = TestBackend::replying("a").await;
    let b = TestBackend::replying("b").await;
    let c = TestBackend::replying("c").await;
    let config = |urls: [&str; 3]| {
        format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.web]\nstrategy = \"consistent_hash\"\nhash_key = \"header:x-user-id\"\nbackends = [{{ url = \"{}\" }}, {{ url = \"{}\" }}, {{ url = \"{}\" }}]\n",
            urls[0], urls[1], urls[2]
        )
    };
    let one = Sluice::start(&config([&a.url(), &b.url(), &c.url()])).await;
    let two = Sluice::start(&config([&c.url(), &b.url(), &a.url()])).await;
    let get = |lb: &Sluice, user: usize| {
        let req = Request::get(lb.url("/"))
            .header("x-user-id", format!("user-{user}"))
            .body(http_body_util::Full::default())
            .unwrap();
        let c = client();
        async move { send_with(&c, req).await.2 }
    };
    let mut seen = std::collections::HashSet::new();
    for user in 0..30 {
        let first = get(&one, user).await;
        for _ in 0..3 {
            assert_eq!(get(&one, user).await, first, "user {user} moved");
        }
        assert_eq!(
            get(&two, user).await,
            first,
            "instances disagree on user {user}"
        );
        seen.insert(first);
    }
    assert_eq!(seen.len(), 3, "30 users spread over all three backends");
}

#[tokio::test]
async fn sticky_cookies_pin_a_client_and_fail_over_when_its_backend_is_out() {
    let a = TestBackend::replying("a").await;
    let b = TestBackend::replying("b").await;
    let lb = Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n[upstream.web]\nsticky = {{ cookie = \"sid\" }}\nbackends = [{{ url = \"{}\" }}, {{ url = \"{}\" }}]\n",
        a.url(),
        b.url()
    ))
    .await;
    let (_, h, first) = lb.get("/").await;
    let set = h["set-cookie"].to_str().unwrap().to_owned();
    assert!(set.ends_with("; Path=/; HttpOnly; SameSite=Lax"), "{set}");
    assert!(
        !set.to_lowercase().contains("expires") && !set.contains("Max-Age"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_owned();
    for addr in [a.addr, b.addr] {
        assert!(
            !cookie.contains(&addr.port().to_string()),
            "the cookie names no address"
        );
    }
    let with_cookie = |cookie: String| {
        let req = Request::get("/")
            .header("cookie", format!("other=1; {cookie}"))
            .body(http_body_util::Full::default())
            .unwrap();
        async { lb.send(req).await }
    };
    // Round robin would alternate; the cookie pins, and is not set again.
    for _ in 0..6 {
        let (_, h, body) = with_cookie(cookie.clone()).await;
        assert_eq!(body, first);
        assert!(h.get("set-cookie").is_none());
    }
    // Its backend drained: a fresh pick, and a new cookie for the new backend.
    let pinned = if first == "a" { a.addr } else { b.addr };
    lb.admin("POST", &format!("/upstreams/web/backends/{pinned}/drain"))
        .await;
    let (_, h, body) = with_cookie(cookie.clone()).await;
    assert_ne!(body, first);
    let moved = h["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert_ne!(moved, cookie);
    let (_, _, again) = with_cookie(moved).await;
    assert_eq!(again, body);
    // An unknown id is treated as no cookie.
    let (_, h, _) = with_cookie("sid=0000000000000000".into()).await;
    assert!(h.get("set-cookie").is_some());
}

#[tokio::test]
async fn a_sticky_client_leaves_a_backup_once_a_primary_is_back() {
    let p = TestBackend::replying("primary").await;
    let bk = TestBackend::replying("backup").await;
    let lb = Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n[upstream.web]\nsticky = {{ cookie = \"sid\" }}\nbackends = [{{ url = \"{}\" }}, {{ url = \"{}\", backup = true }}]\n",
        p.url(),
        bk.url()
    ))
    .await;
    lb.admin("POST", &format!("/upstreams/web/backends/{}/drain", p.addr))
        .await;
    let (_, h, body) = lb.get("/").await;
    assert_eq!(body, "backup");
    let cookie = h["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    lb.admin(
        "POST",
        &format!("/upstreams/web/backends/{}/enable", p.addr),
    )
    .await;
    // Backups serve only while no primary can (SPEC §3), cookie or not.
    let req = Request::get("/")
        .header("cookie", cookie)
        .body(http_body_util::Full::default())
        .unwrap();
    let (_, h, body) = lb.send(req).await;
    assert_eq!(body, "primary");
    assert!(
        h.get("set-cookie").is_some(),
        "the client is moved to the primary"
    );
}
