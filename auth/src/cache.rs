//! A cache of verified tokens, so a token presented again skips the signature check.
//!
//! Entries are keyed by the SHA-256 of the token, so the cache stores no
//! token text. Only successful verifications are cached: a token must pass
//! every check once before it can be served from here. A hit still checks
//! expiry and the certificate binding against the current request.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::claims::Principal;
use crate::error::AuthError;
use crate::unix_now;
use crate::verifier::TokenVerifier;

type TokenDigest = [u8; 32];

/// A [`TokenVerifier`] with a bounded cache of verified tokens.
pub struct CachedVerifier {
    inner: TokenVerifier,
    entries: RwLock<HashMap<TokenDigest, Principal>>,
    capacity: usize,
}

impl CachedVerifier {
    /// Wraps `inner`; at most `capacity` tokens are cached (0 turns the cache off).
    pub fn new(inner: TokenVerifier, capacity: usize) -> CachedVerifier {
        CachedVerifier {
            inner,
            entries: RwLock::new(HashMap::new()),
            capacity,
        }
    }

    pub fn inner(&self) -> &TokenVerifier {
        &self.inner
    }

    /// Verifies like [`TokenVerifier::verify`], returning a cached result when it can.
    pub fn verify(
        &self,
        token: &str,
        presented_thumbprint: Option<&str>,
    ) -> Result<Principal, AuthError> {
        if self.capacity == 0 {
            return self.inner.verify(token, presented_thumbprint);
        }
        let digest = digest(token);
        let cached = self
            .entries
            .read()
            .expect("token cache lock")
            .get(&digest)
            .cloned();
        if let Some(principal) = cached {
            let now = unix_now();
            if now <= principal.expires_at + self.inner.leeway_secs() {
                check_binding(&principal, presented_thumbprint)?;
                return Ok(principal);
            }
            self.entries
                .write()
                .expect("token cache lock")
                .remove(&digest);
            return Err(AuthError::Expired);
        }
        let principal = self.inner.verify(token, presented_thumbprint)?;
        self.insert(digest, principal.clone());
        Ok(principal)
    }

    fn insert(&self, digest: TokenDigest, principal: Principal) {
        let mut entries = self.entries.write().expect("token cache lock");
        if entries.len() >= self.capacity {
            let now = unix_now();
            let leeway = self.inner.leeway_secs();
            entries.retain(|_, p| now <= p.expires_at + leeway);
            if entries.len() >= self.capacity {
                // Full of live tokens: start over rather than track recency on every hit.
                entries.clear();
            }
        }
        entries.insert(digest, principal);
    }

    /// Drops every cached token, e.g. after the set of trusted keys changed.
    pub fn clear(&self) {
        self.entries.write().expect("token cache lock").clear();
    }

    pub fn len(&self) -> usize {
        self.entries.read().expect("token cache lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn digest(token: &str) -> TokenDigest {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
    out
}

fn check_binding(principal: &Principal, presented: Option<&str>) -> Result<(), AuthError> {
    match &principal.certificate_thumbprint {
        Some(bound) if presented != Some(bound.as_str()) => Err(AuthError::CertificateMismatch {
            presented: presented.is_some(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::issuer::{TokenIssuer, TokenRequest};
    use crate::keys::SigningKey;
    use crate::scope::{Scope, ScopeSet};
    use crate::verifier::VerifierSettings;

    fn setup(capacity: usize) -> (TokenIssuer, CachedVerifier) {
        let key = Arc::new(SigningKey::generate().unwrap());
        let settings = VerifierSettings {
            issuer: "iss".into(),
            audience: "aud".into(),
            leeway_secs: 0,
            max_lifetime_secs: 3600,
        };
        let verifier = TokenVerifier::new([key.verifying_key().clone()], settings);
        (
            TokenIssuer::new(key, "iss", "aud"),
            CachedVerifier::new(verifier, capacity),
        )
    }

    fn token(issuer: &TokenIssuer, thumbprint: Option<&str>, lifetime_secs: u64) -> String {
        let mut scopes = ScopeSet::default();
        scopes.insert(Scope::SecretsRead);
        let request = TokenRequest {
            subject: "runner".into(),
            account: "acme".into(),
            scopes,
            projects: None,
            lifetime_secs,
            certificate_thumbprint: thumbprint.map(str::to_owned),
        };
        issuer.issue(&request).unwrap().0
    }

    #[test]
    fn second_verification_served_from_cache() {
        let (issuer, verifier) = setup(10);
        let t = token(&issuer, None, 600);
        assert_eq!(verifier.verify(&t, None).unwrap().subject, "runner");
        assert_eq!(verifier.len(), 1);
        assert_eq!(verifier.verify(&t, None).unwrap().subject, "runner");
        assert_eq!(verifier.len(), 1);
    }

    #[test]
    fn cached_token_keeps_certificate_binding() {
        let (issuer, verifier) = setup(10);
        let t = token(&issuer, Some("thumb-a"), 600);
        verifier.verify(&t, Some("thumb-a")).unwrap();
        assert_eq!(
            verifier.verify(&t, Some("thumb-b")).unwrap_err(),
            AuthError::CertificateMismatch { presented: true }
        );
        assert_eq!(
            verifier.verify(&t, None).unwrap_err(),
            AuthError::CertificateMismatch { presented: false }
        );
    }

    #[test]
    fn failures_are_not_cached() {
        let (issuer, verifier) = setup(10);
        let mut t = token(&issuer, None, 600);
        t.push('x');
        assert!(verifier.verify(&t, None).is_err());
        assert!(verifier.is_empty());
    }

    #[test]
    fn expired_entry_rejected() {
        let (issuer, verifier) = setup(10);
        let t = token(&issuer, None, 600);
        let principal = verifier.verify(&t, None).unwrap();
        let mut stale = principal.clone();
        stale.expires_at = unix_now() - 10;
        verifier.entries.write().unwrap().insert(digest(&t), stale);
        assert_eq!(verifier.verify(&t, None).unwrap_err(), AuthError::Expired);
        assert!(verifier.is_empty(), "the expired entry is dropped");
    }

    #[test]
    fn capacity_is_bounded() {
        let (issuer, verifier) = setup(3);
        for _ in 0..10 {
            verifier.verify(&token(&issuer, None, 600), None).unwrap();
            assert!(verifier.len() <= 3);
        }
    }

    #[test]
    fn zero_capacity_disables_cache() {
        let (issuer, verifier) = setup(0);
        verifier.verify(&token(&issuer, None, 600), None).unwrap();
        assert!(verifier.is_empty());
    }
}
