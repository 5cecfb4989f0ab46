//! Connections: which provider endpoint and credentials a lookup uses, and
//! their validation. The server's connections name hosted secrets as
//! credentials; the reference agent's name local files.

use serde::{Deserialize, Serialize};

use keygate_vault::location::MAX_LOCATION_FIELD_BYTES;

pub use keygate_vault::location::MAX_CONNECTION_NAME_BYTES;

/// A hosted secret that contains a credential, in a project of the connection's account.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct HostedCredential {
    pub project: String,
    pub secret: String,
}

/// A file on the agent's machine that contains a credential.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct FileCredential {
    pub file: std::path::PathBuf,
}

/// The authentication method of a HashiCorp Vault connection.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum VaultAuth<C> {
    /// A Vault token, sent as `X-Vault-Token`.
    Token { token: C },
    /// An AppRole login with a role id and a secret id, at `auth/{mount}/login`.
    Approle {
        role_id: String,
        secret_id: C,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mount: Option<String>,
    },
}

/// The settings of one connection. `C` is where a credential comes from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    deny_unknown_fields,
    bound(deserialize = "C: Deserialize<'de>")
)]
pub enum ConnectionSpec<C> {
    /// AWS Secrets Manager in one region. Without `credentials`, the
    /// process's environment variables (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`) or shared credentials
    /// file sign the calls. The credential is a JSON object
    /// `{"access_key_id", "secret_access_key", "session_token"?}`. With
    /// `role_arn`, those credentials assume the role first.
    AwsSecretsManager {
        region: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sts_endpoint: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        credentials: Option<C>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role_arn: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        external_id: Option<String>,
    },
    /// Azure Key Vault with an Entra ID application's client secret.
    AzureKeyVault {
        tenant_id: String,
        client_id: String,
        client_secret: C,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        authority_url: Option<String>,
    },
    /// GCP Secret Manager with a service-account key (the JSON key file's text).
    GcpSecretManager {
        service_account_key: C,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_url: Option<String>,
        /// With version `latest`, skip a disabled or destroyed latest version
        /// and resolve the newest enabled one.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        latest_falls_back_to_enabled: bool,
    },
    /// A HashiCorp Vault server's KV v2 engines.
    HashicorpVault {
        address: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        namespace: Option<String>,
        auth: VaultAuth<C>,
    },
    /// Lookups go to a connected agent of the account as tasks; the agent
    /// resolves them with its own connection named `connection`.
    Agent {
        agent_id: String,
        connection: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
}

/// A connection setting was invalid; the message names the field and value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("connection field {field} = {value:?} {reason}")]
pub struct InvalidConnection {
    pub field: &'static str,
    pub value: String,
    pub reason: String,
}

fn invalid(field: &'static str, value: &str, reason: impl Into<String>) -> InvalidConnection {
    InvalidConnection {
        field,
        value: value.chars().take(200).collect(),
        reason: reason.into(),
    }
}

/// Checks a connection name: 1 to 128 bytes of ASCII letters, digits and `-_.`.
pub fn validate_connection_name(name: &str) -> Result<(), InvalidConnection> {
    if keygate_vault::location::is_valid_connection_name(name) {
        Ok(())
    } else {
        Err(invalid(
            "name",
            name,
            format!(
                "must be 1 to {MAX_CONNECTION_NAME_BYTES} ASCII letters, digits, '-', '_' or '.'"
            ),
        ))
    }
}

fn check_text(field: &'static str, value: &str) -> Result<(), InvalidConnection> {
    if value.is_empty() {
        return Err(invalid(field, value, "must not be empty"));
    }
    if value.len() > MAX_LOCATION_FIELD_BYTES {
        return Err(invalid(
            field,
            value,
            format!("is longer than {MAX_LOCATION_FIELD_BYTES} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, value, "must not contain control characters"));
    }
    Ok(())
}

fn check_optional(field: &'static str, value: &Option<String>) -> Result<(), InvalidConnection> {
    value.as_deref().map_or(Ok(()), |v| check_text(field, v))
}

/// Checks a base URL: https, or http to a loopback host, with no query.
fn check_url(field: &'static str, value: &str) -> Result<(), InvalidConnection> {
    check_text(field, value)?;
    crate::jwks_client::OutboundUrl::parse(value, "https://host")
        .map_err(|reason| invalid(field, value, reason))?;
    if value.contains(['?', '#']) {
        return Err(invalid(field, value, "must not have a query or fragment"));
    }
    Ok(())
}

fn check_optional_url(
    field: &'static str,
    value: &Option<String>,
) -> Result<(), InvalidConnection> {
    value.as_deref().map_or(Ok(()), |v| check_url(field, v))
}

impl<C> ConnectionSpec<C> {
    /// Returns the provider's name, as in a secret location's `type`, or `agent`.
    pub fn provider(&self) -> &'static str {
        match self {
            ConnectionSpec::AwsSecretsManager { .. } => "aws_secrets_manager",
            ConnectionSpec::AzureKeyVault { .. } => "azure_key_vault",
            ConnectionSpec::GcpSecretManager { .. } => "gcp_secret_manager",
            ConnectionSpec::HashicorpVault { .. } => "hashicorp_vault",
            ConnectionSpec::Agent { .. } => "agent",
        }
    }

    /// Returns the URLs the connection sets, by field name. Defaults (the public
    /// endpoints) are not included.
    pub fn urls(&self) -> Vec<(&'static str, &str)> {
        let fields: Vec<(&'static str, Option<&String>)> = match self {
            ConnectionSpec::AwsSecretsManager {
                endpoint,
                sts_endpoint,
                ..
            } => vec![
                ("endpoint", endpoint.as_ref()),
                ("sts_endpoint", sts_endpoint.as_ref()),
            ],
            ConnectionSpec::AzureKeyVault { authority_url, .. } => {
                vec![("authority_url", authority_url.as_ref())]
            }
            ConnectionSpec::GcpSecretManager {
                endpoint,
                token_url,
                ..
            } => vec![
                ("endpoint", endpoint.as_ref()),
                ("token_url", token_url.as_ref()),
            ],
            ConnectionSpec::HashicorpVault { address, .. } => vec![("address", Some(address))],
            ConnectionSpec::Agent { .. } => Vec::new(),
        };
        fields
            .into_iter()
            .filter_map(|(field, url)| url.map(|url| (field, url.as_str())))
            .collect()
    }

    /// Returns the URL fields left unset, whose default is a provider's public endpoint.
    pub fn defaulted_urls(&self) -> Vec<&'static str> {
        match self {
            ConnectionSpec::AwsSecretsManager {
                endpoint,
                sts_endpoint,
                role_arn,
                ..
            } => {
                let mut fields = Vec::new();
                if endpoint.is_none() {
                    fields.push("endpoint");
                }
                if role_arn.is_some() && sts_endpoint.is_none() {
                    fields.push("sts_endpoint");
                }
                fields
            }
            ConnectionSpec::AzureKeyVault { authority_url, .. } => authority_url
                .is_none()
                .then_some("authority_url")
                .into_iter()
                .collect(),
            ConnectionSpec::GcpSecretManager {
                endpoint,
                token_url,
                ..
            } => [("endpoint", endpoint), ("token_url", token_url)]
                .into_iter()
                .filter(|(_, url)| url.is_none())
                .map(|(field, _)| field)
                .collect(),
            ConnectionSpec::HashicorpVault { .. } | ConnectionSpec::Agent { .. } => Vec::new(),
        }
    }

    /// Returns the credential the connection needs, if any.
    pub fn credential(&self) -> Option<&C> {
        match self {
            ConnectionSpec::AwsSecretsManager { credentials, .. } => credentials.as_ref(),
            ConnectionSpec::AzureKeyVault { client_secret, .. } => Some(client_secret),
            ConnectionSpec::GcpSecretManager {
                service_account_key,
                ..
            } => Some(service_account_key),
            ConnectionSpec::HashicorpVault { auth, .. } => match auth {
                VaultAuth::Token { token } => Some(token),
                VaultAuth::Approle { secret_id, .. } => Some(secret_id),
            },
            ConnectionSpec::Agent { .. } => None,
        }
    }

    /// Checks every field except the credential reference, which
    /// `check_credential` checks.
    pub fn validate(
        &self,
        check_credential: impl Fn(&'static str, &C) -> Result<(), InvalidConnection>,
    ) -> Result<(), InvalidConnection> {
        match self {
            ConnectionSpec::AwsSecretsManager {
                region,
                endpoint,
                sts_endpoint,
                credentials,
                role_arn,
                external_id,
            } => {
                check_text("region", region)?;
                let region_ok = region
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                if !region_ok {
                    return Err(invalid(
                        "region",
                        region,
                        "must be an AWS region name such as eu-west-1",
                    ));
                }
                check_optional_url("endpoint", endpoint)?;
                check_optional_url("sts_endpoint", sts_endpoint)?;
                if let Some(credentials) = credentials {
                    check_credential("credentials", credentials)?;
                }
                check_optional("role_arn", role_arn)?;
                if let Some(arn) = role_arn {
                    if !arn.starts_with("arn:") {
                        return Err(invalid(
                            "role_arn",
                            arn,
                            "must be a role ARN such as arn:aws:iam::123456789012:role/keygate",
                        ));
                    }
                }
                check_optional("external_id", external_id)?;
                if external_id.is_some() && role_arn.is_none() {
                    return Err(invalid(
                        "external_id",
                        external_id.as_deref().unwrap_or_default(),
                        "is used only with role_arn; set role_arn too or remove it",
                    ));
                }
                Ok(())
            }
            ConnectionSpec::AzureKeyVault {
                tenant_id,
                client_id,
                client_secret,
                authority_url,
            } => {
                check_text("tenant_id", tenant_id)?;
                if tenant_id.contains(['/', '?', '#']) {
                    return Err(invalid(
                        "tenant_id",
                        tenant_id,
                        "must not contain '/', '?' or '#'",
                    ));
                }
                check_text("client_id", client_id)?;
                check_credential("client_secret", client_secret)?;
                check_optional_url("authority_url", authority_url)
            }
            ConnectionSpec::GcpSecretManager {
                service_account_key,
                endpoint,
                token_url,
                latest_falls_back_to_enabled: _,
            } => {
                check_credential("service_account_key", service_account_key)?;
                check_optional_url("endpoint", endpoint)?;
                check_optional_url("token_url", token_url)
            }
            ConnectionSpec::HashicorpVault {
                address,
                namespace,
                auth,
            } => {
                check_url("address", address)?;
                check_optional("namespace", namespace)?;
                match auth {
                    VaultAuth::Token { token } => check_credential("auth.token", token),
                    VaultAuth::Approle {
                        role_id,
                        secret_id,
                        mount,
                    } => {
                        check_text("auth.role_id", role_id)?;
                        check_optional("auth.mount", mount)?;
                        check_credential("auth.secret_id", secret_id)
                    }
                }
            }
            ConnectionSpec::Agent {
                agent_id,
                connection,
                timeout_ms,
            } => {
                check_text("agent_id", agent_id)?;
                validate_connection_name(connection).map_err(|e| InvalidConnection {
                    field: "connection",
                    ..e
                })?;
                if let Some(ms) = timeout_ms {
                    if !(1..=300_000).contains(ms) {
                        return Err(invalid(
                            "timeout_ms",
                            &ms.to_string(),
                            "must be between 1 and 300000",
                        ));
                    }
                }
                Ok(())
            }
        }
    }
}

/// Checks a hosted credential reference's project id and secret name.
pub fn check_hosted(
    field: &'static str,
    credential: &HostedCredential,
) -> Result<(), InvalidConnection> {
    keygate_vault::validate_project_id(&credential.project).map_err(|e| {
        invalid(
            field,
            &credential.project,
            format!("names an invalid project: {e}"),
        )
    })?;
    keygate_vault::validate_secret_name(&credential.secret).map_err(|e| {
        invalid(
            field,
            &credential.secret,
            format!("names an invalid secret: {e}"),
        )
    })
}

impl StoredConnection {
    /// Returns whether definitions of `project` may use this connection.
    pub fn allows_project(&self, project: &str) -> bool {
        self.projects
            .as_ref()
            .is_none_or(|projects| projects.iter().any(|p| p == project))
    }
}

/// Checks a connection's project allowlist: 1 to 1000 valid project ids.
pub fn check_projects(projects: &Option<Vec<String>>) -> Result<(), InvalidConnection> {
    let Some(projects) = projects else {
        return Ok(());
    };
    if projects.is_empty() || projects.len() > 1000 {
        return Err(invalid(
            "projects",
            &projects.len().to_string(),
            "must list 1 to 1000 project ids; leave it out to allow every project",
        ));
    }
    for project in projects {
        keygate_vault::validate_project_id(project)
            .map_err(|e| invalid("projects", project, e.to_string()))?;
    }
    Ok(())
}

/// Checks a file credential's path: absolute.
pub fn check_file(
    field: &'static str,
    credential: &FileCredential,
) -> Result<(), InvalidConnection> {
    if credential.file.is_absolute() {
        Ok(())
    } else {
        Err(invalid(
            field,
            &credential.file.display().to_string(),
            "must be an absolute path",
        ))
    }
}

/// A connection as stored: its name and settings, and times.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StoredConnection {
    pub name: String,
    pub spec: ConnectionSpec<HostedCredential>,
    /// The projects whose definitions may use the connection; `None` allows
    /// every project of the account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projects: Option<Vec<String>>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: serde_json::Value) -> ConnectionSpec<HostedCredential> {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn valid_connections_pass() {
        let specs = [
            json!({"type": "aws_secrets_manager", "region": "eu-west-1"}),
            json!({"type": "aws_secrets_manager", "region": "us-east-1", "endpoint": "http://127.0.0.1:5000",
                   "credentials": {"project": "ops", "secret": "aws/keys"},
                   "role_arn": "arn:aws:iam::123456789012:role/r", "external_id": "x"}),
            json!({"type": "azure_key_vault", "tenant_id": "t", "client_id": "c",
                   "client_secret": {"project": "ops", "secret": "azure"}}),
            json!({"type": "gcp_secret_manager", "service_account_key": {"project": "ops", "secret": "gcp"},
                   "latest_falls_back_to_enabled": true}),
            json!({"type": "hashicorp_vault", "address": "https://vault.example.com:8200",
                   "auth": {"method": "approle", "role_id": "r", "secret_id": {"project": "ops", "secret": "s"}}}),
            json!({"type": "agent", "agent_id": "agt_1", "connection": "aws-prod"}),
        ];
        for spec in specs {
            let parsed = parse(spec.clone());
            parsed
                .validate(check_hosted)
                .unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(serde_json::to_value(&parsed).unwrap(), spec);
        }
    }

    #[test]
    fn invalid_connections_name_the_field() {
        let cases = [
            (
                json!({"type": "aws_secrets_manager", "region": "EU WEST"}),
                "region",
            ),
            (
                json!({"type": "aws_secrets_manager", "region": "eu-west-1", "endpoint": "http://10.0.0.1"}),
                "endpoint",
            ),
            (
                json!({"type": "aws_secrets_manager", "region": "eu-west-1", "external_id": "x"}),
                "external_id",
            ),
            (
                json!({"type": "aws_secrets_manager", "region": "eu-west-1", "role_arn": "role"}),
                "role_arn",
            ),
            (
                json!({"type": "azure_key_vault", "tenant_id": "a/b", "client_id": "c",
                    "client_secret": {"project": "ops", "secret": "s"}}),
                "tenant_id",
            ),
            (
                json!({"type": "gcp_secret_manager", "service_account_key": {"project": "Bad Project", "secret": "s"}}),
                "service_account_key",
            ),
            (
                json!({"type": "hashicorp_vault", "address": "ftp://vault",
                    "auth": {"method": "token", "token": {"project": "ops", "secret": "t"}}}),
                "address",
            ),
            (
                json!({"type": "agent", "agent_id": "agt_1", "connection": "a b"}),
                "connection",
            ),
            (
                json!({"type": "agent", "agent_id": "agt_1", "connection": "c", "timeout_ms": 0}),
                "timeout_ms",
            ),
        ];
        for (spec, field) in cases {
            let error = parse(spec.clone()).validate(check_hosted).unwrap_err();
            assert_eq!(error.field, field, "{spec}: {error}");
        }
        assert!(serde_json::from_value::<ConnectionSpec<HostedCredential>>(
            json!({"type": "azure_key_vault", "tenant_id": "t", "client_id": "c", "client_secret": "plain"})
        )
        .is_err());
        assert!(validate_connection_name("aws-prod_1.eu").is_ok());
        assert!(validate_connection_name("").is_err());
        assert!(validate_connection_name("a/b").is_err());
    }
}
