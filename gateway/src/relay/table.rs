//! In-memory table of submitted tasks and their state, for waiting callers and polling.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

/// Lifecycle of a task as callers see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Accepted, waiting for a free slot on the agent.
    Queued,
    /// Sent to the agent.
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
        !matches!(self, TaskStatus::Queued | TaskStatus::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
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
#[derive(Clone, Debug, Serialize)]
pub struct TaskView {
    pub id: String,
    pub agent_id: String,
    pub kind: String,
    pub status: TaskStatus,
    pub timeout_ms: u64,
    pub created_at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// W3C `traceparent` of the gateway's span for this task: the caller's
    /// trace, or a new one when the submission carried none.
    pub traceparent: String,
    /// The agent's JSON result, for succeeded tasks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Error message, for failed, timed-out and disconnected tasks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

struct Entry {
    account: String,
    state: watch::Sender<TaskView>,
    /// Set to true to cancel the task; the relay watches it.
    cancel: watch::Sender<bool>,
}

/// Why a task cannot be cancelled.
#[derive(Debug)]
pub enum CancelRefused {
    /// No such task for the account, or its result has expired.
    NotFound,
    /// The task already ended with the status in the view.
    Finished(Box<TaskView>),
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Finished tasks in the order they finished, with their finish time.
    finished: VecDeque<(u64, String)>,
}

/// Tasks by id. Finished tasks are dropped after the retention time, or
/// oldest first once more than `max_finished` have accumulated, so memory
/// stays bounded under any task rate.
pub struct TaskTable {
    inner: Mutex<Inner>,
    max_finished: usize,
}

impl TaskTable {
    pub fn new(max_finished: usize) -> TaskTable {
        TaskTable {
            inner: Mutex::new(Inner::default()),
            max_finished,
        }
    }

    /// Adds a task; returns the receiver that turns true when the task is cancelled.
    pub fn insert(&self, account: &str, view: TaskView) -> watch::Receiver<bool> {
        let id = view.id.clone();
        let (state, _) = watch::channel(view);
        let (cancel, cancelled) = watch::channel(false);
        let entry = Entry {
            account: account.to_owned(),
            state,
            cancel,
        };
        self.inner
            .lock()
            .expect("task table lock")
            .entries
            .insert(id, entry);
        cancelled
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

    /// Applies `change` to the task's view; finishing a task stamps `finished_at_ms`.
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
                finished_now = Some(now);
            }
        });
        if let Some(at) = finished_now {
            inner.finished.push_back((at, task_id.to_owned()));
            while inner.finished.len() > self.max_finished {
                if let Some((_, oldest)) = inner.finished.pop_front() {
                    inner.entries.remove(&oldest);
                }
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
        let mut removed = 0;
        while inner.finished.front().is_some_and(|(at, _)| *at <= cutoff) {
            if let Some((_, id)) = inner.finished.pop_front() {
                inner.entries.remove(&id);
                removed += 1;
            }
        }
        removed
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("task table lock").entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: &str) -> TaskView {
        TaskView {
            id: id.into(),
            agent_id: "agt_1".into(),
            kind: "echo".into(),
            status: TaskStatus::Queued,
            timeout_ms: 1000,
            created_at_ms: crate::now_ms(),
            finished_at_ms: None,
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            result: None,
            error: None,
        }
    }

    #[test]
    fn cancel_reaches_the_relay_once_and_not_after_the_end() {
        let table = TaskTable::new(10);
        let cancelled = table.insert("acme", view("t1"));
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
        let table = TaskTable::new(10);
        table.insert("acme", view("t1"));
        assert!(table.get("acme", "t1").is_some());
        assert!(table.get("other", "t1").is_none());
    }

    #[tokio::test]
    async fn wait_returns_on_finish_or_timeout() {
        let table = std::sync::Arc::new(TaskTable::new(10));
        table.insert("acme", view("t1"));
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
        let table = TaskTable::new(10);
        table.insert("acme", view("running"));
        table.insert("acme", view("done"));
        table.update("done", |v| v.status = TaskStatus::Failed);
        assert_eq!(table.sweep(Duration::from_secs(60)), 0);
        assert_eq!(table.sweep(Duration::ZERO), 1);
        assert_eq!(table.len(), 1);
        assert!(table.get("acme", "running").is_some());
    }

    #[test]
    fn finished_tasks_capped_oldest_first() {
        let table = TaskTable::new(2);
        table.insert("acme", view("running"));
        for id in ["t1", "t2", "t3"] {
            table.insert("acme", view(id));
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
