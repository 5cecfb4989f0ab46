//! Secret definitions and their resolution by runners; the project check shared by vault routes.

use std::collections::BTreeMap;

use http::StatusCode;
use hyper::body::Incoming;
use keygate_auth::{Principal, Scope};
use keygate_vault::{ProjectRef, SecretDefinition, SecretLocation, VaultError};
use serde::Deserialize;
use serde_json::json;
use tracing::{debug, info};

use super::{blocking, page, point_read};
use crate::audit::{self, AuditContext, AuditOp, AuditedChange};
use crate::external;
use crate::http::body::{json_response, read_json, Response};
use crate::http::problem::ApiError;
use crate::http::{authenticate, require_scope, ConnInfo};
use crate::state::SharedState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutDefinition {
    location: SecretLocation,
}

/// Authenticates, checks the scope and the token's project restriction, and
/// names the project.
///
/// A rejected request gets an audit record of `operation` on `secret` (empty
/// for operations on a whole project) with the outcome `denied`, or
/// `invalid` for a malformed project id. When that record cannot be written,
/// the response is 503 in place of the rejection.
pub(super) async fn project_for(
    state: &SharedState,
    conn: &ConnInfo,
    req: &http::Request<Incoming>,
    project: &str,
    scope: Scope,
    operation: AuditOp,
    secret: &str,
) -> Result<(Principal, ProjectRef), ApiError> {
    let principal = match authenticate(state, conn, req.headers()).await {
        Ok(principal) => principal,
        Err(error) => {
            let ctx = AuditContext::unauthenticated(req, project);
            return Err(refused(state, &ctx, secret, operation, error).await);
        }
    };
    match check_access(&principal, project, scope) {
        Ok(project_ref) => Ok((principal, project_ref)),
        Err(error) => {
            let ctx = AuditContext::new(req, &principal, project);
            Err(refused(state, &ctx, secret, operation, error).await)
        }
    }
}

fn check_access(
    principal: &Principal,
    project: &str,
    scope: Scope,
) -> Result<ProjectRef, ApiError> {
    require_scope(principal, scope)?;
    if !principal.may_access_project(project) {
        return Err(ApiError::forbidden(format!(
            "the token is restricted to other projects than {project:?}"
        )));
    }
    Ok(ProjectRef::new(&principal.account, project)?)
}

/// Records a rejected request and returns the error to send: `error`, or
/// 503 when the record cannot be written.
pub(super) async fn refused(
    state: &SharedState,
    ctx: &AuditContext,
    secret: &str,
    operation: AuditOp,
    error: ApiError,
) -> ApiError {
    let outcome = audit::outcome_of(&error);
    match audit::record(state, ctx, secret, None, operation, outcome).await {
        Ok(()) => error,
        Err(unavailable) => unavailable,
    }
}

pub async fn put_definition(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    project: &str,
    name: &str,
) -> Result<Response, ApiError> {
    let operation = AuditOp::PutDefinition;
    let (principal, project_ref) = project_for(
        state,
        conn,
        &req,
        project,
        Scope::SecretsAdmin,
        operation,
        name,
    )
    .await?;
    let ctx = AuditContext::new(&req, &principal, project);
    // A request rejected before any change gets one record with its outcome.
    let checked =
        match read_json::<PutDefinition>(req.into_body(), state.config.http.max_body_bytes).await {
            Ok(body) => state
                .vault
                .get()
                .map(|vault| (body, vault))
                .map_err(ApiError::from),
            Err(error) => Err(error),
        };
    let checked = checked.and_then(|(body, vault)| {
        check_connection_use(state, &principal, &project_ref, &body.location)?;
        Ok((body, vault))
    });
    let (body, vault) = match checked {
        Ok(checked) => checked,
        Err(error) => {
            return audit::record_result(state, &ctx, name, None, operation, Err(error)).await
        }
    };

    let provider = body.location.provider();
    let ctx = ctx.with_details(audit::location_details(state, &body.location));
    let change = AuditedChange::begin(state, &ctx, name, None, operation).await?;
    let (p, n) = (project_ref.clone(), name.to_owned());
    let result = match blocking(move || vault.put_definition(&p, &n, body.location)).await {
        Ok(stored) => stored.map_err(ApiError::from),
        Err(error) => Err(error),
    };
    let definition = change.finish(result, None).await?;
    // Values read at the old location must not be returned for the new one.
    state
        .external
        .cache
        .invalidate(&project_ref.account, &project_ref.project, name);
    info!(
        account = %project_ref.account, project = %project_ref.project, definition = %name,
        provider, actor = %principal.subject, "secret definition stored"
    );
    Ok(json_response(StatusCode::OK, &definition))
}

/// Checks that an external location names a connection of the account that
/// the definition's project may use. A token restricted to some projects may
/// use only connections restricted to projects it may access, because a
/// connection's credential can read more than the token may.
fn check_connection_use(
    state: &SharedState,
    principal: &Principal,
    project: &ProjectRef,
    location: &SecretLocation,
) -> Result<(), ApiError> {
    if matches!(location, SecretLocation::Hosted { .. }) {
        return Ok(());
    }
    let unusable = |detail: String| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "connection-misconfigured",
            detail,
        )
    };
    let Some(name) = external::provider::connection_name(location) else {
        return Err(unusable(format!(
            "a {} location needs connection, the name of one of account {}'s connections (GET /v1/connections lists them)",
            location.provider(),
            project.account
        )));
    };
    let connection = point_read(|| state.external.connections.get(&project.account, name))
        .map_err(|e| ApiError::internal(format!("the connection store failed: {e}")))?
        .ok_or_else(|| {
            unusable(format!(
                "account {} has no connection {name:?}; create it first with PUT /v1/connections/{name}",
                project.account
            ))
        })?;
    if !connection.allows_project(&project.project) {
        return Err(unusable(format!(
            "connection {name:?} may be used by the projects {:?} only, not by {:?}",
            connection.projects.as_deref().unwrap_or_default(),
            project.project
        )));
    }
    if let Some(token_projects) = &principal.projects {
        let covered = connection
            .projects
            .as_ref()
            .is_some_and(|allowed| allowed.iter().all(|p| token_projects.contains(p)));
        if !covered {
            return Err(ApiError::forbidden(format!(
                "connection {name:?} is not restricted to projects this token may access; a token restricted to projects may use only such connections (set the connection's projects with an unrestricted token)"
            )));
        }
    }
    Ok(())
}

pub async fn get_definition(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    project: &str,
    name: &str,
) -> Result<Response, ApiError> {
    let operation = AuditOp::ReadDefinition;
    let (principal, project_ref) = project_for(
        state,
        conn,
        &req,
        project,
        Scope::SecretsAdmin,
        operation,
        name,
    )
    .await?;
    let ctx = AuditContext::new(&req, &principal, project);
    let result = async {
        let vault = state.vault.get()?;
        let n = name.to_owned();
        Ok::<_, ApiError>(blocking(move || vault.get_definition(&project_ref, &n)).await??)
    }
    .await;
    let definition = audit::record_result(state, &ctx, name, None, operation, result).await?;
    Ok(json_response(StatusCode::OK, &definition))
}

pub async fn list_definitions(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    project: &str,
) -> Result<Response, ApiError> {
    let operation = AuditOp::ListDefinitions;
    let (principal, project_ref) = project_for(
        state,
        conn,
        &req,
        project,
        Scope::SecretsAdmin,
        operation,
        "",
    )
    .await?;
    let ctx = AuditContext::new(&req, &principal, project);
    let result = async {
        let page = page(&req)?;
        let vault = state.vault.get()?;
        Ok::<_, ApiError>(
            blocking(move || {
                vault.list_definitions(&project_ref, page.after.as_deref(), page.limit)
            })
            .await??,
        )
    }
    .await;
    let definitions = audit::record_result(state, &ctx, "", None, operation, result).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "secret_definitions": definitions }),
    ))
}

/// Resolves a definition to its value, for runners. The value is sent only
/// after the audit record of the resolution is stored.
pub async fn resolve(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    project: &str,
    name: &str,
) -> Result<Response, ApiError> {
    let count = |label: &str| {
        state
            .metrics
            .secret_resolutions
            .with_label_values(&[label])
            .inc()
    };
    let operation = AuditOp::Resolve;
    let (principal, project_ref) = match project_for(
        state,
        conn,
        &req,
        project,
        Scope::SecretsRead,
        operation,
        name,
    )
    .await
    {
        Ok(checked) => checked,
        Err(error) => {
            count(resolution_label(&error));
            return Err(error);
        }
    };
    let mut details = BTreeMap::new();
    let result = resolve_to_json(state, &project_ref, name, &mut details).await;
    let ctx = AuditContext::new(&req, &principal, project).with_details(details);
    let version = match &result {
        Ok((_, resolved_version)) => *resolved_version,
        Err(_) => None,
    };
    let result = audit::record_result(state, &ctx, name, version, operation, result).await;
    match result {
        Ok((body, _)) => {
            count("success");
            debug!(
                account = %project_ref.account, project = %project_ref.project, definition = %name,
                actor = %principal.subject, "secret resolved"
            );
            Ok(json_response(StatusCode::OK, &body))
        }
        Err(error) => {
            count(resolution_label(&error));
            Err(error)
        }
    }
}

/// Resolves a definition into the response body, and returns the version of
/// the hosted secret it read. An external definition is read from its
/// provider or the lookup cache; its body names the provider and the
/// provider's version id instead. Once the location is known, its audit
/// details are put into `details`, also when the read then fails.
async fn resolve_to_json(
    state: &SharedState,
    project: &ProjectRef,
    name: &str,
    details: &mut BTreeMap<String, String>,
) -> Result<(serde_json::Value, Option<u32>), ApiError> {
    let vault = state.vault.get()?;
    // The vault resolves hosted definitions and refuses external ones, which
    // are then read again and resolved here, so a definition replaced in
    // between is still resolved by its current location.
    let resolved = match point_read(|| vault.resolve(project, name)) {
        Err(VaultError::ProviderNotSupported { .. }) => {
            let definition = point_read(|| vault.get_definition(project, name))?;
            if matches!(definition.location, SecretLocation::Hosted { .. }) {
                point_read(|| vault.resolve(project, name))?
            } else {
                *details = audit::location_details(state, &definition.location);
                return resolve_external(state, project, &definition).await;
            }
        }
        other => other?,
    };
    *details = audit::location_details(state, &resolved.location);
    let Some(text) = resolved.value.as_str() else {
        return Err(ApiError::internal(format!(
            "the value of definition {name:?} is not UTF-8 text"
        )));
    };
    // NOTE: unlike the body of a hosted secret read, this one contains a copy
    // of the value that is not zeroed.
    let body = json!({
        "name": resolved.definition,
        "value": text,
        "source_version": resolved.source_version,
    });
    Ok((body, resolved.source_version))
}

/// Resolves an external definition from its provider or the lookup cache.
async fn resolve_external(
    state: &SharedState,
    project: &ProjectRef,
    definition: &SecretDefinition,
) -> Result<(serde_json::Value, Option<u32>), ApiError> {
    let provider = definition.location.provider();
    let name = definition.name.as_str();
    // Boxed, because the providers' clients make this future about 30 KiB.
    // Inline, it made the dispatch future that every API request allocates
    // 33,888 bytes instead of 3,192.
    let value = Box::pin(external::resolver::resolve(state, project, definition))
        .await
        .map_err(|error| {
            info!(
                account = %project.account, project = %project.project, definition = %name,
                provider, reason = error.kind.label(), error = %error,
                "external secret lookup failed"
            );
            ApiError::from_provider(provider, name, &error)
        })?;
    let body = json!({
        "name": name,
        "value": value.value.as_str(),
        "provider": provider,
        "provider_version": value.version,
    });
    Ok((body, None))
}

/// Most names one batch resolution takes.
pub const MAX_BATCH_NAMES: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBatch {
    names: Vec<String>,
}

/// Resolves several definitions in one call. Each name gets its own result
/// or error, and its own audit record. The response is 200 whenever the
/// request itself is valid.
pub async fn resolve_batch(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    project: &str,
) -> Result<Response, ApiError> {
    let operation = AuditOp::Resolve;
    let (principal, project_ref) = project_for(
        state,
        conn,
        &req,
        project,
        Scope::SecretsRead,
        operation,
        "",
    )
    .await?;
    let ctx = AuditContext::new(&req, &principal, project);
    let body: ResolveBatch = read_json(req.into_body(), state.config.http.max_body_bytes).await?;
    if body.names.is_empty() || body.names.len() > MAX_BATCH_NAMES {
        return Err(ApiError::bad_request(
            "invalid-input",
            format!(
                "names has {} entries; send 1 to {MAX_BATCH_NAMES} definition names",
                body.names.len()
            ),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(duplicate) = body.names.iter().find(|name| !seen.insert(name.as_str())) {
        return Err(ApiError::bad_request(
            "invalid-input",
            format!("names lists {duplicate:?} more than once; list each name once"),
        ));
    }
    // Each lookup runs in its own task, so one slow provider does not hold
    // up the others. The results keep the order of the names.
    let ctx = std::sync::Arc::new(ctx);
    let lookups: Vec<_> = body
        .names
        .into_iter()
        .map(|name| {
            let (state, ctx, project_ref) = (state.clone(), ctx.clone(), project_ref.clone());
            tokio::spawn(async move {
                let mut details = BTreeMap::new();
                let result = resolve_to_json(&state, &project_ref, &name, &mut details).await;
                let ctx = ctx.with_details(details);
                let version = result.as_ref().ok().and_then(|(_, version)| *version);
                let result =
                    audit::record_result(&state, &ctx, &name, version, operation, result).await;
                let label = match &result {
                    Ok(_) => "success",
                    Err(error) => resolution_label(error),
                };
                state
                    .metrics
                    .secret_resolutions
                    .with_label_values(&[label])
                    .inc();
                match result {
                    Ok((body, _)) => body,
                    Err(error) => json!({ "name": name, "error": error.to_problem() }),
                }
            })
        })
        .collect();
    let mut results = Vec::with_capacity(lookups.len());
    for lookup in lookups {
        results.push(
            lookup
                .await
                .map_err(|e| ApiError::internal(format!("a lookup task failed: {e}")))?,
        );
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({ "results": results }),
    ))
}

/// Drops the cached values of one definition, so the next resolution
/// requests the value from the provider again.
pub async fn invalidate_cache(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    project: &str,
    name: &str,
) -> Result<Response, ApiError> {
    let principal = authenticate(state, conn, req.headers()).await?;
    let project_ref = check_access(&principal, project, Scope::SecretsAdmin)?;
    keygate_vault::validate_secret_name(name)?;
    let dropped = state
        .external
        .cache
        .invalidate(&project_ref.account, &project_ref.project, name);
    info!(
        account = %project_ref.account, project = %project_ref.project, definition = %name,
        entries = dropped, actor = %principal.subject, "external lookup cache invalidated"
    );
    Ok(json_response(
        StatusCode::OK,
        &json!({ "name": name, "dropped_entries": dropped }),
    ))
}

/// Returns the `outcome` label of `keygate_vault_resolutions_total` for a failed resolution.
fn resolution_label(error: &ApiError) -> &'static str {
    match error.status {
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND | StatusCode::GONE => "not_found",
        StatusCode::CONFLICT => "conflict",
        _ if error.problem.starts_with("secret-manager-") => "upstream_error",
        StatusCode::SERVICE_UNAVAILABLE if error.problem == "vault-sealed" => "sealed",
        StatusCode::SERVICE_UNAVAILABLE if error.problem == "audit-unavailable" => {
            "audit_unavailable"
        }
        status if status.is_client_error() => "invalid",
        _ => "error",
    }
}

pub(super) fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
