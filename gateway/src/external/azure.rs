//! Azure Key Vault: reading a secret with an Entra ID client-credentials token.

use std::sync::Arc;

use http::StatusCode;
use serde_json::Value;
use zeroize::Zeroizing;

use super::error::{FailureKind, ProviderError};
use super::http::{
    encode_component, parse_token_response, transient_failure, truncate, Request, Response,
    MAX_DETAIL_BYTES,
};
use super::tokens::token_key;
use super::{Fetched, ProviderContext};

/// Entra ID's token service for the public Azure cloud.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// OAuth scope of Key Vault's data-plane API.
const VAULT_SCOPE: &str = "https://vault.azure.net/.default";
/// Key Vault REST API version of every request.
const API_VERSION: &str = "7.4";

/// Reads version `version` (the current one when `None` or empty) of secret `name`
/// from the vault at `vault_url`, with a token for the Entra ID application
/// `client_id` in `tenant_id`.
///
/// A token is reused from `ctx.tokens` until it expires. When the vault
/// rejects a token with 401, the token is dropped and the read is retried
/// once with a new one.
#[allow(clippy::too_many_arguments)]
pub async fn fetch(
    ctx: &ProviderContext,
    tenant_id: &str,
    client_id: &str,
    authority_url: Option<&str>,
    client_secret: &str,
    vault_url: &str,
    name: &str,
    version: Option<&str>,
) -> Result<Fetched, ProviderError> {
    check_inputs(tenant_id, client_id, client_secret, vault_url, name)?;
    let version = version.filter(|v| !v.is_empty());
    let authority = authority_url
        .unwrap_or(DEFAULT_AUTHORITY)
        .trim_end_matches('/');
    let vault = vault_url.trim_end_matches('/');
    let client = EntraClient {
        ctx,
        authority,
        tenant_id,
        client_id,
        client_secret,
        cache_key: token_key(
            &["azure", authority, tenant_id, client_id],
            client_secret.as_bytes(),
        ),
    };
    let url = secret_url(vault, name, version);

    let token = client.token().await?;
    let mut response = get_secret(ctx, &url, &token).await?;
    if response.status == StatusCode::UNAUTHORIZED {
        // The token may have been revoked or issued for another tenant's
        // vault, so one new token is worth a try. The challenge's
        // `authorization` URL is ignored: the configured authority is the
        // only token service keygate sends the client secret to.
        tracing::debug!(
            tenant_id,
            client_id,
            vault = vault,
            "Key Vault rejected the access token, requesting a new one"
        );
        ctx.tokens.remove(&client.cache_key);
        let token = client.new_token().await?;
        response = get_secret(ctx, &url, &token).await?;
        if response.status == StatusCode::UNAUTHORIZED {
            ctx.tokens.remove(&client.cache_key);
        }
    }
    read_secret(response, vault, client_id)
}

fn check_inputs(
    tenant_id: &str,
    client_id: &str,
    client_secret: &str,
    vault_url: &str,
    name: &str,
) -> Result<(), ProviderError> {
    let empty = [
        ("tenant_id", tenant_id),
        ("client_id", client_id),
        ("client_secret", client_secret),
        ("vault_url", vault_url),
        ("secret name", name),
    ]
    .into_iter()
    .find(|(_, value)| value.trim().is_empty());
    match empty {
        Some((field, _)) => Err(ProviderError::misconfigured(format!(
            "the Azure Key Vault {field} is empty"
        ))),
        None => Ok(()),
    }
}

/// Returns `{vault}/secrets/{name}/{version}?api-version=...`, with an empty
/// version segment for the current version.
fn secret_url(vault: &str, name: &str, version: Option<&str>) -> String {
    format!(
        "{vault}/secrets/{}/{}?api-version={API_VERSION}",
        encode_component(name),
        encode_component(version.unwrap_or(""))
    )
}

async fn get_secret(
    ctx: &ProviderContext,
    url: &str,
    token: &Zeroizing<String>,
) -> Result<Response, ProviderError> {
    let request = Request::get(url)
        .header("authorization", format!("Bearer {}", token.as_str()))
        .header("accept", "application/json");
    ctx.http.send(request).await
}

/// Maps Key Vault's response to a get-secret request onto the secret or a failure.
fn read_secret(response: Response, vault: &str, client_id: &str) -> Result<Fetched, ProviderError> {
    let what = format!("Key Vault {vault}");
    if response.status.is_success() {
        return parse_secret_bundle(&response, &what);
    }

    let error = VaultError::from_response(&response);
    let detail = error.detail();
    if let Some(failure) = transient_failure(&response, &what, &detail) {
        return Err(failure);
    }
    let kind = match response.status {
        StatusCode::UNAUTHORIZED => FailureKind::AccessDenied,
        StatusCode::FORBIDDEN if error.inner_code.as_deref() == Some("SecretDisabled") => {
            FailureKind::Disabled
        }
        StatusCode::FORBIDDEN => FailureKind::AccessDenied,
        StatusCode::NOT_FOUND => FailureKind::NotFound,
        StatusCode::BAD_REQUEST => FailureKind::Misconfigured,
        _ => FailureKind::InvalidResponse,
    };
    let message = match kind {
        FailureKind::AccessDenied => format!(
            "{what} denied access to client {client_id}: HTTP {}: {detail}",
            response.status.as_u16()
        ),
        _ => format!(
            "{what} answered HTTP {}: {detail}",
            response.status.as_u16()
        ),
    };
    Err(ProviderError::new(kind, message))
}

/// Reads a `SecretBundle`: `value` is the secret, and the last path segment
/// of `id` is the version read.
fn parse_secret_bundle(response: &Response, what: &str) -> Result<Fetched, ProviderError> {
    let mut bundle = response.json(what)?;
    let value = match bundle.get_mut("value").map(Value::take) {
        Some(Value::String(value)) => Zeroizing::new(value),
        _ => {
            return Err(ProviderError::invalid_response(format!(
                "{what} returned HTTP {} without a string `value` field",
                response.status.as_u16()
            )))
        }
    };
    let version = bundle
        .get("id")
        .and_then(Value::as_str)
        .and_then(version_from_id);
    Ok(Fetched { value, version })
}

/// Returns the version from a secret id such as
/// `https://v.vault.azure.net/secrets/{name}/{version}`.
fn version_from_id(id: &str) -> Option<String> {
    let path = id.split(['?', '#']).next().unwrap_or(id);
    let mut segments = path.trim_end_matches('/').rsplit('/');
    let version = segments.next()?;
    let _name = segments.next()?;
    (segments.next() == Some("secrets") && !version.is_empty()).then(|| version.to_owned())
}

/// The fields of Key Vault's `{"error": {"code", "message", "innererror": {"code"}}}`.
struct VaultError {
    code: Option<String>,
    message: Option<String>,
    inner_code: Option<String>,
}

impl VaultError {
    fn from_response(response: &Response) -> VaultError {
        let body: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        let error = &body["error"];
        let text = |value: &Value| value.as_str().map(str::to_owned);
        VaultError {
            code: text(&error["code"]),
            message: text(&error["message"]),
            inner_code: text(&error["innererror"]["code"]),
        }
    }

    /// Returns `code (inner code): message`, or a note that the body had no error.
    fn detail(&self) -> String {
        let mut detail = match (&self.code, &self.inner_code) {
            (Some(code), Some(inner)) => format!("{code} ({inner})"),
            (Some(code), None) => code.clone(),
            (None, _) => "no Key Vault error in the response body".to_owned(),
        };
        if let Some(message) = &self.message {
            detail.push_str(": ");
            detail.push_str(&truncate(message, MAX_DETAIL_BYTES));
        }
        detail
    }
}

/// An Entra ID application's client-credentials login, with its token cache key.
struct EntraClient<'a> {
    ctx: &'a ProviderContext,
    authority: &'a str,
    tenant_id: &'a str,
    client_id: &'a str,
    client_secret: &'a str,
    cache_key: String,
}

impl EntraClient<'_> {
    /// Returns the cached token, or requests a new one.
    async fn token(&self) -> Result<Arc<Zeroizing<String>>, ProviderError> {
        match self.ctx.tokens.get(&self.cache_key) {
            Some(token) => Ok(token),
            None => self.new_token().await,
        }
    }

    /// Requests a token from the authority's v2.0 token endpoint and caches it.
    async fn new_token(&self) -> Result<Arc<Zeroizing<String>>, ProviderError> {
        let url = format!(
            "{}/{}/oauth2/v2.0/token",
            self.authority,
            encode_component(self.tenant_id)
        );
        let form = Zeroizing::new(
            form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", "client_credentials")
                .append_pair("client_id", self.client_id)
                .append_pair("client_secret", self.client_secret)
                .append_pair("scope", VAULT_SCOPE)
                .finish(),
        );
        let request = Request::post(
            &url,
            "application/x-www-form-urlencoded",
            form.as_bytes().to_vec(),
        )
        .header("accept", "application/json");
        let response = self.ctx.http.send(request).await?;

        let what = format!("the Entra ID token endpoint of tenant {}", self.tenant_id);
        if !response.status.is_success() {
            return Err(self.token_failure(&response, &what));
        }
        let (token, lifetime) = parse_token_response(&response, &what)?;
        Ok(self.ctx.tokens.put(self.cache_key.clone(), token, lifetime))
    }

    /// Maps a token endpoint error such as
    /// `{"error": "invalid_client", "error_description": "AADSTS7000215: ..."}`.
    fn token_failure(&self, response: &Response, what: &str) -> ProviderError {
        let body: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        let code = body["error"].as_str().unwrap_or("no OAuth error code");
        // Entra appends trace and correlation ids and a timestamp on further lines.
        let description = body["error_description"]
            .as_str()
            .and_then(|text| text.lines().next())
            .map(|line| format!(" ({})", truncate(line.trim(), MAX_DETAIL_BYTES)))
            .unwrap_or_default();
        let detail = format!("{code}{description}");
        if let Some(failure) = transient_failure(response, what, &detail) {
            return failure;
        }
        ProviderError::new(
            FailureKind::AccessDenied,
            format!(
                "{what} rejected the client credentials of client {}: HTTP {}: {detail}",
                self.client_id,
                response.status.as_u16()
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_from_secret_id() {
        let id = "https://v.vault.azure.net/secrets/db-password/4387e9f3d6e14c459867679a90fd0f79";
        assert_eq!(
            version_from_id(id).as_deref(),
            Some("4387e9f3d6e14c459867679a90fd0f79")
        );
    }

    #[test]
    fn version_from_id_without_version() {
        assert_eq!(
            version_from_id("https://v.vault.azure.net/secrets/db-password"),
            None
        );
        assert_eq!(version_from_id("not a url"), None);
    }

    #[test]
    fn secret_url_encodes_name_and_version() {
        assert_eq!(
            secret_url("https://v.vault.azure.net", "a/b c", None),
            "https://v.vault.azure.net/secrets/a%2Fb%20c/?api-version=7.4"
        );
        assert_eq!(
            secret_url("https://v.vault.azure.net", "db", Some("abc")),
            "https://v.vault.azure.net/secrets/db/abc?api-version=7.4"
        );
    }

    #[test]
    fn truncate_keeps_char_boundary() {
        assert_eq!(truncate("héllo", 2), "h...");
        assert_eq!(truncate("short", 10), "short");
    }

    #[test]
    fn empty_inputs_are_misconfigured() {
        let error = check_inputs("t", "c", "s", "https://v", " ").unwrap_err();
        assert_eq!(error.kind, FailureKind::Misconfigured);
        assert!(error.message.contains("secret name"), "{}", error.message);
    }
}
