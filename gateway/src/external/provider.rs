//! One lookup at the provider a connection names: the call of the matching
//! client, then the `json_key` selection. The server and the reference agent
//! both resolve through here.

use keygate_vault::{select_json_key, SecretLocation, SecretValue, VaultError};
use zeroize::Zeroizing;

use super::cache::CachedValue;
use super::connection::ConnectionSpec;
use super::error::{FailureKind, ProviderError};
use super::{aws, azure, gcp, hashicorp, Fetched, ProviderContext};

/// Reads the value `location` names through `connection`, whose credential's
/// text is `credential`. An agent connection is refused: it has no provider
/// of its own.
pub async fn lookup<C>(
    ctx: &ProviderContext,
    connection: &ConnectionSpec<C>,
    credential: Option<&str>,
    location: &SecretLocation,
) -> Result<CachedValue, ProviderError> {
    let needs_credential = || {
        credential.ok_or_else(|| {
            ProviderError::misconfigured("the connection's credential could not be read")
        })
    };
    let (fetched, json_key): (Fetched, Option<&String>) = match (connection, location) {
        (
            ConnectionSpec::AwsSecretsManager {
                region,
                endpoint,
                sts_endpoint,
                credentials: _,
                role_arn,
                external_id,
            },
            SecretLocation::AwsSecretsManager {
                secret_id,
                version_id,
                version_stage,
                json_key,
                ..
            },
        ) => {
            let connection = aws::AwsConnection {
                region,
                endpoint: endpoint.as_deref(),
                sts_endpoint: sts_endpoint.as_deref(),
                credentials: credential,
                role_arn: role_arn.as_deref(),
                external_id: external_id.as_deref(),
            };
            let location = aws::AwsLocation {
                secret_id,
                version_id: version_id.as_deref(),
                version_stage: version_stage.as_deref(),
            };
            (aws::fetch(ctx, &connection, &location).await?, json_key.as_ref())
        }
        (
            ConnectionSpec::AzureKeyVault {
                tenant_id,
                client_id,
                client_secret: _,
                authority_url,
            },
            SecretLocation::AzureKeyVault {
                vault_url,
                name,
                version,
                json_key,
                ..
            },
        ) => {
            let fetched = azure::fetch(
                ctx,
                tenant_id,
                client_id,
                authority_url.as_deref(),
                needs_credential()?,
                vault_url,
                name,
                version.as_deref(),
            )
            .await?;
            (fetched, json_key.as_ref())
        }
        (
            ConnectionSpec::GcpSecretManager {
                service_account_key: _,
                endpoint,
                token_url,
                latest_falls_back_to_enabled,
            },
            SecretLocation::GcpSecretManager {
                project,
                secret,
                version,
                json_key,
                ..
            },
        ) => {
            let fetched = gcp::fetch(
                ctx,
                endpoint.as_deref(),
                token_url.as_deref(),
                *latest_falls_back_to_enabled,
                needs_credential()?,
                project,
                secret,
                version.as_deref(),
            )
            .await?;
            (fetched, json_key.as_ref())
        }
        (
            ConnectionSpec::HashicorpVault {
                address,
                namespace,
                auth,
            },
            SecretLocation::HashicorpVault {
                mount,
                path,
                key,
                version,
                ..
            },
        ) => {
            let fetched = hashicorp::fetch(
                ctx,
                address,
                namespace.as_deref(),
                auth,
                needs_credential()?,
                mount,
                path,
                key.as_deref(),
                *version,
            )
            .await?;
            (fetched, None)
        }
        (ConnectionSpec::Agent { .. }, _) => {
            return Err(ProviderError::misconfigured(
                "an agent connection cannot be resolved here; only the gateway forwards to agents",
            ))
        }
        (connection, location) => {
            return Err(ProviderError::misconfigured(format!(
                "the connection is for {} but the location is in {}; name a connection of the location's provider",
                connection.provider(),
                location.provider()
            )))
        }
    };
    select(fetched, json_key.map(String::as_str), location)
}

/// Applies `json_key` to a fetched value.
fn select(
    fetched: Fetched,
    json_key: Option<&str>,
    location: &SecretLocation,
) -> Result<CachedValue, ProviderError> {
    let Some(key) = json_key else {
        return Ok(CachedValue {
            value: fetched.value,
            version: fetched.version,
        });
    };
    let raw = SecretValue::from_string(fetched.value.as_str().to_owned());
    let selected =
        select_json_key(&raw, location.provider(), key).map_err(|error| match error {
            VaultError::JsonKeyNotFound { key, .. } => ProviderError::new(
                FailureKind::NotFound,
                format!("the value has no JSON key {key:?}"),
            ),
            VaultError::ValueNotJsonObject { .. } => ProviderError::misconfigured(format!(
                "the definition sets json_key {key:?} but the value is not a JSON object"
            )),
            other => ProviderError::misconfigured(other.to_string()),
        })?;
    let text = selected.as_str().ok_or_else(|| {
        ProviderError::invalid_response("the selected JSON entry is not UTF-8 text")
    })?;
    Ok(CachedValue {
        value: Zeroizing::new(text.to_owned()),
        version: fetched.version,
    })
}

/// Returns the version a location requests, as the cache key's text.
pub fn requested_version(location: &SecretLocation) -> String {
    let named = match location {
        SecretLocation::Hosted { .. } => None,
        SecretLocation::AwsSecretsManager {
            version_id,
            version_stage,
            ..
        } => match (version_id, version_stage) {
            (Some(id), _) => Some(format!("id:{id}")),
            (None, Some(stage)) => Some(format!("stage:{stage}")),
            (None, None) => None,
        },
        SecretLocation::AzureKeyVault { version, .. } => version.clone(),
        SecretLocation::GcpSecretManager { version, .. } => version.clone(),
        SecretLocation::HashicorpVault { version, .. } => version.map(|v| v.to_string()),
    };
    named.unwrap_or_else(|| "latest".to_owned())
}

/// Returns the connection name a location sets, if any.
pub fn connection_name(location: &SecretLocation) -> Option<&str> {
    match location {
        SecretLocation::Hosted { .. } => None,
        SecretLocation::AwsSecretsManager { connection, .. }
        | SecretLocation::AzureKeyVault { connection, .. }
        | SecretLocation::GcpSecretManager { connection, .. }
        | SecretLocation::HashicorpVault { connection, .. } => connection.as_deref(),
    }
}
