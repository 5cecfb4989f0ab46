//! The table of submitted tasks and their state, for waiting callers and
//! polling. It lives in memory, and a task's final status goes to the task store.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::watch;
use tracing::warn;

use super::store::{StoredTask, TaskStore};

/// Lifecycle of a task as callers see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Accepted, waiting for the agent: a free slot, a resume or a session.
    Queued,
    /// Sent to the agent, which has not confirmed receipt yet.
    Dispatched,
    /// The agent confirmed receipt and runs it (agents older than protocol
    /// version 3 do not confirm; their tasks are running once sent).
    Running,
    Succeeded,
    /// The agent ran the task and reported an error.
    Failed,
    /// No result arrived within the task's timeout.
    TimedOut,
    /// The agent's session ended before the result arrived.
    AgentDisconnected,
    /// Cancelled by `DELETE /v1/tasks/{id}`.
    Cancelled,
}

impl TaskStatus {
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            TaskStatus::Queued | TaskStatus::Dispatched | TaskStatus::Running
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Dispatched => "dispatched",
            TaskStatus::Running => "running",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::TimedOut => "timed_out",
            TaskStatus::AgentDisconnected => "agent_disconnected",
            TaskStatus::Cancelled => "cancelled",
        }
    }
}

/// A task as returned by the API.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskView {
    pub id: String,
    pub agent_id: String,
    pub kind: String,
    pub status: TaskStatus,
    pub timeout_ms: u64,
    /// Maximum wait before the task is first sent; without it, the whole
    /// `timeout_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout_ms: Option<u64>,
    pub created_at_ms: u64,
    /// When the task was last sent to the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatched_at_ms: Option<u64>,
    /// When the agent last confirmed receipt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// How many times the task was sent; above 1 after a session ended
    /// before its result arrived, or after a gateway restart.
    #[serde(default)]
    pub attempts: u32,
    /// W3C `traceparent` of the gateway's span for this task: the caller's
    /// trace, or a new one when the submission carried none.
    pub traceparent: String,
    /// The agent's JSON result, for succeeded tasks, as the agent sent it.
    /// Kept as text, because a parsed `serde_json::Value` takes more memory than its text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<RawValue>>,
    /// Error message, for failed, timed-out, disconnected and cancelled tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl TaskView {
    /// Creates the view of a task just accepted: queued, created now.
    pub fn new(
        id: &str,
        agent_id: &str,
        kind: &str,
        timeout_ms: u64,
        traceparent: &str,
    ) -> TaskView {
        TaskView {
            id: id.to_owned(),
            agent_id: agent_id.to_owned(),
            kind: kind.to_owned(),
            status: TaskStatus::Queued,
            timeout_ms,
            queue_timeout_ms: None,
            created_at_ms: crate::now_ms(),
            dispatched_at_ms: None,
            started_at_ms: None,
            finished_at_ms: None,
            attempts: 0,
            traceparent: traceparent.to_owned(),
            result: None,
            error: None,
        }
    }
}

struct Entry {
    account: String,
    idempotency_key: Option<String>,
    state: watch::Sender<TaskView>,
    /// Set to true to cancel the task; the relay watches it.
    cancel: watch::Sender<bool>,
}

/// The reason a task cannot be cancelled.
#[derive(Debug)]
pub enum CancelRefused {
    /// No such task for the account, or its result has expired.
    NotFound,
    /// The task already ended with the status in the view.
    Finished(Box<TaskView>),
}

/// A finished task in the order of finishing.
struct Finished {
    at_ms: u64,
    id: String,
    /// Length of its result text.
    result_bytes: usize,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Finished tasks in the order they finished.
    finished: VecDeque<Finished>,
    /// Sum of `result_bytes` over `finished`.
    finished_result_bytes: usize,
}

impl Inner {
    fn push_finished(&mut self, at_ms: u64, id: String, result_bytes: usize) {
        self.finished_result_bytes += result_bytes;
        self.finished.push_back(Finished {
            at_ms,
            id,
            result_bytes,
        });
    }

    /// Removes the oldest finished task and returns its id.
    fn pop_finished(&mut self) -> Option<String> {
        let oldest = self.finished.pop_front()?;
        self.finished_result_bytes -= oldest.result_bytes;
        self.entries.remove(&oldest.id);
        Some(oldest.id)
    }
}

/// How many finished tasks a table keeps, at most.
#[derive(Clone, Copy, Debug)]
pub struct FinishedLimits {
    pub max_tasks: usize,
    /// Bytes of result text over all finished tasks.
    pub max_result_bytes: usize,
}

impl FinishedLimits {
    /// Limits by count only, for tests.
    pub fn tasks(max_tasks: usize) -> FinishedLimits {
        FinishedLimits {
            max_tasks,
            max_result_bytes: usize::MAX,
        }
    }
}

/// Tasks by id. Finished tasks are dropped after the retention time, or
/// oldest first once their count or the size of their results exceeds its
/// limit, so memory stays bounded under any task rate.
pub struct TaskTable {
    inner: Mutex<Inner>,
    limits: FinishedLimits,
    /// The store that receives final statuses; None in unit tests.
    store: Option<TaskStore>,
}

impl TaskTable {
    pub fn new(limits: FinishedLimits) -> TaskTable {
        TaskTable {
            inner: Mutex::new(Inner::default()),
            limits,
            store: None,
        }
    }

    /// Creates a table that writes each task's final status to `store`.
    pub fn with_store(limits: FinishedLimits, store: TaskStore) -> TaskTable {
        TaskTable {
            store: Some(store),
            ..TaskTable::new(limits)
        }
    }

    pub fn store(&self) -> Option<&TaskStore> {
        self.store.as_ref()
    }

    /// Adds a task whose record is already stored; returns the receiver that
    /// turns true when the task is cancelled. A finished task (loaded at
    /// start) joins the finished ones and expires like them.
    pub fn insert(
        &self,
        account: &str,
        view: TaskView,
        idempotency_key: Option<String>,
    ) -> watch::Receiver<bool> {
        let id = view.id.clone();
        let finished_at = view.finished_at_ms.filter(|_| view.status.is_final());
        let result_bytes = result_bytes(&view);
        let (state, _) = watch::channel(view);
        let (cancel, cancelled) = watch::channel(false);
        let entry = Entry {
            account: account.to_owned(),
            idempotency_key,
            state,
            cancel,
        };
        let mut inner = self.inner.lock().expect("task table lock");
        inner.entries.insert(id.clone(), entry);
        if let Some(at) = finished_at {
            inner.push_finished(at, id, result_bytes);
            let dropped = self.drop_excess(&mut inner);
            drop(inner);
            self.forget(&dropped);
        }
        cancelled
    }

    /// Returns the account and current view of a task, whatever its account.
    pub fn lookup(&self, task_id: &str) -> Option<(String, TaskView)> {
        let inner = self.inner.lock().expect("task table lock");
        let entry = inner.entries.get(task_id)?;
        let view = entry.state.borrow().clone();
        Some((entry.account.clone(), view))
    }

    /// Asks the relay to cancel an unfinished task of `account`.
    pub fn request_cancel(&self, account: &str, task_id: &str) -> Result<(), CancelRefused> {
        let inner = self.inner.lock().expect("task table lock");
        let entry = inner
            .entries
            .get(task_id)
            .filter(|e| e.account == account)
            .ok_or(CancelRefused::NotFound)?;
        let view = entry.state.borrow().clone();
        if view.status.is_final() {
            return Err(CancelRefused::Finished(Box::new(view)));
        }
        entry.cancel.send_replace(true);
        Ok(())
    }

    /// Applies `change` to the task's view; finishing a task stamps
    /// `finished_at_ms` and writes the final view to the store. Statuses in
    /// between stay in memory: after a restart an unfinished task is queued
    /// again whatever it was doing, so storing them would buy nothing.
    pub fn update(&self, task_id: &str, change: impl FnOnce(&mut TaskView)) {
        let mut inner = self.inner.lock().expect("task table lock");
        let Some(entry) = inner.entries.get(task_id) else {
            return;
        };
        let mut finished_now = None;
        entry.state.send_modify(|view| {
            change(view);
            if view.status.is_final() && view.finished_at_ms.is_none() {
                let now = crate::now_ms();
                view.finished_at_ms = Some(now);
                finished_now = Some((now, result_bytes(view)));
            }
        });
        let stored = self
            .store
            .as_ref()
            .filter(|_| finished_now.is_some())
            .map(|_| StoredTask {
                account: entry.account.clone(),
                view: entry.state.borrow().clone(),
                idempotency_key: entry.idempotency_key.clone(),
            });
        let mut dropped = Vec::new();
        if let Some((at, result_bytes)) = finished_now {
            inner.push_finished(at, task_id.to_owned(), result_bytes);
            dropped = self.drop_excess(&mut inner);
        }
        drop(inner);
        if let (Some(store), Some(stored)) = (&self.store, stored) {
            if let Err(error) = store.update(&stored) {
                warn!(task.id = task_id, %error, "cannot store the task's new status; after a restart it may run again");
            }
        }
        self.forget(&dropped);
    }

    /// Drops the oldest finished tasks while either limit is exceeded; returns their ids.
    fn drop_excess(&self, inner: &mut Inner) -> Vec<String> {
        let mut dropped = Vec::new();
        while inner.finished.len() > self.limits.max_tasks
            || inner.finished_result_bytes > self.limits.max_result_bytes
        {
            match inner.pop_finished() {
                Some(id) => dropped.push(id),
                None => break,
            }
        }
        dropped
    }

    /// Deletes dropped tasks from the store.
    fn forget(&self, task_ids: &[String]) {
        if let Some(store) = &self.store {
            if let Err(error) = store.remove(task_ids) {
                warn!(tasks = task_ids.len(), %error, "cannot delete expired tasks from the store; the next start loads them again");
            }
        }
    }

    /// Returns the task's current view, if it exists and belongs to `account`.
    pub fn get(&self, account: &str, task_id: &str) -> Option<TaskView> {
        let inner = self.inner.lock().expect("task table lock");
        let entry = inner
            .entries
            .get(task_id)
            .filter(|e| e.account == account)?;
        let view = entry.state.borrow().clone();
        Some(view)
    }

    /// Waits up to `wait` for the task to finish; returns its view at that time.
    pub async fn wait(&self, task_id: &str, wait: Duration) -> Option<TaskView> {
        let mut rx = {
            let inner = self.inner.lock().expect("task table lock");
            inner.entries.get(task_id)?.state.subscribe()
        };
        let _ = tokio::time::timeout(wait, rx.wait_for(|v| v.status.is_final())).await;
        let view = rx.borrow().clone();
        Some(view)
    }

    /// Drops tasks that finished more than `retention` ago; returns how many.
    pub fn sweep(&self, retention: Duration) -> usize {
        let cutoff = crate::now_ms().saturating_sub(retention.as_millis() as u64);
        let mut inner = self.inner.lock().expect("task table lock");
        let mut removed = Vec::new();
        while inner.finished.front().is_some_and(|f| f.at_ms <= cutoff) {
            if let Some(id) = inner.pop_finished() {
                removed.push(id);
            }
        }
        drop(inner);
        self.forget(&removed);
        removed.len()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("task table lock").entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn result_bytes(view: &TaskView) -> usize {
    view.result.as_ref().map_or(0, |r| r.get().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: &str) -> TaskView {
        TaskView::new(
            id,
            "agt_1",
            "echo",
            1000,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
    }

    #[test]
    fn cancel_reaches_the_relay_once_and_not_after_the_end() {
        let table = TaskTable::new(FinishedLimits::tasks(10));
        let cancelled = table.insert("acme", view("t1"), None);
        assert!(matches!(
            table.request_cancel("other", "t1"),
            Err(CancelRefused::NotFound)
        ));
        assert!(!*cancelled.borrow());
        table.request_cancel("acme", "t1").unwrap();
        assert!(*cancelled.borrow());
        table.update("t1", |v| v.status = TaskStatus::Cancelled);
        match table.request_cancel("acme", "t1") {
            Err(CancelRefused::Finished(view)) => assert_eq!(view.status, TaskStatus::Cancelled),
            other => panic!("expected Finished, got {other:?}"),
        }
        assert!(matches!(
            table.request_cancel("acme", "missing"),
            Err(CancelRefused::NotFound)
        ));
    }

    #[test]
    fn other_account_cannot_read() {
        let table = TaskTable::new(FinishedLimits::tasks(10));
        table.insert("acme", view("t1"), None);
        assert!(table.get("acme", "t1").is_some());
        assert!(table.get("other", "t1").is_none());
    }

    #[tokio::test]
    async fn wait_returns_on_finish_or_timeout() {
        let table = std::sync::Arc::new(TaskTable::new(FinishedLimits::tasks(10)));
        table.insert("acme", view("t1"), None);
        let pending = table.wait("t1", Duration::from_millis(50)).await.unwrap();
        assert_eq!(pending.status, TaskStatus::Queued);

        let t = table.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            t.update("t1", |v| v.status = TaskStatus::Succeeded);
        });
        let done = table.wait("t1", Duration::from_secs(5)).await.unwrap();
        assert_eq!(done.status, TaskStatus::Succeeded);
        assert!(done.finished_at_ms.is_some());
    }

    #[test]
    fn sweep_keeps_unfinished_and_recent() {
        let table = TaskTable::new(FinishedLimits::tasks(10));
        table.insert("acme", view("running"), None);
        table.insert("acme", view("done"), None);
        table.update("done", |v| v.status = TaskStatus::Failed);
        assert_eq!(table.sweep(Duration::from_secs(60)), 0);
        assert_eq!(table.sweep(Duration::ZERO), 1);
        assert_eq!(table.len(), 1);
        assert!(table.get("acme", "running").is_some());
    }

    #[test]
    fn finished_results_capped_by_bytes() {
        let table = TaskTable::new(FinishedLimits {
            max_tasks: 100,
            max_result_bytes: 10,
        });
        for id in ["t1", "t2"] {
            table.insert("acme", view(id), None);
            table.update(id, |v| {
                v.status = TaskStatus::Succeeded;
                v.result = Some(RawValue::from_string("\"abcd\"".to_owned()).unwrap());
            });
        }
        assert!(
            table.get("acme", "t1").is_none(),
            "12 bytes of results exceed the limit of 10, so the oldest goes"
        );
        assert!(table.get("acme", "t2").is_some());

        table.insert("acme", view("t3"), None);
        table.update("t3", |v| v.status = TaskStatus::Failed);
        assert!(
            table.get("acme", "t2").is_some(),
            "a task without a result adds no bytes"
        );
    }

    #[test]
    fn finished_tasks_capped_oldest_first() {
        let table = TaskTable::new(FinishedLimits::tasks(2));
        table.insert("acme", view("running"), None);
        for id in ["t1", "t2", "t3"] {
            table.insert("acme", view(id), None);
            table.update(id, |v| v.status = TaskStatus::Succeeded);
        }
        assert!(
            table.get("acme", "t1").is_none(),
            "the oldest finished task is dropped"
        );
        assert!(table.get("acme", "t2").is_some());
        assert!(table.get("acme", "t3").is_some());
        assert!(
            table.get("acme", "running").is_some(),
            "unfinished tasks are never dropped"
        );
        assert_eq!(table.len(), 3);
    }
}
