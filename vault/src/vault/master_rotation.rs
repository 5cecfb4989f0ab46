//! Master-key rotation: every data key and server secret re-sealed under a new
//! master key in one atomic write, without touching secret ciphertexts.

use std::sync::Arc;

use crate::crypto::{self, AeadKey, SealedRecord};
use crate::error::VaultError;
use crate::ids::ProjectRef;
use crate::keys::MasterKey;
use crate::layout::{self, MASTER_KEY_CHECK_KEY, SYSTEM_SECRET_PREFIX};
use crate::store::{Space, WriteBatch};

use super::system::system_aad;
use super::{MasterRotation, Vault};

impl Vault {
    /// Re-seals every data key, every server secret and the master-key check
    /// under `new_master` as the next master-key version, in one atomic batch,
    /// and then uses the new key. Secret ciphertexts are not touched, because
    /// the data keys that seal them do not change.
    ///
    /// Either every record moves to the new key or none does: a crash or an
    /// error leaves the store sealed by the old key. Once this returns, the old
    /// key no longer opens the store, so the new key must be saved first.
    pub fn rotate_master(&self, new_master: MasterKey) -> Result<MasterRotation, VaultError> {
        let _guard = self.lock_writes();
        let (old, old_version) = self.master_state();
        let version = old_version.checked_add(1).ok_or_else(|| {
            VaultError::corrupt(
                Space::Meta,
                MASTER_KEY_CHECK_KEY,
                "the master-key version is u32::MAX, so no version can follow it",
            )
        })?;
        let new = Arc::new(AeadKey::new(new_master.as_bytes()));
        let mut batch = WriteBatch::default();

        let check_aad = crypto::master_key_check_aad();
        let check = self
            .store
            .get(Space::Meta, MASTER_KEY_CHECK_KEY)?
            .ok_or_else(|| VaultError::MasterKey {
                path: None,
                reason:
                    "the store has no master-key check yet; start the server once before rotating"
                        .to_owned(),
            })?;
        reseal(
            &old,
            &new,
            version,
            Space::Meta,
            MASTER_KEY_CHECK_KEY,
            &check,
            &check_aad,
            &mut batch,
        )?;

        let mut data_keys = 0;
        for (store_key, record) in self
            .store
            .scan_prefix(Space::DataKeys, b"", None, usize::MAX)?
        {
            let (account, project, key_version) = layout::split_data_key_key(&store_key)
                .ok_or_else(|| {
                    VaultError::corrupt(
                        Space::DataKeys,
                        &store_key,
                        "key is not account, project and version",
                    )
                })?;
            let project = ProjectRef { account, project };
            let aad = crypto::data_key_aad(&project, key_version);
            reseal(
                &old,
                &new,
                version,
                Space::DataKeys,
                &store_key,
                &record,
                &aad,
                &mut batch,
            )?;
            data_keys += 1;
        }

        let mut system_secrets = 0;
        for (store_key, record) in
            self.store
                .scan_prefix(Space::Meta, SYSTEM_SECRET_PREFIX, None, usize::MAX)?
        {
            let name =
                std::str::from_utf8(&store_key[SYSTEM_SECRET_PREFIX.len()..]).map_err(|_| {
                    VaultError::corrupt(Space::Meta, &store_key, "system secret name is not UTF-8")
                })?;
            let aad = system_aad(name);
            reseal(
                &old,
                &new,
                version,
                Space::Meta,
                &store_key,
                &record,
                &aad,
                &mut batch,
            )?;
            system_secrets += 1;
        }

        self.store.write(batch)?;
        self.set_master(new, version);
        tracing::info!(
            master_key.version = version,
            data_keys,
            system_secrets,
            "rotated the master key"
        );
        Ok(MasterRotation {
            version,
            data_keys,
            system_secrets,
        })
    }
}

/// Opens `record` with the old master key and adds it to `batch` sealed by
/// the new one, under the same key and associated data.
#[allow(clippy::too_many_arguments)]
fn reseal(
    old: &AeadKey,
    new: &AeadKey,
    new_version: u32,
    space: Space,
    store_key: &[u8],
    record: &[u8],
    aad: &[u8],
    batch: &mut WriteBatch,
) -> Result<(), VaultError> {
    let sealed = SealedRecord::decode(record)
        .map_err(|reason| VaultError::corrupt(space, store_key, reason))?;
    let plaintext = old.open(&sealed, aad).map_err(|_| {
        VaultError::corrupt(
            space,
            store_key,
            "the record does not decrypt with the current master key, so the rotation was not started",
        )
    })?;
    batch.put(
        space,
        store_key.to_vec(),
        new.seal(new_version, &plaintext, aad),
    );
    Ok(())
}
