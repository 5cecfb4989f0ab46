//! AWS Signature Version 4 for the POST requests keygate sends to KMS,
//! Secrets Manager and STS, computed with ring's HMAC-SHA256 and SHA-256.
//!
//! Only what those requests need is implemented: a path that is already in
//! canonical form (all three use `/`), no query string, and a body hashed in full.

use std::fmt;

use ring::{digest, hmac};
use zeroize::Zeroizing;

/// The algorithm name that starts the string to sign and the `Authorization` header.
const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// AWS credentials. `Debug` never shows the secret key or the session token.
#[derive(Clone)]
pub struct Credentials {
    access_key_id: String,
    secret_access_key: Zeroizing<String>,
    session_token: Option<Zeroizing<String>>,
}

/// The environment does not hold usable credentials.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("the environment variable {0} is not set; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary credentials) in keygate's environment")]
    Missing(&'static str),
    #[error("the environment variable {0} is empty")]
    Empty(&'static str),
}

impl Credentials {
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
    ) -> Credentials {
        Credentials {
            access_key_id: access_key_id.into(),
            secret_access_key: Zeroizing::new(secret_access_key.into()),
            session_token: session_token.map(Zeroizing::new),
        }
    }

    /// Reads `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and the optional
    /// `AWS_SESSION_TOKEN` through `lookup`, which returns a variable's value.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Credentials, CredentialsError> {
        let required = |name: &'static str| match lookup(name) {
            None => Err(CredentialsError::Missing(name)),
            Some(value) if value.is_empty() => Err(CredentialsError::Empty(name)),
            Some(value) => Ok(value),
        };
        let access_key_id = required("AWS_ACCESS_KEY_ID")?;
        let secret_access_key = required("AWS_SECRET_ACCESS_KEY")?;
        let session_token = lookup("AWS_SESSION_TOKEN").filter(|token| !token.is_empty());
        Ok(Credentials::new(
            access_key_id,
            secret_access_key,
            session_token,
        ))
    }

    /// Reads the credentials from the process environment.
    pub fn from_environment() -> Result<Credentials, CredentialsError> {
        Credentials::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Credentials(access_key_id: {}, secret REDACTED)",
            self.access_key_id
        )
    }
}

/// The request time in the two forms SigV4 uses, in UTC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timestamp {
    /// `YYYYMMDD`, the date of the credential scope.
    date: String,
    /// `YYYYMMDDTHHMMSSZ`, the value of `x-amz-date`.
    date_time: String,
}

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp::from_datetime(time::OffsetDateTime::now_utc())
    }

    /// Builds the timestamp of `unix_secs` seconds after the Unix epoch.
    pub fn from_unix(unix_secs: i64) -> Option<Timestamp> {
        time::OffsetDateTime::from_unix_timestamp(unix_secs)
            .ok()
            .map(Timestamp::from_datetime)
    }

    fn from_datetime(at: time::OffsetDateTime) -> Timestamp {
        let at = at.to_offset(time::UtcOffset::UTC);
        let date = format!("{:04}{:02}{:02}", at.year(), u8::from(at.month()), at.day());
        let date_time = format!(
            "{date}T{:02}{:02}{:02}Z",
            at.hour(),
            at.minute(),
            at.second()
        );
        Timestamp { date, date_time }
    }

    pub fn date_time(&self) -> &str {
        &self.date_time
    }
}

/// One request to sign. Header names must be lowercase; `host` and
/// `x-amz-date` must be among them, as they are sent.
pub struct Request<'a> {
    pub method: &'a str,
    /// The path in canonical form, e.g. `/`.
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// Credential scope of a signature: region and service (`kms`).
pub struct Scope<'a> {
    pub region: &'a str,
    pub service: &'a str,
}

/// Returns the value of the `Authorization` header for `request`.
///
/// The caller sends `x-amz-security-token` with the session token when the
/// credentials have one, and includes it in `request.headers` so it is signed.
pub fn authorization(
    credentials: &Credentials,
    scope: &Scope<'_>,
    timestamp: &Timestamp,
    request: &Request<'_>,
) -> String {
    let mut headers: Vec<(&str, String)> = request
        .headers
        .iter()
        .map(|(name, value)| (*name, normalize_header_value(value)))
        .collect();
    headers.sort_by(|a, b| a.0.cmp(b.0));
    let signed_headers = headers
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(";");

    let mut canonical = String::new();
    canonical.push_str(request.method);
    canonical.push('\n');
    canonical.push_str(request.path);
    // The query string is always empty here.
    canonical.push_str("\n\n");
    for (name, value) in &headers {
        canonical.push_str(name);
        canonical.push(':');
        canonical.push_str(value);
        canonical.push('\n');
    }
    canonical.push('\n');
    canonical.push_str(&signed_headers);
    canonical.push('\n');
    canonical.push_str(&hex(digest::digest(&digest::SHA256, request.body).as_ref()));

    let credential_scope = format!(
        "{}/{}/{}/aws4_request",
        timestamp.date, scope.region, scope.service
    );
    let string_to_sign = format!(
        "{ALGORITHM}\n{}\n{credential_scope}\n{}",
        timestamp.date_time,
        hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
    );

    let key = signing_key(credentials, &timestamp.date, scope);
    let signature = hmac::sign(&key, string_to_sign.as_bytes());
    format!(
        "{ALGORITHM} Credential={}/{credential_scope}, SignedHeaders={signed_headers}, Signature={}",
        credentials.access_key_id,
        hex(signature.as_ref())
    )
}

/// Returns the secret access key, for handing temporary credentials from STS
/// to a cache that keeps them zeroized.
pub fn secret_access_key(credentials: &Credentials) -> &str {
    credentials.secret_access_key.as_str()
}

/// Returns the session token to send as `x-amz-security-token`, if any.
pub fn session_token(credentials: &Credentials) -> Option<&str> {
    credentials.session_token.as_deref().map(String::as_str)
}

/// Derives the signing key: HMAC chained over the date, region, service and
/// `aws4_request`, starting from `AWS4` and the secret key.
fn signing_key(credentials: &Credentials, date: &str, scope: &Scope<'_>) -> hmac::Key {
    let mut seed = Zeroizing::new(String::with_capacity(
        4 + credentials.secret_access_key.len(),
    ));
    seed.push_str("AWS4");
    seed.push_str(&credentials.secret_access_key);
    let mut key = hmac::Key::new(hmac::HMAC_SHA256, seed.as_bytes());
    for part in [date, scope.region, scope.service, "aws4_request"] {
        let tag = hmac::sign(&key, part.as_bytes());
        key = hmac::Key::new(hmac::HMAC_SHA256, tag.as_ref());
    }
    key
}

/// Trims a header value and collapses runs of spaces, as the canonical form requires.
fn normalize_header_value(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns the example credentials of AWS's published SigV4 test suite.
    fn suite_credentials() -> Credentials {
        Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
        )
    }

    fn suite_timestamp() -> Timestamp {
        // 2015-08-30T12:36:00Z
        Timestamp::from_unix(1_440_938_160).unwrap()
    }

    const SUITE_SCOPE: Scope<'static> = Scope {
        region: "us-east-1",
        service: "service",
    };

    fn sign_suite(method: &str) -> String {
        authorization(
            &suite_credentials(),
            &SUITE_SCOPE,
            &suite_timestamp(),
            &Request {
                method,
                path: "/",
                headers: &[
                    ("host", "example.amazonaws.com"),
                    ("x-amz-date", "20150830T123600Z"),
                ],
                body: b"",
            },
        )
    }

    #[test]
    fn timestamp_forms() {
        let timestamp = suite_timestamp();
        assert_eq!(timestamp.date, "20150830");
        assert_eq!(timestamp.date_time(), "20150830T123600Z");
    }

    #[test]
    fn get_vanilla_vector() {
        assert_eq!(
            sign_suite("GET"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn post_vanilla_vector() {
        assert_eq!(
            sign_suite("POST"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"
        );
    }

    #[test]
    fn headers_sorted_and_body_signed() {
        let sign = |body: &[u8], target: &str| {
            authorization(
                &suite_credentials(),
                &SUITE_SCOPE,
                &suite_timestamp(),
                &Request {
                    method: "POST",
                    path: "/",
                    headers: &[
                        ("x-amz-target", target),
                        ("host", "example.amazonaws.com"),
                        ("content-type", "application/x-amz-json-1.1"),
                        ("x-amz-date", "20150830T123600Z"),
                    ],
                    body,
                },
            )
        };
        let first = sign(b"{}", "TrentService.Decrypt");
        assert!(
            first.contains("SignedHeaders=content-type;host;x-amz-date;x-amz-target,"),
            "{first}"
        );
        assert_ne!(
            first,
            sign(b"{ }", "TrentService.Decrypt"),
            "the body is signed"
        );
        assert_ne!(
            first,
            sign(b"{}", "TrentService.Encrypt"),
            "headers are signed"
        );
        assert_eq!(
            first,
            sign(b"{}", "  TrentService.Decrypt "),
            "header values are trimmed before signing"
        );
    }

    #[test]
    fn credentials_from_lookup() {
        let variables = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| value.to_string())
            }
        };
        let credentials = Credentials::from_lookup(variables(&[
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "s3cr3t-value"),
            ("AWS_SESSION_TOKEN", "t0ken-value"),
        ]))
        .unwrap();
        assert_eq!(credentials.access_key_id(), "AKIDEXAMPLE");
        assert_eq!(session_token(&credentials), Some("t0ken-value"));
        let shown = format!("{credentials:?}");
        assert!(!shown.contains("s3cr3t-value"), "{shown}");
        assert!(!shown.contains("t0ken-value"), "{shown}");

        let missing = Credentials::from_lookup(variables(&[("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")]))
            .unwrap_err();
        assert!(
            missing.to_string().contains("AWS_SECRET_ACCESS_KEY"),
            "{missing}"
        );
        let empty = Credentials::from_lookup(variables(&[
            ("AWS_ACCESS_KEY_ID", ""),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
        ]))
        .unwrap_err();
        assert!(matches!(
            empty,
            CredentialsError::Empty("AWS_ACCESS_KEY_ID")
        ));
    }
}
