//! AWS Secrets Manager: GetSecretValue signed with SigV4, with the
//! connection's credentials or after an STS AssumeRole into the customer's account.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::error::{FailureKind, ProviderError};
use super::http::{encode_component, transient_failure, Request};
use super::tokens::token_key;
use super::{Fetched, ProviderContext};
use crate::jwks_client::OutboundUrl;
use crate::master_key::kms::error_details;
use crate::master_key::sigv4::{self, Credentials, Scope, Timestamp};

/// Lifetime requested for an assumed role's session: one hour, the STS
/// default and the longest a chained role session may last.
const ROLE_SESSION_SECS: u64 = 3600;
/// `RoleSessionName` of every assumed role, visible in the customer's CloudTrail.
const ROLE_SESSION_NAME: &str = "keygate";

/// The endpoints and credentials of Secrets Manager calls.
pub struct AwsConnection<'a> {
    pub region: &'a str,
    pub endpoint: Option<&'a str>,
    pub sts_endpoint: Option<&'a str>,
    /// The credential's text, `{"access_key_id", "secret_access_key",
    /// "session_token"?}`; None uses the process's default credential chain.
    pub credentials: Option<&'a str>,
    pub role_arn: Option<&'a str>,
    pub external_id: Option<&'a str>,
}

/// The secret to read: a name or ARN, and at most one of a version id and a stage.
pub struct AwsLocation<'a> {
    pub secret_id: &'a str,
    pub version_id: Option<&'a str>,
    pub version_stage: Option<&'a str>,
}

/// Reads one secret value with GetSecretValue.
pub async fn fetch(
    ctx: &ProviderContext,
    connection: &AwsConnection<'_>,
    location: &AwsLocation<'_>,
) -> Result<Fetched, ProviderError> {
    let credentials = credentials(ctx, connection).await?;
    let endpoint = connection.endpoint.map_or_else(
        || format!("https://secretsmanager.{}.amazonaws.com", connection.region),
        str::to_owned,
    );
    let mut request = json!({ "SecretId": location.secret_id });
    if let Some(version_id) = location.version_id {
        request["VersionId"] = json!(version_id);
    }
    if let Some(stage) = location.version_stage {
        request["VersionStage"] = json!(stage);
    }
    let body = request.to_string().into_bytes();
    let response = send_signed(
        ctx,
        &credentials,
        &endpoint,
        connection.region,
        "secretsmanager",
        "application/x-amz-json-1.1",
        Some("secretsmanager.GetSecretValue"),
        body,
    )
    .await?;
    if !response.status.is_success() {
        let (code, message) = error_details(response.status, &response.body);
        let version = match (location.version_id, location.version_stage) {
            (Some(id), _) => format!(" version id {id:?}"),
            (None, Some(stage)) => format!(" stage {stage:?}"),
            (None, None) => String::new(),
        };
        let detail = format!(
            "GetSecretValue for {:?}{version}: {code}: {message}",
            location.secret_id
        );
        let kind = match code.as_str() {
            "ResourceNotFoundException" => FailureKind::NotFound,
            "AccessDeniedException"
            | "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "IncompleteSignature"
            | "ExpiredTokenException"
            | "DecryptionFailure" => FailureKind::AccessDenied,
            "ThrottlingException" | "TooManyRequestsException" => FailureKind::Throttled,
            // Secrets Manager refuses reads of a secret scheduled for deletion
            // with this code.
            "InvalidRequestException" if message.contains("deletion") => FailureKind::Disabled,
            "InvalidRequestException" | "InvalidParameterException" => FailureKind::Misconfigured,
            "InternalServiceError" | "InternalFailure" | "ServiceUnavailable" => {
                FailureKind::ProviderError
            }
            _ => match transient_failure(&response, "Secrets Manager", &detail) {
                Some(error) => return Err(error),
                None if response.status == http::StatusCode::FORBIDDEN => FailureKind::AccessDenied,
                None => FailureKind::InvalidResponse,
            },
        };
        return Err(ProviderError::new(kind, detail).with_retry_after(response.retry_after()));
    }

    let body = response.json("Secrets Manager")?;
    let version = body
        .get("VersionId")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let value = if let Some(text) = body.get("SecretString").and_then(Value::as_str) {
        Zeroizing::new(text.to_owned())
    } else if let Some(binary) = body.get("SecretBinary").and_then(Value::as_str) {
        let bytes = Zeroizing::new(STANDARD.decode(binary).map_err(|_| {
            ProviderError::invalid_response(
                "Secrets Manager sent a SecretBinary that is not base64",
            )
        })?);
        Zeroizing::new(String::from_utf8(bytes.to_vec()).map_err(|_| {
            ProviderError::invalid_response(format!(
                "secret {:?} contains binary data that is not UTF-8 text; keygate returns text values only",
                location.secret_id
            ))
        })?)
    } else {
        return Err(ProviderError::invalid_response(
            "Secrets Manager returned GetSecretValue without SecretString or SecretBinary",
        ));
    };
    Ok(Fetched { value, version })
}

/// Returns the credentials that sign Secrets Manager calls: the
/// connection's, or keygate's environment's, then the assumed role's when
/// `role_arn` is set (kept until shortly before the session ends).
async fn credentials(
    ctx: &ProviderContext,
    connection: &AwsConnection<'_>,
) -> Result<Credentials, ProviderError> {
    let base = match connection.credentials {
        Some(text) => parse_credentials(text)?,
        None => match (
            default_chain(|name| std::env::var(name).ok()),
            &ctx.aws_metadata,
        ) {
            (Ok(credentials), _) => credentials,
            (Err(_), Some(endpoint)) => instance_credentials(ctx, endpoint).await?,
            (Err(error), None) => return Err(error),
        },
    };
    let Some(role_arn) = connection.role_arn else {
        return Ok(base);
    };
    let key = token_key(
        &[
            "aws-sts",
            connection.sts_endpoint.unwrap_or(connection.region),
            role_arn,
            connection.external_id.unwrap_or(""),
            base.access_key_id(),
        ],
        connection.credentials.unwrap_or("").as_bytes(),
    );
    if let Some(cached) = ctx.tokens.get(&key) {
        return parse_credentials(&cached);
    }
    let assumed = assume_role(ctx, connection, &base, role_arn).await?;
    let text = Zeroizing::new(
        json!({
            "access_key_id": assumed.access_key_id(),
            "secret_access_key": sigv4::secret_access_key(&assumed),
            "session_token": sigv4::session_token(&assumed),
        })
        .to_string(),
    );
    ctx.tokens
        .put(key, text, Duration::from_secs(ROLE_SESSION_SECS));
    Ok(assumed)
}

/// Returns the credentials of the process: `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`, or else the profile
/// `AWS_PROFILE` (default `default`) of the shared credentials file
/// (`AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`).
/// `lookup` returns an environment variable's value.
fn default_chain(lookup: impl Fn(&str) -> Option<String>) -> Result<Credentials, ProviderError> {
    let from_env = match Credentials::from_lookup(&lookup) {
        Ok(credentials) => return Ok(credentials),
        Err(e) => e,
    };
    let path = match lookup("AWS_SHARED_CREDENTIALS_FILE").filter(|p| !p.is_empty()) {
        Some(path) => std::path::PathBuf::from(path),
        None => match lookup("HOME").filter(|h| !h.is_empty()) {
            Some(home) => std::path::Path::new(&home).join(".aws/credentials"),
            None => {
                return Err(ProviderError::misconfigured(format!(
                    "the connection names no credentials, and the environment has none: {from_env}"
                )))
            }
        },
    };
    let profile = lookup("AWS_PROFILE")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => Zeroizing::new(text),
        Err(e) => {
            return Err(ProviderError::misconfigured(format!(
                "the connection names no credentials, the environment has none ({from_env}), and the shared credentials file {} cannot be read: {e}",
                path.display()
            )))
        }
    };
    profile_credentials(&text, &profile).ok_or_else(|| {
        ProviderError::misconfigured(format!(
            "the shared credentials file {} has no profile [{profile}] with aws_access_key_id and aws_secret_access_key",
            path.display()
        ))
    })
}

/// Path of the role credentials under the metadata service's base URL.
const IMDS_CREDENTIALS_PATH: &str = "/latest/meta-data/iam/security-credentials/";
/// How long credentials from the metadata service are kept. The service
/// replaces them well before they expire, so a short life is safe.
const IMDS_CREDENTIALS_LIFE: Duration = Duration::from_secs(300);

/// Reads the instance role's credentials from the EC2 metadata service at
/// `endpoint` with IMDSv2: a session token, the role name, then the role's
/// credentials. They are kept for [`IMDS_CREDENTIALS_LIFE`].
async fn instance_credentials(
    ctx: &ProviderContext,
    endpoint: &str,
) -> Result<Credentials, ProviderError> {
    let key = token_key(&["aws-imds", endpoint], b"");
    if let Some(cached) = ctx.tokens.get(&key) {
        return parse_credentials(&cached);
    }
    let base = endpoint.trim_end_matches('/');
    let failed = |step: &str, response: &super::http::Response| {
        ProviderError::new(
            FailureKind::AccessDenied,
            format!(
                "the instance-metadata service at {base} answered the {step} request with HTTP {}",
                response.status.as_u16()
            ),
        )
    };
    let token_url = format!("{base}/latest/api/token");
    let request = Request {
        method: http::Method::PUT,
        url: &token_url,
        headers: vec![("x-aws-ec2-metadata-token-ttl-seconds", "300".to_owned())],
        body: bytes::Bytes::new(),
    };
    let response = ctx.http.send_configured(request).await?;
    if !response.status.is_success() {
        return Err(failed("session token", &response));
    }
    let session = Zeroizing::new(String::from_utf8_lossy(&response.body).trim().to_owned());

    let roles_url = format!("{base}{IMDS_CREDENTIALS_PATH}");
    let request = Request::get(&roles_url).header("x-aws-ec2-metadata-token", session.as_str());
    let response = ctx.http.send_configured(request).await?;
    if !response.status.is_success() {
        return Err(failed("role name", &response));
    }
    let roles = String::from_utf8_lossy(&response.body).into_owned();
    let role = roles.lines().map(str::trim).find(|l| !l.is_empty()).ok_or_else(|| {
        ProviderError::misconfigured(format!(
            "the instance-metadata service at {base} names no instance role; attach one to the instance"
        ))
    })?;

    let role_url = format!("{base}{IMDS_CREDENTIALS_PATH}{}", encode_component(role));
    let request = Request::get(&role_url).header("x-aws-ec2-metadata-token", session.as_str());
    let response = ctx.http.send_configured(request).await?;
    if !response.status.is_success() {
        return Err(failed("role credentials", &response));
    }
    let body = response.json("the instance-metadata service")?;
    let field = |name: &str| {
        body.get(name)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    };
    let (Some(key_id), Some(secret)) = (field("AccessKeyId"), field("SecretAccessKey")) else {
        return Err(ProviderError::invalid_response(format!(
            "the instance-metadata service at {base} sent role credentials without AccessKeyId and SecretAccessKey"
        )));
    };
    let text = Zeroizing::new(
        json!({
            "access_key_id": key_id,
            "secret_access_key": secret,
            "session_token": field("Token"),
        })
        .to_string(),
    );
    let cached = ctx.tokens.put(key, text, IMDS_CREDENTIALS_LIFE);
    parse_credentials(&cached)
}

/// Reads one profile of an AWS shared credentials file (INI: `[name]`
/// sections of `key = value` lines, `#` and `;` comments).
fn profile_credentials(text: &str, profile: &str) -> Option<Credentials> {
    let mut in_profile = false;
    let (mut key_id, mut secret, mut token) = (None, None, None);
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = section.trim() == profile;
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if !in_profile {
            continue;
        }
        let value = value.trim().to_owned();
        match key.trim() {
            "aws_access_key_id" => key_id = Some(value),
            "aws_secret_access_key" => secret = Some(value),
            "aws_session_token" => token = Some(value),
            _ => {}
        }
    }
    let (key_id, secret) = (
        key_id.filter(|v| !v.is_empty())?,
        secret.filter(|v| !v.is_empty())?,
    );
    Some(Credentials::new(
        key_id,
        secret,
        token.filter(|t| !t.is_empty()),
    ))
}

/// Parses the JSON credential of a connection. The error never quotes it.
fn parse_credentials(text: &str) -> Result<Credentials, ProviderError> {
    let value: Value = serde_json::from_str(text).map_err(|_| {
        ProviderError::misconfigured(
            "the AWS credential is not a JSON object like {\"access_key_id\": ..., \"secret_access_key\": ...}",
        )
    })?;
    let field = |name: &str| {
        value
            .get(name)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    };
    let (Some(key_id), Some(secret)) = (field("access_key_id"), field("secret_access_key")) else {
        return Err(ProviderError::misconfigured(
            "the AWS credential needs the string fields access_key_id and secret_access_key",
        ));
    };
    Ok(Credentials::new(
        key_id,
        secret,
        field("session_token").map(str::to_owned),
    ))
}

/// Calls STS AssumeRole and returns the role session's credentials.
async fn assume_role(
    ctx: &ProviderContext,
    connection: &AwsConnection<'_>,
    base: &Credentials,
    role_arn: &str,
) -> Result<Credentials, ProviderError> {
    let endpoint = connection.sts_endpoint.map_or_else(
        || format!("https://sts.{}.amazonaws.com", connection.region),
        str::to_owned,
    );
    // The serializer is not Send, so it must not live across the await below.
    let form = {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("Action", "AssumeRole")
            .append_pair("Version", "2011-06-15")
            .append_pair("RoleArn", role_arn)
            .append_pair("RoleSessionName", ROLE_SESSION_NAME)
            .append_pair("DurationSeconds", &ROLE_SESSION_SECS.to_string());
        if let Some(external_id) = connection.external_id {
            form.append_pair("ExternalId", external_id);
        }
        form.finish()
    };
    let response = send_signed(
        ctx,
        base,
        &endpoint,
        connection.region,
        "sts",
        "application/x-www-form-urlencoded; charset=utf-8",
        None,
        form.into_bytes(),
    )
    .await?;
    let text = String::from_utf8_lossy(&response.body);
    if !response.status.is_success() {
        let code = xml_text(&text, "Code").unwrap_or_default();
        let message = xml_text(&text, "Message").unwrap_or_default();
        let detail = format!("STS AssumeRole of {role_arn}: {code}: {message}");
        if let Some(error) = transient_failure(&response, "STS", &detail) {
            return Err(error);
        }
        let kind = match code.as_str() {
            "Throttling" => FailureKind::Throttled,
            "AccessDenied" | "InvalidClientTokenId" | "SignatureDoesNotMatch" | "ExpiredToken" => {
                FailureKind::AccessDenied
            }
            _ if response.status == http::StatusCode::FORBIDDEN => FailureKind::AccessDenied,
            _ => FailureKind::Misconfigured,
        };
        return Err(ProviderError::new(kind, detail));
    }
    let field = |name: &str| {
        xml_text(&text, name).ok_or_else(|| {
            ProviderError::invalid_response(format!("STS returned AssumeRole without {name}"))
        })
    };
    Ok(Credentials::new(
        field("AccessKeyId")?,
        field("SecretAccessKey")?,
        Some(field("SessionToken")?),
    ))
}

/// Returns the text of the first `<name>` element of an STS XML response,
/// which has no attributes on these elements and no nested markup in them.
fn xml_text(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    let raw = &xml[start..end];
    Some(
        raw.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// Sends a SigV4-signed POST to `/` of `endpoint`: a JSON call when
/// `target` names the operation (`x-amz-target`), a query-protocol call
/// otherwise. Tests seed local emulators with it too.
#[allow(clippy::too_many_arguments)]
pub async fn send_signed(
    ctx: &ProviderContext,
    credentials: &Credentials,
    endpoint: &str,
    region: &str,
    service: &str,
    content_type: &str,
    target: Option<&str>,
    body: Vec<u8>,
) -> Result<super::http::Response, ProviderError> {
    let url = OutboundUrl::parse(endpoint, "https://secretsmanager.eu-west-1.amazonaws.com")
        .map_err(|reason| {
            ProviderError::misconfigured(format!("the endpoint {endpoint:?} {reason}"))
        })?;
    if !matches!(url.uri.path(), "" | "/") || url.uri.query().is_some() {
        return Err(ProviderError::misconfigured(format!(
            "the endpoint {endpoint:?} must not have a path or query"
        )));
    }
    let timestamp = Timestamp::now();
    let mut headers: Vec<(&str, &str)> = vec![
        ("content-type", content_type),
        ("host", url.authority.as_str()),
        ("x-amz-date", timestamp.date_time()),
    ];
    if let Some(target) = target {
        headers.push(("x-amz-target", target));
    }
    if let Some(token) = sigv4::session_token(credentials) {
        headers.push(("x-amz-security-token", token));
    }
    let authorization = sigv4::authorization(
        credentials,
        &Scope { region, service },
        &timestamp,
        &sigv4::Request {
            method: "POST",
            path: "/",
            headers: &headers,
            body: &body,
        },
    );
    let mut request = Request::post(endpoint, content_type, body)
        .header("authorization", authorization)
        .header("x-amz-date", timestamp.date_time());
    if let Some(target) = target {
        request = request.header("x-amz-target", target);
    }
    if let Some(token) = sigv4::session_token(credentials) {
        request = request.header("x-amz-security-token", token);
    }
    ctx.http.send(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_fields() {
        let xml = "<AssumeRoleResponse><AssumeRoleResult><Credentials><AccessKeyId>ASIA1</AccessKeyId>\
                   <SecretAccessKey>a&amp;b</SecretAccessKey></Credentials></AssumeRoleResult></AssumeRoleResponse>";
        assert_eq!(xml_text(xml, "AccessKeyId").as_deref(), Some("ASIA1"));
        assert_eq!(xml_text(xml, "SecretAccessKey").as_deref(), Some("a&b"));
        assert_eq!(xml_text(xml, "SessionToken"), None);
    }

    #[test]
    fn default_chain_prefers_the_environment_then_the_shared_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials");
        std::fs::write(
            &file,
            "# comment\n[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = s1\n\n\
             [ops]\naws_access_key_id=AKIDOPS\naws_secret_access_key=s2\naws_session_token=t2\n",
        )
        .unwrap();
        let file_text = file.display().to_string();
        let env = |pairs: Vec<(&'static str, String)>| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.clone())
            }
        };

        let from_env = default_chain(env(vec![
            ("AWS_ACCESS_KEY_ID", "AKIDENV".into()),
            ("AWS_SECRET_ACCESS_KEY", "s0".into()),
            ("AWS_SHARED_CREDENTIALS_FILE", file_text.clone()),
        ]))
        .unwrap();
        assert_eq!(from_env.access_key_id(), "AKIDENV");

        let default = default_chain(env(vec![(
            "AWS_SHARED_CREDENTIALS_FILE",
            file_text.clone(),
        )]))
        .unwrap();
        assert_eq!(default.access_key_id(), "AKIDDEFAULT");

        let ops = default_chain(env(vec![
            ("AWS_SHARED_CREDENTIALS_FILE", file_text.clone()),
            ("AWS_PROFILE", "ops".into()),
        ]))
        .unwrap();
        assert_eq!(ops.access_key_id(), "AKIDOPS");
        assert_eq!(sigv4::session_token(&ops), Some("t2"));

        let missing = default_chain(env(vec![
            ("AWS_SHARED_CREDENTIALS_FILE", file_text),
            ("AWS_PROFILE", "nope".into()),
        ]))
        .expect_err("no such profile");
        assert_eq!(missing.kind, FailureKind::Misconfigured);
        assert!(missing.message.contains("[nope]"), "{}", missing.message);
        assert!(!missing.message.contains("s1"), "{}", missing.message);
    }

    #[test]
    fn credential_errors_do_not_quote_the_credential() {
        for text in [
            "not json s3cr3t",
            r#"{"access_key_id": "AKID", "secret": "s3cr3t"}"#,
        ] {
            let error = parse_credentials(text).expect_err("rejected");
            assert_eq!(error.kind, FailureKind::Misconfigured);
            assert!(!error.message.contains("s3cr3t"), "{}", error.message);
        }
        let credentials =
            parse_credentials(r#"{"access_key_id": "AKID", "secret_access_key": "k"}"#).unwrap();
        assert_eq!(credentials.access_key_id(), "AKID");
    }
}
