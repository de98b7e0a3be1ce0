//! `sluice demo`: a few local backends that name themselves, the balancer in front of
//! them and the dashboard, so a newcomer sees balancing with one command.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;

use crate::config::{
    AdminConfig, BackendConfig, BackendUrl, Config, DEFAULT_UPSTREAM, ListenerConfig, Scheme,
    UpstreamConfig,
};
use crate::proxy::Shared;
use crate::proxy::server::Server;

/// Starts one demo backend on a free port of 127.0.0.1; it answers every request with
/// its name and port.
pub async fn start_backend(index: usize) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let name: Arc<str> = format!("backend-{index}").into();
    tokio::spawn(async move {
        let builder = Builder::new(TokioExecutor::new());
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let name = Arc::clone(&name);
            let builder = builder.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let body = format!(
                        "hello from demo {name} ({addr}): {} {}\n",
                        req.method(),
                        req.uri()
                    );
                    let mut resp = Response::new(Full::new(Bytes::from(body)));
                    if let Ok(v) = http::HeaderValue::from_str(&name) {
                        resp.headers_mut().insert("x-backend", v);
                    }
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Runs the demo until Ctrl-C.
pub async fn run(backends: u16, listen: SocketAddr, admin: SocketAddr) -> Result<(), String> {
    let mut configs = Vec::new();
    for i in 1..=usize::from(backends) {
        let addr = start_backend(i)
            .await
            .map_err(|e| format!("cannot start demo backend: {e}"))?;
        configs.push(BackendConfig {
            url: BackendUrl {
                scheme: Scheme::Http,
                host: addr.ip().to_string(),
                port: addr.port(),
            },
            weight: 1,
            backup: false,
        });
    }
    let config = Config {
        server: Default::default(),
        listeners: vec![ListenerConfig {
            address: listen,
            tls: None,
        }],
        admin: Some(AdminConfig {
            address: admin,
            token: None,
        }),
        limits: Default::default(),
        routes: Vec::new(),
        upstreams: vec![UpstreamConfig::with_defaults(
            DEFAULT_UPSTREAM,
            configs.clone(),
        )],
    };
    let server = Server::bind(Shared::new(config, None, None))
        .await
        .map_err(|e| e.to_string())?;
    let lb = server.local_addrs()[0];
    let dash = server.admin_addr().unwrap_or(admin);
    println!("sluice demo: round_robin over {backends} local backends");
    for b in &configs {
        println!("  backend    {}", b.url);
    }
    println!("  balancer   http://{lb}/");
    println!("  dashboard  http://{dash}/");
    println!();
    println!("try:");
    println!("  for i in 1 2 3 4 5 6; do curl -s http://{lb}/; done   # the backend rotates");
    println!("  curl -s http://{dash}/status                        # live counters as JSON");
    println!("  curl -s http://{dash}/metrics                       # the same, for Prometheus");
    if let Some(first) = configs.first() {
        println!(
            "  curl -s -XDELETE http://{dash}/upstreams/default/backends/{}   # one backend out",
            first.url.id()
        );
    }
    println!("  open http://{dash}/ in a browser                    # the dashboard");
    println!("Ctrl-C stops everything.");
    println!();
    server
        .serve(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    Ok(())
}
