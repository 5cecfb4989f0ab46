//! A local Azure for tests: Entra ID's client-credentials token endpoint and
//! Key Vault's get-secret API on one loopback port, responding with the
//! status codes and error bodies Azure documents.
//!
//! One server plays both roles, so `url()` is both the authority URL and the
//! vault URL. It accepts one application: [`TENANT_ID`], [`CLIENT_ID`] and
//! [`CLIENT_SECRET`].
//!
//! ```ignore
//! let azure = AzureMock::start().await;
//! let version = azure.set_secret("db-password", "hunter2");
//! // fetch(ctx, TENANT_ID, CLIENT_ID, Some(&azure.url()), CLIENT_SECRET, &azure.url(), "db-password", None)
//! ```

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// The only tenant the token endpoint accepts.
pub const TENANT_ID: &str = "7f3c1e52-keygate-test-tenant";
/// The only application the token endpoint accepts.
pub const CLIENT_ID: &str = "b91d4a07-keygate-test-client";
/// The client secret of [`CLIENT_ID`]; a test-only value.
pub const CLIENT_SECRET: &str = "kg~TestClientSecret.5Hq8Zr2Lw";
/// Scope a Key Vault token must be requested for.
pub const VAULT_SCOPE: &str = "https://vault.azure.net/.default";
/// Lifetime of issued tokens, in seconds, as Entra ID usually reports it.
pub const TOKEN_LIFETIME_SECS: u64 = 3599;

/// A running mock. It stops accepting connections when dropped.
pub struct AzureMock {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: tokio::task::JoinHandle<()>,
}

struct Shared {
    state: Mutex<State>,
    token_requests: AtomicUsize,
    secret_requests: AtomicUsize,
    unauthorized_responses: AtomicUsize,
}

#[derive(Default)]
struct State {
    /// Versions of each secret in creation order; the last is the current one.
    secrets: HashMap<String, Vec<SecretVersion>>,
    forbidden: HashSet<String>,
    valid_tokens: HashSet<String>,
    reject_all_tokens: bool,
    /// Key Vault requests still to reject with 429, and their `Retry-After` in seconds.
    throttle: Option<(usize, u64)>,
    issued: u64,
}

struct SecretVersion {
    id: String,
    value: String,
    enabled: bool,
}

impl AzureMock {
    /// Starts the mock on a free loopback port.
    pub async fn start() -> AzureMock {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the Azure mock");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            token_requests: AtomicUsize::new(0),
            secret_requests: AtomicUsize::new(0),
            unauthorized_responses: AtomicUsize::new(0),
        });
        let accept_shared = shared.clone();
        let accept_task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let shared = accept_shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, addr, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        AzureMock {
            addr,
            shared,
            accept_task,
        }
    }

    /// Returns `http://127.0.0.1:{port}`: the authority URL and the vault URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a new enabled version of secret `name`, which becomes its current
    /// version, and returns the version id (32 hex digits, as Key Vault's).
    pub fn set_secret(&self, name: &str, value: &str) -> String {
        let mut state = self.state();
        state.issued += 1;
        let id = format!("{:032x}", 0xa2f0_0000_u64 + state.issued);
        state
            .secrets
            .entry(name.to_owned())
            .or_default()
            .push(SecretVersion {
                id: id.clone(),
                value: value.to_owned(),
                enabled: true,
            });
        id
    }

    /// Enables or disables version `version` of `name`, or its current
    /// version when `version` is `None`. Panics when there is no such version.
    pub fn set_enabled(&self, name: &str, version: Option<&str>, enabled: bool) {
        let mut state = self.state();
        let versions = state.secrets.get_mut(name).expect("secret exists");
        let target = match version {
            Some(id) => versions
                .iter_mut()
                .find(|v| v.id == id)
                .expect("version exists"),
            None => versions.last_mut().expect("secret has a version"),
        };
        target.enabled = enabled;
    }

    /// Denies the application the get permission on secret `name`.
    pub fn forbid(&self, name: &str) {
        self.state().forbidden.insert(name.to_owned());
    }

    /// Rejects the next `requests` Key Vault requests with 429 and
    /// `Retry-After: {retry_after_secs}`. Token requests are not throttled.
    pub fn throttle_next(&self, requests: usize, retry_after_secs: u64) {
        self.state().throttle = Some((requests, retry_after_secs));
    }

    /// Invalidates every token issued so far; tokens issued later work.
    pub fn revoke_tokens(&self) {
        self.state().valid_tokens.clear();
    }

    /// While `reject` is true, Key Vault rejects every token with 401, including new ones.
    pub fn set_reject_tokens(&self, reject: bool) {
        self.state().reject_all_tokens = reject;
    }

    /// Requests to the token endpoint so far, successful or not.
    pub fn token_requests(&self) -> usize {
        self.shared.token_requests.load(Ordering::SeqCst)
    }

    /// Requests to Key Vault's secrets API so far, whatever their response.
    pub fn secret_requests(&self) -> usize {
        self.shared.secret_requests.load(Ordering::SeqCst)
    }

    /// Key Vault requests rejected with the 401 challenge so far.
    pub fn unauthorized_responses(&self) -> usize {
        self.shared.unauthorized_responses.load(Ordering::SeqCst)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().expect("Azure mock state lock")
    }
}

impl Drop for AzureMock {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

async fn handle(
    shared: &Shared,
    addr: SocketAddr,
    request: http::Request<Incoming>,
) -> http::Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let authorization = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };

    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::POST, [tenant, "oauth2", "v2.0", "token"]) => {
            shared.token_requests.fetch_add(1, Ordering::SeqCst);
            issue_token(shared, &decode(tenant), &body)
        }
        (&Method::GET, ["secrets", name, rest @ ..]) if rest.len() <= 1 => {
            shared.secret_requests.fetch_add(1, Ordering::SeqCst);
            let version = rest.first().map(|v| decode(v)).filter(|v| !v.is_empty());
            let response = get_secret(
                shared,
                addr,
                authorization.as_deref(),
                &query,
                &decode(name),
                version.as_deref(),
            );
            if response.status() == StatusCode::UNAUTHORIZED {
                shared.unauthorized_responses.fetch_add(1, Ordering::SeqCst);
            }
            response
        }
        _ => vault_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            None,
            &format!("{method} {path} is not an operation of this mock"),
        ),
    }
}

/// Issues a token for the client-credentials grant, as Entra ID's v2.0 token endpoint does.
fn issue_token(shared: &Shared, tenant: &str, body: &[u8]) -> http::Response<Full<Bytes>> {
    let form = parse_form(body);
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    if tenant != TENANT_ID {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!("Tenant '{tenant}' is unknown to this mock. Check the tenant id."),
        );
    }
    if field("grant_type") != "client_credentials" {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "This mock supports the client_credentials grant only.",
        );
    }
    if field("client_id") != CLIENT_ID {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!(
                "Application '{}' is not registered in tenant '{tenant}'.",
                field("client_id")
            ),
        );
    }
    if field("client_secret") != CLIENT_SECRET {
        return entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            "The client secret is not valid. Send the secret's value, not its id.",
        );
    }
    if field("scope") != VAULT_SCOPE {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            70011,
            &format!(
                "The scope '{}' is not valid for this mock; request {VAULT_SCOPE}.",
                field("scope")
            ),
        );
    }

    let mut state = shared.state.lock().expect("Azure mock state lock");
    state.issued += 1;
    let token = format!("mock-entra-access-token-{}", state.issued);
    state.valid_tokens.insert(token.clone());
    json_response(
        StatusCode::OK,
        &json!({
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME_SECS,
            "ext_expires_in": TOKEN_LIFETIME_SECS,
            "access_token": token,
        }),
    )
}

/// Key Vault's `GET /secrets/{name}/{version}`.
fn get_secret(
    shared: &Shared,
    addr: SocketAddr,
    authorization: Option<&str>,
    query: &str,
    name: &str,
    version: Option<&str>,
) -> http::Response<Full<Bytes>> {
    let mut state = shared.state.lock().expect("Azure mock state lock");
    let bearer = authorization.and_then(|value| value.strip_prefix("Bearer "));
    let authorized =
        !state.reject_all_tokens && bearer.is_some_and(|token| state.valid_tokens.contains(token));
    if !authorized {
        let message = match bearer {
            None => "The request has no Bearer token.",
            Some(_) => "The Bearer token is not valid for this vault.",
        };
        let mut response = vault_error(StatusCode::UNAUTHORIZED, "Unauthorized", None, message);
        let challenge = format!(
            "Bearer authorization=\"http://{addr}/{TENANT_ID}\", resource=\"https://vault.azure.net\""
        );
        response.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            challenge.parse().expect("challenge header"),
        );
        return response;
    }

    if let Some((remaining, retry_after)) = state.throttle {
        if remaining > 0 {
            state.throttle = (remaining > 1).then_some((remaining - 1, retry_after));
            let mut response = vault_error(
                StatusCode::TOO_MANY_REQUESTS,
                "Throttled",
                None,
                "Too many requests were sent to this vault. Retry later.",
            );
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                retry_after.to_string().parse().expect("Retry-After header"),
            );
            return response;
        }
    }

    let api_version = parse_form(query.as_bytes()).remove("api-version");
    if api_version.is_none() {
        return vault_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            None,
            "The request has no api-version query parameter.",
        );
    }
    if state.forbidden.contains(name) {
        return vault_error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            Some("AccessDenied"),
            &format!("Application '{CLIENT_ID}' lacks the secrets get permission on this vault."),
        );
    }

    let found = state.secrets.get(name).and_then(|versions| match version {
        Some(id) => versions.iter().find(|v| v.id == id),
        None => versions.last(),
    });
    let Some(found) = found else {
        let what = match version {
            Some(id) => format!("{name}/{id}"),
            None => name.to_owned(),
        };
        return vault_error(
            StatusCode::NOT_FOUND,
            "SecretNotFound",
            None,
            &format!("Secret {what} does not exist in this vault."),
        );
    };
    if !found.enabled {
        return vault_error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            Some("SecretDisabled"),
            "Reading a disabled secret is not allowed.",
        );
    }
    json_response(
        StatusCode::OK,
        &json!({
            "value": found.value,
            "id": format!("http://{addr}/secrets/{name}/{}", found.id),
            "attributes": {
                "enabled": true,
                "created": 1_700_000_000,
                "updated": 1_700_000_000,
                "recoveryLevel": "Recoverable+Purgeable",
            },
            "tags": {},
        }),
    )
}

/// Key Vault's error body: `{"error": {"code", "message", "innererror"?: {"code"}}}`.
fn vault_error(
    status: StatusCode,
    code: &str,
    inner_code: Option<&str>,
    message: &str,
) -> http::Response<Full<Bytes>> {
    let mut error = json!({"code": code, "message": message});
    if let Some(inner) = inner_code {
        error["innererror"] = json!({"code": inner});
    }
    json_response(status, &json!({"error": error}))
}

/// Entra ID's OAuth error body, with the trace lines Entra appends to the description.
fn entra_error(
    status: StatusCode,
    error: &str,
    aadsts: u32,
    description: &str,
) -> http::Response<Full<Bytes>> {
    json_response(
        status,
        &json!({
            "error": error,
            "error_description": format!(
                "AADSTS{aadsts}: {description}\r\nTrace ID: 00000000-0000-0000-0000-000000000001\r\nCorrelation ID: 00000000-0000-0000-0000-000000000002\r\nTimestamp: 2026-01-01 00:00:00Z"
            ),
            "error_codes": [aadsts],
            "timestamp": "2026-01-01 00:00:00Z",
            "trace_id": "00000000-0000-0000-0000-000000000001",
            "correlation_id": "00000000-0000-0000-0000-000000000002",
        }),
    )
}

fn json_response(status: StatusCode, body: &Value) -> http::Response<Full<Bytes>> {
    http::Response::builder()
        .status(status)
        .header(
            http::header::CONTENT_TYPE,
            "application/json; charset=utf-8",
        )
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}

/// Parses `application/x-www-form-urlencoded` text (a body or a query string).
fn parse_form(text: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(text)
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (
                decode(&name.replace('+', " ")),
                decode(&value.replace('+', " ")),
            )
        })
        .collect()
}

fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}
