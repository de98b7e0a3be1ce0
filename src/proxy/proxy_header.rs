//! The PROXY protocol (HAProxy's proxy-protocol.txt, v1 text and v2 binary), parsed and
//! built by the `ppp` crate. A listener with `proxy_protocol = true` (SPEC §8) reads one
//! header before anything else on each connection, within `header_read_timeout`, and
//! takes the client address from it; a connection without a valid header is closed. An
//! upstream with `proxy_protocol = "v1"`/`"v2"` opens each backend connection with one
//! (`encode`).
//!
//! The header is peeked, then exactly its bytes are read: what follows it (a request, a
//! TLS handshake, the HTTP/2 preface) stays in the socket for the usual first-bytes
//! checks.

use std::net::SocketAddr;
use std::time::Duration;

use ppp::{v1, v2};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// v1 headers are at most 107 bytes; v2 ones with IPv6 addresses are 52 plus their TLVs.
/// Longer v2 headers (many TLVs) are read whole once their length is known.
const PEEK: usize = 256;

/// How a v1 header starts, and its longest line (with its CRLF).
const V1_PREFIX: &[u8] = b"PROXY ";
const V1_MAX: usize = 107;

/// The largest v2 header: the fixed 16 bytes and a 16-bit length.
const V2_MAX: usize = 16 + u16::MAX as usize;

/// What the first bytes of a connection say.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header of `len` bytes. `source`: the client it names; None for v1
    /// `UNKNOWN`, v2 `LOCAL` (a health check from the balancer itself) or a family
    /// without an IP address: then the connection's own peer is the client.
    Header {
        len: usize,
        source: Option<SocketAddr>,
    },
    /// More bytes are needed; `total`: the header's whole length, once known (v2).
    Incomplete { total: Option<usize> },
    /// Not a PROXY header: why.
    Invalid(&'static str),
}

/// Parses the start of a connection's bytes. The outcome is the same whatever part of
/// a header has arrived: a v1 line is parsed only once whole (its end is its length),
/// a v2 header once its fixed part tells its length.
pub fn parse(seen: &[u8]) -> Parsed {
    if seen.starts_with(V1_PREFIX) || V1_PREFIX.starts_with(seen) {
        return match seen.iter().position(|&b| b == b'\n') {
            Some(end) => v1_line(&seen[..=end]),
            None if seen.len() < V1_MAX => Parsed::Incomplete { total: None },
            None => Parsed::Invalid("PROXY v1 header too long"),
        };
    }
    match v2::Header::try_from(seen) {
        Ok(h) => Parsed::Header {
            len: h.len(),
            source: match (h.command, h.addresses) {
                (v2::Command::Local, _) => None,
                (_, v2::Addresses::IPv4(a)) => Some((a.source_address, a.source_port).into()),
                (_, v2::Addresses::IPv6(a)) => Some((a.source_address, a.source_port).into()),
                (_, v2::Addresses::Unspecified | v2::Addresses::Unix(_)) => None,
            },
        },
        Err(v2::ParseError::Partial(_, len)) => Parsed::Incomplete {
            total: Some(16 + len),
        },
        Err(v2::ParseError::Incomplete(_)) => Parsed::Incomplete { total: None },
        Err(v2::ParseError::Prefix) => {
            Parsed::Invalid("the connection did not open with a PROXY header")
        }
        Err(_) => Parsed::Invalid("malformed PROXY v2 header"),
    }
}

/// A whole v1 line, up to and including its `\n`.
fn v1_line(line: &[u8]) -> Parsed {
    match v1::Header::try_from(line) {
        Ok(h) if h.header.len() == line.len() => Parsed::Header {
            len: line.len(),
            source: match h.addresses {
                v1::Addresses::Tcp4(a) => Some((a.source_address, a.source_port).into()),
                v1::Addresses::Tcp6(a) => Some((a.source_address, a.source_port).into()),
                v1::Addresses::Unknown => None,
            },
        },
        _ => Parsed::Invalid("malformed PROXY v1 header"),
    }
}

pub use crate::config::ProxyVersion;

/// The header a backend connection opens with, naming `client` as the source and
/// `local` (where the client connected to) as the destination. Addresses of different
/// families are both written as IPv6 (an IPv4 one mapped).
pub fn encode(version: ProxyVersion, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (src, dst) = match (client, local) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => {
            (client, local)
        }
        _ => (as_v6(client), as_v6(local)),
    };
    match version {
        ProxyVersion::V1 => v1::Addresses::from((src, dst)).to_string().into_bytes(),
        ProxyVersion::V2 => {
            let command = v2::Version::Two | v2::Command::Proxy;
            v2::Builder::with_addresses(command, v2::Protocol::Stream, (src, dst))
                .build()
                .unwrap_or_else(|_| local_header(version).to_vec())
        }
    }
}

/// The header of a connection sluice makes for itself (a health check): v2 `LOCAL`,
/// v1 `UNKNOWN`; the backend then takes the connection's own addresses.
pub fn local_header(version: ProxyVersion) -> &'static [u8] {
    match version {
        ProxyVersion::V1 => b"PROXY UNKNOWN\r\n",
        ProxyVersion::V2 => b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00",
    }
}

fn as_v6(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V4(v4) => SocketAddr::from((v4.ip().to_ipv6_mapped(), v4.port())),
        v6 => v6,
    }
}

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Invalid(&'static str),
    #[error("closed before a whole PROXY header")]
    Closed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads the PROXY header a connection opens with, leaving every byte after it unread.
/// The caller bounds it with `header_read_timeout`. Ok(None): the header names no
/// client address (use the connection's peer).
pub async fn read(stream: &mut TcpStream) -> Result<Option<SocketAddr>, ReadError> {
    let mut buf = [0u8; PEEK];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(ReadError::Closed);
        }
        match parse(&buf[..n]) {
            Parsed::Header { len, source } => {
                stream.read_exact(&mut buf[..len]).await?;
                return Ok(source);
            }
            Parsed::Invalid(why) => return Err(ReadError::Invalid(why)),
            Parsed::Incomplete { total: Some(total) } if total > PEEK => {
                // A long v2 header: its length is known, so read exactly that much.
                let mut whole = vec![0u8; total.min(V2_MAX)];
                stream.read_exact(&mut whole).await?;
                return match parse(&whole) {
                    Parsed::Header { source, .. } => Ok(source),
                    Parsed::Invalid(why) => Err(ReadError::Invalid(why)),
                    Parsed::Incomplete { .. } => Err(ReadError::Closed),
                };
            }
            Parsed::Incomplete { .. } if n == PEEK => {
                return Err(ReadError::Invalid("PROXY header too long"));
            }
            // Part of a header: rare (a split packet); look again shortly.
            Parsed::Incomplete { .. } => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut h = v2::PROTOCOL_PREFIX.to_vec();
        h.push(0x20 | command);
        h.push(family);
        let len = u16::try_from(addresses.len() + tlvs.len()).unwrap();
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(addresses);
        h.extend_from_slice(tlvs);
        h
    }

    #[test]
    fn v1_names_the_client_and_its_length_excludes_what_follows() {
        let h = b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 80\r\nGET / HTTP/1.1\r\n";
        let src: SocketAddr = "192.0.2.7:51000".parse().unwrap();
        let len = h.iter().position(|&b| b == b'\n').unwrap() + 1;
        assert_eq!(
            parse(h),
            Parsed::Header {
                len,
                source: Some(src)
            }
        );
        let h6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 443\r\n";
        let src6: SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
        assert_eq!(
            parse(h6),
            Parsed::Header {
                len: h6.len(),
                source: Some(src6)
            }
        );
        let unknown = b"PROXY UNKNOWN\r\n";
        assert_eq!(
            parse(unknown),
            Parsed::Header {
                len: 15,
                source: None
            }
        );
    }

    #[test]
    fn v2_proxy_local_and_tlvs() {
        let addrs = [192, 0, 2, 7, 10, 0, 0, 1, 0xC7, 0x38, 0, 80];
        let h = v2(1, 0x11, &addrs, &[]);
        let src: SocketAddr = "192.0.2.7:51000".parse().unwrap();
        assert_eq!(
            parse(&h),
            Parsed::Header {
                len: 28,
                source: Some(src)
            }
        );
        // LOCAL: the balancer's own check; the peer is the client.
        let local = v2(0, 0x00, &[], &[]);
        assert_eq!(
            parse(&local),
            Parsed::Header {
                len: 16,
                source: None
            }
        );
        // A NOOP TLV is part of the header.
        let with_tlv = v2(1, 0x11, &addrs, &[4, 0, 2, 0, 0]);
        assert_eq!(
            parse(&with_tlv),
            Parsed::Header {
                len: 33,
                source: Some(src)
            }
        );
    }

    #[test]
    fn encoded_headers_parse_back_to_the_client() {
        let client: SocketAddr = "192.0.2.7:51000".parse().unwrap();
        let local: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let local6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        for version in [ProxyVersion::V1, ProxyVersion::V2] {
            for dst in [local, local6] {
                let h = encode(version, client, dst);
                let Parsed::Header { len, source } = parse(&h) else {
                    panic!("{version:?} {dst}: {h:?}");
                };
                assert_eq!(len, h.len());
                let ip = source.unwrap().ip().to_canonical();
                assert_eq!((ip, source.unwrap().port()), (client.ip(), 51000));
            }
            let local = local_header(version);
            assert_eq!(
                parse(local),
                Parsed::Header {
                    len: local.len(),
                    source: None
                }
            );
        }
        assert_eq!(
            encode(ProxyVersion::V1, client, local),
            b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 80\r\n"
        );
    }

    #[test]
    fn partial_headers_wait_and_others_are_invalid() {
        let h = b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 80\r\n";
        for cut in 1..h.len() {
            assert_eq!(
                parse(&h[..cut]),
                Parsed::Incomplete { total: None },
                "{cut}"
            );
        }
        let long = v2(1, 0x11, &[0; 12], &[0; 400]);
        assert_eq!(
            parse(&long[..20]),
            Parsed::Incomplete {
                total: Some(long.len())
            }
        );
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x03\x01\x02\x00",
            b"PROXY TCP4 999.0.2.7 10.0.0.1 51000 80\r\n",
            b"PROXY TCP9 1.2.3.4 1.2.3.4 1 1\r\n",
        ] {
            assert!(matches!(parse(bad), Parsed::Invalid(_)), "{bad:?}");
        }
        // v2 with version 1 in the version nibble.
        let mut wrong = v2(1, 0x11, &[0; 12], &[]);
        wrong[12] = 0x11;
        assert!(matches!(parse(&wrong), Parsed::Invalid(_)));
    }
}
