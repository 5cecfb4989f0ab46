//! `POST /oauth/token`: OAuth 2 client credentials for agents, over mTLS only.
//!
//! Accepts `client_secret_basic` and `client_secret_post`. The issued token is
//! bound to the client certificate of the connection (RFC 8705), whose common
//! name must be the client id.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::StatusCode;
use hyper::body::Incoming;
use keygate_auth::{AuthError, Scope, ScopeSet, TokenRequest};
use serde_json::json;
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::blocking;
use crate::directory::SecretMatch;
use crate::http::body::{json_response, read_bytes, Response};
use crate::http::problem::ApiError;
use crate::http::ConnInfo;
use crate::state::SharedState;

/// Form bodies of the token endpoint are small; anything larger is not a token request.
const MAX_FORM_BYTES: usize = 8 * 1024;

/// Builds an OAuth error (RFC 6749 section 5.2) inside a problem document.
fn oauth_error(status: StatusCode, error: &'static str, detail: impl Into<String>) -> ApiError {
    ApiError::new(status, "oauth-error", detail).with_member("error", json!(error))
}

pub async fn issue(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
) -> Result<Response, ApiError> {
    let Some(identity) = conn.client.clone() else {
        return Err(oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "a client certificate is required",
        ));
    };
    let basic = basic_credentials(req.headers())?;
    let form = read_bytes(req.into_body(), MAX_FORM_BYTES).await?;
    let mut grant_type = None;
    let mut form_id = None;
    let mut form_secret: Option<Zeroizing<String>> = None;
    for (key, value) in form_urlencoded::parse(&form) {
        match key.as_ref() {
            "grant_type" => grant_type = Some(value.into_owned()),
            "client_id" => form_id = Some(value.into_owned()),
            "client_secret" => form_secret = Some(Zeroizing::new(value.into_owned())),
            _ => {}
        }
    }
    match grant_type.as_deref() {
        Some("client_credentials") => {}
        Some(other) => {
            return Err(oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!("grant_type {other:?} is not supported; use client_credentials"),
            ))
        }
        None => {
            return Err(oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is missing",
            ))
        }
    }
    let (client_id, secret) = match (basic, form_id, form_secret) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => return Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "send client credentials either in the Authorization header or in the form, not both",
        )),
        (Some((id, secret)), None, None) => (id, secret),
        (None, Some(id), Some(secret)) => (id, secret),
        _ => {
            return Err(oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "client_id and client_secret are required",
            ))
        }
    };

    // Logins are charged to the presented certificate, an identity the TLS
    // handshake proved, so no client can use up another client's logins.
    let cert_name = identity.common_name.clone().unwrap_or_default();
    if let Err(wait) = state.login_limiter.check(&identity.thumbprint) {
        let retry_after = wait.as_secs() + 1;
        state
            .metrics
            .auth_failures
            .with_label_values(&["rate_limited"])
            .inc();
        warn!(certificate.name = %cert_name, retry_after_s = retry_after, "agent login rate limited");
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            format!(
                "too many logins with the client certificate of {cert_name:?}; at most {} per minute; retry in {retry_after} s",
                state.config.auth.token_requests_per_minute
            ),
        )
        .with_header(http::header::RETRY_AFTER, &retry_after.to_string()));
    }
    if cert_name != client_id {
        warn!(
            client.id = %client_id.chars().take(64).collect::<String>(),
            certificate.name = %cert_name,
            "agent login with a client certificate issued to another identity"
        );
        return Err(reject(
            state,
            &client_id,
            AuthError::InvalidClient {
                client_id: client_id.clone(),
            },
        ));
    }

    let directory = state.agents.clone();
    let id = client_id.clone();
    let checked = blocking(move || directory.authenticate(&id, &secret)).await?;
    let agent = match checked {
        Ok((agent, SecretMatch::Current)) => agent,
        Ok((agent, SecretMatch::Previous)) => {
            info!(agent.id = %agent.id, "agent logged in with its previous client secret, which works until the rotation overlap ends");
            agent
        }
        Err(error) => return Err(reject(state, &client_id, error)),
    };

    // A rotation or disable revokes tokens up to the start of the next whole
    // second, because `iat` has whole seconds. A login within that second
    // waits for it, or its new token would count as revoked. The timer runs
    // on the monotonic clock and `iat` on the wall clock, so the wait repeats
    // until the wall clock has passed too (about 1 s at most).
    let valid_from_ms = agent.tokens_valid_from.saturating_mul(1000);
    for _ in 0..10 {
        let wait_ms = valid_from_ms.saturating_sub(crate::now_ms());
        if wait_ms == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(wait_ms.min(1000) + 1)).await;
    }

    let mut scopes = ScopeSet::default();
    scopes.insert(Scope::AgentSession);
    let lifetime = state.config.auth.agent_token_lifetime_secs;
    // While the vault is sealed, a standby key that lives only in memory
    // signs agent tokens, so agents keep connecting and relaying tasks.
    let (token, _) = state
        .signing
        .issue_agent_token(&TokenRequest {
            subject: agent.id.clone(),
            account: agent.account.clone(),
            scopes,
            projects: None,
            lifetime_secs: lifetime,
            certificate_thumbprint: Some(identity.thumbprint.clone()),
        })
        .map_err(|e| ApiError::internal(format!("signing the token failed: {e}")))?;
    info!(agent.id = %agent.id, account = %agent.account, "agent logged in");
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "scope": scopes.to_claim(),
        }),
    ))
}

fn reject(state: &SharedState, client_id: &str, error: AuthError) -> ApiError {
    state
        .metrics
        .auth_failures
        .with_label_values(&[error.reason()])
        .inc();
    warn!(client.id = %client_id.chars().take(64).collect::<String>(), reason = error.reason(), "agent login rejected");
    oauth_error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        error.to_string(),
    )
    .with_header(http::header::WWW_AUTHENTICATE, r#"Basic realm="keygate""#)
}

/// Client id and secret from `Authorization: Basic`, form-urlencoded inside (RFC 6749 section 2.3.1).
fn basic_credentials(
    headers: &http::HeaderMap,
) -> Result<Option<(String, Zeroizing<String>)>, ApiError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let invalid = |why: &str| {
        oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("the Authorization header {why}"),
        )
    };
    let text = value.to_str().map_err(|_| invalid("is not ASCII"))?;
    let Some((scheme, encoded)) = text.split_once(' ') else {
        return Err(invalid("is not `Basic <credentials>`"));
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(invalid("must use the Basic scheme"));
    }
    let decoded = Zeroizing::new(
        STANDARD
            .decode(encoded.trim())
            .map_err(|_| invalid("is not valid base64"))?,
    );
    let text = std::str::from_utf8(&decoded).map_err(|_| invalid("is not UTF-8"))?;
    let (id, secret) = text
        .split_once(':')
        .ok_or_else(|| invalid("has no ':' between id and secret"))?;
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    Ok(Some((decode(id), Zeroizing::new(decode(secret)))))
}
