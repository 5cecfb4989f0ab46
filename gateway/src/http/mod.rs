//! The HTTP front of every listener: routing, authentication, errors and metrics.

pub mod body;
mod handlers;
pub mod openapi;
pub mod problem;
pub mod request_id;
pub mod router;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use hyper::body::Incoming;
use keygate_auth::{AuthError, ClientIdentity, Principal, Scope};
use tracing::{debug, info, warn, Instrument};

use body::Response;
use problem::ApiError;
pub use router::{ListenerKind, Route};

use crate::state::SharedState;

/// Facts about a connection, known before any request on it.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub listener: ListenerKind,
    pub peer: SocketAddr,
    /// The verified client certificate, on the agent listener.
    pub client: Option<ClientIdentity>,
}

/// Requests on API listeners whose handler has not returned yet. Agent
/// sessions, which last for hours, are on the agent listener.
static API_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Returns how many requests of API listeners are being handled at this
/// moment, in this process.
// NOTE: a batch resolution counts as one request, so the per-name lookups it
// runs at once do not batch their audit records.
pub fn api_requests_in_flight() -> usize {
    API_IN_FLIGHT.load(Ordering::Relaxed)
}

/// Counts an API request in [`API_IN_FLIGHT`] while it lives.
struct InFlight;

impl InFlight {
    fn start(listener: ListenerKind) -> Option<InFlight> {
        (listener == ListenerKind::Api).then(|| {
            API_IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
            InFlight
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        API_IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one request: routes it, runs its handler, and turns errors into problem documents.
pub async fn handle(
    state: SharedState,
    conn: Arc<ConnInfo>,
    mut req: http::Request<Incoming>,
) -> Result<Response, std::convert::Infallible> {
    let _in_flight = InFlight::start(conn.listener);
    let request_id = request_id::next();
    req.extensions_mut()
        .insert(crate::audit::RequestId(request_id.clone()));
    let method = req.method().clone();
    let route = router::route(conn.listener, &method, req.uri().path());
    let template = route.as_ref().map(Route::template).unwrap_or("unmatched");
    let span = tracing::info_span!(
        "request",
        request.id = %request_id,
        listener = conn.listener.as_str(),
        method = %method,
        route = template,
    );
    let result = match route {
        // Boxed, because hyper keeps the service future's allocation for as
        // long as the response body streams: inline, the largest handler's
        // state made every agent session hold about 34 KiB for its lifetime.
        Ok(route) => {
            Box::pin(handlers::dispatch(&state, &conn, route, req))
                .instrument(span.clone())
                .await
        }
        Err(e) => Err(e),
    };
    let mut response = match result {
        Ok(response) => response,
        Err(error) => {
            span.in_scope(|| {
                if error.status.is_server_error() {
                    warn!(status = error.status.as_u16(), detail = %error.detail, "request failed");
                } else if matches!(error.status.as_u16(), 401 | 403) {
                    // Rejected credentials and permissions matter to an SRE; others are the caller's bugs.
                    info!(status = error.status.as_u16(), client.addr = %conn.peer, detail = %error.detail, "request rejected");
                } else {
                    debug!(status = error.status.as_u16(), detail = %error.detail, "request rejected");
                }
            });
            error.into_response()
        }
    };
    let headers = response.headers_mut();
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        headers.insert("x-request-id", value);
    }
    state
        .metrics
        .http_requests
        .with_label_values(&[conn.listener.as_str(), template, response.status().as_str()])
        .inc();
    Ok(response)
}

/// Verifies the request's bearer token against the connection's client certificate, if any.
///
/// keygate's own tokens are checked by `state.verifier`, and tokens of a
/// trusted issuer by that issuer's verifier, which may refetch its key set first.
pub async fn authenticate(
    state: &SharedState,
    conn: &ConnInfo,
    headers: &HeaderMap,
) -> Result<Principal, ApiError> {
    let thumbprint = conn.client.as_ref().map(|c| c.thumbprint.as_str());
    let result = match bearer_token(headers) {
        Ok(token) => verify_token(state, token, thumbprint).await,
        Err(error) => Err(error),
    };
    result.map_err(|error| {
        state
            .metrics
            .auth_failures
            .with_label_values(&[error.reason()])
            .inc();
        debug!(reason = error.reason(), "token rejected");
        ApiError::unauthorized(&error)
    })
}

/// Picks the verifier by the token's unverified `iss`; nothing else is read before verification.
async fn verify_token(
    state: &SharedState,
    token: &str,
    thumbprint: Option<&str>,
) -> Result<Principal, AuthError> {
    // Without trusted issuers there is nothing to route, so the common case
    // skips decoding the claims before the verified-token cache.
    if state.trusted_issuers.is_empty() {
        return state.verifier.verify(token, thumbprint);
    }
    match keygate_auth::unverified_issuer(token) {
        Some(issuer) if issuer != state.config.auth.issuer => {
            match state.trusted_issuers.get(&issuer) {
                Some(trusted) => trusted.verify(token, thumbprint).await,
                None => Err(AuthError::InvalidIssuer),
            }
        }
        // keygate's own tokens, and tokens without a readable `iss`, which
        // keygate's verifier rejects with the precise reason.
        _ => state.verifier.verify(token, thumbprint),
    }
}

fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(AuthError::MissingToken)?
        .to_str()
        .map_err(|_| AuthError::Malformed("the Authorization header is not ASCII".into()))?;
    let (scheme, token) = value.split_once(' ').ok_or_else(|| {
        AuthError::Malformed("the Authorization header is not `Bearer <token>`".into())
    })?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed(format!(
            "the Authorization scheme is {:?}, expected Bearer",
            scheme.chars().take(20).collect::<String>()
        )));
    }
    Ok(token.trim())
}

pub fn require_scope(principal: &Principal, scope: Scope) -> Result<(), ApiError> {
    if principal.has_scope(scope) {
        Ok(())
    } else {
        Err(ApiError::insufficient_scope(scope))
    }
}
