//! In-memory table of submitted tasks and their state, for waiting callers and polling.

use std::collections::HashMap;
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
    /// The agent's JSON result, for succeeded tasks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// What went wrong, for failed, timed-out and disconnected tasks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

struct Entry {
    account: String,
    state: watch::Sender<TaskView>,
}

#[derive(Default)]
pub struct TaskTable {
    entries: Mutex<HashMap<String, Entry>>,
}

impl TaskTable {
    pub fn insert(&self, account: &str, view: TaskView) {
        let id = view.id.clone();
        let (state, _) = watch::channel(view);
        self.entries.lock().expect("task table lock").insert(
            id,
            Entry {
                account: account.to_owned(),
                state,
            },
        );
    }

    /// Applies `change` to the task's view; finishing a task stamps `finished_at_ms`.
    pub fn update(&self, task_id: &str, change: impl FnOnce(&mut TaskView)) {
        let entries = self.entries.lock().expect("task table lock");
        if let Some(entry) = entries.get(task_id) {
            entry.state.send_modify(|view| {
                change(view);
                if view.status.is_final() && view.finished_at_ms.is_none() {
                    view.finished_at_ms = Some(crate::now_ms());
                }
            });
        }
    }

    /// The task's current view, if it exists and belongs to `account`.
    pub fn get(&self, account: &str, task_id: &str) -> Option<TaskView> {
        let entries = self.entries.lock().expect("task table lock");
        let entry = entries.get(task_id).filter(|e| e.account == account)?;
        let view = entry.state.borrow().clone();
        Some(view)
    }

    /// Waits up to `wait` for the task to finish; returns its view at that time.
    pub async fn wait(&self, task_id: &str, wait: Duration) -> Option<TaskView> {
        let mut rx = {
            let entries = self.entries.lock().expect("task table lock");
            entries.get(task_id)?.state.subscribe()
        };
        let _ = tokio::time::timeout(wait, rx.wait_for(|v| v.status.is_final())).await;
        let view = rx.borrow().clone();
        Some(view)
    }

    /// Drops finished tasks older than `retention`; returns how many were removed.
    pub fn sweep(&self, retention: Duration) -> usize {
        let cutoff = crate::now_ms().saturating_sub(retention.as_millis() as u64);
        let mut entries = self.entries.lock().expect("task table lock");
        let before = entries.len();
        entries.retain(|_, e| e.state.borrow().finished_at_ms.is_none_or(|t| t > cutoff));
        before - entries.len()
    }

    pub fn len(&self) -> usize {
        self.entries.lock().expect("task table lock").len()
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
            result: None,
            error: None,
        }
    }

    #[test]
    fn other_account_cannot_read() {
        let table = TaskTable::default();
        table.insert("acme", view("t1"));
        assert!(table.get("acme", "t1").is_some());
        assert!(table.get("other", "t1").is_none());
    }

    #[tokio::test]
    async fn wait_returns_on_finish_or_timeout() {
        let table = std::sync::Arc::new(TaskTable::default());
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
        let table = TaskTable::default();
        table.insert("acme", view("running"));
        table.insert("acme", view("done"));
        table.update("done", |v| v.status = TaskStatus::Failed);
        assert_eq!(table.sweep(Duration::from_secs(60)), 0);
        table.update("done", |v| v.finished_at_ms = Some(1));
        assert_eq!(table.sweep(Duration::from_secs(60)), 1);
        assert_eq!(table.len(), 1);
    }
}
