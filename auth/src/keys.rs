//! Ed25519 signing keys, their public halves and their JWK form.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::KeyError;
use crate::pem;

const PEM_LABEL: &str = "PRIVATE KEY";

/// A private Ed25519 key that signs tokens, with its key id.
///
/// The PKCS#8 bytes are zeroized on drop and `Debug` prints only the key id.
pub struct SigningKey {
    pkcs8: Zeroizing<Vec<u8>>,
    encoding: EncodingKey,
    verifying: VerifyingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(kid={}, REDACTED)", self.verifying.kid)
    }
}

impl SigningKey {
    /// Generates a new key from the system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Invalid {
            what: "generated Ed25519 key".into(),
            reason: "the system random source failed".into(),
        })?;
        Self::from_pkcs8(doc.as_ref())
    }

    /// Builds a key from PKCS#8 v1 or v2 DER bytes.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, KeyError> {
        let pair =
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8).map_err(|e| KeyError::Invalid {
                what: "Ed25519 private key".into(),
                reason: e.to_string(),
            })?;
        let mut public = [0u8; 32];
        public.copy_from_slice(pair.public_key().as_ref());
        Ok(SigningKey {
            pkcs8: Zeroizing::new(pkcs8.to_vec()),
            encoding: EncodingKey::from_ed_der(pkcs8),
            verifying: VerifyingKey::ed25519(public),
        })
    }

    /// Loads a PEM `PRIVATE KEY` file, rejecting one that group or others can access.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let meta = fs::metadata(path).map_err(|source| KeyError::Read {
            path: path.into(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.into(),
                mode,
            });
        }
        let text = Zeroizing::new(fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.into(),
            source,
        })?);
        let der =
            Zeroizing::new(
                pem::decode(PEM_LABEL, &text).map_err(|reason| KeyError::Invalid {
                    what: path.display().to_string(),
                    reason,
                })?,
            );
        Self::from_pkcs8(&der)
    }

    /// Writes the key as PEM to a new file with mode 0600; never overwrites.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let text = Zeroizing::new(pem::encode(PEM_LABEL, &self.pkcs8));
        let write_err = |source| KeyError::Write {
            path: path.into(),
            source,
        };
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(write_err)?;
        file.write_all(text.as_bytes()).map_err(write_err)?;
        file.sync_all().map_err(write_err)
    }

    /// Loads the key at `path`, or generates and saves one if the file does not exist.
    pub fn load_or_generate(path: &Path) -> Result<(Self, bool), KeyError> {
        if path.exists() {
            return Ok((Self::load(path)?, false));
        }
        let key = Self::generate()?;
        key.save(path)?;
        Ok((key, true))
    }

    pub fn kid(&self) -> &str {
        &self.verifying.kid
    }

    /// Returns the private key as PKCS#8 DER, for sealing by the vault.
    pub(crate) fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// Signs arbitrary header and claims bytes into a compact JWS.
    ///
    /// Tests and fuzzing use it to craft tokens the issuer would never mint;
    /// the server issues tokens only through `TokenIssuer`.
    pub fn sign_compact(&self, header: &[u8], claims: &[u8]) -> String {
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&self.pkcs8)
            .expect("the PKCS#8 bytes were checked when the key was built");
        let signature = pair.sign(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        )
    }

    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.verifying
    }

    pub(crate) fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }
}

/// The public half of a signing key, with the one algorithm it accepts.
#[derive(Clone, Debug)]
pub struct VerifyingKey {
    pub kid: String,
    pub algorithm: Algorithm,
    public: [u8; 32],
}

impl VerifyingKey {
    /// Builds an Ed25519 key whose id is its RFC 7638 JWK thumbprint.
    pub fn ed25519(public: [u8; 32]) -> Self {
        let x = URL_SAFE_NO_PAD.encode(public);
        // RFC 7638: SHA-256 over the required members in lexicographic order, no spaces.
        let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
        VerifyingKey {
            kid: URL_SAFE_NO_PAD.encode(digest.as_ref()),
            algorithm: Algorithm::EdDSA,
            public,
        }
    }

    /// Builds a key from its JWK; only `kty: OKP`, `crv: Ed25519` keys are accepted.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, KeyError> {
        let invalid = |reason: String| KeyError::Invalid {
            what: format!("JWK {:?}", jwk.kid),
            reason,
        };
        if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
            return Err(invalid(format!(
                "kty {:?} crv {:?} is not supported (expected OKP Ed25519)",
                jwk.kty, jwk.crv
            )));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(&jwk.x)
            .map_err(|e| invalid(format!("x is not base64url: {e}")))?;
        let public: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| invalid(format!("x is {} bytes, expected 32", b.len())))?;
        let mut key = Self::ed25519(public);
        key.kid = jwk.kid.clone();
        Ok(key)
    }

    pub(crate) fn decoding_key(&self) -> DecodingKey {
        DecodingKey::from_ed_der(&self.public)
    }

    /// Returns the key as a JWK, for `/.well-known/jwks.json`.
    pub fn to_jwk(&self) -> Jwk {
        Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: URL_SAFE_NO_PAD.encode(self.public),
            kid: self.kid.clone(),
            alg: "EdDSA".into(),
            key_use: "sig".into(),
        }
    }
}

/// One public key in JSON Web Key form (RFC 7517, RFC 8037).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    pub kid: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub key_use: String,
}

/// A JWK set document.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_save_load_round_trip() {
        let dir = std::env::temp_dir().join(format!("keygate-auth-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("signing.pem");
        let _ = fs::remove_file(&path);
        let (key, created) = SigningKey::load_or_generate(&path).unwrap();
        assert!(created);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (again, created) = SigningKey::load_or_generate(&path).unwrap();
        assert!(!created);
        assert_eq!(key.kid(), again.kid());
        assert!(key.save(&path).is_err(), "save must not overwrite");

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        match SigningKey::load(&path) {
            Err(KeyError::Permissions { mode, .. }) => assert_eq!(mode, 0o644),
            other => panic!("expected a permissions error, got {other:?}"),
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn jwk_round_trip_keeps_kid() {
        let key = SigningKey::generate().unwrap();
        let jwk = key.verifying_key().to_jwk();
        let back = VerifyingKey::from_jwk(&jwk).unwrap();
        assert_eq!(back.kid, key.kid());
        assert_eq!(back.public, key.verifying_key().public);
    }

    #[test]
    fn jwk_wrong_curve_rejected() {
        let mut jwk = SigningKey::generate().unwrap().verifying_key().to_jwk();
        jwk.crv = "P-256".into();
        assert!(VerifyingKey::from_jwk(&jwk).is_err());
    }

    #[test]
    fn debug_hides_private_key() {
        let key = SigningKey::generate().unwrap();
        let shown = format!("{key:?}");
        assert!(shown.contains("REDACTED"));
        assert!(!shown.contains(&URL_SAFE_NO_PAD.encode(&*key.pkcs8)));
    }
}
