//! Errors returned by the vault, and their classification for the HTTP layer.

use std::path::PathBuf;

use crate::ids::ProjectRef;
use crate::store::{Space, StoreError};

/// Every way a vault operation can fail. No message contains a secret value or
/// key bytes. Secret names, ids and locations are not secret and do appear.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(
        "invalid secret name {}: {reason} (allowed: {})",
        shown(value),
        crate::ids::SECRET_NAME_RULE
    )]
    InvalidName { value: String, reason: String },

    #[error(
        "invalid account id {}: {reason} (allowed: {})",
        shown(value),
        crate::ids::ID_RULE
    )]
    InvalidAccount { value: String, reason: String },

    #[error(
        "invalid project id {}: {reason} (allowed: {})",
        shown(value),
        crate::ids::ID_RULE
    )]
    InvalidProject { value: String, reason: String },

    #[error(
        "invalid secret location: field `{field}` = {}: {reason}",
        shown(value)
    )]
    InvalidLocation {
        field: &'static str,
        value: String,
        reason: String,
    },

    #[error("secret {name:?} not found in project {project}")]
    SecretNotFound { project: ProjectRef, name: String },

    #[error("version {version} of secret {name:?} not found in project {project} (latest version is {latest})")]
    VersionNotFound {
        project: ProjectRef,
        name: String,
        version: u32,
        latest: u32,
    },

    #[error("version {version} of secret {name:?} in project {project} is deleted (at {deleted_at_ms} ms since the Unix epoch); undelete it or read another version")]
    VersionDeleted {
        project: ProjectRef,
        name: String,
        version: u32,
        deleted_at_ms: u64,
    },

    #[error("version {version} of secret {name:?} in project {project} is destroyed; its value is gone for good")]
    VersionDestroyed {
        project: ProjectRef,
        name: String,
        version: u32,
    },

    #[error("check-and-set failed for secret {name:?} in project {project}: the write expected current version {expected}{}, but the current version is {current}{}; read the secret again and retry with cas={current}", if *expected == 0 { " (a new secret)" } else { "" }, if *current == 0 { " (it does not exist)" } else { "" })]
    CasMismatch {
        project: ProjectRef,
        name: String,
        expected: u32,
        current: u32,
    },

    #[error("invalid {field} {}: {reason}", shown(value))]
    InvalidSetting {
        field: &'static str,
        value: String,
        reason: String,
    },

    #[error("secret definition {name:?} not found in project {project}")]
    DefinitionNotFound { project: ProjectRef, name: String },

    #[error("secret value is {size} bytes, larger than the maximum of {max} bytes")]
    ValueTooLarge { size: usize, max: usize },

    #[error("the value of secret {secret:?} is not a JSON object, so a JSON key cannot be looked up in it")]
    ValueNotJsonObject { secret: String },

    #[error("JSON key {key:?} not found in the value of secret {secret:?}")]
    JsonKeyNotFound { secret: String, key: String },

    #[error("secret definition {definition:?} uses provider `{provider}`, which the vault does not read; the gateway resolves it through a connection")]
    ProviderNotSupported {
        provider: &'static str,
        definition: String,
    },

    #[error("failed to decrypt version {version} of secret {name:?} in project {account}/{project}: the stored record does not match its location (it was altered, or copied from another secret, version or project)")]
    Decrypt {
        account: String,
        project: String,
        name: String,
        version: u32,
    },

    #[error("failed to decrypt data key version {version} of project {account}/{project}: the stored key does not match its location, or the master key is wrong")]
    DataKeyDecrypt {
        account: String,
        project: String,
        version: u32,
    },

    #[error("master key{}: {reason}", master_key_source(path))]
    MasterKey {
        path: Option<PathBuf>,
        reason: String,
    },

    #[error("corrupt record in space `{space}` at key {key_hex}: {reason}")]
    Corrupt {
        space: Space,
        key_hex: String,
        reason: String,
    },

    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The class of a [`VaultError`], so the HTTP layer picks a status in one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request carried an invalid name, id, location or value.
    InvalidInput,
    /// The secret, version, definition or JSON key does not exist.
    NotFound,
    /// The request is valid but needs a feature that keygate does not have yet.
    NotSupported,
    /// The request conflicts with the current state, such as a check-and-set
    /// mismatch; nothing was changed.
    Conflict,
    /// Storage failed, stored data is unreadable, or the keys are wrong.
    Internal,
}

impl VaultError {
    /// Returns the class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            VaultError::InvalidName { .. }
            | VaultError::InvalidAccount { .. }
            | VaultError::InvalidProject { .. }
            | VaultError::InvalidLocation { .. }
            | VaultError::ValueTooLarge { .. }
            | VaultError::InvalidSetting { .. }
            | VaultError::ValueNotJsonObject { .. } => ErrorKind::InvalidInput,
            VaultError::CasMismatch { .. } => ErrorKind::Conflict,
            VaultError::SecretNotFound { .. }
            | VaultError::VersionNotFound { .. }
            | VaultError::VersionDeleted { .. }
            | VaultError::VersionDestroyed { .. }
            | VaultError::DefinitionNotFound { .. }
            | VaultError::JsonKeyNotFound { .. } => ErrorKind::NotFound,
            VaultError::ProviderNotSupported { .. } => ErrorKind::NotSupported,
            VaultError::Decrypt { .. }
            | VaultError::DataKeyDecrypt { .. }
            | VaultError::MasterKey { .. }
            | VaultError::Corrupt { .. }
            | VaultError::Store(_) => ErrorKind::Internal,
        }
    }

    /// Returns whether repeating the same call may succeed. Only some storage
    /// failures (a busy or timed-out backend) are retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            VaultError::Store(error) => error.is_retryable(),
            _ => false,
        }
    }

    pub(crate) fn corrupt(space: Space, key: &[u8], reason: impl Into<String>) -> VaultError {
        VaultError::Corrupt {
            space,
            key_hex: hex(key),
            reason: reason.into(),
        }
    }
}

/// Maximum length, in characters, of an input that an error message quotes in full.
const MAX_SHOWN_CHARS: usize = 80;

/// Quotes a rejected input for an error message, cutting inputs longer than
/// [`MAX_SHOWN_CHARS`] so that a huge request does not produce a huge message.
fn shown(value: &str) -> String {
    if value.chars().count() <= MAX_SHOWN_CHARS {
        return format!("{value:?}");
    }
    let head: String = value.chars().take(MAX_SHOWN_CHARS).collect();
    format!("{head:?}... ({} bytes in all)", value.len())
}

fn master_key_source(path: &Option<PathBuf>) -> String {
    match path {
        Some(path) => format!(" file {}", path.display()),
        None => String::new(),
    }
}

/// Lowercase hexadecimal text of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

#[cfg(test)]
mod tests;
