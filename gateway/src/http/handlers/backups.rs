//! Online vault backups, for operators: `POST /v1/admin/vault/backups`.

use http::StatusCode;
use hyper::body::Incoming;
use keygate_auth::Scope;
use keygate_vault::backup::BackupError;
use serde::Deserialize;
use serde_json::json;
use tracing::{error, info};

use super::blocking;
use crate::http::body::{json_response, parse_json_object, read_bytes, Response};
use crate::http::problem::ApiError;
use crate::http::{authenticate, require_scope, ConnInfo};
use crate::state::SharedState;

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBackup {
    /// Folder name of the backup inside `vault.backup_dir`; without it the
    /// server picks `backup-<UTC time>`.
    #[serde(default)]
    name: Option<String>,
}

/// Writes a backup of the whole store (every account) into `vault.backup_dir`
/// and returns 201 with its name, folder, size and file count.
pub async fn create(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
) -> Result<Response, ApiError> {
    let principal = authenticate(state, conn, req.headers()).await?;
    require_scope(&principal, Scope::KeysAdmin)?;
    let bytes = read_bytes(req.into_body(), state.config.http.max_body_bytes).await?;
    let request: CreateBackup = if bytes.iter().all(u8::is_ascii_whitespace) {
        CreateBackup::default()
    } else {
        parse_json_object(&bytes).map_err(|mut error| {
            error.detail.push_str("; send {} or {\"name\": \"NAME\"}");
            error
        })?
    };

    let worker = state.clone();
    let result = blocking(move || worker.backups.create(request.name.as_deref())).await?;
    let manifest = result.map_err(backup_error)?;
    let path = state.backups.dir().join(&manifest.name);
    info!(
        backup.name = %manifest.name,
        backup.path = %path.display(),
        backup.files = manifest.files.len(),
        backup.bytes = manifest.total_bytes(),
        actor = %principal.subject,
        "vault backup written"
    );
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "name": manifest.name,
            "path": path.display().to_string(),
            "created_at_ms": manifest.created_at_ms,
            "files": manifest.files.len(),
            "bytes": manifest.total_bytes(),
        }),
    ))
}

/// Maps a failed backup to its problem document: 400 for a bad name, 409
/// for a name in use, 507 or 503 when the backup folder's file system is full
/// or read-only, 500 otherwise.
fn backup_error(failure: BackupError) -> ApiError {
    match &failure {
        BackupError::InvalidName { .. } => {
            return ApiError::bad_request("invalid-input", failure.to_string())
        }
        BackupError::AlreadyExists { .. } => {
            return ApiError::new(StatusCode::CONFLICT, "backup-exists", failure.to_string())
        }
        BackupError::Store(store) => {
            if let Some(api) = ApiError::from_storage_condition(store) {
                return api;
            }
        }
        BackupError::Io { source, .. } => match source.kind() {
            std::io::ErrorKind::StorageFull => {
                return ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "storage-full",
                    format!("{failure}; free space in the backup folder"),
                )
            }
            std::io::ErrorKind::ReadOnlyFilesystem => {
                return ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage-read-only",
                    format!("{failure}; make the backup folder writable"),
                )
            }
            _ => {}
        },
        _ => {}
    }
    error!(error = %failure, "vault backup failed");
    ApiError::internal(format!("the backup failed: {failure}"))
}
