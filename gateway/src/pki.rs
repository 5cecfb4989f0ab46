//! The development certificate authority: creates it once, and issues server
//! and agent client certificates from it.
//!
//! Production deployments bring their own CA and server certificate through
//! the `[tls]` options; this CA exists so `keygate dev` works with no set-up.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

const CA_COMMON_NAME: &str = "keygate development CA";
const CA_VALIDITY_DAYS: i64 = 3650;
const LEAF_VALIDITY_DAYS: i64 = 365;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid key or certificate: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot create certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A CA certificate with its private key, able to sign leaf certificates.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

/// A leaf certificate and its private key, both PEM.
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: zeroize::Zeroizing<String>,
}

impl DevCa {
    /// Loads `ca.pem` and `ca-key.pem` from `dir`, creating both if neither exists.
    pub fn load_or_create(dir: &Path) -> Result<(DevCa, bool), PkiError> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca-key.pem");
        if cert_path.exists() {
            return Ok((DevCa::load(&cert_path, &key_path)?, false));
        }
        let key = KeyPair::generate()?;
        let params = ca_params();
        let cert = params.self_signed(&key)?;
        write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
        Ok((
            DevCa {
                issuer: Issuer::new(params, key),
                cert_pem: cert.pem(),
            },
            true,
        ))
    }

    fn load(cert_path: &Path, key_path: &Path) -> Result<DevCa, PkiError> {
        let cert_pem = read_file(cert_path)?;
        let key_pem = zeroize::Zeroizing::new(read_file(key_path)?);
        let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Invalid {
            path: key_path.into(),
            reason: e.to_string(),
        })?;
        // The issuer name and key identifier are derived from the same
        // parameters and key that created the CA, so they match its certificate.
        Ok(DevCa {
            issuer: Issuer::new(ca_params(), key),
            cert_pem,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a TLS server certificate for the given DNS names and IP addresses.
    pub fn issue_server_cert(&self, names: &[&str]) -> Result<IssuedCert, PkiError> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name = common_name(names.first().copied().unwrap_or("keygate"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(params)
    }

    /// Issues an agent client certificate whose common name is the agent id.
    pub fn issue_client_cert(&self, agent_id: &str) -> Result<IssuedCert, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = common_name(agent_id);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(params)
    }

    fn sign(&self, mut params: CertificateParams) -> Result<IssuedCert, PkiError> {
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(LEAF_VALIDITY_DAYS);
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: zeroize::Zeroizing::new(key.serialize_pem()),
        })
    }
}

impl IssuedCert {
    /// Writes the certificate (mode 0644) and key (mode 0600) files.
    pub fn write(&self, cert_path: &Path, key_path: &Path) -> Result<(), PkiError> {
        write_file(key_path, self.key_pem.as_bytes(), 0o600)?;
        write_file(cert_path, self.cert_pem.as_bytes(), 0o644)
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
    params
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

fn read_file(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.into(),
        source,
    })
}

/// Writes a new file with `mode`, replacing any old one only through a rename,
/// so a crash never leaves a half-written key.
pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let err = |source| PkiError::Write {
        path: path.into(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use rustls_pki_types::pem::PemObject;

    use super::*;

    #[test]
    fn ca_reload_issues_certs_that_chain() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, created) = DevCa::load_or_create(dir.path()).unwrap();
        assert!(created);
        let (reloaded, created) = DevCa::load_or_create(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(ca.cert_pem(), reloaded.cert_pem());

        let leaf = reloaded.issue_client_cert("agt_test").unwrap();
        let ca_der =
            rustls_pki_types::CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap();
        let leaf_der =
            rustls_pki_types::CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_der).unwrap();
        let provider = crate::tls::provider();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
        verifier
            .verify_client_cert(&leaf_der, &[], rustls_pki_types::UnixTime::now())
            .expect("a client certificate from the reloaded CA must chain to the CA");
    }
}
