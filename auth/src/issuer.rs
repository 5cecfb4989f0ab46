//! Minting signed tokens.

use std::sync::Arc;

use jsonwebtoken::Header;
use ring::rand::SecureRandom;

use crate::claims::{Claims, Confirmation};
use crate::error::KeyError;
use crate::keys::SigningKey;
use crate::scope::ScopeSet;
use crate::unix_now;

/// Contents of a new token.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub subject: String,
    pub account: String,
    pub scopes: ScopeSet,
    pub projects: Option<Vec<String>>,
    pub lifetime_secs: u64,
    /// Binds the token to this certificate thumbprint (`cnf.x5t#S256`).
    pub certificate_thumbprint: Option<String>,
}

/// Signs tokens with the current signing key.
#[derive(Clone, Debug)]
pub struct TokenIssuer {
    key: Arc<SigningKey>,
    issuer: String,
    audience: String,
}

impl TokenIssuer {
    pub fn new(
        key: Arc<SigningKey>,
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Self {
        TokenIssuer {
            key,
            issuer: issuer.into(),
            audience: audience.into(),
        }
    }

    /// Signs a token; returns the compact JWT and the claims it carries.
    pub fn issue(&self, request: &TokenRequest) -> Result<(String, Claims), KeyError> {
        let now = unix_now();
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: request.subject.clone(),
            acct: request.account.clone(),
            scope: request.scopes.to_claim(),
            projects: request.projects.clone(),
            exp: now + request.lifetime_secs,
            iat: now,
            nbf: now,
            jti: random_token_id(),
            cnf: request
                .certificate_thumbprint
                .clone()
                .map(|x5t_s256| Confirmation { x5t_s256 }),
        };
        let mut header = Header::new(self.key.verifying_key().algorithm);
        header.kid = Some(self.key.kid().to_owned());
        let token =
            jsonwebtoken::encode(&header, &claims, self.key.encoding_key()).map_err(|e| {
                KeyError::Invalid {
                    what: format!("signing key {}", self.key.kid()),
                    reason: e.to_string(),
                }
            })?;
        Ok((token, claims))
    }
}

fn random_token_id() -> String {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random source failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
