//! The writer thread: takes every queued event, chains and stores them in one
//! synced batch (group commit), copies them to the JSON-lines file, then
//! acknowledges each caller.

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::file::JsonLinesFile;
use super::record::{AuditEvent, AuditRecord, ChainHead};
use super::{
    head_value, seq_key, AuditError, BatchObserver, BatchOutcome, Shared, HEAD_KEY,
    UNSYNCED_READS_MAX_MS,
};
use crate::store::{KvStore, Space, WriteBatch};

/// Called once with the result of appending one event.
pub(crate) type Acknowledge = Box<dyn FnOnce(Result<u64, AuditError>) + Send>;

/// An event waiting in the queue, with the caller to acknowledge.
pub(crate) struct Pending {
    pub(crate) event: AuditEvent,
    pub(crate) acknowledge: Acknowledge,
}

pub(crate) struct Writer {
    pub(crate) store: Arc<dyn KvStore>,
    pub(crate) file: Option<JsonLinesFile>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) max_batch: usize,
    pub(crate) on_batch: Option<BatchObserver>,
    /// Whether batches of read records are synced too.
    pub(crate) sync_reads: bool,
}

impl Writer {
    /// Runs until every sender of `queue` is gone and the queue is empty.
    pub(crate) fn run(mut self, queue: Receiver<Pending>) {
        let _panic_guard = PanicGuard(self.shared.clone());
        loop {
            let first = match queue.recv_timeout(Duration::from_millis(UNSYNCED_READS_MAX_MS / 2)) {
                Ok(first) => first,
                Err(RecvTimeoutError::Timeout) => {
                    self.sync_if_needed();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut batch = Vec::with_capacity(self.max_batch.min(64));
            batch.push(first);
            while batch.len() < self.max_batch {
                match queue.try_recv() {
                    Ok(pending) => batch.push(pending),
                    Err(_) => break,
                }
            }
            self.write_batch(batch);
            self.sync_if_needed();
        }
        self.sync_if_needed();
        tracing::debug!(last_seq = self.shared.head().seq, "audit writer stopped");
    }

    /// Syncs read records that were written without a sync, once
    /// [`UNSYNCED_READS_MAX_MS`] has passed since the first of them. A failure
    /// is reported like a failed batch, because those records may not survive
    /// a power loss.
    fn sync_if_needed(&mut self) {
        if !self.shared.sync_due() {
            return;
        }
        let started = Instant::now();
        match self.store.sync() {
            Ok(()) => self.shared.mark_synced(started),
            Err(error) => {
                let cause = format!("syncing audit records to disk failed: {error}");
                if self.shared.set_failure(Some(cause.clone())).as_ref() != Some(&cause) {
                    tracing::error!(error = %cause, "syncing audit records failed");
                }
            }
        }
    }

    fn write_batch(&mut self, batch: Vec<Pending>) {
        // Held until the head moves, so inline appends of reads wait for it.
        let shared = self.shared.clone();
        let mut head = shared.lock_head();
        let time_ms = now_ms();
        let mut records = Vec::with_capacity(batch.len());
        let mut acknowledgements = Vec::with_capacity(batch.len());
        let mut prev_hash = head.hash.clone();
        for (offset, pending) in batch.into_iter().enumerate() {
            let seq = head.seq + 1 + offset as u64;
            let record = AuditRecord::new(seq, time_ms, pending.event, &prev_hash);
            prev_hash.clone_from(&record.hash);
            records.push(record);
            acknowledgements.push(pending.acknowledge);
        }

        // A panic in the store or file code fails this batch like an error,
        // so the writer goes on and every caller gets a result.
        let persisted = panic::catch_unwind(AssertUnwindSafe(|| self.persist(&records)))
            .unwrap_or_else(|payload| {
                Err(PersistError::before_store(AuditError::Unavailable {
                    cause: format!(
                        "the store or file write panicked: {}",
                        panic_text(&*payload)
                    ),
                }))
            });
        match persisted {
            Ok(()) => {
                let last = records.last().expect("a batch has at least one record");
                *head = ChainHead {
                    seq: last.seq,
                    hash: last.hash.clone(),
                };
                drop(head);
                if let Some(cause) = self.shared.set_failure(None) {
                    tracing::info!(previous_cause = %cause, "audit log writes succeed again");
                }
                self.report(&BatchOutcome::Written {
                    records: records.len(),
                });
                for (record, acknowledge) in records.iter().zip(acknowledgements) {
                    acknowledge(Ok(record.seq));
                }
            }
            Err(PersistError { error, stored }) => {
                if stored {
                    // The store has the records but the file does not yet,
                    // so the chain moves on and the file catches up later.
                    let last = records.last().expect("a batch has at least one record");
                    *head = ChainHead {
                        seq: last.seq,
                        hash: last.hash.clone(),
                    };
                }
                drop(head);
                let cause = error.to_string();
                let previous = self.shared.set_failure(Some(cause.clone()));
                // Logged when the cause changes; the failures metric counts every batch.
                if previous.as_ref() != Some(&cause) {
                    tracing::error!(
                        error = %cause,
                        records = records.len(),
                        first_seq = records[0].seq,
                        "writing audit records failed; the accesses they describe are refused"
                    );
                }
                self.report(&BatchOutcome::Failed {
                    records: records.len(),
                    cause: cause.clone(),
                });
                for acknowledge in acknowledgements {
                    acknowledge(Err(AuditError::Unavailable {
                        cause: cause.clone(),
                    }));
                }
            }
        }
    }

    /// Writes `records` and the new head to the store in one batch, then to
    /// the file. Lines that an earlier batch could not write to the file go
    /// first. If they fail again, the store is not written, so the file is
    /// never more than one batch behind the store.
    fn persist(&mut self, records: &[AuditRecord]) -> Result<(), PersistError> {
        if let Some(file) = &mut self.file {
            if file.has_pending() {
                file.flush_pending().map_err(PersistError::before_store)?;
            }
        }

        let last = records.last().expect("a batch has at least one record");
        let mut batch = WriteBatch::default();
        for record in records {
            batch.put(Space::Audit, seq_key(record.seq), record.to_json());
        }
        let head = ChainHead {
            seq: last.seq,
            hash: last.hash.clone(),
        };
        batch.put(Space::Meta, HEAD_KEY, head_value(&head));
        let sync = self.sync_reads
            || records
                .iter()
                .any(|record| record.operation.changes_vault());
        let written = if sync {
            self.store.write(batch)
        } else {
            self.store.write_unsynced(batch)
        };
        written.map_err(|e| PersistError::before_store(AuditError::Store(e)))?;
        if !sync {
            self.shared.mark_unsynced();
        }

        if let Some(file) = &mut self.file {
            file.append(records).map_err(|error| PersistError {
                error,
                stored: true,
            })?;
        }
        Ok(())
    }

    fn report(&self, outcome: &BatchOutcome) {
        if let Some(on_batch) = &self.on_batch {
            on_batch(outcome);
        }
    }
}

/// Returns the message of a panic payload.
fn panic_text(payload: &(dyn Any + Send)) -> &str {
    if let Some(text) = payload.downcast_ref::<&str>() {
        text
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text
    } else {
        "no message"
    }
}

/// Reports a panic of the writer thread outside the store and file calls as
/// the log's failure, because no record can be written after it.
struct PanicGuard(Arc<Shared>);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.set_failure(Some(AuditError::Stopped.to_string()));
        }
    }
}

struct PersistError {
    error: AuditError,
    /// Whether the store took the records before the failure.
    stored: bool,
}

impl PersistError {
    fn before_store(error: AuditError) -> PersistError {
        PersistError {
            error,
            stored: false,
        }
    }
}

impl Shared {
    /// Locks the chain head; the lock is held while records are chained and stored.
    pub(crate) fn lock_head(&self) -> std::sync::MutexGuard<'_, ChainHead> {
        self.head
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Returns a copy of the chain head.
    pub(crate) fn head(&self) -> ChainHead {
        self.lock_head().clone()
    }

    /// Notes a write that did not wait for the disk.
    pub(crate) fn mark_unsynced(&self) {
        let now = Instant::now();
        let mut unsynced = self.lock_unsynced();
        *unsynced = Some(match *unsynced {
            Some((first, _)) => (first, now),
            None => (now, now),
        });
    }

    /// Returns whether an unsynced write is older than half of
    /// [`UNSYNCED_READS_MAX_MS`], so that with the writer's wake-up interval
    /// of the same half, no write waits longer than the whole.
    fn sync_due(&self) -> bool {
        self.lock_unsynced().is_some_and(|(first, _)| {
            first.elapsed() >= Duration::from_millis(UNSYNCED_READS_MAX_MS / 2)
        })
    }

    /// Notes a sync that started at `started`: writes up to then are on disk.
    fn mark_synced(&self, started: Instant) {
        let mut unsynced = self.lock_unsynced();
        if let Some((_, last)) = *unsynced {
            *unsynced = (last > started).then_some((started, last));
        }
    }

    fn lock_unsynced(&self) -> std::sync::MutexGuard<'_, Option<(Instant, Instant)>> {
        self.unsynced
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets or clears the failure cause; returns the previous one.
    pub(crate) fn set_failure(&self, cause: Option<String>) -> Option<String> {
        let mut failure = self
            .failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::replace(&mut *failure, cause)
    }
}

/// Milliseconds since the Unix epoch, or 0 if the clock is before it.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}
