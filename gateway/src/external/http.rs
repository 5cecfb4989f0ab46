//! HTTP/1.1 requests to secret managers and their token services, over TLS
//! or plain http to a loopback host, with connect and total timeouts and
//! kept-alive connections.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use zeroize::Zeroizing;

use super::error::{FailureKind, ProviderError};
use crate::jwks_client::OutboundUrl;
use crate::tls::{self, TlsError};

/// Largest response body read from a provider.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Settings shared by every outbound request.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    pub connect_timeout: Duration,
    /// Time one request may take, from name resolution to the end of the body.
    pub request_timeout: Duration,
    /// Only loopback addresses may be contacted, whatever a URL names.
    pub loopback_only: bool,
}

/// Idle connections kept per scheme and authority.
const MAX_IDLE_PER_AUTHORITY: usize = 16;
/// Authorities with idle connections; beyond it every idle connection is dropped.
const MAX_POOLED_AUTHORITIES: usize = 1000;

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// An HTTP client for provider APIs. It keeps finished connections open and
/// reuses them for later requests to the same scheme and authority.
pub struct HttpClient {
    settings: ClientSettings,
    tls: TlsConnector,
    idle: std::sync::Mutex<std::collections::HashMap<String, Vec<Sender>>>,
}

/// A request to send. `url` is absolute; the body is sent as is.
pub struct Request<'a> {
    pub method: Method,
    pub url: &'a str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl<'a> Request<'a> {
    pub fn get(url: &'a str) -> Request<'a> {
        Request {
            method: Method::GET,
            url,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn post(url: &'a str, content_type: &str, body: impl Into<Bytes>) -> Request<'a> {
        Request {
            method: Method::POST,
            url,
            headers: vec![("content-type", content_type.to_owned())],
            body: body.into(),
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Request<'a> {
        self.headers.push((name, value.into()));
        self
    }
}

/// A provider's response, whatever its status. `Debug` leaves out the body,
/// which may contain a secret value or a token.
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("body_bytes", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl Response {
    /// Returns the `Retry-After` header in seconds, when present and numeric.
    pub fn retry_after(&self) -> Option<Duration> {
        let value = self.headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
        value.trim().parse::<u64>().ok().map(Duration::from_secs)
    }

    /// Parses the body as JSON, or returns an invalid-response error naming `what`.
    pub fn json(&self, what: &str) -> Result<serde_json::Value, ProviderError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ProviderError::invalid_response(format!(
                "{what} returned HTTP {} with a body that is not JSON: {e}",
                self.status.as_u16()
            ))
        })
    }
}

impl HttpClient {
    /// Builds a client trusting the PEM bundle `ca_file`, or the Mozilla root
    /// certificates of the webpki-roots crate when it is unset.
    pub fn new(settings: ClientSettings, ca_file: Option<&Path>) -> Result<HttpClient, TlsError> {
        Ok(HttpClient {
            settings,
            tls: tls::https_connector(ca_file)?,
            idle: std::sync::Mutex::default(),
        })
    }

    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// Sends `request` and returns the response. Transport failures map to
    /// [`FailureKind::Unreachable`] or [`FailureKind::TimedOut`]; the caller
    /// reads the status.
    pub async fn send(&self, request: Request<'_>) -> Result<Response, ProviderError> {
        self.send_with(request, false).await
    }

    /// Sends `request` to an address from the server's configuration, which
    /// may be plain http to a host that is not loopback, such as an
    /// instance-metadata service. `loopback_only` still applies.
    pub async fn send_configured(&self, request: Request<'_>) -> Result<Response, ProviderError> {
        self.send_with(request, true).await
    }

    async fn send_with(
        &self,
        request: Request<'_>,
        configured: bool,
    ) -> Result<Response, ProviderError> {
        let url = OutboundUrl::parse_with(request.url, "https://host/path", configured).map_err(
            |reason| ProviderError::misconfigured(format!("the URL {:?} {reason}", request.url)),
        )?;
        let timeout = self.settings.request_timeout;
        tokio::time::timeout(timeout, self.send_unbounded(&url, request, configured))
            .await
            .map_err(|_| {
                ProviderError::new(
                    FailureKind::TimedOut,
                    format!(
                        "{} did not answer within {} ms",
                        url.authority,
                        timeout.as_millis()
                    ),
                )
            })?
    }

    async fn send_unbounded(
        &self,
        url: &OutboundUrl,
        request: Request<'_>,
        configured: bool,
    ) -> Result<Response, ProviderError> {
        let path = url
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("/");
        let mut builder = http::Request::builder()
            .method(request.method)
            .uri(path)
            .header(http::header::HOST, url.authority.as_str())
            .header(
                http::header::USER_AGENT,
                concat!("keygate/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in &request.headers {
            let value = HeaderValue::from_str(value).map_err(|_| {
                ProviderError::misconfigured(format!(
                    "the {name} header of a request to {} is not a valid header value",
                    url.authority
                ))
            })?;
            builder = builder.header(*name, value);
        }
        let http_request = builder
            .body(Full::new(request.body))
            .map_err(|e| ProviderError::misconfigured(format!("invalid request: {e}")))?;

        let pool_key = format!(
            "{}://{}",
            if url.https { "https" } else { "http" },
            url.authority
        );
        // A kept connection may have been closed by the server meanwhile; the
        // request then goes on a new one.
        if let Some(mut sender) = self.take_idle(&pool_key) {
            if sender.ready().await.is_ok() {
                if let Ok(response) = sender.send_request(http_request.clone()).await {
                    return self
                        .finish(response, sender, &pool_key, &url.authority)
                        .await;
                }
            }
        }
        let mut sender = self.open(url, configured).await?;
        let response = sender
            .send_request(http_request)
            .await
            .map_err(|e| unreachable_at(&url.authority, e.to_string()))?;
        self.finish(response, sender, &pool_key, &url.authority)
            .await
    }

    /// Opens a connection (TLS for https) and starts driving it in a task
    /// that ends when the connection closes.
    async fn open(&self, url: &OutboundUrl, configured: bool) -> Result<Sender, ProviderError> {
        let tcp = self.connect(url, configured).await?;
        let failed = |e: hyper::Error| unreachable_at(&url.authority, e.to_string());
        if url.https {
            let name = ServerName::try_from(url.host.clone()).map_err(|e| {
                ProviderError::misconfigured(format!("invalid server name {:?}: {e}", url.host))
            })?;
            let stream = self.tls.connect(name, tcp).await.map_err(|e| {
                ProviderError::new(
                    FailureKind::Unreachable,
                    format!("the TLS handshake with {} failed: {e}", url.authority),
                )
            })?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(failed)?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(sender)
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(failed)?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(sender)
        }
    }

    fn take_idle(&self, key: &str) -> Option<Sender> {
        let mut idle = self.idle.lock().expect("connection pool lock");
        let senders = idle.get_mut(key)?;
        while let Some(sender) = senders.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    /// Reads the response body, then keeps the connection for reuse unless
    /// the server asked to close it.
    async fn finish(
        &self,
        response: http::Response<hyper::body::Incoming>,
        sender: Sender,
        key: &str,
        authority: &str,
    ) -> Result<Response, ProviderError> {
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    ProviderError::invalid_response(format!(
                        "{authority} sent a response body larger than {MAX_RESPONSE_BYTES} bytes"
                    ))
                } else {
                    unreachable_at(authority, format!("reading the response body failed: {e}"))
                }
            })?;
        let closing = parts
            .headers
            .get(http::header::CONNECTION)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"close"));
        if !closing && !sender.is_closed() {
            let mut idle = self.idle.lock().expect("connection pool lock");
            if idle.len() >= MAX_POOLED_AUTHORITIES && !idle.contains_key(key) {
                idle.clear();
            }
            let senders = idle.entry(key.to_owned()).or_default();
            if senders.len() < MAX_IDLE_PER_AUTHORITY {
                senders.push(sender);
            }
        }
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body: body.to_bytes(),
        })
    }

    /// Resolves the host and connects to the first address that accepts.
    /// Plain http and a loopback-only client try loopback addresses only.
    async fn connect(
        &self,
        url: &OutboundUrl,
        configured: bool,
    ) -> Result<TcpStream, ProviderError> {
        let unreachable = |message: String| ProviderError::new(FailureKind::Unreachable, message);
        let loopback_only = self.settings.loopback_only || (!url.https && !configured);
        let addrs: Vec<SocketAddr> = if loopback_only {
            // No name lookup at all: it would leave the machine.
            loopback_addrs(&url.host, url.port)
        } else {
            tokio::net::lookup_host((url.host.as_str(), url.port))
                .await
                .map_err(|e| unreachable(format!("cannot resolve {}: {e}", url.host)))?
                .collect()
        };
        if addrs.is_empty() {
            return Err(ProviderError::misconfigured(format!(
                "{} is not a loopback address, and this server may contact loopback addresses only (external.loopback_only, or plain http)",
                url.host
            )));
        }
        let mut last = String::new();
        for addr in addrs {
            match tokio::time::timeout(self.settings.connect_timeout, TcpStream::connect(addr))
                .await
            {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Ok(Err(e)) => last = format!("connecting to {addr} failed: {e}"),
                Err(_) => {
                    last = format!(
                        "connecting to {addr} took longer than {} ms",
                        self.settings.connect_timeout.as_millis()
                    )
                }
            }
        }
        Err(unreachable(last))
    }
}

/// Returns the loopback addresses `host` names, without a name lookup: a
/// loopback IP literal, or 127.0.0.1 and ::1 for `localhost`; otherwise none.
fn loopback_addrs(host: &str, port: u16) -> Vec<SocketAddr> {
    if host.eq_ignore_ascii_case("localhost") {
        return vec![
            SocketAddr::from(([127, 0, 0, 1], port)),
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
        ];
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_loopback() => vec![SocketAddr::new(ip, port)],
        _ => Vec::new(),
    }
}

fn unreachable_at(authority: &str, reason: String) -> ProviderError {
    ProviderError::new(FailureKind::Unreachable, format!("{authority}: {reason}"))
}

/// Maps a 5xx or 429 response to the common failure, with `Retry-After`.
/// Other statuses are the provider module's to interpret.
pub fn transient_failure(response: &Response, what: &str, detail: &str) -> Option<ProviderError> {
    let status = response.status;
    let kind = if status == StatusCode::TOO_MANY_REQUESTS {
        FailureKind::Throttled
    } else if status.is_server_error() {
        FailureKind::ProviderError
    } else {
        return None;
    };
    Some(
        ProviderError::new(
            kind,
            format!("{what} answered HTTP {}: {detail}", status.as_u16()),
        )
        .with_retry_after(response.retry_after()),
    )
}

/// Percent-encodes one path segment or query value (everything but RFC 3986
/// unreserved characters).
pub fn encode_component(text: &str) -> String {
    const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(text, RESERVED).to_string()
}

/// Maximum length of provider error text quoted in a message, in bytes.
pub const MAX_DETAIL_BYTES: usize = 400;

/// Reads an OAuth token answer `{"access_token", "expires_in"}`.
/// `expires_in` may be a number or, as Entra's v1 endpoint sends it, a string.
pub fn parse_token_response(
    response: &Response,
    what: &str,
) -> Result<(Zeroizing<String>, Duration), ProviderError> {
    let mut body = response.json(what)?;
    let lifetime = match &body["expires_in"] {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        ProviderError::invalid_response(format!(
            "{what} returned no valid `expires_in` number of seconds"
        ))
    })?;
    match body.get_mut("access_token").map(Value::take) {
        Some(Value::String(token)) if !token.is_empty() => {
            Ok((Zeroizing::new(token), Duration::from_secs(lifetime)))
        }
        _ => Err(ProviderError::invalid_response(format!(
            "{what} returned no `access_token`"
        ))),
    }
}

/// Returns `text` cut to at most `max` bytes on a character boundary.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}
