//! The task relay: sends a task over its agent's session and records the result.

mod table;

pub use table::{TaskStatus, TaskTable, TaskView};

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use keygate_protocol::{Frame, TaskOutcome};
use tracing::{debug, warn};

use crate::session::{SessionHandle, TaskReply};
use crate::state::SharedState;

/// Runs one accepted task to its end: waits for a free slot on the agent,
/// sends it, waits for the result, and records the outcome. The whole task,
/// queueing included, is bounded by `timeout`.
pub async fn run_task(
    state: SharedState,
    session: Arc<SessionHandle>,
    task_id: String,
    kind: String,
    payload: Bytes,
    timeout: Duration,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    let status = relay(
        &state, &session, &task_id, &kind, payload, timeout, deadline,
    )
    .await;
    let (status, result, error) = status;
    state
        .metrics
        .tasks
        .with_label_values(&[status.as_str()])
        .inc();
    state.tasks.update(&task_id, |view| {
        view.status = status;
        view.result = result;
        view.error = error;
    });
}

type Outcome = (TaskStatus, Option<serde_json::Value>, Option<String>);

async fn relay(
    state: &SharedState,
    session: &SessionHandle,
    task_id: &str,
    kind: &str,
    payload: Bytes,
    timeout: Duration,
    deadline: tokio::time::Instant,
) -> Outcome {
    let timed_out = || {
        (
            TaskStatus::TimedOut,
            None,
            Some(format!(
                "agent {} did not return a result within {} ms",
                session.agent_id,
                timeout.as_millis()
            )),
        )
    };

    session.queued.fetch_add(1, Ordering::Relaxed);
    let permit = tokio::time::timeout_at(deadline, session.slots.clone().acquire_owned()).await;
    session.queued.fetch_sub(1, Ordering::Relaxed);
    let _permit = match permit {
        Ok(Ok(permit)) => permit,
        Ok(Err(_)) => return disconnected(session),
        Err(_) => return timed_out(),
    };

    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    let frame = Frame::Task {
        task_id: task_id.to_owned(),
        kind: kind.to_owned(),
        timeout_ms: remaining.as_millis().min(u32::MAX as u128) as u32,
        payload,
    };
    let reply = session.expect_result(task_id);
    state
        .tasks
        .update(task_id, |v| v.status = TaskStatus::Running);
    let sent_at = Instant::now();
    if !session.send(crate::session::encode_frame(&frame)).await {
        session.abandon(task_id);
        return disconnected(session);
    }
    debug!(task.id = task_id, agent.id = %session.agent_id, "task sent");

    match tokio::time::timeout_at(deadline, reply).await {
        Ok(Ok(TaskReply::Done { outcome, payload })) => {
            state
                .metrics
                .relay_duration
                .observe(sent_at.elapsed().as_secs_f64());
            match outcome {
                TaskOutcome::Succeeded => match serde_json::from_slice(&payload) {
                    Ok(value) => (TaskStatus::Succeeded, Some(value), None),
                    Err(e) => {
                        warn!(task.id = task_id, agent.id = %session.agent_id, error = %e, "agent returned a result that is not JSON");
                        (
                            TaskStatus::Failed,
                            None,
                            Some(format!(
                                "the agent returned a result that is not valid JSON: {e}"
                            )),
                        )
                    }
                },
                TaskOutcome::Failed => (
                    TaskStatus::Failed,
                    None,
                    Some(
                        String::from_utf8_lossy(&payload)
                            .chars()
                            .take(4096)
                            .collect(),
                    ),
                ),
            }
        }
        Ok(Ok(TaskReply::SessionClosed)) | Ok(Err(_)) => disconnected(session),
        Err(_) => {
            session.abandon(task_id);
            timed_out()
        }
    }
}

fn disconnected(session: &SessionHandle) -> Outcome {
    (
        TaskStatus::AgentDisconnected,
        None,
        Some(format!(
            "the session of agent {} ended before the task finished",
            session.agent_id
        )),
    )
}
