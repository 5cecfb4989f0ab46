//! The collector's endpoint URL, and the HTTP/1.1 client that POSTs export
//! requests to it over one kept-alive connection.

use std::path::Path;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::StatusCode;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tracing::debug;

use crate::jwks_client::OutboundUrl;
use crate::outbound::{self, ConnectError};
use crate::tls::{self, TlsError};

/// The OTLP/HTTP path of trace exports, appended to a base endpoint URL.
pub const TRACES_PATH: &str = "/v1/traces";
/// Maximum length of an endpoint URL, in bytes.
const MAX_URL_CHARS: usize = 2048;
/// Part of a collector's response body that is read; the rest is dropped
/// with the connection. OTLP responses are small.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Characters of a rejecting response body kept for the log.
const MAX_ERROR_BODY_CHARS: usize = 200;

/// A checked `telemetry.otlp_endpoint`, resolved to the URL that spans are POSTed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpEndpoint {
    /// The traces URL: the configured URL, with `/v1/traces` appended unless it ends in it.
    traces_url: String,
    https: bool,
    /// The host without the brackets of an IPv6 literal.
    host: String,
    port: u16,
    /// `host[:port]` as written in the URL, sent as the `Host` header.
    authority: String,
    path: String,
}

impl OtlpEndpoint {
    /// Parses and checks an endpoint URL: https, or http for a loopback host
    /// only, with a host, no user name or password, no query and no fragment.
    /// The error names the rule the URL breaks.
    pub fn parse(text: &str) -> Result<OtlpEndpoint, String> {
        if text.len() > MAX_URL_CHARS {
            return Err(format!("must be at most {MAX_URL_CHARS} characters"));
        }
        if text.contains('#') {
            return Err("must not have a fragment (#...)".into());
        }
        let lower = text.to_ascii_lowercase();
        if !lower.starts_with("http://") && !lower.starts_with("https://") {
            return Err("must start with https://, or http:// for a loopback host".into());
        }
        let parts = OutboundUrl::parse(text, "http://127.0.0.1:4318")?;
        if parts.uri.query().is_some() {
            return Err("must not have a query (?...)".into());
        }

        let base = parts.uri.path().trim_end_matches('/');
        let path = if base.ends_with(TRACES_PATH) {
            base.to_owned()
        } else {
            format!("{base}{TRACES_PATH}")
        };
        let scheme = if parts.https { "https" } else { "http" };
        Ok(OtlpEndpoint {
            traces_url: format!("{scheme}://{}{path}", parts.authority),
            https: parts.https,
            host: parts.host,
            port: parts.port,
            authority: parts.authority,
            path,
        })
    }

    pub fn is_https(&self) -> bool {
        self.https
    }

    /// Returns the URL that export requests are POSTed to.
    pub fn traces_url(&self) -> &str {
        &self.traces_url
    }
}

/// The reason one export request failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("timed out after {timeout_ms} ms")]
    TimedOut { timeout_ms: u128 },
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("the TLS handshake failed: {0}")]
    Tls(String),
    #[error("the HTTP exchange failed: {0}")]
    Http(String),
    #[error("the collector answered {status}: {body:?}")]
    Status { status: StatusCode, body: String },
}

impl ExportError {
    /// Returns the HTTP status of a rejected request, if the collector sent a response.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ExportError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Sends export requests to one collector, keeping its connection open between requests.
pub(super) struct OtlpClient {
    endpoint: OtlpEndpoint,
    /// Present for an https endpoint.
    tls: Option<TlsConnector>,
    /// Extra request headers from the configuration, such as an API key.
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The open connection, if there is one.
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl OtlpClient {
    /// Builds a client; an https endpoint trusts the PEM bundle `ca_file` or,
    /// when it is unset, the Mozilla roots of the webpki-roots crate.
    pub(super) fn new(
        endpoint: OtlpEndpoint,
        ca_file: Option<&Path>,
        headers: Vec<(HeaderName, HeaderValue)>,
    ) -> Result<OtlpClient, TlsError> {
        let tls = match endpoint.https {
            true => Some(tls::https_connector(ca_file)?),
            false => None,
        };
        Ok(OtlpClient {
            endpoint,
            tls,
            headers,
            sender: None,
        })
    }

    pub(super) fn endpoint(&self) -> &OtlpEndpoint {
        &self.endpoint
    }

    /// Closes the connection, so the next request opens a new one. Called
    /// after a timeout, which leaves the connection in an unknown state.
    pub(super) fn disconnect(&mut self) {
        self.sender = None;
    }

    /// POSTs one JSON export request; only a 2xx response succeeds. A request
    /// that fails on a kept-alive connection, which the collector may have
    /// closed in the meantime, is sent once more on a new connection.
    pub(super) async fn post(&mut self, body: Bytes) -> Result<(), ExportError> {
        if self
            .sender
            .as_ref()
            .is_some_and(|sender| sender.is_closed())
        {
            self.sender = None;
        }
        let reused = self.sender.is_some();
        match self.post_once(body.clone()).await {
            Err(ExportError::Http(reason)) if reused => {
                debug!(endpoint = %self.endpoint.traces_url, error = %reason, "export on a kept-alive connection failed; retrying on a new one");
                self.post_once(body).await
            }
            result => result,
        }
    }

    async fn post_once(&mut self, body: Bytes) -> Result<(), ExportError> {
        let mut sender = match self.sender.take() {
            Some(sender) => sender,
            None => self.connect().await?,
        };
        sender
            .ready()
            .await
            .map_err(|e| ExportError::Http(e.to_string()))?;

        let mut request = http::Request::post(self.endpoint.path.as_str())
            .header(http::header::HOST, self.endpoint.authority.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("keygate/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))
            .map_err(|e| ExportError::Http(e.to_string()))?;
        for (name, value) in &self.headers {
            request.headers_mut().insert(name.clone(), value.clone());
        }

        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ExportError::Http(e.to_string()))?;
        let status = response.status();
        // The body is read to its end so the connection can carry the next request.
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| ExportError::Http(format!("reading the response body failed: {e}")))?
            .to_bytes();
        self.sender = Some(sender);
        if !status.is_success() {
            let text: String = String::from_utf8_lossy(&body)
                .chars()
                .take(MAX_ERROR_BODY_CHARS)
                .collect();
            return Err(ExportError::Status { status, body: text });
        }
        Ok(())
    }

    /// Opens a connection (TLS for https) and starts the task that drives it.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ExportError> {
        let endpoint = &self.endpoint;
        let tcp = outbound::connect(&endpoint.host, endpoint.port, endpoint.https).await?;
        match &self.tls {
            Some(connector) => {
                let name = ServerName::try_from(self.endpoint.host.clone())
                    .map_err(|e| ExportError::Tls(format!("invalid server name: {e}")))?;
                let stream = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| ExportError::Tls(e.to_string()))?;
                handshake(TokioIo::new(stream)).await
            }
            None => handshake(TokioIo::new(tcp)).await,
        }
    }
}

/// Starts HTTP/1.1 on `io` and spawns the task that drives the connection
/// until the client drops its sender or the collector closes it.
async fn handshake<I>(io: I) -> Result<SendRequest<Full<Bytes>>, ExportError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| ExportError::Http(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(error = %e, "connection to the OTLP collector ended with an error");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_path_rules() {
        let cases = [
            ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
            ("http://127.0.0.1:4318/", "http://127.0.0.1:4318/v1/traces"),
            (
                "http://localhost:4318/otlp",
                "http://localhost:4318/otlp/v1/traces",
            ),
            ("http://[::1]:4318/v1/traces", "http://[::1]:4318/v1/traces"),
            (
                "https://collector.example.com/custom/v1/traces/",
                "https://collector.example.com/custom/v1/traces",
            ),
        ];
        for (text, traces_url) in cases {
            let endpoint = OtlpEndpoint::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(endpoint.traces_url(), traces_url, "{text}");
        }
        let endpoint = OtlpEndpoint::parse("https://collector.example.com").unwrap();
        assert!(endpoint.is_https());
        assert_eq!(endpoint.port, 443);
        assert_eq!(endpoint.path, "/v1/traces");
    }

    #[test]
    fn endpoint_rejections() {
        let rejected = [
            ("http://collector.example.com:4318", "plain http"),
            ("ftp://127.0.0.1:4318", "https://"),
            ("127.0.0.1:4318", "https://"),
            ("https://user:key@collector.example.com", "password"),
            ("http://127.0.0.1:4318/v1/traces?x=1", "query"),
            ("http://127.0.0.1:4318/#top", "fragment"),
            ("http://127.0.0.1:0", "port 0"),
        ];
        for (text, rule) in rejected {
            let error = OtlpEndpoint::parse(text).expect_err(text);
            assert!(error.contains(rule), "{text}: {error}");
        }
        let long = format!(
            "https://collector.example.com/{}",
            "a".repeat(MAX_URL_CHARS)
        );
        assert!(OtlpEndpoint::parse(&long).unwrap_err().contains("at most"));
    }
}
