//! Upgrades without a restart (SPEC §7), with the real binary: a new process started
//! with `--upgrade` takes the listening sockets of the running one over its upgrade
//! socket, and the old one drains and exits 0. Under steady load (HTTP/1.1 keep-alive,
//! a new connection per request, HTTP/2), ten handovers in a row refuse no connection
//! and fail no request for clients that, like browsers and common HTTP libraries, send
//! a request once more when a reused connection closes before any byte of the answer
//! (or, in HTTP/2, when a draining connection refuses it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::process::{Proc, run, temp_config};
use crate::support::*;

/// The load's outcome.
#[derive(Default)]
struct Counts {
    ok: AtomicUsize,
    refused: AtomicUsize,
    failed: AtomicUsize,
    /// Sent again after a reused connection closed before any byte of an answer.
    resent: AtomicUsize,
}

/// One request on `conn` (a new connection when None). Ok(None): the connection closed
/// before any byte of an answer (a client may send it again); Ok(Some(keep)): 200.
async fn exchange(conn: &mut TcpStream) -> std::io::Result<Option<bool>> {
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return if got.is_empty() {
                Ok(None)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                if !head.starts_with("http/1.1 200") {
                    return Err(std::io::Error::other(head));
                }
                return Ok(Some(!head.contains("connection: close")));
            }
        }
    }
}

/// A client that keeps a connection alive, opening a new one when the server closes it.
async fn keep_alive_client(addr: std::net::SocketAddr, stop: Arc<AtomicBool>, counts: Arc<Counts>) {
    let mut conn: Option<TcpStream> = None;
    while !stop.load(Ordering::Relaxed) {
        let reused = conn.is_some();
        let mut c = match conn.take() {
            Some(c) => c,
            None => match TcpStream::connect(addr).await {
                Ok(c) => c,
                Err(_) => {
                    counts.refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            },
        };
        match exchange(&mut c).await {
            Ok(Some(keep)) => {
                counts.ok.fetch_add(1, Ordering::Relaxed);
                if keep {
                    conn = Some(c);
                }
            }
            // Closed before any byte of an answer to a request on a reused connection:
            // send it once more on a new one, as browsers do. (Anything else fails.)
            Ok(None) if reused => {
                counts.resent.fetch_add(1, Ordering::Relaxed);
                let again = match TcpStream::connect(addr).await {
                    Ok(mut fresh) => exchange(&mut fresh)
                        .await
                        .ok()
                        .flatten()
                        .map(|keep| (fresh, keep)),
                    Err(_) => {
                        counts.refused.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                };
                match again {
                    Some((fresh, keep)) => {
                        counts.ok.fetch_add(1, Ordering::Relaxed);
                        if keep {
                            conn = Some(fresh);
                        }
                    }
                    None => {
                        counts.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            _ => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A client that opens a new connection for every request.
async fn new_connection_client(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut c) = TcpStream::connect(addr).await else {
            counts.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let _ = c
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let got = read_until_close(&mut c, DEADLINE).await;
        if got.starts_with("HTTP/1.1 200") {
            counts.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            counts.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// An HTTP/2 (h2c) client: one connection for as long as it lasts; when the server
/// ends it (GOAWAY at a drain), a new one, and a request refused by a closing
/// connection is sent once more on it, as HTTP/2 clients do.
async fn h2_client(addr: std::net::SocketAddr, stop: Arc<AtomicBool>, counts: Arc<Counts>) {
    use hyper::client::conn::http2::SendRequest;
    async fn open(
        addr: std::net::SocketAddr,
    ) -> Option<SendRequest<http_body_util::Empty<bytes::Bytes>>> {
        let tcp = TcpStream::connect(addr).await.ok()?;
        let (send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .ok()?;
        tokio::spawn(conn);
        Some(send)
    }
    let req = || {
        http::Request::get(format!("http://{addr}/"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let mut conn = None;
    while !stop.load(Ordering::Relaxed) {
        let mut send = match conn.take() {
            Some(s) => s,
            None => match open(addr).await {
                Some(s) => s,
                None => {
                    counts.refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            },
        };
        // Refused by a connection that is closing (GOAWAY): sent once more on a new one.
        // Any other error fails.
        let first = if send.is_closed() {
            None
        } else {
            match send.send_request(req()).await {
                Ok(a) => Some(a),
                Err(e) if e.is_canceled() || e.is_closed() => None,
                Err(_) => {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        };
        let answer = match first {
            Some(a) => Some((a, send)),
            None => {
                counts.resent.fetch_add(1, Ordering::Relaxed);
                match open(addr).await {
                    Some(mut fresh) => fresh.send_request(req()).await.ok().map(|a| (a, fresh)),
                    None => None,
                }
            }
        };
        match answer {
            Some((a, send)) if a.status() == http::StatusCode::OK => {
                counts.ok.fetch_add(1, Ordering::Relaxed);
                conn = Some(send);
            }
            _ => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn config(backend: &str) -> String {
    format!(
        "[server]\nshutdown_timeout = \"5s\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n\
         [upstream.web]\nbackends = [{{ url = \"{backend}\" }}]\n"
    )
}

/// Starts sluice on `config` with the upgrade socket (taking over with `upgrade`),
/// and returns it once it serves, with the address it listens on.
async fn start(
    config: &std::path::Path,
    socket: &std::path::Path,
    upgrade: bool,
) -> (Proc, std::net::SocketAddr) {
    start_with_env(config, socket, upgrade, None).await
}

/// `start`, with `NOTIFY_SOCKET` set to `notify` (systemd's readiness protocol).
async fn start_with_env(
    config: &std::path::Path,
    socket: &std::path::Path,
    upgrade: bool,
    notify: Option<&std::path::Path>,
) -> (Proc, std::net::SocketAddr) {
    let notify = notify.map(|p| p.display().to_string());
    let (config, socket) = (config.display().to_string(), socket.display().to_string());
    tokio::task::spawn_blocking(move || {
        let mut args = vec![
            "-c",
            &config,
            "--upgrade-socket",
            &socket,
            "--log-format",
            "json",
        ];
        if upgrade {
            args.push("--upgrade");
        }
        let env: Vec<(&str, &str)> = notify
            .iter()
            .map(|n| ("NOTIFY_SOCKET", n.as_str()))
            .collect();
        let p = Proc::spawn_with_env(&args, &env);
        // Serving, and (after an upgrade) the old process let go: both events, in
        // either order.
        let (mut addr, mut offering) = (None, false);
        while addr.is_none() || !offering {
            let line = p.line_with("listening");
            let j: serde_json::Value = serde_json::from_str(&line).unwrap();
            if j["event"] == "listening" {
                addr = j["address"].as_str().and_then(|a| a.parse().ok());
            }
            offering |= j["event"] == "upgrade socket listening";
        }
        (p, addr.unwrap())
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn ten_handovers_under_load_refuse_nothing_and_fail_nothing() {
    let be = TestBackend::replying("a").await;
    let dir = std::env::temp_dir().join(format!("sluice-it-{}-upgrade", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("ten.sock");
    let cfg = temp_config("upgrade-ten.toml", &config(&be.url()));
    let (mut old, addr) = start(&cfg, &socket, false).await;

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let mut clients = Vec::new();
    for i in 0..6 {
        let (stop, counts) = (stop.clone(), counts.clone());
        clients.push(match i % 3 {
            0 => tokio::spawn(keep_alive_client(addr, stop, counts)),
            1 => tokio::spawn(new_connection_client(addr, stop, counts)),
            _ => tokio::spawn(h2_client(addr, stop, counts)),
        });
    }
    for round in 0..10 {
        let before = counts.ok.load(Ordering::Relaxed);
        let (new, same) = start(&cfg, &socket, true).await;
        assert_eq!(same, addr, "the same socket, taken over");
        let code = tokio::task::spawn_blocking(move || old.wait())
            .await
            .unwrap();
        assert_eq!(code, 0, "round {round}: the old process exits 0");
        old = new;
        // Traffic flows through the new process before the next round.
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while counts.ok.load(Ordering::Relaxed) < before + 20 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: no traffic"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    old.signal("TERM");
    let _ = tokio::task::spawn_blocking(move || old.wait()).await;
    let (ok, refused, failed, resent) = (
        counts.ok.load(Ordering::Relaxed),
        counts.refused.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
        counts.resent.load(Ordering::Relaxed),
    );
    eprintln!(
        "ten handovers: {ok} requests answered, {resent} sent again, {refused} refused, {failed} failed"
    );
    assert!(ok > 200, "{ok} requests");
    assert_eq!(
        (refused, failed),
        (0, 0),
        "refused, failed ({ok} ok, {resent} sent again)"
    );
}

#[tokio::test]
async fn a_new_process_that_fails_leaves_the_old_one_serving() {
    let be = TestBackend::replying("a").await;
    let dir = std::env::temp_dir().join(format!("sluice-it-{}-upgrade", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("broken.sock");
    let cfg = temp_config("upgrade-broken-ok.toml", &config(&be.url()));
    let (mut old, addr) = start(&cfg, &socket, false).await;
    // A config that reads well but cannot start (a certificate file that is not
    // there): the new process takes the sockets, then fails before it serves.
    let broken = temp_config(
        "upgrade-broken.toml",
        &format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n\
             tls = {{ certificates = [{{ cert = \"/nonexistent/c.pem\", key = \"/nonexistent/c.key\" }}] }}\n\
             [upstream.web]\nbackends = [{{ url = \"{}\" }}]\n",
            be.url()
        ),
    );
    let (broken_s, socket_s) = (broken.display().to_string(), socket.display().to_string());
    let (code, _, stderr) = tokio::task::spawn_blocking(move || {
        run(&["-c", &broken_s, "--upgrade-socket", &socket_s, "--upgrade"])
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    // The old one serves on, and can still be taken over.
    for _ in 0..20 {
        let got = raw_exchange(
            addr,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            DEADLINE,
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    }
    let (mut new, _) = start(&cfg, &socket, true).await;
    let code = tokio::task::spawn_blocking(move || old.wait())
        .await
        .unwrap();
    assert_eq!(code, 0);
    new.signal("TERM");
    let _ = tokio::task::spawn_blocking(move || new.wait()).await;
}

#[test]
fn upgrade_without_a_running_sluice_is_one_line_and_exit_1() {
    let be = "127.0.0.1:9";
    let cfg = temp_config("upgrade-none.toml", &config(be));
    let socket = std::env::temp_dir().join(format!("sluice-it-{}-none.sock", std::process::id()));
    let (code, _, stderr) = run(&[
        "-c",
        cfg.to_str().unwrap(),
        "--upgrade-socket",
        socket.to_str().unwrap(),
        "--upgrade",
    ]);
    assert_eq!(code, 1);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("no sluice is running on the upgrade socket"),
        "{stderr}"
    );
    let (code, _, stderr) = run(&["-c", cfg.to_str().unwrap(), "--upgrade"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("--upgrade needs --upgrade-socket"),
        "{stderr}"
    );
}

/// With `NOTIFY_SOCKET` set (systemd `Type=notify`, `NotifyAccess=all`), sluice says
/// READY=1 once it serves, and a process that took over says MAINPID= with its own id.
#[tokio::test]
async fn systemd_is_told_ready_and_the_new_main_pid() {
    let be = TestBackend::replying("a").await;
    let dir = std::env::temp_dir().join(format!("sluice-it-{}-upgrade", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (socket, notify) = (dir.join("notify-up.sock"), dir.join("notify.sock"));
    let _ = std::fs::remove_file(&notify);
    let manager = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    manager.set_read_timeout(Some(DEADLINE)).unwrap();
    let cfg = temp_config("upgrade-notify.toml", &config(&be.url()));
    let (mut old, _) = start_with_env(&cfg, &socket, false, Some(&notify)).await;
    let mut buf = [0u8; 256];
    let n = manager.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1\n");
    let (mut new, _) = start_with_env(&cfg, &socket, true, Some(&notify)).await;
    let n = manager.recv(&mut buf).unwrap();
    let said = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert_eq!(said, format!("MAINPID={}\nREADY=1\n", new.child.id()));
    assert_eq!(
        tokio::task::spawn_blocking(move || old.wait())
            .await
            .unwrap(),
        0
    );
    new.signal("TERM");
    let _ = tokio::task::spawn_blocking(move || new.wait()).await;
}
