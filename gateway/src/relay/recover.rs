//! Loading stored tasks at start: finished ones become readable again, and
//! unfinished ones are queued for their agents once more.

use std::time::Duration;

use tracing::{info, warn};

use super::store::LoadedTask;
use super::{spawn_task, TaskStatus};
use crate::state::SharedState;
use crate::telemetry::TraceContext;

/// Loads every stored task into the task table and restarts the unfinished
/// ones with the time they have left. A task whose time ran out while the
/// gateway was down ends as timed out. Returns how many tasks were queued again.
pub fn recover_tasks(state: &SharedState) -> usize {
    let Some(store) = state.tasks.store() else {
        return 0;
    };
    let loaded = match store.load_all() {
        Ok(loaded) => loaded,
        Err(error) => {
            warn!(%error, "cannot load the stored tasks; unfinished tasks of the last run are not resumed");
            return 0;
        }
    };
    let (mut resumed, mut expired, mut finished) = (0, 0, 0);
    for task in loaded {
        match resume(state, task) {
            Resumed::Queued => resumed += 1,
            Resumed::Expired => expired += 1,
            Resumed::Finished => finished += 1,
        }
    }
    if resumed + expired + finished > 0 {
        info!(
            resumed,
            expired, finished, "tasks of the previous run loaded from the store"
        );
    }
    resumed
}

enum Resumed {
    Queued,
    Expired,
    Finished,
}

fn resume(state: &SharedState, task: LoadedTask) -> Resumed {
    let LoadedTask { stored, payload } = task;
    let mut view = stored.view;
    if view.status.is_final() {
        state
            .tasks
            .insert(&stored.account, view, stored.idempotency_key);
        return Resumed::Finished;
    }
    let deadline_ms = view.created_at_ms.saturating_add(view.timeout_ms);
    let remaining = deadline_ms.saturating_sub(crate::now_ms());
    let was_sent = view.attempts > 0;
    view.status = TaskStatus::Queued;
    let id = view.id.clone();
    if remaining == 0 {
        state
            .tasks
            .insert(&stored.account, view, stored.idempotency_key);
        state.tasks.update(&id, |v| {
            v.status = TaskStatus::TimedOut;
            v.error = Some(format!(
                "the gateway restarted and the task's {} ms ran out before agent {} could run it",
                v.timeout_ms, v.agent_id
            ));
        });
        return Resumed::Expired;
    }
    let trace = match TraceContext::parse(&view.traceparent) {
        Ok(context) => context,
        Err(_) => TraceContext::new_root(true),
    };
    let paused = state
        .agents
        .get(&view.agent_id)
        .ok()
        .flatten()
        .is_some_and(|agent| agent.paused);
    tracing::debug!(task.id = %id, was_sent, remaining_ms = remaining, "task queued again after a restart");
    spawn_task(
        state,
        &stored.account,
        view,
        payload,
        stored.idempotency_key,
        None,
        trace,
        Duration::from_millis(remaining),
        paused,
    );
    Resumed::Queued
}
