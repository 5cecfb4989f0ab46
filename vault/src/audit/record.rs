//! Audit records: the event a caller reports, the stored record with its chain
//! hash, and the canonical bytes that the hash covers.

use std::collections::BTreeMap;
use std::fmt;

use ring::digest;
use serde::{Deserialize, Serialize};

use crate::error::hex;

/// Largest size of one text field of a record, in bytes. Longer values (only
/// unvalidated input can be that long, such as the name in a rejected request)
/// are cut by [`AuditEvent::bounded`].
pub const MAX_FIELD_BYTES: usize = 1024;

/// Hash that the first record links to: 32 zero bytes, in hex.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Domain string at the start of the canonical bytes, so the bytes hashed for
/// a record differ from the bytes hashed for other keygate data.
const CANONICAL_DOMAIN: &[u8] = b"keygate/audit/v1";

/// The kind of vault access a record describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOp {
    ReadValue,
    Resolve,
    ReadMetadata,
    List,
    Write,
    UpdateMetadata,
    Delete,
    Undelete,
    Destroy,
    DeleteSecret,
    DeleteProject,
    RotateDataKey,
    Reencrypt,
    PutDefinition,
    ReadDefinition,
    ListDefinitions,
    DeleteDefinition,
    /// Creating or replacing an account's connection to an external secret
    /// manager. The record's `secret` is the connection's name and its
    /// `project` is empty, because connections belong to the account.
    PutConnection,
    /// Deleting a connection, recorded like [`AuditOp::PutConnection`].
    DeleteConnection,
}

impl AuditOp {
    /// Every operation, in declaration order.
    pub const ALL: [AuditOp; 19] = [
        AuditOp::ReadValue,
        AuditOp::Resolve,
        AuditOp::ReadMetadata,
        AuditOp::List,
        AuditOp::Write,
        AuditOp::UpdateMetadata,
        AuditOp::Delete,
        AuditOp::Undelete,
        AuditOp::Destroy,
        AuditOp::DeleteSecret,
        AuditOp::DeleteProject,
        AuditOp::RotateDataKey,
        AuditOp::Reencrypt,
        AuditOp::PutDefinition,
        AuditOp::ReadDefinition,
        AuditOp::ListDefinitions,
        AuditOp::DeleteDefinition,
        AuditOp::PutConnection,
        AuditOp::DeleteConnection,
    ];

    /// Returns whether the operation changes the vault. Records of such
    /// operations are always synced to disk before they are acknowledged.
    pub fn changes_vault(self) -> bool {
        !matches!(
            self,
            AuditOp::ReadValue
                | AuditOp::Resolve
                | AuditOp::ReadMetadata
                | AuditOp::List
                | AuditOp::ReadDefinition
                | AuditOp::ListDefinitions
        )
    }

    /// Returns the operation named `name`, as stored in records.
    pub fn from_name(name: &str) -> Option<AuditOp> {
        AuditOp::ALL.into_iter().find(|op| op.as_str() == name)
    }

    /// Returns the snake_case name, as stored in records.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOp::ReadValue => "read_value",
            AuditOp::Resolve => "resolve",
            AuditOp::ReadMetadata => "read_metadata",
            AuditOp::List => "list",
            AuditOp::Write => "write",
            AuditOp::UpdateMetadata => "update_metadata",
            AuditOp::Delete => "delete",
            AuditOp::Undelete => "undelete",
            AuditOp::Destroy => "destroy",
            AuditOp::DeleteSecret => "delete_secret",
            AuditOp::DeleteProject => "delete_project",
            AuditOp::RotateDataKey => "rotate_data_key",
            AuditOp::Reencrypt => "reencrypt",
            AuditOp::PutDefinition => "put_definition",
            AuditOp::ReadDefinition => "read_definition",
            AuditOp::ListDefinitions => "list_definitions",
            AuditOp::DeleteDefinition => "delete_definition",
            AuditOp::PutConnection => "put_connection",
            AuditOp::DeleteConnection => "delete_connection",
        }
    }
}

impl fmt::Display for AuditOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of an access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    /// A change is about to be made. A write appends this record before it
    /// changes anything and a second record with the final outcome afterwards,
    /// so a change is never made without a record of it.
    Started,
    Success,
    /// The token was missing or invalid, lacked the scope, or was restricted
    /// to other projects.
    Denied,
    NotFound,
    /// The request conflicts with the current state, such as a failed
    /// check-and-set; nothing was changed.
    Conflict,
    /// The request was invalid, such as a bad name or value.
    Invalid,
    /// The request needs a feature keygate does not have yet, such as
    /// resolving an external secret manager.
    NotSupported,
    /// The vault is sealed: the master key is not available yet.
    Sealed,
    /// Storage or another internal part failed.
    Error,
}

impl AuditOutcome {
    /// Every outcome, in declaration order.
    pub const ALL: [AuditOutcome; 9] = [
        AuditOutcome::Started,
        AuditOutcome::Success,
        AuditOutcome::Denied,
        AuditOutcome::NotFound,
        AuditOutcome::Conflict,
        AuditOutcome::Invalid,
        AuditOutcome::NotSupported,
        AuditOutcome::Sealed,
        AuditOutcome::Error,
    ];

    /// Returns the outcome named `name`, as stored in records.
    pub fn from_name(name: &str) -> Option<AuditOutcome> {
        AuditOutcome::ALL
            .into_iter()
            .find(|outcome| outcome.as_str() == name)
    }

    /// Returns the snake_case name, as stored in records.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Started => "started",
            AuditOutcome::Success => "success",
            AuditOutcome::Denied => "denied",
            AuditOutcome::NotFound => "not_found",
            AuditOutcome::Conflict => "conflict",
            AuditOutcome::Invalid => "invalid",
            AuditOutcome::NotSupported => "not_supported",
            AuditOutcome::Sealed => "sealed",
            AuditOutcome::Error => "error",
        }
    }
}

impl fmt::Display for AuditOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One vault access, as a caller reports it. It never carries a secret value.
/// Strings that are sensitive go into [`AuditEvent::details`] as HMACs from
/// [`super::AuditLog::hmac`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Id of the HTTP request (its `x-request-id` response header).
    pub request_id: String,
    /// Subject (`sub`) of the token; empty when the request had no valid token.
    pub actor: String,
    /// Account of the token; empty when the request had no valid token.
    pub account: String,
    pub project: String,
    /// Name of the secret or definition; empty for operations on a whole
    /// project, such as a listing.
    pub secret: String,
    pub version: Option<u32>,
    pub operation: AuditOp,
    pub outcome: AuditOutcome,
    /// Further facts under fixed names chosen by the caller, such as the
    /// hosted secret that a definition points to, or the HMAC of a sensitive
    /// string.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, String>,
}

impl AuditEvent {
    /// Returns the event with every text field cut to [`MAX_FIELD_BYTES`].
    /// A cut value ends with `...[cut, N bytes]`, N being its original length.
    pub fn bounded(mut self) -> AuditEvent {
        for field in [
            &mut self.request_id,
            &mut self.actor,
            &mut self.account,
            &mut self.project,
            &mut self.secret,
        ] {
            cut_field(field);
        }
        let details = std::mem::take(&mut self.details);
        self.details = details
            .into_iter()
            .map(|(mut key, mut value)| {
                cut_field(&mut key);
                cut_field(&mut value);
                (key, value)
            })
            .collect();
        self
    }
}

fn cut_field(text: &mut String) {
    if text.len() <= MAX_FIELD_BYTES {
        return;
    }
    let original = text.len();
    let suffix = format!("...[cut, {original} bytes]");
    let mut end = MAX_FIELD_BYTES - suffix.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(&suffix);
}

/// A stored audit record: the event, its place in the chain, and its hash.
///
/// `hash` is the hex SHA-256 of the 32 bytes of `prev_hash` followed by the
/// record's canonical bytes (see [`AuditRecord::canonical_bytes`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Position in the chain, from 1, without gaps.
    pub seq: u64,
    /// When the writer stored the record, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub request_id: String,
    pub actor: String,
    pub account: String,
    pub project: String,
    pub secret: String,
    pub version: Option<u32>,
    pub operation: AuditOp,
    pub outcome: AuditOutcome,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, String>,
    /// Hash of the previous record; [`GENESIS_HASH`] for record 1.
    pub prev_hash: String,
    pub hash: String,
}

impl AuditRecord {
    /// Builds record `seq` from `event`, linked to `prev_hash`, and computes its hash.
    pub fn new(seq: u64, time_ms: u64, event: AuditEvent, prev_hash: &str) -> AuditRecord {
        let mut record = AuditRecord {
            seq,
            time_ms,
            request_id: event.request_id,
            actor: event.actor,
            account: event.account,
            project: event.project,
            secret: event.secret,
            version: event.version,
            operation: event.operation,
            outcome: event.outcome,
            details: event.details,
            prev_hash: prev_hash.to_owned(),
            hash: String::new(),
        };
        record.hash = record
            .compute_hash()
            .expect("the previous hash comes from a verified or computed record");
        record
    }

    /// Computes the hash of this record from `prev_hash` and its canonical
    /// bytes, or returns why `prev_hash` is not 64 hex characters.
    pub fn compute_hash(&self) -> Result<String, String> {
        let prev = decode_hash(&self.prev_hash)?;
        let mut context = digest::Context::new(&digest::SHA256);
        context.update(&prev);
        context.update(&self.canonical_bytes());
        Ok(hex(context.finish().as_ref()))
    }

    /// Returns the bytes the hash covers, which do not depend on the JSON
    /// encoding. `lp(x)` is the byte length of `x` as u32 big-endian followed
    /// by the bytes of `x`. In order:
    ///
    /// 1. `lp("keygate/audit/v1")`;
    /// 2. `seq`, then `time_ms`, each as u64 big-endian;
    /// 3. `lp` of `request_id`, `actor`, `account`, `project` and `secret`;
    /// 4. the version: `0x00`, or `0x01` and the version as u32 big-endian;
    /// 5. `lp` of the operation name, then of the outcome name;
    /// 6. the number of details as u32 big-endian, then `lp(key) lp(value)`
    ///    of each detail in key order.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        push_lp(&mut out, CANONICAL_DOMAIN);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.time_ms.to_be_bytes());
        for field in [
            &self.request_id,
            &self.actor,
            &self.account,
            &self.project,
            &self.secret,
        ] {
            push_lp(&mut out, field.as_bytes());
        }
        match self.version {
            Some(version) => {
                out.push(1);
                out.extend_from_slice(&version.to_be_bytes());
            }
            None => out.push(0),
        }
        push_lp(&mut out, self.operation.as_str().as_bytes());
        push_lp(&mut out, self.outcome.as_str().as_bytes());
        let count = u32::try_from(self.details.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        for (key, value) in &self.details {
            push_lp(&mut out, key.as_bytes());
            push_lp(&mut out, value.as_bytes());
        }
        out
    }

    /// Returns the record as one line of JSON, without the newline.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("audit records serialize to JSON")
    }
}

fn push_lp(out: &mut Vec<u8>, bytes: &[u8]) {
    // Fields are cut to MAX_FIELD_BYTES, far below u32::MAX.
    let length = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Decodes a 64-character hex hash into its 32 bytes.
pub(crate) fn decode_hash(text: &str) -> Result<[u8; 32], String> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return Err(format!(
            "a hash must be 64 hex characters, found {} characters",
            text.chars().count()
        ));
    }
    let mut out = [0u8; 32];
    for (index, pair) in bytes.chunks_exact(2).enumerate() {
        let (Some(high), Some(low)) = (hex_value(pair[0]), hex_value(pair[1])) else {
            return Err(format!("a hash must be lowercase hex, found {text:?}"));
        };
        out[index] = (high << 4) | low;
    }
    Ok(out)
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        _ => None,
    }
}

/// The last record of the chain: its sequence number and hash. Sequence 0
/// with [`GENESIS_HASH`] is the head of an empty chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainHead {
    pub seq: u64,
    pub hash: String,
}

impl ChainHead {
    /// Returns the head of a chain without records.
    pub fn empty() -> ChainHead {
        ChainHead {
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
        }
    }
}
