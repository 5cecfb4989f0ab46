use super::*;
use crate::error::VaultError;
use crate::store::StoreError;
use crate::vault::VaultOptions;

fn data_key_version_of(vault: &Vault, name: &str, version: u32) -> u32 {
    let record = vault
        .store()
        .get(
            Space::Secrets,
            &crate::layout::secret_key(&project(), name, version),
        )
        .unwrap()
        .unwrap();
    u32::from_be_bytes(record[1..5].try_into().unwrap())
}

#[test]
fn data_key_rotation_keeps_old_readable() {
    let vault = memory_vault();
    vault.put_secret(&project(), "db", &text("old")).unwrap();
    let status = vault.rotate_data_key(&project()).unwrap();
    assert_eq!(status.current_version, 2);
    assert_eq!(status.versions.len(), 2);
    assert_eq!(status.current_encryptions, 0);
    vault.put_secret(&project(), "db", &text("new")).unwrap();

    assert_eq!(data_key_version_of(&vault, "db", 1), 1);
    assert_eq!(data_key_version_of(&vault, "db", 2), 2);
    assert_eq!(
        vault
            .read_secret(&project(), "db", Some(1))
            .unwrap()
            .0
            .as_str(),
        Some("old")
    );
    assert_eq!(
        vault
            .read_secret(&project(), "db", Some(2))
            .unwrap()
            .0
            .as_str(),
        Some("new")
    );
    assert_eq!(
        vault
            .data_key_status(&project())
            .unwrap()
            .current_encryptions,
        1
    );
}

#[test]
fn data_key_encryption_limit() {
    let vault = Vault::with_options(
        Arc::new(MemStore::new()),
        MasterKey::generate(),
        VaultOptions {
            data_key_max_encryptions: 3,
            ..VaultOptions::default()
        },
    );
    for n in 1..=7 {
        vault
            .put_secret(&project(), "db", &text(&format!("v{n}")))
            .unwrap();
    }
    let keys: Vec<u32> = (1..=7)
        .map(|v| data_key_version_of(&vault, "db", v))
        .collect();
    assert_eq!(keys, [1, 1, 1, 2, 2, 2, 3]);
    let status = vault.data_key_status(&project()).unwrap();
    assert_eq!((status.current_version, status.current_encryptions), (3, 1));
    for n in 1..=7 {
        let expected = format!("v{n}");
        assert_eq!(
            vault
                .read_secret(&project(), "db", Some(n))
                .unwrap()
                .0
                .as_str(),
            Some(expected.as_str())
        );
    }
}

#[test]
fn master_rotation_reseals_keys_and_leaves_ciphertexts_alone() {
    let store: Arc<dyn KvStore> = Arc::new(MemStore::new());
    let old_key = [1u8; 32];
    let new_key = [2u8; 32];
    let vault = Vault::new(Arc::clone(&store), MasterKey::from_bytes(&old_key).unwrap());
    vault.verify_master_key().unwrap();
    vault.put_secret(&project(), "db", &text("value")).unwrap();
    vault.put_system_secret("signing", b"private").unwrap();
    let other = ProjectRef::new("acme", "dev").unwrap();
    vault.put_secret(&other, "x", &text("y")).unwrap();
    let secret_key = crate::layout::secret_key(&project(), "db", 1);
    let ciphertext_before = store.get(Space::Secrets, &secret_key).unwrap();

    let rotation = vault
        .rotate_master(MasterKey::from_bytes(&new_key).unwrap())
        .unwrap();
    assert_eq!(rotation.version, 1);
    assert_eq!(rotation.data_keys, 2);
    assert_eq!(rotation.system_secrets, 1);
    assert_eq!(vault.master_key_version(), 1);
    assert_eq!(
        store.get(Space::Secrets, &secret_key).unwrap(),
        ciphertext_before
    );
    assert_eq!(
        vault
            .read_secret(&project(), "db", None)
            .unwrap()
            .0
            .as_str(),
        Some("value")
    );

    let reopened = Vault::new(Arc::clone(&store), MasterKey::from_bytes(&new_key).unwrap());
    assert!(!reopened.verify_master_key().unwrap());
    assert_eq!(reopened.master_key_version(), 1);
    assert_eq!(
        reopened.read_secret(&other, "x", None).unwrap().0.as_str(),
        Some("y")
    );
    assert_eq!(
        &reopened.get_system_secret("signing").unwrap().unwrap()[..],
        b"private"
    );
    reopened
        .put_secret(&project(), "db", &text("after"))
        .unwrap();

    let stale = Vault::new(Arc::clone(&store), MasterKey::from_bytes(&old_key).unwrap());
    assert!(matches!(
        stale.verify_master_key().unwrap_err(),
        VaultError::MasterKey { .. }
    ));
}

#[test]
fn master_rotation_wrong_key() {
    let store: Arc<dyn KvStore> = Arc::new(MemStore::new());
    let vault = Vault::new(Arc::clone(&store), MasterKey::from_bytes(&[1; 32]).unwrap());
    vault.verify_master_key().unwrap();
    vault.put_secret(&project(), "db", &text("value")).unwrap();
    let wrong = Vault::new(Arc::clone(&store), MasterKey::from_bytes(&[9; 32]).unwrap());
    assert!(wrong
        .rotate_master(MasterKey::from_bytes(&[2; 32]).unwrap())
        .is_err());
    let same = Vault::new(store, MasterKey::from_bytes(&[1; 32]).unwrap());
    same.verify_master_key().unwrap();
    assert_eq!(
        same.read_secret(&project(), "db", None).unwrap().0.as_str(),
        Some("value")
    );
}

/// A store that counts batch writes and fails them while `failing` is set;
/// every other call goes to `inner`.
struct FailingWrites {
    inner: MemStore,
    failing: std::sync::atomic::AtomicBool,
    writes: std::sync::atomic::AtomicUsize,
}

impl KvStore for FailingWrites {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(space, key)
    }

    fn scan_prefix(
        &self,
        space: Space,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<crate::store::KeyValue>, StoreError> {
        self.inner.scan_prefix(space, prefix, start_after, limit)
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Operation {
                store: "test store".into(),
                operation: "write",
                space: None,
                message: "injected failure".into(),
                retryable: false,
            });
        }
        self.inner.write(batch)
    }
}

#[test]
fn master_rotation_failed_write_keeps_old_key() {
    let store = Arc::new(FailingWrites {
        inner: MemStore::new(),
        failing: Default::default(),
        writes: Default::default(),
    });
    let shared: Arc<dyn KvStore> = store.clone();
    let vault = Vault::new(
        Arc::clone(&shared),
        MasterKey::from_bytes(&[1; 32]).unwrap(),
    );
    vault.verify_master_key().unwrap();
    vault.put_secret(&project(), "db", &text("value")).unwrap();
    let other = ProjectRef::new("acme", "dev").unwrap();
    vault.put_secret(&other, "x", &text("y")).unwrap();
    vault.put_system_secret("signing", b"private").unwrap();
    let before = store
        .inner
        .scan_prefix(Space::DataKeys, b"", None, 100)
        .unwrap();

    store
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let error = vault
        .rotate_master(MasterKey::from_bytes(&[2; 32]).unwrap())
        .unwrap_err();
    assert!(error.to_string().contains("injected failure"), "{error}");
    store
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);

    // Nothing was written: every data key is still sealed by the old
    // master key, which still opens the whole store.
    assert_eq!(vault.master_key_version(), 0);
    let after = store
        .inner
        .scan_prefix(Space::DataKeys, b"", None, 100)
        .unwrap();
    assert_eq!(after, before);
    let reopened = Vault::new(shared, MasterKey::from_bytes(&[1; 32]).unwrap());
    reopened.verify_master_key().unwrap();
    let read = reopened.read_secret(&project(), "db", None).unwrap().0;
    assert_eq!(read.as_str(), Some("value"));
    let read = reopened.read_secret(&other, "x", None).unwrap().0;
    assert_eq!(read.as_str(), Some("y"));
    assert_eq!(
        reopened
            .get_system_secret("signing")
            .unwrap()
            .as_deref()
            .map(Vec::as_slice),
        Some(&b"private"[..])
    );

    // A rotation that succeeds makes all its changes in one batch.
    let writes = || store.writes.load(std::sync::atomic::Ordering::SeqCst);
    let before = writes();
    vault
        .rotate_master(MasterKey::from_bytes(&[2; 32]).unwrap())
        .unwrap();
    assert_eq!(writes() - before, 1);
    assert_eq!(vault.master_key_version(), 1);
}

#[test]
fn reencryption_resumes_from_cursor() {
    let store: Arc<dyn KvStore> = Arc::new(MemStore::new());
    let vault = Vault::new(Arc::clone(&store), MasterKey::from_bytes(&[1; 32]).unwrap());
    for n in 0..5 {
        vault
            .put_secret(&project(), &format!("s{n}"), &text(&format!("v{n}")))
            .unwrap();
    }
    vault.rotate_data_key(&project()).unwrap();
    vault.put_secret(&project(), "s0", &text("fresh")).unwrap();

    assert!(vault.reencrypt_step(2).unwrap().is_none(), "not started");
    let started = vault.start_reencrypt().unwrap();
    assert_eq!(started.total, 6);
    let first = vault.reencrypt_step(2).unwrap().unwrap();
    assert_eq!((first.scanned, first.rewritten, first.done), (2, 1, false));

    // A new vault on the same store stands for a restarted server.
    let resumed = Vault::new(Arc::clone(&store), MasterKey::from_bytes(&[1; 32]).unwrap());
    let mut progress = first;
    while !progress.done {
        progress = resumed.reencrypt_step(2).unwrap().unwrap();
    }
    assert_eq!(progress.scanned, 6);
    assert_eq!(progress.rewritten, 5);
    for n in 0..5 {
        assert_eq!(data_key_version_of(&resumed, &format!("s{n}"), 1), 2);
    }
    assert_eq!(
        resumed
            .read_secret(&project(), "s3", None)
            .unwrap()
            .0
            .as_str(),
        Some("v3")
    );
    assert_eq!(
        resumed
            .read_secret(&project(), "s0", Some(1))
            .unwrap()
            .0
            .as_str(),
        Some("v0")
    );
    assert_eq!(
        resumed
            .data_key_status(&project())
            .unwrap()
            .current_encryptions,
        6
    );
}

#[test]
fn deleting_a_project_destroys_its_keys_first() {
    let vault = memory_vault();
    vault.put_secret(&project(), "db", &text("one")).unwrap();
    vault.put_secret(&project(), "db", &text("two")).unwrap();
    let other = ProjectRef::new("acme", "dev").unwrap();
    vault.put_secret(&other, "db", &text("kept")).unwrap();
    let secret_key = crate::layout::secret_key(&project(), "db", 1);
    let ciphertext = vault
        .store()
        .get(Space::Secrets, &secret_key)
        .unwrap()
        .unwrap();
    let meta_key = crate::layout::secret_meta_key(&project(), "db");
    let meta = vault
        .store()
        .get(Space::SecretMeta, &meta_key)
        .unwrap()
        .unwrap();

    let deletion = vault.delete_project(&project()).unwrap();
    assert_eq!(deletion.data_keys, 1);
    assert_eq!(deletion.secret_versions, 2);
    assert_eq!(deletion.secrets, 1);
    assert!(vault.secret_metadata(&project(), "db").is_err());
    assert_eq!(
        vault.read_secret(&other, "db", None).unwrap().0.as_str(),
        Some("kept")
    );

    // Even with the old records put back, the value cannot be decrypted:
    // its data key is gone.
    raw_put(
        vault.store().as_ref(),
        Space::Secrets,
        secret_key,
        ciphertext,
    );
    raw_put(vault.store().as_ref(), Space::SecretMeta, meta_key, meta);
    assert!(vault.read_secret(&project(), "db", Some(1)).is_err());
}
