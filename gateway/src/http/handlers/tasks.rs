//! Task submission and polling.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use hyper::body::Incoming;
use keygate_auth::{Principal, Scope};
use serde::Deserialize;
use tracing::{debug, Instrument};

use super::agents::find_agent;
use crate::directory::AgentRecord;
use crate::http::body::{json_response, read_json, Response};
use crate::http::problem::ApiError;
use crate::http::{authenticate, require_scope, ConnInfo};
use crate::relay::{run_task, CancelRefused, TaskControls, TaskSpec, TaskStatus, TaskView};
use crate::state::SharedState;
use crate::telemetry::TraceContext;

/// Default for `timeout_ms` when the caller sets none.
const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Default for `wait_ms` when the caller sets none.
const DEFAULT_WAIT_MS: u64 = 10_000;
const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
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
    let (trace, parent_span_id) = task_trace(req.headers());
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
    let cancelled = state.tasks.insert(
        &principal.account,
        TaskView {
            id: task_id.clone(),
            agent_id: agent.id.clone(),
            kind: body.kind.clone(),
            status: TaskStatus::Queued,
            timeout_ms,
            created_at_ms: crate::now_ms(),
            finished_at_ms: None,
            traceparent: trace.to_header(),
            result: None,
            error: None,
        },
    );
    let controls = TaskControls {
        gate: state.gates.gate(&agent.id, agent.paused),
        cancelled,
    };
    let span = tracing::info_span!(
        "task",
        task.id = %task_id,
        agent.id = %agent.id,
        trace.id = %trace.trace_id_hex()
    );
    span.in_scope(|| debug!(kind = %body.kind, timeout_ms, "task accepted"));
    let spec = TaskSpec {
        task_id: task_id.clone(),
        agent_id: agent.id.clone(),
        kind: body.kind,
        payload,
        timeout: Duration::from_millis(timeout_ms),
        trace,
        parent_span_id,
    };
    tokio::spawn(run_task(state.clone(), spec, controls).instrument(span));

    let view = state
        .tasks
        .wait(&task_id, Duration::from_millis(wait_ms))
        .await
        .ok_or_else(|| {
            ApiError::internal(format!("task {task_id} vanished from the task table"))
        })?;
    finished_response(view)
}

/// The gateway's span context for a new task: a child of the caller's
/// `traceparent`, or the root of a new trace when the header is missing or
/// invalid (W3C Trace Context says to restart the trace rather than refuse).
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

/// Cancels a queued or running task. A running task's agent is told to stop
/// it (protocol version 3 and later). Answers with the task once it has
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
    let view = state
        .tasks
        .get(&principal.account, task_id)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "task {task_id} does not exist or its result has expired"
            ))
        })?;
    Ok(json_response(StatusCode::OK, &view))
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
        TaskStatus::Queued | TaskStatus::Running => {
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
