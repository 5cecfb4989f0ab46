//! Errors of store implementations.

use std::path::PathBuf;

use super::Space;

/// A failed store operation. Messages name the store, the operation, the space
/// and the backend's own message.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: another process has it open (RocksDB holds its LOCK file); stop that process or use another data folder (RocksDB: {message})")]
    Locked { path: PathBuf, message: String },

    #[error("cannot open the store at {path}: permission denied; make the folder writable by the user running keygate ({message})")]
    PermissionDenied { path: PathBuf, message: String },

    #[error("cannot open the store at {path}: {message}")]
    Open { path: PathBuf, message: String },

    /// The file system holding the store has no space left. Data already
    /// stored stays readable. RocksDB (11.8) checks the free space about every
    /// 5 seconds and takes writes again once it reaches the write buffer size
    /// (64 MiB by default).
    #[error("{store}: {operation} failed: no space left on the file system holding {path}; free space there (writes resume on their own once 64 MiB are free, and stored data stays readable) (backend: {message})")]
    NoSpace {
        store: String,
        path: PathBuf,
        operation: &'static str,
        message: String,
    },

    /// The file system holding the store is read-only, for example because
    /// the kernel remounted it after a disk error. Data already stored stays
    /// readable, but writes fail until keygate restarts on a writable folder.
    #[error("{store}: {operation} failed: the file system holding {path} is read-only; make it writable (check the kernel log for the disk error that caused it), then restart keygate; stored data stays readable until then (backend: {message})")]
    ReadOnly {
        store: String,
        path: PathBuf,
        operation: &'static str,
        message: String,
    },

    #[error("{store}: {operation}{} failed: {message}{}", space_suffix(space), retry_hint(*retryable))]
    Operation {
        /// The store, such as `RocksDB at /var/lib/keygate/db`.
        store: String,
        /// `get`, `scan`, `write`, `flush` or `checkpoint`.
        operation: &'static str,
        /// The space of a single-space operation; `None` for a batch write or a flush.
        space: Option<Space>,
        /// The backend's message.
        message: String,
        /// Whether the backend reported a transient condition (busy, timed
        /// out, try again), so that repeating the operation may succeed.
        retryable: bool,
    },
}

impl StoreError {
    /// Returns whether repeating the failed operation may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Operation { retryable, .. } => *retryable,
            StoreError::Locked { .. }
            | StoreError::PermissionDenied { .. }
            | StoreError::Open { .. }
            | StoreError::NoSpace { .. }
            | StoreError::ReadOnly { .. } => false,
        }
    }
}

fn space_suffix(space: &Option<Space>) -> String {
    match space {
        Some(space) => format!(" in space `{space}`"),
        None => String::new(),
    }
}

fn retry_hint(retryable: bool) -> &'static str {
    if retryable {
        " (transient: a retry may succeed)"
    } else {
        ""
    }
}
