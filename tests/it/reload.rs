//! A reload applies everything (SPEC §7): listeners added, removed and kept, TLS
//! certificates read again at the same paths, the admin address moved; WebSocket
//! tunnels and HTTP/2 connections on listeners that stay are not cut; a listener that
//! cannot be bound refuses the whole reload.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::process::{replace_file as write, temp_config};
use crate::support::tls::{cert_der, data};
use crate::support::*;

/// A config over `backend` with one TLS listener whose certificate pair sits at paths
/// of its own (`tag` names them), starting as `a.pem`; the config's path and the pair.
fn live_tls(tag: &str, backend: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("sluice-it-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("live.pem"), dir.join("live.key"));
    install("a", &cert, &key);
    let text = config(
        &[("127.0.0.1:0", Some((&cert, &key)))],
        "127.0.0.1:0",
        backend,
    );
    (temp_config(&format!("reload-{tag}.toml"), &text), cert, key)
}

/// Copies the test pair `name`.pem / `name`.key over the live paths.
fn install(name: &str, cert: &Path, key: &Path) {
    std::fs::copy(data(&format!("{name}.pem")), cert).unwrap();
    std::fs::copy(data(&format!("{name}.key")), key).unwrap();
}

/// A config with these `[[listener]]` addresses (`tls`: with this certificate pair),
/// an admin API and one upstream over `backend`.
fn config(listeners: &[(&str, Option<(&Path, &Path)>)], admin: &str, backend: &str) -> String {
    let mut text = String::new();
    for (addr, tls) in listeners {
        text += &format!("[[listener]]\naddress = \"{addr}\"\n");
        if let Some((cert, key)) = tls {
            text += &format!(
                "tls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}\n",
                cert.display(),
                key.display()
            );
        }
    }
    text + &format!(
        "[admin]\naddress = \"{admin}\"\n[upstream.web]\nbackends = [{{ url = \"{backend}\" }}]\n"
    )
}

async fn reload(lb: &Sluice) -> (StatusCode, String) {
    lb.admin("POST", "/reload").await
}

/// A GET on a new plain connection to `addr`; the body, or None if refused.
async fn get_at(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let got = read_until_close(&mut s, DEADLINE).await;
    Some(body_of(&got).to_owned())
}

/// The address the listener on `ip` (configured with port 0) is bound to, once it
/// accepts (the proxy starts serving on its own task).
async fn bound_on(lb: &Sluice, ip: &str) -> SocketAddr {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let found = lb
            .shared
            .listeners
            .local_addrs()
            .into_iter()
            .find(|a| a.ip().to_string() == ip);
        if let Some(a) = found {
            return a;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no listener on {ip}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn listeners_are_added_removed_and_kept_by_a_reload() {
    let (a, b) = (
        TestBackend::replying("a").await,
        TestBackend::replying("b").await,
    );
    let path = temp_config(
        "reload-listeners.toml",
        &config(&[("127.0.0.1:0", None)], "127.0.0.1:0", &a.url()),
    );
    let lb = Sluice::start_file(&path).await;
    let first = bound_on(&lb, "127.0.0.1").await;
    // A keep-alive connection on the listener that stays.
    let mut kept = TcpStream::connect(first).await.unwrap();
    kept.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_head(&mut kept).await.starts_with("HTTP/1.1 200"));

    write(
        &path,
        &config(
            &[("127.0.0.1:0", None), ("127.0.0.2:0", None)],
            "127.0.0.1:0",
            &b.url(),
        ),
    );
    let (s, body) = reload(&lb).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let second = bound_on(&lb, "127.0.0.2").await;
    assert_eq!(
        get_at(second).await.as_deref(),
        Some("b"),
        "the new listener serves"
    );
    assert_eq!(
        bound_on(&lb, "127.0.0.1").await,
        first,
        "the kept listener keeps its socket"
    );
    // The connection opened before the reload goes on, under the new upstreams.
    let mut buf = [0u8; 256];
    let _ = tokio::time::timeout(std::time::Duration::from_millis(50), kept.read(&mut buf)).await;
    kept.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_head(&mut kept).await.starts_with("HTTP/1.1 200"));

    // Long enough idle to be parked (20 ms): a parked connection drains too.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    write(
        &path,
        &config(&[("127.0.0.2:0", None)], "127.0.0.1:0", &b.url()),
    );
    let (s, _) = reload(&lb).await;
    assert_eq!(s, StatusCode::OK);
    // The accept loop lets go of the socket as it ends: shortly after the reload.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while TcpStream::connect(first).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the removed listener still accepts"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(
        closes_within(&mut kept, DEADLINE).await,
        "its idle connection is closed"
    );
    assert_eq!(get_at(second).await.as_deref(), Some("b"));
}

#[tokio::test]
async fn a_listener_that_cannot_be_bound_refuses_the_whole_reload() {
    let (a, b) = (
        TestBackend::replying("a").await,
        TestBackend::replying("b").await,
    );
    let taken = tokio::net::TcpListener::bind("127.0.0.3:0").await.unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let path = temp_config(
        "reload-taken.toml",
        &config(&[("127.0.0.1:0", None)], "127.0.0.1:0", &a.url()),
    );
    let lb = Sluice::start_file(&path).await;
    write(
        &path,
        &config(
            &[("127.0.0.1:0", None), (&taken_addr, None)],
            "127.0.0.1:0",
            &b.url(),
        ),
    );
    let (s, body) = reload(&lb).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(body.contains(&taken_addr), "{body}");
    assert_eq!(lb.get("/").await.2, "a", "the running config stays whole");
}

#[tokio::test]
async fn a_tunnel_and_an_http2_connection_on_a_kept_listener_survive_reloads() {
    let ws = TestBackend::upgrade_echo().await;
    let (one, two) = (
        TestBackend::replying("one").await,
        TestBackend::replying("two").await,
    );
    let path = temp_config(
        "reload-tunnel.toml",
        &config(&[("127.0.0.1:0", None)], "127.0.0.1:0", &ws.url()),
    );
    let lb = Sluice::start_file(&path).await;
    let mut tunnel = TcpStream::connect(lb.addr).await.unwrap();
    tunnel
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    assert!(read_head(&mut tunnel).await.starts_with("HTTP/1.1 101"));
    // An HTTP/2 (h2c) connection, kept open across the reloads.
    let tcp = TcpStream::connect(lb.addr).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for i in 0..5 {
        let backends = if i % 2 == 0 { one.url() } else { two.url() };
        let extra = if i % 2 == 0 {
            vec![("127.0.0.1:0", None), ("127.0.0.2:0", None)]
        } else {
            vec![("127.0.0.1:0", None)]
        };
        write(&path, &config(&extra, "127.0.0.1:0", &backends));
        assert_eq!(reload(&lb).await.0, StatusCode::OK);
        tunnel
            .write_all(format!("ping{i}").as_bytes())
            .await
            .unwrap();
        let mut got = [0u8; 5];
        tokio::time::timeout(DEADLINE, tunnel.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, format!("PING{i}").as_bytes(), "the tunnel goes on");
        let req = http::Request::get(format!("http://{}/", lb.addr))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = tokio::time::timeout(DEADLINE, h2.send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "the HTTP/2 connection goes on"
        );
    }
}

#[tokio::test]
async fn certificates_are_read_again_on_reload_and_new_handshakes_use_them() {
    let be = TestBackend::replying("tls").await;
    let (path, cert, key) = live_tls("certs", &be.url());
    let lb = Sluice::start_file(&path).await;
    let old = crate::support::tls::connect(&lb, None, &[b"http/1.1"]).await;
    assert!(crate::support::tls::sent_cert(&old) == cert_der("a.pem"));
    // Rotation: new files at the same paths, then a reload.
    install("b", &cert, &key);
    assert_eq!(reload(&lb).await.0, StatusCode::OK);
    let new = crate::support::tls::connect(&lb, None, &[b"http/1.1"]).await;
    assert!(
        crate::support::tls::sent_cert(&new) == cert_der("b.pem"),
        "new handshakes use the new certificate"
    );
    // The connection made before goes on.
    let mut old = old;
    old.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, old.read_to_end(&mut got)).await;
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    // A key that does not match refuses the reload; the running certificate stays.
    std::fs::copy(data("a.key"), &key).unwrap();
    assert_eq!(reload(&lb).await.0, StatusCode::BAD_REQUEST);
    let again = crate::support::tls::connect(&lb, None, &[b"http/1.1"]).await;
    assert!(crate::support::tls::sent_cert(&again) == cert_der("b.pem"));
}

#[tokio::test]
async fn the_admin_api_moves_with_a_reload() {
    let be = TestBackend::replying("a").await;
    let path = temp_config(
        "reload-admin.toml",
        &config(&[("127.0.0.1:0", None)], "127.0.0.1:0", &be.url()),
    );
    let lb = Sluice::start_file(&path).await;
    let old_admin = lb.admin.unwrap();
    // A free port on another loopback address for the admin API to move to.
    let to = {
        let probe = std::net::TcpListener::bind("127.0.0.4:0").unwrap();
        probe.local_addr().unwrap()
    };
    write(
        &path,
        &config(&[("127.0.0.1:0", None)], &to.to_string(), &be.url()),
    );
    assert_eq!(reload(&lb).await.0, StatusCode::OK);
    let c = client();
    let status = |addr: SocketAddr| {
        let req = http::Request::get(format!("http://{addr}/healthz"))
            .body(Default::default())
            .unwrap();
        c.request(req)
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Ok(r) = status(to).await {
            assert_eq!(r.status(), StatusCode::OK);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the admin API never moved"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        TcpStream::connect(old_admin).await.is_err(),
        "the old admin address is closed"
    );
}

/// A removed listener drains as at shutdown (SPEC §7): its idle connection closes, a
/// busy one finishes its answer with `Connection: close`, a tunnel goes on until
/// `shutdown_timeout` and is then closed; the metric counts clean and cut closes.
#[tokio::test]
async fn a_removed_listener_drains_by_protocol() {
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let slow = TestBackend::held(gate.clone(), "slow").await;
    let ws = TestBackend::upgrade_echo().await;
    let fast = TestBackend::replying("fast").await;
    let text = |listeners: &[&str]| {
        let mut t = String::from("[server]\nshutdown_timeout = \"1500ms\"\n");
        for l in listeners {
            t += &format!("[[listener]]\naddress = \"{l}\"\n");
        }
        t + &format!(
            "[admin]\naddress = \"127.0.0.1:0\"\n\
             [[route]]\npath_prefix = \"/ws\"\nupstream = \"ws\"\n\
             [[route]]\npath_prefix = \"/fast\"\nupstream = \"fast\"\n\
             [[route]]\nupstream = \"slow\"\n\
             [upstream.ws]\nbackends = [{{ url = \"{}\" }}]\n\
             [upstream.fast]\nbackends = [{{ url = \"{}\" }}]\n\
             [upstream.slow]\nbackends = [{{ url = \"{}\" }}]\n",
            ws.url(),
            fast.url(),
            slow.url()
        )
    };
    let path = temp_config("reload-drain.toml", &text(&["127.0.0.1:0", "127.0.0.2:0"]));
    let lb = std::sync::Arc::new(Sluice::start_file(&path).await);
    let gone = bound_on(&lb, "127.0.0.2").await;
    // On the listener to be removed: an idle keep-alive connection, a tunnel, and a
    // request in flight.
    let mut idle = TcpStream::connect(gone).await.unwrap();
    let mut tunnel = TcpStream::connect(gone).await.unwrap();
    tunnel
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    assert!(read_head(&mut tunnel).await.starts_with("HTTP/1.1 101"));
    let mut busy = TcpStream::connect(gone).await.unwrap();
    busy.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    slow.wait_hits(1, "the busy request").await;
    // Idle between requests: it has had an answer, and nothing is in flight.
    idle.write_all(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_head(&mut idle).await.starts_with("HTTP/1.1 200"));
    let mut body = [0u8; 4];
    idle.read_exact(&mut body).await.unwrap();
    // A new connection whose first request is on its way when the drain begins: it
    // is answered (then closed), not dropped.
    let mut fresh = TcpStream::connect(gone).await.unwrap();

    // Long enough idle to be parked (20 ms): a parked connection drains too.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    write(&path, &text(&["127.0.0.1:0"]));
    assert_eq!(reload(&lb).await.0, StatusCode::OK);
    assert!(closes_within(&mut idle, DEADLINE).await, "idle: closed");
    fresh
        .write_all(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    gate.notify_one();
    let first = read_until_close(&mut fresh, DEADLINE)
        .await
        .to_ascii_lowercase();
    assert!(
        first.starts_with("http/1.1 200"),
        "a new connection's first request: {first}"
    );
    assert!(first.contains("connection: close"), "{first}");
    let answer = read_until_close(&mut busy, DEADLINE)
        .await
        .to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(
        answer.contains("connection: close"),
        "busy: told to close: {answer}"
    );
    // The tunnel still works during the grace time, then is closed.
    tunnel.write_all(b"hi").await.unwrap();
    let mut got = [0u8; 2];
    tunnel.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"HI");
    assert!(
        closes_within(&mut tunnel, DEADLINE).await,
        "tunnel: closed at shutdown_timeout"
    );
    assert!(
        lb.metric("sluice_drained_connections_total{how=\"clean\"}")
            .await
            >= Some(2.0)
    );
    assert_eq!(
        lb.metric("sluice_drained_connections_total{how=\"cut\"}")
            .await,
        Some(1.0)
    );
}

/// Twenty reloads alternating two configurations (one adds and removes a listener,
/// both change the upstream) under steady mixed load on the listener that stays:
/// keep-alive and new connections, an HTTP/2 connection, and twenty WebSockets
/// exchanging messages. Nothing fails and no WebSocket is cut.
#[tokio::test]
async fn twenty_reloads_under_mixed_load_fail_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let ws = TestBackend::upgrade_echo().await;
    let (one, two) = (
        TestBackend::replying("one").await,
        TestBackend::replying("two").await,
    );
    let text = |extra_listener: bool, web: &TestBackend| {
        let mut t = String::from("[[listener]]\naddress = \"127.0.0.1:0\"\n");
        if extra_listener {
            t += "[[listener]]\naddress = \"127.0.0.2:0\"\n";
        }
        t + &format!(
            "[admin]\naddress = \"127.0.0.1:0\"\n\
             [[route]]\npath_prefix = \"/ws\"\nupstream = \"ws\"\n\
             [[route]]\nupstream = \"web\"\n\
             [upstream.ws]\nbackends = [{{ url = \"{}\" }}]\n\
             [upstream.web]\nbackends = [{{ url = \"{}\" }}]\n",
            ws.url(),
            web.url()
        )
    };
    let path = temp_config("reload-twenty.toml", &text(false, &one));
    let lb = Sluice::start_file(&path).await;
    let addr = lb.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut tasks = Vec::new();
    // Keep-alive clients.
    for _ in 0..2 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            while !stop.load(Ordering::Relaxed) {
                let sent = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
                let head = if sent.is_ok() {
                    read_head(&mut s).await
                } else {
                    String::new()
                };
                let mut body = [0u8; 3];
                let read = s.read_exact(&mut body).await;
                if head.starts_with("HTTP/1.1 200") && read.is_ok() {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }));
    }
    // A client opening a new connection for every request.
    {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match get_at(addr).await {
                    Some(b) if b == "one" || b == "two" => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    // One HTTP/2 connection.
    {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut h2, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let req = http::Request::get(format!("http://{addr}/"))
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap();
                match h2.send_request(req).await {
                    Ok(r) if r.status() == StatusCode::OK => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    // Twenty WebSockets (an echo tunnel each), exchanging messages.
    let cut = Arc::new(AtomicUsize::new(0));
    for i in 0..20 {
        let (stop, ok, cut) = (stop.clone(), ok.clone(), cut.clone());
        let mut t = TcpStream::connect(addr).await.unwrap();
        t.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
            .await
            .unwrap();
        assert!(read_head(&mut t).await.starts_with("HTTP/1.1 101"));
        tasks.push(tokio::spawn(async move {
            let msg = format!("m{i:02}");
            while !stop.load(Ordering::Relaxed) {
                let mut got = [0u8; 3];
                let echoed = async {
                    t.write_all(msg.as_bytes()).await?;
                    t.read_exact(&mut got).await
                };
                match tokio::time::timeout(DEADLINE, echoed).await {
                    Ok(Ok(_)) if got == msg.to_ascii_uppercase().as_bytes() => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        cut.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }));
    }
    for round in 0..20 {
        let before = ok.load(Ordering::Relaxed);
        let web = if round % 2 == 0 { &two } else { &one };
        write(&path, &text(round % 2 == 0, web));
        let (s, body) = reload(&lb).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        while ok.load(Ordering::Relaxed) < before + 30 {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let (ok, failed, cut) = (
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        cut.load(Ordering::Relaxed),
    );
    assert!(ok > 600, "{ok}");
    assert_eq!(
        (failed, cut),
        (0, 0),
        "failed requests, cut WebSockets ({ok} ok)"
    );
}

/// Certificates rotated back and forth under a steady stream of TLS handshakes: no
/// handshake fails, and after each reload new handshakes see the new certificate.
#[tokio::test]
async fn certificate_rotation_under_tls_load_fails_no_handshake() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let be = TestBackend::replying("tls").await;
    let (path, cert, key) = live_tls("rotate", &be.url());
    let lb = Arc::new(Sluice::start_file(&path).await);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let (lb, stop, ok, failed) = (lb.clone(), stop.clone(), ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let mut s = crate::support::tls::connect(&lb, None, &[b"http/1.1"]).await;
                let sent = s
                    .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
                    .await;
                let mut got = Vec::new();
                let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut got)).await;
                if sent.is_ok() && got.starts_with(b"HTTP/1.1 200") {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for round in 0..6 {
        let name = if round % 2 == 0 { "b" } else { "a" };
        install(name, &cert, &key);
        let before = ok.load(Ordering::Relaxed);
        assert_eq!(reload(&lb).await.0, StatusCode::OK);
        let s = crate::support::tls::connect(&lb, None, &[b"http/1.1"]).await;
        assert!(
            crate::support::tls::sent_cert(&s) == cert_der(&format!("{name}.pem")),
            "round {round}"
        );
        while ok.load(Ordering::Relaxed) < before + 10 {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{} ok",
        ok.load(Ordering::Relaxed)
    );
}
