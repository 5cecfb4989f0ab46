//! Errors of token verification and of key loading.

use std::path::PathBuf;

/// Reason a presented token or credential was rejected.
///
/// `reason()` is a short, bounded label used in the `WWW-Authenticate` error
/// description and in the `keygate_auth_failures_total{reason}` metric.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    #[error("no bearer token was presented")]
    MissingToken,
    #[error("the token is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("the token header has no `kid`")]
    MissingKeyId,
    #[error("the token's `kid` {0:?} is not a plain identifier (1 to 64 characters of A-Z, a-z, 0-9, '-', '_')")]
    InvalidKeyId(String),
    #[error("the token's `kid` {0:?} names no known signing key")]
    UnknownKeyId(String),
    #[error("the token's algorithm {found} is not the algorithm of key {kid:?} ({expected})")]
    WrongAlgorithm {
        kid: String,
        found: String,
        expected: String,
    },
    #[error("the token's signature is invalid")]
    InvalidSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (`nbf` or `iat` is in the future)")]
    NotYetValid,
    #[error("the token's issuer is not the expected one")]
    InvalidIssuer,
    #[error("the token's audience is not the expected one")]
    InvalidAudience,
    #[error("the token has no `{0}` claim")]
    MissingClaim(String),
    #[error("the token's lifetime of {lifetime_secs} s exceeds the maximum of {max_secs} s")]
    LifetimeTooLong { lifetime_secs: u64, max_secs: u64 },
    #[error("the token is bound to a client certificate, and the connection presented {}", if *.presented { "a different one" } else { "none" })]
    CertificateMismatch { presented: bool },
    #[error("the token is not bound to a client certificate, which this endpoint requires")]
    CertificateBindingRequired,
    #[error("invalid client credentials for client {client_id:?}")]
    InvalidClient { client_id: String },
    #[error("agent {agent_id} is disabled; an administrator must enable it (POST /v1/agents/{agent_id}/enable)")]
    AgentDisabled { agent_id: String },
    #[error("the token was revoked: its agent was disabled or its credentials were rotated after it was issued; log in again")]
    Revoked,
    #[error("the token's signing key is not in the cached key set of issuer {issuer:?}, and the latest fetch of that key set failed; retry later")]
    JwksUnavailable { issuer: String },
}

impl AuthError {
    /// Short label for metrics and `WWW-Authenticate`; a fixed set of values.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::Malformed(_) => "malformed",
            AuthError::MissingKeyId => "missing_kid",
            AuthError::InvalidKeyId(_) => "invalid_kid",
            AuthError::UnknownKeyId(_) => "unknown_kid",
            AuthError::WrongAlgorithm { .. } => "wrong_algorithm",
            AuthError::InvalidSignature => "invalid_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::InvalidIssuer => "invalid_issuer",
            AuthError::InvalidAudience => "invalid_audience",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::LifetimeTooLong { .. } => "lifetime_too_long",
            AuthError::CertificateMismatch { .. } => "certificate_mismatch",
            AuthError::CertificateBindingRequired => "certificate_binding_required",
            AuthError::InvalidClient { .. } => "invalid_client",
            AuthError::AgentDisabled { .. } => "agent_disabled",
            AuthError::Revoked => "revoked",
            AuthError::JwksUnavailable { .. } => "jwks_unavailable",
        }
    }
}

/// A signing key or certificate could not be loaded, parsed or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
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
    #[error(
        "{path} is readable or writable by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{what} is not valid: {reason}")]
    Invalid { what: String, reason: String },
    #[error("a rotation is already pending: key {kid} starts signing at {activates_at} (Unix seconds); rotate again after that")]
    RotationPending { kid: String, activates_at: u64 },
}
