//! Every refusal is logged and counted with a reason (issue #9): an access line for a
//! request sluice answered itself, an event line for a connection with no request, and
//! `sluice_refused_total{reason}` agreeing with the log.

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::process::{Proc, temp_config};
use crate::support::*;

fn tls_file(name: &str) -> String {
    format!("{}/tests/data/tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The plain listener's, the TLS listener's and the admin API's addresses, from their
/// events, in whatever order the events come.
async fn addresses(p: Proc) -> (Proc, String, String, String) {
    tokio::task::spawn_blocking(move || {
        let (mut plain, mut tls, mut admin) = (None, None, None);
        while plain.is_none() || tls.is_none() || admin.is_none() {
            let line = p.line_with("listening\"");
            let j: serde_json::Value = serde_json::from_str(&line).unwrap();
            let addr = j["address"].as_str().unwrap().to_owned();
            match (j["event"].as_str(), j["tls"].as_bool()) {
                (Some("admin listening"), _) => admin = Some(addr),
                (_, Some(true)) => tls = Some(addr),
                _ => plain = Some(addr),
            }
        }
        (p, plain.unwrap(), tls.unwrap(), admin.unwrap())
    })
    .await
    .unwrap()
}

/// Sends `raw`, says it is done (so sluice, which reads what a refused client still
/// sends before closing, need not wait for it), and reads the answer.
async fn refused(addr: std::net::SocketAddr, raw: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    s.shutdown().await.unwrap();
    read_until_close(&mut s, wait).await
}

#[tokio::test]
async fn every_refusal_has_a_log_line_and_a_count_with_the_same_reason() {
    let be = TestBackend::replying("ok").await;
    let config = temp_config(
        "refusals.toml",
        &format!(
            r#"[[listener]]
address = "127.0.0.1:0"
[[listener]]
address = "127.0.0.1:0"
tls = {{ certificates = [{{ cert = "{}", key = "{}" }}] }}
[admin]
address = "127.0.0.1:0"
[limits]
max_header_bytes = "2KiB"
max_body_bytes = 10
header_read_timeout = "2s"
[[route]]
host = "app.test"
upstream = "web"
[upstream.web]
backends = [{{ url = "{}" }}]
"#,
            tls_file("a.pem"),
            tls_file("a.key"),
            be.url()
        ),
    );
    let p = Proc::spawn(&["-c", config.to_str().unwrap(), "--log-format", "json"]);
    let (p, plain, tls, admin) = addresses(p).await;
    let (plain, tls) = (plain.parse().unwrap(), tls.parse().unwrap());
    let wait = Duration::from_secs(8);
    let ask = |raw: &'static str| refused(plain, raw.as_bytes(), wait);

    let malformed = ask("GET / HTTP/1.1\r\nHost: app.test\r\nno colon here\r\n\r\n").await;
    assert!(malformed.starts_with("HTTP/1.1 400"), "{malformed}");
    let both = ask(
        "POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(both.starts_with("HTTP/1.1 400"), "{both}");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: {}\r\n\r\n",
        "x".repeat(3000)
    );
    let big = refused(plain, big.as_bytes(), wait).await;
    assert!(big.starts_with("HTTP/1.1 431"), "{big}");
    let body = ask("POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\n").await;
    assert!(body.starts_with("HTTP/1.1 413"), "{body}");
    let unrouted = ask("GET / HTTP/1.1\r\nHost: other.test\r\n\r\n").await;
    assert!(unrouted.starts_with("HTTP/1.1 404"), "{unrouted}");
    // A head that never ends.
    let mut slow = TcpStream::connect(plain).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: app")
        .await
        .unwrap();
    assert!(closes_within(&mut slow, wait).await);
    // Plain HTTP to the TLS port, and a broken handshake.
    let to_tls = refused(tls, b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n", wait).await;
    assert!(to_tls.starts_with("HTTP/1.1 400"), "{to_tls}");
    let mut hs = TcpStream::connect(tls).await.unwrap();
    hs.write_all(&[0x16, 0x03, 0x01, 0x00, 0x02, 0xff, 0xff])
        .await
        .unwrap();
    assert!(closes_within(&mut hs, wait).await);
    assert_eq!(be.hits(), 0, "nothing refused reached the backend");

    let expected: HashMap<&str, u64> = [
        ("bad_request", 2),
        ("header_too_large", 1),
        ("body_too_large", 1),
        ("no_route", 1),
        ("header_timeout", 1),
        ("plain_http_on_tls", 1),
        ("tls_handshake", 1),
    ]
    .into();
    // The metric.
    let text = {
        let req = http::Request::get(format!("http://{admin}/metrics"))
            .body(Default::default())
            .unwrap();
        send_with(&client(), req).await.2
    };
    for (label, n) in &expected {
        let series = format!("sluice_refused_total{{reason=\"{label}\"}} {n}");
        assert!(text.lines().any(|l| l == series), "{series} in\n{text}");
    }
    // The log: one line per refusal, whose reason starts with the metric's label.
    let lines = tokio::task::spawn_blocking(move || {
        let mut seen: HashMap<String, u64> = HashMap::new();
        let mut lines = Vec::new();
        while seen.values().sum::<u64>() < 8 {
            let line = p.line_with("\"reason\"");
            let j: serde_json::Value = serde_json::from_str(&line).unwrap();
            let reason = j["reason"].as_str().unwrap().to_owned();
            let label = reason.split(':').next().unwrap().to_owned();
            *seen.entry(label).or_default() += 1;
            lines.push(j);
        }
        (seen, lines)
    })
    .await
    .unwrap();
    let (seen, lines) = lines;
    let expected: HashMap<String, u64> =
        expected.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    assert_eq!(seen, expected, "{lines:#?}");
    let reasons: Vec<&str> = lines.iter().filter_map(|j| j["reason"].as_str()).collect();
    assert!(
        reasons.contains(&"bad_request: both Content-Length and Transfer-Encoding"),
        "{reasons:?}"
    );
    // Refused requests have access lines (status, client); connections event lines.
    for j in &lines {
        match j["reason"].as_str().unwrap() {
            "header_timeout" | "tls_handshake" => assert_eq!(j["event"], "refused", "{j}"),
            _ => assert!(j["status"].as_u64().unwrap() >= 400, "{j}"),
        }
        assert_eq!(j["client"], "127.0.0.1", "{j}");
    }
}
