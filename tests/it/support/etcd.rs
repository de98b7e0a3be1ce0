//! A real etcd for discovery tests (Debian `etcd-server`, installed by test.sh): one
//! member on free loopback ports with its data in a temporary directory, spoken to
//! through its v3 JSON gateway as sluice does. Killed on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http_body_util::Full;

use super::daemon::Daemon;
use super::{DEADLINE, client};

pub struct Etcd {
    daemon: Daemon,
    pub addr: SocketAddr,
    dir: PathBuf,
}

/// Two distinct free ports (both held until both are chosen).
fn free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

impl Etcd {
    pub async fn start() -> Etcd {
        let (client_port, peer_port) = free_ports();
        let dir = std::env::temp_dir().join(format!(
            "sluice-it-{}-etcd-{client_port}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new("etcd")
            .args(["--name", "default"])
            .arg(format!("--data-dir={}", dir.display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"))
            .arg("--log-level=error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian package etcd-server; ./test.sh installs it)");
        let etcd = Etcd {
            daemon: Daemon::new(child),
            addr: SocketAddr::from(([127, 0, 0, 1], client_port)),
            dir,
        };
        // Ready when a read through the gateway works.
        tokio::time::timeout(DEADLINE * 2, async {
            loop {
                if etcd
                    .call("/v3/kv/range", r#"{"key": "AA=="}"#)
                    .await
                    .is_some()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("etcd ready");
        etcd
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// POSTs `body` to the gateway; the answer's body if it is a 200 (None on any
    /// failure, as while etcd starts).
    async fn call(&self, path: &str, body: &str) -> Option<serde_json::Value> {
        use http_body_util::BodyExt;
        let req = http::Request::post(format!("{}{path}", self.url()))
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let client = client();
        let exchange = async {
            let resp = client.request(req).await.ok()?;
            if resp.status() != http::StatusCode::OK {
                return None;
            }
            let bytes = resp.into_body().collect().await.ok()?.to_bytes();
            serde_json::from_slice(&bytes).ok()
        };
        tokio::time::timeout(Duration::from_secs(2), exchange)
            .await
            .ok()?
    }

    /// Puts `value` at `key`; the revision it made.
    pub async fn put(&self, key: &str, value: &str) -> i64 {
        let body = serde_json::json!({"key": B64.encode(key), "value": B64.encode(value)});
        let v = self
            .call("/v3/kv/put", &body.to_string())
            .await
            .expect("put");
        v["header"]["revision"].as_str().unwrap().parse().unwrap()
    }

    pub async fn delete(&self, key: &str) {
        let body = serde_json::json!({"key": B64.encode(key)});
        self.call("/v3/kv/deleterange", &body.to_string())
            .await
            .expect("delete");
    }

    /// Compacts the history up to `revision`.
    pub async fn compact(&self, revision: i64) {
        let body = serde_json::json!({"revision": revision.to_string(), "physical": true});
        self.call("/v3/kv/compaction", &body.to_string())
            .await
            .expect("compaction");
    }

    /// Freezes the server (SIGSTOP): requests hang, as with etcd unreachable.
    pub fn pause(&self) {
        self.daemon.pause();
    }

    pub fn resume(&self) {
        self.daemon.resume();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.daemon.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
