//! Encrypted secret vault for keygate: hosted secrets, secret definitions and
//! their resolution, stored in RocksDB with envelope encryption.
//!
//! A master key encrypts one data key per project, and the data keys encrypt
//! secret values with AES-256-GCM. The associated data of every ciphertext names
//! its place (account, project, secret name, version), so a record copied to
//! another place fails to decrypt. Metadata and definitions are stored as JSON in
//! plain text. The module [`layout`] documents every stored key and value.
//!
//! Storage goes through the [`KvStore`] trait, implemented by [`RocksStore`] for
//! production and by [`MemStore`] for tests. All [`Vault`] methods are blocking.

#![forbid(unsafe_code)]

pub mod audit;
pub mod backup;
mod crypto;
pub mod error;
pub mod ids;
mod json_key;
pub mod keys;
pub mod layout;
pub mod location;
pub mod store;
pub mod vault;

pub use error::{ErrorKind, VaultError};
pub use ids::{validate_account_id, validate_project_id, validate_secret_name, ProjectRef};
pub use json_key::select_json_key;
pub use keys::{MasterKey, SecretValue};
pub use location::SecretLocation;
pub use store::memory::MemStore;
pub use store::rocks::RocksStore;
pub use store::{BatchOp, KeyValue, KvStore, Space, StoreError, WriteBatch};
pub use vault::{
    DataKeyInfo, DataKeyStatus, MasterRotation, MetadataUpdate, ProjectDeletion, PutOptions,
    ReencryptProgress, Resolved, SecretDefinition, SecretMetadata, Vault, VaultOptions,
    VersionInfo, WrittenVersion, MAX_LIST_LIMIT, MAX_SECRET_VALUE_BYTES, MAX_VERSIONS_LIMIT,
};
