//! The audit log of vault accesses: hash-chained records in the store's
//! `audit` space, optionally copied to a JSON-lines file.
//!
//! Callers report an [`AuditEvent`] per access. One writer thread takes every
//! event queued at that moment, gives each the next sequence number, links it
//! to the previous record by hash, and stores them with the new chain head in
//! one synced batch (group commit). Then it appends the same records to the
//! JSON-lines file, if one is configured, and acknowledges each caller. A
//! caller refuses the access when its event is not acknowledged as written.
//!
//! Records never contain a secret value. Sensitive strings go into an event's
//! details as [`AuditLog::hmac`], an HMAC-SHA256 under a key that is created
//! once per installation and kept sealed in the vault ([`AuditKey`]).
//! [`verify_store`] and [`verify_file`] detect a changed, removed, added or
//! reordered record, and [`search_store`] finds the records that match a
//! filter. The layout is in [`crate::layout`].

use std::fmt;
use std::path::PathBuf;
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use ring::hmac;
use zeroize::Zeroizing;

use crate::error::{hex, VaultError};
use crate::keys::fill_random;
use crate::store::{KvStore, Space, StoreError, WriteBatch};
use crate::vault::Vault;

mod file;
mod record;
mod search;
mod verify;
mod writer;

#[cfg(test)]
mod tests;

pub use record::{
    AuditEvent, AuditOp, AuditOutcome, AuditRecord, ChainHead, GENESIS_HASH, MAX_FIELD_BYTES,
};
pub use search::{search_store, RecordFilter, SearchReport};
pub use verify::{verify_file, verify_store, ChainProblem, Progress, VerifyReport};

use writer::{Pending, Writer};

/// Key in the `meta` space of the chain head: JSON `{"seq", "hash"}` of the
/// last record, written in the same batch as the records.
pub const HEAD_KEY: &[u8] = b"audit_head";

/// Name of the system secret that contains the HMAC key.
pub const HMAC_KEY_NAME: &str = "audit_hmac_key";

/// Events that may wait for the writer by default; [`AuditLog::submit`]
/// blocks while that many are queued.
pub const DEFAULT_QUEUE_CAPACITY: usize = 4096;

/// Most events the writer stores in one batch by default.
pub const DEFAULT_MAX_BATCH: usize = 1024;

const HMAC_KEY_LEN: usize = 32;

/// A failure of the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The batch holding the event could not be written, so the access it
    /// describes must be refused.
    #[error("writing the audit record failed: {cause}")]
    Unavailable { cause: String },

    #[error("the audit writer has stopped, so no record can be written")]
    Stopped,

    #[error(transparent)]
    Store(#[from] StoreError),

    #[error("cannot open the audit file {path}: {source}; check that its folder exists and is writable by the user running keygate")]
    FileOpen {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("cannot read the audit file {path}: {source}")]
    FileRead {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("appending audit records to {path} failed: {message}")]
    FileWrite { path: PathBuf, message: String },

    #[error("the audit file {path} does not continue the store's audit log: {reason}")]
    FileInconsistent { path: PathBuf, reason: String },

    #[error("the audit log in the store is inconsistent: {reason}; run `keygate audit verify` to find the first bad record")]
    Inconsistent { reason: String },

    #[error("cannot load the audit HMAC key: {0}")]
    Key(#[source] VaultError),

    #[error(
        "the audit HMAC key is not loaded yet; it is read from the vault once the vault is open"
    )]
    KeyUnavailable,
}

/// The result of one batch, as reported to [`AuditOptions::on_batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOutcome {
    Written { records: usize },
    Failed { records: usize, cause: String },
}

/// Called by the writer thread after each batch with its result.
pub type BatchObserver = Box<dyn Fn(&BatchOutcome) + Send>;

/// Settings of [`AuditLog::start_with`].
pub struct AuditOptions {
    /// JSON-lines file that receives a copy of every record.
    pub file: Option<PathBuf>,
    /// Events that may wait for the writer; at least 1.
    pub queue_capacity: usize,
    /// Most events stored in one batch; at least 1.
    pub max_batch: usize,
    /// Called by the writer thread after each batch, such as to count records
    /// in metrics. It must not block.
    pub on_batch: Option<BatchObserver>,
    /// Whether a batch of records that only describe reads waits for the
    /// disk. When false, such a batch is acknowledged once it is in the
    /// store's write-ahead log, which a killed process keeps, and the log is
    /// synced within [`UNSYNCED_READS_MAX_MS`]; a power loss may lose the
    /// read records of that window. Batches with a record of a change are
    /// always synced.
    pub sync_reads: bool,
}

/// Maximum time read records stay in the write-ahead log without a sync
/// when [`AuditOptions::sync_reads`] is false, in milliseconds.
pub const UNSYNCED_READS_MAX_MS: u64 = 200;

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            file: None,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            max_batch: DEFAULT_MAX_BATCH,
            on_batch: None,
            sync_reads: true,
        }
    }
}

/// The per-installation key of [`AuditLog::hmac`]. `Debug` never shows it.
pub struct AuditKey(Zeroizing<[u8; HMAC_KEY_LEN]>);

impl AuditKey {
    /// Generates a random key.
    pub fn generate() -> AuditKey {
        let mut bytes = Zeroizing::new([0u8; HMAC_KEY_LEN]);
        fill_random(bytes.as_mut());
        AuditKey(bytes)
    }

    /// Reads the key from the vault's system secrets, or creates and stores
    /// it there on first use.
    pub fn load_or_create(vault: &Vault) -> Result<AuditKey, VaultError> {
        if let Some(stored) = vault.get_system_secret(HMAC_KEY_NAME)? {
            let bytes: [u8; HMAC_KEY_LEN] = stored.as_slice().try_into().map_err(|_| {
                VaultError::corrupt(
                    Space::Meta,
                    format!("system/{HMAC_KEY_NAME}").as_bytes(),
                    format!(
                        "the audit HMAC key is {} bytes, expected {HMAC_KEY_LEN}",
                        stored.len()
                    ),
                )
            })?;
            return Ok(AuditKey(Zeroizing::new(bytes)));
        }
        let key = AuditKey::generate();
        vault.put_system_secret(HMAC_KEY_NAME, key.0.as_ref())?;
        tracing::info!("created the audit HMAC key");
        Ok(key)
    }
}

impl AuditKey {
    fn to_hmac_key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, self.0.as_ref())
    }
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKey(REDACTED)")
    }
}

/// State shared by the [`AuditLog`] handle and its writer thread.
pub(crate) struct Shared {
    /// Cause of the last failed batch, until a batch succeeds.
    failure: Mutex<Option<String>>,
    /// The last stored record, locked while a record or batch is chained and stored.
    head: Mutex<ChainHead>,
    /// Times of the first and the last write since the last sync that did
    /// not wait for the disk.
    unsynced: Mutex<Option<(Instant, Instant)>>,
}

/// The audit log of one store, with its writer thread. Dropping it stops the
/// thread after the queued events are written.
pub struct AuditLog {
    queue: Option<SyncSender<Pending>>,
    store: Arc<dyn KvStore>,
    /// Whether records of reads are stored by the calling thread, without a
    /// sync and without the writer thread (see [`AuditLog::append_read`]).
    inline_reads: bool,
    shared: Arc<Shared>,
    /// `None` until the key is read from the vault, which needs the master key.
    hmac_key: RwLock<Option<hmac::Key>>,
    queue_capacity: usize,
    writer: Option<JoinHandle<()>>,
}

impl AuditLog {
    /// Starts the writer thread with default options and an optional JSON-lines
    /// file. Without `key`, records are written but [`AuditLog::hmac`] fails
    /// until [`AuditLog::set_hmac_key`] is called.
    pub fn start(
        store: Arc<dyn KvStore>,
        key: Option<AuditKey>,
        file: Option<PathBuf>,
    ) -> Result<AuditLog, AuditError> {
        AuditLog::start_with(
            store,
            key,
            AuditOptions {
                file,
                ..AuditOptions::default()
            },
        )
    }

    /// Starts the writer thread. Fails when the stored chain head does not
    /// match the stored records (writing on would overwrite records), or when
    /// the file cannot be opened or does not continue the store's chain.
    pub fn start_with(
        store: Arc<dyn KvStore>,
        key: Option<AuditKey>,
        options: AuditOptions,
    ) -> Result<AuditLog, AuditError> {
        let head = check_head(store.as_ref())?;
        let file = match &options.file {
            Some(path) => Some(file::JsonLinesFile::open(path, store.as_ref(), &head)?),
            None => None,
        };
        if let Some(file) = &file {
            tracing::info!(path = %file.path().display(), "audit records are also appended to a JSON-lines file");
        }
        let queue_capacity = options.queue_capacity.max(1);
        let (sender, receiver) = mpsc::sync_channel(queue_capacity);
        let shared = Arc::new(Shared {
            failure: Mutex::new(None),
            head: Mutex::new(head),
            unsynced: Mutex::new(None),
        });
        let inline_reads = !options.sync_reads && file.is_none();
        let writer = Writer {
            store: store.clone(),
            file,
            shared: shared.clone(),
            max_batch: options.max_batch.max(1),
            on_batch: options.on_batch,
            sync_reads: options.sync_reads,
        };
        let handle = std::thread::Builder::new()
            .name("keygate-audit".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| AuditError::Unavailable {
                cause: format!("cannot start the audit writer thread: {e}"),
            })?;
        Ok(AuditLog {
            queue: Some(sender),
            store,
            inline_reads,
            shared,
            hmac_key: RwLock::new(key.map(|key| key.to_hmac_key())),
            queue_capacity,
            writer: Some(handle),
        })
    }

    /// Appends `event` and waits until it is stored; returns its sequence
    /// number. Blocks while the queue is full.
    pub fn append(&self, event: AuditEvent) -> Result<u64, AuditError> {
        let (sender, receiver) = mpsc::sync_channel(1);
        self.submit(event, move |result| {
            let _ = sender.send(result);
        });
        receiver.recv().unwrap_or(Err(AuditError::Stopped))
    }

    /// Returns whether an event of `operation` is stored by
    /// [`AuditLog::append_read`]: a read, while reads are not synced and no
    /// JSON-lines file is configured.
    pub fn appends_inline(&self, operation: AuditOp) -> bool {
        self.inline_reads && !operation.changes_vault()
    }

    /// Stores the record of a read on the calling thread and returns its
    /// sequence number, as [`AuditLog::append_reads`] does for one event.
    pub fn append_read(&self, event: AuditEvent) -> Result<u64, AuditError> {
        self.append_reads(vec![event])
    }

    /// Stores the records of reads on the calling thread, in one batch and in
    /// the order given, and returns the sequence number of the first. The
    /// others follow it. With no events, nothing is written and the result is
    /// the next sequence number. Call it only when [`AuditLog::appends_inline`] is
    /// true for every event's operation. Other events go through
    /// [`AuditLog::submit`].
    ///
    /// The records are chained under the same lock as the writer's batches
    /// and stored without waiting for the disk. The writer thread syncs them
    /// within [`UNSYNCED_READS_MAX_MS`]. This takes microseconds, where a
    /// hand-off to the writer thread and back costs two thread wake-ups.
    pub fn append_reads(&self, events: Vec<AuditEvent>) -> Result<u64, AuditError> {
        debug_assert!(events
            .iter()
            .all(|event| self.appends_inline(event.operation)));
        let mut head = self.shared.lock_head();
        let first = head.seq + 1;
        if events.is_empty() {
            return Ok(first);
        }
        let time_ms = writer::now_ms();
        let mut batch = WriteBatch::default();
        let mut next = head.clone();
        for event in events {
            next.seq += 1;
            let record = AuditRecord::new(next.seq, time_ms, event.bounded(), &next.hash);
            batch.put(Space::Audit, seq_key(next.seq), record.to_json());
            next.hash = record.hash;
        }
        batch.put(Space::Meta, HEAD_KEY, head_value(&next));
        match self.store.write_unsynced(batch) {
            Ok(()) => {
                *head = next;
                drop(head);
                self.shared.mark_unsynced();
                if let Some(cause) = self.shared.set_failure(None) {
                    tracing::info!(previous_cause = %cause, "audit log writes succeed again");
                }
                Ok(first)
            }
            Err(error) => {
                drop(head);
                let cause = AuditError::Store(error).to_string();
                if self.shared.set_failure(Some(cause.clone())).as_ref() != Some(&cause) {
                    tracing::error!(error = %cause, "writing an audit record failed; the access it describes is rejected");
                }
                Err(AuditError::Unavailable { cause })
            }
        }
    }

    /// Queues `event`; the writer thread calls `acknowledge` with its sequence
    /// number once it is stored, or with the error. `acknowledge` runs on the
    /// writer thread, so it must not block. This call blocks while the queue
    /// holds [`AuditLog::queue_capacity`] events.
    pub fn submit(
        &self,
        event: AuditEvent,
        acknowledge: impl FnOnce(Result<u64, AuditError>) + Send + 'static,
    ) {
        let pending = Pending {
            event: event.bounded(),
            acknowledge: Box::new(acknowledge),
        };
        let Some(queue) = &self.queue else {
            (pending.acknowledge)(Err(AuditError::Stopped));
            return;
        };
        if let Err(mpsc::SendError(pending)) = queue.send(pending) {
            // Only a panic ends the writer while this handle exists, and
            // readiness must report that every access is now refused.
            self.shared
                .set_failure(Some(AuditError::Stopped.to_string()));
            (pending.acknowledge)(Err(AuditError::Stopped));
        }
    }

    /// Returns the HMAC-SHA256 of `value` under this installation's key, in
    /// lowercase hex, to record a sensitive string in a searchable form.
    /// Fails with [`AuditError::KeyUnavailable`] until the key is set.
    pub fn hmac(&self, value: &str) -> Result<String, AuditError> {
        let key = self
            .hmac_key
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = key.as_ref().ok_or(AuditError::KeyUnavailable)?;
        Ok(hex(hmac::sign(key, value.as_bytes()).as_ref()))
    }

    /// Sets the HMAC key, for a log started before the vault could be read.
    pub fn set_hmac_key(&self, key: AuditKey) {
        *self
            .hmac_key
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(key.to_hmac_key());
    }

    /// Returns the cause of the last failed batch while no later batch has
    /// succeeded, or `None` when the log is writing.
    pub fn failure(&self) -> Option<String> {
        self.shared
            .failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Events that may wait for the writer before [`AuditLog::submit`] blocks.
    pub fn queue_capacity(&self) -> usize {
        self.queue_capacity
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish the queued events and
        // exit, and joining it releases its handle on the store.
        self.queue = None;
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!("the audit writer thread panicked");
            }
        }
    }
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("queue_capacity", &self.queue_capacity)
            .field("failure", &self.failure())
            .finish_non_exhaustive()
    }
}

/// Reads the chain head and checks that no record follows it, so the writer
/// cannot overwrite stored records.
fn check_head(store: &dyn KvStore) -> Result<ChainHead, AuditError> {
    let head = read_head(store)?;
    let Some(head) = head else {
        if store.get(Space::Audit, &seq_key(1))?.is_some() {
            return Err(AuditError::Inconsistent {
                reason: "records exist but the chain head is missing".into(),
            });
        }
        return Ok(ChainHead::empty());
    };
    record::decode_hash(&head.hash).map_err(|reason| AuditError::Inconsistent {
        reason: format!("the chain head has an invalid hash: {reason}"),
    })?;
    if store.get(Space::Audit, &seq_key(head.seq + 1))?.is_some() {
        return Err(AuditError::Inconsistent {
            reason: format!(
                "record {} exists after the chain head, which names record {}",
                head.seq + 1,
                head.seq
            ),
        });
    }
    Ok(head)
}

/// Reads the chain head, or `None` when no record was ever written.
fn read_head(store: &dyn KvStore) -> Result<Option<ChainHead>, AuditError> {
    let Some(value) = store.get(Space::Meta, HEAD_KEY)? else {
        return Ok(None);
    };
    serde_json::from_slice(&value)
        .map(Some)
        .map_err(|e| AuditError::Inconsistent {
            reason: format!("the chain head is not valid JSON {{\"seq\", \"hash\"}}: {e}"),
        })
}

fn head_value(head: &ChainHead) -> Vec<u8> {
    serde_json::to_vec(head).expect("a chain head serializes to JSON")
}

/// Reads record `seq` from the store.
fn read_record(store: &dyn KvStore, seq: u64) -> Result<Option<AuditRecord>, AuditError> {
    let Some(value) = store.get(Space::Audit, &seq_key(seq))? else {
        return Ok(None);
    };
    serde_json::from_slice(&value)
        .map(Some)
        .map_err(|e| AuditError::Inconsistent {
            reason: format!("record {seq} is not a valid audit record: {e}"),
        })
}

/// Reads every record after `seq`, in order.
fn read_records_after(store: &dyn KvStore, seq: u64) -> Result<Vec<AuditRecord>, AuditError> {
    let mut records = Vec::new();
    search_store(
        store,
        &RecordFilter::default(),
        seq.saturating_add(1),
        u64::MAX,
        &mut |record, _| {
            records.push(record.clone());
            std::ops::ControlFlow::Continue(())
        },
    )?;
    Ok(records)
}

/// Key of record `seq` in the `audit` space: u64 big-endian, so keys sort by sequence.
pub fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// Reads the sequence number of an `audit` key, or `None` if it is not 8 bytes.
pub fn seq_from_key(key: &[u8]) -> Option<u64> {
    key.try_into().ok().map(u64::from_be_bytes)
}
