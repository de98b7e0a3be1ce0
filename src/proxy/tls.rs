//! TLS listeners (SPEC §2 `tls`): certificates and keys read from PEM files at startup,
//! one chosen per handshake by the client's SNI, and ALPN offering h2 and http/1.1.
//! A client without SNI, or naming a host no certificate covers, gets the first one.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::{CertificateConfig, TlsConfig};

/// Sessions a TLS listener remembers for resumption by session id (TLS 1.2); TLS 1.3
/// clients resume with stateless tickets instead. Each entry is a few hundred bytes.
const SESSION_CACHE: usize = 4096;

/// A certificate or key that could not be used; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    // `path` is the file as the config names it.
    #[error("certificate {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("{0}")]
    Config(String),
}

/// The acceptor for a listener's `tls` settings.
pub fn acceptor(cfg: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = cfg
        .certificates
        .iter()
        .map(|c| load(c, &provider))
        .collect::<Result<Vec<_>, _>>()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(BySni { certs }));
    // A client offering none of these gets a TLS alert; http/1.0 is served as HTTP/1.1
    // serves it.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    if cfg.resumption {
        // Stateless tickets (keys rotated every 6 hours, as rustls' ticketer does),
        // and a cache of sessions for TLS 1.2 clients that resume by session id.
        config.ticketer =
            rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Config(e.to_string()))?;
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
    } else {
        // No tickets, no cache: every connection makes a full handshake.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Every problem with a listener's certificate files (`sluice check`), not only the
/// first.
pub fn problems(cfg: &TlsConfig) -> Vec<TlsError> {
    let provider = rustls::crypto::ring::default_provider();
    cfg.certificates
        .iter()
        .filter_map(|c| load(c, &provider).err())
        .collect()
}

/// Reads one certificate chain and its key, and checks that they belong together.
fn load(c: &CertificateConfig, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_err = |reason: String| TlsError::Cert {
        path: c.cert.display().to_string(),
        reason,
    };
    let key_err = |reason: String| TlsError::Key {
        path: c.key.display().to_string(),
        reason,
    };
    let cert_text = readable(&c.cert).map_err(cert_err)?;
    let key_text = readable(&c.key).map_err(key_err)?;
    if key_text.windows(9).any(|w| w == b"ENCRYPTED") {
        return Err(key_err(
            "is encrypted, which is not supported; store it decrypted (e.g. openssl pkey -in KEY -out PLAIN)"
                .into(),
        ));
    }
    let chain = CertificateDer::pem_slice_iter(&cert_text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(format!("not a PEM certificate file ({e})")))?;
    if chain.is_empty() {
        return Err(cert_err("holds no certificate (expected PEM)".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_text)
        .map_err(|e| key_err(format!("not a PEM private key file ({e})")))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_err(format!("unusable private key ({e})")))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(Arc::new(certified)),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(cert_err(format!(
                "does not match the key in {} (the server's own certificate must come first in the file)",
                c.key.display()
            )))
        }
        Err(e) => Err(cert_err(format!(
            "cannot be checked against the key in {}: {e}",
            c.key.display()
        ))),
    }
}

/// The file's bytes, or a plain reason it cannot be read (the PEM reader's errors name
/// no cause).
fn readable(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read: {e}"))
}

impl TlsError {
    /// The file the problem is in, as the config names it.
    pub fn path(&self) -> Option<&str> {
        match self {
            TlsError::Cert { path, .. } | TlsError::Key { path, .. } => Some(path),
            TlsError::Config(_) => None,
        }
    }
}

/// Picks the first certificate valid for the client's SNI name, else the first one.
#[derive(Debug)]
struct BySni {
    certs: Vec<Arc<CertifiedKey>>,
}

impl BySni {
    fn covers(ck: &CertifiedKey, name: &ServerName<'_>) -> bool {
        ck.end_entity_cert()
            .ok()
            .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
            .is_some_and(|ee| ee.verify_is_valid_for_subject_name(name).is_ok())
    }
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if self.certs.len() > 1
            && let Some(name) = hello
                .server_name()
                .and_then(|n| ServerName::try_from(n).ok())
            && let Some(ck) = self.certs.iter().find(|ck| Self::covers(ck, &name))
        {
            return Some(Arc::clone(ck));
        }
        self.certs.first().cloned()
    }
}
