use super::*;
use crate::error::VaultError;

fn vault_with(store: &Arc<dyn KvStore>, key_byte: u8) -> Vault {
    Vault::new(
        Arc::clone(store),
        MasterKey::from_bytes(&[key_byte; 32]).unwrap(),
    )
}

#[test]
fn first_check_records_then_verifies() {
    let store: Arc<dyn KvStore> = Arc::new(MemStore::new());
    assert!(vault_with(&store, 1).verify_master_key().unwrap());
    assert!(!vault_with(&store, 1).verify_master_key().unwrap());
}

#[test]
fn check_rejects_other_key() {
    let store: Arc<dyn KvStore> = Arc::new(MemStore::new());
    vault_with(&store, 1).verify_master_key().unwrap();

    let error = vault_with(&store, 2).verify_master_key().unwrap_err();
    assert!(
        matches!(error, VaultError::MasterKey { path: None, .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("not the key the store was created with"),
        "{error}"
    );
}

#[test]
fn check_without_record_uses_data_keys() {
    let store: Arc<dyn KvStore> = Arc::new(MemStore::new());
    vault_with(&store, 1)
        .put_secret(&project(), "db", &text("v"))
        .unwrap();

    let error = vault_with(&store, 2).verify_master_key().unwrap_err();
    assert!(matches!(error, VaultError::MasterKey { .. }), "{error:?}");
    assert!(store
        .get(Space::Meta, crate::layout::MASTER_KEY_CHECK_KEY)
        .unwrap()
        .is_none());

    assert!(vault_with(&store, 1).verify_master_key().unwrap());
    assert!(!vault_with(&store, 1).verify_master_key().unwrap());
}
