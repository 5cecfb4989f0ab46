//! The stored layout: what each column family holds, under which key, and what
//! encrypts it.
//!
//! # Keys
//!
//! `lp(x)` is a length-prefixed component: the byte length of `x` as a u16
//! big-endian, then the bytes of `x`. Because each component states its
//! length, components containing any bytes cannot run into each other. `P` is
//! the project prefix `lp(account) lp(project)`. Versions are u32 big-endian,
//! so they sort numerically.
//!
//! A name that ends a key is stored raw, without a length prefix. Nothing
//! follows it, so it cannot be confused with another component, and the keys
//! of a project then sort in the byte order of the names, which is the order
//! that listings return.
//!
//! | column family | key | value |
//! |---|---|---|
//! | `data_keys` | `P` version | sealed record of the project's 32-byte data key; key version = the master-key version that sealed it |
//! | `secrets` | `P` `lp(name)` version | sealed record of one version of a secret value; key version = the data-key version that sealed it. Absent once the version is destroyed or purged |
//! | `secret_meta` | `P` name | JSON of a `SecretMetadata`: current and oldest version, times, `max_versions`, custom metadata, and each kept version's state; not encrypted |
//! | `definitions` | `P` name | JSON of a `SecretDefinition`: name, location, created and updated times; not encrypted |
//! | `meta` | `master_key_check` | sealed record of an empty plaintext; key version = the master-key version in use |
//! | `meta` | `data_key_state/` `P` | JSON `{"current_version", "encryptions"}`: the data key that seals new values and how many it has sealed |
//! | `meta` | `system/` name | sealed record of a server secret such as the token signing keys; key version = master-key version |
//! | `meta` | `reencrypt_progress` | JSON of a `ReencryptProgress`: the re-encryption job's cursor and counts |
//! | `meta` | `audit_head` | JSON `{"seq", "hash"}` of the last audit record, written in the same batch as the records |
//! | `audit` | sequence number, u64 big-endian | JSON of one audit record (see below); not encrypted |
//! | `agents` | written by the gateway, not by this crate | |
//! | `tasks` | written by the gateway, not by this crate | |
//! | `connections` | written by the gateway, not by this crate: `lp(account)` name → JSON of a connection, whose credentials are names of hosted secrets | |
//!
//! Secret and definition names, account and project ids, and the locations in
//! definitions are stored in plain text. Secret values and data keys are
//! stored only inside sealed records.
//!
//! # Audit records
//!
//! One JSON object per vault access, with the fields `seq` (from 1, without
//! gaps), `time_ms`, `request_id`, `actor`, `account`, `project`, `secret`,
//! `version`, `operation`, `outcome`, `details` (left out when empty),
//! `prev_hash` and `hash`. It never contains a secret value. `hash` is the
//! hex SHA-256 of the 32 bytes of `prev_hash` followed by the canonical bytes
//! that [`crate::audit::AuditRecord::canonical_bytes`] describes, and record
//! 1 links to 32 zero bytes. The optional JSON-lines file contains the same
//! objects, one per line. The system secret `audit_hmac_key` is the 32-byte
//! key of the HMACs that records carry in place of sensitive strings.
//!
//! # Sealed records
//!
//! | offset | length | field |
//! |---|---|---|
//! | 0 | 1 | format, currently 1 |
//! | 1 | 4 | key version, u32 big-endian |
//! | 5 | 12 | random nonce |
//! | 17 | n | AES-256-GCM ciphertext of the n-byte plaintext |
//! | 17 + n | 16 | GCM tag |
//!
//! The associated data (AAD) names the record's location, so a record copied
//! to another key fails to decrypt:
//!
//! - data key: `lp("keygate/data-key/v1") lp(account) lp(project) version`
//! - secret value: `lp("keygate/secret/v1") lp(account) lp(project) lp(name) version`
//! - master-key check: `lp("keygate/master-key-check/v1")`

use crate::ids::ProjectRef;

/// Key of the record in `meta` that checks the master key.
pub(crate) const MASTER_KEY_CHECK_KEY: &[u8] = b"master_key_check";

/// Appends `bytes` with a u16 big-endian length prefix.
///
/// # Panics
///
/// Panics if `bytes` is longer than 65535 bytes. Callers pass validated ids
/// (at most 64 bytes), names (at most 256 bytes) or fixed purpose strings.
pub(crate) fn push_component(out: &mut Vec<u8>, bytes: &[u8]) {
    let length =
        u16::try_from(bytes.len()).expect("key components are validated to be at most 256 bytes");
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Returns the prefix shared by every key of one project: `lp(account) lp(project)`.
pub(crate) fn project_prefix(project: &ProjectRef) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + project.account.len() + project.project.len());
    push_component(&mut key, project.account.as_bytes());
    push_component(&mut key, project.project.as_bytes());
    key
}

/// Key in `data_keys` of one data-key version of a project.
pub(crate) fn data_key_key(project: &ProjectRef, version: u32) -> Vec<u8> {
    let mut key = project_prefix(project);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// Key in `meta` of a project's data-key state (current version and its
/// encryption count).
pub(crate) fn data_key_state_key(project: &ProjectRef) -> Vec<u8> {
    let mut key = DATA_KEY_STATE_PREFIX.to_vec();
    key.extend_from_slice(&project_prefix(project));
    key
}

/// Prefix of the data-key state records in `meta`.
pub(crate) const DATA_KEY_STATE_PREFIX: &[u8] = b"data_key_state/";

/// Prefix of the sealed system secrets in `meta`.
pub(crate) const SYSTEM_SECRET_PREFIX: &[u8] = b"system/";

/// Key in `meta` of the re-encryption job's progress.
pub(crate) const REENCRYPT_PROGRESS_KEY: &[u8] = b"reencrypt_progress";

/// Key in `secrets` of one version of a secret value.
pub(crate) fn secret_key(project: &ProjectRef, name: &str, version: u32) -> Vec<u8> {
    let mut key = project_prefix(project);
    push_component(&mut key, name.as_bytes());
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// Key in `secret_meta` of a secret's metadata.
pub(crate) fn secret_meta_key(project: &ProjectRef, name: &str) -> Vec<u8> {
    named_key(project, name)
}

/// Key in `definitions` of a secret definition.
pub(crate) fn definition_key(project: &ProjectRef, name: &str) -> Vec<u8> {
    named_key(project, name)
}

fn named_key(project: &ProjectRef, name: &str) -> Vec<u8> {
    let mut key = project_prefix(project);
    key.extend_from_slice(name.as_bytes());
    key
}

/// Reads the version that ends a `data_keys` key, or `None` if the key is not
/// the project prefix followed by exactly four bytes.
pub(crate) fn data_key_version(prefix: &[u8], key: &[u8]) -> Option<u32> {
    let suffix = key.strip_prefix(prefix)?;
    let bytes: [u8; 4] = suffix.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

/// Splits a `data_keys` key into account, project and version, or returns
/// `None` if the key does not have that layout.
pub(crate) fn split_data_key_key(key: &[u8]) -> Option<(String, String, u32)> {
    let (account, rest) = take_component(key)?;
    let (project, rest) = take_component(rest)?;
    let version = u32::from_be_bytes(rest.try_into().ok()?);
    let account = String::from_utf8(account.to_vec()).ok()?;
    let project = String::from_utf8(project.to_vec()).ok()?;
    Some((account, project, version))
}

/// Splits a `secrets` key into account, project, name and version, or
/// returns `None` if the key does not have that layout.
pub(crate) fn split_secret_key(key: &[u8]) -> Option<(ProjectRef, String, u32)> {
    let (account, rest) = take_component(key)?;
    let (project, rest) = take_component(rest)?;
    let (name, rest) = take_component(rest)?;
    let version = u32::from_be_bytes(rest.try_into().ok()?);
    let project = ProjectRef {
        account: String::from_utf8(account.to_vec()).ok()?,
        project: String::from_utf8(project.to_vec()).ok()?,
    };
    Some((project, String::from_utf8(name.to_vec()).ok()?, version))
}

/// Splits one length-prefixed component off the front of `bytes`.
fn take_component(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (length, rest) = bytes.split_first_chunk::<2>()?;
    let length = usize::from(u16::from_be_bytes(*length));
    (rest.len() >= length).then(|| rest.split_at(length))
}

#[cfg(test)]
mod tests;
