//! Store-wide vault administration: starting and watching the re-encryption job.

use http::StatusCode;
use hyper::body::Incoming;
use keygate_auth::Scope;
use serde_json::json;
use tracing::info;

use super::blocking;
use crate::audit::{AuditContext, AuditOp, AuditedChange};
use crate::http::body::{json_response, Response};
use crate::http::problem::ApiError;
use crate::http::{authenticate, require_scope, ConnInfo};
use crate::reencrypt::ReencryptJob;
use crate::state::SharedState;

/// Starts the re-encryption job from the beginning, unless one is running,
/// and returns 202 with its progress.
pub async fn start_reencrypt(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
) -> Result<Response, ApiError> {
    let principal = authenticate(state, conn, req.headers()).await?;
    require_scope(&principal, Scope::KeysAdmin)?;
    if state.reencrypt.is_running() {
        let vault = state.vault.get()?;
        let progress = blocking(move || vault.reencrypt_progress()).await??;
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "a re-encryption job is already running; watch it with GET /v1/admin/vault/reencrypt",
        )
        .with_member("progress", json!(progress)));
    }
    let ctx = AuditContext::new(&req, &principal, "");
    let change = AuditedChange::begin(state, &ctx, "", None, AuditOp::Reencrypt).await?;
    let started = async {
        let vault = state.vault.get()?;
        Ok::<_, ApiError>(blocking(move || vault.start_reencrypt()).await??)
    }
    .await;
    let progress = change.finish(started, None).await?;
    ReencryptJob::ensure_running(state);
    info!(
        total = progress.total,
        actor = %principal.subject,
        "re-encryption started"
    );
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({ "running": true, "progress": progress }),
    ))
}

/// Returns the job's stored progress and whether it is running now.
pub async fn reencrypt_progress(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
) -> Result<Response, ApiError> {
    let principal = authenticate(state, conn, req.headers()).await?;
    require_scope(&principal, Scope::KeysAdmin)?;
    let vault = state.vault.get()?;
    let progress = blocking(move || vault.reencrypt_progress()).await??;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "running": state.reencrypt.is_running(), "progress": progress }),
    ))
}
