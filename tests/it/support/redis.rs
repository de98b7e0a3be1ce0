//! A real Redis for shared rate limits (Debian `redis-server`, installed by test.sh): on
//! a free loopback port, nothing saved to disk. Killed on drop.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::DEADLINE;
use super::daemon::Daemon;

pub struct Redis {
    daemon: Daemon,
    pub addr: SocketAddr,
}

impl Redis {
    pub async fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server; ./test.sh installs it)");
        let redis = Redis {
            daemon: Daemon::new(child),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        // Ready when it answers PING.
        tokio::time::timeout(DEADLINE, async {
            while redis.command("PING").await.as_deref() != Some("+PONG") {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("redis ready");
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Sends one inline command; the first line of the answer (None on any failure).
    pub async fn command(&self, line: &str) -> Option<String> {
        let exchange = async {
            let mut s = tokio::net::TcpStream::connect(self.addr).await.ok()?;
            s.write_all(format!("{line}\r\n").as_bytes()).await.ok()?;
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.ok()?;
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            Some(text.lines().next().unwrap_or_default().to_owned())
        };
        tokio::time::timeout(Duration::from_secs(2), exchange)
            .await
            .ok()?
    }

    /// Freezes the server (SIGSTOP): requests hang, as with Redis unreachable.
    pub fn pause(&self) {
        self.daemon.pause();
    }

    pub fn resume(&self) {
        self.daemon.resume();
    }
}
