//! A local GCP for tests: Google's OAuth token endpoint for service-account
//! JWT assertions and Secret Manager's access and list-versions APIs on one
//! loopback port, responding with Google's status codes and error bodies.
//!
//! The token endpoint checks each assertion's claims and its RS256 signature
//! against the public half of `fixtures/gcp-test-key.pem`, a test-only key.
//!
//! ```ignore
//! let gcp = GcpMock::start().await;
//! gcp.add_version("my-project", "db-password", "hunter2"); // version 1
//! // fetch(ctx, Some(&gcp.url()), Some(&gcp.token_url()), false, &gcp.service_account_key(), "my-project", "db-password", None)
//! ```

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use serde_json::{json, Value};

/// The service account's email, the `iss` every assertion must carry.
pub const CLIENT_EMAIL: &str = "keygate-test@keygate-test.iam.gserviceaccount.com";
/// The key id, the `kid` every assertion header must carry.
pub const PRIVATE_KEY_ID: &str = "5d0c2f6a8b9e41f3a7c6d1e0b2a49f8e7c6d5b4a";
/// Scope every assertion must request.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// The service account's private key (PKCS#8 PEM). A test-only key.
pub const PRIVATE_KEY_PEM: &str = include_str!("../fixtures/gcp-test-key.pem");
/// An RSA key unrelated to the service account, whose signatures the mock rejects. A test-only key.
pub const OTHER_PRIVATE_KEY_PEM: &str = include_str!("../fixtures/gcp-other-test-key.pem");
/// The public half of [`PRIVATE_KEY_PEM`] (PKCS#1 PEM).
const PUBLIC_KEY_PEM: &str = include_str!("../fixtures/gcp-test-key.pub.pem");
/// Lifetime of issued tokens, in seconds.
pub const TOKEN_LIFETIME_SECS: u64 = 3599;
/// Largest `exp - iat` an assertion may have, in seconds.
const MAX_ASSERTION_LIFETIME_SECS: u64 = 3600;
/// Clock difference tolerated for `iat`, in seconds.
const CLOCK_SKEW_SECS: u64 = 300;

/// The state of a secret version, as Secret Manager names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionState {
    Enabled,
    Disabled,
    Destroyed,
}

impl VersionState {
    fn name(self) -> &'static str {
        match self {
            VersionState::Enabled => "ENABLED",
            VersionState::Disabled => "DISABLED",
            VersionState::Destroyed => "DESTROYED",
        }
    }
}

/// A running mock. It stops accepting connections when dropped.
pub struct GcpMock {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: tokio::task::JoinHandle<()>,
}

struct Shared {
    state: Mutex<State>,
    token_requests: AtomicUsize,
    access_requests: AtomicUsize,
    list_requests: AtomicUsize,
}

struct State {
    /// Versions by `(project, secret)`; version N is at index N - 1.
    secrets: HashMap<(String, String), Vec<Version>>,
    forbidden: HashSet<(String, String)>,
    /// Secrets whose versions may be accessed but not listed.
    list_forbidden: HashSet<(String, String)>,
    valid_tokens: HashSet<String>,
    reject_all_tokens: bool,
    /// Secret Manager requests still to reject with 429, and their `Retry-After` in seconds.
    throttle: Option<(usize, u64)>,
    /// Maximum number of versions in one page of the versions list.
    max_page_size: usize,
    issued: u64,
}

struct Version {
    payload: Vec<u8>,
    state: VersionState,
}

impl GcpMock {
    /// Starts the mock on a free loopback port.
    pub async fn start() -> GcpMock {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the GCP mock");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                secrets: HashMap::new(),
                forbidden: HashSet::new(),
                list_forbidden: HashSet::new(),
                valid_tokens: HashSet::new(),
                reject_all_tokens: false,
                throttle: None,
                max_page_size: 25_000,
                issued: 0,
            }),
            token_requests: AtomicUsize::new(0),
            access_requests: AtomicUsize::new(0),
            list_requests: AtomicUsize::new(0),
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
        GcpMock {
            addr,
            shared,
            accept_task,
        }
    }

    /// Returns `http://127.0.0.1:{port}`, the Secret Manager endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Returns the token endpoint's URL, which assertions must name as `aud`.
    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Returns a JSON key file of the test service account. Its `token_uri`
    /// names a closed loopback port, so a client that used it would fail.
    pub fn service_account_key(&self) -> String {
        service_account_key(CLIENT_EMAIL, PRIVATE_KEY_PEM)
    }

    /// Adds version N+1 of `secret` in `project`, enabled, and returns N+1.
    pub fn add_version(&self, project: &str, secret: &str, value: &str) -> u64 {
        self.add_version_bytes(project, secret, value.as_bytes())
    }

    /// Adds a version whose payload is `payload`, which need not be UTF-8.
    pub fn add_version_bytes(&self, project: &str, secret: &str, payload: &[u8]) -> u64 {
        let mut state = self.state();
        let versions = state
            .secrets
            .entry((project.to_owned(), secret.to_owned()))
            .or_default();
        versions.push(Version {
            payload: payload.to_vec(),
            state: VersionState::Enabled,
        });
        versions.len() as u64
    }

    /// Sets the state of version `version`. Destroying a version deletes its
    /// payload. Panics when there is no such version.
    pub fn set_state(&self, project: &str, secret: &str, version: u64, new_state: VersionState) {
        let mut state = self.state();
        let target = state
            .secrets
            .get_mut(&(project.to_owned(), secret.to_owned()))
            .and_then(|versions| versions.get_mut((version as usize).wrapping_sub(1)))
            .expect("version exists");
        target.state = new_state;
        if new_state == VersionState::Destroyed {
            target.payload.clear();
        }
    }

    /// Denies the service account every permission on `secret` in `project`.
    pub fn forbid(&self, project: &str, secret: &str) {
        self.state()
            .forbidden
            .insert((project.to_owned(), secret.to_owned()));
    }

    /// Denies the service account the `secretmanager.versions.list`
    /// permission on `secret` in `project`, as the role
    /// roles/secretmanager.secretAccessor does, but keeps access to versions.
    pub fn forbid_list(&self, project: &str, secret: &str) {
        self.state()
            .list_forbidden
            .insert((project.to_owned(), secret.to_owned()));
    }

    /// Limits each page of the versions list to `size` versions.
    pub fn set_max_page_size(&self, size: usize) {
        self.state().max_page_size = size.max(1);
    }

    /// Rejects the next `requests` Secret Manager requests with 429
    /// `RESOURCE_EXHAUSTED` and `Retry-After: {retry_after_secs}`. Token
    /// requests are not throttled.
    pub fn throttle_next(&self, requests: usize, retry_after_secs: u64) {
        self.state().throttle = Some((requests, retry_after_secs));
    }

    /// Invalidates every token issued so far; tokens issued later work.
    pub fn revoke_tokens(&self) {
        self.state().valid_tokens.clear();
    }

    /// While `reject` is true, Secret Manager rejects every token with 401, including new ones.
    pub fn set_reject_tokens(&self, reject: bool) {
        self.state().reject_all_tokens = reject;
    }

    /// Requests to the token endpoint so far, successful or not.
    pub fn token_requests(&self) -> usize {
        self.shared.token_requests.load(Ordering::SeqCst)
    }

    /// `versions/{v}:access` requests so far, whatever their response.
    pub fn access_requests(&self) -> usize {
        self.shared.access_requests.load(Ordering::SeqCst)
    }

    /// Versions list requests (one per page) so far, whatever their response.
    pub fn list_requests(&self) -> usize {
        self.shared.list_requests.load(Ordering::SeqCst)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().expect("GCP mock state lock")
    }
}

impl Drop for GcpMock {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

/// Returns a service-account JSON key file for `client_email` with `private_key_pem`.
/// Its `token_uri` names port 9 on loopback, where nothing listens in tests.
pub fn service_account_key(client_email: &str, private_key_pem: &str) -> String {
    json!({
        "type": "service_account",
        "project_id": "keygate-test",
        "private_key_id": PRIVATE_KEY_ID,
        "private_key": private_key_pem,
        "client_email": client_email,
        "client_id": "109876543210987654321",
        "auth_uri": "http://127.0.0.1:9/auth",
        "token_uri": "http://127.0.0.1:9/token",
        "universe_domain": "googleapis.com",
    })
    .to_string()
}

async fn handle(
    shared: &Shared,
    addr: SocketAddr,
    request: http::Request<Incoming>,
) -> http::Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = parse_form(request.uri().query().unwrap_or("").as_bytes());
    let authorization = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };

    if method == Method::POST && path == "/token" {
        shared.token_requests.fetch_add(1, Ordering::SeqCst);
        return issue_token(shared, addr, &body);
    }
    let segments: Vec<String> = path
        .strip_prefix("/v1/projects/")
        .unwrap_or("")
        .split('/')
        .map(decode)
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, [project, "secrets", secret, "versions", version])
            if version.ends_with(":access") =>
        {
            shared.access_requests.fetch_add(1, Ordering::SeqCst);
            let version = version.trim_end_matches(":access");
            let secret = (project.to_string(), secret.to_string());
            let mut state = shared.state.lock().expect("GCP mock state lock");
            if let Some(refused) = access_error(&mut state, authorization.as_deref(), &secret) {
                return refused;
            }
            access_version(&state, &secret, version)
        }
        (&Method::GET, [project, "secrets", secret, "versions"]) => {
            shared.list_requests.fetch_add(1, Ordering::SeqCst);
            let secret = (project.to_string(), secret.to_string());
            let mut state = shared.state.lock().expect("GCP mock state lock");
            if let Some(refused) = access_error(&mut state, authorization.as_deref(), &secret) {
                return refused;
            }
            if state.list_forbidden.contains(&secret) {
                return google_error(
                    StatusCode::FORBIDDEN,
                    "PERMISSION_DENIED",
                    &format!(
                        "Permission 'secretmanager.versions.list' denied for resource 'projects/{}/secrets/{}' (or it may not exist).",
                        secret.0, secret.1
                    ),
                );
            }
            list_versions(&state, &secret, &query)
        }
        _ => google_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("{method} {path} is not an operation of this mock."),
        ),
    }
}

/// Issues a token for a JWT bearer grant after checking the assertion's header, signature and claims.
fn issue_token(shared: &Shared, addr: SocketAddr, body: &[u8]) -> http::Response<Full<Bytes>> {
    let form = parse_form(body);
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return oauth_error(
            "unsupported_grant_type",
            "This mock supports the JWT bearer grant only.",
        );
    }
    let assertion = form.get("assertion").map(String::as_str).unwrap_or("");
    let claims = match verify_assertion(assertion, &format!("http://{addr}/token")) {
        Ok(claims) => claims,
        Err(reason) => return oauth_error("invalid_grant", &reason),
    };
    if claims["iss"].as_str() != Some(CLIENT_EMAIL) {
        return oauth_error(
            "invalid_grant",
            "Invalid grant: the service account in iss does not exist.",
        );
    }

    let mut state = shared.state.lock().expect("GCP mock state lock");
    state.issued += 1;
    let token = format!("ya29.mock-gcp-access-token-{}", state.issued);
    state.valid_tokens.insert(token.clone());
    json_response(
        StatusCode::OK,
        &json!({
            "access_token": token,
            "expires_in": TOKEN_LIFETIME_SECS,
            "token_type": "Bearer",
        }),
    )
}

/// Returns the claims of `assertion` when its header, RS256 signature,
/// audience, scope and times are valid, or the reason it is not.
fn verify_assertion(assertion: &str, audience: &str) -> Result<Value, String> {
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else {
        return Err("Invalid JWT: the assertion does not have three parts.".to_owned());
    };
    let decode_json = |part: &str| -> Result<Value, String> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| "Invalid JWT: a part is not base64url.".to_owned())?;
        serde_json::from_slice(&bytes).map_err(|_| "Invalid JWT: a part is not JSON.".to_owned())
    };
    let header_json = decode_json(header)?;
    if header_json["alg"] != "RS256" || header_json["typ"] != "JWT" {
        return Err("Invalid JWT: the header must have alg RS256 and typ JWT.".to_owned());
    }
    if header_json["kid"] != PRIVATE_KEY_ID {
        return Err("Invalid JWT: kid names no key of this service account.".to_owned());
    }

    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| "Invalid JWT: the signature is not base64url.".to_owned())?;
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public_key_der())
        .verify(format!("{header}.{claims}").as_bytes(), &signature)
        .map_err(|_| "Invalid JWT Signature.".to_owned())?;

    let claims = decode_json(claims)?;
    if claims["aud"].as_str() != Some(audience) {
        return Err(format!("Invalid JWT: aud must be {audience}."));
    }
    let scopes = claims["scope"].as_str().unwrap_or("");
    if !scopes.split(' ').any(|scope| scope == SCOPE) {
        return Err(format!("Invalid JWT: scope must include {SCOPE}."));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let (Some(iat), Some(exp)) = (claims["iat"].as_u64(), claims["exp"].as_u64()) else {
        return Err("Invalid JWT: iat and exp must be numbers.".to_owned());
    };
    if iat > now + CLOCK_SKEW_SECS
        || exp <= now
        || exp <= iat
        || exp - iat > MAX_ASSERTION_LIFETIME_SECS
    {
        return Err(
            "Invalid JWT: the token must be short-lived (at most one hour), with iat and exp around the current time."
                .to_owned(),
        );
    }
    Ok(claims)
}

/// Returns the DER of [`PUBLIC_KEY_PEM`], the PKCS#1 `RSAPublicKey` ring verifies with.
fn public_key_der() -> Vec<u8> {
    let base64_text: String = PUBLIC_KEY_PEM
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    STANDARD
        .decode(base64_text.trim())
        .expect("the public key fixture is PEM")
}

/// Returns the error response for a request that fails the bearer token,
/// throttle or permission check, in Google's order, or `None`.
fn access_error(
    state: &mut State,
    authorization: Option<&str>,
    secret: &(String, String),
) -> Option<http::Response<Full<Bytes>>> {
    let bearer = authorization.and_then(|value| value.strip_prefix("Bearer "));
    let authorized =
        !state.reject_all_tokens && bearer.is_some_and(|token| state.valid_tokens.contains(token));
    if !authorized {
        let message = match bearer {
            None => "The request has no OAuth 2 access token.",
            Some(_) => "The request has an invalid or expired OAuth 2 access token.",
        };
        let mut response = google_error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", message);
        response.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            "Bearer realm=\"https://accounts.google.com/\""
                .parse()
                .expect("challenge header"),
        );
        return Some(response);
    }

    if let Some((remaining, retry_after)) = state.throttle {
        if remaining > 0 {
            state.throttle = (remaining > 1).then_some((remaining - 1, retry_after));
            let mut response = google_error(
                StatusCode::TOO_MANY_REQUESTS,
                "RESOURCE_EXHAUSTED",
                "Quota exceeded for Secret Manager access requests per minute.",
            );
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                retry_after.to_string().parse().expect("Retry-After header"),
            );
            return Some(response);
        }
    }

    if state.forbidden.contains(secret) {
        return Some(google_error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            &format!(
                "Permission 'secretmanager.versions.access' denied for resource 'projects/{}/secrets/{}' (or it may not exist).",
                secret.0, secret.1
            ),
        ));
    }
    None
}

/// Reads `versions/{version}:access`, where `latest` is the highest-numbered version whatever its state.
fn access_version(
    state: &State,
    secret: &(String, String),
    version: &str,
) -> http::Response<Full<Bytes>> {
    let secret_name = format!("projects/{}/secrets/{}", secret.0, secret.1);
    let Some(versions) = state.secrets.get(secret).filter(|v| !v.is_empty()) else {
        return google_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("Secret [{secret_name}] not found or has no versions."),
        );
    };
    let number = match version {
        "latest" => Some(versions.len() as u64),
        other => other.parse::<u64>().ok().filter(|&n| n >= 1),
    };
    let found = number.and_then(|n| Some((n, versions.get(n as usize - 1)?)));
    let Some((number, found)) = found else {
        return google_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("Secret Version [{secret_name}/versions/{version}] not found."),
        );
    };
    if found.state != VersionState::Enabled {
        return google_error(
            StatusCode::BAD_REQUEST,
            "FAILED_PRECONDITION",
            &format!(
                "Secret Version [{secret_name}/versions/{number}] is in {} state.",
                found.state.name()
            ),
        );
    }
    json_response(
        StatusCode::OK,
        &json!({
            "name": format!("{secret_name}/versions/{number}"),
            "payload": {"data": STANDARD.encode(&found.payload)},
        }),
    )
}

/// Lists versions newest first, with `filter=state:{STATE}` and paging.
fn list_versions(
    state: &State,
    secret: &(String, String),
    query: &HashMap<String, String>,
) -> http::Response<Full<Bytes>> {
    let secret_name = format!("projects/{}/secrets/{}", secret.0, secret.1);
    let Some(versions) = state.secrets.get(secret) else {
        return google_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("Secret [{secret_name}] not found."),
        );
    };

    let wanted_state = match query.get("filter").map(String::as_str) {
        None | Some("") => None,
        Some("state:ENABLED") => Some(VersionState::Enabled),
        Some("state:DISABLED") => Some(VersionState::Disabled),
        Some("state:DESTROYED") => Some(VersionState::Destroyed),
        Some(other) => {
            return google_error(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                &format!("The filter {other:?} is not supported by this mock."),
            )
        }
    };

    let matching: Vec<(u64, &Version)> = versions
        .iter()
        .enumerate()
        .rev()
        .map(|(index, version)| (index as u64 + 1, version))
        .filter(|(_, version)| wanted_state.is_none_or(|s| version.state == s))
        .collect();

    let requested_size = query
        .get("pageSize")
        .and_then(|size| size.parse::<usize>().ok())
        .filter(|&size| size > 0)
        .unwrap_or(usize::MAX);
    let page_size = requested_size.min(state.max_page_size);
    let start: usize = match query.get("pageToken").map(String::as_str) {
        None | Some("") => 0,
        Some(token) => match token.strip_prefix("offset-").and_then(|n| n.parse().ok()) {
            Some(offset) => offset,
            None => {
                return google_error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_ARGUMENT",
                    "The page token is not valid.",
                )
            }
        },
    };

    let end = start.saturating_add(page_size).min(matching.len());
    let page: Vec<Value> = matching
        .get(start..end)
        .unwrap_or(&[])
        .iter()
        .map(|(number, version)| {
            json!({
                "name": format!("{secret_name}/versions/{number}"),
                "createTime": "2026-01-01T00:00:00Z",
                "state": version.state.name(),
            })
        })
        .collect();

    let mut body = json!({"versions": page, "totalSize": matching.len()});
    if end < matching.len() {
        body["nextPageToken"] = json!(format!("offset-{end}"));
    }
    json_response(StatusCode::OK, &body)
}

/// Google's API error body: `{"error": {"code", "message", "status"}}`.
fn google_error(status: StatusCode, name: &str, message: &str) -> http::Response<Full<Bytes>> {
    json_response(
        status,
        &json!({"error": {"code": status.as_u16(), "message": message, "status": name}}),
    )
}

/// Google's OAuth error body, always with status 400.
fn oauth_error(error: &str, description: &str) -> http::Response<Full<Bytes>> {
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({"error": error, "error_description": description}),
    )
}

fn json_response(status: StatusCode, body: &Value) -> http::Response<Full<Bytes>> {
    http::Response::builder()
        .status(status)
        .header(
            http::header::CONTENT_TYPE,
            "application/json; charset=UTF-8",
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
