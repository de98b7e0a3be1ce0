//! `GET /metrics` (SPEC §5): Prometheus text with the SPEC's families, counting what
//! clients were answered, by the backend that answered.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

use crate::support::*;

fn config(backends: &[String], extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ url = \"{b}\" }}"))
        .collect();
    format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nhost = \"app.test\"\nupstream = \"web\"\n\
         [upstream.web]\nbackends = [{}]\n{extra}\n",
        list.join(", ")
    )
}

async fn get_host(lb: &Sluice, host: &str) -> StatusCode {
    let req = http::Request::get("/")
        .header("host", host)
        .body(Default::default())
        .unwrap();
    lb.send(req).await.0
}

#[tokio::test]
async fn requests_are_counted_by_upstream_backend_and_code() {
    let a = TestBackend::replying("a").await;
    let b = TestBackend::status(404).await;
    let lb = Sluice::start(&config(&[a.url(), b.url()], "")).await;
    for _ in 0..4 {
        get_host(&lb, "app.test").await;
    }
    assert_eq!(get_host(&lb, "other.test").await, StatusCode::NOT_FOUND);
    let refused = raw_exchange(
        lb.addr,
        b"GET / HTTP/1.1\r\nHost app.test\r\n\r\n",
        DEADLINE,
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 400 "), "{refused}");

    let (s, body) = lb.admin("GET", "/metrics").await;
    assert_eq!(s, StatusCode::OK);
    for family in [
        "# TYPE sluice_requests_total counter",
        "# TYPE sluice_request_duration_seconds histogram",
        "# TYPE sluice_backend_healthy gauge",
        "# TYPE sluice_backend_inflight gauge",
        "# TYPE sluice_retries_total counter",
        "# TYPE sluice_client_connections gauge",
    ] {
        assert!(body.contains(family), "no {family:?} in\n{body}");
    }
    let (ia, ib) = (a.addr.to_string(), b.addr.to_string());
    let series = |backend: &str, code: u16| {
        format!("sluice_requests_total{{upstream=\"web\",backend=\"{backend}\",code=\"{code}\"}}")
    };
    assert_eq!(lb.metric(&series(&ia, 200)).await, Some(2.0), "{body}");
    assert_eq!(lb.metric(&series(&ib, 404)).await, Some(2.0), "{body}");
    assert_eq!(
        lb.metric(&series(&ia, 404)).await,
        None,
        "no sample for a code not seen"
    );
    assert_eq!(
        lb.metric("sluice_requests_total{upstream=\"\",backend=\"\",code=\"404\"}")
            .await,
        Some(1.0),
        "the request no route matched"
    );
    assert_eq!(
        lb.metric("sluice_requests_total{upstream=\"\",backend=\"\",code=\"400\"}")
            .await,
        Some(1.0),
        "the malformed head"
    );

    // The histogram: cumulative buckets ending at the request count.
    let le =
        |b: &str| format!("sluice_request_duration_seconds_bucket{{upstream=\"web\",le=\"{b}\"}}");
    assert_eq!(lb.metric(&le("+Inf")).await, Some(4.0));
    assert_eq!(
        lb.metric("sluice_request_duration_seconds_count{upstream=\"web\"}")
            .await,
        Some(4.0)
    );
    let mut last = 0.0;
    for bound in ["0.0005", "0.001", "0.01", "0.1", "1", "60", "+Inf"] {
        let n = lb.metric(&le(bound)).await.expect(bound);
        assert!(n >= last, "le={bound}: {n} < {last}");
        last = n;
    }
    let sum = lb
        .metric("sluice_request_duration_seconds_sum{upstream=\"web\"}")
        .await
        .unwrap();
    assert!(sum > 0.0 && sum < 4.0 * DEADLINE.as_secs_f64(), "{sum}");

    for id in [&ia, &ib] {
        let l = format!("{{upstream=\"web\",backend=\"{id}\"}}");
        assert_eq!(
            lb.metric(&format!("sluice_backend_healthy{l}")).await,
            Some(1.0)
        );
        assert_eq!(
            lb.metric(&format!("sluice_backend_inflight{l}")).await,
            Some(0.0)
        );
    }
    assert_eq!(
        lb.metric("sluice_retries_total{upstream=\"web\"}").await,
        Some(0.0)
    );
}

#[tokio::test]
async fn failed_requests_retries_and_no_backend_answers_are_counted() {
    let dead = dead_addr().await;
    let lb = Sluice::start(&config(
        &[format!("http://{dead}")],
        "[upstream.web.outlier]\nconsecutive_failures = 3\nmax_ejected_percent = 100",
    ))
    .await;
    assert_eq!(get_host(&lb, "app.test").await, StatusCode::BAD_GATEWAY);
    // The first try and the two default retries of a connect failure.
    assert_eq!(
        lb.metric("sluice_retries_total{upstream=\"web\"}").await,
        Some(2.0)
    );
    let l = format!("{{upstream=\"web\",backend=\"{dead}\"}}");
    assert_eq!(
        lb.metric(&format!(
            "sluice_requests_total{{upstream=\"web\",backend=\"{dead}\",code=\"502\"}}"
        ))
        .await,
        Some(1.0),
        "the 502 is the last tried backend's"
    );
    assert_eq!(
        lb.metric(&format!("sluice_backend_failures_total{l}"))
            .await,
        Some(3.0)
    );
    assert_eq!(
        lb.metric(&format!("sluice_backend_healthy{l}")).await,
        Some(0.0),
        "three connect failures in a row ejected it"
    );

    // Drained, the only backend leaves nothing to pick: 503 with no backend label.
    lb.admin("POST", &format!("/upstreams/web/backends/{dead}/drain"))
        .await;
    assert_eq!(
        get_host(&lb, "app.test").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        lb.metric("sluice_requests_total{upstream=\"web\",backend=\"\",code=\"503\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_client_that_leaves_before_its_answer_counts_as_499() {
    let gate = Arc::new(Notify::new());
    let slow = TestBackend::held(gate.clone(), "late").await;
    let lb = Sluice::start(&config(&[slow.url()], "")).await;
    assert_eq!(lb.metric("sluice_client_connections").await, Some(0.0));
    let mut c = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    slow.wait_hits(1, "the request reached the backend").await;
    assert_eq!(
        lb.metric("sluice_client_connections").await,
        Some(1.0),
        "the waiting client"
    );
    drop(c);
    let series = format!(
        "sluice_requests_total{{upstream=\"web\",backend=\"{}\",code=\"499\"}}",
        slow.addr
    );
    tokio::time::timeout(DEADLINE, async {
        while lb.metric(&series).await != Some(1.0) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the abandoned request is counted as 499");
    assert_eq!(lb.metric("sluice_client_connections").await, Some(0.0));
    gate.notify_waiters();
}
