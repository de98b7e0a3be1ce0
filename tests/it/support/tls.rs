//! TLS for tests: a sluice with a TLS listener (test certificates for a.test and
//! b.test) and a client that accepts any certificate, so that tests can look at which
//! one was sent.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{DEADLINE, Sluice, TestBackend};

pub fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/tls")
        .join(name)
}

pub fn cert_der(name: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(data(name)).unwrap()
}

/// One TLS listener with certificates a (a.test, *.a.test) then b (b.test, *.b.test).
pub async fn tls_sluice(backend: &TestBackend) -> Sluice {
    tls_sluice_with(backend, "").await
}

/// `tls_sluice`, with `extra` lines (whole sections) at the end of the config.
pub async fn tls_sluice_with(backend: &TestBackend, extra: &str) -> Sluice {
    tls_sluice_over(&backend.url(), extra).await
}

/// `tls_sluice_with`, in front of the backend at `url`.
pub async fn tls_sluice_over(url: &str, extra: &str) -> Sluice {
    Sluice::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\
         tls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}, {{ cert = \"{}\", key = \"{}\" }}] }}\n\
         [upstream.web]\nbackends = [{{ url = \"{}\" }}]\n{extra}\n",
        data("a.pem").display(),
        data("a.key").display(),
        data("b.pem").display(),
        data("b.key").display(),
        url
    ))
    .await
}

/// Accepts any certificate: the tests look at which one was sent.
#[derive(Debug)]
pub struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS connection to `lb` sending `sni` (None: no SNI) and offering `alpn`.
pub async fn connect(lb: &Sluice, sni: Option<&str>, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    handshake(TcpStream::connect(lb.addr).await.unwrap(), sni, alpn).await
}

/// A TLS handshake on `tcp`, an open connection, as `connect` makes it.
pub async fn handshake(tcp: TcpStream, sni: Option<&str>, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    handshake_with(tcp, sni, client_config(alpn, sni.is_some())).await
}

/// A handshake with a client configuration of the test's (to resume sessions).
pub async fn handshake_with(
    tcp: TcpStream,
    sni: Option<&str>,
    config: Arc<rustls::ClientConfig>,
) -> TlsStream<TcpStream> {
    let name = ServerName::try_from(sni.unwrap_or("unused.test").to_owned()).unwrap();
    tokio::time::timeout(
        DEADLINE,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("handshake in time")
    .expect("handshake")
}

/// A client configuration that accepts any certificate, offering `alpn`; it keeps the
/// sessions it is given for resumption.
pub fn client_config(alpn: &[&[u8]], sni: bool) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.enable_sni = sni;
    Arc::new(config)
}

/// The certificate the server sent.
pub fn sent_cert(s: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}
