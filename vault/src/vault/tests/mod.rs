//! Tests of the vault API, on the in-memory store unless the test is about disk.

use std::sync::Arc;

use crate::ids::ProjectRef;
use crate::keys::{MasterKey, SecretValue};
use crate::store::memory::MemStore;
use crate::store::{KvStore, Space, WriteBatch};

use super::Vault;

mod binding;
mod concurrency;
mod definitions;
mod disk;
mod keyring;
mod listing;
mod master_check;
mod secrets;
mod versions;

fn memory_vault() -> Vault {
    Vault::new(Arc::new(MemStore::new()), MasterKey::generate())
}

fn project() -> ProjectRef {
    ProjectRef::new("acme", "prod").unwrap()
}

fn text(value: &str) -> SecretValue {
    SecretValue::from_bytes(value.as_bytes())
}

/// Writes one raw entry, bypassing the vault, to simulate tampering.
fn raw_put(store: &dyn KvStore, space: Space, key: Vec<u8>, value: Vec<u8>) {
    let mut batch = WriteBatch::default();
    batch.put(space, key, value);
    store.write(batch).unwrap();
}
