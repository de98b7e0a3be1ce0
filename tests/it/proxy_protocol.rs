//! The PROXY protocol (SPEC §8): a listener behind an L4 balancer takes the client
//! address from the PROXY v1 or v2 header each connection opens with, for
//! X-Forwarded-For, access lists and rate limits; a connection without a valid header is
//! closed unanswered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::tls::{data, handshake};
use crate::support::*;

/// A v2 PROXY header (command PROXY, TCP) from `src` to `dst`.
fn v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21".to_vec();
    let mut addrs = Vec::new();
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            h.push(0x11);
            addrs.extend_from_slice(&s.ip().octets());
            addrs.extend_from_slice(&d.ip().octets());
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            h.push(0x21);
            addrs.extend_from_slice(&s.ip().octets());
            addrs.extend_from_slice(&d.ip().octets());
        }
        _ => panic!("mixed families"),
    }
    addrs.extend_from_slice(&src.port().to_be_bytes());
    addrs.extend_from_slice(&dst.port().to_be_bytes());
    h.extend_from_slice(&u16::try_from(addrs.len()).unwrap().to_be_bytes());
    h.extend_from_slice(&addrs);
    h
}

/// The v2 LOCAL header a balancer's own health check sends.
const V2_LOCAL: &[u8] = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";

/// Sends `header` then a GET of `path` (in two writes when `split`), and reads the
/// answer to its end.
async fn get_via(lb: SocketAddr, header: &[u8], path: &str, split: bool) -> String {
    let mut s = TcpStream::connect(lb).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    if split {
        s.write_all(&header[..header.len() / 2]).await.unwrap();
        s.flush().await.unwrap();
        tokio::task::yield_now().await;
        s.write_all(&header[header.len() / 2..]).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
    } else {
        let mut all = header.to_vec();
        all.extend_from_slice(request.as_bytes());
        s.write_all(&all).await.unwrap();
    }
    read_until_close(&mut s, DEADLINE).await
}

fn status(raw: &str) -> &str {
    raw.split(' ').nth(1).unwrap_or("")
}

/// The X-Forwarded-For the echo backend saw.
fn xff(raw: &str) -> Vec<String> {
    echoed_header(&echoed(body_of(raw)), "x-forwarded-for")
}

fn v1(src: &str) -> Vec<u8> {
    format!("PROXY TCP4 {src} 10.0.0.1 51000 80\r\n").into_bytes()
}

async fn behind_a_balancer(be: &TestBackend, listener_extra: &str) -> Sluice {
    Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\nproxy_protocol = true\n{listener_extra}\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\
         [limits]\nheader_read_timeout = \"300ms\"\n\
         [[route]]\npath_prefix = \"/office\"\nallow = [\"192.0.2.0/24\"]\nupstream = \"web\"\n\
         [[route]]\npath_prefix = \"/limited\"\nrate_limit = {{ rate = \"1/h\", burst = 1 }}\nupstream = \"web\"\n\
         [[route]]\nupstream = \"web\"\n\
         [upstream.web]\nbackends = [{{ url = \"{}\" }}]\n",
        be.url()
    ))
    .await
}

#[tokio::test]
async fn the_proxy_header_names_the_client_for_forwarding_acls_and_rate_limits() {
    let be = TestBackend::echo().await;
    let lb = behind_a_balancer(&be, "").await;
    let dst: SocketAddr = "10.0.0.1:80".parse().unwrap();

    let got = get_via(lb.addr, &v1("192.0.2.7"), "/office", false).await;
    assert_eq!(status(&got), "200", "{got}");
    assert_eq!(xff(&got), ["192.0.2.7"]);
    let src: SocketAddr = "198.51.100.9:4000".parse().unwrap();
    let got = get_via(lb.addr, &v2(src, dst), "/office", false).await;
    assert_eq!(
        status(&got),
        "403",
        "the ACL sees the header's client: {got}"
    );
    let src6: SocketAddr = "[2001:db8::5]:4000".parse().unwrap();
    let dst6: SocketAddr = "[2001:db8::1]:80".parse().unwrap();
    let got = get_via(lb.addr, &v2(src6, dst6), "/", true).await;
    assert_eq!(xff(&got), ["2001:db8::5"], "v2, IPv6, split header: {got}");
    let got = get_via(lb.addr, &v1("192.0.2.8"), "/", true).await;
    assert_eq!(xff(&got), ["192.0.2.8"], "v1, split header: {got}");

    // No client in the header (the balancer's own check): the peer is the client.
    let got = get_via(lb.addr, V2_LOCAL, "/", false).await;
    assert_eq!(xff(&got), ["127.0.0.1"], "{got}");
    let got = get_via(lb.addr, b"PROXY UNKNOWN\r\n", "/", false).await;
    assert_eq!(xff(&got), ["127.0.0.1"], "{got}");

    // One bucket per client named by the header.
    let limited = |src| async move { get_via(lb.addr, &v1(src), "/limited", false).await };
    assert_eq!(status(&limited("192.0.2.20").await), "200");
    assert_eq!(status(&limited("192.0.2.20").await), "429");
    assert_eq!(status(&limited("192.0.2.21").await), "200");
}

#[tokio::test]
async fn connections_without_a_valid_proxy_header_are_closed_unanswered() {
    let be = TestBackend::echo().await;
    let lb = behind_a_balancer(&be, "").await;
    let plain = raw_exchange(lb.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", DEADLINE).await;
    assert_eq!(plain, "", "a request without a header gets no answer");
    let bad = b"PROXY TCP4 192.0.2.999 10.0.0.1 1 2\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(raw_exchange(lb.addr, bad, DEADLINE).await, "");
    // Silent, or a header that never ends: closed after header_read_timeout.
    let mut silent = TcpStream::connect(lb.addr).await.unwrap();
    assert!(closes_within(&mut silent, DEADLINE).await);
    let mut partial = TcpStream::connect(lb.addr).await.unwrap();
    partial.write_all(b"PROXY TCP4 192.0.2.7").await.unwrap();
    assert!(closes_within(&mut partial, DEADLINE).await);
    assert_eq!(be.hits(), 0);
    assert_eq!(
        lb.metric("sluice_refused_total{reason=\"proxy_header\"}")
            .await,
        Some(4.0)
    );
}

/// After the header, a connection is whatever it would have been: TLS on a TLS
/// listener, HTTP/2 with prior knowledge on a plain one; both see the header's client.
#[tokio::test]
async fn tls_and_http2_connections_follow_their_proxy_header() {
    let be = TestBackend::echo().await;
    let tls = format!(
        "tls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}",
        data("a.pem").display(),
        data("a.key").display()
    );
    let lb = behind_a_balancer(&be, &tls).await;
    let mut tcp = TcpStream::connect(lb.addr).await.unwrap();
    tcp.write_all(&v1("192.0.2.30")).await.unwrap();
    let mut s = handshake(tcp, Some("a.test"), &[]).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut got).await;
    let got = String::from_utf8_lossy(&got);
    assert_eq!(xff(&got), ["192.0.2.30"], "{got}");

    let plain = behind_a_balancer(&be, "").await;
    let mut tcp = TcpStream::connect(plain.addr).await.unwrap();
    let src: SocketAddr = "192.0.2.31:1000".parse().unwrap();
    tcp.write_all(&v2(src, "10.0.0.1:80".parse().unwrap()))
        .await
        .unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .expect("h2 after the header");
    tokio::spawn(conn);
    let req = http::Request::get("http://x/")
        .body(Full::default())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let j = echoed(&String::from_utf8_lossy(&body));
    assert_eq!(echoed_header(&j, "x-forwarded-for"), ["192.0.2.31"]);
}

/// A backend behind PROXY-protocol balancers: every connection must open with a v1 or
/// v2 header (read here by hand), else it is dropped; each answer names the client the
/// connection's header named (`-` for LOCAL/UNKNOWN) and the connection's number.
struct ProxiedBackend {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

impl ProxiedBackend {
    async fn start() -> ProxiedBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let n = counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let Some(named) = read_proxy_header(&mut s).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |_req| {
                        let body = format!("{named} conn={n}");
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(full(body)))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), service)
                        .await;
                });
            }
        });
        ProxiedBackend {
            addr,
            conns,
            _task: task,
        }
    }
}

/// The client a PROXY header names ("-" for none), or None if it is not one.
async fn read_proxy_header(s: &mut TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut first = [0u8; 16];
    s.read_exact(&mut first[..6]).await.ok()?;
    if &first[..6] == b"PROXY " {
        let mut line = b"PROXY ".to_vec();
        while !line.ends_with(b"\r\n") && line.len() < 108 {
            line.push(s.read_u8().await.ok()?);
        }
        let text = String::from_utf8(line).ok()?;
        let parts: Vec<&str> = text.trim_end().split(' ').collect();
        return match parts.as_slice() {
            ["PROXY", "UNKNOWN", ..] => Some("-".into()),
            ["PROXY", "TCP4" | "TCP6", src, _dst, sport, _dport] => Some(format!("{src}:{sport}")),
            _ => None,
        };
    }
    s.read_exact(&mut first[6..]).await.ok()?;
    if &first[..12] != b"\r\n\r\n\0\r\nQUIT\n" || first[12] >> 4 != 2 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([first[14], first[15]]));
    let mut rest = vec![0u8; len];
    s.read_exact(&mut rest).await.ok()?;
    match (first[12] & 0xf, first[13]) {
        (0, _) => Some("-".into()),
        (1, 0x11) if len >= 12 => {
            let ip = std::net::Ipv4Addr::new(rest[0], rest[1], rest[2], rest[3]);
            Some(format!("{ip}:{}", u16::from_be_bytes([rest[8], rest[9]])))
        }
        _ => None,
    }
}

/// A keep-alive HTTP/1.1 connection to `lb` from the local address `from`.
async fn client_from(
    from: &str,
    lb: SocketAddr,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let tcp = socket.connect(lb).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn ask(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    path: &str,
) -> String {
    let req = http::Request::get(path)
        .header("host", "x")
        .body(Full::default())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// SPEC §8 upstream `proxy_protocol`: each backend connection opens with a header
/// naming its client, and carries that client's requests only, however the requests of
/// several clients interleave; health checks send LOCAL.
#[tokio::test]
async fn backend_connections_name_their_client_and_carry_only_its_requests() {
    let (be1, be2) = (ProxiedBackend::start().await, ProxiedBackend::start().await);
    let lb = Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [[route]]\npath_prefix = \"/v2\"\nupstream = \"two\"\n\
         [[route]]\nupstream = \"one\"\n\
         [upstream.one]\nbackends = [{{ url = \"{}\" }}]\nproxy_protocol = \"v1\"\n\
         [upstream.one.health]\npath = \"/\"\ninterval = \"50ms\"\nrise = 1\nfall = 1\n\
         [upstream.two]\nbackends = [{{ url = \"{}\" }}]\nproxy_protocol = \"v2\"\n",
        be1.addr, be2.addr
    ))
    .await;
    let hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"];
    // Four clients at once, each on one keep-alive connection, 25 requests each.
    let runs: Vec<_> = hosts
        .iter()
        .map(|&host| {
            let lb = lb.addr;
            tokio::spawn(async move {
                let mut c = client_from(host, lb).await;
                let mut seen = std::collections::HashSet::new();
                for i in 0..25 {
                    let path = if i % 2 == 0 { "/" } else { "/v2/x" };
                    let got = ask(&mut c, path).await;
                    let (named, conn) = got.split_once(" conn=").unwrap();
                    let ip = named.rsplit_once(':').unwrap().0;
                    assert_eq!(ip, host, "a request went out under another client's header");
                    seen.insert((path, conn.to_owned()));
                }
                seen.len()
            })
        })
        .collect();
    for r in runs {
        assert_eq!(
            r.await.unwrap(),
            2,
            "one backend connection per client and upstream"
        );
    }
    assert_eq!(be2.conns.load(Ordering::SeqCst), hosts.len());
    // The health checks open their own connections, with LOCAL headers, and pass (a
    // connection without a header would be dropped: the probe would fail).
    let probed = tokio::time::timeout(DEADLINE, async {
        while be1.conns.load(Ordering::SeqCst) < hosts.len() + 2 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    });
    probed.await.expect("probes connect");
    let status = lb.status().await;
    let state = &status["upstreams"][0]["backends"][0]["state"];
    assert_eq!(state, "healthy", "{status}");
}

/// SPEC §8: the access log's `client` is the PROXY header's source address.
#[tokio::test]
async fn the_access_log_names_the_client_of_the_proxy_header() {
    use crate::support::process::{start_json, temp_config};
    let be = TestBackend::replying("ok").await;
    let path = temp_config(
        "pp-log",
        &format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\nproxy_protocol = true\n\
             [upstream.web]\nbackends = [{{ url = \"{}\" }}]\n",
            be.url()
        ),
    );
    let (p, addr) = start_json(&["-c", path.to_str().unwrap()]).await;
    let got = get_via(addr.parse().unwrap(), &v1("192.0.2.55"), "/logged", false).await;
    assert_eq!(status(&got), "200", "{got}");
    let line = tokio::task::spawn_blocking(move || p.line_with("/logged"))
        .await
        .unwrap();
    let j: serde_json::Value = serde_json::from_str(&line).expect("access line is JSON");
    assert_eq!(j["client"], "192.0.2.55", "{line}");
}
