//! Runs the conformance suite against every store, plus RocksDB-only checks.

use std::path::Path;
use std::sync::Arc;

use tempfile::TempDir;

use super::conformance;
use super::memory::MemStore;
use super::rocks::RocksStore;
use super::{KvStore, Space, StoreError, WriteBatch};

/// Declares one test per conformance check. `$make` returns a guard that must
/// live as long as the store (the temporary folder), and the store.
macro_rules! conformance_tests {
    ($module:ident, $make:expr) => {
        mod $module {
            use super::*;

            fn make() -> (impl Sized, Arc<dyn KvStore>) {
                $make
            }

            #[test]
            fn get_put_delete() {
                let (_guard, store) = make();
                conformance::get_put_delete(store.as_ref());
            }

            #[test]
            fn empty_value_is_not_missing() {
                let (_guard, store) = make();
                conformance::empty_value_is_not_missing(store.as_ref());
            }

            #[test]
            fn large_value_round_trips() {
                let (_guard, store) = make();
                conformance::large_value_round_trips(store.as_ref());
            }

            #[test]
            fn spaces_are_separate() {
                let (_guard, store) = make();
                conformance::spaces_are_separate(store.as_ref());
            }

            #[test]
            fn batch_applies_in_order() {
                let (_guard, store) = make();
                conformance::batch_applies_in_order(store.as_ref());
            }

            #[test]
            fn empty_batch_is_accepted() {
                let (_guard, store) = make();
                conformance::empty_batch_is_accepted(store.as_ref());
            }

            #[test]
            fn batch_is_atomic_for_readers() {
                let (_guard, store) = make();
                conformance::batch_is_atomic_for_readers(store);
            }

            #[test]
            fn scan_returns_byte_order() {
                let (_guard, store) = make();
                conformance::scan_returns_byte_order(store.as_ref());
            }

            #[test]
            fn scan_returns_values() {
                let (_guard, store) = make();
                conformance::scan_returns_values(store.as_ref());
            }

            #[test]
            fn scan_stops_at_prefix_boundary() {
                let (_guard, store) = make();
                conformance::scan_stops_at_prefix_boundary(store.as_ref());
            }

            #[test]
            fn scan_starts_strictly_after() {
                let (_guard, store) = make();
                conformance::scan_starts_strictly_after(store.as_ref());
            }

            #[test]
            fn scan_respects_limit() {
                let (_guard, store) = make();
                conformance::scan_respects_limit(store.as_ref());
            }

            #[test]
            fn scan_pages_cover_everything() {
                let (_guard, store) = make();
                conformance::scan_pages_cover_everything(store.as_ref());
            }
        }
    };
}

conformance_tests!(memory, ((), Arc::new(MemStore::new()) as Arc<dyn KvStore>));

conformance_tests!(rocks, {
    let dir = TempDir::new().unwrap();
    let store = RocksStore::open(dir.path()).unwrap();
    (dir, Arc::new(store) as Arc<dyn KvStore>)
});

fn put(store: &dyn KvStore, space: Space, key: &[u8], value: &[u8]) {
    let mut batch = WriteBatch::default();
    batch.put(space, key, value);
    store.write(batch).unwrap();
}

#[test]
fn rocks_reopen_keeps_data() {
    let dir = TempDir::new().unwrap();
    {
        let store = RocksStore::open(dir.path()).unwrap();
        put(&store, Space::Secrets, b"kept", b"value");
        put(&store, Space::Meta, b"also-kept", b"other");
    }
    let store = RocksStore::open(dir.path()).unwrap();
    assert_eq!(
        store.get(Space::Secrets, b"kept").unwrap(),
        Some(b"value".to_vec())
    );
    assert_eq!(
        store.get(Space::Meta, b"also-kept").unwrap(),
        Some(b"other".to_vec())
    );
    assert_eq!(store.path(), dir.path());
}

#[test]
fn rocks_reopen_after_flush_keeps_data() {
    let dir = TempDir::new().unwrap();
    {
        let store = RocksStore::open(dir.path()).unwrap();
        put(&store, Space::Definitions, b"flushed", b"value");
        store.flush().unwrap();
    }
    let store = RocksStore::open(dir.path()).unwrap();
    assert_eq!(
        store.get(Space::Definitions, b"flushed").unwrap(),
        Some(b"value".to_vec())
    );
}

#[test]
fn rocks_creates_missing_folders() {
    let dir = TempDir::new().unwrap();
    let nested = dir.path().join("a/b/db");
    let store = RocksStore::open(&nested).unwrap();
    put(&store, Space::Agents, b"k", b"v");
    assert!(nested.join("CURRENT").exists());
}

#[test]
fn rocks_second_open_is_locked() {
    let dir = TempDir::new().unwrap();
    let _first = RocksStore::open(dir.path()).unwrap();
    let error = RocksStore::open(dir.path()).unwrap_err();
    assert!(matches!(error, StoreError::Locked { .. }), "got {error:?}");
    let message = error.to_string();
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
    assert!(message.contains("another process"), "{message}");
}

#[test]
fn rocks_open_under_a_file_fails() {
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"not a folder").unwrap();
    let path = file.join("db");
    let error = RocksStore::open(&path).unwrap_err();
    assert!(matches!(error, StoreError::Open { .. }), "got {error:?}");
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
    assert!(!error.is_retryable());
}

#[cfg(unix)]
#[test]
fn rocks_read_only_folder_is_permission_denied() {
    use std::os::unix::fs::PermissionsExt;

    let dir = TempDir::new().unwrap();
    let path = dir.path().join("db");
    std::fs::create_dir(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o500)).unwrap();
    if is_writable(&path) {
        // NOTE: root ignores the mode, so this test checks nothing when run as root.
        eprintln!("skipped: the folder is writable despite mode 0500 (running as root?)");
        return;
    }
    let error = RocksStore::open(&path).unwrap_err();
    assert!(
        matches!(error, StoreError::PermissionDenied { .. }),
        "got {error:?}"
    );
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
}

#[cfg(unix)]
fn is_writable(folder: &Path) -> bool {
    let probe = folder.join("probe");
    let writable = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    writable
}

#[test]
fn rocks_opens_unknown_column_families() {
    let dir = TempDir::new().unwrap();
    {
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let db = rocksdb::DB::open_cf(&options, dir.path(), ["from_a_later_version"]).unwrap();
        drop(db);
    }
    let store = RocksStore::open(dir.path()).unwrap();
    put(&store, Space::Secrets, b"k", b"v");
    assert_eq!(
        store.get(Space::Secrets, b"k").unwrap(),
        Some(b"v".to_vec())
    );
}

#[test]
fn space_names_are_distinct() {
    let mut names: Vec<&str> = Space::ALL.iter().map(|space| space.name()).collect();
    assert_eq!(names[1], "data_keys");
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), Space::ALL.len());
    for (index, space) in Space::ALL.iter().enumerate() {
        assert_eq!(space.index(), index, "{space}");
    }
}

#[test]
fn batch_debug_shows_lengths_only() {
    let mut batch = WriteBatch::default();
    batch.put(Space::Secrets, b"key".to_vec(), b"hunter2".to_vec());
    batch.delete(Space::Meta, b"gone".to_vec());
    let text = format!("{batch:?}");
    assert_eq!(
        text,
        "[Put(secrets, 3-byte key, 7-byte value), Delete(meta, 4-byte key)]"
    );
}

#[test]
fn rocks_checkpoint_opens_with_the_data() {
    let dir = TempDir::new().unwrap();
    let store = RocksStore::open(&dir.path().join("db")).unwrap();
    put(&store, Space::Secrets, b"k1", b"v1");
    put(&store, Space::Meta, b"k2", b"v2");

    let copy = dir.path().join("copy");
    store.checkpoint(&copy).unwrap();
    put(&store, Space::Secrets, b"k3", b"after the checkpoint");

    let reopened = RocksStore::open(&copy).unwrap();
    assert_eq!(
        reopened.get(Space::Secrets, b"k1").unwrap(),
        Some(b"v1".to_vec())
    );
    assert_eq!(
        reopened.get(Space::Meta, b"k2").unwrap(),
        Some(b"v2".to_vec())
    );
    assert_eq!(reopened.get(Space::Secrets, b"k3").unwrap(), None);
}

#[test]
fn rocks_checkpoint_into_existing_folder_fails() {
    let dir = TempDir::new().unwrap();
    let store = RocksStore::open(&dir.path().join("db")).unwrap();
    let target = dir.path().join("taken");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep.txt"), b"keep").unwrap();

    let error = store.checkpoint(&target).unwrap_err();
    assert!(
        error.to_string().contains("checkpoint"),
        "the message names the operation: {error}"
    );
    assert_eq!(std::fs::read(target.join("keep.txt")).unwrap(), b"keep");
}

#[test]
fn storage_condition_messages_name_folder_and_fix() {
    let no_space = StoreError::NoSpace {
        store: "RocksDB at /srv/kg/db".to_owned(),
        path: "/srv/kg/db".into(),
        operation: "write",
        message: "IO error: No space left on device".to_owned(),
    };
    let text = no_space.to_string();
    assert!(text.contains("/srv/kg/db"), "{text}");
    assert!(text.contains("free space"), "{text}");
    assert!(!no_space.is_retryable());

    let read_only = StoreError::ReadOnly {
        store: "RocksDB at /srv/kg/db".to_owned(),
        path: "/srv/kg/db".into(),
        operation: "write",
        message: "IO error: Read-only file system".to_owned(),
    };
    let text = read_only.to_string();
    assert!(text.contains("/srv/kg/db"), "{text}");
    assert!(text.contains("read-only"), "{text}");
    assert!(text.contains("make it writable"), "{text}");
    assert!(!read_only.is_retryable());
}
