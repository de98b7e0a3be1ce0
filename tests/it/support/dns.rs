//! A real DNS server for discovery tests: dnsmasq (Debian `dnsmasq-base`, installed by
//! test.sh) on a free loopback port, authoritative for `.test`. Host records come from
//! a directory dnsmasq watches (`set_hosts` rewrites it; dnsmasq rereads it at once),
//! SRV records from its command line. Answers carry TTL 0, so sluice's `min_ttl` paces
//! the lookups. Killed on drop.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::DEADLINE;
use super::daemon::Daemon;

pub struct Dnsmasq {
    daemon: Daemon,
    pub addr: SocketAddr,
    hosts: PathBuf,
}

impl Dnsmasq {
    /// Starts dnsmasq with these SRV records (`name,target,port,priority,weight`) and
    /// these host records (`name,address`, fixed), and an empty hosts directory.
    pub async fn start(srv: &[String], fixed: &[String]) -> Dnsmasq {
        // A port free for UDP and TCP (dnsmasq serves both).
        let port = loop {
            let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = tcp.local_addr().unwrap().port();
            if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
                break port;
            }
        };
        let dir = std::env::temp_dir().join(format!("sluice-it-{}-dns-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--local=/test/",
            "--local-ttl=0",
            "--pid-file=",
            "--user=root",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--hostsdir={}", dir.display()));
        for s in srv {
            cmd.arg(format!("--srv-host={s}"));
        }
        for h in fixed {
            cmd.arg(format!("--host-record={h}"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (Debian package dnsmasq-base; ./test.sh installs it)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Ready when its TCP side accepts.
        tokio::time::timeout(DEADLINE, async {
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("dnsmasq listening");
        Dnsmasq {
            daemon: Daemon::new(child),
            addr,
            hosts: dir,
        }
    }

    /// Replaces the watched host records: `name` resolves to each of `ips`.
    pub fn set_hosts(&self, name: &str, ips: &[IpAddr]) {
        let text: String = ips.iter().map(|ip| format!("{ip} {name}\n")).collect();
        let tmp = self.hosts.join(".hosts.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.hosts.join("hosts")).unwrap();
    }

    /// Freezes the server (SIGSTOP): queries time out, as with a resolver that is down.
    pub fn pause(&self) {
        self.daemon.pause();
    }

    /// Lets a paused server answer again (SIGCONT).
    pub fn resume(&self) {
        self.daemon.resume();
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.daemon.stop();
        let _ = std::fs::remove_dir_all(&self.hosts);
    }
}
