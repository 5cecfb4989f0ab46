//! The startup check that the master key is the one the store was created with.

use std::sync::Arc;

use crate::crypto::{self, SealedRecord};
use crate::error::VaultError;
use crate::ids::ProjectRef;
use crate::layout::{self, MASTER_KEY_CHECK_KEY};
use crate::store::{Space, WriteBatch};

use super::Vault;

impl Vault {
    /// Checks that the master key is the one this store was created with.
    /// Returns true when this call recorded the key, which happens once, on
    /// the first start with an empty store.
    ///
    /// The check decrypts a record in the `meta` space that the master key
    /// sealed. When that record is missing, the first data key in the store,
    /// if there is one, is decrypted instead before the record is written.
    /// Calling this at startup makes a wrong key fail there, and not on the
    /// first read of a secret. It also takes the master-key version in use
    /// from the check record, which a rotation advances.
    pub fn verify_master_key(&self) -> Result<bool, VaultError> {
        let _guard = self.lock_writes();
        let aad = crypto::master_key_check_aad();
        let (master, _) = self.master_state();

        if let Some(record) = self.store.get(Space::Meta, MASTER_KEY_CHECK_KEY)? {
            let sealed = SealedRecord::decode(&record)
                .map_err(|reason| VaultError::corrupt(Space::Meta, MASTER_KEY_CHECK_KEY, reason))?;
            master.open(&sealed, &aad).map_err(|_| key_mismatch())?;
            self.set_master(master, sealed.key_version);
            return Ok(false);
        }

        if let Some((store_key, record)) =
            self.store.scan_prefix(Space::DataKeys, b"", None, 1)?.pop()
        {
            let (account, project, version) =
                layout::split_data_key_key(&store_key).ok_or_else(|| {
                    VaultError::corrupt(
                        Space::DataKeys,
                        &store_key,
                        "key is not account, project and version",
                    )
                })?;
            let project = ProjectRef { account, project };
            if let Ok(sealed) = SealedRecord::decode(&record) {
                self.set_master(Arc::clone(&master), sealed.key_version);
            }
            self.open_data_key(&project, version, &store_key, &record)
                .map_err(|error| match error {
                    VaultError::DataKeyDecrypt { .. } => key_mismatch(),
                    other => other,
                })?;
        }

        let (master, version) = self.master_state();
        let mut batch = WriteBatch::default();
        batch.put(
            Space::Meta,
            MASTER_KEY_CHECK_KEY,
            master.seal(version, &[], &aad),
        );
        self.store.write(batch)?;
        tracing::info!("recorded the master key check");
        Ok(true)
    }
}

fn key_mismatch() -> VaultError {
    VaultError::MasterKey {
        path: None,
        reason: "it cannot decrypt the data in this store, so it is not the key the store was created with; start keygate with the original master key file".to_owned(),
    }
}
