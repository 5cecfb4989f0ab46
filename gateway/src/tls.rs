//! rustls configurations of the listeners and of the reference agent, on the ring provider.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot load certificates from {path}: {reason}")]
    Certificates { path: String, reason: String },
    #[error("cannot load the private key from {path}: {reason}")]
    PrivateKey { path: String, reason: String },
    #[error("invalid TLS configuration: {0}")]
    Config(String),
}

/// Returns rustls's ring provider.
///
/// NOTE: rustls 0.23.48 deprecates it because ring has no post-quantum key
/// exchange (X25519MLKEM768). The aws-lc-rs provider has one, but it is a
/// large C and CMake build, so key exchange here stays X25519, P-256 or P-384.
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::Certificates {
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("the file has no CERTIFICATE block".into()));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::PrivateKey {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn root_store(ca_path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca_path)? {
        roots.add(cert).map_err(|e| TlsError::Certificates {
            path: ca_path.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Builds the API listener's configuration: server authentication only.
pub fn api_server_config(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| {
            TlsError::Config(format!(
                "{} does not match {}: {e}",
                key.display(),
                cert.display()
            ))
        })?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Builds the agent listener's configuration: every client must present a certificate that chains to `client_ca`.
pub fn agent_server_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<ServerConfig, TlsError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(client_ca)?), provider())
            .build()
            .map_err(|e| TlsError::Config(format!("client CA {}: {e}", client_ca.display())))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| {
            TlsError::Config(format!(
                "{} does not match {}: {e}",
                key.display(),
                cert.display()
            ))
        })?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Builds a client configuration that trusts `ca` and, when given, authenticates with a client certificate.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    alpn_h2_only: bool,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(root_store(ca)?);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| {
                TlsError::Config(format!(
                    "{} does not match {}: {e}",
                    key.display(),
                    cert.display()
                ))
            })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = if alpn_h2_only {
        vec![b"h2".to_vec()]
    } else {
        ALPN.iter().map(|p| p.to_vec()).collect()
    };
    Ok(config)
}
