//! Task submission and polling.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use hyper::body::Incoming;
use keygate_auth::{Principal, Scope};
use serde::Deserialize;
use tracing::debug;

use super::agents::find_agent;
use crate::directory::AgentRecord;
use crate::http::body::{json_response, read_json, Response};
use crate::http::problem::ApiError;
use crate::http::{authenticate, require_scope, ConnInfo};
use crate::relay::{
    request_sha256, spawn_task, CancelRefused, IdempotencyEntry, StoredTask, TaskStatus,
    TaskStoreError, TaskView,
};
use crate::state::SharedState;
use crate::telemetry::TraceContext;

/// Default for `timeout_ms` when the caller sets none.
const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Default for `wait_ms` when the caller sets none.
const DEFAULT_WAIT_MS: u64 = 10_000;
const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");
/// Set on the response to a repeated submission.
const REPLAYED: http::HeaderName = http::HeaderName::from_static("idempotent-replayed");
const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;
/// How long a cancel request waits for the relay to end the task.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitTask {
    kind: String,
    #[serde(default)]
    payload: serde_json::Value,
    #[serde(default)]
    timeout_ms: Option<u64>,
    /// Maximum wait before the task is first sent to the agent; at most
    /// `timeout_ms`, which is also the default.
    #[serde(default)]
    queue_timeout_ms: Option<u64>,
    /// Time this call waits for the result before it returns 202; 0 returns at once.
    #[serde(default)]
    wait_ms: Option<u64>,
    /// The project the task works for; required by agents restricted to projects.
    #[serde(default)]
    project: Option<String>,
}

pub async fn submit(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    agent_id: &str,
) -> Result<Response, ApiError> {
    let principal = authenticate(state, conn, req.headers()).await?;
    require_scope(&principal, Scope::TasksWrite)?;
    if state.is_draining() {
        return Err(ApiError::shutting_down());
    }
    let (trace, parent_span_id) = task_trace(req.headers());
    let idempotency_key = idempotency_key(req.headers())?;
    let body: SubmitTask = read_json(req.into_body(), state.config.http.max_body_bytes).await?;
    validate_kind(&body.kind)?;
    let max_timeout = state.config.gateway.max_task_timeout_ms;
    let timeout_ms = body
        .timeout_ms
        .unwrap_or(DEFAULT_TIMEOUT_MS.min(max_timeout));
    if timeout_ms == 0 || timeout_ms > max_timeout {
        return Err(ApiError::bad_request(
            "invalid-input",
            format!("timeout_ms {timeout_ms} must be between 1 and {max_timeout}"),
        ));
    }
    let queue_timeout_ms = body.queue_timeout_ms.unwrap_or(timeout_ms);
    if queue_timeout_ms == 0 || queue_timeout_ms > timeout_ms {
        return Err(ApiError::bad_request(
            "invalid-input",
            format!("queue_timeout_ms {queue_timeout_ms} must be between 1 and timeout_ms ({timeout_ms})"),
        ));
    }
    let max_wait = state.config.gateway.max_wait_ms;
    let wait_ms = body.wait_ms.unwrap_or(DEFAULT_WAIT_MS).min(max_wait);
    let payload = Bytes::from(serde_json::to_vec(&body.payload).expect("JSON values serialize"));
    let max_payload = state.config.gateway.max_frame_bytes.saturating_sub(1024);
    if payload.len() > max_payload {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            format!(
                "the task payload is {} bytes; the limit is {max_payload}",
                payload.len()
            ),
        ));
    }

    let agent = find_agent(state, &principal.account, agent_id).await?;
    check_project(&principal, &agent, body.project.as_deref())?;

    // Submissions with the same key run one at a time from here until the
    // new task is stored, so two retries cannot both create a task.
    let reservation = match &idempotency_key {
        Some(key) => Some(state.idempotency_locks.lock(key).await),
        None => None,
    };
    let idempotency = match idempotency_key {
        Some(key) => {
            let request_sha256 = request_sha256(&body.kind, body.project.as_deref(), &payload);
            if let Some(task_id) =
                earlier_task(state, &principal.account, &agent.id, &key, &request_sha256)?
            {
                drop(reservation);
                return replay(state, &principal.account, &task_id, &key, wait_ms).await;
            }
            Some(Idempotency {
                key,
                request_sha256,
            })
        }
        None => None,
    };

    if agent.disabled {
        state
            .metrics
            .tasks
            .with_label_values(&["agent_disabled"])
            .inc();
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "agent-disabled",
            format!(
                "agent {} is disabled; enable it with POST /v1/agents/{}/enable",
                agent.id, agent.id
            ),
        ));
    }
    if !state.sessions.is_available(&agent.id) {
        state
            .metrics
            .tasks
            .with_label_values(&["agent_not_connected"])
            .inc();
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "agent-not-connected",
            format!(
                "agent {} is not connected; start the agent or check its logs, then retry",
                agent.id
            ),
        ));
    }
    let max_queued = state.config.gateway.max_queued_tasks_per_agent;
    if state.gates.queued(&agent.id) >= max_queued {
        state
            .metrics
            .tasks
            .with_label_values(&["rejected_queue_full"])
            .inc();
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "agent-queue-full",
            format!(
                "agent {} has {max_queued} tasks waiting to be sent; retry later",
                agent.id
            ),
        )
        .with_header(http::header::RETRY_AFTER, "1"));
    }

    let task_id = format!("tsk_{}", crate::directory::random_hex(12));
    let mut view = TaskView::new(
        &task_id,
        &agent.id,
        &body.kind,
        timeout_ms,
        &trace.to_header(),
    );
    view.queue_timeout_ms = body.queue_timeout_ms;
    let stored = StoredTask {
        account: principal.account.clone(),
        view: view.clone(),
        idempotency_key: idempotency.as_ref().map(|i| i.key.clone()),
    };
    let entry = idempotency.as_ref().map(|i| IdempotencyEntry {
        task_id: task_id.clone(),
        request_sha256: i.request_sha256.clone(),
        created_at_ms: view.created_at_ms,
    });
    if let Some(store) = state.tasks.store().cloned() {
        store
            .accept(&stored, &payload, entry.as_ref())
            .await
            .map_err(|e| task_store_error(&e))?;
    }
    spawn_task(
        state,
        &principal.account,
        view,
        payload,
        idempotency.map(|i| i.key),
        parent_span_id,
        trace,
        Duration::from_millis(timeout_ms),
        agent.paused,
    );
    drop(reservation);

    let view = state
        .tasks
        .wait(&task_id, Duration::from_millis(wait_ms))
        .await
        .ok_or_else(|| {
            ApiError::internal(format!("task {task_id} vanished from the task table"))
        })?;
    finished_response(view)
}

/// A submission's idempotency key and the digest of its request.
struct Idempotency {
    key: String,
    request_sha256: String,
}

/// Returns the `Idempotency-Key` header, or None when absent. A key is 1 to
/// 255 visible ASCII characters.
fn idempotency_key(headers: &http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let valid = (1..=MAX_IDEMPOTENCY_KEY_BYTES).contains(&value.len())
        && value.as_bytes().iter().all(|b| (0x21..=0x7e).contains(b));
    if !valid {
        let shown = String::from_utf8_lossy(value.as_bytes())
            .chars()
            .take(80)
            .collect::<String>();
        return Err(ApiError::bad_request(
            "invalid-input",
            format!(
                "Idempotency-Key {shown:?} must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} visible ASCII characters without spaces"
            ),
        ));
    }
    Ok(Some(
        value
            .to_str()
            .expect("checked to be visible ASCII")
            .to_owned(),
    ))
}

/// Returns the task an earlier submission with this key created within the
/// idempotency window, or 422 when that submission asked for something else.
fn earlier_task(
    state: &SharedState,
    account: &str,
    agent_id: &str,
    key: &str,
    request_sha256: &str,
) -> Result<Option<String>, ApiError> {
    let Some(store) = state.tasks.store() else {
        return Ok(None);
    };
    let entry = store
        .idempotency(account, agent_id, key)
        .map_err(|e| task_store_error(&e))?;
    let window_ms = state.config.gateway.idempotency_window_secs * 1000;
    let Some(entry) = entry.filter(|e| e.created_at_ms + window_ms > crate::now_ms()) else {
        return Ok(None);
    };
    if entry.request_sha256 != request_sha256 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            format!(
                "Idempotency-Key {key:?} was used for task {} with another kind, project or payload; use a new key for a new task",
                entry.task_id
            ),
        )
        .with_member("task_id", serde_json::json!(entry.task_id)));
    }
    Ok(Some(entry.task_id))
}

/// Returns, for a repeated submission, the task the first one created.
async fn replay(
    state: &SharedState,
    account: &str,
    task_id: &str,
    key: &str,
    wait_ms: u64,
) -> Result<Response, ApiError> {
    if state.tasks.get(account, task_id).is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "task-expired",
            format!(
                "Idempotency-Key {key:?} belongs to task {task_id}, which finished and whose result has expired"
            ),
        )
        .with_member("task_id", serde_json::json!(task_id)));
    }
    debug!(
        task.id = task_id,
        "repeated submission answered with the existing task"
    );
    let view = state
        .tasks
        .wait(task_id, Duration::from_millis(wait_ms))
        .await
        .ok_or_else(|| {
            ApiError::internal(format!("task {task_id} vanished from the task table"))
        })?;
    finished_response(view).map(|mut response| {
        response
            .headers_mut()
            .insert(REPLAYED, http::HeaderValue::from_static("true"));
        response
    })
}

/// Maps a task store failure to the problem the caller gets.
fn task_store_error(error: &TaskStoreError) -> ApiError {
    if let TaskStoreError::Store(store) = error {
        if let Some(problem) = ApiError::from_storage_condition(store) {
            return problem;
        }
    }
    ApiError::internal(format!("the task store failed: {error}"))
}

/// The gateway's span context for a new task: a child of the caller's
/// `traceparent`, or the root of a new trace when the header is missing or
/// invalid, because W3C Trace Context restarts the trace rather than reject the request.
fn task_trace(headers: &http::HeaderMap) -> (TraceContext, Option<[u8; 8]>) {
    let Some(header) = headers.get(TRACEPARENT) else {
        return (TraceContext::new_root(true), None);
    };
    match header
        .to_str()
        .map_err(|e| e.to_string())
        .and_then(|h| TraceContext::parse(h).map_err(|e| e.to_string()))
    {
        Ok(parent) => (parent.child(), Some(parent.span_id)),
        Err(error) => {
            debug!(%error, "ignoring an invalid traceparent header; the task starts a new trace");
            (TraceContext::new_root(true), None)
        }
    }
}

/// Cancels a queued or running task. A running task's agent gets
/// `CancelTask` (protocol version 3 and later). Returns the task once it has
/// ended, or 202 if it has not within a few seconds.
pub async fn cancel(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    task_id: &str,
) -> Result<Response, ApiError> {
    let principal = authenticate(state, conn, req.headers()).await?;
    require_scope(&principal, Scope::TasksWrite)?;
    match state.tasks.request_cancel(&principal.account, task_id) {
        Ok(()) => {}
        Err(CancelRefused::NotFound) => {
            return Err(ApiError::not_found(format!(
                "task {task_id} does not exist or its result has expired"
            )))
        }
        Err(CancelRefused::Finished(view)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "task-finished",
                format!(
                    "task {task_id} already ended with status {}; only queued or running tasks can be cancelled",
                    view.status.as_str()
                ),
            )
            .with_member("status", serde_json::json!(view.status.as_str())))
        }
    }
    debug!(task.id = task_id, actor = %principal.subject, "task cancellation requested");
    let view = state
        .tasks
        .wait(task_id, CANCEL_WAIT)
        .await
        .ok_or_else(|| ApiError::not_found(format!("task {task_id} has expired")))?;
    let status = if view.status.is_final() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok(json_response(status, &view))
}

pub async fn get(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    task_id: &str,
) -> Result<Response, ApiError> {
    let principal = authenticate(state, conn, req.headers()).await?;
    require_scope(&principal, Scope::TasksWrite)?;
    let wait_ms = wait_query(&req)?.min(state.config.gateway.max_wait_ms);
    let not_found = || {
        ApiError::not_found(format!(
            "task {task_id} does not exist or its result has expired"
        ))
    };
    let mut view = state
        .tasks
        .get(&principal.account, task_id)
        .ok_or_else(not_found)?;
    if wait_ms > 0 && !view.status.is_final() {
        view = state
            .tasks
            .wait(task_id, Duration::from_millis(wait_ms))
            .await
            .ok_or_else(not_found)?;
    }
    Ok(json_response(StatusCode::OK, &view))
}

/// Reads `?wait_ms=N`, the time a read waits for the task to finish; 0 without it.
fn wait_query(req: &http::Request<Incoming>) -> Result<u64, ApiError> {
    let mut wait_ms = 0;
    for (key, value) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        if key == "wait_ms" {
            wait_ms = value.parse::<u64>().map_err(|_| {
                ApiError::bad_request(
                    "invalid-query",
                    format!("wait_ms {value:?} is not a whole number of milliseconds"),
                )
            })?;
        }
    }
    Ok(wait_ms)
}

/// 200 with the result, 202 while it runs, or the error status of a relay failure.
/// Carries the task's `traceparent` header, so a caller that sent none learns its trace.
fn finished_response(view: TaskView) -> Result<Response, ApiError> {
    let traceparent = view.traceparent.clone();
    match finished_status(view) {
        Ok(mut response) => {
            if let Ok(value) = http::HeaderValue::from_str(&traceparent) {
                response.headers_mut().insert(TRACEPARENT, value);
            }
            Ok(response)
        }
        Err(error) => Err(error.with_header(TRACEPARENT, &traceparent)),
    }
}

fn finished_status(view: TaskView) -> Result<Response, ApiError> {
    let error = view.error.clone().unwrap_or_default();
    match view.status {
        TaskStatus::Queued | TaskStatus::Dispatched | TaskStatus::Running => {
            let mut response = json_response(StatusCode::ACCEPTED, &view);
            if let Ok(location) = http::HeaderValue::from_str(&format!("/v1/tasks/{}", view.id)) {
                response
                    .headers_mut()
                    .insert(http::header::LOCATION, location);
            }
            Ok(response)
        }
        TaskStatus::Succeeded | TaskStatus::Failed => Ok(json_response(StatusCode::OK, &view)),
        TaskStatus::TimedOut => {
            Err(
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "task-timed-out", error)
                    .with_member("task_id", serde_json::json!(view.id)),
            )
        }
        TaskStatus::AgentDisconnected => {
            Err(
                ApiError::new(StatusCode::BAD_GATEWAY, "agent-disconnected", error)
                    .with_member("task_id", serde_json::json!(view.id)),
            )
        }
        TaskStatus::Cancelled => Err(ApiError::new(StatusCode::CONFLICT, "task-cancelled", error)
            .with_member("task_id", serde_json::json!(view.id))),
    }
}

/// Task kinds are 1 to 64 characters of a-z, 0-9, '_', '-' and '.'.
fn validate_kind(kind: &str) -> Result<(), ApiError> {
    let valid = (1..=64).contains(&kind.len())
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid-input",
            format!("task kind {kind:?} must be 1 to 64 characters of a-z, 0-9, '_', '-' and '.'"),
        ))
    }
}

/// Checks the task's project against the agent's allowlist and the token's project restriction.
fn check_project(
    principal: &Principal,
    agent: &AgentRecord,
    project: Option<&str>,
) -> Result<(), ApiError> {
    if let Some(project) = project {
        keygate_vault::validate_project_id(project)?;
        if !principal.may_access_project(project) {
            return Err(ApiError::forbidden(format!(
                "the token is restricted to other projects than {project:?}"
            )));
        }
    }
    let Some(allowed) = &agent.projects else {
        return Ok(());
    };
    match project {
        Some(project) if allowed.iter().any(|p| p == project) => Ok(()),
        Some(project) => Err(ApiError::forbidden(format!(
            "agent {} serves only the projects {allowed:?}, not {project:?}",
            agent.id
        ))),
        None => Err(ApiError::forbidden(format!(
            "agent {} serves only the projects {allowed:?}; name one in `project`",
            agent.id
        ))),
    }
}
