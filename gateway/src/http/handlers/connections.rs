//! Connections of an account to external secret managers: create or replace, read, list, delete.

use http::StatusCode;
use hyper::body::Incoming;
use keygate_auth::{Principal, Scope};
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use super::secrets::refused;
use super::{page, point_read};
use crate::audit::{AuditContext, AuditOp, AuditedChange};
use crate::external::connection::{
    check_hosted, check_projects, validate_connection_name, ConnectionSpec, InvalidConnection,
};
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
    /// Projects whose definitions may use the connection; absent: every project.
    #[serde(default)]
    projects: Option<Vec<String>>,
}

/// Authenticates and checks the `secrets:admin` scope. Connections belong to
/// the whole account, so a token restricted to some projects may not manage them.
async fn admin(
    state: &SharedState,
    conn: &ConnInfo,
    req: &http::Request<Incoming>,
) -> Result<Principal, ApiError> {
    let principal = authenticate(state, conn, req.headers()).await?;
    check_admin(&principal)?;
    Ok(principal)
}

fn check_admin(principal: &Principal) -> Result<(), ApiError> {
    require_scope(principal, Scope::SecretsAdmin)?;
    if principal.projects.is_some() {
        return Err(ApiError::forbidden(
            "connections belong to the whole account; use a token that is not restricted to projects",
        ));
    }
    Ok(())
}

/// Authenticates a change of connection `name` like [`admin`], and returns
/// the audit context of the request. A rejected request gets an audit record
/// with the outcome `denied`. When that record cannot be written, the
/// response is 503 in place of the rejection.
async fn admin_for_change(
    state: &SharedState,
    conn: &ConnInfo,
    req: &http::Request<Incoming>,
    name: &str,
    operation: AuditOp,
) -> Result<(Principal, AuditContext), ApiError> {
    let (ctx, result) = match authenticate(state, conn, req.headers()).await {
        Ok(principal) => {
            let ctx = AuditContext::new(req, &principal, "");
            let checked = check_admin(&principal).map(|()| principal);
            (ctx, checked)
        }
        Err(error) => (AuditContext::unauthenticated(req, ""), Err(error)),
    };
    match result {
        Ok(principal) => Ok((principal, ctx)),
        Err(error) => Err(refused(state, &ctx, name, operation, error).await),
    }
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

/// Creates or replaces a connection. The change is audited like a vault
/// change: a `started` record before the store is written and one with the
/// outcome after. Invalid input is rejected before either record.
pub async fn put(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    name: &str,
) -> Result<Response, ApiError> {
    let (principal, ctx) =
        admin_for_change(state, conn, &req, name, AuditOp::PutConnection).await?;
    // The body is read first, so an HTTP/2 client gets the error and not a reset stream.
    let body: PutConnection = read_json(req.into_body(), state.config.http.max_body_bytes).await?;
    check_name(name)?;
    let invalid = |e: InvalidConnection| ApiError::bad_request("invalid-input", e.to_string());
    body.connection.validate(check_hosted).map_err(invalid)?;
    check_projects(&body.projects).map_err(invalid)?;
    check_reachable(state, &principal.account, &body.connection)?;
    let provider = body.connection.provider();
    let store = state.external.connections.clone();
    let (account, n) = (principal.account.clone(), name.to_owned());
    let change = AuditedChange::begin(state, &ctx, name, None, AuditOp::PutConnection).await?;
    let result = tokio::task::spawn_blocking(move || {
        store.put(&account, &n, body.connection, body.projects)
    })
    .await
    .map_err(|e| ApiError::internal(format!("a storage task failed: {e}")))
    .and_then(|stored| stored.map_err(store_error));
    if result.is_ok() {
        // Values read through the old settings must not outlive them, even
        // when the outcome record below fails.
        state.external.cache.clear_account(&principal.account);
    }
    let (record, created) = change.finish(result, None).await?;
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

/// Rejects a connection this server could never use: an agent the account
/// does not have, or, with `external.loopback_only`, an endpoint that is not
/// a loopback address.
fn check_reachable(
    state: &SharedState,
    account: &str,
    spec: &ConnectionSpec<HostedCredential>,
) -> Result<(), ApiError> {
    let invalid = |message: String| ApiError::bad_request("invalid-input", message);
    if let ConnectionSpec::Agent { agent_id, .. } = spec {
        let record = point_read(|| state.agents.get(agent_id))
            .map_err(|e| ApiError::internal(format!("agent lookup failed: {e}")))?;
        if record.is_none_or(|record| record.account != account) {
            return Err(invalid(format!(
                "connection field agent_id = {agent_id:?} names no agent of account {account}; GET /v1/agents lists them"
            )));
        }
    }
    if state.config.external.loopback_only {
        if let Some(field) = spec.defaulted_urls().first() {
            return Err(invalid(format!(
                "connection field {field} is unset, so it would be the provider's public endpoint, and this server contacts loopback addresses only (external.loopback_only, which keygate dev sets); set {field} to a loopback URL"
            )));
        }
        for (field, url) in spec.urls() {
            let host = crate::jwks_client::OutboundUrl::parse(url, "https://host")
                .map(|parsed| parsed.host)
                .unwrap_or_default();
            if !crate::jwks_client::is_loopback_host(&host) {
                return Err(invalid(format!(
                    "connection field {field} = {url:?} is not a loopback address, and this server contacts loopback addresses only (external.loopback_only, which keygate dev sets)"
                )));
            }
        }
    }
    Ok(())
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
    let (principal, ctx) =
        admin_for_change(state, conn, &req, name, AuditOp::DeleteConnection).await?;
    check_name(name)?;
    let store = state.external.connections.clone();
    let (account, n) = (principal.account.clone(), name.to_owned());
    let change = AuditedChange::begin(state, &ctx, name, None, AuditOp::DeleteConnection).await?;
    let result = tokio::task::spawn_blocking(move || store.delete(&account, &n))
        .await
        .map_err(|e| ApiError::internal(format!("a storage task failed: {e}")))
        .and_then(|deleted| deleted.map_err(store_error))
        .and_then(|existed| {
            existed.then_some(()).ok_or_else(|| {
                ApiError::not_found(format!(
                    "account {} has no connection {name:?}",
                    principal.account
                ))
            })
        });
    if result.is_ok() {
        state.external.cache.clear_account(&principal.account);
    }
    change.finish(result, None).await?;
    info!(account = %principal.account, connection = %name, actor = %principal.subject, "connection deleted");
    Ok(json_response(
        StatusCode::OK,
        &json!({ "name": name, "deleted": true }),
    ))
}
