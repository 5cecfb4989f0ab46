//! Authentication for keygate: Ed25519 signing keys, JWT issue and verification,
//! the identity of a TLS client certificate, client secrets and scopes.
//!
//! Tokens are JWTs signed with EdDSA (Ed25519). Every verifying key accepts
//! exactly one algorithm, fixed when the key is loaded. The `alg` in a token's
//! header is only compared against it and never picks the verification.
//! Agent tokens are bound to the client certificate they were issued for
//! through the `cnf.x5t#S256` claim (RFC 8705).

#![forbid(unsafe_code)]

mod cache;
mod cert;
mod claims;
mod client_secret;
mod error;
mod external;
mod issuer;
mod jose;
mod keyring;
mod keys;
mod pem;
mod scope;
mod verifier;

pub use cache::CachedVerifier;
pub use cert::{certificate_thumbprint, ClientIdentity};
pub use claims::{Claims, Confirmation, Principal};
pub use client_secret::{ClientSecret, ClientSecretHash};
pub use error::{AuthError, KeyError};
pub use external::{
    unverified_issuer, ExternalIssuerSettings, ExternalKeySet, ExternalVerifier, JwksError,
    SkippedKey, MAX_KEYS_PER_SET,
};
pub use issuer::{TokenIssuer, TokenRequest};
pub use keyring::{KeyRing, KeyStatus, ManagedKey};
pub use keys::{Jwk, JwkSet, SigningKey, VerifyingKey};
pub use scope::{Scope, ScopeSet};
pub use verifier::{TokenVerifier, VerifierSettings};

/// Seconds since the Unix epoch, from the system clock.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
