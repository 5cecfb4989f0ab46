//! A small AWS KMS client for the KMS JSON 1.1 protocol: Encrypt and
//! Decrypt, plus any other operation by name. Each call is signed with SigV4
//! and sent as one HTTP/1.1 request on a new connection, over TLS or, for a
//! loopback host, plain HTTP.

use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde_json::{json, Value};
use tokio_rustls::TlsConnector;
use zeroize::Zeroizing;

use super::sigv4::{self, Credentials, Scope, Timestamp};
use crate::jwks_client::OutboundUrl;
use crate::outbound;
use crate::tls::{self, TlsError};

/// The encryption context of every master key keygate wraps. KMS binds it to
/// the ciphertext, so Decrypt fails unless the same pair is sent again.
pub const ENCRYPTION_CONTEXT_KEY: &str = "keygate:purpose";
pub const ENCRYPTION_CONTEXT_VALUE: &str = "master-key";

/// Returns `{"keygate:purpose": "master-key"}`.
fn encryption_context() -> Value {
    let mut context = serde_json::Map::new();
    context.insert(
        ENCRYPTION_CONTEXT_KEY.to_owned(),
        Value::from(ENCRYPTION_CONTEXT_VALUE),
    );
    Value::Object(context)
}

/// Largest KMS response body accepted; KMS responses are a few KiB.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Maximum length of an endpoint URL, in bytes.
const MAX_ENDPOINT_CHARS: usize = 2048;

/// A checked KMS endpoint: https, or http with a loopback host, and no path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KmsEndpoint {
    text: String,
    https: bool,
    /// The host without the brackets of an IPv6 literal.
    host: String,
    port: u16,
    /// `host[:port]` as written in the URL, sent as the `Host` header.
    authority: String,
}

impl KmsEndpoint {
    /// Parses and checks an endpoint URL; the error names the rule it breaks.
    pub fn parse(text: &str) -> Result<KmsEndpoint, String> {
        if text.len() > MAX_ENDPOINT_CHARS {
            return Err(format!("must be at most {MAX_ENDPOINT_CHARS} characters"));
        }
        let parts = OutboundUrl::parse(text, "https://kms.eu-west-1.amazonaws.com")?;
        let uri = &parts.uri;
        let path = uri.path_and_query().map_or("", |p| p.as_str());
        if !path.is_empty() && path != "/" {
            return Err(format!(
                "must not have a path or query ({path:?}); KMS is called at the root of its endpoint"
            ));
        }
        Ok(KmsEndpoint {
            text: text.to_owned(),
            https: parts.https,
            host: parts.host,
            port: parts.port,
            authority: parts.authority,
        })
    }

    pub fn is_https(&self) -> bool {
        self.https
    }
}

impl std::fmt::Display for KmsEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// A failed KMS call. Messages name the endpoint, the operation, the key and
/// KMS's own error code and message, never credentials or key bytes.
#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    #[error("KMS at {endpoint} is unreachable: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("KMS at {endpoint} did not answer {operation} within {timeout_ms} ms")]
    TimedOut {
        endpoint: String,
        operation: &'static str,
        timeout_ms: u128,
    },
    #[error("KMS at {endpoint} rejected {operation} for key {key_id}: {code}: {message} (HTTP {status})")]
    Rejected {
        endpoint: String,
        operation: &'static str,
        key_id: String,
        status: u16,
        /// The AWS error code, such as `AccessDeniedException`.
        code: String,
        message: String,
    },
    #[error("KMS at {endpoint} answered {operation} with an invalid response: {reason}")]
    InvalidResponse {
        endpoint: String,
        operation: &'static str,
        reason: String,
    },
}

/// Settings of a [`KmsClient`].
pub struct KmsSettings<'a> {
    pub endpoint: &'a str,
    pub region: &'a str,
    /// PEM bundle of CA certificates for an https endpoint; `None` trusts the
    /// Mozilla root certificates of the webpki-roots crate.
    pub ca_file: Option<&'a Path>,
    /// Time one call may take, from name resolution to the end of the response.
    pub timeout: Duration,
}

/// The client of one KMS endpoint and region.
pub struct KmsClient {
    endpoint: KmsEndpoint,
    region: String,
    /// Present for an https endpoint.
    tls: Option<TlsConnector>,
    timeout: Duration,
}

/// The client could not be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum KmsClientError {
    #[error("invalid KMS endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl KmsClient {
    pub fn new(settings: KmsSettings<'_>) -> Result<KmsClient, KmsClientError> {
        let endpoint =
            KmsEndpoint::parse(settings.endpoint).map_err(|reason| KmsClientError::Endpoint {
                endpoint: settings.endpoint.to_owned(),
                reason,
            })?;
        let tls = match endpoint.https {
            true => Some(tls::https_connector(settings.ca_file)?),
            false => None,
        };
        Ok(KmsClient {
            endpoint,
            region: settings.region.to_owned(),
            tls,
            timeout: settings.timeout,
        })
    }

    pub fn endpoint(&self) -> &KmsEndpoint {
        &self.endpoint
    }

    /// Decrypts a ciphertext blob that [`KmsClient::encrypt`] made, with
    /// keygate's encryption context. With `key_id`, KMS also checks that the
    /// blob was made under that key.
    pub async fn decrypt(
        &self,
        credentials: &Credentials,
        ciphertext: &[u8],
        key_id: Option<&str>,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let mut request = json!({
            "CiphertextBlob": STANDARD.encode(ciphertext),
            "EncryptionContext": encryption_context(),
        });
        if let Some(key_id) = key_id {
            request["KeyId"] = json!(key_id);
        }
        let body = Zeroizing::new(request.to_string().into_bytes());
        let response = self
            .send(
                credentials,
                "Decrypt",
                key_id.unwrap_or("(named in the ciphertext)"),
                body,
            )
            .await?;
        let invalid = |reason: &str| KmsError::InvalidResponse {
            endpoint: self.endpoint.to_string(),
            operation: "Decrypt",
            reason: reason.to_owned(),
        };
        let plaintext = response
            .get("Plaintext")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("it has no Plaintext string"))?;
        let decoded = STANDARD
            .decode(plaintext)
            .map_err(|_| invalid("Plaintext is not base64"))?;
        Ok(Zeroizing::new(decoded))
    }

    /// Encrypts `plaintext` under `key_id` with keygate's encryption context
    /// and returns the ciphertext blob.
    pub async fn encrypt(
        &self,
        credentials: &Credentials,
        key_id: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, KmsError> {
        let encoded = Zeroizing::new(STANDARD.encode(plaintext));
        let body = Zeroizing::new(
            json!({
                "KeyId": key_id,
                "Plaintext": encoded.as_str(),
                "EncryptionContext": encryption_context(),
            })
            .to_string()
            .into_bytes(),
        );
        let response = self.send(credentials, "Encrypt", key_id, body).await?;
        let invalid = |reason: &str| KmsError::InvalidResponse {
            endpoint: self.endpoint.to_string(),
            operation: "Encrypt",
            reason: reason.to_owned(),
        };
        let blob = response
            .get("CiphertextBlob")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("it has no CiphertextBlob string"))?;
        STANDARD
            .decode(blob)
            .map_err(|_| invalid("CiphertextBlob is not base64"))
    }

    /// Calls the KMS operation `operation` (such as `CreateKey`) with a JSON
    /// request and returns the JSON response.
    pub async fn call(
        &self,
        credentials: &Credentials,
        operation: &'static str,
        request: &Value,
    ) -> Result<Value, KmsError> {
        let key_id = request
            .get("KeyId")
            .and_then(Value::as_str)
            .unwrap_or("(none)")
            .to_owned();
        let body = Zeroizing::new(request.to_string().into_bytes());
        self.send(credentials, operation, &key_id, body).await
    }

    async fn send(
        &self,
        credentials: &Credentials,
        operation: &'static str,
        key_id: &str,
        body: Zeroizing<Vec<u8>>,
    ) -> Result<Value, KmsError> {
        let request = self.signed_request(credentials, operation, &body);
        let exchange = async {
            let endpoint = &self.endpoint;
            let tcp = outbound::connect(&endpoint.host, endpoint.port, endpoint.https)
                .await
                .map_err(|e| self.unreachable(e.to_string()))?;
            match &self.tls {
                Some(connector) => {
                    let name = ServerName::try_from(self.endpoint.host.clone())
                        .map_err(|e| self.unreachable(format!("invalid server name: {e}")))?;
                    let stream = connector
                        .connect(name, tcp)
                        .await
                        .map_err(|e| self.unreachable(format!("the TLS handshake failed: {e}")))?;
                    self.exchange(TokioIo::new(stream), request).await
                }
                None => self.exchange(TokioIo::new(tcp), request).await,
            }
        };
        let (status, response) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| KmsError::TimedOut {
                endpoint: self.endpoint.to_string(),
                operation,
                timeout_ms: self.timeout.as_millis(),
            })??;
        if status != StatusCode::OK {
            let (code, message) = error_details(status, &response);
            return Err(KmsError::Rejected {
                endpoint: self.endpoint.to_string(),
                operation,
                key_id: key_id.to_owned(),
                status: status.as_u16(),
                code,
                message,
            });
        }
        serde_json::from_slice(&response).map_err(|e| KmsError::InvalidResponse {
            endpoint: self.endpoint.to_string(),
            operation,
            reason: format!("the body is not JSON: {e}"),
        })
    }

    /// Builds the POST request with every header SigV4 signs.
    fn signed_request(
        &self,
        credentials: &Credentials,
        operation: &str,
        body: &[u8],
    ) -> http::Request<Full<Bytes>> {
        let timestamp = Timestamp::now();
        let target = format!("TrentService.{operation}");
        let mut headers: Vec<(&str, &str)> = vec![
            ("content-type", "application/x-amz-json-1.1"),
            ("host", self.endpoint.authority.as_str()),
            ("x-amz-date", timestamp.date_time()),
            ("x-amz-target", target.as_str()),
        ];
        if let Some(token) = sigv4::session_token(credentials) {
            headers.push(("x-amz-security-token", token));
        }
        let authorization = sigv4::authorization(
            credentials,
            &Scope {
                region: &self.region,
                service: "kms",
            },
            &timestamp,
            &sigv4::Request {
                method: "POST",
                path: "/",
                headers: &headers,
                body,
            },
        );
        let mut builder = http::Request::post("/")
            .header(http::header::AUTHORIZATION, authorization)
            .header(
                http::header::USER_AGENT,
                concat!("keygate/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in &headers {
            builder = builder.header(*name, *value);
        }
        // NOTE: hyper keeps the body in a `Bytes` that is not zeroized, so an
        // Encrypt request leaves the base64 key in freed memory.
        builder
            .body(Full::new(Bytes::copy_from_slice(body)))
            .expect("the method, path and headers are valid")
    }

    /// Sends `request` on a new HTTP/1.1 connection; returns the status and body.
    ///
    /// The connection is driven inside this future, so dropping it (as the
    /// timeout does) closes the connection and leaves no task behind.
    async fn exchange<I>(
        &self,
        io: I,
        request: http::Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), KmsError>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| self.unreachable(format!("the HTTP exchange failed: {e}")))?;
        let response = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| self.unreachable(format!("the HTTP exchange failed: {e}")))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        self.unreachable(format!(
                            "the response body is larger than {MAX_RESPONSE_BYTES} bytes"
                        ))
                    } else {
                        self.unreachable(format!("reading the response failed: {e}"))
                    }
                })?;
            Ok((status, body.to_bytes()))
        };
        outbound::drive_with_connection(response, connection, |e| {
            self.unreachable(format!("the HTTP exchange failed: {e}"))
        })
        .await
    }

    fn unreachable(&self, reason: String) -> KmsError {
        KmsError::Unreachable {
            endpoint: self.endpoint.to_string(),
            reason,
        }
    }
}

/// Returns the AWS error code and message of an error response: the
/// `__type` member without its namespace, and `message` or `Message`.
pub(crate) fn error_details(status: StatusCode, body: &[u8]) -> (String, String) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let member = |names: &[&str]| {
        parsed.as_ref().and_then(|value| {
            names
                .iter()
                .find_map(|name| value.get(*name).and_then(Value::as_str))
                .map(str::to_owned)
        })
    };
    let code = member(&["__type"])
        .map(|code| code.rsplit('#').next().unwrap_or_default().to_owned())
        .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
    let message = member(&["message", "Message"]).unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        let shown: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
        if shown.is_empty() {
            "(no message)".to_owned()
        } else {
            shown
        }
    });
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_rules() {
        let accepted = [
            ("https://kms.eu-west-1.amazonaws.com", 443),
            ("https://kms.eu-west-1.amazonaws.com/", 443),
            ("https://kms.internal.example:8443", 8443),
            ("http://127.0.0.1:4566", 4566),
            ("http://[::1]:4566", 4566),
            ("http://localhost", 80),
        ];
        for (text, port) in accepted {
            let endpoint = KmsEndpoint::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(endpoint.port, port, "{text}");
        }
        assert_eq!(
            KmsEndpoint::parse("http://[::1]:4566").unwrap().authority,
            "[::1]:4566"
        );

        let rejected = [
            ("http://kms.eu-west-1.amazonaws.com", "plain http"),
            ("http://10.0.0.1:4566", "plain http"),
            ("kms.eu-west-1.amazonaws.com", "https://"),
            ("ftp://kms.example", "https://"),
            ("https://key:secret@kms.example", "password"),
            ("https://kms.example/keys", "path"),
            ("https://kms.example/?a=b", "path"),
            ("https://kms.example:0", "port 0"),
            ("https://kms example", "not an absolute URL"),
        ];
        for (text, rule) in rejected {
            let err = KmsEndpoint::parse(text).expect_err(text);
            assert!(err.contains(rule), "{text}: {err}");
        }
    }

    #[test]
    fn error_details_from_json_and_text() {
        let (code, message) = error_details(
            StatusCode::BAD_REQUEST,
            br#"{"__type":"com.amazonaws.kms#NotFoundException","message":"Key 'x' does not exist"}"#,
        );
        assert_eq!(code, "NotFoundException");
        assert_eq!(message, "Key 'x' does not exist");

        let (code, message) = error_details(
            StatusCode::BAD_REQUEST,
            br#"{"__type":"AccessDeniedException","Message":"not allowed"}"#,
        );
        assert_eq!(code, "AccessDeniedException");
        assert_eq!(message, "not allowed");

        let (code, message) = error_details(StatusCode::BAD_GATEWAY, b"upstream\nfailed");
        assert_eq!(code, "HTTP 502");
        assert_eq!(message, "upstreamfailed");

        let (_, message) = error_details(StatusCode::INTERNAL_SERVER_ERROR, b"");
        assert_eq!(message, "(no message)");
    }

    #[tokio::test]
    async fn refused_connection_names_endpoint() {
        // Bind, then close, a loopback port so nothing listens on it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let endpoint = format!("http://127.0.0.1:{port}");
        let client = KmsClient::new(KmsSettings {
            endpoint: &endpoint,
            region: "us-east-1",
            ca_file: None,
            timeout: Duration::from_secs(5),
        })
        .unwrap();
        let credentials = Credentials::new("AKIDEXAMPLE", "secret", None);
        let err = client
            .decrypt(&credentials, b"blob", Some("alias/keygate"))
            .await
            .unwrap_err();
        assert!(matches!(err, KmsError::Unreachable { .. }), "{err:?}");
        assert!(err.to_string().contains(&endpoint), "{err}");
    }

    #[tokio::test]
    async fn rejected_call_names_key_and_code() {
        // A one-shot HTTP server that responds as KMS does to an unknown key.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(
                |request: http::Request<hyper::body::Incoming>| async move {
                    let target = request
                        .headers()
                        .get("x-amz-target")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let signed = request
                        .headers()
                        .get(http::header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"));
                    let body = format!(
                        r#"{{"__type":"NotFoundException","message":"target {target}, signed {signed}"}}"#
                    );
                    Ok::<_, std::convert::Infallible>(
                        http::Response::builder()
                            .status(400)
                            .body(Full::new(Bytes::from(body)))
                            .unwrap(),
                    )
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
        let endpoint = format!("http://{addr}");
        let client = KmsClient::new(KmsSettings {
            endpoint: &endpoint,
            region: "us-east-1",
            ca_file: None,
            timeout: Duration::from_secs(5),
        })
        .unwrap();
        let credentials = Credentials::new("AKIDEXAMPLE", "secret", None);
        let err = client
            .encrypt(&credentials, "alias/missing", &[7; 32])
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, KmsError::Rejected { status: 400, .. }),
            "{err:?}"
        );
        assert!(text.contains("alias/missing"), "{text}");
        assert!(text.contains("NotFoundException"), "{text}");
        assert!(text.contains("target TrentService.Encrypt"), "{text}");
        assert!(text.contains("signed true"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        server.await.unwrap();
    }
}
