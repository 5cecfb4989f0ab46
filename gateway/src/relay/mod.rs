//! The task relay: sends a task over its agent's session and records the result.

mod gates;
mod key_locks;
mod recover;
mod store;
mod table;
mod writer;

pub use gates::{AgentGate, AgentGates};
pub use key_locks::KeyLocks;
pub use recover::recover_tasks;
pub use store::{request_sha256, IdempotencyEntry, StoredTask, TaskStore, TaskStoreError};
pub use table::{CancelRefused, FinishedLimits, TaskStatus, TaskTable, TaskView};

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use keygate_protocol::{Frame, TaskOutcome};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tracing::{debug, info, warn, Instrument};

use crate::session::{SessionHandle, TaskReply};
use crate::state::SharedState;
use crate::telemetry::{Attribute, SpanKind, SpanStatus, SpanTimer, TraceContext};

/// An accepted task, as the relay needs it.
pub struct TaskSpec {
    pub task_id: String,
    pub agent_id: String,
    pub kind: String,
    pub payload: Bytes,
    /// Limit for the whole task, queueing included.
    pub timeout: Duration,
    /// Limit for the wait before the first send, when shorter than `timeout`.
    pub queue_timeout: Option<Duration>,
    /// The gateway's span for this task; the agent gets it as the parent of its own.
    pub trace: TraceContext,
    /// The caller's span, when the submission carried a `traceparent`.
    pub parent_span_id: Option<[u8; 8]>,
    /// Times the task was sent before, by an earlier run of the gateway.
    pub attempts: u32,
}

/// Signals that steer a queued or running task from outside the relay.
pub struct TaskControls {
    /// The agent's pause switch and queue count.
    pub gate: AgentGate,
    /// Turns true when a caller cancels the task.
    pub cancelled: watch::Receiver<bool>,
}

struct Outcome {
    status: TaskStatus,
    result: Option<Box<serde_json::value::RawValue>>,
    error: Option<String>,
    /// The agent's `traceparent` for its run of the task.
    agent_traceparent: Option<String>,
}

impl Outcome {
    fn failed(status: TaskStatus, error: String) -> Outcome {
        Outcome {
            status,
            result: None,
            error: Some(error),
            agent_traceparent: None,
        }
    }
}

/// Adds an accepted task to the table and starts relaying it. `view` is the
/// task as stored; `timeout` is the time it has left.
#[allow(clippy::too_many_arguments)]
pub fn spawn_task(
    state: &SharedState,
    account: &str,
    view: TaskView,
    payload: Bytes,
    idempotency_key: Option<String>,
    parent_span_id: Option<[u8; 8]>,
    trace: TraceContext,
    timeout: Duration,
    paused: bool,
) {
    let span = tracing::info_span!(
        "task",
        task.id = %view.id,
        agent.id = %view.agent_id,
        trace.id = %trace.trace_id_hex()
    );
    let spec = TaskSpec {
        task_id: view.id.clone(),
        agent_id: view.agent_id.clone(),
        kind: view.kind.clone(),
        payload,
        timeout,
        queue_timeout: queue_time_left(&view),
        trace,
        parent_span_id,
        attempts: view.attempts,
    };
    let controls = TaskControls {
        gate: state.gates.gate(&view.agent_id, paused),
        cancelled: state.tasks.insert(account, view, idempotency_key),
    };
    span.in_scope(
        || debug!(kind = %spec.kind, timeout_ms = timeout.as_millis() as u64, "task accepted"),
    );
    tokio::spawn(run_task(state.clone(), spec, controls).instrument(span));
}

/// Sends a task that is neither stored nor listed, and returns the agent's
/// JSON result or the failed status with its message. Secret lookups through
/// an agent go this way, because their results hold secret values; they are
/// lost if the gateway stops, and the caller retries.
pub async fn run_unlisted(
    state: &SharedState,
    agent_id: &str,
    paused: bool,
    kind: &str,
    payload: Bytes,
    timeout: Duration,
) -> Result<serde_json::Value, (TaskStatus, String)> {
    let trace = TraceContext::new_root(false);
    let spec = TaskSpec {
        task_id: format!("lkp_{}", crate::directory::random_hex(12)),
        agent_id: agent_id.to_owned(),
        kind: kind.to_owned(),
        payload,
        timeout,
        queue_timeout: None,
        trace,
        parent_span_id: None,
        attempts: 0,
    };
    // Nothing cancels an unlisted task; the sender only has to outlive it.
    let (_cancel, cancelled) = watch::channel(false);
    let mut controls = TaskControls {
        gate: state.gates.gate(agent_id, paused),
        cancelled,
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let outcome = relay(state, &spec, &mut controls, deadline).await;
    match (outcome.status, outcome.result) {
        (TaskStatus::Succeeded, Some(result)) => serde_json::from_str(result.get()).map_err(|e| {
            (
                TaskStatus::Failed,
                format!("the agent's result cannot be read: {e}"),
            )
        }),
        (status, _) => Err((
            status,
            outcome
                .error
                .unwrap_or_else(|| format!("the task ended {}", status.as_str())),
        )),
    }
}

/// Returns what is left of the task's queue timeout, for a task never sent.
fn queue_time_left(view: &TaskView) -> Option<Duration> {
    let limit = view.queue_timeout_ms.filter(|_| view.attempts == 0)?;
    let ends_at = view.created_at_ms.saturating_add(limit);
    Some(Duration::from_millis(
        ends_at.saturating_sub(crate::now_ms()),
    ))
}

/// Runs one accepted task to its end: waits while the agent is paused and
/// for a free slot on its session, sends it, waits for the result, and
/// records the outcome. Queued tasks move to the agent's next session when
/// the current one ends; tasks already sent fail with it.
pub async fn run_task(state: SharedState, spec: TaskSpec, mut controls: TaskControls) {
    let span = SpanTimer::start(
        format!("task {}", spec.kind),
        SpanKind::Server,
        &spec.trace,
        spec.parent_span_id,
    );
    let deadline = tokio::time::Instant::now() + spec.timeout;
    let mut stopping = state.relay_stop.subscribe();
    let outcome = tokio::select! {
        outcome = relay(&state, &spec, &mut controls, deadline) => outcome,
        () = became(&mut stopping, true) => {
            // The stored record keeps the task's last status; the next start
            // queues it again.
            debug!("the gateway stops; the task stays stored for the next start");
            return;
        }
    };
    state
        .metrics
        .tasks
        .with_label_values(&[outcome.status.as_str()])
        .inc();
    // One line per failed task at info, so an SRE finds it by its trace id
    // without debug logging. Successes stay at debug because they would flood the log.
    if outcome.status == TaskStatus::Succeeded {
        debug!(status = outcome.status.as_str(), "task finished");
    } else {
        info!(
            status = outcome.status.as_str(),
            error = outcome.error.as_deref().unwrap_or(""),
            "task did not succeed"
        );
    }

    let status = match (outcome.status, &outcome.error) {
        (TaskStatus::Succeeded, _) => SpanStatus::Ok,
        (_, Some(error)) => SpanStatus::Error(error.clone()),
        (_, None) => SpanStatus::Unset,
    };
    let mut attributes = vec![
        Attribute::new("keygate.task.id", spec.task_id.as_str()),
        Attribute::new("keygate.agent.id", spec.agent_id.as_str()),
        Attribute::new("keygate.task.kind", spec.kind.as_str()),
        Attribute::new("keygate.task.status", outcome.status.as_str()),
    ];
    if let Some(agent) = &outcome.agent_traceparent {
        attributes.push(Attribute::new("keygate.agent.traceparent", agent.as_str()));
    }
    if spec.trace.sampled() {
        state.telemetry.record(span.finish(status, attributes));
    }

    state.tasks.update(&spec.task_id, |view| {
        view.status = outcome.status;
        view.result = outcome.result;
        view.error = outcome.error;
    });
}

async fn relay(
    state: &SharedState,
    spec: &TaskSpec,
    controls: &mut TaskControls,
    deadline: tokio::time::Instant,
) -> Outcome {
    let max_attempts = state.config.gateway.max_delivery_attempts.max(1);
    let mut attempts = spec.attempts;
    let queue_deadline = spec
        .queue_timeout
        .map(|limit| (tokio::time::Instant::now() + limit).min(deadline));
    loop {
        let mut queued = gates::QueuedGuard::new(&controls.gate.queued);
        // Only the wait before the first send has its own, shorter limit.
        let wait_until = match queue_deadline {
            Some(queue_deadline) if attempts == 0 => queue_deadline,
            _ => deadline,
        };
        let (session, _permit) = match wait_for_slot(state, spec, controls, wait_until).await {
            Ok(slot) => slot,
            Err(outcome) if wait_until < deadline && outcome.status == TaskStatus::TimedOut => {
                return Outcome::failed(
                    TaskStatus::TimedOut,
                    format!(
                        "agent {} did not take the task before its queue_timeout_ms ran out",
                        spec.agent_id
                    ),
                )
            }
            Err(outcome) => return outcome,
        };
        queued.release();
        attempts += 1;
        match deliver(state, spec, controls, deadline, &session, attempts).await {
            Delivery::Done(outcome) => return outcome,
            Delivery::SessionEnded if attempts < max_attempts => {
                debug!(session.id = %session.session_id, attempts, "the session ended before the result; the task is queued again");
                state
                    .tasks
                    .update(&spec.task_id, |v| v.status = TaskStatus::Queued);
            }
            Delivery::SessionEnded => {
                let mut outcome = disconnected(&session);
                if attempts > 1 {
                    outcome.error = outcome
                        .error
                        .map(|e| format!("{e}, on each of {attempts} attempts"));
                }
                return outcome;
            }
        }
    }
}

/// The end of one send of a task.
enum Delivery {
    Done(Outcome),
    /// The session ended before the result arrived; the task may be sent again.
    SessionEnded,
}

/// Sends the task on `session` and waits for its result, a cancel or the deadline.
async fn deliver(
    state: &SharedState,
    spec: &TaskSpec,
    controls: &mut TaskControls,
    deadline: tokio::time::Instant,
    session: &SessionHandle,
    attempt: u32,
) -> Delivery {
    let task_id = spec.task_id.as_str();
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    let frame = Frame::Task {
        task_id: task_id.to_owned(),
        kind: spec.kind.clone(),
        timeout_ms: remaining.as_millis().min(u32::MAX as u128) as u32,
        traceparent: (session.protocol_version >= 3).then(|| spec.trace.to_header()),
        payload: spec.payload.clone(),
    };
    let reply = session.expect_result(task_id);
    // Agents before protocol version 3 do not confirm receipt.
    let confirms = session.protocol_version >= 3;
    state.tasks.update(task_id, |v| {
        let now = crate::now_ms();
        v.status = if confirms {
            TaskStatus::Dispatched
        } else {
            TaskStatus::Running
        };
        v.dispatched_at_ms = Some(now);
        v.started_at_ms = (!confirms).then_some(now);
        v.attempts = attempt;
    });
    let sent_at = Instant::now();
    if !session.send(crate::session::encode_frame(&frame)).await {
        session.abandon(task_id);
        return Delivery::SessionEnded;
    }
    debug!(session.id = %session.session_id, attempt, "task sent");

    tokio::select! {
        reply = reply => match reply {
            Ok(TaskReply::Done { outcome, traceparent, payload }) => {
                state
                    .metrics
                    .relay_duration
                    .observe(sent_at.elapsed().as_secs_f64());
                let mut done = finished(session, outcome, payload);
                done.agent_traceparent = traceparent;
                Delivery::Done(done)
            }
            Ok(TaskReply::SessionClosed) | Err(_) => Delivery::SessionEnded,
        },
        () = became(&mut controls.cancelled, true) => {
            let sent = session.cancel_on_agent(task_id, "cancelled by the caller").await;
            debug!(cancel_sent = sent, "task cancelled while the agent ran it");
            Delivery::Done(Outcome::failed(
                TaskStatus::Cancelled,
                format!("cancelled while agent {} ran it", spec.agent_id),
            ))
        }
        () = tokio::time::sleep_until(deadline) => {
            session.cancel_on_agent(task_id, "the task timed out at the gateway").await;
            Delivery::Done(timed_out(spec))
        }
    }
}

/// Waits until the agent is not paused and one of its sessions has a free
/// slot, and returns both. Returns the outcome instead when the task is
/// cancelled or its time runs out first.
async fn wait_for_slot(
    state: &SharedState,
    spec: &TaskSpec,
    controls: &mut TaskControls,
    deadline: tokio::time::Instant,
) -> Result<(Arc<SessionHandle>, OwnedSemaphorePermit), Outcome> {
    let cancelled_early = || {
        Outcome::failed(
            TaskStatus::Cancelled,
            format!("cancelled before it was sent to agent {}", spec.agent_id),
        )
    };
    loop {
        tokio::select! {
            biased;
            () = became(&mut controls.cancelled, true) => return Err(cancelled_early()),
            () = became(&mut controls.gate.paused, false) => {}
            () = tokio::time::sleep_until(deadline) => return Err(timed_out(spec)),
        }
        let mut registrations = state.sessions.registrations();
        let sessions = tokio::select! {
            biased;
            () = became(&mut controls.cancelled, true) => return Err(cancelled_early()),
            sessions = state.sessions.accepting(&spec.agent_id, deadline) => match sessions {
                Some(sessions) => sessions,
                None => return Err(timed_out(spec)),
            },
        };
        // The instance with the most free slots is polled first, so it wins
        // when several have one.
        let waited = tokio::select! {
            biased;
            () = became(&mut controls.cancelled, true) => Err(cancelled_early()),
            () = tokio::time::sleep_until(deadline) => Err(timed_out(spec)),
            () = became(&mut controls.gate.paused, true) => Ok(None),
            _ = registrations.changed() => Ok(None),
            () = first_stops_accepting(&sessions) => Ok(None),
            slot = first_free_slot(&sessions) => Ok(slot),
        };
        match waited? {
            Some((index, permit))
                if sessions[index].is_accepting() && !*controls.gate.paused.borrow() =>
            {
                return Ok((sessions[index].clone(), permit))
            }
            _ => continue,
        }
    }
}

/// Resolves with the index of the first session that hands out a slot, and
/// the slot. Waiting in every session's queue at once lets a task go to
/// whichever instance frees a slot first; the queues of the others forget
/// the task when this future is dropped.
async fn first_free_slot(sessions: &[Arc<SessionHandle>]) -> Option<(usize, OwnedSemaphorePermit)> {
    let mut acquires: Vec<_> = sessions
        .iter()
        .map(|s| Box::pin(s.slots.clone().acquire_owned()))
        .collect();
    std::future::poll_fn(|cx| {
        for (index, acquire) in acquires.iter_mut().enumerate() {
            if let std::task::Poll::Ready(result) = acquire.as_mut().poll(cx) {
                return std::task::Poll::Ready(result.ok().map(|permit| (index, permit)));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Resolves when any of the sessions stops taking new tasks.
async fn first_stops_accepting(sessions: &[Arc<SessionHandle>]) {
    let mut stops: Vec<_> = sessions
        .iter()
        .map(|s| Box::pin(s.stopped_accepting()))
        .collect();
    std::future::poll_fn(|cx| {
        for stop in stops.iter_mut() {
            if stop.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Resolves once the watched value equals `value`; never, if the sender is gone.
async fn became(rx: &mut watch::Receiver<bool>, value: bool) {
    let reached = rx.wait_for(|v| *v == value).await.is_ok();
    if !reached {
        std::future::pending::<()>().await;
    }
}

fn finished(session: &SessionHandle, outcome: TaskOutcome, payload: Bytes) -> Outcome {
    match outcome {
        TaskOutcome::Succeeded => {
            match serde_json::from_slice::<Box<serde_json::value::RawValue>>(&payload) {
                Ok(value) => Outcome {
                    status: TaskStatus::Succeeded,
                    result: Some(value),
                    error: None,
                    agent_traceparent: None,
                },
                Err(e) => {
                    warn!(agent.id = %session.agent_id, error = %e, "agent returned a result that is not JSON");
                    Outcome::failed(
                        TaskStatus::Failed,
                        format!("the agent returned a result that is not valid JSON: {e}"),
                    )
                }
            }
        }
        TaskOutcome::Failed => Outcome::failed(
            TaskStatus::Failed,
            String::from_utf8_lossy(&payload)
                .chars()
                .take(4096)
                .collect(),
        ),
    }
}

fn timed_out(spec: &TaskSpec) -> Outcome {
    Outcome::failed(
        TaskStatus::TimedOut,
        format!(
            "agent {} did not return a result within {} ms",
            spec.agent_id,
            spec.timeout.as_millis()
        ),
    )
}

fn disconnected(session: &SessionHandle) -> Outcome {
    Outcome::failed(
        TaskStatus::AgentDisconnected,
        format!(
            "the session of agent {} ended before the task finished",
            session.agent_id
        ),
    )
}
