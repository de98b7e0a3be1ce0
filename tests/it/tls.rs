//! TLS listeners (SPEC §2 `tls`, §4): the certificate chosen by SNI (the first one
//! without SNI or for an unknown name), ALPN h2 and http/1.1, `X-Forwarded-Proto:
//! https`, upgrades, and a clear refusal of unusable certificate files.

use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::process::{run, temp_config};
use crate::support::tls::{cert_der, connect, data, sent_cert, tls_sluice, tls_sluice_with};
use crate::support::*;

#[tokio::test]
async fn the_certificate_is_chosen_by_sni_and_the_first_serves_the_rest() {
    let be = TestBackend::echo().await;
    let lb = tls_sluice(&be).await;
    let (a, b) = (cert_der("a.pem"), cert_der("b.pem"));
    for (sni, want, which) in [
        (Some("a.test"), &a, "a"),
        (Some("b.test"), &b, "b"),
        (Some("www.b.test"), &b, "b (wildcard)"),
        (Some("B.TEST"), &b, "b (case)"),
        (
            Some("c.test"),
            &a,
            "the first, for a name no certificate has",
        ),
        (None, &a, "the first, without SNI"),
    ] {
        let mut s = connect(&lb, sni, &[b"http/1.1"]).await;
        assert!(sent_cert(&s) == *want, "{sni:?}: expected {which}");
        // And HTTP/1.1 through it, marked https for the backend.
        s.write_all(b"GET /x HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
            .await
            .expect("answer in time")
            .ok();
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        let j = echoed(body_of(&out));
        assert_eq!(echoed_header(&j, "x-forwarded-proto"), ["https"], "{out}");
        assert_eq!(echoed_header(&j, "x-forwarded-host"), ["app.test"], "{out}");
    }
}

#[tokio::test]
async fn alpn_h2_serves_http2_over_tls() {
    let be = TestBackend::echo().await;
    let lb = tls_sluice(&be).await;
    let s = connect(&lb, Some("a.test"), &[b"h2", b"http/1.1"]).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://a.test/h2")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(DEADLINE, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let j = echoed(std::str::from_utf8(&body).unwrap());
    assert_eq!(j["uri"], "/h2");
    assert_eq!(echoed_header(&j, "x-forwarded-proto"), ["https"]);
}

#[tokio::test]
async fn an_upgrade_over_tls_becomes_a_tunnel() {
    let be = TestBackend::upgrade_echo().await;
    let lb = tls_sluice(&be).await;
    let mut s = connect(&lb, Some("a.test"), &[b"http/1.1"]).await;
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    s.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut got))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(&got, b"PING");
}

#[test]
fn unusable_certificate_files_stop_startup_and_fail_check() {
    let (a_pem, a_key, b_key) = (data("a.pem"), data("a.key"), data("b.key"));
    let missing = data("missing.pem");
    let encrypted = temp_config(
        "encrypted.key",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
    );
    for (cert, key, says) in [
        (&missing, &a_key, "missing.pem: cannot read"),
        (&a_pem, &encrypted, "encrypted.key: is encrypted"),
        (&a_key, &a_key, "a.key: holds no certificate"),
        (&a_pem, &a_pem, "a.pem: not a PEM private key file"),
        (&a_pem, &b_key, "does not match the key"),
    ] {
        let path = temp_config(
            "tls.toml",
            &format!(
                "[[listener]]\naddress = \"127.0.0.1:0\"\n\
                 tls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}\n\
                 [upstream.web]\nbackends = [{{ url = \"127.0.0.1:1\" }}]\n",
                cert.display(),
                key.display()
            ),
        );
        let (code, _, err) = run(&["-c", path.to_str().unwrap()]);
        assert_eq!(code, 1, "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(says), "expected {says:?} in {err}");
        let (code, _, err) = run(&["check", "-c", path.to_str().unwrap()]);
        assert_eq!(code, 1, "check reads certificates too: {err}");
        assert!(err.contains(says), "expected {says:?} in {err}");
        // FILE:LINE:COL at the file named, on the config's third line.
        let at = format!("{}:3:", path.display());
        assert!(err.starts_with(&at), "expected {at:?} first in {err}");
    }
}

#[tokio::test]
async fn silent_clients_are_cut_off_at_header_read_timeout() {
    let be = TestBackend::replying("a").await;
    let lb = tls_sluice_with(&be, "[limits]\nheader_read_timeout = \"200ms\"").await;
    // No handshake at all.
    let mut tcp = TcpStream::connect(lb.addr).await.unwrap();
    assert!(
        closes_within(&mut tcp, Duration::from_secs(2)).await,
        "closed without a handshake"
    );
    // A handshake, then no request.
    let mut s = connect(&lb, Some("a.test"), &[b"http/1.1"]).await;
    let cut = tokio::time::timeout(Duration::from_secs(2), async {
        let mut buf = [0u8; 64];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(cut.is_ok(), "closed without a request");
}

#[tokio::test]
async fn a_tunnel_over_tls_holds_its_connection_slot() {
    let be = TestBackend::upgrade_echo().await;
    let lb = tls_sluice_with(&be, "[limits]\nmax_connections = 1").await;
    let mut s = connect(&lb, Some("a.test"), &[b"http/1.1"]).await;
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 101"));
    s.write_all(b"hi").await.unwrap();
    let mut got = [0u8; 2];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut got))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(&got, b"HI");
    // The tunnel is the one connection allowed: a second client waits in the backlog
    // (its handshake gets no answer) until the tunnel closes.
    let second = connect(&lb, Some("b.test"), &[b"http/1.1"]);
    tokio::pin!(second);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut second)
            .await
            .is_err(),
        "a second connection was served beside the tunnel"
    );
    drop(s);
    let served = second.await;
    assert!(sent_cert(&served) == cert_der("b.pem"));
}

fn https_upstream(backend: &TestBackend, extra: &str) -> String {
    format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [upstream.web]\nbackends = [{{ url = \"{}\" }}]\n{extra}\n",
        backend.https_url()
    )
}

#[tokio::test]
async fn https_backends_are_reached_over_tls_trusting_ca_file() {
    let be = TestBackend::tls_replying("secure").await;
    let ca = data("ca.pem");
    let lb = Sluice::start(&https_upstream(
        &be,
        &format!("ca_file = \"{}\"", ca.display()),
    ))
    .await;
    for _ in 0..3 {
        let (s, _, body) = lb.get("/").await;
        assert_eq!((s, body.as_str()), (StatusCode::OK, "secure"));
    }
    assert_eq!(
        be.connections(),
        1,
        "the TLS connection is pooled and reused"
    );
    // An answer before the whole body is sent: the rest goes beside the response, on
    // the two halves of the connection, which is then not reused.
    let req = http::Request::post("/up")
        .body(http_body_util::Full::new(bytes::Bytes::from(vec![
            b'x';
            4 << 20
        ])))
        .unwrap();
    let (s, _, body) = lb.send(req).await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "secure"));
    let (s, _, _) = lb.get("/").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(be.connections(), 2, "a new connection after the split one");
}

#[tokio::test]
async fn a_large_upload_reaches_an_https_backend_whole() {
    // The backend reads the whole body before answering, after a pause that lets the
    // socket fill: every byte sluice wrote must leave rustls's buffers (sluice flushes
    // at the end of a body), not wait there for more writes that never come.
    let be = TestBackend::start_tls(
        "backend",
        |req: http::Request<hyper::body::Incoming>| async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let n = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes().len())
                .unwrap_or(0);
            http::Response::new(full(n.to_string()))
        },
    )
    .await;
    let lb = Sluice::start(&https_upstream(
        &be,
        &format!("ca_file = \"{}\"", data("ca.pem").display()),
    ))
    .await;
    for size in [1usize, 100_000, 4 << 20] {
        let req = http::Request::post("/count")
            .body(http_body_util::Full::new(bytes::Bytes::from(vec![
                b'y';
                size
            ])))
            .unwrap();
        let (s, _, body) = lb.send(req).await;
        assert_eq!((s, body), (StatusCode::OK, size.to_string()));
    }
}

#[tokio::test]
async fn an_https_backend_named_by_dns_is_verified_for_that_name() {
    let be = TestBackend::tls_replying("secure").await;
    let lb = Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.web]\nca_file = \"{}\"\nbackends = [{{ url = \"https://localhost:{}\" }}]\n",
        data("ca.pem").display(),
        be.addr.port()
    ))
    .await;
    let (s, _, body) = lb.get("/").await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "secure"));
}

#[tokio::test]
async fn an_https_backend_with_an_untrusted_certificate_is_a_502() {
    let be = TestBackend::tls_replying("secure").await;
    let other = data("other-ca.pem");
    let lb = Sluice::start(&https_upstream(
        &be,
        &format!("ca_file = \"{}\"", other.display()),
    ))
    .await;
    let (s, _, body) = lb.get("/").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert!(
        !body.contains("127.0.0.1"),
        "no backend address in the body: {body}"
    );
    assert_eq!(be.hits(), 0, "nothing was sent over the refused handshake");

    // A trusted certificate for another name (a.test, served at 127.0.0.1): refused.
    let wrong = TestBackend::start_tls("a", |_req| async { http::Response::new(full("a")) }).await;
    let lb = Sluice::start(&https_upstream(
        &wrong,
        &format!("ca_file = \"{}\"", data("ca.pem").display()),
    ))
    .await;
    assert_eq!(lb.get("/").await.0, StatusCode::BAD_GATEWAY);
    assert_eq!(wrong.hits(), 0);
}

#[tokio::test]
async fn health_checks_reach_https_backends_over_tls() {
    let be = TestBackend::tls_replying("secure").await;
    let lb = Sluice::start(&https_upstream(
        &be,
        &format!(
            "ca_file = \"{}\"\n[upstream.web.health]\npath = \"/healthz\"\ninterval = \"50ms\"\nrise = 1\nfall = 1\n",
            data("ca.pem").display()
        ),
    ))
    .await;
    be.wait_hits(2, "probes reach the backend").await;
    let j = lb.status().await;
    assert_eq!(j["upstreams"][0]["backends"][0]["state"], "healthy");
}

#[test]
fn an_unreadable_ca_file_stops_startup() {
    let path = temp_config(
        "ca.toml",
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.web]\nca_file = \"/nonexistent/ca.pem\"\nbackends = [{ url = \"https://127.0.0.1:1\" }]\n",
    );
    let (code, _, err) = run(&["-c", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("ca_file /nonexistent/ca.pem"), "{err}");
    let (code, _, err) = run(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1, "check reads ca_file too: {err}");
    let at = format!("{}:4:", path.display());
    assert!(err.starts_with(&at) && err.contains("ca_file"), "{err}");
}

/// Refused counts by label, read from the running sluice.
fn refused(lb: &Sluice, label: &str) -> u64 {
    let mut n = 0;
    lb.shared.refused.each(|l, v| {
        if l == label {
            n = v;
        }
    });
    n
}

/// Waits until `label` was counted `n` times: the count may follow the close the
/// client saw by a moment.
async fn wait_refused(lb: &Sluice, label: &str, n: u64) {
    tokio::time::timeout(DEADLINE, async {
        while refused(lb, label) < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{label} counted {} times, not {n}", refused(lb, label)));
    assert_eq!(refused(lb, label), n, "{label}");
}

/// Issue #9: plain HTTP sent to a TLS port gets a 400 saying so (as nginx does), not a
/// silent close; it and a broken handshake are counted as refusals.
#[tokio::test]
async fn plain_http_to_a_tls_port_gets_400_and_bad_handshakes_are_counted() {
    let be = TestBackend::replying("tls").await;
    let lb = tls_sluice(&be).await;
    let answer = raw_exchange(
        lb.addr,
        b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(body_of(&answer).contains("speaks TLS"), "{answer}");
    wait_refused(&lb, "plain_http_on_tls", 1).await;

    // A TCP check (connect, then close) is nothing to refuse.
    drop(TcpStream::connect(lb.addr).await.unwrap());
    // A handshake record that is not a ClientHello.
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x04, 0xff, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    assert!(closes_within(&mut s, Duration::from_secs(5)).await);
    wait_refused(&lb, "tls_handshake", 1).await;
    assert_eq!(be.hits(), 0);
}

/// A head over max_header_bytes on a TLS connection is answered 431 and counted as a
/// refusal, as over plain HTTP.
#[tokio::test]
async fn an_oversized_head_over_tls_is_counted() {
    let be = TestBackend::replying("tls").await;
    let lb = tls_sluice_with(&be, "[limits]\nmax_header_bytes = \"8KiB\"").await;
    let mut s = connect(&lb, Some("a.test"), &[b"http/1.1"]).await;
    let big = "x".repeat(20_000);
    s.write_all(format!("GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut got)).await;
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 431"), "{got}");
    wait_refused(&lb, "header_too_large", 1).await;
}

/// The sticky cookie is `Secure` when the request came over TLS (and only then).
#[tokio::test]
async fn the_sticky_cookie_is_secure_over_tls() {
    let be = TestBackend::replying("tls").await;
    let lb = tls_sluice_with(&be, "[upstream.web.sticky]\ncookie = \"s\"").await;
    let mut s = connect(&lb, Some("a.test"), &[b"http/1.1"]).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut got)).await;
    let got = String::from_utf8_lossy(&got).to_ascii_lowercase();
    let cookie = got
        .lines()
        .find(|l| l.starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("{got}"));
    assert!(cookie.contains("; secure"), "{cookie}");

    let plain = Sluice::over(&[be.url()], "sticky = { cookie = \"s\" }").await;
    let (_, h, _) = plain.get("/").await;
    let cookie = h["set-cookie"].to_str().unwrap();
    assert!(!cookie.to_ascii_lowercase().contains("secure"), "{cookie}");
}

/// SPEC §4's Host, target and CONNECT rules hold over TLS as over plain HTTP: each
/// refused, none reaching the backend.
#[tokio::test]
async fn heads_over_tls_get_the_same_host_and_target_rules() {
    let be = TestBackend::replying("tls").await;
    let lb = tls_sluice(&be).await;
    for (raw, want) in [
        ("GET / HTTP/1.1\r\nHost: a.test/../x\r\n\r\n", "400"),
        ("GET / HTTP/1.1\r\nHost: user@a.test\r\n\r\n", "400"),
        ("GET / HTTP/1.0\r\nHost: exa mple\r\n\r\n", "400"),
        ("GET foo HTTP/1.1\r\nHost: a.test\r\n\r\n", "400"),
        ("GET * HTTP/1.1\r\nHost: a.test\r\n\r\n", "400"),
        (
            "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
            "405",
        ),
    ] {
        let mut s = connect(&lb, Some("a.test"), &[b"http/1.1"]).await;
        s.write_all(raw.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut got)).await;
        let got = String::from_utf8_lossy(&got);
        assert_eq!(got.split(' ').nth(1), Some(want), "{raw:?}: {got}");
    }
    assert_eq!(be.hits(), 0);
}

/// SPEC §2 `tls.resumption`: on by default (a returning client resumes its session),
/// off: every connection makes a full handshake.
#[tokio::test]
async fn sessions_resume_unless_resumption_is_off() {
    use crate::support::tls::{client_config, handshake_with};
    use rustls::HandshakeKind;
    let be = TestBackend::replying("ok").await;
    for (resumption, second) in [(true, HandshakeKind::Resumed), (false, HandshakeKind::Full)] {
        let lb = Sluice::start(&format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n\
             tls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}], resumption = {resumption} }}\n\
             [upstream.web]\nbackends = [{{ url = \"{}\" }}]\n",
            data("a.pem").display(),
            data("a.key").display(),
            be.url()
        ))
        .await;
        let client = client_config(&[b"http/1.1"], true);
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let tcp = TcpStream::connect(lb.addr).await.unwrap();
            let mut s = handshake_with(tcp, Some("a.test"), client.clone()).await;
            kinds.push(s.get_ref().1.handshake_kind());
            // A whole exchange, so that the session ticket sent after the handshake
            // is read.
            s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut answer = Vec::new();
            let _ = s.read_to_end(&mut answer).await;
            assert!(answer.starts_with(b"HTTP/1.1 200"));
        }
        assert_eq!(
            kinds,
            [Some(HandshakeKind::Full), Some(second)],
            "resumption = {resumption}"
        );
    }
}
