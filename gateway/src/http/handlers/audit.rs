//! Audit log tools for operators: the HMAC of a string, to search the audit
//! log for a sensitive string that records carry only as an HMAC.

use http::StatusCode;
use hyper::body::Incoming;
use keygate_auth::Scope;
use keygate_vault::audit::AuditError;
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use super::blocking;
use crate::http::body::{json_response, read_json, Response};
use crate::http::problem::ApiError;
use crate::http::{authenticate, require_scope, ConnInfo};
use crate::state::SharedState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HashRequest {
    value: String,
}

/// Returns `{"hmac": ...}`, the audit HMAC of the body's `value`.
pub async fn hash(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
) -> Result<Response, ApiError> {
    let principal = authenticate(state, conn, req.headers()).await?;
    require_scope(&principal, Scope::KeysAdmin)?;
    let body: HashRequest = read_json(req.into_body(), state.config.http.max_body_bytes).await?;
    let hmac = match state.audit.hmac(&body.value) {
        Ok(hmac) => hmac,
        Err(AuditError::KeyUnavailable) => {
            // The key is loaded when the vault opens; this loads it again
            // after that load failed.
            let vault = state.vault.get()?;
            let worker = state.clone();
            blocking(move || worker.audit.load_hmac_key(&vault))
                .await?
                .map_err(|e| ApiError::internal(e.to_string()))?;
            state
                .audit
                .hmac(&body.value)
                .map_err(|e| ApiError::internal(e.to_string()))?
        }
        Err(error) => return Err(ApiError::internal(error.to_string())),
    };
    info!(actor = %principal.subject, "audit HMAC computed");
    Ok(json_response(StatusCode::OK, &json!({ "hmac": hmac })))
}
