//! Accepted tasks in the store, so a restart or crash loses none: the
//! record and payload of each task, and the idempotency keys of submissions.
//!
//! Layout in the `tasks` column family (task and agent ids never contain a
//! NUL byte; accounts and idempotency keys are printable ASCII):
//! - `t\0{task_id}`: JSON [`StoredTask`], written at acceptance and when the task ends;
//! - `p\0{task_id}`: the payload bytes, written once;
//! - `i\0{account}\0{agent_id}\0{key}`: JSON [`IdempotencyEntry`].
//!
//! Values are not encrypted: task payloads and results are the platform's
//! instructions to agents, and must not carry secret values (runners fetch
//! those from the vault).

use std::sync::Arc;

use bytes::Bytes;
use keygate_vault::{KvStore, Space, StoreError, WriteBatch};
use ring::digest;
use serde::{Deserialize, Serialize};

use super::table::TaskView;
use super::writer::GroupWriter;

const TASK: &[u8] = b"t\0";
const PAYLOAD: &[u8] = b"p\0";
const IDEMPOTENCY: &[u8] = b"i\0";
/// Records read per store call while loading or sweeping.
const SCAN_PAGE: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum TaskStoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the stored task {key} is not valid JSON: {reason}")]
    Corrupt { key: String, reason: String },
}

/// A task's record: its account and the view callers see.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredTask {
    pub account: String,
    pub view: TaskView,
    /// The submission's idempotency key, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// The task an idempotency key maps to, with the request that created it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyEntry {
    pub task_id: String,
    /// SHA-256 of the submission's kind, project and payload; a retry has
    /// the same digest, a reused key with another request does not.
    pub request_sha256: String,
    pub created_at_ms: u64,
}

/// A task loaded at start, with what the relay needs to run it again.
pub struct LoadedTask {
    pub stored: StoredTask,
    pub payload: Bytes,
}

/// The tasks of this node in the store.
#[derive(Clone)]
pub struct TaskStore {
    store: Arc<dyn KvStore>,
    /// Applies the writes of accepted and finished tasks in groups.
    writer: Arc<GroupWriter>,
}

impl TaskStore {
    /// Opens the task store on `store` and starts its writer thread.
    pub fn new(store: Arc<dyn KvStore>) -> TaskStore {
        TaskStore {
            writer: Arc::new(GroupWriter::start(store.clone())),
            store,
        }
    }

    /// Writes a newly accepted task, its payload and its idempotency entry in
    /// one synced batch. Concurrent calls share one batch and one disk sync.
    pub async fn accept(
        &self,
        task: &StoredTask,
        payload: &[u8],
        idempotency: Option<&IdempotencyEntry>,
    ) -> Result<(), TaskStoreError> {
        let mut batch = WriteBatch::default();
        batch.put(Space::Tasks, task_key(&task.view.id), to_json(task));
        batch.put(Space::Tasks, payload_key(&task.view.id), payload.to_vec());
        if let (Some(entry), Some(key)) = (idempotency, &task.idempotency_key) {
            batch.put(
                Space::Tasks,
                idempotency_key(&task.account, &task.view.agent_id, key),
                serde_json::to_vec(entry).expect("idempotency entries serialize"),
            );
        }
        self.writer.write(batch).await?;
        Ok(())
    }

    /// Returns once every write queued before the call is on disk.
    pub async fn flush(&self) -> Result<(), TaskStoreError> {
        self.writer.write(WriteBatch::default()).await?;
        Ok(())
    }

    /// Rewrites a task's record when it ends. The write reaches the
    /// write-ahead log but not necessarily the disk: after a power loss the
    /// task may come back unfinished and run again, which at-least-once
    /// delivery allows.
    pub fn update(&self, task: &StoredTask) -> Result<(), TaskStoreError> {
        let mut batch = WriteBatch::default();
        batch.put(Space::Tasks, task_key(&task.view.id), to_json(task));
        self.writer.write_unsynced(batch)?;
        Ok(())
    }

    /// Returns the entry of an idempotency key, if one was stored.
    pub fn idempotency(
        &self,
        account: &str,
        agent_id: &str,
        key: &str,
    ) -> Result<Option<IdempotencyEntry>, TaskStoreError> {
        let stored_key = idempotency_key(account, agent_id, key);
        let Some(value) = self.store.get(Space::Tasks, &stored_key)? else {
            return Ok(None);
        };
        serde_json::from_slice(&value)
            .map(Some)
            .map_err(|e| TaskStoreError::Corrupt {
                key: String::from_utf8_lossy(&stored_key).replace('\0', "/"),
                reason: e.to_string(),
            })
    }

    /// Reads a task's record.
    pub fn get(&self, task_id: &str) -> Result<Option<StoredTask>, TaskStoreError> {
        let key = task_key(task_id);
        match self.store.get(Space::Tasks, &key)? {
            Some(value) => parse_task(&key, &value).map(Some),
            None => Ok(None),
        }
    }

    /// Loads every stored task with its payload, oldest id order not implied.
    pub fn load_all(&self) -> Result<Vec<LoadedTask>, TaskStoreError> {
        let mut loaded = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self
                .store
                .scan_prefix(Space::Tasks, TASK, after.as_deref(), SCAN_PAGE)?;
            let Some(last) = page.last() else {
                break;
            };
            after = Some(last.0.clone());
            for entry in &page {
                let stored = parse_task(&entry.0, &entry.1)?;
                let payload = self
                    .store
                    .get(Space::Tasks, &payload_key(&stored.view.id))?
                    .unwrap_or_default();
                loaded.push(LoadedTask {
                    stored,
                    payload: Bytes::from(payload),
                });
            }
            if page.len() < SCAN_PAGE {
                break;
            }
        }
        Ok(loaded)
    }

    /// Deletes tasks whose results have expired.
    pub fn remove(&self, task_ids: &[String]) -> Result<(), TaskStoreError> {
        if task_ids.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        for id in task_ids {
            batch.delete(Space::Tasks, task_key(id));
            batch.delete(Space::Tasks, payload_key(id));
        }
        self.writer.write_unsynced(batch)?;
        Ok(())
    }

    /// Deletes idempotency entries created before `cutoff_ms`; returns how many.
    pub fn expire_idempotency(&self, cutoff_ms: u64) -> Result<usize, TaskStoreError> {
        let mut expired = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page =
                self.store
                    .scan_prefix(Space::Tasks, IDEMPOTENCY, after.as_deref(), SCAN_PAGE)?;
            let Some(last) = page.last() else {
                break;
            };
            after = Some(last.0.clone());
            for entry in &page {
                let created = serde_json::from_slice::<IdempotencyEntry>(&entry.1)
                    .map(|e| e.created_at_ms)
                    // An entry that cannot be read protects nothing; drop it.
                    .unwrap_or(0);
                if created < cutoff_ms {
                    expired.push(entry.0.clone());
                }
            }
            if page.len() < SCAN_PAGE {
                break;
            }
        }
        if !expired.is_empty() {
            let mut batch = WriteBatch::default();
            for key in &expired {
                batch.delete(Space::Tasks, key.clone());
            }
            self.store.write_unsynced(batch)?;
        }
        Ok(expired.len())
    }
}

/// Returns the hex SHA-256 that identifies a submission for its idempotency key.
pub fn request_sha256(kind: &str, project: Option<&str>, payload: &[u8]) -> String {
    let mut context = digest::Context::new(&digest::SHA256);
    for part in [kind.as_bytes(), project.unwrap_or("").as_bytes(), payload] {
        context.update(&(part.len() as u64).to_be_bytes());
        context.update(part);
    }
    context
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn task_key(task_id: &str) -> Vec<u8> {
    [TASK, task_id.as_bytes()].concat()
}

fn payload_key(task_id: &str) -> Vec<u8> {
    [PAYLOAD, task_id.as_bytes()].concat()
}

fn idempotency_key(account: &str, agent_id: &str, key: &str) -> Vec<u8> {
    [
        IDEMPOTENCY,
        account.as_bytes(),
        b"\0",
        agent_id.as_bytes(),
        b"\0",
        key.as_bytes(),
    ]
    .concat()
}

fn to_json(task: &StoredTask) -> Vec<u8> {
    serde_json::to_vec(task).expect("task records serialize")
}

fn parse_task(key: &[u8], value: &[u8]) -> Result<StoredTask, TaskStoreError> {
    serde_json::from_slice(value).map_err(|e| TaskStoreError::Corrupt {
        key: String::from_utf8_lossy(key).replace('\0', "/"),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use keygate_vault::MemStore;

    use super::*;
    use crate::relay::TaskStatus;

    fn stored(id: &str, key: Option<&str>) -> StoredTask {
        StoredTask {
            account: "acme".into(),
            view: TaskView::new(
                id,
                "agt_1",
                "echo",
                1000,
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            idempotency_key: key.map(str::to_owned),
        }
    }

    fn store() -> TaskStore {
        TaskStore::new(Arc::new(MemStore::new()))
    }

    #[tokio::test]
    async fn accepted_tasks_load_with_payload_and_status() {
        let tasks = store();
        let entry = IdempotencyEntry {
            task_id: "tsk_1".into(),
            request_sha256: request_sha256("echo", None, b"{}"),
            created_at_ms: 5,
        };
        tasks
            .accept(&stored("tsk_1", Some("k-1")), b"{\"n\":1}", Some(&entry))
            .await
            .unwrap();
        tasks
            .accept(&stored("tsk_2", None), b"2", None)
            .await
            .unwrap();
        let mut finished = stored("tsk_2", None);
        finished.view.status = TaskStatus::Succeeded;
        tasks.update(&finished).unwrap();
        tasks.flush().await.unwrap();

        let mut loaded = tasks.load_all().unwrap();
        loaded.sort_by(|a, b| a.stored.view.id.cmp(&b.stored.view.id));
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded[0].payload, Bytes::from_static(b"{\"n\":1}"));
        assert_eq!(loaded[0].stored.view.status, TaskStatus::Queued);
        assert_eq!(loaded[1].stored.view.status, TaskStatus::Succeeded);
        assert_eq!(
            tasks.idempotency("acme", "agt_1", "k-1").unwrap(),
            Some(entry)
        );
        assert_eq!(tasks.idempotency("other", "agt_1", "k-1").unwrap(), None);
        assert_eq!(tasks.idempotency("acme", "agt_2", "k-1").unwrap(), None);

        tasks.remove(&["tsk_1".to_owned()]).unwrap();
        tasks.flush().await.unwrap();
        assert!(tasks.get("tsk_1").unwrap().is_none());
        assert_eq!(tasks.load_all().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn idempotency_entries_expire_by_creation_time() {
        let tasks = store();
        for (id, key, created) in [("tsk_1", "old", 10), ("tsk_2", "new", 20)] {
            let entry = IdempotencyEntry {
                task_id: id.into(),
                request_sha256: String::new(),
                created_at_ms: created,
            };
            tasks
                .accept(&stored(id, Some(key)), b"1", Some(&entry))
                .await
                .unwrap();
        }
        assert_eq!(tasks.expire_idempotency(15).unwrap(), 1);
        assert!(tasks.idempotency("acme", "agt_1", "old").unwrap().is_none());
        assert!(tasks.idempotency("acme", "agt_1", "new").unwrap().is_some());
    }

    #[test]
    fn request_digest_separates_fields() {
        let a = request_sha256("echo", Some("p"), b"1");
        assert_eq!(a.len(), 64);
        assert_ne!(a, request_sha256("echo", None, b"1"));
        assert_ne!(a, request_sha256("echop", None, b"1"));
        assert_ne!(a, request_sha256("echo", Some("p"), b"2"));
        assert_eq!(a, request_sha256("echo", Some("p"), b"1"));
    }
}
