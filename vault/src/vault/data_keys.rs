//! Per-project data keys: creation on a project's first write, decryption under
//! the master key, and an in-memory cache of decrypted keys.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::crypto::{self, AeadKey, SealedRecord, MASTER_KEY_VERSION};
use crate::error::VaultError;
use crate::ids::ProjectRef;
use crate::keys::KEY_LEN;
use crate::layout;
use crate::store::{Space, WriteBatch};

use super::Vault;

/// Maximum number of decrypted data keys kept in memory. When the cache is
/// full it is emptied, which costs one decryption per project afterwards.
const MAX_CACHED_DATA_KEYS: usize = 4096;

/// Decrypted data keys by their `data_keys` store key. Dropping an entry
/// zeroizes the expanded key (see [`AeadKey`]).
#[derive(Default)]
pub(super) struct DataKeyCache {
    entries: RwLock<HashMap<Vec<u8>, Arc<AeadKey>>>,
}

impl DataKeyCache {
    fn get(&self, store_key: &[u8]) -> Option<Arc<AeadKey>> {
        let entries = self
            .entries
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.get(store_key).cloned()
    }

    fn insert(&self, store_key: Vec<u8>, key: Arc<AeadKey>) {
        let mut entries = self
            .entries
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if entries.len() >= MAX_CACHED_DATA_KEYS {
            entries.clear();
        }
        entries.insert(store_key, key);
    }
}

/// The data key that seals new values of a project.
pub(super) struct WriteKey {
    pub(super) version: u32,
    pub(super) key: Arc<AeadKey>,
    /// Set when the key was created by this write: its store key, to cache it
    /// once the batch holding its record is written.
    created: Option<Vec<u8>>,
}

impl WriteKey {
    /// Caches a key created by this write. Call only after the batch is stored.
    pub(super) fn cache_if_created(self, vault: &Vault) {
        if let Some(store_key) = self.created {
            vault.data_keys.insert(store_key, self.key);
        }
    }
}

impl Vault {
    /// Returns the project's latest data key. If the project has none, creates
    /// version 1 and adds its sealed record to `batch`.
    ///
    /// The caller must hold the write lock, so that a project gets one key.
    pub(super) fn data_key_for_write(
        &self,
        project: &ProjectRef,
        batch: &mut WriteBatch,
    ) -> Result<WriteKey, VaultError> {
        if let Some(version) = self.latest_data_key_version(project)? {
            let key = self.data_key(project, version)?;
            return Ok(WriteKey {
                version,
                key,
                created: None,
            });
        }

        let version = 1;
        let plaintext = crypto::generate_data_key();
        let record = self.master.seal(
            MASTER_KEY_VERSION,
            &plaintext[..],
            &crypto::data_key_aad(project, version),
        );
        let store_key = layout::data_key_key(project, version);
        batch.put(Space::DataKeys, store_key.clone(), record);
        tracing::debug!(
            account = %project.account,
            project = %project.project,
            data_key.version = version,
            "created data key"
        );
        Ok(WriteKey {
            version,
            key: Arc::new(AeadKey::new(&plaintext)),
            created: Some(store_key),
        })
    }

    /// Returns one data-key version of a project, from the cache or the store.
    pub(super) fn data_key(
        &self,
        project: &ProjectRef,
        version: u32,
    ) -> Result<Arc<AeadKey>, VaultError> {
        let store_key = layout::data_key_key(project, version);
        if let Some(key) = self.data_keys.get(&store_key) {
            return Ok(key);
        }

        let Some(record) = self.store.get(Space::DataKeys, &store_key)? else {
            return Err(VaultError::corrupt(
                Space::DataKeys,
                &store_key,
                format!("data key version {version} of project {project} is missing"),
            ));
        };
        let key = Arc::new(self.open_data_key(project, version, &store_key, &record)?);
        self.data_keys.insert(store_key, Arc::clone(&key));
        Ok(key)
    }

    /// Decrypts a stored data-key record with the master key.
    pub(super) fn open_data_key(
        &self,
        project: &ProjectRef,
        version: u32,
        store_key: &[u8],
        record: &[u8],
    ) -> Result<AeadKey, VaultError> {
        let sealed = SealedRecord::decode(record)
            .map_err(|reason| VaultError::corrupt(Space::DataKeys, store_key, reason))?;
        if sealed.key_version != MASTER_KEY_VERSION {
            let reason = format!(
                "data key is sealed by key version {}, expected {MASTER_KEY_VERSION}",
                sealed.key_version
            );
            return Err(VaultError::corrupt(Space::DataKeys, store_key, reason));
        }

        let aad = crypto::data_key_aad(project, version);
        let plaintext = self.master.open(&sealed, &aad).map_err(|_| {
            tracing::warn!(
                account = %project.account,
                project = %project.project,
                data_key.version = version,
                "data key failed to decrypt: wrong master key or altered record"
            );
            VaultError::DataKeyDecrypt {
                account: project.account.clone(),
                project: project.project.clone(),
                version,
            }
        })?;

        let bytes: &[u8; KEY_LEN] = plaintext.as_slice().try_into().map_err(|_| {
            let reason = format!("data key is {} bytes, expected {KEY_LEN}", plaintext.len());
            VaultError::corrupt(Space::DataKeys, store_key, reason)
        })?;
        Ok(AeadKey::new(bytes))
    }

    fn latest_data_key_version(&self, project: &ProjectRef) -> Result<Option<u32>, VaultError> {
        let prefix = layout::project_prefix(project);
        let entries = self
            .store
            .scan_prefix(Space::DataKeys, &prefix, None, usize::MAX)?;
        let mut latest = None;
        for (key, _) in &entries {
            let version = layout::data_key_version(&prefix, key).ok_or_else(|| {
                VaultError::corrupt(Space::DataKeys, key, "key does not end in a 4-byte version")
            })?;
            latest = latest.max(Some(version));
        }
        Ok(latest)
    }
}
