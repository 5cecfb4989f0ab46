//! The behavior every [`KvStore`] must have. Each function checks one property
//! against a fresh, empty store, and `store/tests.rs` runs all of them against
//! every implementation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use super::{KeyValue, KvStore, Space, WriteBatch};

fn put(store: &dyn KvStore, space: Space, key: &[u8], value: &[u8]) {
    let mut batch = WriteBatch::default();
    batch.put(space, key, value);
    store.write(batch).unwrap();
}

fn keys(entries: &[KeyValue]) -> Vec<Vec<u8>> {
    entries.iter().map(|(key, _)| key.clone()).collect()
}

fn byte_keys(list: &[&[u8]]) -> Vec<Vec<u8>> {
    list.iter().map(|key| key.to_vec()).collect()
}

pub(crate) fn get_put_delete(store: &dyn KvStore) {
    assert_eq!(store.get(Space::Secrets, b"k").unwrap(), None);

    put(store, Space::Secrets, b"k", b"one");
    assert_eq!(
        store.get(Space::Secrets, b"k").unwrap(),
        Some(b"one".to_vec())
    );

    put(store, Space::Secrets, b"k", b"two");
    assert_eq!(
        store.get(Space::Secrets, b"k").unwrap(),
        Some(b"two".to_vec())
    );

    let mut batch = WriteBatch::default();
    batch.delete(Space::Secrets, b"k".to_vec());
    store.write(batch).unwrap();
    assert_eq!(store.get(Space::Secrets, b"k").unwrap(), None);

    let mut batch = WriteBatch::default();
    batch.delete(Space::Secrets, b"never-written".to_vec());
    store.write(batch).unwrap();
}

pub(crate) fn empty_value_is_not_missing(store: &dyn KvStore) {
    put(store, Space::Meta, b"empty", b"");
    assert_eq!(store.get(Space::Meta, b"empty").unwrap(), Some(Vec::new()));
}

pub(crate) fn large_value_round_trips(store: &dyn KvStore) {
    let value: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    put(store, Space::Secrets, b"big", &value);
    assert_eq!(store.get(Space::Secrets, b"big").unwrap(), Some(value));
}

pub(crate) fn spaces_are_separate(store: &dyn KvStore) {
    for (index, space) in Space::ALL.iter().enumerate() {
        put(store, *space, b"same-key", &[index as u8]);
    }
    for (index, space) in Space::ALL.iter().enumerate() {
        assert_eq!(
            store.get(*space, b"same-key").unwrap(),
            Some(vec![index as u8]),
            "space {space}"
        );
        let scanned = store.scan_prefix(*space, b"", None, 100).unwrap();
        assert_eq!(scanned.len(), 1, "space {space}");
    }
}

pub(crate) fn batch_applies_in_order(store: &dyn KvStore) {
    put(store, Space::Definitions, b"doomed", b"old");

    let mut batch = WriteBatch::default();
    batch.put(Space::Secrets, b"a".to_vec(), b"first".to_vec());
    batch.put(Space::Secrets, b"a".to_vec(), b"second".to_vec());
    batch.put(Space::SecretMeta, b"b".to_vec(), b"kept".to_vec());
    batch.put(Space::Meta, b"c".to_vec(), b"short-lived".to_vec());
    batch.delete(Space::Meta, b"c".to_vec());
    batch.delete(Space::Definitions, b"doomed".to_vec());
    assert_eq!(batch.len(), 6);
    store.write(batch).unwrap();

    assert_eq!(
        store.get(Space::Secrets, b"a").unwrap(),
        Some(b"second".to_vec())
    );
    assert_eq!(
        store.get(Space::SecretMeta, b"b").unwrap(),
        Some(b"kept".to_vec())
    );
    assert_eq!(store.get(Space::Meta, b"c").unwrap(), None);
    assert_eq!(store.get(Space::Definitions, b"doomed").unwrap(), None);
}

pub(crate) fn empty_batch_is_accepted(store: &dyn KvStore) {
    let batch = WriteBatch::default();
    assert!(batch.is_empty());
    store.write(batch).unwrap();
    assert!(store
        .scan_prefix(Space::Secrets, b"", None, 10)
        .unwrap()
        .is_empty());
}

/// A reader scanning two keys that every batch sets to the same value must
/// never see them differ. One scan reads from one consistent view in both
/// implementations, so a difference means a batch was applied in parts.
pub(crate) fn batch_is_atomic_for_readers(store: Arc<dyn KvStore>) {
    const BATCHES: u32 = 300;
    const MAX_READS: u32 = 100_000;
    let done = Arc::new(AtomicBool::new(false));

    let writer = {
        let store = Arc::clone(&store);
        let done = Arc::clone(&done);
        thread::spawn(move || {
            for round in 0..BATCHES {
                let mut batch = WriteBatch::default();
                batch.put(
                    Space::Secrets,
                    b"pair/1".to_vec(),
                    round.to_be_bytes().to_vec(),
                );
                batch.put(
                    Space::Secrets,
                    b"pair/2".to_vec(),
                    round.to_be_bytes().to_vec(),
                );
                store.write(batch).unwrap();
            }
            done.store(true, Ordering::SeqCst);
        })
    };

    let mut reads = 0;
    while !done.load(Ordering::SeqCst) && reads < MAX_READS {
        let pair = store
            .scan_prefix(Space::Secrets, b"pair/", None, 10)
            .unwrap();
        if pair.len() == 2 {
            assert_eq!(pair[0].1, pair[1].1, "a reader saw half of a batch");
        } else {
            assert!(
                pair.is_empty(),
                "a reader saw one key of a pair: {:?}",
                keys(&pair)
            );
        }
        reads += 1;
    }
    writer.join().unwrap();
}

pub(crate) fn scan_returns_byte_order(store: &dyn KvStore) {
    let unordered: [&[u8]; 7] = [
        b"k\xff",
        b"k\x00",
        b"kz",
        b"kA",
        b"k",
        b"k\x00\x00",
        b"k\x7f\x80",
    ];
    for key in unordered {
        put(store, Space::Secrets, key, b"v");
    }
    let scanned = store.scan_prefix(Space::Secrets, b"k", None, 100).unwrap();
    let expected = byte_keys(&[
        b"k",
        b"k\x00",
        b"k\x00\x00",
        b"kA",
        b"kz",
        b"k\x7f\x80",
        b"k\xff",
    ]);
    assert_eq!(keys(&scanned), expected);
}

pub(crate) fn scan_returns_values(store: &dyn KvStore) {
    put(store, Space::Secrets, b"p/a", b"value-a");
    put(store, Space::Secrets, b"p/b", b"value-b");
    let scanned = store.scan_prefix(Space::Secrets, b"p/", None, 10).unwrap();
    assert_eq!(
        scanned,
        vec![
            (b"p/a".to_vec(), b"value-a".to_vec()),
            (b"p/b".to_vec(), b"value-b".to_vec()),
        ]
    );
}

pub(crate) fn scan_stops_at_prefix_boundary(store: &dyn KvStore) {
    let all: [&[u8]; 8] = [
        b"user1",
        b"user1/a",
        b"user10/b",
        b"user1\xff",
        b"user2/a",
        b"user0/z",
        b"user",
        b"\x01\xff\x00",
    ];
    for key in all {
        put(store, Space::Definitions, key, b"v");
    }

    let scanned = store
        .scan_prefix(Space::Definitions, b"user1/", None, 100)
        .unwrap();
    assert_eq!(keys(&scanned), byte_keys(&[b"user1/a"]));

    // A byte prefix also matches a longer component that starts with it.
    let scanned = store
        .scan_prefix(Space::Definitions, b"user1", None, 100)
        .unwrap();
    assert_eq!(
        keys(&scanned),
        byte_keys(&[b"user1", b"user1/a", b"user10/b", b"user1\xff"])
    );

    let scanned = store
        .scan_prefix(Space::Definitions, b"\x01\xff", None, 100)
        .unwrap();
    assert_eq!(keys(&scanned), byte_keys(&[b"\x01\xff\x00"]));

    let scanned = store
        .scan_prefix(Space::Definitions, b"nobody", None, 100)
        .unwrap();
    assert!(scanned.is_empty());

    let scanned = store
        .scan_prefix(Space::Definitions, b"", None, 100)
        .unwrap();
    assert_eq!(scanned.len(), all.len());
}

pub(crate) fn scan_starts_strictly_after(store: &dyn KvStore) {
    for key in [b"p/a", b"p/c", b"p/e", b"q/a"] {
        put(store, Space::Secrets, key, b"v");
    }

    let scanned = store
        .scan_prefix(Space::Secrets, b"p/", Some(b"p/a"), 100)
        .unwrap();
    assert_eq!(
        keys(&scanned),
        byte_keys(&[b"p/c", b"p/e"]),
        "after a stored key"
    );

    let scanned = store
        .scan_prefix(Space::Secrets, b"p/", Some(b"p/b"), 100)
        .unwrap();
    assert_eq!(
        keys(&scanned),
        byte_keys(&[b"p/c", b"p/e"]),
        "after a missing key"
    );

    let scanned = store
        .scan_prefix(Space::Secrets, b"p/", Some(b"a"), 100)
        .unwrap();
    assert_eq!(
        keys(&scanned),
        byte_keys(&[b"p/a", b"p/c", b"p/e"]),
        "after a key before the prefix"
    );

    let scanned = store
        .scan_prefix(Space::Secrets, b"p/", Some(b"p/e"), 100)
        .unwrap();
    assert!(scanned.is_empty(), "after the last key");

    let scanned = store
        .scan_prefix(Space::Secrets, b"p/", Some(b"zzz"), 100)
        .unwrap();
    assert!(scanned.is_empty(), "after a key past the prefix");
}

pub(crate) fn scan_respects_limit(store: &dyn KvStore) {
    for index in 0..10u8 {
        put(store, Space::Secrets, &[b'p', index], b"v");
    }

    assert!(store
        .scan_prefix(Space::Secrets, b"p", None, 0)
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .scan_prefix(Space::Secrets, b"p", None, 1)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        store
            .scan_prefix(Space::Secrets, b"p", None, 3)
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        store
            .scan_prefix(Space::Secrets, b"p", None, 1000)
            .unwrap()
            .len(),
        10
    );
}

pub(crate) fn scan_pages_cover_everything(store: &dyn KvStore) {
    for index in 0..25u8 {
        put(store, Space::SecretMeta, &[b'p', b'/', index], &[index]);
    }

    let mut pages = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    for _ in 0..100 {
        let page = store
            .scan_prefix(Space::SecretMeta, b"p/", after.as_deref(), 7)
            .unwrap();
        let Some((last, _)) = page.last() else {
            break;
        };
        after = Some(last.clone());
        pages.push(page);
    }

    let page_sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(page_sizes, vec![7, 7, 7, 4]);
    let paged: Vec<KeyValue> = pages.into_iter().flatten().collect();
    assert_eq!(
        paged,
        store
            .scan_prefix(Space::SecretMeta, b"p/", None, 100)
            .unwrap()
    );
}
