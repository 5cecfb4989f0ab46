//! HashiCorp Vault: KV v2 reads with a token or an AppRole login.
//!
//! Statuses and bodies follow Vault's HTTP API: errors arrive as
//! `{"errors": [...]}`, a read of a soft-deleted or destroyed version returns 404
//! with its metadata, and an expired or revoked token gets the same 403
//! "permission denied" as a token without a policy for the path.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::connection::VaultAuth;
use super::error::{FailureKind, ProviderError};
use super::http::{
    encode_component, transient_failure, truncate, Request, Response, MAX_DETAIL_BYTES,
};
use super::tokens::token_key;
use super::{Fetched, ProviderContext};

/// Mount of the AppRole auth method when a connection names none.
pub const DEFAULT_APPROLE_MOUNT: &str = "approle";
/// How long a login token is kept when Vault reports `lease_duration` 0,
/// which it does for a token without a TTL.
const NO_TTL_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Most key names a missing-key message lists.
const MAX_LISTED_KEYS: usize = 20;

/// Reads a KV v2 secret from the Vault server at `address`: version
/// `version`, or the current one when `None`.
///
/// `credential` is the token for [`VaultAuth::Token`] or the secret id for
/// [`VaultAuth::Approle`]. An AppRole login token is kept in `ctx.tokens`
/// for its lease. When a read with a cached login token gets 403, the token
/// is dropped and the read is sent once more after a new login, because an
/// expired or revoked token also gets 403.
///
/// With `key`, the value is that entry of the secret's data: a string as is,
/// any other JSON value as compact JSON text. Without it, the value is the
/// whole data object as compact JSON.
#[allow(clippy::too_many_arguments)]
pub async fn fetch<C>(
    ctx: &ProviderContext,
    address: &str,
    namespace: Option<&str>,
    auth: &VaultAuth<C>,
    credential: &str,
    mount: &str,
    path: &str,
    key: Option<&str>,
    version: Option<u32>,
) -> Result<Fetched, ProviderError> {
    let address = address.trim_end_matches('/');
    let namespace = namespace.filter(|n| !n.is_empty());
    let secret = SecretRef::new(mount, path, version, namespace)?;
    let url = secret.url(address);

    match auth {
        VaultAuth::Token { .. } => {
            if credential.is_empty() {
                return Err(ProviderError::misconfigured(
                    "the Vault token is empty; store the token in the connection's credential",
                ));
            }
            let response = read(ctx, &url, namespace, credential).await?;
            interpret_read(&response, &secret, key, &[credential])
        }
        VaultAuth::Approle {
            role_id,
            mount: login_mount,
            ..
        } => {
            let login = AppRoleLogin::new(
                address,
                namespace,
                role_id,
                login_mount.as_deref(),
                credential,
            )?;
            fetch_with_approle(ctx, &login, &url, &secret, key).await
        }
    }
}

async fn fetch_with_approle(
    ctx: &ProviderContext,
    login: &AppRoleLogin<'_>,
    url: &str,
    secret: &SecretRef,
    key: Option<&str>,
) -> Result<Fetched, ProviderError> {
    let cached = ctx.tokens.get(&login.cache_key);
    let from_cache = cached.is_some();
    let mut token = match cached {
        Some(token) => token,
        None => login.log_in(ctx).await?,
    };
    let mut response = read(ctx, url, login.namespace, &token).await?;

    // A fresh token that gets 403 lacks the policy, so only a cached one is
    // worth replacing.
    if response.status == StatusCode::FORBIDDEN && from_cache {
        tracing::debug!(
            vault.address = login.address,
            vault.auth_mount = login.mount,
            "Vault rejected a cached AppRole token, logging in again"
        );
        ctx.tokens.remove(&login.cache_key);
        token = login.log_in(ctx).await?;
        response = read(ctx, url, login.namespace, &token).await?;
    }
    interpret_read(&response, secret, key, &[login.secret_id, token.as_str()])
}

/// A KV v2 secret version as the request path and messages name it.
struct SecretRef {
    /// `{mount}/data/{path}` with each segment percent-encoded.
    encoded_path: String,
    /// `{mount}/data/{path}` as configured, for messages.
    display_path: String,
    version: Option<u32>,
    namespace: Option<String>,
}

impl SecretRef {
    fn new(
        mount: &str,
        path: &str,
        version: Option<u32>,
        namespace: Option<&str>,
    ) -> Result<SecretRef, ProviderError> {
        let mount = mount.trim_matches('/');
        let path = path.trim_matches('/');
        let encoded_mount = encode_segments("mount", mount)?;
        let encoded_secret = encode_segments("path", path)?;
        Ok(SecretRef {
            encoded_path: format!("{encoded_mount}/data/{encoded_secret}"),
            display_path: format!("{mount}/data/{path}"),
            version,
            namespace: namespace.map(str::to_owned),
        })
    }

    fn url(&self, address: &str) -> String {
        match self.version {
            Some(version) => format!("{address}/v1/{}?version={version}", self.encoded_path),
            None => format!("{address}/v1/{}", self.encoded_path),
        }
    }

    /// Names the secret, its version and namespace, as in "secret/data/app
    /// version 3 in namespace team-a".
    fn describe(&self) -> String {
        let mut text = self.display_path.clone();
        if let Some(version) = self.version {
            text.push_str(&format!(" version {version}"));
        }
        if let Some(namespace) = &self.namespace {
            text.push_str(&format!(" in namespace {namespace}"));
        }
        text
    }
}

/// Percent-encodes each `/`-separated segment of `value`. An empty value or
/// segment and the segments `.` and `..` are rejected, because Vault would
/// read another path than the one configured.
fn encode_segments(field: &str, value: &str) -> Result<String, ProviderError> {
    if value.is_empty() {
        return Err(ProviderError::misconfigured(format!(
            "the Vault {field} is empty; set the KV v2 {field} of the secret location"
        )));
    }
    let mut encoded = Vec::new();
    for segment in value.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(ProviderError::misconfigured(format!(
                "the Vault {field} {value:?} has an empty, '.' or '..' segment; \
                 write it as segments separated by single '/'"
            )));
        }
        encoded.push(encode_component(segment));
    }
    Ok(encoded.join("/"))
}

/// Sends the KV v2 read with `token`.
async fn read(
    ctx: &ProviderContext,
    url: &str,
    namespace: Option<&str>,
    token: &str,
) -> Result<Response, ProviderError> {
    let mut request = Request::get(url).header("x-vault-token", token);
    if let Some(namespace) = namespace {
        request = request.header("x-vault-namespace", namespace);
    }
    ctx.http.send(request).await
}

/// Maps Vault's response to a KV v2 read onto the value or a failure.
/// `credentials` are removed from any Vault error text quoted.
fn interpret_read(
    response: &Response,
    secret: &SecretRef,
    key: Option<&str>,
    credentials: &[&str],
) -> Result<Fetched, ProviderError> {
    let status = response.status;
    if status == StatusCode::OK {
        return read_value(response, secret, key);
    }
    let detail = error_detail(response, credentials);
    if let Some(failure) = transient_failure(response, "Vault", or_no_message(&detail)) {
        return Err(failure);
    }
    let failure = match status {
        StatusCode::NOT_FOUND => not_found(response, secret, &detail),
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => ProviderError::new(
            FailureKind::AccessDenied,
            format!(
                "Vault denied reading {} (HTTP {}): {detail}; check the token's policies \
                 and that the token has not expired or been revoked",
                secret.describe(),
                status.as_u16(),
                detail = or_no_message(&detail),
            ),
        ),
        StatusCode::BAD_REQUEST => ProviderError::misconfigured(format!(
            "Vault rejected the read of {} as invalid (HTTP 400): {}",
            secret.describe(),
            or_no_message(&detail)
        )),
        _ => ProviderError::invalid_response(format!(
            "Vault responded to the read of {} with unexpected HTTP {}: {}",
            secret.describe(),
            status.as_u16(),
            or_no_message(&detail)
        )),
    };
    Err(failure)
}

/// Reads the value out of a 200 response.
fn read_value(
    response: &Response,
    secret: &SecretRef,
    key: Option<&str>,
) -> Result<Fetched, ProviderError> {
    let body = response.json("Vault")?;
    let Some(data) = body
        .get("data")
        .and_then(|d| d.get("data"))
        .and_then(Value::as_object)
    else {
        return Err(ProviderError::invalid_response(format!(
            "Vault responded to the read of {} without a data.data object; \
             check that the mount is a KV version 2 secrets engine",
            secret.describe()
        )));
    };
    let version = match body.pointer("/data/metadata/version") {
        None | Some(Value::Null) => None,
        Some(Value::Number(number)) => Some(number.to_string()),
        Some(other) => return Err(ProviderError::invalid_response(format!(
            "Vault responded to the read of {} with metadata.version {other}, which is not a number",
            secret.describe()
        ))),
    };

    let value = match key {
        None => Zeroizing::new(compact_json(&Value::Object(data.clone()))?),
        Some(key) => match data.get(key) {
            Some(Value::String(text)) => Zeroizing::new(text.clone()),
            Some(other) => Zeroizing::new(compact_json(other)?),
            None => return Err(missing_key(data, key, secret)),
        },
    };
    Ok(Fetched { value, version })
}

fn compact_json(value: &Value) -> Result<String, ProviderError> {
    serde_json::to_string(value).map_err(|e| {
        ProviderError::invalid_response(format!("re-encoding Vault's secret data failed: {e}"))
    })
}

/// Names the missing key and the keys the secret has, never their values.
fn missing_key(data: &Map<String, Value>, key: &str, secret: &SecretRef) -> ProviderError {
    let mut keys: Vec<String> = data
        .keys()
        .take(MAX_LISTED_KEYS)
        .map(|k| format!("{k:?}"))
        .collect();
    if data.len() > MAX_LISTED_KEYS {
        keys.push(format!("and {} more", data.len() - MAX_LISTED_KEYS));
    }
    let existing = if keys.is_empty() {
        "it has no keys".to_owned()
    } else {
        format!("its keys are {}", keys.join(", "))
    };
    ProviderError::new(
        FailureKind::NotFound,
        format!(
            "the key {key:?} is missing from {}; {existing}",
            secret.describe()
        ),
    )
}

/// Maps a 404: a version that was soft-deleted or destroyed comes back with
/// its metadata, while a missing secret or version has only empty `errors`.
fn not_found(response: &Response, secret: &SecretRef, detail: &str) -> ProviderError {
    let body = match response.json("Vault") {
        Ok(body) => body,
        Err(error) => return error,
    };
    if let Some(metadata) = body.pointer("/data/metadata").and_then(Value::as_object) {
        let version = match metadata.get("version") {
            Some(Value::Number(number)) => number.to_string(),
            _ => secret
                .version
                .map_or_else(|| "current".to_owned(), |v| v.to_string()),
        };
        let name = &secret.display_path;
        let namespace = secret
            .namespace
            .as_deref()
            .map(|n| format!(" in namespace {n}"))
            .unwrap_or_default();
        if metadata.get("destroyed") == Some(&Value::Bool(true)) {
            return ProviderError::new(
                FailureKind::Disabled,
                format!("version {version} of {name}{namespace} was destroyed"),
            );
        }
        let deletion_time = metadata
            .get("deletion_time")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !deletion_time.is_empty() {
            return ProviderError::new(
                FailureKind::Disabled,
                format!(
                    "version {version} of {name}{namespace} was deleted at {deletion_time}; \
                     undelete it in Vault or read another version"
                ),
            );
        }
    }
    let reason = if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    };
    ProviderError::new(
        FailureKind::NotFound,
        format!("Vault found no secret at {}{reason}", secret.describe()),
    )
}

/// Returns Vault's `errors` joined with "; ", the body's text when it is not
/// JSON, or an empty string when a JSON body has no errors. Each of `credentials` is replaced by `[redacted]`, and the
/// text is cut to [`MAX_DETAIL_BYTES`].
fn error_detail(response: &Response, credentials: &[&str]) -> String {
    let mut detail = match serde_json::from_slice::<Value>(&response.body) {
        Ok(body) => body
            .get("errors")
            .and_then(Value::as_array)
            .map(|errors| {
                errors
                    .iter()
                    .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_owned))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default(),
        Err(_) => String::from_utf8_lossy(&response.body).into_owned(),
    };
    for credential in credentials.iter().filter(|c| !c.is_empty()) {
        detail = detail.replace(credential, "[redacted]");
    }
    truncate(detail.trim(), MAX_DETAIL_BYTES)
}

fn or_no_message(detail: &str) -> &str {
    if detail.is_empty() {
        "no error message"
    } else {
        detail
    }
}

/// An AppRole login: where it is sent and the cache key of its token.
struct AppRoleLogin<'a> {
    address: &'a str,
    namespace: Option<&'a str>,
    mount: &'a str,
    role_id: &'a str,
    secret_id: &'a str,
    cache_key: String,
}

impl<'a> AppRoleLogin<'a> {
    fn new(
        address: &'a str,
        namespace: Option<&'a str>,
        role_id: &'a str,
        mount: Option<&'a str>,
        secret_id: &'a str,
    ) -> Result<AppRoleLogin<'a>, ProviderError> {
        if role_id.is_empty() {
            return Err(ProviderError::misconfigured(
                "the AppRole role_id is empty; set auth.role_id of the connection",
            ));
        }
        if secret_id.is_empty() {
            return Err(ProviderError::misconfigured(
                "the AppRole secret_id is empty; store the secret id in the connection's credential",
            ));
        }
        let mount = mount
            .map(|m| m.trim_matches('/'))
            .filter(|m| !m.is_empty())
            .unwrap_or(DEFAULT_APPROLE_MOUNT);
        let cache_key = token_key(
            &["vault", address, namespace.unwrap_or(""), role_id],
            secret_id.as_bytes(),
        );
        Ok(AppRoleLogin {
            address,
            namespace,
            mount,
            role_id,
            secret_id,
            cache_key,
        })
    }

    /// Logs in and caches the client token for its lease.
    async fn log_in(&self, ctx: &ProviderContext) -> Result<Arc<Zeroizing<String>>, ProviderError> {
        let url = format!(
            "{}/v1/auth/{}/login",
            self.address,
            encode_segments("auth mount", self.mount)?
        );
        let body = serde_json::json!({"role_id": self.role_id, "secret_id": self.secret_id});
        let mut request = Request::post(&url, "application/json", body.to_string());
        if let Some(namespace) = self.namespace {
            request = request.header("x-vault-namespace", namespace);
        }
        let response = ctx.http.send(request).await?;
        let login_path = format!("auth/{}/login", self.mount);

        if response.status != StatusCode::OK {
            return Err(self.login_failure(&response, &login_path));
        }
        let body = response.json("Vault")?;
        let auth = body.get("auth");
        let token = auth
            .and_then(|a| a.get("client_token"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty());
        let Some(token) = token else {
            return Err(ProviderError::invalid_response(format!(
                "Vault responded to the AppRole login at {login_path} without auth.client_token"
            )));
        };
        let lifetime = match auth
            .and_then(|a| a.get("lease_duration"))
            .and_then(Value::as_u64)
        {
            Some(0) => NO_TTL_TOKEN_LIFETIME,
            Some(seconds) => Duration::from_secs(seconds),
            None => {
                return Err(ProviderError::invalid_response(format!(
                    "Vault responded to the AppRole login at {login_path} without a numeric auth.lease_duration"
                )))
            }
        };
        tracing::debug!(
            vault.address = self.address,
            vault.auth_mount = self.mount,
            lease_seconds = lifetime.as_secs(),
            "logged in to Vault with AppRole"
        );
        Ok(ctx.tokens.put(
            self.cache_key.clone(),
            Zeroizing::new(token.to_owned()),
            lifetime,
        ))
    }

    fn login_failure(&self, response: &Response, login_path: &str) -> ProviderError {
        let detail = error_detail(response, &[self.secret_id]);
        let detail = or_no_message(&detail);
        if let Some(failure) = transient_failure(response, "Vault", detail) {
            return failure;
        }
        let status = response.status.as_u16();
        match response.status {
            StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                ProviderError::new(
                    FailureKind::AccessDenied,
                    format!(
                        "Vault rejected the AppRole login at {login_path} (HTTP {status}): {detail}; \
                         check the role_id and that the secret id is current"
                    ),
                )
            }
            StatusCode::NOT_FOUND => ProviderError::misconfigured(format!(
                "Vault has no AppRole login at {login_path} (HTTP 404): {detail}; \
                 check the auth method's mount and the namespace"
            )),
            _ => ProviderError::invalid_response(format!(
                "Vault responded to the AppRole login at {login_path} with unexpected HTTP {status}: {detail}"
            )),
        }
    }
}
