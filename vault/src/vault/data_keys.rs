//! Per-project data keys: creation on a project's first write, rotation on
//! request and after a bounded number of encryptions, decryption under the
//! master key, and an in-memory cache of decrypted keys.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::crypto::{self, AeadKey, SealedRecord};
use crate::error::VaultError;
use crate::ids::ProjectRef;
use crate::keys::KEY_LEN;
use crate::layout;
use crate::store::{Space, WriteBatch};

use super::{DataKeyInfo, DataKeyStatus, Vault};

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

    /// Drops every cached key of one project.
    pub(super) fn remove_project(&self, prefix: &[u8]) {
        let mut entries = self
            .entries
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.retain(|store_key, _| !store_key.starts_with(prefix));
    }
}

/// The stored state of a project's data keys: which version seals new
/// values, and how many encryptions it has done.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct DataKeyState {
    pub(super) current_version: u32,
    pub(super) encryptions: u64,
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
    /// Returns the data key that seals `encryptions` new values of a project,
    /// and adds the updated key state to `batch`. The project's first write
    /// creates version 1; a key that would pass the vault's maximum number of
    /// encryptions is replaced by a new version first.
    ///
    /// The caller must hold the write lock, so that versions and counts are
    /// assigned once.
    pub(super) fn data_key_for_write(
        &self,
        project: &ProjectRef,
        batch: &mut WriteBatch,
        encryptions: u64,
    ) -> Result<WriteKey, VaultError> {
        let state = self.data_key_state(project)?;
        let max = self.options.data_key_max_encryptions;
        if let Some(state) =
            state.filter(|state| state.encryptions.saturating_add(encryptions) <= max)
        {
            let key = self.data_key(project, state.current_version)?;
            self.put_data_key_state(
                project,
                batch,
                DataKeyState {
                    current_version: state.current_version,
                    encryptions: state.encryptions + encryptions,
                },
            );
            return Ok(WriteKey {
                version: state.current_version,
                key,
                created: None,
            });
        }

        let version = match state {
            None => 1,
            Some(state) => {
                tracing::info!(
                    account = %project.account,
                    project = %project.project,
                    data_key.version = state.current_version,
                    data_key.encryptions = state.encryptions,
                    "data key reached its maximum number of encryptions; rotating it"
                );
                next_version(project, state.current_version)?
            }
        };
        self.create_data_key(project, batch, version, encryptions)
    }

    /// Makes a new data-key version the one that seals new values of a
    /// project. Values sealed by older versions stay readable.
    pub fn rotate_data_key(&self, project: &ProjectRef) -> Result<DataKeyStatus, VaultError> {
        project.validate()?;
        let _guard = self.lock_writes();
        let version = match self.data_key_state(project)? {
            None => 1,
            Some(state) => next_version(project, state.current_version)?,
        };
        let mut batch = WriteBatch::default();
        let write_key = self.create_data_key(project, &mut batch, version, 0)?;
        self.store.write(batch)?;
        write_key.cache_if_created(self);
        tracing::info!(
            account = %project.account,
            project = %project.project,
            data_key.version = version,
            "rotated data key"
        );
        self.data_key_status_locked(project)
    }

    /// Lists a project's data-key versions and the use of the current one.
    pub fn data_key_status(&self, project: &ProjectRef) -> Result<DataKeyStatus, VaultError> {
        project.validate()?;
        self.data_key_status_locked(project)
    }

    fn data_key_status_locked(&self, project: &ProjectRef) -> Result<DataKeyStatus, VaultError> {
        let state = self.data_key_state(project)?.unwrap_or_default();
        let versions = self
            .data_key_versions(project)?
            .into_iter()
            .map(|version| DataKeyInfo {
                version,
                current: version == state.current_version,
            })
            .collect();
        Ok(DataKeyStatus {
            versions,
            current_version: state.current_version,
            current_encryptions: state.encryptions,
            max_encryptions: self.options.data_key_max_encryptions,
        })
    }

    /// Generates data-key `version`, seals it under the master key into
    /// `batch`, and makes it current with `encryptions` counted.
    fn create_data_key(
        &self,
        project: &ProjectRef,
        batch: &mut WriteBatch,
        version: u32,
        encryptions: u64,
    ) -> Result<WriteKey, VaultError> {
        let plaintext = crypto::generate_data_key();
        let (master, master_version) = self.master_state();
        let record = master.seal(
            master_version,
            &plaintext[..],
            &crypto::data_key_aad(project, version),
        );
        let store_key = layout::data_key_key(project, version);
        batch.put(Space::DataKeys, store_key.clone(), record);
        self.put_data_key_state(
            project,
            batch,
            DataKeyState {
                current_version: version,
                encryptions,
            },
        );
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

    fn put_data_key_state(
        &self,
        project: &ProjectRef,
        batch: &mut WriteBatch,
        state: DataKeyState,
    ) {
        let json = serde_json::to_vec(&state).expect("DataKeyState serializes to JSON");
        batch.put(Space::Meta, layout::data_key_state_key(project), json);
    }

    /// Returns the project's data-key state, or `None` before its first write.
    /// Stores written before the state record existed fall back to the
    /// newest stored version, with no encryptions counted.
    pub(super) fn data_key_state(
        &self,
        project: &ProjectRef,
    ) -> Result<Option<DataKeyState>, VaultError> {
        let key = layout::data_key_state_key(project);
        if let Some(json) = self.store.get(Space::Meta, &key)? {
            let state = serde_json::from_slice(&json).map_err(|e| {
                VaultError::corrupt(
                    Space::Meta,
                    &key,
                    format!("invalid data-key state JSON: {e}"),
                )
            })?;
            return Ok(Some(state));
        }
        Ok(self
            .data_key_versions(project)?
            .last()
            .map(|&current_version| DataKeyState {
                current_version,
                encryptions: 0,
            }))
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
        let (master, master_version) = self.master_state();
        if sealed.key_version != master_version {
            let reason = format!(
                "data key is sealed by master-key version {}, but the master key in use is version {master_version}",
                sealed.key_version
            );
            return Err(VaultError::corrupt(Space::DataKeys, store_key, reason));
        }

        let aad = crypto::data_key_aad(project, version);
        let plaintext = master.open(&sealed, &aad).map_err(|_| {
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

    /// Returns the project's stored data-key versions in ascending order.
    pub(super) fn data_key_versions(&self, project: &ProjectRef) -> Result<Vec<u32>, VaultError> {
        let prefix = layout::project_prefix(project);
        let entries = self
            .store
            .scan_prefix(Space::DataKeys, &prefix, None, usize::MAX)?;
        entries
            .iter()
            .map(|(key, _)| {
                layout::data_key_version(&prefix, key).ok_or_else(|| {
                    VaultError::corrupt(
                        Space::DataKeys,
                        key,
                        "key does not end in a 4-byte version",
                    )
                })
            })
            .collect()
    }
}

fn next_version(project: &ProjectRef, current: u32) -> Result<u32, VaultError> {
    current.checked_add(1).ok_or_else(|| {
        VaultError::corrupt(
            Space::Meta,
            &layout::data_key_state_key(project),
            "the current data-key version is u32::MAX, so no version can follow it",
        )
    })
}
