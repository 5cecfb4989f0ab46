//! Hosted secrets: versioned writes with check-and-set, reads of a version,
//! metadata and settings, listing, the delete, undelete and destroy of
//! versions, project deletion and data-key rotation.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::StatusCode;
use hyper::body::Incoming;
use keygate_auth::{Principal, Scope};
use keygate_vault::{MetadataUpdate, ProjectRef, PutOptions, SecretValue, Vault, VaultError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::info;

use super::secrets::{json_type, project_for};
use super::{blocking, page, point_read};
use crate::audit::{self, AuditContext, AuditOp, AuditedChange};
use crate::http::body::{json_response, read_json, secret_json_response, Response};
use crate::http::problem::ApiError;
use crate::http::router::VersionChange;
use crate::http::ConnInfo;
use crate::state::SharedState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutSecret {
    /// A JSON string; structured values are stored as their JSON text inside the string.
    value: serde_json::Value,
    /// Check-and-set: the current version the write expects; 0 = the secret must not exist.
    cas: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionList {
    #[serde(default)]
    versions: Vec<u32>,
}

/// An authorised request to a secret (or, with an empty name, to a whole
/// project): the caller, the project and the audit context.
struct Access {
    principal: Principal,
    project: ProjectRef,
    ctx: AuditContext,
    operation: AuditOp,
}

impl Access {
    /// Checks the token, its scope and project, recording a refusal.
    async fn check(
        state: &SharedState,
        conn: &ConnInfo,
        req: &http::Request<Incoming>,
        project: &str,
        name: &str,
        scope: Scope,
        operation: AuditOp,
    ) -> Result<Access, ApiError> {
        let (principal, project_ref) =
            project_for(state, conn, req, project, scope, operation, name).await?;
        let ctx = AuditContext::new(req, &principal, project);
        Ok(Access {
            principal,
            project: project_ref,
            ctx,
            operation,
        })
    }

    /// Runs a vault call that changes nothing and records its outcome; the
    /// result is returned only once its record is stored.
    async fn read<T: Send + 'static>(
        &self,
        state: &SharedState,
        name: &str,
        version: Option<u32>,
        call: impl FnOnce(&Vault, &ProjectRef) -> Result<T, VaultError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let result = self.run(state, call).await;
        audit::record_result(state, &self.ctx, name, version, self.operation, result).await
    }

    /// Runs a vault call that changes the vault between a `started` record
    /// and its outcome's record; nothing changes if the first cannot be stored.
    async fn change<T: Send + 'static>(
        &self,
        state: &SharedState,
        name: &str,
        version_of: impl Fn(&T) -> Option<u32>,
        call: impl FnOnce(&Vault, &ProjectRef) -> Result<T, VaultError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let change = AuditedChange::begin(state, &self.ctx, name, None, self.operation).await?;
        let result = self.run(state, call).await;
        let version = result.as_ref().ok().and_then(&version_of);
        change.finish(result, version).await
    }

    /// Records a request refused before it reached the vault, and returns its error.
    async fn refuse<T>(
        &self,
        state: &SharedState,
        name: &str,
        error: ApiError,
    ) -> Result<T, ApiError> {
        audit::record_result(state, &self.ctx, name, None, self.operation, Err(error)).await
    }

    async fn run<T: Send + 'static>(
        &self,
        state: &SharedState,
        call: impl FnOnce(&Vault, &ProjectRef) -> Result<T, VaultError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let vault: Arc<Vault> = state.vault.get()?;
        let project = self.project.clone();
        Ok(blocking(move || call(&vault, &project)).await??)
    }
}

pub async fn put_secret(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    project: &str,
    name: &str,
) -> Result<Response, ApiError> {
    let access = Access::check(
        state,
        conn,
        &req,
        project,
        name,
        Scope::SecretsAdmin,
        AuditOp::Write,
    )
    .await?;
    // NOTE: the request body and its parsed JSON contain copies of the value
    // that are not zeroed. Only the `SecretValue` made from it is zeroed.
    let body = match read_json::<PutSecret>(req.into_body(), state.config.http.max_body_bytes).await
    {
        Ok(body) => body,
        Err(error) => return access.refuse(state, name, error).await,
    };
    let serde_json::Value::String(text) = body.value else {
        let error = ApiError::bad_request(
            "invalid-input",
            format!(
                "`value` must be a JSON string, got {}; to store JSON, send it as text, e.g. \"{{\\\"user\\\": \\\"etl\\\"}}\"",
                json_type(&body.value)
            ),
        );
        return access.refuse(state, name, error).await;
    };
    let value = SecretValue::from_string(text);
    let options = PutOptions { cas: body.cas };
    let n = name.to_owned();
    let written = access
        .change(
            state,
            name,
            |w: &keygate_vault::WrittenVersion| Some(w.version),
            move |vault, p| vault.put_secret_with(p, &n, &value, &options),
        )
        .await?;
    info!(
        account = %access.project.account, project = %access.project.project, secret.name = %name,
        secret.version = written.version, purged = written.purged_versions.len(),
        actor = %access.principal.subject, "secret stored"
    );
    let status = if written.version == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(status, &written))
}

/// Returns one version's value: `?version=N`, or the current version.
pub async fn read_value(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    project: &str,
    name: &str,
) -> Result<Response, ApiError> {
    let access = Access::check(
        state,
        conn,
        &req,
        project,
        name,
        Scope::SecretsRead,
        AuditOp::ReadValue,
    )
    .await?;
    let requested = match version_query(&req) {
        Ok(version) => version,
        Err(error) => return access.refuse(state, name, error).await,
    };
    let result = state.vault.get().map_err(ApiError::from).and_then(|vault| {
        point_read(|| vault.read_secret(&access.project, name, requested)).map_err(ApiError::from)
    });
    let version = match &result {
        Ok((_, metadata)) => Some(requested.unwrap_or(metadata.current_version)),
        Err(_) => requested,
    };
    let (value, _) =
        audit::record_result(state, &access.ctx, name, version, access.operation, result).await?;
    let version = version.unwrap_or_default();
    let text = value.as_str().ok_or_else(|| {
        ApiError::internal(format!(
            "version {version} of secret {name:?} is not UTF-8 text"
        ))
    })?;
    tracing::debug!(
        account = %access.project.account, project = %access.project.project, secret.name = %name,
        secret.version = version, actor = %access.principal.subject, "secret value read"
    );
    Ok(secret_json_response(
        StatusCode::OK,
        &ValueBody {
            name,
            value: text,
            version,
        },
    ))
}

/// The body of a value read, serialized without copying the value first.
#[derive(Serialize)]
struct ValueBody<'a> {
    name: &'a str,
    value: &'a str,
    version: u32,
}

pub async fn get_secret(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    project: &str,
    name: &str,
) -> Result<Response, ApiError> {
    let access = Access::check(
        state,
        conn,
        &req,
        project,
        name,
        Scope::SecretsAdmin,
        AuditOp::ReadMetadata,
    )
    .await?;
    let n = name.to_owned();
    let meta = access
        .read(state, name, None, move |vault, p| {
            vault.secret_metadata(p, &n)
        })
        .await?;
    Ok(json_response(StatusCode::OK, &meta))
}

/// Changes `max_versions` (a number, or `null` for the default) and replaces
/// `custom_metadata`; a field left out stays as it is.
pub async fn update_metadata(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    project: &str,
    name: &str,
) -> Result<Response, ApiError> {
    let access = Access::check(
        state,
        conn,
        &req,
        project,
        name,
        Scope::SecretsAdmin,
        AuditOp::UpdateMetadata,
    )
    .await?;
    let parsed = read_json::<serde_json::Map<String, serde_json::Value>>(
        req.into_body(),
        state.config.http.max_body_bytes,
    )
    .await
    .and_then(metadata_update);
    let update = match parsed {
        Ok(update) => update,
        Err(error) => return access.refuse(state, name, error).await,
    };
    let n = name.to_owned();
    let meta = access
        .change(
            state,
            name,
            |_| None,
            move |vault, p| vault.update_secret_metadata(p, &n, &update),
        )
        .await?;
    info!(
        account = %access.project.account, project = %access.project.project, secret.name = %name,
        max_versions = meta.max_versions_in_force, actor = %access.principal.subject,
        "secret settings changed"
    );
    Ok(json_response(StatusCode::OK, &meta))
}

fn metadata_update(
    body: serde_json::Map<String, serde_json::Value>,
) -> Result<MetadataUpdate, ApiError> {
    let mut update = MetadataUpdate::default();
    for (key, value) in body {
        match key.as_str() {
            "max_versions" => {
                update.max_versions = Some(match value {
                    serde_json::Value::Null => None,
                    value => Some(
                        value
                            .as_u64()
                            .and_then(|n| u32::try_from(n).ok())
                            .ok_or_else(|| {
                                ApiError::bad_request(
                                    "invalid-input",
                                    format!(
                                    "`max_versions` must be a whole number or null, got {value}"
                                ),
                                )
                            })?,
                    ),
                })
            }
            "custom_metadata" => {
                let map: BTreeMap<String, String> = serde_json::from_value(value).map_err(|e| {
                    ApiError::bad_request(
                        "invalid-input",
                        format!("`custom_metadata` must be an object of strings: {e}"),
                    )
                })?;
                update.custom_metadata = Some(map);
            }
            other => {
                return Err(ApiError::bad_request(
                    "invalid-input",
                    format!(
                    "unknown field {other:?}; the fields are `max_versions` and `custom_metadata`"
                ),
                ))
            }
        }
    }
    Ok(update)
}

/// Deletes the secret with every version and its metadata.
pub async fn delete_secret(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    project: &str,
    name: &str,
) -> Result<Response, ApiError> {
    let access = Access::check(
        state,
        conn,
        &req,
        project,
        name,
        Scope::SecretsAdmin,
        AuditOp::DeleteSecret,
    )
    .await?;
    let n = name.to_owned();
    let removed = access
        .change(
            state,
            name,
            |_| None,
            move |vault, p| vault.delete_secret(p, &n),
        )
        .await?;
    info!(
        account = %access.project.account, project = %access.project.project, secret.name = %name,
        versions = removed, actor = %access.principal.subject, "secret deleted"
    );
    Ok(json_response(
        StatusCode::OK,
        &json!({ "name": name, "destroyed_versions": removed }),
    ))
}

/// Soft-deletes, undeletes or destroys the versions listed in the body.
pub async fn change_versions(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    project: &str,
    name: &str,
    change: VersionChange,
) -> Result<Response, ApiError> {
    let operation = match change {
        VersionChange::Delete => AuditOp::Delete,
        VersionChange::Undelete => AuditOp::Undelete,
        VersionChange::Destroy => AuditOp::Destroy,
    };
    let access = Access::check(
        state,
        conn,
        &req,
        project,
        name,
        Scope::SecretsAdmin,
        operation,
    )
    .await?;
    let body =
        match read_json::<VersionList>(req.into_body(), state.config.http.max_body_bytes).await {
            Ok(body) => body,
            Err(error) => return access.refuse(state, name, error).await,
        };
    let n = name.to_owned();
    let versions = body.versions.clone();
    // One version is named in the record when the request names one.
    let single = match body.versions.as_slice() {
        [version] => Some(*version),
        _ => None,
    };
    let meta = access
        .change(
            state,
            name,
            move |_| single,
            move |vault, p| match change {
                VersionChange::Delete => vault.delete_versions(p, &n, &versions),
                VersionChange::Undelete => vault.undelete_versions(p, &n, &versions),
                VersionChange::Destroy => vault.destroy_versions(p, &n, &versions),
            },
        )
        .await?;
    info!(
        account = %access.project.account, project = %access.project.project, secret.name = %name,
        versions = ?body.versions, change = ?change, actor = %access.principal.subject,
        "secret versions changed"
    );
    Ok(json_response(StatusCode::OK, &meta))
}

pub async fn list_secrets(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    project: &str,
) -> Result<Response, ApiError> {
    let access = Access::check(
        state,
        conn,
        &req,
        project,
        "",
        Scope::SecretsAdmin,
        AuditOp::List,
    )
    .await?;
    let page = match page(&req) {
        Ok(page) => page,
        Err(error) => return access.refuse(state, "", error).await,
    };
    let limit = page.limit;
    let secrets = access
        .read(state, "", None, move |vault, p| {
            vault.list_secrets(p, page.after.as_deref(), page.limit)
        })
        .await?;
    let next = (secrets.len() == limit)
        .then(|| secrets.last().map(|meta| meta.name.clone()))
        .flatten();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "secrets": secrets, "next_after": next }),
    ))
}

/// Deletes a project: its data keys first, then its secrets and definitions.
pub async fn delete_project(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    project: &str,
) -> Result<Response, ApiError> {
    let access = Access::check(
        state,
        conn,
        &req,
        project,
        "",
        Scope::SecretsAdmin,
        AuditOp::DeleteProject,
    )
    .await?;
    let deletion = access
        .change(state, "", |_| None, |vault, p| vault.delete_project(p))
        .await?;
    info!(
        account = %access.project.account, project = %access.project.project,
        data_keys = deletion.data_keys, secrets = deletion.secrets,
        actor = %access.principal.subject, "project deleted"
    );
    Ok(json_response(StatusCode::OK, &deletion))
}

pub async fn data_key_status(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    project: &str,
) -> Result<Response, ApiError> {
    let access = Access::check(
        state,
        conn,
        &req,
        project,
        "",
        Scope::SecretsAdmin,
        AuditOp::ReadMetadata,
    )
    .await?;
    let status = access
        .read(state, "", None, |vault, p| vault.data_key_status(p))
        .await?;
    Ok(json_response(StatusCode::OK, &status))
}

/// Makes a new data-key version seal the project's new writes.
pub async fn rotate_data_key(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    project: &str,
) -> Result<Response, ApiError> {
    let access = Access::check(
        state,
        conn,
        &req,
        project,
        "",
        Scope::SecretsAdmin,
        AuditOp::RotateDataKey,
    )
    .await?;
    let status = access
        .change(
            state,
            "",
            |status: &keygate_vault::DataKeyStatus| Some(status.current_version),
            |vault, p| vault.rotate_data_key(p),
        )
        .await?;
    info!(
        account = %access.project.account, project = %access.project.project,
        data_key.version = status.current_version, actor = %access.principal.subject,
        "data key rotated"
    );
    Ok(json_response(StatusCode::OK, &status))
}

/// Reads `?version=N` (a whole number of at least 1), if present.
fn version_query(req: &http::Request<Incoming>) -> Result<Option<u32>, ApiError> {
    let mut version = None;
    for (key, value) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        if key == "version" {
            let parsed = value
                .parse::<u32>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid-query",
                        format!("version {value:?} is not a whole number from 1 to 4294967295"),
                    )
                })?;
            version = Some(parsed);
        }
    }
    Ok(version)
}
