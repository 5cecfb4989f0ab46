//! The vault API that the gateway calls: hosted secrets, secret definitions
//! and their resolution. All methods block on storage.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::crypto::AeadKey;
use crate::keys::MasterKey;
use crate::store::KvStore;

mod data_keys;
mod definitions;
mod master_check;
mod master_rotation;
mod project;
mod records;
mod reencrypt;
mod secrets;
mod system;
pub mod versions;

#[cfg(test)]
mod tests;

pub use records::{
    DataKeyInfo, DataKeyStatus, MasterRotation, MetadataUpdate, ProjectDeletion, PutOptions,
    ReencryptProgress, Resolved, SecretDefinition, SecretMetadata, VersionInfo, WrittenVersion,
};

/// Maximum size of one secret value, in bytes (64 KiB).
pub const MAX_SECRET_VALUE_BYTES: usize = 64 * 1024;

/// Maximum number of entries one list call returns; larger limits are lowered to it.
pub const MAX_LIST_LIMIT: usize = 1000;

/// Largest maximum number of versions a secret may keep.
pub const MAX_VERSIONS_LIMIT: u32 = 1000;

/// Settings of a [`Vault`] that the operator chooses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VaultOptions {
    /// Versions a secret keeps unless its own `max_versions` sets another number
    /// (1 to [`MAX_VERSIONS_LIMIT`]). Older versions are purged on write.
    pub default_max_versions: u32,
    /// Encryptions a data key performs before a new data-key version replaces
    /// it. AES-GCM with random 96-bit nonces must stay far below 2^32
    /// encryptions per key; at 2^24 the chance of any repeated nonce is below
    /// 2^-48.
    pub data_key_max_encryptions: u64,
}

impl Default for VaultOptions {
    fn default() -> Self {
        VaultOptions {
            default_max_versions: 10,
            data_key_max_encryptions: 1 << 24,
        }
    }
}

/// The master key in use and its version, which every data-key record names.
struct MasterState {
    key: Arc<AeadKey>,
    version: u32,
}

/// The secret vault of one store.
///
/// Writes are serialized by a lock inside the `Vault`, so a store must be used
/// by one `Vault` only: two `Vault`s writing to the same store could assign
/// the same version twice. Reads take no lock.
pub struct Vault {
    store: Arc<dyn KvStore>,
    master: RwLock<MasterState>,
    options: VaultOptions,
    data_keys: data_keys::DataKeyCache,
    /// Held while reading the latest state and writing the next one, so that
    /// versions and data keys are assigned once.
    write_lock: Mutex<()>,
}

impl Vault {
    /// Builds a vault on `store`. The master key is kept only in expanded
    /// form, and `master` is zeroized when it drops here.
    ///
    /// The master-key version is taken from the store by
    /// [`Vault::verify_master_key`], which must be called before other methods
    /// on a store whose master key was ever rotated.
    pub fn new(store: Arc<dyn KvStore>, master: MasterKey) -> Self {
        Vault::with_options(store, master, VaultOptions::default())
    }

    /// Builds a vault with the given options.
    pub fn with_options(store: Arc<dyn KvStore>, master: MasterKey, options: VaultOptions) -> Self {
        Vault {
            store,
            master: RwLock::new(MasterState {
                key: Arc::new(AeadKey::new(master.as_bytes())),
                version: crate::crypto::FIRST_MASTER_KEY_VERSION,
            }),
            options,
            data_keys: data_keys::DataKeyCache::default(),
            write_lock: Mutex::new(()),
        }
    }

    /// Returns the options the vault was built with.
    pub fn options(&self) -> VaultOptions {
        self.options
    }

    /// Returns the version of the master key in use. Each rotation adds one.
    pub fn master_key_version(&self) -> u32 {
        self.master_state().1
    }

    /// Returns the master key and its version.
    fn master_state(&self) -> (Arc<AeadKey>, u32) {
        let state = self
            .master
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (Arc::clone(&state.key), state.version)
    }

    fn set_master(&self, key: Arc<AeadKey>, version: u32) {
        let mut state = self
            .master
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *state = MasterState { key, version };
    }

    /// Returns the store that the vault reads and writes.
    pub fn store(&self) -> &Arc<dyn KvStore> {
        &self.store
    }

    fn lock_writes(&self) -> MutexGuard<'_, ()> {
        // A poisoned lock is safe to reuse, because each write is a single
        // atomic batch: a panic cannot leave half of one behind.
        self.write_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Vault(keys REDACTED)")
    }
}

/// Milliseconds since the Unix epoch, or 0 if the clock is before it.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}
