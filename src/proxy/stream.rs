//! Connections to backends: plain TCP, or TLS for `https://` backends (rustls). The
//! plain case stays a bare `TcpStream` behind one `match`; TLS is boxed, as it is the
//! larger and rarer one.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::{Scheme, UpstreamConfig};

/// One connection to a backend.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }

    /// The two directions, to be used by different tasks.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Plain(r), WriteHalf::Plain(w))
            }
            Stream::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
        }
    }
}

/// `AsyncRead` (and with `write`, `AsyncWrite`) for an enum whose variants `Plain`
/// and `Tls` both have it.
macro_rules! delegate_io {
    ($t:ident) => {
        impl AsyncRead for $t {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $t::Plain(s) => Pin::new(s).poll_read(cx, buf),
                    $t::Tls(s) => Pin::new(s).poll_read(cx, buf),
                }
            }
        }
    };
    ($t:ident, write) => {
        impl AsyncWrite for $t {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $t::Plain(s) => Pin::new(s).poll_write(cx, buf),
                    $t::Tls(s) => Pin::new(s).poll_write(cx, buf),
                }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $t::Plain(s) => Pin::new(s).poll_flush(cx),
                    $t::Tls(s) => Pin::new(s).poll_flush(cx),
                }
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $t::Plain(s) => Pin::new(s).poll_shutdown(cx),
                    $t::Tls(s) => Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    };
}

delegate_io!(Stream);
delegate_io!(Stream, write);
delegate_io!(ReadHalf);
delegate_io!(WriteHalf, write);

/// The reading direction of a `Stream`.
pub enum ReadHalf {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsStream<TcpStream>>),
}

/// The writing direction of a `Stream`.
pub enum WriteHalf {
    Plain(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<TlsStream<TcpStream>>),
}

impl WriteHalf {
    /// Lets go of the half without shutting the socket's sending side (which some
    /// servers take as the client going away mid-response).
    pub fn forget(self) {
        match self {
            WriteHalf::Plain(w) => w.forget(),
            // Dropping a TLS half sends nothing.
            WriteHalf::Tls(_) => {}
        }
    }
}

/// Why an upstream's `https://` backends could not be given trust roots.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("ca_file {path}: cannot read PEM certificates")]
    Unreadable {
        path: std::path::PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("ca_file {0}: holds no usable CA certificate")]
    NoCertificate(std::path::PathBuf),
    #[error("https backends need trust roots: the system has none readable; set ca_file")]
    NoSystemRoots,
    #[error("TLS client settings")]
    Settings(#[source] rustls::Error),
}

/// The TLS client for an upstream's `https://` backends: trust from `ca_file`, or the
/// system's roots; ALPN h2 for `protocol = "h2"`, else http/1.1. None when the upstream
/// has no https backend.
pub fn connector(cfg: &UpstreamConfig) -> Result<Option<TlsConnector>, TrustError> {
    let discovered_https = cfg
        .discovery
        .as_ref()
        .is_some_and(|d| d.scheme == Scheme::Https);
    if !discovered_https && !cfg.backends.iter().any(|b| b.url.scheme == Scheme::Https) {
        return Ok(None);
    }
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|source| TrustError::Unreadable {
                    path: path.clone(),
                    source,
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TrustError::NoCertificate(path.clone()));
            }
        }
        None => roots = system_roots()?,
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TrustError::Settings)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = match cfg.protocol {
        crate::config::Protocol::H2 => vec![b"h2".to_vec()],
        _ => vec![b"http/1.1".to_vec()],
    };
    Ok(Some(TlsConnector::from(Arc::new(config))))
}

/// The system's trust roots, read once per process (reloads and admin edits reuse
/// them; `ca_file` is read again each time, so a changed file takes effect).
fn system_roots() -> Result<rustls::RootCertStore, TrustError> {
    static ROOTS: std::sync::OnceLock<rustls::RootCertStore> = std::sync::OnceLock::new();
    let roots = ROOTS.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        roots
    });
    if roots.is_empty() {
        return Err(TrustError::NoSystemRoots);
    }
    Ok(roots.clone())
}

/// The name a backend's certificate must carry: its host (a DNS name or an IP address).
pub fn server_name(host: &str) -> io::Result<ServerName<'static>> {
    ServerName::try_from(host.to_owned())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}
