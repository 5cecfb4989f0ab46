//! Small server secrets (such as token signing keys) sealed by the master key
//! in the `meta` column family, so they never sit in plain files.

use zeroize::Zeroizing;

use crate::crypto::SealedRecord;
use crate::error::VaultError;
use crate::layout::{push_component, SYSTEM_SECRET_PREFIX};
use crate::store::{Space, WriteBatch};

use super::Vault;

/// Largest system secret, far above a set of signing keys.
const MAX_SYSTEM_SECRET_BYTES: usize = 64 * 1024;

impl Vault {
    /// Stores `plaintext` under `name`, sealed by the master key, replacing any previous value.
    pub fn put_system_secret(&self, name: &str, plaintext: &[u8]) -> Result<(), VaultError> {
        if plaintext.len() > MAX_SYSTEM_SECRET_BYTES {
            return Err(VaultError::ValueTooLarge {
                size: plaintext.len(),
                max: MAX_SYSTEM_SECRET_BYTES,
            });
        }
        let _guard = self.lock_writes();
        let (master, version) = self.master_state();
        let record = master.seal(version, plaintext, &system_aad(name));
        let mut batch = WriteBatch::default();
        batch.put(Space::Meta, system_key(name), record);
        self.store.write(batch)?;
        Ok(())
    }

    /// Reads and unseals the system secret `name`, if it exists.
    pub fn get_system_secret(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>, VaultError> {
        let key = system_key(name);
        let Some(stored) = self.store.get(Space::Meta, &key)? else {
            return Ok(None);
        };
        let sealed = SealedRecord::decode(&stored)
            .map_err(|reason| VaultError::corrupt(Space::Meta, &key, reason))?;
        let (master, _) = self.master_state();
        let plaintext = master.open(&sealed, &system_aad(name)).map_err(|_| {
            VaultError::corrupt(
                Space::Meta,
                &key,
                "the record does not decrypt with this master key or was moved from another name",
            )
        })?;
        Ok(Some(plaintext))
    }
}

fn system_key(name: &str) -> Vec<u8> {
    [SYSTEM_SECRET_PREFIX, name.as_bytes()].concat()
}

pub(super) fn system_aad(name: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(32 + name.len());
    push_component(&mut aad, b"keygate/system-secret/v1");
    push_component(&mut aad, name.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::keys::MasterKey;
    use crate::store::memory::MemStore;
    use crate::store::{KvStore, Space, WriteBatch};
    use crate::vault::Vault;

    #[test]
    fn system_secret_round_trip_sealed() {
        let store = Arc::new(MemStore::new());
        let vault = Vault::new(store.clone(), MasterKey::generate());
        assert!(vault.get_system_secret("signing_keys").unwrap().is_none());
        vault
            .put_system_secret("signing_keys", b"private key bytes")
            .unwrap();
        let back = vault.get_system_secret("signing_keys").unwrap().unwrap();
        assert_eq!(&back[..], b"private key bytes");
        let stored = store
            .get(Space::Meta, b"system/signing_keys")
            .unwrap()
            .unwrap();
        assert!(
            !stored.windows(17).any(|w| w == b"private key bytes"),
            "stored sealed"
        );
    }

    #[test]
    fn system_secret_bound_to_name_and_key() {
        let store = Arc::new(MemStore::new());
        let vault = Vault::new(store.clone(), MasterKey::generate());
        vault.put_system_secret("a", b"value").unwrap();
        let stored = store.get(Space::Meta, b"system/a").unwrap().unwrap();
        let mut batch = WriteBatch::default();
        batch.put(Space::Meta, b"system/b".to_vec(), stored);
        store.write(batch).unwrap();
        assert!(
            vault.get_system_secret("b").is_err(),
            "a record moved to another name"
        );
        let other = Vault::new(store, MasterKey::generate());
        assert!(other.get_system_secret("a").is_err(), "another master key");
    }
}
