//! Ciphertext is bound to its location, and only the right keys open it.

use super::*;
use crate::error::{ErrorKind, VaultError};
use crate::layout;

fn vault_on(store: &Arc<MemStore>) -> Vault {
    Vault::new(
        Arc::clone(store) as Arc<dyn KvStore>,
        MasterKey::from_bytes(&[7; 32]).unwrap(),
    )
}

fn raw_get(store: &MemStore, space: Space, key: &[u8]) -> Vec<u8> {
    store.get(space, key).unwrap().unwrap()
}

fn assert_decrypt_error(error: &VaultError, name: &str, version: u32) {
    match error {
        VaultError::Decrypt {
            account,
            project,
            name: actual_name,
            version: actual_version,
        } => {
            assert_eq!((account.as_str(), project.as_str()), ("acme", "prod"));
            assert_eq!(actual_name, name);
            assert_eq!(*actual_version, version);
        }
        other => panic!("expected a Decrypt error, got {other:?}"),
    }
    assert_eq!(error.kind(), ErrorKind::Internal);
}

#[test]
fn record_copied_to_another_name_fails() {
    let store = Arc::new(MemStore::new());
    let vault = vault_on(&store);
    vault
        .put_secret(&project(), "source", &text("source value"))
        .unwrap();
    vault
        .put_secret(&project(), "target", &text("target value"))
        .unwrap();

    let record = raw_get(
        &store,
        Space::Secrets,
        &layout::secret_key(&project(), "source", 1),
    );
    raw_put(
        store.as_ref(),
        Space::Secrets,
        layout::secret_key(&project(), "target", 1),
        record,
    );

    let error = vault.read_secret(&project(), "target", None).unwrap_err();
    assert_decrypt_error(&error, "target", 1);
    let message = error.to_string();
    assert!(!message.contains("source value"), "{message}");
    assert_eq!(
        vault
            .read_secret(&project(), "source", None)
            .unwrap()
            .0
            .as_str(),
        Some("source value")
    );
}

#[test]
fn record_copied_to_another_version_fails() {
    let store = Arc::new(MemStore::new());
    let vault = vault_on(&store);
    vault.put_secret(&project(), "db", &text("one")).unwrap();
    vault.put_secret(&project(), "db", &text("two")).unwrap();

    let version_one = raw_get(
        &store,
        Space::Secrets,
        &layout::secret_key(&project(), "db", 1),
    );
    raw_put(
        store.as_ref(),
        Space::Secrets,
        layout::secret_key(&project(), "db", 2),
        version_one,
    );

    let error = vault.read_secret(&project(), "db", None).unwrap_err();
    assert_decrypt_error(&error, "db", 2);
    assert_eq!(
        vault
            .read_secret(&project(), "db", Some(1))
            .unwrap()
            .0
            .as_str(),
        Some("one")
    );
}

#[test]
fn record_copied_to_another_project_fails() {
    let store = Arc::new(MemStore::new());
    let vault = vault_on(&store);
    let other = ProjectRef::new("acme", "dev").unwrap();
    vault.put_secret(&other, "db", &text("dev value")).unwrap();
    vault
        .put_secret(&project(), "db", &text("prod value"))
        .unwrap();

    let record = raw_get(&store, Space::Secrets, &layout::secret_key(&other, "db", 1));
    raw_put(
        store.as_ref(),
        Space::Secrets,
        layout::secret_key(&project(), "db", 1),
        record,
    );

    let error = vault.read_secret(&project(), "db", None).unwrap_err();
    assert_decrypt_error(&error, "db", 1);
}

#[test]
fn data_key_copied_to_another_project_fails() {
    let store = Arc::new(MemStore::new());
    let vault = vault_on(&store);
    let other = ProjectRef::new("acme", "dev").unwrap();
    vault.put_secret(&other, "db", &text("dev value")).unwrap();
    vault
        .put_secret(&project(), "db", &text("prod value"))
        .unwrap();

    let other_key = raw_get(&store, Space::DataKeys, &layout::data_key_key(&other, 1));
    raw_put(
        store.as_ref(),
        Space::DataKeys,
        layout::data_key_key(&project(), 1),
        other_key,
    );

    // A fresh vault has no cached data keys, so it reads the copied record.
    let fresh = vault_on(&store);
    let error = fresh.read_secret(&project(), "db", None).unwrap_err();
    assert!(
        matches!(&error, VaultError::DataKeyDecrypt { account, project, version: 1 } if account == "acme" && project == "prod"),
        "{error:?}"
    );
    assert_eq!(
        fresh.read_secret(&other, "db", None).unwrap().0.as_str(),
        Some("dev value")
    );
}

#[test]
fn wrong_master_key_fails() {
    let store: Arc<dyn KvStore> = Arc::new(MemStore::new());
    let right = Vault::new(Arc::clone(&store), MasterKey::from_bytes(&[1; 32]).unwrap());
    right.put_secret(&project(), "db", &text("value")).unwrap();

    let wrong = Vault::new(Arc::clone(&store), MasterKey::from_bytes(&[2; 32]).unwrap());
    let error = wrong.read_secret(&project(), "db", None).unwrap_err();
    assert!(
        matches!(error, VaultError::DataKeyDecrypt { version: 1, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("master key is wrong"), "{error}");

    let error = wrong
        .put_secret(&project(), "db", &text("other"))
        .unwrap_err();
    assert!(
        matches!(error, VaultError::DataKeyDecrypt { .. }),
        "{error:?}"
    );
    assert_eq!(
        right
            .read_secret(&project(), "db", None)
            .unwrap()
            .0
            .as_str(),
        Some("value")
    );
}

#[test]
fn same_master_key_reads_after_restart() {
    let store: Arc<dyn KvStore> = Arc::new(MemStore::new());
    Vault::new(Arc::clone(&store), MasterKey::from_bytes(&[1; 32]).unwrap())
        .put_secret(&project(), "db", &text("value"))
        .unwrap();
    let restarted = Vault::new(Arc::clone(&store), MasterKey::from_bytes(&[1; 32]).unwrap());
    assert_eq!(
        restarted
            .read_secret(&project(), "db", None)
            .unwrap()
            .0
            .as_str(),
        Some("value")
    );
}

#[test]
fn damaged_records_are_corrupt() {
    let store = Arc::new(MemStore::new());
    let vault = vault_on(&store);
    vault.put_secret(&project(), "db", &text("value")).unwrap();
    vault
        .put_definition(
            &project(),
            "def",
            crate::SecretLocation::Hosted {
                secret: "db".into(),
                json_key: None,
            },
        )
        .unwrap();

    raw_put(
        store.as_ref(),
        Space::Secrets,
        layout::secret_key(&project(), "db", 1),
        vec![1, 2, 3],
    );
    let error = vault.read_secret(&project(), "db", None).unwrap_err();
    assert!(
        matches!(
            error,
            VaultError::Corrupt {
                space: Space::Secrets,
                ..
            }
        ),
        "{error:?}"
    );

    raw_put(
        store.as_ref(),
        Space::SecretMeta,
        layout::secret_meta_key(&project(), "db"),
        b"{".to_vec(),
    );
    let error = vault.secret_metadata(&project(), "db").unwrap_err();
    assert!(
        matches!(
            error,
            VaultError::Corrupt {
                space: Space::SecretMeta,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.kind(), ErrorKind::Internal);

    raw_put(
        store.as_ref(),
        Space::Definitions,
        layout::definition_key(&project(), "def"),
        b"[]".to_vec(),
    );
    let error = vault.list_definitions(&project(), None, 10).unwrap_err();
    assert!(
        matches!(
            error,
            VaultError::Corrupt {
                space: Space::Definitions,
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn missing_version_record_is_corrupt() {
    let store = Arc::new(MemStore::new());
    let vault = vault_on(&store);
    vault.put_secret(&project(), "db", &text("value")).unwrap();

    let mut batch = WriteBatch::default();
    batch.delete(Space::Secrets, layout::secret_key(&project(), "db", 1));
    store.write(batch).unwrap();

    let error = vault.read_secret(&project(), "db", None).unwrap_err();
    assert!(
        matches!(&error, VaultError::Corrupt { reason, .. } if reason.contains("missing")),
        "{error:?}"
    );
}

#[test]
fn listed_name_must_match_key() {
    let store = Arc::new(MemStore::new());
    let vault = vault_on(&store);
    let metadata = vault.put_secret(&project(), "real", &text("v")).unwrap();
    let json = serde_json::to_vec(&metadata).unwrap();
    raw_put(
        store.as_ref(),
        Space::SecretMeta,
        layout::secret_meta_key(&project(), "moved"),
        json,
    );

    let error = vault.list_secrets(&project(), None, 10).unwrap_err();
    assert!(
        matches!(&error, VaultError::Corrupt { reason, .. } if reason.contains("differs")),
        "{error:?}"
    );
}
