//! Request handlers, one file per API area.

mod agents;
mod audit;
mod backups;
mod connections;
mod hosted;
mod keys;
mod ops;
mod secrets;
mod tasks;
mod token;
mod vault_admin;

use http::StatusCode;
use hyper::body::Incoming;

use super::body::{full_body, Response};
use super::problem::ApiError;
use super::{ConnInfo, Route};
use crate::state::SharedState;

pub async fn dispatch(
    state: &SharedState,
    conn: &ConnInfo,
    route: Route,
    req: http::Request<Incoming>,
) -> Result<Response, ApiError> {
    match route {
        Route::Jwks => Ok(jwks(state)),
        Route::OpenApi => Ok(crate::http::openapi::document()),
        Route::Token => token::issue(state, conn, req).await,
        Route::AgentSession => crate::session::open_session(state.clone(), conn, req).await,
        Route::CreateAgent => agents::create(state, conn, req).await,
        Route::ListAgents => agents::list(state, conn, req).await,
        Route::GetAgent { agent } => agents::get(state, conn, req, &agent).await,
        Route::DisableAgent { agent } => agents::set_disabled(state, conn, req, &agent, true).await,
        Route::EnableAgent { agent } => agents::set_disabled(state, conn, req, &agent, false).await,
        Route::PauseAgent { agent } => agents::set_paused(state, conn, req, &agent, true).await,
        Route::ResumeAgent { agent } => agents::set_paused(state, conn, req, &agent, false).await,
        Route::RestartAgent { agent } => agents::restart(state, conn, req, &agent).await,
        Route::RotateAgentSecret { agent } => agents::rotate_secret(state, conn, req, &agent).await,
        Route::SubmitTask { agent } => tasks::submit(state, conn, req, &agent).await,
        Route::GetTask { task } => tasks::get(state, conn, req, &task).await,
        Route::CancelTask { task } => tasks::cancel(state, conn, req, &task).await,
        Route::ListSecrets { project } => hosted::list_secrets(state, conn, req, &project).await,
        Route::PutSecret { project, name } => {
            hosted::put_secret(state, conn, req, &project, &name).await
        }
        Route::GetSecret { project, name } => {
            hosted::get_secret(state, conn, req, &project, &name).await
        }
        Route::UpdateSecretMetadata { project, name } => {
            hosted::update_metadata(state, conn, req, &project, &name).await
        }
        Route::DeleteSecret { project, name } => {
            hosted::delete_secret(state, conn, req, &project, &name).await
        }
        Route::ReadSecretValue { project, name } => {
            hosted::read_value(state, conn, req, &project, &name).await
        }
        Route::ChangeSecretVersions {
            project,
            name,
            change,
        } => hosted::change_versions(state, conn, req, &project, &name, change).await,
        Route::DeleteProject { project } => {
            hosted::delete_project(state, conn, req, &project).await
        }
        Route::DataKeyStatus { project } => {
            hosted::data_key_status(state, conn, req, &project).await
        }
        Route::RotateDataKey { project } => {
            hosted::rotate_data_key(state, conn, req, &project).await
        }
        Route::ReencryptProgress => vault_admin::reencrypt_progress(state, conn, req).await,
        Route::StartReencrypt => vault_admin::start_reencrypt(state, conn, req).await,
        Route::CreateVaultBackup => backups::create(state, conn, req).await,
        Route::ListDefinitions { project } => {
            secrets::list_definitions(state, conn, req, &project).await
        }
        Route::PutDefinition { project, name } => {
            secrets::put_definition(state, conn, req, &project, &name).await
        }
        Route::GetDefinition { project, name } => {
            secrets::get_definition(state, conn, req, &project, &name).await
        }
        Route::ResolveDefinition { project, name } => {
            secrets::resolve(state, conn, req, &project, &name).await
        }
        Route::ResolveDefinitions { project } => {
            secrets::resolve_batch(state, conn, req, &project).await
        }
        Route::InvalidateDefinitionCache { project, name } => {
            secrets::invalidate_cache(state, conn, req, &project, &name).await
        }
        Route::ListConnections => connections::list(state, conn, req).await,
        Route::PutConnection { name } => connections::put(state, conn, req, &name).await,
        Route::GetConnection { name } => connections::get(state, conn, req, &name).await,
        Route::DeleteConnection { name } => connections::delete(state, conn, req, &name).await,
        Route::ListSigningKeys => keys::list(state, conn, req).await,
        Route::RotateSigningKey => keys::rotate(state, conn, req).await,
        Route::HashAuditValue => audit::hash(state, conn, req).await,
        Route::Metrics => Ok(ops::metrics(state)),
        Route::Healthz => Ok(ops::healthz()),
        Route::Readyz => Ok(ops::readyz(state)),
        Route::GetLogFilter => ops::get_log_filter(),
        Route::SetLogFilter => ops::set_log_filter(req).await,
    }
}

fn jwks(state: &SharedState) -> Response {
    let set = keygate_auth::JwkSet {
        keys: state
            .signing
            .published_keys()
            .iter()
            .map(|k| k.to_jwk())
            .collect(),
    };
    let body = serde_json::to_vec(&set).expect("JWK sets serialize");
    let mut response = http::Response::new(full_body(body));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/jwk-set+json"),
    );
    response
}

/// Runs a blocking store operation off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("a storage task failed: {e}")))
}

/// Runs a point read of the store (a few `get`s and one decryption) on the
/// calling async worker. Such reads come from RocksDB's memtable and block
/// cache in microseconds, and handing them to the blocking pool cost two
/// thread wake-ups, which was most of a read's CPU time under load.
// NOTE: a read that misses the block cache waits for the disk on the async
// worker; scans and writes still go through `blocking`.
fn point_read<T>(read: impl FnOnce() -> T) -> T {
    read()
}

/// Pagination from `?after=…&limit=…`; `limit` defaults to 100 and may not exceed 1000.
struct Page {
    after: Option<String>,
    limit: usize,
}

fn page(req: &http::Request<Incoming>) -> Result<Page, ApiError> {
    let mut page = Page {
        after: None,
        limit: 100,
    };
    for (key, value) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "after" => page.after = Some(value.into_owned()),
            "limit" => {
                page.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid-query",
                            format!("limit {value:?} is not a whole number from 1 to 1000"),
                        )
                    })?;
            }
            _ => {}
        }
    }
    Ok(page)
}
