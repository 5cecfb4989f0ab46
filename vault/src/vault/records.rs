//! The records that vault methods return and store as JSON.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::keys::SecretValue;
use crate::location::SecretLocation;

/// A hosted secret's metadata. It never contains a value.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SecretMetadata {
    pub name: String,
    /// The newest version. Versions are numbered 1, 2, 3 and so on, and a
    /// number is never reused for the same name while the secret exists.
    #[serde(alias = "version")]
    pub current_version: u32,
    /// The oldest version still kept (in any state); older ones were purged.
    #[serde(default = "one")]
    pub oldest_version: u32,
    /// When version 1 was stored, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// When the metadata or a version last changed, in milliseconds since the Unix epoch.
    pub updated_at_ms: u64,
    /// The maximum number of versions set on this secret; `None` uses the vault's default.
    #[serde(default)]
    pub max_versions: Option<u32>,
    /// The maximum number of versions in force: `max_versions`, or the
    /// vault's default. Filled in when the metadata is read.
    #[serde(default)]
    pub max_versions_in_force: u32,
    /// Free-form key-value metadata set by the owner; never secret.
    #[serde(default)]
    pub custom_metadata: BTreeMap<String, String>,
    /// Every kept version by number, oldest first.
    #[serde(default)]
    pub versions: BTreeMap<u32, VersionInfo>,
}

fn one() -> u32 {
    1
}

/// The state of one version of a hosted secret.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VersionInfo {
    /// When the version was written, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// When the version was soft-deleted; `None` while it is readable. An
    /// undelete clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at_ms: Option<u64>,
    /// True once the ciphertext was removed for good.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub destroyed: bool,
}

impl VersionInfo {
    /// Returns the version's state as one word: `active`, `deleted` or `destroyed`.
    pub fn state(&self) -> &'static str {
        if self.destroyed {
            "destroyed"
        } else if self.deleted_at_ms.is_some() {
            "deleted"
        } else {
            "active"
        }
    }
}

/// The result of a secret write: the version written and the metadata
/// after the write.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct WrittenVersion {
    pub name: String,
    pub version: u32,
    pub created_at_ms: u64,
    /// Versions purged by this write because the secret had more than its maximum.
    pub purged_versions: Vec<u32>,
    pub metadata: SecretMetadata,
}

/// Options of a secret write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Check-and-set: the write succeeds only if the secret's current version
    /// is this one; `Some(0)` requires that the secret does not exist.
    pub cas: Option<u32>,
}

/// A change to a secret's settings; `None` fields stay as they are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetadataUpdate {
    /// `Some(None)` goes back to the vault's default; `Some(Some(n))` sets `n`.
    pub max_versions: Option<Option<u32>>,
    /// Replaces the whole custom metadata map.
    pub custom_metadata: Option<BTreeMap<String, String>>,
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
pub struct Resolved {
    pub value: SecretValue,
    /// Name of the definition that was resolved.
    pub definition: String,
    /// Version of the hosted secret that was read; `None` for sources without versions.
    pub source_version: Option<u32>,
    /// The definition's location when the value was read.
    pub location: SecretLocation,
}

impl fmt::Debug for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolved")
            .field(
                "value",
                &format_args!("REDACTED, {} bytes", self.value.len()),
            )
            .field("definition", &self.definition)
            .field("source_version", &self.source_version)
            .field("location", &self.location)
            .finish()
    }
}

/// One data-key version of a project, without the key.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DataKeyInfo {
    pub version: u32,
    /// True for the version that encrypts new writes.
    pub current: bool,
}

/// A project's data keys: the versions, the current one, and how many
/// encryptions the current one has done.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DataKeyStatus {
    pub versions: Vec<DataKeyInfo>,
    pub current_version: u32,
    pub current_encryptions: u64,
    /// Encryptions after which the current key is replaced automatically.
    pub max_encryptions: u64,
}

/// The counts of records a master-key rotation re-sealed.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct MasterRotation {
    /// The new master-key version.
    pub version: u32,
    /// Data keys re-sealed under the new master key.
    pub data_keys: usize,
    /// Server secrets (such as the token signing keys) re-sealed.
    pub system_secrets: usize,
}

/// The counts of records a project deletion removed.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, Default)]
pub struct ProjectDeletion {
    pub data_keys: usize,
    pub secret_versions: usize,
    pub secrets: usize,
    pub definitions: usize,
}

/// Progress of the re-encryption of old ciphertexts under current data keys.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ReencryptProgress {
    /// Secret versions looked at so far.
    pub scanned: u64,
    /// Versions re-sealed under their project's current data key.
    pub rewritten: u64,
    /// Secret versions in the store when the job started (an estimate once writes continue).
    pub total: u64,
    /// True when the whole store was scanned.
    pub done: bool,
    /// The `secrets` key after which the next step starts, in lowercase
    /// hexadecimal. It is empty before the first step.
    pub cursor_hex: String,
    pub started_at_ms: u64,
    pub updated_at_ms: u64,
}
