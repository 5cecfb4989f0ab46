//! The ops listener: Prometheus metrics, liveness and readiness.

use http::{HeaderValue, StatusCode};
use serde_json::json;

use hyper::body::Incoming;

use crate::http::body::{full_body, json_response, read_bytes, Response};
use crate::http::problem::ApiError;
use crate::state::SharedState;

pub fn metrics(state: &SharedState) -> Response {
    let mut response = http::Response::new(full_body(state.metrics.render()));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

pub fn healthz() -> Response {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

/// Reports ready when the vault is unsealed, the audit log is writing, and a
/// read from the store succeeds.
pub fn readyz(state: &SharedState) -> Response {
    if let Some(cause) = state.audit.failure() {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "not_ready", "reason": format!("the audit log is failing, so vault accesses are refused: {cause}")}),
        );
    }
    let vault = match state.vault.get() {
        Ok(vault) => vault,
        Err(sealed) => {
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "not_ready", "reason": sealed.to_string()}),
            )
        }
    };
    match vault
        .store()
        .get(keygate_vault::Space::Meta, b"readiness-probe")
    {
        Ok(_) => json_response(StatusCode::OK, &json!({"status": "ready"})),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed: reading the store failed");
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "not_ready", "reason": format!("reading the store failed: {e}")}),
            )
        }
    }
}

/// Returns the log filter in force.
pub fn get_log_filter() -> Result<Response, ApiError> {
    let filter = crate::logging::current_filter().ok_or_else(not_installed)?;
    Ok(json_response(StatusCode::OK, &json!({ "filter": filter })))
}

/// Replaces the log filter with the request body, e.g. `info,keygate_gateway=debug`.
pub async fn set_log_filter(req: http::Request<Incoming>) -> Result<Response, ApiError> {
    let body = read_bytes(req.into_body(), 4096).await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("invalid-input", "the log filter is not UTF-8 text"))?
        .trim();
    crate::logging::current_filter().ok_or_else(not_installed)?;
    crate::logging::set_filter(text).map_err(|e| ApiError::bad_request("invalid-input", e))?;
    Ok(json_response(StatusCode::OK, &json!({ "filter": text })))
}

fn not_installed() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "logging-not-installed",
        "this process did not install keygate's logger, so its filter cannot be read or changed",
    )
}
