//! Connections of an account to external secret managers: create or replace, read, list, delete.

use http::StatusCode;
use hyper::body::Incoming;
use keygate_auth::{Principal, Scope};
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use super::{page, point_read};
use crate::external::connection::{check_hosted, validate_connection_name, ConnectionSpec};
use crate::external::store::ConnectionStoreError;
use crate::external::HostedCredential;
use crate::http::body::{json_response, read_json, Response};
use crate::http::problem::ApiError;
use crate::http::{authenticate, require_scope, ConnInfo};
use crate::state::SharedState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutConnection {
    connection: ConnectionSpec<HostedCredential>,
}

/// Authenticates and checks the `secrets:admin` scope. Connections belong to
/// the whole account, so a token restricted to some projects may not manage them.
async fn admin(
    state: &SharedState,
    conn: &ConnInfo,
    req: &http::Request<Incoming>,
) -> Result<Principal, ApiError> {
    let principal = authenticate(state, conn, req.headers()).await?;
    require_scope(&principal, Scope::SecretsAdmin)?;
    if principal.projects.is_some() {
        return Err(ApiError::forbidden(
            "connections belong to the whole account; use a token that is not restricted to projects",
        ));
    }
    Ok(principal)
}

fn check_name(name: &str) -> Result<(), ApiError> {
    validate_connection_name(name)
        .map_err(|e| ApiError::bad_request("invalid-input", e.to_string()))
}

/// 507 or 503 for a full or read-only disk, 500 otherwise.
fn store_error(error: ConnectionStoreError) -> ApiError {
    if let ConnectionStoreError::Store(store) = &error {
        if let Some(api) = ApiError::from_storage_condition(store) {
            return api;
        }
    }
    ApiError::internal(format!("the connection store failed: {error}"))
}

// TODO: write audit records of connection changes; they are logged only.
pub async fn put(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    name: &str,
) -> Result<Response, ApiError> {
    let principal = admin(state, conn, &req).await?;
    check_name(name)?;
    let body: PutConnection = read_json(req.into_body(), state.config.http.max_body_bytes).await?;
    body.connection
        .validate(check_hosted)
        .map_err(|e| ApiError::bad_request("invalid-input", e.to_string()))?;
    let provider = body.connection.provider();
    let store = state.external.connections.clone();
    let (account, n) = (principal.account.clone(), name.to_owned());
    let (record, created) =
        tokio::task::spawn_blocking(move || store.put(&account, &n, body.connection))
            .await
            .map_err(|e| ApiError::internal(format!("a storage task failed: {e}")))?
            .map_err(store_error)?;
    // Values read through the old settings must not outlive them.
    state.external.cache.clear_account(&principal.account);
    info!(
        account = %principal.account, connection = %name, provider,
        actor = %principal.subject, "connection stored"
    );
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(status, &record))
}

pub async fn get(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    name: &str,
) -> Result<Response, ApiError> {
    let principal = admin(state, conn, &req).await?;
    check_name(name)?;
    let record = point_read(|| state.external.connections.get(&principal.account, name))
        .map_err(store_error)?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "account {} has no connection {name:?}; create it with PUT /v1/connections/{name}",
                principal.account
            ))
        })?;
    Ok(json_response(StatusCode::OK, &record))
}

pub async fn list(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
) -> Result<Response, ApiError> {
    let principal = admin(state, conn, &req).await?;
    let page = page(&req)?;
    let records = point_read(|| {
        state
            .external
            .connections
            .list(&principal.account, page.after.as_deref(), page.limit)
    })
    .map_err(store_error)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "connections": records }),
    ))
}

pub async fn delete(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    name: &str,
) -> Result<Response, ApiError> {
    let principal = admin(state, conn, &req).await?;
    check_name(name)?;
    let store = state.external.connections.clone();
    let (account, n) = (principal.account.clone(), name.to_owned());
    let existed = tokio::task::spawn_blocking(move || store.delete(&account, &n))
        .await
        .map_err(|e| ApiError::internal(format!("a storage task failed: {e}")))?
        .map_err(store_error)?;
    if !existed {
        return Err(ApiError::not_found(format!(
            "account {} has no connection {name:?}",
            principal.account
        )));
    }
    state.external.cache.clear_account(&principal.account);
    info!(account = %principal.account, connection = %name, actor = %principal.subject, "connection deleted");
    Ok(json_response(
        StatusCode::OK,
        &json!({ "name": name, "deleted": true }),
    ))
}
