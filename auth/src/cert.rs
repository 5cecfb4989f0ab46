//! The identity a TLS client certificate carries: its thumbprint and common name.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::error::KeyError;

/// base64url (no padding) SHA-256 of a certificate's DER bytes: the
/// `x5t#S256` value of RFC 8705.
pub fn certificate_thumbprint(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

/// Identity keygate reads from a verified client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    pub thumbprint: String,
    /// The subject's common name; for agent certificates, the agent id.
    pub common_name: Option<String>,
}

impl ClientIdentity {
    /// Reads the identity of a DER certificate that the TLS layer has already verified.
    pub fn from_der(der: &[u8]) -> Result<ClientIdentity, KeyError> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| KeyError::Invalid {
                what: "client certificate".into(),
                reason: e.to_string(),
            })?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        Ok(ClientIdentity {
            thumbprint: certificate_thumbprint(der),
            common_name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_reads_common_name() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "agt_0123");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let id = ClientIdentity::from_der(cert.der()).unwrap();
        assert_eq!(id.common_name.as_deref(), Some("agt_0123"));
        assert_eq!(id.thumbprint, certificate_thumbprint(cert.der()));
        assert_eq!(id.thumbprint.len(), 43);
    }

    #[test]
    fn identity_rejects_garbage() {
        assert!(ClientIdentity::from_der(b"not a certificate").is_err());
    }
}
