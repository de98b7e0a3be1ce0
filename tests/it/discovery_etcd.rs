//! Discovery from etcd (SPEC §6) against a real etcd: the set follows puts and deletes
//! within a second (list, then watch), values that are not backends are skipped, an
//! etcd that stops answering keeps the last set (`stale`) with no failed request, and
//! three instances on one prefix agree on the members and on where each key goes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use http::StatusCode;

use crate::support::etcd::Etcd;
use crate::support::upstream::{ids, wait_for};
use crate::support::*;

const PREFIX: &str = "/sluice/upstreams/web/";

async fn over_etcd(etcd: &Etcd, extra: &str) -> Sluice {
    Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [upstream.web]\n{extra}\n\
         [upstream.web.discovery]\nsource = \"etcd\"\nendpoints = [\"{}\"]\nprefix = \"{PREFIX}\"\n",
        etcd.url()
    ))
    .await
}

async fn put(etcd: &Etcd, name: &str, b: &TestBackend) {
    etcd.put(
        &format!("{PREFIX}{name}"),
        &format!("{{\"url\": \"{}\"}}", b.addr),
    )
    .await;
}

#[tokio::test]
async fn the_set_follows_puts_and_deletes_within_a_second() {
    let etcd = Etcd::start().await;
    let (a, b) = (
        TestBackend::replying("a").await,
        TestBackend::replying("b").await,
    );
    put(&etcd, "a", &a).await;
    // An empty value (which the gateway leaves out) is not a backend, and no obstacle.
    etcd.put(&format!("{PREFIX}empty"), "").await;
    // Keys outside the prefix are not backends.
    etcd.put(
        "/sluice/upstreams/webx/a",
        &format!("{{\"url\": \"{}\"}}", b.addr),
    )
    .await;
    let lb = over_etcd(&etcd, "").await;
    let u = wait_for(&lb, "listed", |u| u["discovery"]["state"] == "ok").await;
    assert_eq!(ids(&u), [a.addr.to_string()]);
    assert_eq!(u["discovery"]["source"], "etcd");
    assert_eq!(lb.get_many("/", 3).await, ["a"; 3]);

    let t = SystemTime::now();
    put(&etcd, "b", &b).await;
    let u = wait_for(&lb, "b added", |u| ids(u).len() == 2).await;
    assert!(applied_after(&u, t) < Duration::from_secs(1), "{u}");

    // A value that is not a backend is skipped; the rest applies.
    etcd.put(&format!("{PREFIX}junk"), "not json").await;
    let t = SystemTime::now();
    etcd.delete(&format!("{PREFIX}a")).await;
    let u = wait_for(&lb, "a deleted", |u| ids(u) == [b.addr.to_string()]).await;
    assert!(applied_after(&u, t) < Duration::from_secs(1), "{u}");
    assert_eq!(u["discovery"]["state"], "ok");
    assert_eq!(lb.get_many("/", 3).await, ["b"; 3]);

    etcd.delete(&format!("{PREFIX}b")).await;
    wait_for(&lb, "empty", |u| ids(u).is_empty()).await;
    assert_eq!(lb.get("/").await.0, StatusCode::SERVICE_UNAVAILABLE);
}

/// A compaction of the history behind a live watch does not disturb it. (A watch
/// that must start from a compacted revision lists again: unit-tested in etcd.rs,
/// since sluice never resumes a watch from an old revision.)
#[tokio::test]
async fn a_compaction_does_not_disturb_the_watch() {
    let etcd = Etcd::start().await;
    let (a, b) = (
        TestBackend::replying("a").await,
        TestBackend::replying("b").await,
    );
    put(&etcd, "a", &a).await;
    let lb = over_etcd(&etcd, "").await;
    wait_for(&lb, "listed", |u| ids(u).len() == 1).await;
    let mut rev = 0;
    for _ in 0..20 {
        rev = etcd
            .put(
                &format!("{PREFIX}a"),
                &format!("{{\"url\": \"{}\"}}", a.addr),
            )
            .await;
    }
    etcd.compact(rev).await;
    put(&etcd, "b", &b).await;
    wait_for(&lb, "b after the compaction", |u| ids(u).len() == 2).await;
}

#[tokio::test]
async fn an_etcd_that_stops_answering_keeps_the_set_and_loses_no_request() {
    let etcd = Etcd::start().await;
    let (a, b) = (
        TestBackend::replying("a").await,
        TestBackend::replying("b").await,
    );
    put(&etcd, "a", &a).await;
    put(&etcd, "b", &b).await;
    let lb = Arc::new(over_etcd(&etcd, "").await);
    wait_for(&lb, "listed", |u| ids(u).len() == 2).await;

    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (lb, stop, failed) = (lb.clone(), stop.clone(), failed.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    if lb.get("/").await.0 != StatusCode::OK {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    etcd.pause();
    let u = wait_for(&lb, "stale", |u| u["discovery"]["state"] == "stale").await;
    assert_eq!(ids(&u).len(), 2, "the last set stays: {u}");
    assert_eq!(
        lb.metric("sluice_discovery_stale{upstream=\"web\"}").await,
        Some(1.0)
    );
    etcd.resume();
    wait_for(&lb, "ok again", |u| u["discovery"]["state"] == "ok").await;
    // Changes after the outage are seen again.
    etcd.delete(&format!("{PREFIX}a")).await;
    wait_for(&lb, "a deleted", |u| ids(u) == [b.addr.to_string()]).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        total += c.await.unwrap();
    }
    assert!(total > 0);
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed requests");
}

#[tokio::test]
async fn three_instances_on_one_prefix_agree_within_a_second() {
    let etcd = Etcd::start().await;
    let backends = [
        TestBackend::replying("a").await,
        TestBackend::replying("b").await,
        TestBackend::replying("c").await,
    ];
    let hash = "strategy = \"consistent_hash\"\nhash_key = \"header:x-key\"";
    let fleet = [
        over_etcd(&etcd, hash).await,
        over_etcd(&etcd, hash).await,
        over_etcd(&etcd, hash).await,
    ];
    let names = ["a", "b", "c"];
    // Each step: which backends are in etcd.
    for step in [vec![0, 1], vec![0, 1, 2], vec![1, 2], vec![2, 0, 1]] {
        let t = SystemTime::now();
        for (i, b) in backends.iter().enumerate() {
            if step.contains(&i) {
                put(&etcd, names[i], b).await;
            } else {
                etcd.delete(&format!("{PREFIX}{}", names[i])).await;
            }
        }
        let mut members = Vec::new();
        for lb in &fleet {
            let u = wait_for(lb, "step", |u| ids(u).len() == step.len()).await;
            assert!(applied_after(&u, t) < Duration::from_secs(1), "{u}");
            members.push(u["members"].clone());
        }
        assert!(members.windows(2).all(|w| w[0] == w[1]), "{members:?}");
        for key in 0..1000 {
            let first = keyed(&fleet[0], key).await;
            for lb in &fleet[1..] {
                assert_eq!(keyed(lb, key).await, first, "key-{key} after {step:?}");
            }
        }
    }
}

async fn keyed(lb: &Sluice, key: usize) -> String {
    let req = http::Request::get("/")
        .header("x-key", format!("key-{key}"))
        .body(http_body_util::Full::default())
        .unwrap();
    lb.send(req).await.2
}
