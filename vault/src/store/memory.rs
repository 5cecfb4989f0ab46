//! An in-memory [`KvStore`] on ordered maps, for tests and as a second
//! implementation that the conformance suite compares with RocksDB.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::sync::RwLock;

use super::{BatchOp, KeyValue, KvStore, Space, StoreError, WriteBatch};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// A store that keeps everything in memory and loses it on drop. Writes are
/// atomic because one lock covers all spaces.
#[derive(Default)]
pub struct MemStore {
    spaces: RwLock<[Map; Space::ALL.len()]>,
}

impl MemStore {
    pub fn new() -> Self {
        MemStore::default()
    }
}

impl KvStore for MemStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let spaces = self
            .spaces
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(spaces[space.index()].get(key).cloned())
    }

    fn scan_prefix(
        &self,
        space: Space,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let lower = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let spaces = self
            .spaces
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entries = spaces[space.index()]
            .range::<[u8], _>((lower, Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .take(limit)
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        Ok(entries)
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        // A poisoned lock is safe to reuse, because no code that holds it can
        // panic between two operations of a batch.
        let mut spaces = self
            .spaces
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for op in batch.into_ops() {
            match op {
                BatchOp::Put { space, key, value } => {
                    spaces[space.index()].insert(key, value);
                }
                BatchOp::Delete { space, key } => {
                    spaces[space.index()].remove(&key);
                }
            }
        }
        Ok(())
    }
}

impl fmt::Debug for MemStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let spaces = self
            .spaces
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entries: usize = spaces.iter().map(BTreeMap::len).sum();
        write!(f, "MemStore({entries} entries)")
    }
}
