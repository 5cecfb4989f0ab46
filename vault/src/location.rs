//! Secret locations (a hosted secret in this vault, or a secret at an external
//! provider) and their validation.

use serde::{Deserialize, Serialize};

use crate::error::VaultError;
use crate::ids::validate_secret_name;

/// Maximum length of any string field of a location, in bytes.
pub const MAX_LOCATION_FIELD_BYTES: usize = 2048;

/// The location of a secret value. The JSON form is an object whose `type`
/// field names the provider, for example
/// `{"type": "hosted", "secret": "db/password"}`. Unknown fields are rejected.
///
/// Fields named `json_key` select one entry of a JSON object value; see
/// [`crate::Vault::resolve`] for the lookup rule. Fields named `connection`
/// name the provider credentials to use.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SecretLocation {
    /// A secret stored in this vault, read at its latest version.
    Hosted {
        secret: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        json_key: Option<String>,
    },
    /// A secret in AWS Secrets Manager. At most one of `version_id` and
    /// `version_stage` may be set.
    AwsSecretsManager {
        secret_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version_stage: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        json_key: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        connection: Option<String>,
    },
    /// A secret in Azure Key Vault. `vault_url` must use https, except for
    /// http to a loopback host (127.0.0.1, localhost or `[::1]`).
    AzureKeyVault {
        vault_url: String,
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        json_key: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        connection: Option<String>,
    },
    /// A secret in GCP Secret Manager. `version` is `"latest"` or a positive
    /// integer.
    GcpSecretManager {
        project: String,
        secret: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        json_key: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        connection: Option<String>,
    },
    /// A secret in a HashiCorp Vault KV engine. `key` selects one field of the
    /// secret, and `version` (at least 1) one KV v2 version.
    HashicorpVault {
        mount: String,
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        connection: Option<String>,
    },
}

impl SecretLocation {
    /// Returns the provider's name, as in the JSON `type` field.
    pub fn provider(&self) -> &'static str {
        match self {
            SecretLocation::Hosted { .. } => "hosted",
            SecretLocation::AwsSecretsManager { .. } => "aws_secrets_manager",
            SecretLocation::AzureKeyVault { .. } => "azure_key_vault",
            SecretLocation::GcpSecretManager { .. } => "gcp_secret_manager",
            SecretLocation::HashicorpVault { .. } => "hashicorp_vault",
        }
    }

    /// Returns the secret's id at its external provider, in the form its
    /// users write it: the AWS secret id (a name or an ARN),
    /// `{vault_url}/secrets/{name}` for Azure,
    /// `projects/{project}/secrets/{secret}` for GCP, and `{mount}/{path}`
    /// for HashiCorp Vault. Versions, JSON keys and connections are left
    /// out. None for a hosted secret.
    pub fn external_id(&self) -> Option<String> {
        match self {
            SecretLocation::Hosted { .. } => None,
            SecretLocation::AwsSecretsManager { secret_id, .. } => Some(secret_id.clone()),
            SecretLocation::AzureKeyVault {
                vault_url, name, ..
            } => Some(format!(
                "{}/secrets/{name}",
                vault_url.trim_end_matches('/')
            )),
            SecretLocation::GcpSecretManager {
                project, secret, ..
            } => Some(format!("projects/{project}/secrets/{secret}")),
            SecretLocation::HashicorpVault { mount, path, .. } => Some(format!(
                "{}/{}",
                mount.trim_matches('/'),
                path.trim_start_matches('/')
            )),
        }
    }

    /// Checks the fields of the location.
    ///
    /// Every string field, when present, must be non-empty, at most
    /// [`MAX_LOCATION_FIELD_BYTES`] bytes long and free of control characters.
    /// Provider rules add to that:
    ///
    /// - hosted: `secret` must pass [`validate_secret_name`].
    /// - AWS: at most one of `version_id` and `version_stage` may be set.
    /// - Azure: `vault_url` must be an https URL, or http to 127.0.0.1,
    ///   localhost or `[::1]`.
    /// - GCP: `version` must be `"latest"` or a positive integer.
    /// - HashiCorp Vault: `version` must be at least 1.
    /// - every external provider: `connection` must be 1 to 128 ASCII
    ///   letters, digits, `-`, `_` or `.`, the rule of connection names.
    ///
    /// The error names the field and its value.
    pub fn validate(&self) -> Result<(), VaultError> {
        match self {
            SecretLocation::Hosted { secret, json_key } => {
                validate_secret_name(secret).map_err(|error| match error {
                    VaultError::InvalidName { value, reason } => VaultError::InvalidLocation {
                        field: "secret",
                        value,
                        reason,
                    },
                    other => other,
                })?;
                check_optional("json_key", json_key)
            }
            SecretLocation::AwsSecretsManager {
                secret_id,
                version_id,
                version_stage,
                json_key,
                connection,
            } => {
                check_required("secret_id", secret_id)?;
                check_optional("version_id", version_id)?;
                check_optional("version_stage", version_stage)?;
                if let (Some(_), Some(stage)) = (version_id, version_stage) {
                    return Err(invalid(
                        "version_stage",
                        stage,
                        "cannot be set together with version_id; set one of them",
                    ));
                }
                check_optional("json_key", json_key)?;
                check_connection(connection)
            }
            SecretLocation::AzureKeyVault {
                vault_url,
                name,
                version,
                json_key,
                connection,
            } => {
                check_required("vault_url", vault_url)?;
                check_vault_url(vault_url)?;
                check_required("name", name)?;
                check_optional("version", version)?;
                check_optional("json_key", json_key)?;
                check_connection(connection)
            }
            SecretLocation::GcpSecretManager {
                project,
                secret,
                version,
                json_key,
                connection,
            } => {
                check_required("project", project)?;
                check_required("secret", secret)?;
                check_optional("version", version)?;
                if let Some(version) = version {
                    check_gcp_version(version)?;
                }
                check_optional("json_key", json_key)?;
                check_connection(connection)
            }
            SecretLocation::HashicorpVault {
                mount,
                path,
                key,
                version,
                connection,
            } => {
                check_required("mount", mount)?;
                check_required("path", path)?;
                check_optional("key", key)?;
                if *version == Some(0) {
                    return Err(invalid("version", "0", "must be at least 1"));
                }
                check_connection(connection)
            }
        }
    }
}

fn invalid(field: &'static str, value: &str, reason: &str) -> VaultError {
    VaultError::InvalidLocation {
        field,
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

fn check_required(field: &'static str, value: &str) -> Result<(), VaultError> {
    if value.is_empty() {
        return Err(invalid(field, value, "is required and must not be empty"));
    }
    if value.len() > MAX_LOCATION_FIELD_BYTES {
        let reason = format!(
            "is {} bytes long, more than the maximum of {MAX_LOCATION_FIELD_BYTES}",
            value.len()
        );
        return Err(invalid(field, value, &reason));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, value, "must not contain control characters"));
    }
    Ok(())
}

fn check_optional(field: &'static str, value: &Option<String>) -> Result<(), VaultError> {
    match value {
        Some(value) if value.is_empty() => Err(invalid(
            field,
            value,
            "must not be empty when set; omit the field instead",
        )),
        Some(value) => check_required(field, value),
        None => Ok(()),
    }
}

/// Maximum length of a connection name, in bytes.
pub const MAX_CONNECTION_NAME_BYTES: usize = 128;

/// Returns whether `name` is a valid connection name: 1 to
/// [`MAX_CONNECTION_NAME_BYTES`] ASCII letters, digits, `-`, `_` or `.`.
pub fn is_valid_connection_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CONNECTION_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Checks a `connection` field with [`is_valid_connection_name`].
fn check_connection(connection: &Option<String>) -> Result<(), VaultError> {
    let Some(name) = connection else {
        return Ok(());
    };
    if is_valid_connection_name(name) {
        Ok(())
    } else {
        Err(invalid(
            "connection",
            name,
            "must be 1 to 128 ASCII letters, digits, '-', '_' or '.', the name of one of the account's connections",
        ))
    }
}

fn check_gcp_version(version: &str) -> Result<(), VaultError> {
    if version == "latest" {
        return Ok(());
    }
    let is_number = version.bytes().all(|b| b.is_ascii_digit());
    let is_positive = version.bytes().any(|b| b != b'0');
    if !is_number || !is_positive {
        return Err(invalid(
            "version",
            version,
            "must be \"latest\" or a positive integer",
        ));
    }
    Ok(())
}

/// Requires an https URL with a host, or an http URL whose host is loopback.
fn check_vault_url(url: &str) -> Result<(), VaultError> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        invalid(
            "vault_url",
            url,
            "must be an absolute URL such as https://NAME.vault.azure.net",
        )
    })?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(invalid(
            "vault_url",
            url,
            "must not contain user information",
        ));
    }
    let host = host_of(authority);
    if host.is_empty() {
        return Err(invalid("vault_url", url, "has no host"));
    }
    match scheme.to_ascii_lowercase().as_str() {
        "https" => Ok(()),
        "http" if is_loopback_host(host) => Ok(()),
        "http" => Err(invalid(
            "vault_url",
            url,
            "must use https (http is allowed only for 127.0.0.1, localhost and [::1])",
        )),
        _ => Err(invalid("vault_url", url, "must use https")),
    }
}

/// Returns the host part of a URL authority, without the port. An IPv6 host keeps its
/// brackets.
fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    authority.split(':').next().unwrap_or_default()
}

fn is_loopback_host(host: &str) -> bool {
    host == "127.0.0.1" || host == "[::1]" || host.eq_ignore_ascii_case("localhost")
}

#[cfg(test)]
mod tests;
