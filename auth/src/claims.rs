//! The claims keygate puts in its tokens, and the principal a verified token yields.

use serde::{Deserialize, Serialize};

use crate::scope::{Scope, ScopeSet};

/// JWT claims of a keygate token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// Agent id for agent tokens, caller name for platform tokens.
    pub sub: String,
    /// The account the token acts for.
    pub acct: String,
    /// Space-separated scopes.
    pub scope: String,
    /// Projects a runner token is restricted to; absent means every project of the account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projects: Option<Vec<String>>,
    pub exp: u64,
    pub iat: u64,
    pub nbf: u64,
    pub jti: String,
    /// Certificate binding (RFC 8705).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
}

/// The `cnf` claim: the SHA-256 thumbprint of the client certificate.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Confirmation {
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

/// Identity and permissions of a verified token.
#[derive(Clone, Debug)]
pub struct Principal {
    pub subject: String,
    pub account: String,
    pub scopes: ScopeSet,
    pub projects: Option<Vec<String>>,
    pub token_id: String,
    /// `iat`, seconds since the Unix epoch.
    pub issued_at: u64,
    /// `exp`, seconds since the Unix epoch.
    pub expires_at: u64,
    pub certificate_thumbprint: Option<String>,
}

impl Principal {
    pub fn from_claims(claims: Claims) -> Principal {
        Principal {
            scopes: ScopeSet::from_claim(&claims.scope),
            subject: claims.sub,
            account: claims.acct,
            projects: claims.projects,
            token_id: claims.jti,
            issued_at: claims.iat,
            expires_at: claims.exp,
            certificate_thumbprint: claims.cnf.map(|c| c.x5t_s256),
        }
    }

    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes.contains(scope)
    }

    /// Returns whether the token's project restriction, if any, lists `project`.
    pub fn may_access_project(&self, project: &str) -> bool {
        match &self.projects {
            None => true,
            Some(list) => list.iter().any(|p| p == project),
        }
    }
}
