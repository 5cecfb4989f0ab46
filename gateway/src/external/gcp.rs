//! GCP Secret Manager: accessing a secret version with a service-account token.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use http::StatusCode;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::error::{FailureKind, ProviderError};
use super::http::{
    encode_component, parse_token_response, transient_failure, truncate, Request, Response,
    MAX_DETAIL_BYTES,
};
use super::tokens::token_key;
use super::{Fetched, ProviderContext};

/// Secret Manager's public endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://secretmanager.googleapis.com";
/// Google's OAuth 2.0 token endpoint.
pub const DEFAULT_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// OAuth scope requested for the access token.
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Lifetime requested for the signed assertion; Google accepts at most one hour.
const ASSERTION_LIFETIME_SECS: u64 = 3600;
/// Most pages of the versions list read when looking for an enabled version.
const MAX_LIST_PAGES: usize = 10;
/// Versions requested per page of the versions list.
const LIST_PAGE_SIZE: u32 = 250;

/// Reads version `version` (`latest` when `None` or empty) of secret `secret` in
/// `project` with a token for the service account of `service_account_key`
/// (a JSON key file's text).
///
/// The key's own `token_uri` is ignored: tokens come from `token_url` or
/// [`DEFAULT_TOKEN_URL`] only. With `latest_falls_back_to_enabled`, a
/// disabled or destroyed latest version is replaced by the highest-numbered
/// enabled one. A token rejected with 401 is dropped and the request retried
/// once with a new one.
#[allow(clippy::too_many_arguments)]
pub async fn fetch(
    ctx: &ProviderContext,
    endpoint: Option<&str>,
    token_url: Option<&str>,
    latest_falls_back_to_enabled: bool,
    service_account_key: &str,
    project: &str,
    secret: &str,
    version: Option<&str>,
) -> Result<Fetched, ProviderError> {
    for (field, value) in [("project", project), ("secret", secret)] {
        if value.trim().is_empty() {
            return Err(ProviderError::misconfigured(format!(
                "the GCP Secret Manager {field} is empty"
            )));
        }
    }
    let key = ServiceAccountKey::parse(service_account_key)?;
    let token_url = token_url.unwrap_or(DEFAULT_TOKEN_URL);
    let session = Session {
        ctx,
        cache_key: token_key(
            &["gcp", token_url, &key.client_email],
            service_account_key.as_bytes(),
        ),
        key,
        token_url,
    };
    let secret_path = format!(
        "{}/v1/projects/{}/secrets/{}",
        endpoint.unwrap_or(DEFAULT_ENDPOINT).trim_end_matches('/'),
        encode_component(project),
        encode_component(secret)
    );
    let version = version.filter(|v| !v.is_empty()).unwrap_or("latest");

    let latest = access(&session, &secret_path, version).await;
    match latest {
        Err(error)
            if error.kind == FailureKind::Disabled
                && version == "latest"
                && latest_falls_back_to_enabled =>
        {
            let newest = newest_enabled_version(&session, &secret_path)
                .await
                .map_err(|mut list_error| {
                    // The role roles/secretmanager.secretAccessor contains
                    // `versions.access` but not `versions.list`.
                    if list_error.kind == FailureKind::AccessDenied {
                        list_error.message.push_str(
                            " (listing the enabled versions, because the latest one is not enabled, needs the secretmanager.versions.list permission)",
                        );
                    }
                    list_error
                })?;
            let Some(number) = newest else {
                return Err(ProviderError::new(
                    FailureKind::Disabled,
                    format!(
                        "secret {secret} in project {project} has no enabled version to use in place of the latest one: {}",
                        error.message
                    ),
                ));
            };
            tracing::debug!(
                project,
                secret,
                version = number,
                "the latest GCP secret version is not enabled, reading the newest enabled one"
            );
            access(&session, &secret_path, &number.to_string()).await
        }
        other => other,
    }
}

/// Calls `versions/{version}:access` and decodes the payload.
async fn access(
    session: &Session<'_>,
    secret_path: &str,
    version: &str,
) -> Result<Fetched, ProviderError> {
    let url = format!(
        "{secret_path}/versions/{}:access",
        encode_component(version)
    );
    let response = session.get(&url).await?;
    let what = "GCP Secret Manager";
    if !response.status.is_success() {
        return Err(api_failure(&response, what, &session.key.client_email));
    }

    let mut body = response.json(what)?;
    let Some(payload) = body.get_mut("payload").filter(|p| p.is_object()) else {
        return Err(ProviderError::invalid_response(format!(
            "{what} returned HTTP {} without a `payload` object",
            response.status.as_u16()
        )));
    };
    let data = match payload.get_mut("data").map(Value::take) {
        Some(Value::String(data)) => Zeroizing::new(data),
        // Proto3 JSON leaves out an empty `bytes` field, so an empty secret has no `data`.
        None | Some(Value::Null) => Zeroizing::new(String::new()),
        Some(_) => {
            return Err(ProviderError::invalid_response(format!(
                "{what} returned a `payload.data` field that is not a string"
            )))
        }
    };
    let version_read = body["name"].as_str().and_then(version_from_name);
    let version_label = version_read.as_deref().unwrap_or(version);
    let bytes = Zeroizing::new(STANDARD.decode(data.as_bytes()).map_err(|e| {
        ProviderError::invalid_response(format!(
            "{what} sent a payload for version {version_label} that is not valid base64: {e}"
        ))
    })?);
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        ProviderError::invalid_response(format!(
            "the payload of version {version_label} is not UTF-8 text, and keygate serves text secrets only"
        ))
    })?;
    Ok(Fetched {
        value: Zeroizing::new(text.to_owned()),
        version: version_read,
    })
}

/// Returns the highest-numbered version listed with `filter=state:ENABLED`,
/// reading at most [`MAX_LIST_PAGES`] pages.
async fn newest_enabled_version(
    session: &Session<'_>,
    secret_path: &str,
) -> Result<Option<u64>, ProviderError> {
    let what = "GCP Secret Manager";
    let mut newest: Option<u64> = None;
    let mut page_token: Option<String> = None;
    for _ in 0..MAX_LIST_PAGES {
        let mut url = format!(
            "{secret_path}/versions?filter={}&pageSize={LIST_PAGE_SIZE}",
            encode_component("state:ENABLED")
        );
        if let Some(token) = &page_token {
            url.push_str("&pageToken=");
            url.push_str(&encode_component(token));
        }
        let response = session.get(&url).await?;
        if !response.status.is_success() {
            return Err(api_failure(&response, what, &session.key.client_email));
        }

        let body = response.json(what)?;
        let versions = body["versions"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for version in versions {
            // The state is checked again in case a server ignores the filter.
            if version["state"].as_str() != Some("ENABLED") {
                continue;
            }
            let number = version["name"]
                .as_str()
                .and_then(version_from_name)
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(number) = number {
                newest = newest.max(Some(number));
            }
        }
        page_token = body["nextPageToken"]
            .as_str()
            .filter(|token| !token.is_empty())
            .map(str::to_owned);
        if page_token.is_none() {
            return Ok(newest);
        }
    }
    // NOTE: versions past the last page read are not seen. Google lists
    // versions newest first, so the newest enabled one is on an early page.
    tracing::warn!(
        secret = %secret_path,
        pages = MAX_LIST_PAGES,
        "GCP secret has more enabled versions than keygate lists, using the newest listed"
    );
    Ok(newest)
}

/// Returns the version id from a resource name `projects/p/secrets/s/versions/N`.
fn version_from_name(name: &str) -> Option<String> {
    let (_, version) = name.rsplit_once("/versions/")?;
    (!version.is_empty() && !version.contains('/')).then(|| version.to_owned())
}

/// Maps Google's `{"error": {"code", "message", "status"}}` onto a failure.
fn api_failure(response: &Response, what: &str, client_email: &str) -> ProviderError {
    let body: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    let error = &body["error"];
    let status = error["status"].as_str().unwrap_or("");
    let detail = match (status, error["message"].as_str()) {
        ("", None) => "no Google API error in the response body".to_owned(),
        ("", Some(message)) => truncate(message, MAX_DETAIL_BYTES),
        (status, None) => status.to_owned(),
        (status, Some(message)) => format!("{status}: {}", truncate(message, MAX_DETAIL_BYTES)),
    };
    if let Some(failure) = transient_failure(response, what, &detail) {
        return failure;
    }
    let kind = match (response.status, status) {
        (_, "FAILED_PRECONDITION") => FailureKind::Disabled,
        (_, "NOT_FOUND") | (StatusCode::NOT_FOUND, _) => FailureKind::NotFound,
        (_, "PERMISSION_DENIED" | "UNAUTHENTICATED")
        | (StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED, _) => FailureKind::AccessDenied,
        (StatusCode::BAD_REQUEST, _) => FailureKind::Misconfigured,
        _ => FailureKind::InvalidResponse,
    };
    let message = match kind {
        FailureKind::AccessDenied => format!(
            "{what} denied access to service account {client_email}: HTTP {}: {detail}",
            response.status.as_u16()
        ),
        _ => format!(
            "{what} answered HTTP {}: {detail}",
            response.status.as_u16()
        ),
    };
    ProviderError::new(kind, message)
}

/// The fields of a service-account JSON key file that keygate uses.
struct ServiceAccountKey {
    client_email: String,
    private_key_id: Option<String>,
    /// DER of the PKCS#8 private key.
    private_key_der: Zeroizing<Vec<u8>>,
}

impl ServiceAccountKey {
    /// Parses a key file's text. Errors name the field at fault and never
    /// quote the key.
    fn parse(text: &str) -> Result<ServiceAccountKey, ProviderError> {
        let invalid = |reason: String| {
            ProviderError::misconfigured(format!(
                "the GCP service account key is invalid: {reason}"
            ))
        };
        // serde_json's syntax errors give a line and column, never the input.
        let mut key: Value = serde_json::from_str(text)
            .map_err(|e| invalid(format!("it is not a JSON object ({e})")))?;
        if !key.is_object() {
            return Err(invalid("it is not a JSON object".to_owned()));
        }
        match key["type"].as_str() {
            Some("service_account") => {}
            Some(other) => {
                return Err(invalid(format!(
                    "its type is {other:?}, and only \"service_account\" keys are supported"
                )))
            }
            None => return Err(invalid("the `type` field is missing".to_owned())),
        }
        let client_email = key["client_email"]
            .as_str()
            .filter(|email| !email.is_empty())
            .ok_or_else(|| invalid("the `client_email` field is missing".to_owned()))?
            .to_owned();
        let private_key_id = key["private_key_id"]
            .as_str()
            .filter(|id| !id.is_empty())
            .map(str::to_owned);
        let pem = match key.get_mut("private_key").map(Value::take) {
            Some(Value::String(pem)) => Zeroizing::new(pem),
            _ => return Err(invalid("the `private_key` field is missing".to_owned())),
        };
        let private_key_der = decode_pkcs8_pem(&pem).map_err(invalid)?;
        Ok(ServiceAccountKey {
            client_email,
            private_key_id,
            private_key_der,
        })
    }

    /// Returns a signed JWT asking `token_url` for a cloud-platform token.
    fn assertion(&self, token_url: &str) -> Result<Zeroizing<String>, ProviderError> {
        let key_pair = RsaKeyPair::from_pkcs8(&self.private_key_der).map_err(|e| {
            ProviderError::misconfigured(format!(
                "the GCP service account key is invalid: `private_key` is not an RSA key usable for RS256 ({e})"
            ))
        })?;
        let mut header = json!({"alg": "RS256", "typ": "JWT"});
        if let Some(id) = &self.private_key_id {
            header["kid"] = json!(id);
        }
        let issued_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": token_url,
            "iat": issued_at,
            "exp": issued_at + ASSERTION_LIFETIME_SECS,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0; key_pair.public().modulus_len()];
        key_pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| {
                ProviderError::misconfigured(
                    "signing the token request with the GCP service account key failed",
                )
            })?;
        Ok(Zeroizing::new(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        )))
    }
}

/// Returns the DER inside the `PRIVATE KEY` block of `pem`, or what is wrong with it.
fn decode_pkcs8_pem(pem: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    const BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
    const END: &str = "-----END PRIVATE KEY-----";
    let Some(start) = pem.find(BEGIN) else {
        return Err(if pem.contains("-----BEGIN RSA PRIVATE KEY-----") {
            "`private_key` is a PKCS#1 key, and a service account key holds a PKCS#8 key (BEGIN PRIVATE KEY)".to_owned()
        } else {
            "`private_key` has no -----BEGIN PRIVATE KEY----- line".to_owned()
        });
    };
    let body = &pem[start + BEGIN.len()..];
    let Some(end) = body.find(END) else {
        return Err("`private_key` has no -----END PRIVATE KEY----- line".to_owned());
    };
    let base64_text: Zeroizing<String> = Zeroizing::new(
        body[..end]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect(),
    );
    STANDARD
        .decode(base64_text.as_bytes())
        .map(Zeroizing::new)
        .map_err(|_| "`private_key` is not valid base64 between its PEM lines".to_owned())
}

/// One fetch's access to the token endpoint and the token cache.
struct Session<'a> {
    ctx: &'a ProviderContext,
    key: ServiceAccountKey,
    token_url: &'a str,
    cache_key: String,
}

impl Session<'_> {
    /// Sends an authorized GET. On a 401 the token is dropped, a new one
    /// requested and the GET sent once more.
    async fn get(&self, url: &str) -> Result<Response, ProviderError> {
        let token = self.token().await?;
        let response = self.send_get(url, &token).await?;
        if response.status != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }

        tracing::debug!(
            client_email = %self.key.client_email,
            "GCP rejected the access token, requesting a new one"
        );
        self.ctx.tokens.remove(&self.cache_key);
        let token = self.new_token().await?;
        let response = self.send_get(url, &token).await?;
        if response.status == StatusCode::UNAUTHORIZED {
            self.ctx.tokens.remove(&self.cache_key);
        }
        Ok(response)
    }

    async fn send_get(
        &self,
        url: &str,
        token: &Zeroizing<String>,
    ) -> Result<Response, ProviderError> {
        let request = Request::get(url)
            .header("authorization", format!("Bearer {}", token.as_str()))
            .header("accept", "application/json");
        self.ctx.http.send(request).await
    }

    async fn token(&self) -> Result<Arc<Zeroizing<String>>, ProviderError> {
        match self.ctx.tokens.get(&self.cache_key) {
            Some(token) => Ok(token),
            None => self.new_token().await,
        }
    }

    /// Exchanges a signed assertion for an access token (the JWT bearer
    /// grant) and caches it.
    async fn new_token(&self) -> Result<Arc<Zeroizing<String>>, ProviderError> {
        let assertion = self.key.assertion(self.token_url)?;
        let form = Zeroizing::new(
            form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
                .append_pair("assertion", &assertion)
                .finish(),
        );
        let request = Request::post(
            self.token_url,
            "application/x-www-form-urlencoded",
            form.as_bytes().to_vec(),
        )
        .header("accept", "application/json");
        let response = self.ctx.http.send(request).await?;

        let what = "the Google OAuth token endpoint";
        if !response.status.is_success() {
            return Err(self.token_failure(&response, what));
        }
        let (token, lifetime) = parse_token_response(&response, what)?;
        Ok(self.ctx.tokens.put(self.cache_key.clone(), token, lifetime))
    }

    /// Maps `{"error": "invalid_grant", "error_description": ...}`.
    fn token_failure(&self, response: &Response, what: &str) -> ProviderError {
        let body: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        let code = body["error"].as_str().unwrap_or("no OAuth error code");
        let description = body["error_description"]
            .as_str()
            .map(|text| format!(" ({})", truncate(text.trim(), MAX_DETAIL_BYTES)))
            .unwrap_or_default();
        let detail = format!("{code}{description}");
        if let Some(failure) = transient_failure(response, what, &detail) {
            return failure;
        }
        ProviderError::new(
            FailureKind::AccessDenied,
            format!(
                "{what} rejected the assertion of service account {}: HTTP {}: {detail}",
                self.key.client_email,
                response.status.as_u16()
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_from_resource_name() {
        assert_eq!(
            version_from_name("projects/1/secrets/s/versions/3").as_deref(),
            Some("3")
        );
        assert_eq!(version_from_name("projects/1/secrets/s"), None);
        assert_eq!(version_from_name("projects/1/secrets/s/versions/"), None);
    }

    #[test]
    fn key_with_wrong_type_is_rejected() {
        let error = ServiceAccountKey::parse(r#"{"type": "authorized_user"}"#)
            .err()
            .expect("rejected");
        assert_eq!(error.kind, FailureKind::Misconfigured);
        assert!(
            error.message.contains("authorized_user"),
            "{}",
            error.message
        );
    }

    #[test]
    fn key_without_private_key_is_rejected() {
        let error = ServiceAccountKey::parse(
            r#"{"type": "service_account", "client_email": "a@p.iam.gserviceaccount.com"}"#,
        )
        .err()
        .expect("rejected");
        assert!(error.message.contains("`private_key`"), "{}", error.message);
    }

    #[test]
    fn pkcs1_pem_is_named() {
        let error = decode_pkcs8_pem(
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
        )
        .expect_err("rejected");
        assert!(error.contains("PKCS#1"), "{error}");
    }

    #[test]
    fn pem_body_is_decoded() {
        let der = decode_pkcs8_pem(
            "-----BEGIN PRIVATE KEY-----\nAQID\nBA==\n-----END PRIVATE KEY-----\n",
        )
        .expect("decoded");
        assert_eq!(der.as_slice(), &[1, 2, 3, 4]);
    }
}
