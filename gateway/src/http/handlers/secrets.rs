//! Hosted secrets, secret definitions, and resolution of definitions by runners.

use http::StatusCode;
use hyper::body::Incoming;
use keygate_auth::{Principal, Scope};
use keygate_vault::{ProjectRef, SecretLocation, SecretValue, VaultError};
use serde::Deserialize;
use serde_json::json;
use tracing::{debug, info};

use super::{blocking, page};
use crate::http::body::{json_response, read_json, Response};
use crate::http::problem::ApiError;
use crate::http::{authenticate, require_scope, ConnInfo};
use crate::state::SharedState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutSecret {
    /// A JSON string; structured values are stored as their JSON text inside the string.
    value: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutDefinition {
    location: SecretLocation,
}

/// Authenticates, checks the scope and the token's project restriction, and names the project.
async fn project_for(
    state: &SharedState,
    conn: &ConnInfo,
    req: &http::Request<Incoming>,
    project: &str,
    scope: Scope,
) -> Result<(Principal, ProjectRef), ApiError> {
    let principal = authenticate(state, conn, req.headers()).await?;
    require_scope(&principal, scope)?;
    if !principal.may_access_project(project) {
        return Err(ApiError::forbidden(format!(
            "the token is restricted to other projects than {project:?}"
        )));
    }
    let project = ProjectRef::new(&principal.account, project)?;
    Ok((principal, project))
}

pub async fn put_secret(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    project: &str,
    name: &str,
) -> Result<Response, ApiError> {
    let (principal, project) = project_for(state, conn, &req, project, Scope::SecretsAdmin).await?;
    let body: PutSecret = read_json(req.into_body(), state.config.http.max_body_bytes).await?;
    let serde_json::Value::String(text) = body.value else {
        return Err(ApiError::bad_request(
            "invalid-input",
            format!(
                "`value` must be a JSON string, got {}; to store JSON, send it as text, e.g. \"{{\\\"user\\\": \\\"etl\\\"}}\"",
                json_type(&body.value)
            ),
        ));
    };
    let value = SecretValue::from_string(text);
    let vault = state.vault.clone();
    let (p, n) = (project.clone(), name.to_owned());
    let meta = blocking(move || vault.put_secret(&p, &n, &value)).await??;
    info!(
        account = %project.account, project = %project.project, secret.name = %name,
        secret.version = meta.version, actor = %principal.subject, "secret stored"
    );
    let status = if meta.version == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(status, &meta))
}

pub async fn get_secret(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    project: &str,
    name: &str,
) -> Result<Response, ApiError> {
    let (_, project) = project_for(state, conn, &req, project, Scope::SecretsAdmin).await?;
    let vault = state.vault.clone();
    let n = name.to_owned();
    let meta = blocking(move || vault.secret_metadata(&project, &n)).await??;
    Ok(json_response(StatusCode::OK, &meta))
}

pub async fn list_secrets(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    project: &str,
) -> Result<Response, ApiError> {
    let (_, project) = project_for(state, conn, &req, project, Scope::SecretsAdmin).await?;
    let page = page(&req)?;
    let vault = state.vault.clone();
    let secrets =
        blocking(move || vault.list_secrets(&project, page.after.as_deref(), page.limit)).await??;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "secrets": secrets }),
    ))
}

pub async fn put_definition(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    project: &str,
    name: &str,
) -> Result<Response, ApiError> {
    let (principal, project) = project_for(state, conn, &req, project, Scope::SecretsAdmin).await?;
    let body: PutDefinition = read_json(req.into_body(), state.config.http.max_body_bytes).await?;
    let provider = body.location.provider();
    let vault = state.vault.clone();
    let (p, n) = (project.clone(), name.to_owned());
    let definition = blocking(move || vault.put_definition(&p, &n, body.location)).await??;
    info!(
        account = %project.account, project = %project.project, definition = %name,
        provider, actor = %principal.subject, "secret definition stored"
    );
    Ok(json_response(StatusCode::OK, &definition))
}

pub async fn get_definition(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    project: &str,
    name: &str,
) -> Result<Response, ApiError> {
    let (_, project) = project_for(state, conn, &req, project, Scope::SecretsAdmin).await?;
    let vault = state.vault.clone();
    let n = name.to_owned();
    let definition = blocking(move || vault.get_definition(&project, &n)).await??;
    Ok(json_response(StatusCode::OK, &definition))
}

pub async fn list_definitions(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    project: &str,
) -> Result<Response, ApiError> {
    let (_, project) = project_for(state, conn, &req, project, Scope::SecretsAdmin).await?;
    let page = page(&req)?;
    let vault = state.vault.clone();
    let definitions =
        blocking(move || vault.list_definitions(&project, page.after.as_deref(), page.limit))
            .await??;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "secret_definitions": definitions }),
    ))
}

/// Resolves a definition to its value, for runners.
pub async fn resolve(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    project: &str,
    name: &str,
) -> Result<Response, ApiError> {
    let outcome = |state: &SharedState, label: &str| {
        state
            .metrics
            .secret_resolutions
            .with_label_values(&[label])
            .inc()
    };
    let (principal, project) =
        match project_for(state, conn, &req, project, Scope::SecretsRead).await {
            Ok(ok) => ok,
            Err(e) => {
                outcome(
                    state,
                    if e.status == StatusCode::FORBIDDEN {
                        "forbidden"
                    } else {
                        "unauthorized"
                    },
                );
                return Err(e);
            }
        };
    let vault = state.vault.clone();
    let (p, n) = (project.clone(), name.to_owned());
    let resolved = blocking(move || vault.resolve(&p, &n)).await?;
    match resolved {
        Ok(resolved) => {
            outcome(state, "success");
            debug!(
                account = %project.account, project = %project.project, definition = %name,
                actor = %principal.subject, "secret resolved"
            );
            let value = match resolved.value.as_str() {
                Some(text) => json!(text),
                None => {
                    return Err(ApiError::internal(format!(
                        "the value of definition {name:?} is not UTF-8 text"
                    )))
                }
            };
            Ok(json_response(
                StatusCode::OK,
                &json!({ "name": resolved.definition, "value": value, "source_version": resolved.source_version }),
            ))
        }
        Err(error) => {
            outcome(state, resolution_label(&error));
            Err(error.into())
        }
    }
}

fn resolution_label(error: &VaultError) -> &'static str {
    match error.kind() {
        keygate_vault::ErrorKind::NotFound => "not_found",
        keygate_vault::ErrorKind::NotSupported => "not_supported",
        keygate_vault::ErrorKind::InvalidInput => "invalid",
        keygate_vault::ErrorKind::Internal => "error",
    }
}

fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
