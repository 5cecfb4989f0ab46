//! Token signing key administration: status and rotation, for operators.

use http::StatusCode;
use hyper::body::Incoming;
use keygate_auth::Scope;
use serde_json::json;
use tracing::info;

use super::blocking;
use crate::http::body::{json_response, Response};
use crate::http::problem::ApiError;
use crate::http::{authenticate, require_scope, ConnInfo};
use crate::signing::SigningError;
use crate::state::SharedState;

pub async fn list(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
) -> Result<Response, ApiError> {
    let principal = authenticate(state, conn, req.headers()).await?;
    require_scope(&principal, Scope::KeysAdmin)?;
    // The ring with the keys' schedule is sealed in the vault.
    state.vault.get()?;
    let keys = state
        .signing
        .status()
        .map_err(|e| ApiError::internal(format!("reading the signing keys failed: {e}")))?;
    Ok(json_response(StatusCode::OK, &json!({ "keys": keys })))
}

/// Adds the next signing key: published now, signing after the publish delay.
pub async fn rotate(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
) -> Result<Response, ApiError> {
    let principal = authenticate(state, conn, req.headers()).await?;
    require_scope(&principal, Scope::KeysAdmin)?;
    state.vault.get()?;
    let worker = state.clone();
    let rotated = blocking(move || worker.signing.rotate()).await?;
    match rotated {
        Ok(key) => {
            state.sync_verifier_keys();
            info!(key.id = %key.kid, actor = %principal.subject, "signing key rotation requested");
            let keys = state.signing.status().unwrap_or_default();
            Ok(json_response(
                StatusCode::OK,
                &json!({ "rotated": key, "keys": keys }),
            ))
        }
        Err(SigningError::Key(e @ keygate_auth::KeyError::RotationPending { .. })) => Err(
            ApiError::new(StatusCode::CONFLICT, "rotation-pending", e.to_string()),
        ),
        Err(e) => Err(ApiError::internal(format!(
            "rotating the signing key failed: {e}"
        ))),
    }
}
