//! Errors of store implementations.

use std::path::PathBuf;

use super::Space;

/// A failed store operation. Messages name the store, the operation, the space
/// and the backend's own message.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: another process has it open (RocksDB holds its LOCK file); stop that process or use another data folder (RocksDB: {message})")]
    Locked { path: PathBuf, message: String },

    #[error("cannot open the store at {path}: permission denied; make the folder writable by the user running keygate ({message})")]
    PermissionDenied { path: PathBuf, message: String },

    #[error("cannot open the store at {path}: {message}")]
    Open { path: PathBuf, message: String },

    #[error("{store}: {operation}{} failed: {message}{}", space_suffix(space), retry_hint(*retryable))]
    Operation {
        /// The store, such as `RocksDB at /var/lib/keygate/db`.
        store: String,
        /// `get`, `scan`, `write` or `flush`.
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
            | StoreError::Open { .. } => false,
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
