//! An in-process DNS server for what dnsmasq cannot be made to do: answer SERVFAIL on
//! demand, and cut a UDP answer to three records without setting the truncation bit,
//! as Consul does by default. Over TCP it answers whole. A records only (AAAA: none).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_resolver::proto::op::{Message, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::A;
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

#[derive(Default)]
struct Zone {
    ips: Vec<Ipv4Addr>,
    servfail: bool,
}

pub struct FakeDns {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    tasks: Vec<JoinHandle<()>>,
}

impl FakeDns {
    /// Every name resolves to `ips` (over UDP, to the first three of them).
    pub async fn start(ips: &[Ipv4Addr]) -> FakeDns {
        // UDP and TCP on one port.
        let (udp, tcp) = loop {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            if let Ok(tcp) = tokio::net::TcpListener::bind(udp.local_addr().unwrap()).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone {
            ips: ips.to_vec(),
            servfail: false,
        }));
        let z = zone.clone();
        let udp_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = udp.recv_from(&mut buf).await else {
                    return;
                };
                let out = answer(&buf[..n], &z.lock().unwrap(), true);
                if let Some(out) = out {
                    let _ = udp.send_to(&out, from).await;
                }
            }
        });
        let z = zone.clone();
        let tcp_task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = tcp.accept().await else {
                    return;
                };
                let z = z.clone();
                tokio::spawn(async move {
                    loop {
                        let Ok(len) = s.read_u16().await else { return };
                        let mut q = vec![0u8; usize::from(len)];
                        if s.read_exact(&mut q).await.is_err() {
                            return;
                        }
                        let out = answer(&q, &z.lock().unwrap(), false);
                        let Some(out) = out else { return };
                        let mut framed = (out.len() as u16).to_be_bytes().to_vec();
                        framed.extend_from_slice(&out);
                        if s.write_all(&framed).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        FakeDns {
            addr,
            zone,
            tasks: vec![udp_task, tcp_task],
        }
    }

    pub fn set(&self, ips: &[Ipv4Addr]) {
        self.zone.lock().unwrap().ips = ips.to_vec();
    }

    /// From now on, answer every query SERVFAIL (or stop doing so).
    pub fn servfail(&self, on: bool) {
        self.zone.lock().unwrap().servfail = on;
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn answer(query: &[u8], zone: &Zone, udp: bool) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let mut m = Message::response(q.metadata.id, OpCode::Query);
    m.metadata.authoritative = true;
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.add_queries(q.queries.clone());
    if zone.servfail {
        m.metadata.response_code = ResponseCode::ServFail;
        return m.to_vec().ok();
    }
    for query in &q.queries {
        if query.query_type() != RecordType::A {
            continue;
        }
        let limit = if udp { 3 } else { usize::MAX };
        for ip in zone.ips.iter().take(limit) {
            m.add_answer(Record::from_rdata(
                query.name().clone(),
                0,
                RData::A(A(*ip)),
            ));
        }
    }
    m.to_vec().ok()
}
