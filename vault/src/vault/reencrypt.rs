//! The re-encryption job: moves secret ciphertexts sealed by an older data-key
//! version of their project to the current one, a step at a time, with its
//! cursor stored so that it resumes after a restart.

use std::collections::BTreeMap;

use crate::crypto;
use crate::crypto::SealedRecord;
use crate::error::{hex, VaultError};
use crate::ids::ProjectRef;
use crate::layout::{self, REENCRYPT_PROGRESS_KEY};
use crate::store::{Space, WriteBatch};

use super::{now_ms, ReencryptProgress, Vault};

/// Records counted per scan while the job measures the store at its start.
const COUNT_PAGE: usize = 1000;

impl Vault {
    /// Starts the re-encryption job from the beginning of the store,
    /// replacing any earlier progress, and returns the new progress.
    pub fn start_reencrypt(&self) -> Result<ReencryptProgress, VaultError> {
        let total = self.count_secret_records()?;
        let now = now_ms();
        let progress = ReencryptProgress {
            total,
            started_at_ms: now,
            updated_at_ms: now,
            ..ReencryptProgress::default()
        };
        let _guard = self.lock_writes();
        let mut batch = WriteBatch::default();
        put_progress(&mut batch, &progress);
        self.store.write(batch)?;
        tracing::info!(secret_versions = total, "started re-encryption");
        Ok(progress)
    }

    /// Returns the stored progress of the re-encryption job, or `None` if it
    /// never started.
    pub fn reencrypt_progress(&self) -> Result<Option<ReencryptProgress>, VaultError> {
        let Some(json) = self.store.get(Space::Meta, REENCRYPT_PROGRESS_KEY)? else {
            return Ok(None);
        };
        serde_json::from_slice(&json).map(Some).map_err(|e| {
            VaultError::corrupt(
                Space::Meta,
                REENCRYPT_PROGRESS_KEY,
                format!("invalid re-encryption progress JSON: {e}"),
            )
        })
    }

    /// Runs one step of the job: looks at up to `limit` secret records after
    /// the stored cursor, re-seals those sealed by an older data-key version
    /// under their project's current key, and stores the new cursor in the
    /// same atomic batch. Returns the progress after the step, or `None` if
    /// the job was never started. A finished job returns its final progress.
    pub fn reencrypt_step(&self, limit: usize) -> Result<Option<ReencryptProgress>, VaultError> {
        let _guard = self.lock_writes();
        let Some(mut progress) = self.reencrypt_progress()? else {
            return Ok(None);
        };
        if progress.done {
            return Ok(Some(progress));
        }
        let cursor = decode_hex(&progress.cursor_hex).ok_or_else(|| {
            VaultError::corrupt(
                Space::Meta,
                REENCRYPT_PROGRESS_KEY,
                "the cursor is not hexadecimal",
            )
        })?;
        let start_after = (!cursor.is_empty()).then_some(cursor.as_slice());
        let entries = self
            .store
            .scan_prefix(Space::Secrets, b"", start_after, limit.max(1))?;

        // Records to move, grouped by project so that each project's key state
        // is read and counted once per step.
        let mut moves: BTreeMap<Vec<u8>, (ProjectRef, Vec<StoredVersion<'_>>)> = BTreeMap::new();
        for (key, record) in &entries {
            let (project, name, version) = layout::split_secret_key(key).ok_or_else(|| {
                VaultError::corrupt(
                    Space::Secrets,
                    key,
                    "key is not account, project, name and version",
                )
            })?;
            let sealed = SealedRecord::decode(record)
                .map_err(|reason| VaultError::corrupt(Space::Secrets, key, reason))?;
            let prefix = layout::project_prefix(&project);
            let entry = moves
                .entry(prefix)
                .or_insert_with(|| (project.clone(), Vec::new()));
            entry.1.push(StoredVersion {
                key,
                record,
                name,
                version,
                key_version: sealed.key_version,
            });
        }

        let mut batch = WriteBatch::default();
        let mut created = Vec::new();
        for (project, records) in moves.into_values() {
            let Some(state) = self.data_key_state(&project)? else {
                continue;
            };
            let stale: Vec<_> = records
                .into_iter()
                .filter(|stored| stored.key_version != state.current_version)
                .collect();
            if stale.is_empty() {
                continue;
            }
            let write_key = self.data_key_for_write(&project, &mut batch, stale.len() as u64)?;
            for stored in stale {
                let value = self.open_secret(
                    &project,
                    &stored.name,
                    stored.version,
                    stored.key,
                    stored.record,
                )?;
                let aad = crypto::secret_aad(&project, &stored.name, stored.version);
                batch.put(
                    Space::Secrets,
                    stored.key.clone(),
                    write_key
                        .key
                        .seal(write_key.version, value.as_bytes(), &aad),
                );
                progress.rewritten += 1;
            }
            created.push(write_key);
        }

        progress.scanned += entries.len() as u64;
        progress.updated_at_ms = now_ms();
        match entries.last() {
            Some((key, _)) if entries.len() == limit.max(1) => progress.cursor_hex = hex(key),
            _ => progress.done = true,
        }
        put_progress(&mut batch, &progress);
        self.store.write(batch)?;
        for write_key in created {
            write_key.cache_if_created(self);
        }
        if progress.done {
            tracing::info!(
                scanned = progress.scanned,
                rewritten = progress.rewritten,
                "finished re-encryption"
            );
        }
        Ok(Some(progress))
    }

    fn count_secret_records(&self) -> Result<u64, VaultError> {
        let mut count = 0;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self
                .store
                .scan_prefix(Space::Secrets, b"", after.as_deref(), COUNT_PAGE)?;
            count += page.len() as u64;
            if page.len() < COUNT_PAGE {
                return Ok(count);
            }
            after = page.last().map(|(key, _)| key.clone());
        }
    }
}

/// One scanned secret record, with the location and data-key version it names.
struct StoredVersion<'a> {
    key: &'a Vec<u8>,
    record: &'a Vec<u8>,
    name: String,
    version: u32,
    key_version: u32,
}

fn put_progress(batch: &mut WriteBatch, progress: &ReencryptProgress) {
    let json = serde_json::to_vec(progress).expect("ReencryptProgress serializes to JSON");
    batch.put(Space::Meta, REENCRYPT_PROGRESS_KEY, json);
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).ok().filter(|p| p.len() == 2)?;
            u8::from_str_radix(pair, 16).ok()
        })
        .collect()
}
