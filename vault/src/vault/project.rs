//! Deleting a project: its data keys first, so its ciphertexts can never be
//! decrypted again, then its secrets, metadata and definitions.

use crate::error::VaultError;
use crate::ids::ProjectRef;
use crate::layout;
use crate::store::{Space, WriteBatch};

use super::{ProjectDeletion, Vault};

/// Records removed per batch when a project's secrets and definitions are deleted.
const DELETE_BATCH: usize = 1000;

impl Vault {
    /// Deletes every data key, secret version, secret and definition of a
    /// project.
    ///
    /// The data keys go first, in one atomic batch with the key state. Once
    /// that batch is written, the project's ciphertexts can never be decrypted
    /// again, even if a later batch fails; calling this again finishes the
    /// removal.
    pub fn delete_project(&self, project: &ProjectRef) -> Result<ProjectDeletion, VaultError> {
        project.validate()?;
        let _guard = self.lock_writes();
        let prefix = layout::project_prefix(project);
        let mut deletion = ProjectDeletion::default();

        let mut batch = WriteBatch::default();
        for (key, _) in self
            .store
            .scan_prefix(Space::DataKeys, &prefix, None, usize::MAX)?
        {
            batch.delete(Space::DataKeys, key);
            deletion.data_keys += 1;
        }
        batch.delete(Space::Meta, layout::data_key_state_key(project));
        self.store.write(batch)?;
        self.data_keys.remove_project(&prefix);
        tracing::info!(
            account = %project.account,
            project = %project.project,
            data_keys = deletion.data_keys,
            "destroyed the data keys of a deleted project"
        );

        deletion.secret_versions = self.delete_prefix(Space::Secrets, &prefix)?;
        deletion.secrets = self.delete_prefix(Space::SecretMeta, &prefix)?;
        deletion.definitions = self.delete_prefix(Space::Definitions, &prefix)?;
        tracing::info!(
            account = %project.account,
            project = %project.project,
            secret_versions = deletion.secret_versions,
            secrets = deletion.secrets,
            definitions = deletion.definitions,
            "deleted project"
        );
        Ok(deletion)
    }

    /// Deletes every key under `prefix` in `space`, in batches, and returns the count.
    fn delete_prefix(&self, space: Space, prefix: &[u8]) -> Result<usize, VaultError> {
        let mut deleted = 0;
        loop {
            let entries = self.store.scan_prefix(space, prefix, None, DELETE_BATCH)?;
            if entries.is_empty() {
                return Ok(deleted);
            }
            let mut batch = WriteBatch::default();
            for (key, _) in &entries {
                batch.delete(space, key.clone());
            }
            deleted += entries.len();
            self.store.write(batch)?;
        }
    }
}
