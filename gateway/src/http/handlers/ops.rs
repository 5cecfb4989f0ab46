//! The ops listener: Prometheus metrics, liveness and readiness.

use http::{HeaderValue, StatusCode};
use serde_json::json;

use crate::http::body::{full_body, json_response, Response};
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

/// Reports ready when a read from the store succeeds.
pub fn readyz(state: &SharedState) -> Response {
    match state
        .vault
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
