//! rustls configurations of the listeners and of the reference agent, on the ring provider.

pub mod reload;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot load certificates from {path}: {reason}")]
    Certificates { path: String, reason: String },
    #[error("cannot load the private key from {path}: {reason}")]
    PrivateKey { path: String, reason: String },
    #[error("the private key in {key} does not match the certificate in {cert}: {reason}")]
    KeyMismatch {
        cert: String,
        key: String,
        reason: String,
    },
    #[error("cannot load certificate revocation lists from {path}: {reason}")]
    Crl { path: String, reason: String },
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

/// Loads one or more certificate revocation lists: PEM `X509 CRL` blocks, or DER CRLs one after another.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::Crl {
        path: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let crls = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(e.to_string()))?
    } else {
        split_der_crls(&bytes).map_err(err)?
    };
    if crls.is_empty() {
        return Err(err("the file has no X509 CRL block".into()));
    }
    Ok(crls)
}

/// Splits DER CRLs stored back to back, checking that each one parses.
fn split_der_crls(mut bytes: &[u8]) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let mut crls = Vec::new();
    while !bytes.is_empty() {
        let (rest, _) = x509_parser::parse_x509_crl(bytes).map_err(|e| {
            format!(
                "the file is not PEM, and DER CRL number {} in it does not parse: {e}",
                crls.len() + 1
            )
        })?;
        let length = bytes.len() - rest.len();
        crls.push(CertificateRevocationListDer::from(bytes[..length].to_vec()));
        bytes = rest;
    }
    Ok(crls)
}

fn root_store(
    ca_path: &Path,
    certs: Vec<CertificateDer<'static>>,
) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| TlsError::Certificates {
            path: ca_path.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The files both TLS listeners are built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// PEM chain, leaf first; used by the agent and the API listener.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// CA bundle that agent client certificates must chain to.
    pub client_ca: PathBuf,
    /// Revocation lists of agent client certificates, if any.
    pub client_crl: Option<PathBuf>,
}

impl ServerTlsFiles {
    pub fn from_config(config: &Config) -> ServerTlsFiles {
        ServerTlsFiles {
            server_cert: config.server_cert_path(),
            server_key: config.server_key_path(),
            client_ca: config.client_ca_path(),
            client_crl: config.tls.client_crl.clone(),
        }
    }

    /// Returns every file, in a fixed order.
    pub fn paths(&self) -> Vec<&Path> {
        let mut paths = vec![
            self.server_cert.as_path(),
            self.server_key.as_path(),
            self.client_ca.as_path(),
        ];
        paths.extend(self.client_crl.as_deref());
        paths
    }
}

/// The configurations of both TLS listeners, built from one reading of the files.
pub struct ServerConfigs {
    pub agent: ServerConfig,
    pub api: ServerConfig,
    /// The server's leaf certificate.
    pub server_cert: CertificateDer<'static>,
    /// The certificates of the client CA bundle.
    pub client_ca: Vec<CertificateDer<'static>>,
}

impl ServerConfigs {
    /// Reads the files and builds both configurations; fails without side effects if any file is invalid.
    pub fn load(files: &ServerTlsFiles) -> Result<ServerConfigs, TlsError> {
        let chain = load_certs(&files.server_cert)?;
        let key = load_key(&files.server_key)?;
        let client_ca = load_certs(&files.client_ca)?;
        let crls = match &files.client_crl {
            Some(path) => load_crls(path)?,
            None => Vec::new(),
        };

        let mismatch = |e| key_error(e, &files.server_cert, &files.server_key);
        let mut api = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(mismatch)?;
        api.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();

        let verifier = client_verifier(
            files,
            root_store(&files.client_ca, client_ca.clone())?,
            crls,
        )?;
        let mut agent = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key)
            .map_err(mismatch)?;
        agent.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();

        Ok(ServerConfigs {
            agent,
            api,
            server_cert: chain[0].clone(),
            client_ca,
        })
    }
}

/// Builds the agent listener's verifier: every client must present a
/// certificate that chains to the CA bundle and that no CRL lists.
fn client_verifier(
    files: &ServerTlsFiles,
    roots: RootCertStore,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    if !crls.is_empty() {
        // A certificate whose issuer has no CRL in the file is accepted, so
        // the file only has to cover the CAs that revoked something.
        builder = builder.with_crls(crls).allow_unknown_revocation_status();
    }
    builder.build().map_err(|e| match e {
        rustls::server::VerifierBuilderError::InvalidCrl(reason) => TlsError::Crl {
            path: files
                .client_crl
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            reason: format!("a CRL does not parse: {reason:?}"),
        },
        other => TlsError::Certificates {
            path: files.client_ca.display().to_string(),
            reason: other.to_string(),
        },
    })
}

/// Classifies rustls's error about a certificate chain and its private key.
fn key_error(error: rustls::Error, cert: &Path, key: &Path) -> TlsError {
    match error {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
            reason: error.to_string(),
        },
        other => TlsError::PrivateKey {
            path: key.display().to_string(),
            reason: other.to_string(),
        },
    }
}

/// Builds the connector of keygate's outbound HTTP/1.1 clients (JWKS fetches,
/// AWS KMS): it trusts the certificates in `ca_file`, or the Mozilla roots
/// from `webpki-roots` when none is given.
pub fn https_connector(ca_file: Option<&Path>) -> Result<tokio_rustls::TlsConnector, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in load_certs(path)? {
                roots.add(cert).map_err(|e| TlsError::Certificates {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
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
        .with_root_certificates(root_store(ca, load_certs(ca)?)?);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| key_error(e, cert, key))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = if alpn_h2_only {
        vec![b"h2".to_vec()]
    } else {
        ALPN.iter().map(|p| p.to_vec()).collect()
    };
    Ok(config)
}
