//! The vault API that the gateway calls: hosted secrets, secret definitions
//! and their resolution. All methods block on storage.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::crypto::AeadKey;
use crate::keys::MasterKey;
use crate::store::KvStore;

mod data_keys;
mod definitions;
mod master_check;
mod records;
mod secrets;
mod system;

#[cfg(test)]
mod tests;

pub use records::{Resolved, SecretDefinition, SecretMetadata};

/// Maximum size of one secret value, in bytes (64 KiB).
pub const MAX_SECRET_VALUE_BYTES: usize = 64 * 1024;

/// Maximum number of entries one list call returns; larger limits are lowered to it.
pub const MAX_LIST_LIMIT: usize = 1000;

/// The secret vault of one store.
///
/// Writes are serialized by a lock inside the `Vault`, so a store must be used
/// by one `Vault` only: two `Vault`s writing to the same store could assign
/// the same version twice. Reads take no lock.
pub struct Vault {
    store: Arc<dyn KvStore>,
    master: AeadKey,
    data_keys: data_keys::DataKeyCache,
    /// Held while reading the latest state and writing the next one, so that
    /// versions and data keys are assigned once.
    write_lock: Mutex<()>,
}

impl Vault {
    /// Builds a vault on `store`. The master key is kept only in expanded
    /// form, and `master` is zeroized when it drops here.
    pub fn new(store: Arc<dyn KvStore>, master: MasterKey) -> Self {
        Vault {
            store,
            master: AeadKey::new(master.as_bytes()),
            data_keys: data_keys::DataKeyCache::default(),
            write_lock: Mutex::new(()),
        }
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
