//! The records that vault methods return and store as JSON.

use serde::{Deserialize, Serialize};

use crate::keys::SecretValue;
use crate::location::SecretLocation;

/// A hosted secret's metadata. It never contains the value.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SecretMetadata {
    pub name: String,
    /// The latest version. Versions are numbered 1, 2, 3 and so on.
    pub version: u32,
    /// When version 1 was stored, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// When the latest version was stored, in milliseconds since the Unix epoch.
    pub updated_at_ms: u64,
}

/// A named pointer to a secret value, hosted here or at an external provider.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SecretDefinition {
    pub name: String,
    pub location: SecretLocation,
    /// When the definition was first stored, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// When the definition was last replaced, in milliseconds since the Unix epoch.
    pub updated_at_ms: u64,
}

/// A resolved definition. `Debug` shows the value's length only.
#[derive(Debug)]
pub struct Resolved {
    pub value: SecretValue,
    /// Name of the definition that was resolved.
    pub definition: String,
    /// Version of the hosted secret that was read; `None` for sources without versions.
    pub source_version: Option<u32>,
}
