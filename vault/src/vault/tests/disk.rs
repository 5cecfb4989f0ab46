//! What reaches the disk: only ciphertext of values and data keys.

use std::fs;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::*;
use crate::crypto::{self, SealedRecord};
use crate::keys::fill_random;
use crate::layout;
use crate::store::rocks::RocksStore;

/// Lists every file under `folder`, recursively.
fn files_under(folder: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![folder.to_owned()];
    while let Some(current) = pending.pop() {
        for entry in fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// Names of the files under `folder` whose bytes contain `needle`.
fn files_containing(folder: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files_under(folder)
        .into_iter()
        .filter(|path| {
            let bytes = fs::read(path).unwrap();
            bytes.windows(needle.len()).any(|window| window == needle)
        })
        .collect()
}

fn random_bytes(length: usize) -> Vec<u8> {
    let mut bytes = vec![0; length];
    fill_random(&mut bytes);
    bytes
}

/// Decrypts the project's data key from the store, as the vault does.
fn data_key_bytes(store: &dyn KvStore, master: &[u8; 32]) -> Vec<u8> {
    let record = store
        .get(Space::DataKeys, &layout::data_key_key(&project(), 1))
        .unwrap()
        .unwrap();
    let sealed = SealedRecord::decode(&record).unwrap();
    let master = crypto::AeadKey::new(master);
    master
        .open(&sealed, &crypto::data_key_aad(&project(), 1))
        .unwrap()
        .to_vec()
}

#[test]
fn only_ciphertext_reaches_disk() {
    let dir = TempDir::new().unwrap();
    let mut master_bytes = [0u8; 32];
    fill_random(&mut master_bytes);
    let binary_value = random_bytes(48);
    let text_value = crate::error::hex(&random_bytes(24));
    let secret_name = format!("disk-check/{}", crate::error::hex(&random_bytes(8)));

    let store = Arc::new(RocksStore::open(dir.path()).unwrap());
    let vault = Vault::new(
        Arc::clone(&store) as Arc<dyn KvStore>,
        MasterKey::from_bytes(&master_bytes).unwrap(),
    );
    vault
        .put_secret(
            &project(),
            &secret_name,
            &SecretValue::from_bytes(binary_value.clone()),
        )
        .unwrap();
    vault
        .put_secret(&project(), &secret_name, &text(&text_value))
        .unwrap();
    let data_key = data_key_bytes(store.as_ref(), &master_bytes);

    // First the write-ahead log, where synced writes land before any flush.
    let secrets: [(&str, &[u8]); 4] = [
        ("binary value", &binary_value),
        ("text value", text_value.as_bytes()),
        ("data key", &data_key),
        ("master key", &master_bytes),
    ];
    for (what, bytes) in secrets {
        assert_eq!(
            files_containing(dir.path(), bytes),
            Vec::<PathBuf>::new(),
            "{what} found in the WAL"
        );
    }
    assert!(
        !files_containing(dir.path(), secret_name.as_bytes()).is_empty(),
        "control: the secret name, stored in plain text in keys, must be found"
    );

    // Then the SST files after a flush and a close.
    store.flush().unwrap();
    drop(vault);
    drop(store);
    for (what, bytes) in secrets {
        assert_eq!(
            files_containing(dir.path(), bytes),
            Vec::<PathBuf>::new(),
            "{what} found on disk"
        );
    }
    let with_name = files_containing(dir.path(), secret_name.as_bytes());
    assert!(
        with_name
            .iter()
            .any(|path| path.extension().is_some_and(|ext| ext == "sst")),
        "control: the secret name must be found in an SST file, found in {with_name:?}"
    );
}

#[test]
fn vault_reads_after_reopen() {
    let dir = TempDir::new().unwrap();
    let master_bytes = [9u8; 32];
    {
        let store: Arc<dyn KvStore> = Arc::new(RocksStore::open(dir.path()).unwrap());
        let vault = Vault::new(store, MasterKey::from_bytes(&master_bytes).unwrap());
        vault.put_secret(&project(), "db", &text("one")).unwrap();
        vault.put_secret(&project(), "db", &text("two")).unwrap();
        vault.verify_master_key().unwrap();
    }

    let store: Arc<dyn KvStore> = Arc::new(RocksStore::open(dir.path()).unwrap());
    let vault = Vault::new(store, MasterKey::from_bytes(&master_bytes).unwrap());
    assert!(!vault.verify_master_key().unwrap());
    let (value, metadata) = vault.read_secret(&project(), "db", Some(1)).unwrap();
    assert_eq!(value.as_str(), Some("one"));
    assert_eq!(metadata.current_version, 2);
    assert_eq!(
        vault
            .put_secret(&project(), "db", &text("three"))
            .unwrap()
            .current_version,
        3
    );
}
