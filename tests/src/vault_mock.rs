//! A stand-in for a HashiCorp Vault server, for tests of keygate's Vault
//! client: plain HTTP on a loopback port, following Vault's documented HTTP
//! API for what that client uses.
//!
//! It serves KV v2 reads (`GET /v1/{mount}/data/{path}[?version=N]`) with
//! `X-Vault-Token`, and AppRole logins (`POST /v1/auth/{mount}/login`).
//! Errors use Vault's `{"errors": [...]}` body and Vault's statuses:
//!
//! - 403 "permission denied" for a missing, unknown, expired or revoked token
//!   and for a forbidden path;
//! - 404 with empty errors for a missing secret or version, and 404 with the
//!   version's metadata for a deleted or destroyed version;
//! - 400 "invalid role or secret ID" for a failed login;
//! - 503 "Vault is sealed", and 429 for an exceeded rate limit quota.
//!
//! ```ignore
//! let vault = VaultMock::start().await;
//! vault.add_token("root-token");
//! vault.put("secret", "app/db", json!({"password": "pw"}));
//! // Point a connection's `address` at vault.url().
//! ```
//!
//! The server stops when the value is dropped.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::task::JoinSet;

/// A running mock Vault server.
pub struct VaultMock {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: tokio::task::JoinHandle<()>,
}

struct Shared {
    state: Mutex<State>,
    requests: AtomicUsize,
    logins: AtomicUsize,
    reads: AtomicUsize,
}

#[derive(Default)]
struct State {
    /// Valid tokens and when each expires (`None`: never).
    tokens: HashMap<String, Option<Instant>>,
    /// Tokens issued by AppRole logins, in order.
    issued: Vec<String>,
    /// AppRole roles by (auth mount, role id): the secret id and the lease of
    /// the tokens a login issues.
    approles: HashMap<(String, String), (String, Duration)>,
    /// (mount, path) pairs every token is denied.
    forbidden: HashSet<(String, String)>,
    /// KV v2 secrets by (mount, path); version N is at index N - 1.
    secrets: HashMap<(String, String), Vec<SecretVersion>>,
    /// The namespace every request must name in `X-Vault-Namespace`.
    namespace: Option<String>,
    sealed: bool,
    /// `Retry-After` of the 429 every request gets while set.
    rate_limited: Option<Duration>,
}

struct SecretVersion {
    data: Value,
    created_time: String,
    /// RFC 3339 time, or empty while the version is not deleted.
    deletion_time: String,
    destroyed: bool,
}

impl VaultMock {
    /// Starts the server on a free port of 127.0.0.1. It has no tokens,
    /// roles or secrets yet, no namespace, and is unsealed.
    pub async fn start() -> VaultMock {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the mock Vault server");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            requests: AtomicUsize::new(0),
            logins: AtomicUsize::new(0),
            reads: AtomicUsize::new(0),
        });
        let accept_shared = shared.clone();
        let accept_task = tokio::spawn(async move {
            // Dropping the set when this task is aborted also ends every
            // open connection.
            let mut connections = JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let shared = accept_shared.clone();
                let service = hyper::service::service_fn(move |request| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(shared.handle(request).await) }
                });
                connections.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        VaultMock {
            addr,
            shared,
            accept_task,
        }
    }

    /// Returns the server's base URL, `http://127.0.0.1:PORT`, the value of a
    /// connection's `address`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().expect("mock Vault state lock")
    }

    /// Makes `token` valid, without expiry, until it is revoked.
    pub fn add_token(&self, token: &str) {
        self.state().tokens.insert(token.to_owned(), None);
    }

    /// Revokes one token, issued or added.
    pub fn revoke_token(&self, token: &str) {
        let mut state = self.state();
        state.tokens.remove(token);
        state.issued.retain(|issued| issued != token);
    }

    /// Revokes every token AppRole logins have issued so far.
    pub fn revoke_issued_tokens(&self) {
        let mut state = self.state();
        for token in std::mem::take(&mut state.issued) {
            state.tokens.remove(&token);
        }
    }

    /// Tokens AppRole logins have issued and that are not revoked, oldest first.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state().issued.clone()
    }

    /// Adds an AppRole role at auth mount `mount` (Vault's default is
    /// `approle`). A login with `role_id` and `secret_id` issues a token with
    /// a lease of `lease`, after which reads with it get 403.
    pub fn add_approle(&self, mount: &str, role_id: &str, secret_id: &str, lease: Duration) {
        self.state().approles.insert(
            (mount.to_owned(), role_id.to_owned()),
            (secret_id.to_owned(), lease),
        );
    }

    /// Denies every token reads of `path` in KV v2 mount `mount`, as a
    /// policy without `read` on `{mount}/data/{path}` would.
    pub fn forbid(&self, mount: &str, path: &str) {
        self.state()
            .forbidden
            .insert((mount.to_owned(), path.to_owned()));
    }

    /// Writes `data` (a JSON object) as a new version of `path` in KV v2
    /// mount `mount`, and returns the version number, starting at 1.
    pub fn put(&self, mount: &str, path: &str, data: Value) -> u32 {
        assert!(data.is_object(), "KV v2 data must be a JSON object");
        let mut state = self.state();
        let versions = state
            .secrets
            .entry((mount.to_owned(), path.to_owned()))
            .or_default();
        versions.push(SecretVersion {
            data,
            created_time: rfc3339_now(),
            deletion_time: String::new(),
            destroyed: false,
        });
        versions.len() as u32
    }

    /// Soft-deletes `version`, as `vault kv delete -versions=N` does.
    pub fn delete_version(&self, mount: &str, path: &str, version: u32) {
        self.with_version(mount, path, version, |v| v.deletion_time = rfc3339_now());
    }

    /// Destroys `version`, as `vault kv destroy -versions=N` does: its data is gone.
    pub fn destroy_version(&self, mount: &str, path: &str, version: u32) {
        self.with_version(mount, path, version, |v| {
            v.destroyed = true;
            v.data = Value::Null;
        });
    }

    fn with_version(
        &self,
        mount: &str,
        path: &str,
        version: u32,
        change: impl FnOnce(&mut SecretVersion),
    ) {
        let mut state = self.state();
        let entry = state
            .secrets
            .get_mut(&(mount.to_owned(), path.to_owned()))
            .and_then(|versions| versions.get_mut(version.checked_sub(1)? as usize));
        change(entry.unwrap_or_else(|| panic!("no version {version} of {mount}/{path}")));
    }

    /// Requires every request to carry `X-Vault-Namespace: namespace`
    /// (`None`: no namespace header). Tokens, roles and secrets live in
    /// that namespace, so another namespace finds no token and every request
    /// there gets 403 "permission denied".
    pub fn set_namespace(&self, namespace: Option<&str>) {
        self.state().namespace = namespace.map(str::to_owned);
    }

    /// Seals or unseals the server. While sealed, every request gets 503
    /// `{"errors":["Vault is sealed"]}`.
    pub fn set_sealed(&self, sealed: bool) {
        self.state().sealed = sealed;
    }

    /// While `Some`, every request gets 429 with this `Retry-After` (whole
    /// seconds), as Vault returns for an exceeded rate limit quota.
    pub fn set_rate_limited(&self, retry_after: Option<Duration>) {
        self.state().rate_limited = retry_after;
    }

    /// Requests received, of any kind and outcome.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// AppRole login requests received, whatever their outcome.
    pub fn logins(&self) -> usize {
        self.shared.logins.load(Ordering::SeqCst)
    }

    /// KV v2 read requests received, whatever their outcome.
    pub fn reads(&self) -> usize {
        self.shared.reads.load(Ordering::SeqCst)
    }
}

impl Drop for VaultMock {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl Shared {
    async fn handle(&self, request: http::Request<Incoming>) -> http::Response<Full<Bytes>> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let (parts, body) = request.into_parts();
        let body = match body.collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) => {
                return errors(
                    StatusCode::BAD_REQUEST,
                    &[&format!("reading the body failed: {e}")],
                )
            }
        };
        let Some(route) = parts.uri.path().strip_prefix("/v1/") else {
            return errors(StatusCode::NOT_FOUND, &[]);
        };
        let route = percent_encoding::percent_decode_str(route)
            .decode_utf8_lossy()
            .into_owned();
        let is_login =
            parts.method == Method::POST && route.starts_with("auth/") && route.ends_with("/login");
        if is_login {
            self.logins.fetch_add(1, Ordering::SeqCst);
        } else if parts.method == Method::GET {
            self.reads.fetch_add(1, Ordering::SeqCst);
        }

        let mut state = self.state.lock().expect("mock Vault state lock");
        if state.sealed {
            return errors(StatusCode::SERVICE_UNAVAILABLE, &["Vault is sealed"]);
        }
        if let Some(retry_after) = state.rate_limited {
            let mut response = errors(
                StatusCode::TOO_MANY_REQUESTS,
                &[&format!(
                    "request path {route:?}: rate limit quota exceeded"
                )],
            );
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                retry_after
                    .as_secs()
                    .to_string()
                    .parse()
                    .expect("header value"),
            );
            return response;
        }
        if header(&parts.headers, "x-vault-namespace") != state.namespace.as_deref() {
            return permission_denied();
        }

        if is_login {
            let mount = &route["auth/".len()..route.len() - "/login".len()];
            return state.log_in(mount, &body);
        }
        let token = header(&parts.headers, "x-vault-token").unwrap_or_default();
        if !state.token_is_valid(token) {
            return permission_denied();
        }
        if parts.method != Method::GET {
            return errors(StatusCode::METHOD_NOT_ALLOWED, &[]);
        }
        state.read(&route, parts.uri.query().unwrap_or(""))
    }
}

impl State {
    fn token_is_valid(&self, token: &str) -> bool {
        match self.tokens.get(token) {
            Some(None) => true,
            Some(Some(expires_at)) => Instant::now() < *expires_at,
            None => false,
        }
    }

    fn log_in(&mut self, mount: &str, body: &[u8]) -> http::Response<Full<Bytes>> {
        let body: Value = match serde_json::from_slice(body) {
            Ok(body) => body,
            Err(e) => {
                return errors(
                    StatusCode::BAD_REQUEST,
                    &[&format!("failed to parse JSON input: {e}")],
                )
            }
        };
        let Some(role_id) = body.get("role_id").and_then(Value::as_str) else {
            return errors(StatusCode::BAD_REQUEST, &["missing role_id"]);
        };
        let secret_id = body.get("secret_id").and_then(Value::as_str).unwrap_or("");
        let Some((expected, lease)) = self
            .approles
            .get(&(mount.to_owned(), role_id.to_owned()))
            .cloned()
        else {
            if self.approles.keys().any(|(m, _)| m == mount) {
                return errors(StatusCode::BAD_REQUEST, &["invalid role or secret ID"]);
            }
            // Without an AppRole mount there, Vault finds no unauthenticated
            // login path and requires a token.
            return permission_denied();
        };
        if secret_id != expected {
            return errors(StatusCode::BAD_REQUEST, &["invalid role or secret ID"]);
        }

        let token = format!("hvs.mock{}", random_suffix());
        self.tokens
            .insert(token.clone(), Some(Instant::now() + lease));
        self.issued.push(token.clone());
        json_response(
            StatusCode::OK,
            &json!({
                "request_id": request_id(),
                "lease_id": "",
                "renewable": false,
                "lease_duration": 0,
                "data": null,
                "wrap_info": null,
                "warnings": null,
                "auth": {
                    "client_token": token,
                    "accessor": format!("accessor{}", random_suffix()),
                    "policies": ["default"],
                    "token_policies": ["default"],
                    "metadata": {"role_name": role_id},
                    "lease_duration": lease.as_secs(),
                    "renewable": true,
                    "entity_id": "",
                    "token_type": "service",
                    "orphan": true,
                }
            }),
        )
    }

    /// Serves `GET /v1/{mount}/data/{path}`, the route already percent-decoded.
    fn read(&self, route: &str, query: &str) -> http::Response<Full<Bytes>> {
        let Some((mount, path)) = self.split_data_route(route) else {
            return errors(
                StatusCode::NOT_FOUND,
                &[&format!(
                    "no handler for route {route:?}. route entry not found."
                )],
            );
        };
        if self.forbidden.contains(&(mount.clone(), path.clone())) {
            return permission_denied();
        }
        let mut requested = None;
        for (name, value) in form_pairs(query) {
            if name == "version" {
                match value.parse::<u32>() {
                    Ok(version) => requested = Some(version),
                    Err(_) => {
                        return errors(
                            StatusCode::BAD_REQUEST,
                            &[&format!(
                                "error converting input {value} for field \"version\""
                            )],
                        )
                    }
                }
            }
        }
        let Some(versions) = self.secrets.get(&(mount, path)) else {
            return errors(StatusCode::NOT_FOUND, &[]);
        };
        // Version 0, like no version, means the current one.
        let number = requested
            .filter(|v| *v > 0)
            .unwrap_or(versions.len() as u32);
        let Some(version) = versions.get(number as usize - 1) else {
            return errors(StatusCode::NOT_FOUND, &[]);
        };

        let deleted_or_destroyed = version.destroyed || !version.deletion_time.is_empty();
        let body = json!({
            "request_id": request_id(),
            "lease_id": "",
            "renewable": false,
            "lease_duration": 0,
            "data": {
                "data": if deleted_or_destroyed { Value::Null } else { version.data.clone() },
                "metadata": {
                    "created_time": version.created_time,
                    "custom_metadata": null,
                    "deletion_time": version.deletion_time,
                    "destroyed": version.destroyed,
                    "version": number,
                },
            },
            "wrap_info": null,
            "warnings": null,
            "auth": null,
        });
        let status = if deleted_or_destroyed {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        };
        json_response(status, &body)
    }

    /// Splits `{mount}/data/{path}` at the mount of a stored secret, since a
    /// mount may itself contain `/`.
    fn split_data_route(&self, route: &str) -> Option<(String, String)> {
        let mounts: HashSet<&str> = self
            .secrets
            .keys()
            .chain(self.forbidden.iter())
            .map(|(mount, _)| mount.as_str())
            .collect();
        mounts.into_iter().find_map(|mount| {
            let path = route.strip_prefix(mount)?.strip_prefix("/data/")?;
            (!path.is_empty()).then(|| (mount.to_owned(), path.to_owned()))
        })
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
}

fn form_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

fn json_response(status: StatusCode, body: &Value) -> http::Response<Full<Bytes>> {
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}

/// Returns Vault's error body, `{"errors": [...]}`.
fn errors(status: StatusCode, messages: &[&str]) -> http::Response<Full<Bytes>> {
    json_response(status, &json!({ "errors": messages }))
}

fn permission_denied() -> http::Response<Full<Bytes>> {
    errors(StatusCode::FORBIDDEN, &["permission denied"])
}

fn request_id() -> String {
    format!("mock-{}", random_suffix())
}

/// Returns 16 hex digits that differ between calls.
fn random_suffix() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let count = COUNTER.fetch_add(1, Ordering::Relaxed) as u64;
    format!("{:016x}", (u64::from(nanos) << 20) ^ count)
}

/// Returns the current UTC time in RFC 3339 with seconds, as Vault's
/// `created_time` and `deletion_time` are written.
fn rfc3339_now() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let (days, second_of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_date(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

/// Converts days since 1970-01-01 to a Gregorian (year, month, day).
fn civil_date(mut days: u64) -> (u64, u64, u64) {
    let is_leap = |year: u64| {
        (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
    };
    let mut year = 1970;
    loop {
        let year_days = if is_leap(year) { 366 } else { 365 };
        if days < year_days {
            break;
        }
        days -= year_days;
        year += 1;
    }
    let february = if is_leap(year) { 29 } else { 28 };
    let mut month = 1;
    for month_days in [31, february, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31] {
        if days < month_days {
            break;
        }
        days -= month_days;
        month += 1;
    }
    (year, month, days + 1)
}
