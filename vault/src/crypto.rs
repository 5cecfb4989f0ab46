//! AES-256-GCM sealing with random nonces, the sealed-record byte layout, and
//! the associated data that binds each ciphertext to its location.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use zeroize::Zeroizing;

use crate::ids::ProjectRef;
use crate::keys::{fill_random, KEY_LEN};
use crate::layout::push_component;

/// Format byte of the current sealed-record layout.
const RECORD_FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Format byte, key version and nonce.
const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;

/// Version of the first master key of a store. Data-key records carry the
/// version of the master key that sealed them, and each rotation adds one.
pub(crate) const FIRST_MASTER_KEY_VERSION: u32 = 0;

/// An AES-256-GCM key ready for use. The `aes` crate zeroizes its expanded key
/// on drop because this crate enables its `zeroize` feature.
pub(crate) struct AeadKey(Aes256Gcm);

/// The authentication tag did not match: wrong key, or data or associated data
/// that differ from what was sealed.
#[derive(Debug)]
pub(crate) struct OpenFailed;

impl AeadKey {
    pub(crate) fn new(key: &[u8; KEY_LEN]) -> Self {
        AeadKey(Aes256Gcm::new(key.into()))
    }

    /// Encrypts `plaintext` under a fresh random nonce and returns the sealed
    /// record: format byte, `key_version` (u32 BE), nonce, ciphertext and tag.
    pub(crate) fn seal(&self, key_version: u32, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce);

        // The capacity covers the tag, so no reallocation leaves a copy of the
        // plaintext behind in freed memory.
        let mut record = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        record.push(RECORD_FORMAT_V1);
        record.extend_from_slice(&key_version.to_be_bytes());
        record.extend_from_slice(&nonce);
        record.extend_from_slice(plaintext);
        let tag = self
            .0
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), aad, &mut record[HEADER_LEN..])
            .expect("AES-GCM accepts the plaintext because vault values are at most 64 KiB");
        record.extend_from_slice(&tag);
        record
    }

    /// Decrypts a sealed record's ciphertext, checking its tag against `aad`.
    pub(crate) fn open(
        &self,
        record: &SealedRecord<'_>,
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, OpenFailed> {
        let mut plaintext = Zeroizing::new(record.ciphertext.to_vec());
        self.0
            .decrypt_in_place_detached(
                Nonce::from_slice(&record.nonce),
                aad,
                &mut plaintext[..],
                Tag::from_slice(record.tag),
            )
            .map_err(|_| OpenFailed)?;
        Ok(plaintext)
    }
}

/// A parsed sealed record, borrowing from the stored bytes.
pub(crate) struct SealedRecord<'a> {
    /// Version of the key that sealed the record: the data-key version for
    /// secret values, the master-key version for data keys and system secrets.
    pub(crate) key_version: u32,
    nonce: [u8; NONCE_LEN],
    ciphertext: &'a [u8],
    tag: &'a [u8],
}

impl<'a> SealedRecord<'a> {
    /// Splits stored bytes into their fields. The error describes the damage.
    pub(crate) fn decode(bytes: &'a [u8]) -> Result<Self, String> {
        if bytes.len() < HEADER_LEN + TAG_LEN {
            return Err(format!(
                "sealed record is {} bytes, shorter than the minimum of {}",
                bytes.len(),
                HEADER_LEN + TAG_LEN
            ));
        }
        if bytes[0] != RECORD_FORMAT_V1 {
            return Err(format!(
                "sealed record has format {}, expected {RECORD_FORMAT_V1}",
                bytes[0]
            ));
        }
        let key_version = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[5..HEADER_LEN]);
        let (ciphertext, tag) = bytes[HEADER_LEN..].split_at(bytes.len() - HEADER_LEN - TAG_LEN);
        Ok(SealedRecord {
            key_version,
            nonce,
            ciphertext,
            tag,
        })
    }
}

/// Associated data of a data key: purpose, account, project and data-key version.
pub(crate) fn data_key_aad(project: &ProjectRef, version: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(96);
    push_component(&mut aad, b"keygate/data-key/v1");
    push_component(&mut aad, project.account.as_bytes());
    push_component(&mut aad, project.project.as_bytes());
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

/// Associated data of a secret value: purpose, account, project, secret name
/// and secret version. Each string is length-prefixed, so `("ab", "c")` and
/// `("a", "bc")` give different bytes.
pub(crate) fn secret_aad(project: &ProjectRef, name: &str, version: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(128 + name.len());
    push_component(&mut aad, b"keygate/secret/v1");
    push_component(&mut aad, project.account.as_bytes());
    push_component(&mut aad, project.project.as_bytes());
    push_component(&mut aad, name.as_bytes());
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

/// Associated data of the record that checks the master key.
pub(crate) fn master_key_check_aad() -> Vec<u8> {
    let mut aad = Vec::with_capacity(32);
    push_component(&mut aad, b"keygate/master-key-check/v1");
    aad
}

/// Generates a random data key.
pub(crate) fn generate_data_key() -> Zeroizing<[u8; KEY_LEN]> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    fill_random(key.as_mut());
    key
}

#[cfg(test)]
mod tests;
