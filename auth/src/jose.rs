//! Reading JOSE headers without trusting them, and mapping JWT library errors
//! to rejection reasons; shared by keygate's own and external verifiers.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;

use crate::error::AuthError;

/// Characters of an untrusted value shown in an error message at most.
const MAX_SHOWN_CHARS: usize = 80;

/// The parts of a JOSE header that pick and check the key.
pub(crate) struct TokenHeader {
    pub(crate) alg: String,
    pub(crate) kid: String,
}

/// Reads the header without trusting it: `alg` and a plain-identifier `kid` are required.
pub(crate) fn read_header(token: &str) -> Result<TokenHeader, AuthError> {
    let header_b64 = token
        .split('.')
        .next()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| AuthError::Malformed("empty token".into()))?;
    let header_bytes = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| AuthError::Malformed("the header is not base64url".into()))?;
    let header: serde_json::Value = serde_json::from_slice(&header_bytes)
        .map_err(|_| AuthError::Malformed("the header is not JSON".into()))?;
    let alg = header
        .get("alg")
        .and_then(|a| a.as_str())
        .ok_or_else(|| AuthError::Malformed("the header has no `alg`".into()))?;
    let kid = match header.get("kid") {
        None => return Err(AuthError::MissingKeyId),
        Some(serde_json::Value::String(kid)) => kid,
        Some(other) => return Err(AuthError::InvalidKeyId(shorten(&other.to_string()))),
    };
    if !is_plain_identifier(kid) {
        return Err(AuthError::InvalidKeyId(shorten(kid)));
    }
    Ok(TokenHeader {
        alg: alg.to_owned(),
        kid: kid.clone(),
    })
}

pub(crate) fn is_plain_identifier(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub(crate) fn shorten(text: &str) -> String {
    text.chars().take(MAX_SHOWN_CHARS).collect()
}

pub(crate) fn map_jwt_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::InvalidSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::InvalidIssuer,
        ErrorKind::InvalidAudience => AuthError::InvalidAudience,
        ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim.clone()),
        ErrorKind::Json(e) => {
            let text = e.to_string();
            match text.split('`').nth(1) {
                Some(field) if text.starts_with("missing field") => {
                    AuthError::MissingClaim(field.to_owned())
                }
                _ => AuthError::Malformed(format!("the claims are not valid: {text}")),
            }
        }
        other => AuthError::Malformed(format!("{other:?}")),
    }
}
