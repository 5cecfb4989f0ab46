//! API errors as `application/problem+json` responses (RFC 9457).
//!
//! This is the one place where failures become HTTP statuses.

use http::{HeaderName, HeaderValue, StatusCode};
use keygate_auth::AuthError;
use serde_json::json;

use super::body::{full_body, Response};

/// An API failure: status, a stable problem type, and a detail for the caller.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Last part of the problem `type` URI; stable, so clients may branch on it.
    pub problem: &'static str,
    pub detail: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    extra: Option<serde_json::Map<String, serde_json::Value>>,
}

impl ApiError {
    pub fn new(status: StatusCode, problem: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            problem,
            detail: detail.into(),
            headers: Vec::new(),
            extra: None,
        }
    }

    /// 503 for work refused because the server is shutting down.
    pub fn shutting_down() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting-down",
            "this keygate server is shutting down; retry, and the request goes to another server or to this one once it is back",
        )
        .with_header(http::header::RETRY_AFTER, "1")
    }

    pub fn with_header(mut self, name: HeaderName, value: &str) -> ApiError {
        if let Ok(value) = HeaderValue::from_str(value) {
            self.headers.push((name, value));
        }
        self
    }

    /// Adds a member to the problem document beside the standard ones.
    pub fn with_member(mut self, key: &str, value: serde_json::Value) -> ApiError {
        self.extra
            .get_or_insert_with(Default::default)
            .insert(key.into(), value);
        self
    }

    pub fn bad_request(problem: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, problem, detail)
    }

    /// 426 with the `Upgrade` header naming the protocol to ask for.
    pub fn upgrade_required(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UPGRADE_REQUIRED, "upgrade-required", detail)
            .with_header(http::header::UPGRADE, crate::session::UPGRADE_PROTOCOL)
    }

    pub fn not_found(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn internal(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
    }

    /// 401 for a missing or rejected token, with a `WWW-Authenticate` challenge (RFC 6750).
    pub fn unauthorized(error: &AuthError) -> ApiError {
        let challenge = match error {
            AuthError::MissingToken => r#"Bearer realm="keygate""#.to_owned(),
            other => format!(
                r#"Bearer realm="keygate", error="invalid_token", error_description="{}""#,
                other.to_string().replace('"', "'")
            ),
        };
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", error.to_string())
            .with_header(http::header::WWW_AUTHENTICATE, &challenge)
            .with_member("reason", json!(error.reason()))
    }

    /// 403 for a token that lacks `scope`.
    pub fn insufficient_scope(scope: keygate_auth::Scope) -> ApiError {
        let challenge =
            format!(r#"Bearer realm="keygate", error="insufficient_scope", scope="{scope}""#);
        ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient-scope",
            format!("this operation requires the scope {scope}, which the token does not carry"),
        )
        .with_header(http::header::WWW_AUTHENTICATE, &challenge)
    }

    pub fn method_not_allowed(method: &http::Method, allowed: &[http::Method]) -> ApiError {
        let allow = allowed
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            format!("method {method} is not allowed here; allowed: {allow}"),
        )
        .with_header(http::header::ALLOW, &allow)
    }

    /// Returns the problem document, as the response body contains it.
    pub fn to_problem(&self) -> serde_json::Value {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let mut doc = json!({
            "type": format!("urn:keygate:problem:{}", self.problem),
            "title": title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let (Some(extra), Some(map)) = (&self.extra, doc.as_object_mut()) {
            map.extend(extra.clone());
        }
        doc
    }

    pub fn into_response(self) -> Response {
        let doc = self.to_problem();
        let mut response = http::Response::new(full_body(doc.to_string()));
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        for (name, value) in self.headers {
            response.headers_mut().append(name, value);
        }
        response
    }
}

impl ApiError {
    /// 507 `storage-full` when the store's file system has no space left, 503
    /// `storage-read-only` when it is read-only, `None` for other store errors.
    /// The detail names the folder and what to do; stored data stays readable
    /// in both cases.
    pub fn from_storage_condition(error: &keygate_vault::StoreError) -> Option<ApiError> {
        use keygate_vault::StoreError;
        let (status, problem) = match error {
            StoreError::NoSpace { .. } => (StatusCode::INSUFFICIENT_STORAGE, "storage-full"),
            StoreError::ReadOnly { .. } => (StatusCode::SERVICE_UNAVAILABLE, "storage-read-only"),
            _ => return None,
        };
        tracing::error!(error = %error, "store write failed");
        Some(ApiError::new(status, problem, error.to_string()))
    }
}

impl From<keygate_vault::VaultError> for ApiError {
    fn from(error: keygate_vault::VaultError) -> ApiError {
        use keygate_vault::ErrorKind;
        if let keygate_vault::VaultError::Store(store) = &error {
            if let Some(api) = ApiError::from_storage_condition(store) {
                return api;
            }
        }
        let (status, problem) = match (&error, error.kind()) {
            (keygate_vault::VaultError::VersionDeleted { .. }, _) => {
                (StatusCode::NOT_FOUND, "version-deleted")
            }
            (keygate_vault::VaultError::VersionDestroyed { .. }, _) => {
                (StatusCode::GONE, "version-destroyed")
            }
            (_, ErrorKind::Conflict) => (StatusCode::CONFLICT, "conflict"),
            (_, ErrorKind::InvalidInput) => (StatusCode::BAD_REQUEST, "invalid-input"),
            (_, ErrorKind::NotFound) => (StatusCode::NOT_FOUND, "not-found"),
            (_, ErrorKind::NotSupported) => (StatusCode::NOT_IMPLEMENTED, "not-supported"),
            (_, ErrorKind::Internal) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %error, "vault operation failed");
        }
        ApiError::new(status, problem, error.to_string())
    }
}

impl From<crate::vault_slot::Sealed> for ApiError {
    /// 503 `vault-sealed`: the master key is not available yet, so nothing
    /// stored under it can be read or written. The detail gives the cause.
    fn from(sealed: crate::vault_slot::Sealed) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "vault-sealed",
            sealed.to_string(),
        )
    }
}

impl ApiError {
    /// Builds the error of a failed lookup of `definition` at an external
    /// `provider`. Failures to reach the secret manager or to be let in start
    /// with [`crate::external::CANNOT_ACCESS`]; the problem document also
    /// carries the provider and the reason.
    pub fn from_provider(
        provider: &str,
        definition: &str,
        error: &crate::external::ProviderError,
    ) -> ApiError {
        use crate::external::FailureKind::*;
        let (status, problem) = match error.kind {
            NotFound => (StatusCode::NOT_FOUND, "external-secret-not-found"),
            Disabled => (StatusCode::CONFLICT, "external-secret-disabled"),
            Misconfigured => (StatusCode::UNPROCESSABLE_ENTITY, "connection-misconfigured"),
            InvalidResponse => (StatusCode::BAD_GATEWAY, "secret-manager-invalid-response"),
            AccessDenied => (StatusCode::BAD_GATEWAY, "secret-manager-access-denied"),
            TimedOut => (StatusCode::GATEWAY_TIMEOUT, "secret-manager-unreachable"),
            Unreachable | ProviderError => (StatusCode::BAD_GATEWAY, "secret-manager-unreachable"),
            Throttled => (StatusCode::SERVICE_UNAVAILABLE, "secret-manager-throttled"),
            CircuitOpen => (
                StatusCode::SERVICE_UNAVAILABLE,
                "secret-manager-unavailable",
            ),
        };
        let cause = format!(
            "{provider} for definition {definition:?}: {}",
            error.message
        );
        let detail = if error.kind.is_access_failure() {
            format!("{}: {cause}", crate::external::CANNOT_ACCESS)
        } else {
            cause
        };
        let mut api = ApiError::new(status, problem, detail)
            .with_member("provider", json!(provider))
            .with_member("reason", json!(error.kind.label()));
        if let Some(wait) = error.retry_after {
            let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
            // The member keeps the wait in a batch response, which has no header per name.
            api = api
                .with_header(http::header::RETRY_AFTER, &secs.to_string())
                .with_member("retry_after_secs", json!(secs));
        }
        api
    }
}
