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
    /// Options of [`KvStore::write_unsynced`]: the WAL is written but not synced.
    unsynced_write_options: WriteOptions,
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
            unsynced_write_options: WriteOptions::default(),
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
            unsynced_write_options: WriteOptions::default(),
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

    /// Writes a consistent copy of the whole database into `target`, a
    /// folder that must not exist yet and whose parent must exist.
    ///
    /// RocksDB flushes the memtables first and hard-links the SST files when
    /// `target` is on the same file system as the database, copying them
    /// otherwise. The copy opens as a database of its own, and writes that
    /// finish during the call may or may not be in it.
    pub fn checkpoint(&self, target: &Path) -> Result<(), StoreError> {
        let checkpoint = rocksdb::checkpoint::Checkpoint::new(&self.db)
            .map_err(|e| self.operation_error("checkpoint", None, e))?;
        checkpoint
            .create_checkpoint(target)
            .map_err(|e| self.operation_error("checkpoint", None, e))?;
        tracing::info!(
            path = %self.path.display(),
            target = %target.display(),
            "wrote RocksDB checkpoint"
        );
        Ok(())
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
        let kind = error.kind();
        let retryable = matches!(
            kind,
            rocksdb::ErrorKind::Busy | rocksdb::ErrorKind::TryAgain | rocksdb::ErrorKind::TimedOut
        );
        let message = error.into_string();
        let condition = match file_system_condition(&message) {
            Some(condition) => Some(condition),
            // After a failed WAL append, RocksDB repeats the first error to
            // every later write. On a file system that the kernel turned
            // read-only after a disk error, that first error is EIO, so the
            // folder itself is checked.
            None if kind == rocksdb::ErrorKind::IOError && operation != "get" => {
                probe_file_system(&self.path)
            }
            None => None,
        };
        match condition {
            Some(FileSystemCondition::Full) => StoreError::NoSpace {
                store: self.describe(),
                path: self.path.clone(),
                operation,
                message,
            },
            Some(FileSystemCondition::ReadOnly) => StoreError::ReadOnly {
                store: self.describe(),
                path: self.path.clone(),
                operation,
                message,
            },
            None => StoreError::Operation {
                store: self.describe(),
                operation,
                space,
                message,
                retryable,
            },
        }
    }
}

/// A file system state that makes writes fail for every caller until an
/// operator acts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FileSystemCondition {
    Full,
    ReadOnly,
}

/// Recognizes ENOSPC and EROFS in a RocksDB message, which carries the
/// operating system's text for the error (`strerror`).
fn file_system_condition(message: &str) -> Option<FileSystemCondition> {
    if message.contains("No space left on device") {
        Some(FileSystemCondition::Full)
    } else if message.contains("Read-only file system") {
        Some(FileSystemCondition::ReadOnly)
    } else {
        None
    }
}

/// Name of the empty file that [`probe_file_system`] creates and removes.
const PROBE_FILE: &str = "keygate-write-probe";

/// Creates and removes an empty file in `folder` to learn whether its file
/// system is read-only or full. Returns `None` when the probe succeeds or
/// fails for another reason.
fn probe_file_system(folder: &Path) -> Option<FileSystemCondition> {
    let probe = folder.join(PROBE_FILE);
    let result = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe);
    match result {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
            None
        }
        Err(error) => match error.kind() {
            io::ErrorKind::ReadOnlyFilesystem => Some(FileSystemCondition::ReadOnly),
            io::ErrorKind::StorageFull => Some(FileSystemCondition::Full),
            _ => None,
        },
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
        self.write_with(batch, &self.write_options)
    }

    fn write_unsynced(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.write_with(batch, &self.unsynced_write_options)
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db
            .flush_wal(true)
            .map_err(|e| self.operation_error("sync", None, e))
    }
}

impl RocksStore {
    fn write_with(&self, batch: WriteBatch, options: &WriteOptions) -> Result<(), StoreError> {
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
            .write_opt(rocks_batch, options)
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
        io::ErrorKind::ReadOnlyFilesystem => StoreError::ReadOnly {
            store: format!("RocksDB at {}", path.display()),
            path: path.to_owned(),
            operation: "open",
            message: format!("cannot create the folder: {error}"),
        },
        io::ErrorKind::StorageFull => StoreError::NoSpace {
            store: format!("RocksDB at {}", path.display()),
            path: path.to_owned(),
            operation: "open",
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
    let store = format!("RocksDB at {}", path.display());
    let path = path.to_owned();
    if let Some(condition) = file_system_condition(&message) {
        return match condition {
            FileSystemCondition::Full => StoreError::NoSpace {
                store,
                path,
                operation: "open",
                message,
            },
            FileSystemCondition::ReadOnly => StoreError::ReadOnly {
                store,
                path,
                operation: "open",
                message,
            },
        };
    }
    if message.contains("Permission denied") {
        StoreError::PermissionDenied { path, message }
    } else if message.contains("/LOCK:") || message.contains("lock hold by current process") {
        StoreError::Locked { path, message }
    } else {
        StoreError::Open { path, message }
    }
}

#[cfg(test)]
mod condition_tests {
    use super::*;

    #[test]
    fn os_error_texts_map_to_conditions() {
        let cases = [
            (
                "IO error: No space left on device: While appending to file: /data/db/000004.log: No space left on device",
                Some(FileSystemCondition::Full),
            ),
            (
                "IO error: While open a file for lock: /data/db/LOCK: Read-only file system",
                Some(FileSystemCondition::ReadOnly),
            ),
            (
                "IO error: While appending to file: /data/db/000004.log: Input/output error",
                None,
            ),
            ("Corruption: block checksum mismatch", None),
        ];
        for (message, expected) in cases {
            assert_eq!(file_system_condition(message), expected, "{message}");
        }
    }

    #[test]
    fn probe_of_writable_folder_finds_nothing() {
        let dir = tempfile::TempDir::new().unwrap();
        assert_eq!(probe_file_system(dir.path()), None);
        assert!(
            !dir.path().join(PROBE_FILE).exists(),
            "the probe removes its file"
        );
    }
}
