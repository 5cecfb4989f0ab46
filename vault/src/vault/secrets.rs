//! Hosted secrets: storing new versions, reading them back, and listing.

use crate::crypto::{self, SealedRecord};
use crate::error::VaultError;
use crate::ids::{validate_secret_name, ProjectRef};
use crate::keys::SecretValue;
use crate::layout;
use crate::store::{Space, WriteBatch};

use super::{now_ms, SecretMetadata, Vault, MAX_LIST_LIMIT, MAX_SECRET_VALUE_BYTES};

impl Vault {
    /// Stores `value` as a new version of the secret: version 1 for a new name,
    /// the latest version plus one otherwise. The value and the metadata are
    /// written in one atomic batch.
    ///
    /// Values up to [`MAX_SECRET_VALUE_BYTES`] are accepted, including empty
    /// ones. A larger value fails with [`VaultError::ValueTooLarge`]. The name
    /// must pass [`validate_secret_name`].
    pub fn put_secret(
        &self,
        project: &ProjectRef,
        name: &str,
        value: &SecretValue,
    ) -> Result<SecretMetadata, VaultError> {
        project.validate()?;
        validate_secret_name(name)?;
        if value.len() > MAX_SECRET_VALUE_BYTES {
            return Err(VaultError::ValueTooLarge {
                size: value.len(),
                max: MAX_SECRET_VALUE_BYTES,
            });
        }

        let _guard = self.lock_writes();
        let previous = self.load_metadata(project, name)?;
        let version = match &previous {
            None => 1,
            Some(previous) => previous.version.checked_add(1).ok_or_else(|| {
                let key = layout::secret_meta_key(project, name);
                VaultError::corrupt(
                    Space::SecretMeta,
                    &key,
                    "the latest version is u32::MAX, so no version can follow it",
                )
            })?,
        };

        let mut batch = WriteBatch::default();
        let write_key = self.data_key_for_write(project, &mut batch)?;
        let aad = crypto::secret_aad(project, name, version);
        let record = write_key
            .key
            .seal(write_key.version, value.as_bytes(), &aad);

        let now = now_ms();
        let metadata = SecretMetadata {
            name: name.to_owned(),
            version,
            created_at_ms: previous.map_or(now, |previous| previous.created_at_ms),
            updated_at_ms: now,
        };
        let metadata_json =
            serde_json::to_vec(&metadata).expect("SecretMetadata serializes to JSON");
        batch.put(
            Space::Secrets,
            layout::secret_key(project, name, version),
            record,
        );
        batch.put(
            Space::SecretMeta,
            layout::secret_meta_key(project, name),
            metadata_json,
        );
        self.store.write(batch)?;
        write_key.cache_if_created(self);

        tracing::debug!(
            account = %project.account,
            project = %project.project,
            secret.name = %name,
            secret.version = version,
            "stored secret version"
        );
        Ok(metadata)
    }

    /// Reads one version of a secret: the latest when `version` is `None`.
    ///
    /// The returned metadata describes the secret as a whole, so its `version`
    /// is the latest version, which differs from the version read when an
    /// older one was requested.
    pub fn read_secret(
        &self,
        project: &ProjectRef,
        name: &str,
        version: Option<u32>,
    ) -> Result<(SecretValue, SecretMetadata), VaultError> {
        project.validate()?;
        validate_secret_name(name)?;
        let metadata = self.secret_metadata(project, name)?;
        let version = version.unwrap_or(metadata.version);
        if version == 0 || version > metadata.version {
            return Err(VaultError::VersionNotFound {
                project: project.clone(),
                name: name.to_owned(),
                version,
                latest: metadata.version,
            });
        }

        let store_key = layout::secret_key(project, name, version);
        let Some(record) = self.store.get(Space::Secrets, &store_key)? else {
            let reason = format!(
                "the metadata lists version {} but version {version} is missing",
                metadata.version
            );
            return Err(VaultError::corrupt(Space::Secrets, &store_key, reason));
        };
        let sealed = SealedRecord::decode(&record)
            .map_err(|reason| VaultError::corrupt(Space::Secrets, &store_key, reason))?;
        let data_key = self.data_key(project, sealed.key_version)?;
        let plaintext = data_key
            .open(&sealed, &crypto::secret_aad(project, name, version))
            .map_err(|_| {
                tracing::warn!(
                    account = %project.account,
                    project = %project.project,
                    secret.name = %name,
                    secret.version = version,
                    "secret failed to decrypt: the record does not match its location"
                );
                VaultError::Decrypt {
                    account: project.account.clone(),
                    project: project.project.clone(),
                    name: name.to_owned(),
                    version,
                }
            })?;

        tracing::debug!(
            account = %project.account,
            project = %project.project,
            secret.name = %name,
            secret.version = version,
            "read secret version"
        );
        Ok((SecretValue::from_zeroizing(plaintext), metadata))
    }

    /// Returns the metadata of a secret, or [`VaultError::SecretNotFound`].
    pub fn secret_metadata(
        &self,
        project: &ProjectRef,
        name: &str,
    ) -> Result<SecretMetadata, VaultError> {
        project.validate()?;
        validate_secret_name(name)?;
        self.load_metadata(project, name)?
            .ok_or_else(|| VaultError::SecretNotFound {
                project: project.clone(),
                name: name.to_owned(),
            })
    }

    /// Names and metadata only, ordered by name, after `start_after`, at most `limit` (cap at 1000).
    ///
    /// Names sort by their UTF-8 bytes. To read the next page, pass the last
    /// name of the previous page as `start_after`.
    pub fn list_secrets(
        &self,
        project: &ProjectRef,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SecretMetadata>, VaultError> {
        project.validate()?;
        let prefix = layout::project_prefix(project);
        let start_key = start_after.map(|name| layout::secret_meta_key(project, name));
        let entries = self.store.scan_prefix(
            Space::SecretMeta,
            &prefix,
            start_key.as_deref(),
            limit.min(MAX_LIST_LIMIT),
        )?;
        entries
            .iter()
            .map(|(key, json)| {
                decode_named_json::<SecretMetadata>(Space::SecretMeta, &prefix, key, json, |m| {
                    &m.name
                })
            })
            .collect()
    }

    fn load_metadata(
        &self,
        project: &ProjectRef,
        name: &str,
    ) -> Result<Option<SecretMetadata>, VaultError> {
        let key = layout::secret_meta_key(project, name);
        let Some(json) = self.store.get(Space::SecretMeta, &key)? else {
            return Ok(None);
        };
        let metadata: SecretMetadata = serde_json::from_slice(&json).map_err(|e| {
            VaultError::corrupt(
                Space::SecretMeta,
                &key,
                format!("invalid metadata JSON: {e}"),
            )
        })?;
        Ok(Some(metadata))
    }
}

/// Decodes a JSON record listed under a project prefix, checking that the name
/// inside it matches the name that ends its key.
pub(super) fn decode_named_json<T: serde::de::DeserializeOwned>(
    space: Space,
    prefix: &[u8],
    key: &[u8],
    json: &[u8],
    name_of: impl Fn(&T) -> &String,
) -> Result<T, VaultError> {
    let record: T = serde_json::from_slice(json)
        .map_err(|e| VaultError::corrupt(space, key, format!("invalid JSON record: {e}")))?;
    if key.strip_prefix(prefix) != Some(name_of(&record).as_bytes()) {
        return Err(VaultError::corrupt(
            space,
            key,
            "the name in the record differs from the name in the key",
        ));
    }
    Ok(record)
}
