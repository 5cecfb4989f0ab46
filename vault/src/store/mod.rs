//! The storage interface: ordered key-value spaces with atomic, durable batch
//! writes. The interface does not depend on RocksDB, and [`rocks`] implements
//! it on RocksDB.

use std::fmt;

mod batch;
mod error;
pub mod memory;
pub mod rocks;

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod tests;

pub use batch::{BatchOp, WriteBatch};
pub use error::StoreError;

/// One entry returned by [`KvStore::scan_prefix`]: a key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// A separate key space. RocksDB stores each in its own column family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Space {
    /// Agent records, written by the gateway.
    Agents,
    /// Per-project data keys, sealed by the master key.
    DataKeys,
    /// Sealed secret values, one record per version.
    Secrets,
    /// Secret metadata: name, latest version and times.
    SecretMeta,
    /// Secret definitions.
    Definitions,
    /// Store-wide records, such as the master-key check.
    Meta,
    /// Audit records of vault accesses, keyed by sequence number.
    Audit,
    /// Tasks accepted by the gateway and their state, written by the gateway.
    Tasks,
    /// Accounts' connections to external secret managers, written by the gateway.
    Connections,
}

impl Space {
    /// Every space, in a fixed order.
    pub const ALL: [Space; 9] = [
        Space::Agents,
        Space::DataKeys,
        Space::Secrets,
        Space::SecretMeta,
        Space::Definitions,
        Space::Meta,
        Space::Audit,
        Space::Tasks,
        Space::Connections,
    ];

    /// Returns the space's name, which is also its RocksDB column family name.
    pub fn name(self) -> &'static str {
        match self {
            Space::Agents => "agents",
            Space::DataKeys => "data_keys",
            Space::Secrets => "secrets",
            Space::SecretMeta => "secret_meta",
            Space::Definitions => "definitions",
            Space::Meta => "meta",
            Space::Audit => "audit",
            Space::Tasks => "tasks",
            Space::Connections => "connections",
        }
    }

    /// Position of the space in [`Space::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Space {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An ordered key-value store divided into [`Space`]s.
///
/// Keys and values are arbitrary bytes. Keys sort in unsigned byte order.
pub trait KvStore: Send + Sync + 'static {
    /// Returns the value stored under `key`, or `None`.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Keys starting with `prefix`, in byte order, strictly after `start_after` when given, at most `limit`.
    ///
    /// A `start_after` that sorts before `prefix` starts the scan at `prefix`.
    /// A `limit` of 0 returns nothing.
    fn scan_prefix(
        &self,
        space: Space,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError>;

    /// Applies all operations atomically and durably (fsync'd WAL) before returning.
    ///
    /// Operations apply in order, so a later operation on a key replaces an
    /// earlier one in the same batch.
    fn write(&self, batch: WriteBatch) -> Result<(), StoreError>;

    /// Applies all operations atomically, like [`KvStore::write`], but returns
    /// once they are in the write-ahead log, without waiting for the disk. A
    /// killed process keeps them; a power loss may lose them until the next
    /// synced write or [`KvStore::sync`]. Stores without that distinction
    /// write synced.
    fn write_unsynced(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.write(batch)
    }

    /// Makes every earlier write durable on disk.
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
