//! Fetching a trusted issuer's JWK set: one HTTP/1.1 GET over TLS, or over
//! plain HTTP when the host is a loopback address.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Scheme, Uri};
use http::StatusCode;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::outbound::{self, ConnectError};
use crate::tls::{self, TlsError};

/// Time one fetch may take, from name resolution to the end of the body.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWK set document accepted.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Longest `jwks_url` accepted.
const MAX_URL_CHARS: usize = 2048;

/// A checked `jwks_url`: https, or http with a loopback host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwksUrl {
    text: String,
    https: bool,
    /// The host without the brackets of an IPv6 literal.
    host: String,
    port: u16,
    /// The URL's `host[:port]`, sent as the `Host` header.
    authority: String,
    path_and_query: String,
}

/// The checked parts of a URL that keygate calls out to: https, or plain
/// http only to a loopback host, with no user name or password and no port 0.
pub(crate) struct OutboundUrl {
    pub(crate) uri: Uri,
    pub(crate) https: bool,
    /// The host without the brackets of an IPv6 literal.
    pub(crate) host: String,
    /// The port written in the URL, or the scheme's default.
    pub(crate) port: u16,
    /// `host[:port]` as written in the URL, sent as the `Host` header.
    pub(crate) authority: String,
}

impl OutboundUrl {
    /// Parses and checks `text`; `example` is a valid URL that errors quote.
    pub(crate) fn parse(text: &str, example: &str) -> Result<OutboundUrl, String> {
        OutboundUrl::parse_with(text, example, false)
    }

    /// Parses like [`OutboundUrl::parse`], but with `any_http` plain http is
    /// allowed to any host: only for addresses an operator configured, such
    /// as an instance-metadata service, never for URLs that callers send.
    pub(crate) fn parse_with(
        text: &str,
        example: &str,
        any_http: bool,
    ) -> Result<OutboundUrl, String> {
        let uri: Uri = text
            .parse()
            .map_err(|e| format!("is not an absolute URL such as {example}: {e}"))?;
        let https = match uri.scheme() {
            Some(scheme) if *scheme == Scheme::HTTPS => true,
            Some(scheme) if *scheme == Scheme::HTTP => false,
            _ => return Err("must start with https://".into()),
        };

        let authority = uri
            .authority()
            .ok_or_else(|| format!("must name a host, as in {example}"))?;
        if authority.as_str().contains('@') {
            return Err("must not contain a user name or password".into());
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(format!("must name a host, as in {example}"));
        }
        if !https && !any_http && !is_loopback_host(&host) {
            return Err(
                "must be an https URL; plain http is allowed only for the loopback hosts 127.0.0.0/8, ::1 and localhost"
                    .into(),
            );
        }

        let port = match authority.port_u16() {
            Some(0) => return Err("must not use port 0".into()),
            Some(port) => port,
            None if https => 443,
            None => 80,
        };
        let authority = authority.as_str().to_owned();
        Ok(OutboundUrl {
            uri,
            https,
            host,
            port,
            authority,
        })
    }
}

impl JwksUrl {
    /// Parses and checks a URL; the error names the rule it breaks.
    pub fn parse(text: &str) -> Result<JwksUrl, String> {
        if text.len() > MAX_URL_CHARS {
            return Err(format!("must be at most {MAX_URL_CHARS} characters"));
        }
        if text.contains('#') {
            return Err("must not have a fragment (#...)".into());
        }

        let parts = OutboundUrl::parse(text, "https://host/path")?;
        let uri = &parts.uri;

        let path_and_query = uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("/")
            .to_owned();
        Ok(JwksUrl {
            text: text.to_owned(),
            https: parts.https,
            host: parts.host,
            port: parts.port,
            authority: parts.authority,
            path_and_query,
        })
    }

    pub fn is_https(&self) -> bool {
        self.https
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for JwksUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Returns whether `host` (without IPv6 brackets) is `localhost`, an address
/// in 127.0.0.0/8 or `::1`.
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The client of one trusted issuer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum JwksClientError {
    #[error("invalid jwks_url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The reason one fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("timed out after {} s", FETCH_TIMEOUT.as_secs())]
    TimedOut,
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("the TLS handshake failed: {0}")]
    Tls(String),
    #[error("the HTTP exchange failed: {0}")]
    Http(String),
    #[error("the server answered {0}, expected 200")]
    Status(StatusCode),
    #[error("the response body is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
}

/// Fetches one JWK set URL, opening a new connection for each fetch.
pub struct JwksClient {
    url: JwksUrl,
    /// Present for https URLs.
    tls: Option<TlsConnector>,
}

impl JwksClient {
    /// Builds a client for `url`, trusting the PEM bundle `ca_file` or, when
    /// it is unset, the Mozilla root certificates of the webpki-roots crate.
    pub fn new(url: &str, ca_file: Option<&Path>) -> Result<JwksClient, JwksClientError> {
        let url = JwksUrl::parse(url).map_err(|reason| JwksClientError::Url {
            url: url.to_owned(),
            reason,
        })?;
        let tls = match url.https {
            true => Some(tls::https_connector(ca_file)?),
            false => None,
        };
        Ok(JwksClient { url, tls })
    }

    pub fn url(&self) -> &JwksUrl {
        &self.url
    }

    /// Fetches the document; only a 200 response with a body of at most
    /// [`MAX_JWKS_BYTES`] within [`FETCH_TIMEOUT`] succeeds. Redirects are not followed.
    pub async fn fetch(&self) -> Result<Bytes, FetchError> {
        tokio::time::timeout(FETCH_TIMEOUT, self.fetch_unbounded())
            .await
            .map_err(|_| FetchError::TimedOut)?
    }

    async fn fetch_unbounded(&self) -> Result<Bytes, FetchError> {
        let tcp = outbound::connect(&self.url.host, self.url.port, self.url.https).await?;
        let request = http::Request::get(self.url.path_and_query.as_str())
            .header(http::header::HOST, self.url.authority.as_str())
            .header(
                http::header::ACCEPT,
                "application/jwk-set+json, application/json",
            )
            .header(
                http::header::USER_AGENT,
                concat!("keygate/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Http(e.to_string()))?;
        match &self.tls {
            Some(connector) => {
                let name = ServerName::try_from(self.url.host.clone())
                    .map_err(|e| FetchError::Tls(format!("invalid server name: {e}")))?;
                let stream = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| FetchError::Tls(e.to_string()))?;
                exchange(TokioIo::new(stream), request).await
            }
            None => exchange(TokioIo::new(tcp), request).await,
        }
    }
}

/// Sends `request` on a new HTTP/1.1 connection and reads a 200 answer's body.
///
/// The connection is driven inside this future, so dropping it (as the
/// timeout does) closes the connection and leaves no task behind.
async fn exchange<I>(io: I, request: http::Request<Empty<Bytes>>) -> Result<Bytes, FetchError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| FetchError::Http(e.to_string()))?;
    let response = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| FetchError::Http(e.to_string()))?;
        if response.status() != StatusCode::OK {
            return Err(FetchError::Status(response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    FetchError::TooLarge
                } else {
                    FetchError::Http(format!("reading the body failed: {e}"))
                }
            })?;
        Ok(body.to_bytes())
    };
    outbound::drive_with_connection(response, connection, |e| FetchError::Http(e.to_string())).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_rules() {
        let accepted = [
            (
                "https://idp.example.com/.well-known/jwks.json",
                443,
                "/.well-known/jwks.json",
            ),
            ("https://idp.example.com:8443", 8443, "/"),
            ("http://127.0.0.1:9000/jwks?v=2", 9000, "/jwks?v=2"),
            ("http://127.8.9.10/jwks", 80, "/jwks"),
            ("http://[::1]:9000/jwks", 9000, "/jwks"),
            ("http://localhost:9000/jwks", 9000, "/jwks"),
            ("HTTP://LOCALHOST:9000/jwks", 9000, "/jwks"),
        ];
        for (text, port, path) in accepted {
            let url = JwksUrl::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(url.port, port, "{text}");
            assert_eq!(url.path_and_query, path, "{text}");
        }
        assert_eq!(JwksUrl::parse("http://[::1]:9000/").unwrap().host, "::1");

        let rejected = [
            ("http://idp.example.com/jwks", "plain http"),
            ("http://10.0.0.1/jwks", "plain http"),
            ("http://[::ffff:127.0.0.1]/jwks", "plain http"),
            ("http://localhost.example.com/jwks", "plain http"),
            ("ftp://idp.example.com/jwks", "https://"),
            ("/jwks", "https://"),
            ("https://user:pw@idp.example.com/jwks", "password"),
            ("https://idp.example.com/jwks#keys", "fragment"),
            ("https://idp.example.com:0/jwks", "port 0"),
            ("https://idp example/jwks", "not an absolute URL"),
        ];
        for (text, rule) in rejected {
            let err = JwksUrl::parse(text).expect_err(text);
            assert!(err.contains(rule), "{text}: {err}");
        }
        let long = format!("https://idp.example.com/{}", "a".repeat(MAX_URL_CHARS));
        assert!(JwksUrl::parse(&long).unwrap_err().contains("at most"));
    }

    #[test]
    fn loopback_hosts() {
        for host in ["localhost", "127.0.0.1", "127.255.0.3", "::1"] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["10.0.0.1", "::", "0.0.0.0", "example.com", "[::1]"] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[tokio::test]
    async fn refused_connection_reported() {
        // Bind, then close, a loopback port so nothing listens on it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = JwksClient::new(&format!("http://127.0.0.1:{port}/jwks"), None).unwrap();
        match client.fetch().await {
            Err(FetchError::Connect(ConnectError::Connect { addr, .. })) => {
                assert_eq!(addr.port(), port)
            }
            other => panic!("expected a connect error, got {other:?}"),
        }
    }

    #[test]
    fn missing_ca_file_named() {
        let err = JwksClient::new(
            "https://idp.example.com/jwks",
            Some(Path::new("/nonexistent/idp-ca.pem")),
        )
        .err()
        .expect("a missing CA file is an error");
        assert!(err.to_string().contains("/nonexistent/idp-ca.pem"), "{err}");
    }
}
