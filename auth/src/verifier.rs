//! Verifying presented tokens against the known keys and the expected issuer and audience.

use std::collections::HashMap;
use std::sync::RwLock;

use jsonwebtoken::Validation;

use crate::claims::{Claims, Principal};
use crate::error::AuthError;
use crate::jose::{map_jwt_error, read_header, TokenHeader};
use crate::keys::VerifyingKey;
use crate::unix_now;

/// The checks every token must pass.
#[derive(Clone, Debug)]
pub struct VerifierSettings {
    pub issuer: String,
    pub audience: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway_secs: u64,
    /// Tokens whose `exp - iat` exceeds this are rejected.
    pub max_lifetime_secs: u64,
}

/// Verifies tokens signed by any of a set of keys; the set can change while in use.
#[derive(Debug)]
pub struct TokenVerifier {
    keys: RwLock<HashMap<String, VerifyingKey>>,
    settings: VerifierSettings,
}

impl TokenVerifier {
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>, settings: VerifierSettings) -> Self {
        TokenVerifier {
            keys: RwLock::new(index(keys)),
            settings,
        }
    }

    /// Returns the keys tokens may be signed with.
    pub fn keys(&self) -> Vec<VerifyingKey> {
        self.keys
            .read()
            .expect("verifier keys lock")
            .values()
            .cloned()
            .collect()
    }

    /// Replaces the set of keys, e.g. after a rotation added one or an old one was dropped.
    pub fn set_keys(&self, keys: impl IntoIterator<Item = VerifyingKey>) {
        *self.keys.write().expect("verifier keys lock") = index(keys);
    }

    pub fn leeway_secs(&self) -> u64 {
        self.settings.leeway_secs
    }

    /// Verifies `token` and, when it is certificate-bound, that `presented_thumbprint`
    /// is the thumbprint of the certificate it is bound to.
    pub fn verify(
        &self,
        token: &str,
        presented_thumbprint: Option<&str>,
    ) -> Result<Principal, AuthError> {
        let key = self.key_for(token)?;

        let mut validation = Validation::new(key.algorithm);
        validation.leeway = self.settings.leeway_secs;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);

        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding_key(), &validation)
            .map_err(|e| map_jwt_error(e.kind()))?;
        let claims = data.claims;

        let now = unix_now();
        if claims.iat > now + self.settings.leeway_secs {
            return Err(AuthError::NotYetValid);
        }
        let lifetime_secs = claims.exp.saturating_sub(claims.iat);
        if lifetime_secs > self.settings.max_lifetime_secs {
            return Err(AuthError::LifetimeTooLong {
                lifetime_secs,
                max_secs: self.settings.max_lifetime_secs,
            });
        }
        if let Some(cnf) = &claims.cnf {
            if presented_thumbprint != Some(cnf.x5t_s256.as_str()) {
                return Err(AuthError::CertificateMismatch {
                    presented: presented_thumbprint.is_some(),
                });
            }
        }
        Ok(Principal::from_claims(claims))
    }

    /// Reads the header without trusting it: picks the key by `kid` and checks
    /// that the declared algorithm is that key's one algorithm.
    fn key_for(&self, token: &str) -> Result<VerifyingKey, AuthError> {
        let TokenHeader { alg, kid } = read_header(token)?;
        let key = self
            .keys
            .read()
            .expect("verifier keys lock")
            .get(&kid)
            .cloned()
            .ok_or_else(|| AuthError::UnknownKeyId(kid.clone()))?;
        let expected = format!("{:?}", key.algorithm);
        if alg != expected {
            return Err(AuthError::WrongAlgorithm {
                kid,
                found: alg.chars().take(20).collect(),
                expected,
            });
        }
        Ok(key)
    }
}

fn index(keys: impl IntoIterator<Item = VerifyingKey>) -> HashMap<String, VerifyingKey> {
    keys.into_iter().map(|k| (k.kid.clone(), k)).collect()
}

#[cfg(test)]
mod tests;
