//! Discovery from DNS (SPEC §6) against a real dnsmasq: A records follow the server,
//! SRV weights and priorities become weights and backups (a target without address is
//! skipped, not the whole name), NXDOMAIN empties the set, a
//! resolver that stops answering keeps the last set (`stale`) with no failed request,
//! and two instances on one name agree on the members and on where each key goes.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use http::StatusCode;

use crate::support::dns::Dnsmasq;
use crate::support::fake_dns::FakeDns;
use crate::support::upstream::{ids, wait_for};
use crate::support::*;

fn ip(b: &TestBackend) -> IpAddr {
    b.addr.ip()
}

/// A sluice whose upstream `web` is discovered from `name` on `dns`, with `extra`
/// lines inside [upstream.web].
async fn over_dns(dns: &Dnsmasq, name: &str, extra: &str) -> Sluice {
    Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [upstream.web]\n{extra}\n\
         [upstream.web.discovery]\nsource = \"dns\"\nname = \"{name}\"\nresolver = \"{}\"\n\
         min_ttl = \"100ms\"\nmax_ttl = \"1s\"\n",
        dns.addr
    ))
    .await
}

#[tokio::test]
async fn a_records_follow_the_server_and_nxdomain_empties_the_set() {
    let hosts = TestBackend::on_hosts(2).await;
    let port = hosts[0].addr.port();
    let dns = Dnsmasq::start(&[], &[]).await;
    dns.set_hosts("api.test", &[ip(&hosts[0])]);
    let lb = over_dns(&dns, &format!("api.test:{port}"), "").await;
    let u = wait_for(&lb, "first answer", |u| {
        u["discovery"]["state"] == "ok" && ids(u).len() == 1
    })
    .await;
    assert_eq!(ids(&u), [hosts[0].addr.to_string()]);
    assert_eq!(u["discovery"]["source"], "dns");
    assert_eq!(lb.get("/").await.2, "127.0.0.2");

    // Listed in either order, the set is the same (sorted by id).
    dns.set_hosts("api.test", &[ip(&hosts[1]), ip(&hosts[0])]);
    let u = wait_for(&lb, "both", |u| ids(u).len() == 2).await;
    assert_eq!(
        ids(&u),
        [hosts[0].addr.to_string(), hosts[1].addr.to_string()]
    );
    let bodies = lb.get_many("/", 6).await;
    assert_eq!(count(&bodies, "127.0.0.2"), 3, "{bodies:?}");

    // The name is gone (NXDOMAIN): an answer, applied; the upstream answers 503.
    dns.set_hosts("other.test", &[ip(&hosts[0])]);
    let u = wait_for(&lb, "empty", |u| ids(u).is_empty()).await;
    assert_eq!(u["discovery"]["state"], "ok", "NXDOMAIN is an answer: {u}");
    assert_eq!(lb.get("/").await.0, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn srv_weights_and_priorities_become_weights_and_backups() {
    let hosts = TestBackend::on_hosts(3).await;
    let port = hosts[0].addr.port();
    let dns = Dnsmasq::start(
        &[
            format!("_http._tcp.api.test,b1.test,{port},10,3"),
            format!("_http._tcp.api.test,b2.test,{port},10,0"),
            format!("_http._tcp.api.test,b3.test,{port},20,5"),
            // A target whose host has no address (being replaced): one backend fewer.
            format!("_http._tcp.api.test,gone.test,{port},10,7"),
        ],
        &[
            "b1.test,127.0.0.2".into(),
            "b2.test,127.0.0.3".into(),
            "b3.test,127.0.0.4".into(),
        ],
    )
    .await;
    let lb = over_dns(&dns, "_http._tcp.api.test", "").await;
    let u = wait_for(&lb, "answer", |u| ids(u).len() == 3).await;
    let by_ip = |ip: &str| {
        u["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == format!("{ip}:{port}"))
            .map(|b| {
                (
                    b["weight"].as_u64().unwrap(),
                    b["backup"].as_bool().unwrap(),
                )
            })
            .unwrap()
    };
    assert_eq!(by_ip("127.0.0.2"), (3, false));
    assert_eq!(by_ip("127.0.0.3"), (1, false), "SRV weight 0 becomes 1");
    assert_eq!(
        by_ip("127.0.0.4"),
        (5, true),
        "a higher priority number is a backup"
    );
    let bodies = lb.get_many("/", 8).await;
    assert_eq!(count(&bodies, "127.0.0.2"), 6, "{bodies:?}");
    assert_eq!(count(&bodies, "127.0.0.4"), 0, "{bodies:?}");
}

#[tokio::test]
async fn a_resolver_that_stops_answering_keeps_the_set_and_loses_no_request() {
    let hosts = TestBackend::on_hosts(2).await;
    let port = hosts[0].addr.port();
    let dns = Dnsmasq::start(&[], &[]).await;
    dns.set_hosts("api.test", &[ip(&hosts[0]), ip(&hosts[1])]);
    let lb = Arc::new(over_dns(&dns, &format!("api.test:{port}"), "").await);
    wait_for(&lb, "first answer", |u| ids(u).len() == 2).await;

    // Steady load from 4 clients for the whole outage.
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (lb, stop, failed, done) = (lb.clone(), stop.clone(), failed.clone(), done.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if lb.get("/").await.0 != StatusCode::OK {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    dns.pause();
    let u = wait_for(&lb, "stale", |u| u["discovery"]["state"] == "stale").await;
    assert_eq!(ids(&u).len(), 2, "the last set stays: {u}");
    assert_eq!(
        lb.metric("sluice_discovery_stale{upstream=\"web\"}").await,
        Some(1.0)
    );
    dns.resume();
    wait_for(&lb, "ok again", |u| u["discovery"]["state"] == "ok").await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert!(done.load(Ordering::Relaxed) > 0);
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed requests");
}

#[tokio::test]
async fn two_instances_on_one_name_agree_on_members_and_keys() {
    let hosts = TestBackend::on_hosts(3).await;
    let port = hosts[0].addr.port();
    let dns = Dnsmasq::start(&[], &[]).await;
    let hash = "strategy = \"consistent_hash\"\nhash_key = \"header:x-key\"";
    dns.set_hosts("api.test", &[ip(&hosts[0]), ip(&hosts[1])]);
    let one = over_dns(&dns, &format!("api.test:{port}"), hash).await;
    let two = over_dns(&dns, &format!("api.test:{port}"), hash).await;
    for step in [vec![0, 1], vec![0, 1, 2], vec![2, 0]] {
        let ips: Vec<IpAddr> = step.iter().map(|&i| ip(&hosts[i])).collect();
        dns.set_hosts("api.test", &ips);
        let a = wait_for(&one, "one", |u| ids(u).len() == step.len()).await;
        let b = wait_for(&two, "two", |u| ids(u).len() == step.len()).await;
        assert_eq!(a["members"], b["members"], "same members after {step:?}");
        for key in 0..1000 {
            let (x, y) = (keyed(&one, key).await, keyed(&two, key).await);
            assert_eq!(x, y, "key-{key} after {step:?}");
        }
    }
}

/// The body of a GET through `lb` with hash key `key-{key}`.
async fn keyed(lb: &Sluice, key: usize) -> String {
    let req = http::Request::get("/")
        .header("x-key", format!("key-{key}"))
        .body(http_body_util::Full::default())
        .unwrap();
    lb.send(req).await.2
}

/// An answer too large for a UDP datagram comes back truncated; the whole set is then
/// read over TCP (a truncated set would make instances disagree).
#[tokio::test]
async fn a_large_answer_is_read_whole_over_tcp() {
    let dns = Dnsmasq::start(&[], &[]).await;
    let ips: Vec<IpAddr> = (1..=200).map(|i| IpAddr::from([127, 0, 1, i])).collect();
    dns.set_hosts("many.test", &ips);
    let lb = over_dns(&dns, "many.test:8080", "").await;
    let u = wait_for(&lb, "200 backends", |u| ids(u).len() == 200).await;
    assert_eq!(u["discovery"]["state"], "ok");
}

/// A server that cuts UDP answers to three records without saying so (Consul's
/// default): sluice asks again over TCP, so every instance sees the whole set.
#[tokio::test]
async fn an_answer_cut_without_the_truncation_bit_is_asked_again_over_tcp() {
    let ips: Vec<std::net::Ipv4Addr> = (1..=5)
        .map(|i| std::net::Ipv4Addr::new(127, 0, 2, i))
        .collect();
    let fake = FakeDns::start(&ips).await;
    let lb = over_fake(&fake).await;
    let u = wait_for(&lb, "all five", |u| ids(u).len() == 5).await;
    assert_eq!(u["discovery"]["state"], "ok");
}

/// SERVFAIL is a failure, not an answer: the last set stays, `stale`, until the server
/// answers again.
#[tokio::test]
async fn servfail_keeps_the_last_set() {
    let hosts = TestBackend::on_hosts(2).await;
    let v4 = |b: &TestBackend| match b.addr.ip() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(_) => unreachable!(),
    };
    let fake = FakeDns::start(&[v4(&hosts[0]), v4(&hosts[1])]).await;
    let lb = Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [upstream.web.discovery]\nsource = \"dns\"\nname = \"api.test:{}\"\nresolver = \"{}\"\n\
         min_ttl = \"100ms\"\nmax_ttl = \"1s\"\n",
        hosts[0].addr.port(),
        fake.addr
    ))
    .await;
    wait_for(&lb, "both", |u| ids(u).len() == 2).await;
    fake.servfail(true);
    let u = wait_for(&lb, "stale", |u| u["discovery"]["state"] == "stale").await;
    assert_eq!(ids(&u).len(), 2, "{u}");
    assert!(
        u["discovery"]["error"]
            .as_str()
            .unwrap()
            .contains("api.test"),
        "{u}"
    );
    assert_eq!(lb.get_many("/", 4).await.len(), 4);
    fake.set(&[v4(&hosts[1])]);
    fake.servfail(false);
    let u = wait_for(&lb, "answers again", |u| ids(u).len() == 1).await;
    assert_eq!(u["discovery"]["state"], "ok");
    assert!(u["discovery"]["error"].is_null());
}

async fn over_fake(fake: &FakeDns) -> Sluice {
    Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [upstream.web.discovery]\nsource = \"dns\"\nname = \"api.test:8080\"\nresolver = \"{}\"\n\
         min_ttl = \"100ms\"\nmax_ttl = \"1s\"\n",
        fake.addr
    ))
    .await
}
