//! The life of a secret's versions after they are written: soft delete,
//! undelete, destroy, deleting a whole secret, and changing its settings.

use std::collections::BTreeMap;

use crate::error::VaultError;
use crate::ids::{validate_secret_name, ProjectRef};
use crate::layout;
use crate::store::{Space, WriteBatch};

use super::secrets::version_info;
use super::{now_ms, MetadataUpdate, SecretMetadata, Vault, MAX_VERSIONS_LIMIT};

/// Maximum number of custom metadata entries on one secret.
pub const MAX_CUSTOM_METADATA_ENTRIES: usize = 64;
/// Maximum length of a custom metadata key, in bytes.
pub const MAX_CUSTOM_METADATA_KEY_BYTES: usize = 128;
/// Maximum length of a custom metadata value, in bytes.
pub const MAX_CUSTOM_METADATA_VALUE_BYTES: usize = 512;

/// The change applied to each version a request names.
#[derive(Clone, Copy)]
enum Change {
    Delete,
    Undelete,
    Destroy,
}

impl Vault {
    /// Soft-deletes versions: they stay stored but cannot be read until
    /// undeleted. An empty list deletes the current version. Versions already
    /// deleted or destroyed stay as they are.
    pub fn delete_versions(
        &self,
        project: &ProjectRef,
        name: &str,
        versions: &[u32],
    ) -> Result<SecretMetadata, VaultError> {
        self.change_versions(project, name, versions, Change::Delete)
    }

    /// Makes soft-deleted versions readable again. Versions that are not
    /// deleted stay as they are; a destroyed version fails with
    /// [`VaultError::VersionDestroyed`] and nothing changes.
    pub fn undelete_versions(
        &self,
        project: &ProjectRef,
        name: &str,
        versions: &[u32],
    ) -> Result<SecretMetadata, VaultError> {
        self.change_versions(project, name, versions, Change::Undelete)
    }

    /// Removes the ciphertext of versions for good; their numbers stay in the
    /// metadata, marked destroyed.
    pub fn destroy_versions(
        &self,
        project: &ProjectRef,
        name: &str,
        versions: &[u32],
    ) -> Result<SecretMetadata, VaultError> {
        self.change_versions(project, name, versions, Change::Destroy)
    }

    fn change_versions(
        &self,
        project: &ProjectRef,
        name: &str,
        versions: &[u32],
        change: Change,
    ) -> Result<SecretMetadata, VaultError> {
        project.validate()?;
        validate_secret_name(name)?;
        let _guard = self.lock_writes();
        let mut metadata = self.secret_metadata(project, name)?;
        let targets: Vec<u32> = match (versions, change) {
            ([], Change::Delete) => vec![metadata.current_version],
            ([], _) => {
                return Err(VaultError::InvalidSetting {
                    field: "versions",
                    value: "[]".to_owned(),
                    reason: "name at least one version to change".to_owned(),
                })
            }
            (list, _) => list.to_vec(),
        };
        // Every version is checked before anything changes, so a bad number
        // in the list leaves the secret as it was.
        for &version in &targets {
            let info = version_info(project, &metadata, version)?;
            if matches!(change, Change::Undelete) && info.destroyed {
                return Err(VaultError::VersionDestroyed {
                    project: project.clone(),
                    name: name.to_owned(),
                    version,
                });
            }
        }

        let now = now_ms();
        let mut batch = WriteBatch::default();
        for &version in &targets {
            let info = metadata
                .versions
                .get_mut(&version)
                .expect("every target version was checked above");
            match change {
                Change::Delete => {
                    if !info.destroyed && info.deleted_at_ms.is_none() {
                        info.deleted_at_ms = Some(now);
                    }
                }
                Change::Undelete => info.deleted_at_ms = None,
                Change::Destroy => {
                    if !info.destroyed {
                        info.destroyed = true;
                        batch.delete(Space::Secrets, layout::secret_key(project, name, version));
                    }
                }
            }
        }
        metadata.updated_at_ms = now;
        self.put_metadata(project, &metadata, &mut batch);
        self.store.write(batch)?;
        tracing::debug!(
            account = %project.account,
            project = %project.project,
            secret.name = %name,
            versions = ?targets,
            change = change.as_str(),
            "changed secret versions"
        );
        Ok(metadata)
    }

    /// Deletes a secret with every version and its metadata for good, and
    /// returns how many version records were removed. The name can be used
    /// again afterwards, starting at version 1.
    pub fn delete_secret(&self, project: &ProjectRef, name: &str) -> Result<usize, VaultError> {
        project.validate()?;
        validate_secret_name(name)?;
        let _guard = self.lock_writes();
        let metadata = self.secret_metadata(project, name)?;
        let mut batch = WriteBatch::default();
        let mut removed = 0;
        for (&version, info) in &metadata.versions {
            if !info.destroyed {
                batch.delete(Space::Secrets, layout::secret_key(project, name, version));
                removed += 1;
            }
        }
        batch.delete(Space::SecretMeta, layout::secret_meta_key(project, name));
        self.store.write(batch)?;
        tracing::debug!(
            account = %project.account,
            project = %project.project,
            secret.name = %name,
            versions = removed,
            "deleted secret"
        );
        Ok(removed)
    }

    /// Changes a secret's maximum number of versions and custom metadata.
    /// Lowering the maximum purges the oldest versions beyond it at once.
    pub fn update_secret_metadata(
        &self,
        project: &ProjectRef,
        name: &str,
        update: &MetadataUpdate,
    ) -> Result<SecretMetadata, VaultError> {
        project.validate()?;
        validate_secret_name(name)?;
        if let Some(Some(max)) = update.max_versions {
            validate_max_versions(max)?;
        }
        if let Some(custom) = &update.custom_metadata {
            validate_custom_metadata(custom)?;
        }
        let _guard = self.lock_writes();
        let mut metadata = self.secret_metadata(project, name)?;
        if let Some(max) = update.max_versions {
            metadata.max_versions = max;
        }
        if let Some(custom) = &update.custom_metadata {
            metadata.custom_metadata = custom.clone();
        }
        metadata.updated_at_ms = now_ms();
        let mut batch = WriteBatch::default();
        self.purge_excess(project, &mut metadata, &mut batch);
        self.put_metadata(project, &metadata, &mut batch);
        self.store.write(batch)?;
        Ok(metadata)
    }
}

impl Change {
    fn as_str(self) -> &'static str {
        match self {
            Change::Delete => "delete",
            Change::Undelete => "undelete",
            Change::Destroy => "destroy",
        }
    }
}

/// Checks a maximum number of versions: 1 to [`MAX_VERSIONS_LIMIT`].
pub fn validate_max_versions(max: u32) -> Result<(), VaultError> {
    if (1..=MAX_VERSIONS_LIMIT).contains(&max) {
        return Ok(());
    }
    Err(VaultError::InvalidSetting {
        field: "max_versions",
        value: max.to_string(),
        reason: format!("must be from 1 to {MAX_VERSIONS_LIMIT}"),
    })
}

fn validate_custom_metadata(custom: &BTreeMap<String, String>) -> Result<(), VaultError> {
    let invalid = |value: &str, reason: String| VaultError::InvalidSetting {
        field: "custom_metadata",
        value: value.to_owned(),
        reason,
    };
    if custom.len() > MAX_CUSTOM_METADATA_ENTRIES {
        return Err(invalid(
            &format!("{} entries", custom.len()),
            format!("at most {MAX_CUSTOM_METADATA_ENTRIES} entries are allowed"),
        ));
    }
    for (key, value) in custom {
        if key.is_empty() || key.len() > MAX_CUSTOM_METADATA_KEY_BYTES {
            return Err(invalid(
                key,
                format!("keys must be 1 to {MAX_CUSTOM_METADATA_KEY_BYTES} bytes long"),
            ));
        }
        if value.len() > MAX_CUSTOM_METADATA_VALUE_BYTES {
            return Err(invalid(
                value,
                format!("the value of key {key:?} is {} bytes long; values may be at most {MAX_CUSTOM_METADATA_VALUE_BYTES} bytes", value.len()),
            ));
        }
    }
    Ok(())
}
