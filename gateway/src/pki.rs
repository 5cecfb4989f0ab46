//! The development certificate authority: creates it once, and issues server
//! and agent client certificates from it.
//!
//! Production deployments bring their own CA and server certificate through
//! the `[tls]` options; this CA exists so `keygate dev` works with no set-up.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SerialNumber,
};
use time::{Duration, OffsetDateTime};

const CA_COMMON_NAME: &str = "keygate development CA";
const CA_VALIDITY_DAYS: i64 = 3650;
const LEAF_VALIDITY_DAYS: i64 = 365;
/// Time from a CRL's thisUpdate to its nextUpdate.
const CRL_VALIDITY_DAYS: i64 = 30;

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

/// A certificate revocation list, in both encodings.
pub struct IssuedCrl {
    pub pem: String,
    pub der: Vec<u8>,
}

/// The extended key usage of an issued leaf certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyPurpose {
    ClientAuth,
    ServerAuth,
}

/// Parameters of a client certificate from [`DevCa::issue_client_cert_with`].
/// Tests use them to make certificates that the agent listener must reject.
#[derive(Clone, Debug)]
pub struct ClientCertParams {
    /// For agent certificates, the agent id.
    pub common_name: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub purpose: KeyPurpose,
    /// Serial number; `None` derives one from the public key.
    pub serial: Option<u64>,
}

impl ClientCertParams {
    /// Returns the parameters of [`DevCa::issue_client_cert`]: valid from five
    /// minutes ago for a year, for client authentication.
    pub fn new(common_name: &str) -> ClientCertParams {
        let now = OffsetDateTime::now_utc();
        ClientCertParams {
            common_name: common_name.to_owned(),
            not_before: (now - Duration::minutes(5)).into(),
            not_after: (now + Duration::days(LEAF_VALIDITY_DAYS)).into(),
            purpose: KeyPurpose::ClientAuth,
            serial: None,
        }
    }
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
        let params = ca_params(CA_COMMON_NAME);
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

    /// Creates a CA named `name` in memory only, for tests that need a CA the server does not trust.
    pub fn generate(name: &str) -> Result<DevCa, PkiError> {
        let key = KeyPair::generate()?;
        let params = ca_params(name);
        let cert = params.self_signed(&key)?;
        Ok(DevCa {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
        })
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
            issuer: Issuer::new(ca_params(CA_COMMON_NAME), key),
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
        self.issue_client_cert_with(&ClientCertParams::new(agent_id))
    }

    /// Issues a client certificate with the given validity, key purpose and serial number.
    pub fn issue_client_cert_with(
        &self,
        client: &ClientCertParams,
    ) -> Result<IssuedCert, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = common_name(&client.common_name);
        params.extended_key_usages = vec![match client.purpose {
            KeyPurpose::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
            KeyPurpose::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
        }];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = client.serial.map(SerialNumber::from);
        params.not_before = client.not_before.into();
        params.not_after = client.not_after.into();
        self.sign_with_validity(params)
    }

    /// Issues a CRL that lists the certificates with the given serial numbers
    /// as revoked. Its CRL number is the current Unix time, so a later CRL has a larger one.
    pub fn issue_crl(&self, revoked_serials: &[u64]) -> Result<IssuedCrl, PkiError> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + Duration::days(CRL_VALIDITY_DAYS),
            crl_number: SerialNumber::from(now.unix_timestamp().max(1) as u64),
            issuing_distribution_point: None,
            revoked_certs: revoked_serials
                .iter()
                .map(|&serial| RevokedCertParams {
                    serial_number: SerialNumber::from(serial),
                    revocation_time: now - Duration::minutes(1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer)?;
        Ok(IssuedCrl {
            pem: crl.pem()?,
            der: crl.der().to_vec(),
        })
    }

    fn sign(&self, mut params: CertificateParams) -> Result<IssuedCert, PkiError> {
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(LEAF_VALIDITY_DAYS);
        self.sign_with_validity(params)
    }

    fn sign_with_validity(&self, mut params: CertificateParams) -> Result<IssuedCert, PkiError> {
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

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(name);
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
