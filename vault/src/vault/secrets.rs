//! Hosted secrets: storing new versions with check-and-set, purging versions
//! beyond the maximum, reading them back, and listing.

use crate::crypto::{self, SealedRecord};
use crate::error::VaultError;
use crate::ids::{validate_secret_name, ProjectRef};
use crate::keys::SecretValue;
use crate::layout;
use crate::store::{Space, WriteBatch};

use super::{
    now_ms, PutOptions, SecretMetadata, Vault, VersionInfo, WrittenVersion, MAX_LIST_LIMIT,
    MAX_SECRET_VALUE_BYTES,
};

/// Reads of the latest version made before giving up when each finds its
/// version purged by a concurrent write.
const READ_ATTEMPTS: u32 = 5;

impl Vault {
    /// Stores `value` as a new version of the secret: version 1 for a new name,
    /// the current version plus one otherwise. See [`Vault::put_secret_with`].
    pub fn put_secret(
        &self,
        project: &ProjectRef,
        name: &str,
        value: &SecretValue,
    ) -> Result<SecretMetadata, VaultError> {
        self.put_secret_with(project, name, value, &PutOptions::default())
            .map(|written| written.metadata)
    }

    /// Stores `value` as a new version of the secret, with check-and-set when
    /// `options.cas` is set. The value, the metadata and the data-key count are
    /// written in one atomic batch. Versions beyond the maximum in force are
    /// purged, oldest first, in the same batch.
    ///
    /// Values up to [`MAX_SECRET_VALUE_BYTES`] are accepted, including empty
    /// ones. A larger value fails with [`VaultError::ValueTooLarge`], a
    /// check-and-set mismatch with [`VaultError::CasMismatch`], and in both
    /// cases nothing is written. The name must pass [`validate_secret_name`].
    pub fn put_secret_with(
        &self,
        project: &ProjectRef,
        name: &str,
        value: &SecretValue,
        options: &PutOptions,
    ) -> Result<WrittenVersion, VaultError> {
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
        let current = previous.as_ref().map_or(0, |m| m.current_version);
        if let Some(expected) = options.cas {
            if expected != current {
                return Err(VaultError::CasMismatch {
                    project: project.clone(),
                    name: name.to_owned(),
                    expected,
                    current,
                });
            }
        }
        let version = current.checked_add(1).ok_or_else(|| {
            let key = layout::secret_meta_key(project, name);
            VaultError::corrupt(
                Space::SecretMeta,
                &key,
                "the current version is u32::MAX, so no version can follow it",
            )
        })?;

        let mut batch = WriteBatch::default();
        let write_key = self.data_key_for_write(project, &mut batch, 1)?;
        let aad = crypto::secret_aad(project, name, version);
        let record = write_key
            .key
            .seal(write_key.version, value.as_bytes(), &aad);
        batch.put(
            Space::Secrets,
            layout::secret_key(project, name, version),
            record,
        );

        let now = now_ms();
        let mut metadata = previous.unwrap_or_else(|| SecretMetadata {
            name: name.to_owned(),
            current_version: 0,
            oldest_version: 1,
            created_at_ms: now,
            updated_at_ms: now,
            max_versions: None,
            max_versions_in_force: 0,
            custom_metadata: Default::default(),
            versions: Default::default(),
        });
        metadata.current_version = version;
        metadata.updated_at_ms = now;
        metadata.versions.insert(
            version,
            VersionInfo {
                created_at_ms: now,
                deleted_at_ms: None,
                destroyed: false,
            },
        );
        let purged_versions = self.purge_excess(project, &mut metadata, &mut batch);
        self.put_metadata(project, &metadata, &mut batch);
        self.store.write(batch)?;
        write_key.cache_if_created(self);

        tracing::debug!(
            account = %project.account,
            project = %project.project,
            secret.name = %name,
            secret.version = version,
            purged = purged_versions.len(),
            "stored secret version"
        );
        Ok(WrittenVersion {
            name: name.to_owned(),
            version,
            created_at_ms: now,
            purged_versions,
            metadata,
        })
    }

    /// Reads one version of a secret: the current one when `version` is `None`.
    ///
    /// The returned metadata describes the secret as a whole, so its
    /// `current_version` differs from the version read when an older one was
    /// requested. A soft-deleted version fails with
    /// [`VaultError::VersionDeleted`], a destroyed one with
    /// [`VaultError::VersionDestroyed`], and one that never existed or was
    /// purged with [`VaultError::VersionNotFound`].
    pub fn read_secret(
        &self,
        project: &ProjectRef,
        name: &str,
        version: Option<u32>,
    ) -> Result<(SecretValue, SecretMetadata), VaultError> {
        project.validate()?;
        validate_secret_name(name)?;
        // The metadata and the version record are two reads, so a write in
        // between may purge or destroy the version the metadata named. A read
        // of the latest version then tries again with the new metadata.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.read_secret_once(project, name, version)? {
                Some(found) => return Ok(found),
                None if version.is_none() && attempts < READ_ATTEMPTS => {}
                None => {
                    let metadata = self.secret_metadata(project, name)?;
                    let wanted = version.unwrap_or(metadata.current_version);
                    return Err(match version_info(project, &metadata, wanted) {
                        Ok(info) if info.destroyed => VaultError::VersionDestroyed {
                            project: project.clone(),
                            name: name.to_owned(),
                            version: wanted,
                        },
                        Ok(_) => VaultError::corrupt(
                            Space::Secrets,
                            &layout::secret_key(project, name, wanted),
                            format!("the metadata lists version {wanted} as active but its record is missing"),
                        ),
                        Err(e) => e,
                    });
                }
            }
        }
    }

    /// Reads one version as [`Vault::read_secret`] does; returns None when
    /// the metadata names a version whose record is gone.
    fn read_secret_once(
        &self,
        project: &ProjectRef,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<(SecretValue, SecretMetadata)>, VaultError> {
        let metadata = self.secret_metadata(project, name)?;
        let version = version.unwrap_or(metadata.current_version);
        let info = version_info(project, &metadata, version)?;
        if info.destroyed {
            return Err(VaultError::VersionDestroyed {
                project: project.clone(),
                name: name.to_owned(),
                version,
            });
        }
        if let Some(deleted_at_ms) = info.deleted_at_ms {
            return Err(VaultError::VersionDeleted {
                project: project.clone(),
                name: name.to_owned(),
                version,
                deleted_at_ms,
            });
        }

        let store_key = layout::secret_key(project, name, version);
        let Some(record) = self.store.get(Space::Secrets, &store_key)? else {
            return Ok(None);
        };
        let plaintext = self.open_secret(project, name, version, &store_key, &record)?;

        tracing::debug!(
            account = %project.account,
            project = %project.project,
            secret.name = %name,
            secret.version = version,
            "read secret version"
        );
        Ok(Some((plaintext, metadata)))
    }

    /// Decrypts one stored secret record with the data key it names.
    pub(super) fn open_secret(
        &self,
        project: &ProjectRef,
        name: &str,
        version: u32,
        store_key: &[u8],
        record: &[u8],
    ) -> Result<SecretValue, VaultError> {
        let sealed = SealedRecord::decode(record)
            .map_err(|reason| VaultError::corrupt(Space::Secrets, store_key, reason))?;
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
        Ok(SecretValue::from_zeroizing(plaintext))
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
                .map(|metadata| self.complete_metadata(metadata))
            })
            .collect()
    }

    pub(super) fn load_metadata(
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
        Ok(Some(self.complete_metadata(metadata)))
    }

    /// Fills in what stored metadata leaves out: the maximum in force, and the
    /// version list of records written before versions had states.
    fn complete_metadata(&self, mut metadata: SecretMetadata) -> SecretMetadata {
        metadata.max_versions_in_force = metadata
            .max_versions
            .unwrap_or(self.options.default_max_versions);
        if metadata.versions.is_empty() && metadata.current_version > 0 {
            for version in metadata.oldest_version.max(1)..=metadata.current_version {
                metadata.versions.insert(
                    version,
                    VersionInfo {
                        created_at_ms: metadata.updated_at_ms,
                        deleted_at_ms: None,
                        destroyed: false,
                    },
                );
            }
        }
        metadata
    }

    /// Adds the metadata record to `batch`.
    pub(super) fn put_metadata(
        &self,
        project: &ProjectRef,
        metadata: &SecretMetadata,
        batch: &mut WriteBatch,
    ) {
        let json = serde_json::to_vec(metadata).expect("SecretMetadata serializes to JSON");
        batch.put(
            Space::SecretMeta,
            layout::secret_meta_key(project, &metadata.name),
            json,
        );
    }

    /// Removes the oldest versions beyond the maximum in force from
    /// `metadata`, adds the deletion of their records to `batch`, and returns
    /// their numbers. The current version is never purged.
    pub(super) fn purge_excess(
        &self,
        project: &ProjectRef,
        metadata: &mut SecretMetadata,
        batch: &mut WriteBatch,
    ) -> Vec<u32> {
        let keep = metadata
            .max_versions
            .unwrap_or(self.options.default_max_versions)
            .max(1);
        metadata.max_versions_in_force = keep;
        let mut purged = Vec::new();
        while metadata.versions.len() > keep as usize {
            let Some((version, info)) = metadata.versions.pop_first() else {
                break;
            };
            if !info.destroyed {
                batch.delete(
                    Space::Secrets,
                    layout::secret_key(project, &metadata.name, version),
                );
            }
            purged.push(version);
        }
        if let Some((&oldest, _)) = metadata.versions.first_key_value() {
            metadata.oldest_version = oldest;
        }
        purged
    }
}

/// Returns the state of `version`, or [`VaultError::VersionNotFound`] when the
/// secret has no such version (never written, or purged).
pub(super) fn version_info<'a>(
    project: &ProjectRef,
    metadata: &'a SecretMetadata,
    version: u32,
) -> Result<&'a VersionInfo, VaultError> {
    metadata
        .versions
        .get(&version)
        .ok_or_else(|| VaultError::VersionNotFound {
            project: project.clone(),
            name: metadata.name.clone(),
            version,
            latest: metadata.current_version,
        })
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
