//! The `resolve_secret` task kind: the reference agent reads a secret from a
//! secret manager in the customer's network, with credentials from files on
//! its own machine, and returns the value over its session.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use keygate_vault::SecretLocation;
use serde::Deserialize;
use serde_json::json;
use zeroize::Zeroizing;

use super::tasks::{TaskFuture, TaskHandler};
use crate::external::cache::CachedValue;
use crate::external::connection::{
    check_file, validate_connection_name, ConnectionSpec, FileCredential,
};
use crate::external::http::{ClientSettings, HttpClient};
use crate::external::provider;
use crate::external::resolver::AGENT_TASK_KIND;
use crate::external::tokens::TokenCache;
use crate::external::{FailureKind, ProviderContext, ProviderError};

/// The agent's connections file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionsFileError {
    #[error("cannot read the connections file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("the connections file {path} is not a JSON object of connections by name: {reason}")]
    Parse { path: String, reason: String },
    #[error("connection {name:?} in {path}: {reason}")]
    Invalid {
        path: String,
        name: String,
        reason: String,
    },
}

/// Resolves lookups the gateway forwards, with the agent's own connections.
pub struct SecretLookup {
    connections: BTreeMap<String, ConnectionSpec<FileCredential>>,
    ctx: ProviderContext,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LookupRequest {
    connection: String,
    location: SecretLocation,
}

impl SecretLookup {
    /// Reads a JSON file `{"NAME": {connection settings}, ...}` whose
    /// credentials are `{"file": "/absolute/path"}`.
    pub fn from_file(path: &Path) -> Result<SecretLookup, ConnectionsFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConnectionsFileError::Read {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        let connections: BTreeMap<String, ConnectionSpec<FileCredential>> =
            serde_json::from_str(&text).map_err(|e| ConnectionsFileError::Parse {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        for (name, spec) in &connections {
            let invalid = |reason: String| ConnectionsFileError::Invalid {
                path: shown.clone(),
                name: name.clone(),
                reason,
            };
            validate_connection_name(name).map_err(|e| invalid(e.to_string()))?;
            if matches!(spec, ConnectionSpec::Agent { .. }) {
                return Err(invalid(
                    "an agent cannot forward lookups to another agent; name a secret manager"
                        .into(),
                ));
            }
            spec.validate(check_file)
                .map_err(|e| invalid(e.to_string()))?;
        }
        let settings = ClientSettings {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            loopback_only: false,
        };
        let http = HttpClient::new(settings, None).map_err(|e| ConnectionsFileError::Read {
            path: shown,
            reason: format!("cannot set up TLS: {e}"),
        })?;
        Ok(SecretLookup {
            connections,
            ctx: ProviderContext {
                http,
                tokens: TokenCache::default(),
                aws_metadata: None,
            },
        })
    }

    /// Returns the names of the connections, for the start-up log.
    pub fn names(&self) -> Vec<&str> {
        self.connections.keys().map(String::as_str).collect()
    }

    async fn lookup(&self, payload: &[u8]) -> Result<CachedValue, ProviderError> {
        let request: LookupRequest = serde_json::from_slice(payload).map_err(|e| {
            ProviderError::misconfigured(format!(
                "the {AGENT_TASK_KIND} payload must be {{\"connection\": NAME, \"location\": {{...}}}}: {e}"
            ))
        })?;
        let spec = self.connections.get(&request.connection).ok_or_else(|| {
            ProviderError::misconfigured(format!(
                "this agent has no connection {:?}; it has {:?}",
                request.connection,
                self.names()
            ))
        })?;
        let credential = match spec.credential() {
            Some(file) => Some(read_credential(&file.file)?),
            None => None,
        };
        provider::lookup(
            &self.ctx,
            spec,
            credential.as_deref().map(|c| c.as_str()),
            &request.location,
        )
        .await
    }
}

/// Reads a credential file; the error names the file, never its content.
fn read_credential(path: &Path) -> Result<Zeroizing<String>, ProviderError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ProviderError::misconfigured(format!(
            "cannot read the credential file {}: {e}",
            path.display()
        ))
    })?;
    Ok(Zeroizing::new(
        text.trim_end_matches(['\n', '\r']).to_owned(),
    ))
}

/// The task handler around a shared [`SecretLookup`].
pub struct LookupHandler(pub Arc<SecretLookup>);

impl TaskHandler for LookupHandler {
    fn run(&self, payload: Bytes) -> TaskFuture {
        let lookup = self.0.clone();
        Box::pin(async move {
            // Failures are results too, so the gateway learns their kind.
            let answer = match lookup.lookup(&payload).await {
                Ok(value) => json!({ "value": value.value.as_str(), "version": value.version }),
                Err(error) => {
                    tracing::info!(reason = error.kind.label(), error = %error, "secret lookup failed");
                    let mut body = json!({
                        "error": { "reason": error.kind.label(), "message": error.message }
                    });
                    if let (FailureKind::Throttled, Some(wait)) = (error.kind, error.retry_after) {
                        body["error"]["retry_after_ms"] = json!(wait.as_millis() as u64);
                    }
                    body
                }
            };
            Ok(Bytes::from(answer.to_string()))
        })
    }
}
