use std::collections::BTreeMap;
use std::thread;

use tempfile::TempDir;

use super::*;
use crate::layout;
use crate::store::rocks::RocksStore;

const THREADS: u32 = 8;
const PUTS_PER_THREAD: u32 = 10;

#[test]
fn concurrent_puts_get_distinct_versions() {
    let dir = TempDir::new().unwrap();
    let store: Arc<dyn KvStore> = Arc::new(RocksStore::open(dir.path()).unwrap());
    // Every version is kept, so each can be read back below.
    let options = crate::vault::VaultOptions {
        default_max_versions: THREADS * PUTS_PER_THREAD,
        ..crate::vault::VaultOptions::default()
    };
    let vault = Arc::new(Vault::with_options(store, MasterKey::generate(), options));

    let handles: Vec<_> = (0..THREADS)
        .map(|thread_index| {
            let vault = Arc::clone(&vault);
            thread::spawn(move || {
                let mut written = Vec::new();
                for put_index in 0..PUTS_PER_THREAD {
                    let value = format!("thread {thread_index} put {put_index}");
                    let metadata = vault
                        .put_secret(&project(), "shared", &text(&value))
                        .unwrap();
                    written.push((metadata.current_version, value));
                }
                written
            })
        })
        .collect();

    let mut by_version = BTreeMap::new();
    for handle in handles {
        for (version, value) in handle.join().unwrap() {
            let previous = by_version.insert(version, value);
            assert!(previous.is_none(), "version {version} was assigned twice");
        }
    }

    let total = THREADS * PUTS_PER_THREAD;
    let versions: Vec<u32> = by_version.keys().copied().collect();
    assert_eq!(versions, (1..=total).collect::<Vec<_>>());
    assert_eq!(
        vault
            .secret_metadata(&project(), "shared")
            .unwrap()
            .current_version,
        total
    );
    for (version, value) in &by_version {
        let (stored, _) = vault
            .read_secret(&project(), "shared", Some(*version))
            .unwrap();
        assert_eq!(stored.as_str(), Some(value.as_str()), "version {version}");
    }
}

#[test]
fn concurrent_first_puts_create_one_data_key() {
    let store: Arc<dyn KvStore> = Arc::new(MemStore::new());
    let vault = Arc::new(Vault::new(Arc::clone(&store), MasterKey::generate()));

    let handles: Vec<_> = (0..THREADS)
        .map(|thread_index| {
            let vault = Arc::clone(&vault);
            thread::spawn(move || {
                vault
                    .put_secret(&project(), &format!("secret-{thread_index}"), &text("v"))
                    .unwrap();
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }

    let prefix = layout::project_prefix(&project());
    let data_keys = store
        .scan_prefix(Space::DataKeys, &prefix, None, 100)
        .unwrap();
    assert_eq!(data_keys.len(), 1);
    assert_eq!(data_keys[0].0, layout::data_key_key(&project(), 1));
    for thread_index in 0..THREADS {
        let (value, _) = vault
            .read_secret(&project(), &format!("secret-{thread_index}"), None)
            .unwrap();
        assert_eq!(value.as_str(), Some("v"));
    }
}

#[test]
fn concurrent_reads_during_writes_succeed() {
    let vault = Arc::new(memory_vault());
    vault
        .put_secret(&project(), "db", &text("value 0"))
        .unwrap();

    let writer = {
        let vault = Arc::clone(&vault);
        thread::spawn(move || {
            for index in 1..=50 {
                vault
                    .put_secret(&project(), "db", &text(&format!("value {index}")))
                    .unwrap();
            }
        })
    };
    for _ in 0..200 {
        let (value, metadata) = vault.read_secret(&project(), "db", None).unwrap();
        let expected = format!("value {}", metadata.current_version - 1);
        assert_eq!(value.as_str(), Some(expected.as_str()));
    }
    writer.join().unwrap();
}
