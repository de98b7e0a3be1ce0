//! Traffic policy (SPEC §8): route access lists. Clients come from distinct loopback
//! addresses (127.0.0.2, 127.0.0.3…), as distinct hosts would.

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;

use crate::support::*;

/// A GET of `path` from the local address `from`; the status line and the body.
async fn get_from(from: &str, to: SocketAddr, path: &str) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut s = socket.connect(to).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_until_close(&mut s, DEADLINE).await
}

#[tokio::test]
async fn access_lists_admit_allowed_clients_and_deny_wins() {
    let be = TestBackend::replying("ok").await;
    let lb = Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [[route]]\npath_prefix = \"/office\"\nallow = [\"127.0.0.2\", \"10.0.0.0/8\"]\nupstream = \"web\"\n\
         [[route]]\npath_prefix = \"/public\"\ndeny = [\"127.0.0.3/32\"]\nupstream = \"web\"\n\
         [[route]]\npath_prefix = \"/both\"\nallow = [\"127.0.0.0/8\"]\ndeny = [\"127.0.0.4\"]\nupstream = \"web\"\n\
         [[route]]\nupstream = \"web\"\n\
         [upstream.web]\nbackends = [{{ url = \"{}\" }}]\n",
        be.url()
    ))
    .await;
    let status = |got: &str| got.split(' ').nth(1).unwrap_or("").to_owned();
    assert_eq!(
        status(&get_from("127.0.0.2", lb.addr, "/office").await),
        "200"
    );
    let refused = get_from("127.0.0.5", lb.addr, "/office").await;
    assert_eq!(status(&refused), "403", "{refused}");
    assert!(refused.ends_with("403 forbidden\n"), "{refused}");
    assert_eq!(
        status(&get_from("127.0.0.2", lb.addr, "/public").await),
        "200"
    );
    assert_eq!(
        status(&get_from("127.0.0.3", lb.addr, "/public").await),
        "403"
    );
    assert_eq!(
        status(&get_from("127.0.0.5", lb.addr, "/both").await),
        "200"
    );
    assert_eq!(
        status(&get_from("127.0.0.4", lb.addr, "/both").await),
        "403",
        "deny wins"
    );
    assert_eq!(
        status(&get_from("127.0.0.4", lb.addr, "/other").await),
        "200",
        "no list: all"
    );
    assert_eq!(be.hits(), 4, "nothing refused reached the backend");
    assert_eq!(
        lb.metric("sluice_denied_total{upstream=\"web\",reason=\"acl\"}")
            .await,
        Some(3.0)
    );
    assert_eq!(
        lb.metric("sluice_refused_total{reason=\"acl\"}").await,
        Some(3.0)
    );
}

#[tokio::test]
async fn redirects_answer_at_once_with_the_placeholders_filled_in() {
    let be = TestBackend::replying("ok").await;
    let lb = Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nhost = \"plain.test\"\nredirect = {{ to = \"https://{{host}}{{uri}}\", status = 308 }}\n\
         [[route]]\npath_prefix = \"/old\"\nredirect = {{ to = \"{{scheme}}://new.test/moved\" }}\n\
         [[route]]\npath_prefix = \"/private\"\nallow = [\"127.0.0.9\"]\nredirect = {{ to = \"https://x.test/\" }}\n\
         [[route]]\nupstream = \"web\"\n\
         [upstream.web]\nbackends = [{{ url = \"{}\" }}]\n",
        be.url()
    ))
    .await;
    let head = |raw: &str| {
        raw.split("\r\n\r\n")
            .next()
            .unwrap_or("")
            .to_ascii_lowercase()
    };
    let got = raw_exchange(
        lb.addr,
        b"GET /a/b?c=1 HTTP/1.1\r\nHost: plain.test:8080\r\nConnection: close\r\n\r\n",
        DEADLINE,
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 308"), "{got}");
    assert!(
        head(&got).contains("\r\nlocation: https://plain.test/a/b?c=1"),
        "{got}"
    );
    let got = raw_exchange(
        lb.addr,
        b"GET /old/page HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        DEADLINE,
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 301"), "the default status: {got}");
    assert!(
        head(&got).contains("\r\nlocation: http://new.test/moved"),
        "{got}"
    );
    // The access list comes first.
    let got = raw_exchange(
        lb.addr,
        b"GET /private HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        DEADLINE,
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 403"), "{got}");
    assert_eq!(be.hits(), 0, "redirects need no upstream");
    let got = raw_exchange(
        lb.addr,
        b"GET /else HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        DEADLINE,
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
}

#[tokio::test]
async fn header_rules_shape_requests_and_answers_sluices_own_included() {
    let be = TestBackend::echo().await;
    let lb = Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\
         [[route]]\npath_prefix = \"/closed\"\nallow = [\"10.0.0.0/8\"]\nupstream = \"web\"\n\
         response_headers = {{ set = {{ \"Strict-Transport-Security\" = \"max-age=63072000\" }} }}\n\
         [[route]]\nupstream = \"web\"\n\
         request_headers = {{ set = {{ \"X-Env\" = \"prod\" }}, add = {{ \"Via\" = \"sluice\" }}, remove = [\"X-Debug\"] }}\n\
         response_headers = {{ set = {{ \"Strict-Transport-Security\" = \"max-age=63072000\" }}, remove = [\"Content-Type\"] }}\n\
         [upstream.web]\nbackends = [{{ url = \"{}\" }}]\n",
        be.url()
    ))
    .await;
    let req = http::Request::get("/x")
        .header("x-env", "dev")
        .header("via", "1.1 edge")
        .header("x-debug", "1")
        .body(http_body_util::Full::default())
        .unwrap();
    let (s, h, body) = lb.send(req).await;
    assert_eq!(s, http::StatusCode::OK);
    let j = echoed(&body);
    assert_eq!(echoed_header(&j, "x-env"), ["prod"], "set replaces");
    assert_eq!(
        echoed_header(&j, "via"),
        ["1.1 edge", "sluice"],
        "add appends"
    );
    assert!(echoed_header(&j, "x-debug").is_empty(), "removed");
    assert!(
        !echoed_header(&j, "x-forwarded-for").is_empty(),
        "sluice's own rules still apply"
    );
    assert_eq!(h["strict-transport-security"], "max-age=63072000");
    assert!(h.get("content-type").is_none(), "removed from the answer");
    // sluice's own answer (403) gets its route's response rules too.
    let (s, h, _) = lb.get("/closed").await;
    assert_eq!(s, http::StatusCode::FORBIDDEN);
    assert_eq!(h["strict-transport-security"], "max-age=63072000");
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_per_key() {
    let be = TestBackend::replying("ok").await;
    let lb = Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [[route]]\npath_prefix = \"/api\"\nrate_limit = {{ key = \"header:x-api-key\", rate = \"1/m\", burst = 2 }}\nupstream = \"web\"\n\
         [[route]]\nrate_limit = {{ rate = \"1/h\", burst = 3 }}\nupstream = \"web\"\n\
         [upstream.web]\nbackends = [{{ url = \"{}\" }}]\n",
        be.url()
    ))
    .await;
    let keyed = |key: &str| {
        http::Request::get("/api/x")
            .header("x-api-key", key)
            .body(http_body_util::Full::default())
            .unwrap()
    };
    for _ in 0..2 {
        assert_eq!(lb.send(keyed("alice")).await.0, http::StatusCode::OK);
    }
    let (s, h, body) = lb.send(keyed("alice")).await;
    assert_eq!(s, http::StatusCode::TOO_MANY_REQUESTS, "{body}");
    let wait: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(
        lb.send(keyed("bob")).await.0,
        http::StatusCode::OK,
        "another key"
    );
    // By client address: three, then 429.
    for _ in 0..3 {
        assert_eq!(lb.get("/").await.0, http::StatusCode::OK);
    }
    assert_eq!(lb.get("/").await.0, http::StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(be.hits(), 6, "nothing over the limit reached the backend");
    assert_eq!(
        lb.metric("sluice_denied_total{upstream=\"web\",reason=\"rate_limit\"}")
            .await,
        Some(2.0)
    );
}

/// SPEC §8 `trusted_proxies`: a trusted peer's X-Forwarded-For names the client (the
/// right-most entry that is not a trusted proxy), for access lists and rate limits;
/// from any other peer it is not believed.
#[tokio::test]
async fn only_trusted_proxies_name_the_client() {
    let be = TestBackend::replying("ok").await;
    let config = |trusted: &str| {
        format!(
            "[server]\ntrusted_proxies = [{trusted}]\n[[listener]]\naddress = \"127.0.0.1:0\"\n\
             [[route]]\nallow = [\"203.0.113.0/24\"]\nupstream = \"web\"\n\
             [upstream.web]\nbackends = [{{ url = \"{}\" }}]\n",
            be.url()
        )
    };

    let behind = Sluice::start(&config("\"127.0.0.0/8\", \"10.0.0.0/8\"")).await;
    assert_eq!(
        with_xff(&behind, "203.0.113.7, 10.0.0.1").await.0,
        http::StatusCode::OK
    );
    assert_eq!(
        with_xff(&behind, "203.0.113.7, 198.51.100.1, 10.0.0.1")
            .await
            .0,
        http::StatusCode::FORBIDDEN,
        "the right-most untrusted entry is the client"
    );
    // The peer (127.0.0.1) is not trusted here: its X-Forwarded-For is not believed.
    let direct = Sluice::start(&config("\"10.0.0.0/8\"")).await;
    assert_eq!(
        with_xff(&direct, "203.0.113.7").await.0,
        http::StatusCode::FORBIDDEN
    );
}

/// A GET through `lb` carrying `X-Forwarded-For: xff`.
async fn with_xff(lb: &Sluice, xff: &str) -> (http::StatusCode, http::HeaderMap, String) {
    let req = http::Request::get("/")
        .header("x-forwarded-for", xff)
        .body(http_body_util::Full::default())
        .unwrap();
    lb.send(req).await
}
