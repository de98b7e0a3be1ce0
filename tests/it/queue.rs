//! `max_inflight_per_backend` with its `queue` (SPEC §8): a full backend takes no more
//! requests, whatever the strategy; when every backend is full requests wait, first
//! come first served, up to `queue.max` and `queue.timeout`, then 503; a waiting
//! request whose client leaves drops out of the queue.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::support::*;

/// A backend that records the order requests reach it and how many it held at once,
/// and answers each (with its path) only when the test releases one.
struct Gated {
    be: TestBackend,
    release: Arc<Semaphore>,
    arrived: Arc<Mutex<Vec<String>>>,
    peak: Arc<AtomicUsize>,
}

impl Gated {
    async fn start() -> Gated {
        let release = Arc::new(Semaphore::new(0));
        let arrived = Arc::new(Mutex::new(Vec::new()));
        let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (r, a, p) = (release.clone(), arrived.clone(), peak.clone());
        let be = TestBackend::start(move |req| {
            a.lock().unwrap().push(req.uri().path().to_owned());
            let held = now.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(held, Ordering::SeqCst);
            let (r, now) = (r.clone(), now.clone());
            async move {
                r.acquire().await.unwrap().forget();
                now.fetch_sub(1, Ordering::SeqCst);
                hyper::Response::new(full(req.uri().path().to_owned()))
            }
        })
        .await;
        Gated {
            be,
            release,
            arrived,
            peak,
        }
    }

    fn arrived(&self) -> Vec<String> {
        self.arrived.lock().unwrap().clone()
    }
}

/// A GET of `path` on its own connection, in the background: the raw answer.
fn get(lb: SocketAddr, path: &str) -> JoinHandle<String> {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    tokio::spawn(async move { raw_exchange(lb, raw.as_bytes(), DEADLINE).await })
}

fn status(raw: &str) -> &str {
    raw.split(' ').nth(1).unwrap_or("")
}

/// Waits until `series` reads `n`.
async fn metric_is(lb: &Sluice, series: &str, n: f64) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let now = lb.metric(series).await;
        if now == Some(n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series}: {now:?}, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

const DEPTH: &str = "sluice_queue_depth{upstream=\"web\"}";

async fn limited(backends: &[String], extra: &str) -> Sluice {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ url = \"{b}\" }}"))
        .collect();
    Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [upstream.web]\nbackends = [{}]\n{extra}\n",
        list.join(", ")
    ))
    .await
}

#[tokio::test]
async fn requests_wait_for_a_full_backend_first_come_first_served() {
    let g = Gated::start().await;
    let lb = limited(
        &[g.be.url()],
        "max_inflight_per_backend = 2\nqueue = { max = 10, timeout = \"10s\" }",
    )
    .await;
    let mut answers = vec![get(lb.addr, "/1"), get(lb.addr, "/2")];
    g.be.wait_hits(2, "two in flight").await;
    for (i, path) in ["/3", "/4", "/5"].into_iter().enumerate() {
        answers.push(get(lb.addr, path));
        metric_is(&lb, DEPTH, (i + 1) as f64).await;
    }
    assert_eq!(
        g.be.hits(),
        2,
        "the queued requests have not reached the backend"
    );
    // Each answer frees a slot for the next in line, in arrival order.
    for n in 3..=5 {
        g.release.add_permits(1);
        g.be.wait_hits(n, "the next in line").await;
    }
    g.release.add_permits(2);
    for a in answers {
        let got = a.await.unwrap();
        assert_eq!(status(&got), "200", "{got}");
    }
    assert_eq!(g.arrived(), ["/1", "/2", "/3", "/4", "/5"]);
    assert_eq!(
        g.peak.load(Ordering::SeqCst),
        2,
        "never more than the limit at once"
    );
    metric_is(&lb, DEPTH, 0.0).await;
}

#[tokio::test]
async fn a_full_queue_or_a_long_wait_is_a_503_and_a_leaving_client_drops_out() {
    let g = Gated::start().await;
    let lb = limited(
        &[g.be.url()],
        "max_inflight_per_backend = 1\nqueue = { max = 1, timeout = \"300ms\" }",
    )
    .await;
    let first = get(lb.addr, "/held");
    g.be.wait_hits(1, "in flight").await;
    let waiting = get(lb.addr, "/waits");
    metric_is(&lb, DEPTH, 1.0).await;
    let full = get(lb.addr, "/full").await.unwrap();
    assert_eq!(status(&full), "503", "queue.max already waiting: {full}");
    let timed_out = waiting.await.unwrap();
    assert_eq!(status(&timed_out), "503", "{timed_out}");
    assert!(
        timed_out.ends_with("503 every backend is busy\n"),
        "{timed_out}"
    );
    assert_eq!(
        lb.metric("sluice_queue_timeouts_total{upstream=\"web\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        lb.metric("sluice_queue_full_total{upstream=\"web\"}").await,
        Some(1.0)
    );

    // A client that gives up while waiting leaves the queue, and its request is
    // never sent.
    let leaving = get(lb.addr, "/leaves");
    metric_is(&lb, DEPTH, 1.0).await;
    leaving.abort();
    metric_is(&lb, DEPTH, 0.0).await;
    g.release.add_permits(1);
    assert_eq!(status(&first.await.unwrap()), "200");
    let after = get(lb.addr, "/after");
    g.release.add_permits(1);
    assert_eq!(status(&after.await.unwrap()), "200");
    assert_eq!(g.arrived(), ["/held", "/after"]);
}

/// Full backends are out of every strategy's reach (`first` would always pick the
/// first), and backups stand in for primaries that are down, not for full ones.
#[tokio::test]
async fn a_full_backend_is_skipped_and_backups_do_not_take_the_overflow() {
    let (a, b) = (Gated::start().await, Gated::start().await);
    let lb = limited(
        &[a.be.url(), b.be.url()],
        "strategy = \"first\"\nmax_inflight_per_backend = 1",
    )
    .await;
    let one = get(lb.addr, "/one");
    a.be.wait_hits(1, "first backend").await;
    let two = get(lb.addr, "/two");
    b.be.wait_hits(1, "the first is full: the second").await;
    a.release.add_permits(1);
    b.release.add_permits(1);
    assert_eq!(status(&one.await.unwrap()), "200");
    assert_eq!(status(&two.await.unwrap()), "200");

    let (primary, backup) = (Gated::start().await, Gated::start().await);
    let list = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [upstream.web]\nbackends = [{{ url = \"{}\" }}, {{ url = \"{}\", backup = true }}]\n\
         max_inflight_per_backend = 1\n",
        primary.be.url(),
        backup.be.url()
    );
    let lb = Sluice::start(&list).await;
    let held = get(lb.addr, "/held");
    primary.be.wait_hits(1, "primary").await;
    let next = get(lb.addr, "/next");
    metric_is(&lb, DEPTH, 1.0).await;
    assert_eq!(backup.be.hits(), 0, "the backup does not take the overflow");
    primary.release.add_permits(2);
    assert_eq!(status(&held.await.unwrap()), "200");
    assert_eq!(status(&next.await.unwrap()), "200");
    assert_eq!(primary.arrived(), ["/held", "/next"]);
}

/// Without the key nothing is limited or queued: no queue metrics either.
#[tokio::test]
async fn without_a_limit_there_is_no_queue() {
    let g = Gated::start().await;
    let lb = limited(&[g.be.url()], "").await;
    let answers: Vec<_> = (0..20).map(|i| get(lb.addr, &format!("/{i}"))).collect();
    g.be.wait_hits(20, "all at once").await;
    g.release.add_permits(20);
    for a in answers {
        assert_eq!(status(&a.await.unwrap()), "200");
    }
    assert_eq!(lb.metric(DEPTH).await, None);
}
