//! The task store's writer thread: the writes of concurrent submissions and
//! finishing tasks go to the store as one batch with one disk sync.

use std::sync::Arc;
use std::thread::JoinHandle;

use keygate_vault::{KvStore, StoreError, WriteBatch};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

/// Writes waiting for the writer thread. A full queue makes submissions
/// wait, and makes unsynced writes go to the store from their caller.
const QUEUE: usize = 16 * 1024;
/// Writes joined into one batch at most.
const MAX_GROUP: usize = 1024;

enum Job {
    /// Must be on disk before `done` fires.
    Synced(WriteBatch, oneshot::Sender<Result<(), StoreError>>),
    /// May stay in the write-ahead log until a later sync.
    Unsynced(WriteBatch),
}

/// A thread that applies queued writes in groups. Each group is one
/// `KvStore::write`, synced when any write in it requires a sync, so
/// concurrent submissions share one disk sync instead of each waiting on a
/// blocking-pool thread of its own.
pub struct GroupWriter {
    store: Arc<dyn KvStore>,
    queue: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl GroupWriter {
    pub fn start(store: Arc<dyn KvStore>) -> GroupWriter {
        let (queue, jobs) = mpsc::channel(QUEUE);
        let thread_store = store.clone();
        let thread = std::thread::Builder::new()
            .name("keygate-task-writer".into())
            .spawn(move || run(thread_store, jobs))
            .expect("the task writer thread starts");
        GroupWriter {
            store,
            queue: Some(queue),
            thread: Some(thread),
        }
    }

    /// Writes `batch` durably; returns once it is on disk.
    pub async fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let (done, written) = oneshot::channel();
        let queue = self.queue.as_ref().expect("queue present until drop");
        if queue.send(Job::Synced(batch, done)).await.is_err() {
            return Err(stopped());
        }
        written.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Queues `batch` without waiting for it. When the queue is full, the
    /// calling thread writes the batch itself and waits for the store. Such a
    /// batch may land before writes that are still queued.
    pub fn write_unsynced(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let queue = self.queue.as_ref().expect("queue present until drop");
        match queue.try_send(Job::Unsynced(batch)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(Job::Unsynced(batch)))
            | Err(mpsc::error::TrySendError::Closed(Job::Unsynced(batch))) => {
                self.store.write_unsynced(batch)
            }
            Err(_) => unreachable!("only unsynced jobs are sent here"),
        }
    }
}

impl Drop for GroupWriter {
    /// Lets the thread write what is queued, then waits for it to end, so
    /// that the store closes with its last handle.
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn stopped() -> StoreError {
    StoreError::Operation {
        store: "task store".into(),
        operation: "write",
        space: None,
        message: "the task writer thread has stopped, because keygate is shutting down".into(),
        retryable: false,
    }
}

fn run(store: Arc<dyn KvStore>, mut jobs: mpsc::Receiver<Job>) {
    let mut group = Vec::new();
    while let Some(first) = jobs.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let mut batch = WriteBatch::default();
        let mut waiting = Vec::new();
        for job in group.drain(..) {
            match job {
                Job::Synced(part, done) => {
                    batch.append(part);
                    waiting.push(done);
                }
                Job::Unsynced(part) => batch.append(part),
            }
        }
        let result = if waiting.is_empty() {
            store.write_unsynced(batch)
        } else {
            store.write(batch)
        };
        if let Err(error) = &result {
            warn!(%error, writes = waiting.len(), "a group of task writes failed");
        }
        for done in waiting {
            let _ = done.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_vault::{MemStore, Space};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_all_land() {
        let store: Arc<dyn KvStore> = Arc::new(MemStore::new());
        let writer = Arc::new(GroupWriter::start(store.clone()));
        let mut calls = Vec::new();
        for i in 0..200u32 {
            let writer = writer.clone();
            calls.push(tokio::spawn(async move {
                let mut batch = WriteBatch::default();
                batch.put(Space::Tasks, format!("k{i}"), i.to_be_bytes().to_vec());
                writer.write(batch).await
            }));
        }
        for call in calls {
            call.await.unwrap().unwrap();
        }
        let mut batch = WriteBatch::default();
        batch.delete(Space::Tasks, "k0");
        writer.write_unsynced(batch).unwrap();
        drop(Arc::try_unwrap(writer).ok().expect("the last handle"));

        assert_eq!(store.get(Space::Tasks, b"k0").unwrap(), None);
        for i in 1..200u32 {
            let key = format!("k{i}");
            let value = store.get(Space::Tasks, key.as_bytes()).unwrap();
            assert_eq!(value, Some(i.to_be_bytes().to_vec()), "{key}");
        }
    }
}
