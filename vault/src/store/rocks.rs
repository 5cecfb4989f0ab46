//! The RocksDB [`KvStore`]: one column family per [`Space`], synced writes and
//! no compression, because stored values are mostly ciphertext.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, Direction, FlushOptions, IteratorMode,
    Options, WriteOptions, DB,
};

use super::{BatchOp, KeyValue, KvStore, Space, StoreError, WriteBatch};

/// A RocksDB database in one folder. Only one process, and only one
/// `RocksStore` within a process, can have a folder open at a time.
pub struct RocksStore {
    db: DB,
    path: PathBuf,
    write_options: WriteOptions,
}

impl RocksStore {
    /// Opens the database in `path`, creating the folder, the database and any
    /// missing column family.
    ///
    /// Fails with [`StoreError::Locked`] when another process (or another
    /// `RocksStore` in this process) has the folder open, and with
    /// [`StoreError::PermissionDenied`] when the folder is not writable.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(path).map_err(|e| open_io_error(path, e))?;

        let mut options = column_family_options();
        options.create_if_missing(true);
        options.create_missing_column_families(true);

        let mut names: Vec<String> = Space::ALL
            .iter()
            .map(|space| space.name().to_owned())
            .collect();
        // RocksDB fails to open a database unless every column family in it is
        // named, so families unknown to this version are opened too, unused.
        if let Ok(existing) = DB::list_cf(&options, path) {
            for name in existing {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        let descriptors = names
            .into_iter()
            .map(|name| ColumnFamilyDescriptor::new(name, column_family_options()));
        let db = DB::open_cf_descriptors(&options, path, descriptors)
            .map_err(|e| open_error(path, e))?;

        let mut write_options = WriteOptions::default();
        write_options.set_sync(true);
        tracing::info!(path = %path.display(), "opened RocksDB store");
        Ok(RocksStore {
            db,
            path: path.to_owned(),
            write_options,
        })
    }

    /// Opens an existing database for reading only, without taking its lock,
    /// so a command can read while the server runs. It reads the data as of
    /// opening, and every write fails.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let options = column_family_options();
        let names = DB::list_cf(&options, path).map_err(|e| open_error(path, e))?;
        let descriptors = names
            .into_iter()
            .map(|name| ColumnFamilyDescriptor::new(name, column_family_options()));
        let db = DB::open_cf_descriptors_read_only(&options, path, descriptors, false)
            .map_err(|e| open_error(path, e))?;
        Ok(RocksStore {
            db,
            path: path.to_owned(),
            write_options: WriteOptions::default(),
        })
    }

    /// Returns the folder of the database.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the memtables of every column family to SST files and waits for
    /// that to finish. Writes are durable without it, through the synced WAL.
    pub fn flush(&self) -> Result<(), StoreError> {
        let handles = Space::ALL
            .iter()
            .map(|space| self.handle(*space, "flush"))
            .collect::<Result<Vec<_>, _>>()?;
        let mut flush_options = FlushOptions::default();
        flush_options.set_wait(true);
        self.db
            .flush_cfs_opt(&handles, &flush_options)
            .map_err(|e| self.operation_error("flush", None, e))
    }

    fn handle(&self, space: Space, operation: &'static str) -> Result<&ColumnFamily, StoreError> {
        self.db
            .cf_handle(space.name())
            .ok_or_else(|| StoreError::Operation {
                store: self.describe(),
                operation,
                space: Some(space),
                message: "column family is missing".to_owned(),
                retryable: false,
            })
    }

    fn describe(&self) -> String {
        format!("RocksDB at {}", self.path.display())
    }

    fn operation_error(
        &self,
        operation: &'static str,
        space: Option<Space>,
        error: rocksdb::Error,
    ) -> StoreError {
        let retryable = matches!(
            error.kind(),
            rocksdb::ErrorKind::Busy | rocksdb::ErrorKind::TryAgain | rocksdb::ErrorKind::TimedOut
        );
        StoreError::Operation {
            store: self.describe(),
            operation,
            space,
            message: error.into_string(),
            retryable,
        }
    }
}

impl KvStore for RocksStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let handle = self.handle(space, "get")?;
        self.db
            .get_cf(handle, key)
            .map_err(|e| self.operation_error("get", Some(space), e))
    }

    fn scan_prefix(
        &self,
        space: Space,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let mut entries = Vec::new();
        if limit == 0 {
            return Ok(entries);
        }
        let handle = self.handle(space, "scan")?;
        let seek_to = match start_after {
            Some(after) if after >= prefix => after,
            _ => prefix,
        };
        let iterator = self
            .db
            .iterator_cf(handle, IteratorMode::From(seek_to, Direction::Forward));
        for item in iterator {
            let (key, value) = item.map_err(|e| self.operation_error("scan", Some(space), e))?;
            if !key.starts_with(prefix) {
                break;
            }
            if start_after == Some(&key[..]) {
                continue;
            }
            entries.push((key.into_vec(), value.into_vec()));
            if entries.len() == limit {
                break;
            }
        }
        Ok(entries)
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut rocks_batch = rocksdb::WriteBatch::default();
        for op in batch.into_ops() {
            match op {
                BatchOp::Put { space, key, value } => {
                    rocks_batch.put_cf(self.handle(space, "write")?, key, value)
                }
                BatchOp::Delete { space, key } => {
                    rocks_batch.delete_cf(self.handle(space, "write")?, key)
                }
            }
        }
        self.db
            .write_opt(rocks_batch, &self.write_options)
            .map_err(|e| self.operation_error("write", None, e))
    }
}

impl fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Options for the database and for each column family: no compression at any
/// level, because ciphertext does not compress.
fn column_family_options() -> Options {
    let mut options = Options::default();
    options.set_compression_type(DBCompressionType::None);
    options.set_bottommost_compression_type(DBCompressionType::None);
    options.set_wal_compression_type(DBCompressionType::None);
    options
}

fn open_io_error(path: &Path, error: io::Error) -> StoreError {
    match error.kind() {
        io::ErrorKind::PermissionDenied => StoreError::PermissionDenied {
            path: path.to_owned(),
            message: format!("cannot create the folder: {error}"),
        },
        _ => StoreError::Open {
            path: path.to_owned(),
            message: format!("cannot create the folder: {error}"),
        },
    }
}

/// Classifies an open failure from RocksDB's message, which is the only
/// detail its C API exposes.
fn open_error(path: &Path, error: rocksdb::Error) -> StoreError {
    let message = error.into_string();
    let path = path.to_owned();
    if message.contains("Permission denied") {
        StoreError::PermissionDenied { path, message }
    } else if message.contains("/LOCK:") || message.contains("lock hold by current process") {
        StoreError::Locked { path, message }
    } else {
        StoreError::Open { path, message }
    }
}
