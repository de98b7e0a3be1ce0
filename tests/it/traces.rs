//! Decision traces (SPEC §9): `X-Sluice-Debug: 1` from a `debug_from` client gets an
//! `X-Sluice-Trace` line naming the route, the candidates, the pick and every attempt;
//! `GET /debug/requests` keeps them.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

use crate::support::*;

fn config(debug_from: &str, backends: &[String]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ url = \"{b}\" }}"))
        .collect();
    format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\
         [admin]\naddress = \"127.0.0.1:0\"\ndebug_from = [{debug_from}]\n\
         [upstream.web]\nstrategy = \"first\"\nbackends = [{}]\n",
        list.join(", ")
    )
}

fn asking(lb: &Sluice, path: &str) -> Request<Full<Bytes>> {
    Request::get(lb.url(path))
        .header("x-sluice-debug", "1")
        .body(Full::default())
        .unwrap()
}

#[tokio::test]
async fn a_trace_names_the_pick_and_every_attempt() {
    let dead = dead_addr().await;
    let live = TestBackend::replying("live").await;
    let lb = Sluice::start(&config(
        "\"127.0.0.1/32\"",
        &[format!("http://{dead}"), live.url()],
    ))
    .await;
    let (status, headers, body) = lb.send(asking(&lb, "/x?y=1")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "live"));
    let trace = headers["x-sluice-trace"].to_str().unwrap();
    let live_id = live.addr.to_string();
    assert_eq!(
        trace,
        format!(
            "route=*/; upstream=web; strategy=first; candidates={dead}:1,{live_id}:0; \
             picked={dead}; attempt1={dead}:refused; retry=connect_failure; \
             attempt2={live_id}:200"
        )
    );

    // The admin API keeps it, with the request's end.
    let (code, json) = lb.admin("GET", "/debug/requests?limit=1").await;
    assert_eq!(code, StatusCode::OK);
    let list: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(list.len(), 1, "{json}");
    let kept = &list[0];
    assert_eq!(kept["method"], "GET");
    assert_eq!(kept["path"], "/x?y=1");
    assert_eq!(kept["status"], 200);
    assert!(kept["duration_ms"].as_f64().is_some(), "{json}");
    assert!(kept["ts"].is_string(), "{json}");
    assert_eq!(kept["picked"], dead.to_string());
    assert_eq!(kept["attempt2"], format!("{live_id}:200"));
    assert_eq!(kept["retry"], "connect_failure");
    let (code, _) = lb.admin("GET", "/debug/requests?limit=some").await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn only_clients_in_debug_from_that_ask_get_one() {
    let live = TestBackend::replying("live").await;
    // The test's client is 127.0.0.1, not in the list.
    let lb = Sluice::start(&config("\"127.0.0.2/32\"", &[live.url()])).await;
    let (status, headers, _) = lb.send(asking(&lb, "/")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get("x-sluice-trace").is_none(), "{headers:?}");

    let lb = Sluice::start(&config("\"127.0.0.0/8\"", &[live.url()])).await;
    let (_, headers, _) = lb.get("/").await;
    assert!(
        headers.get("x-sluice-trace").is_none(),
        "not asked: {headers:?}"
    );
    let (_, json) = lb.admin("GET", "/debug/requests").await;
    assert_eq!(json, "[]");
}

#[tokio::test]
async fn a_failed_request_is_traced_and_http2_clients_get_one_too() {
    let dead = dead_addr().await;
    let lb = Sluice::start(&config("\"127.0.0.1\"", &[format!("http://{dead}")])).await;
    let (status, headers, _) = lb.send(asking(&lb, "/")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let trace = headers["x-sluice-trace"].to_str().unwrap();
    // Its only backend, tried again as `retry` allows, then sluice's own answer.
    assert!(
        trace.contains(&format!("attempt1={dead}:refused; retry=connect_failure; ")),
        "{trace}"
    );
    assert!(
        trace.ends_with("refused; error=backend unreachable"),
        "{trace}"
    );

    let live = TestBackend::replying("live").await;
    let lb = Sluice::start(&config("\"127.0.0.1\"", &[live.url()])).await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let (status, headers, _) = send_with(&h2, asking(&lb, "/over-h2")).await;
    assert_eq!(status, StatusCode::OK);
    let trace = headers["x-sluice-trace"].to_str().unwrap();
    assert!(
        trace.ends_with(&format!("attempt1={}:200", live.addr)),
        "{trace}"
    );
}

#[tokio::test]
async fn the_ask_is_read_whatever_its_case_from_raw_http1_lines() {
    use tokio::io::AsyncWriteExt;
    let live = TestBackend::replying("live").await;
    let lb = Sluice::start(&config("\"127.0.0.1\"", &[live.url()])).await;
    let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(b"GET /raw HTTP/1.1\r\nHost: x\r\nX-SLUICE-Debug:  1 \r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains(&format!(
            "x-sluice-trace: route=*/; upstream=web; strategy=first; candidates={}:1",
            live.addr
        )),
        "{head}"
    );
}

/// The numbers each strategy decided by: p2c's two random draws, and for
/// consistent_hash the key's hash and its Maglev table slot.
#[tokio::test]
async fn traces_name_the_draws_of_p2c_and_the_slot_of_consistent_hash() {
    let backends = [
        TestBackend::replying("a").await,
        TestBackend::replying("b").await,
        TestBackend::replying("c").await,
    ];
    let urls: Vec<String> = backends.iter().map(|b| b.url()).collect();
    let ids: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    let p2c = config("\"127.0.0.1\"", &urls).replace("strategy = \"first\"", "strategy = \"p2c\"");
    let lb = Sluice::start(&p2c).await;
    for _ in 0..10 {
        let (_, headers, _) = lb.send(asking(&lb, "/")).await;
        let trace = headers["x-sluice-trace"].to_str().unwrap();
        let field = |k: &str| {
            trace
                .split("; ")
                .find_map(|f| f.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("no {k} in {trace}"))
                .to_owned()
        };
        let sampled = field("sampled");
        let drawn: Vec<&str> = sampled.split(',').collect();
        assert_eq!(drawn.len(), 2, "{trace}");
        assert_ne!(drawn[0], drawn[1], "{trace}");
        assert!(drawn.iter().all(|d| ids.iter().any(|i| i == d)), "{trace}");
        assert!(drawn.contains(&field("picked").as_str()), "{trace}");
    }

    let hashed = config("\"127.0.0.1\"", &urls).replace(
        "strategy = \"first\"",
        "strategy = \"consistent_hash\"\nhash_key = \"header:x-user\"",
    );
    let lb = Sluice::start(&hashed).await;
    let req = Request::get(lb.url("/"))
        .header("x-sluice-debug", "1")
        .header("x-user", "alice")
        .body(Full::default())
        .unwrap();
    let (_, headers, _) = lb.send(req).await;
    let trace = headers["x-sluice-trace"].to_str().unwrap();
    let hash = trace
        .split("; ")
        .find_map(|f| f.strip_prefix("hash="))
        .expect(trace);
    let slot: u64 = trace
        .split("; ")
        .find_map(|f| f.strip_prefix("slot="))
        .expect(trace)
        .parse()
        .unwrap();
    assert_eq!(
        slot,
        u64::from_str_radix(hash, 16).unwrap() % 65_537,
        "{trace}"
    );
}
