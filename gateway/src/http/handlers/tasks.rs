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
use crate::relay::{run_task, TaskStatus, TaskView};
use crate::state::SharedState;

/// Default for `timeout_ms` when the caller sets none.
const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Default for `wait_ms` when the caller sets none.
const DEFAULT_WAIT_MS: u64 = 10_000;

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
    let Some(session) = state.sessions.get(&agent.id) else {
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
    };
    let max_queued = state.config.gateway.max_queued_tasks_per_agent;
    if session.queued() >= max_queued {
        state
            .metrics
            .tasks
            .with_label_values(&["rejected_queue_full"])
            .inc();
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "agent-queue-full",
            format!(
                "agent {} has {max_queued} tasks waiting for a free slot; retry later",
                agent.id
            ),
        )
        .with_header(http::header::RETRY_AFTER, "1"));
    }

    let task_id = format!("tsk_{}", crate::directory::random_hex(12));
    state.tasks.insert(
        &principal.account,
        TaskView {
            id: task_id.clone(),
            agent_id: agent.id.clone(),
            kind: body.kind.clone(),
            status: TaskStatus::Queued,
            timeout_ms,
            created_at_ms: crate::now_ms(),
            finished_at_ms: None,
            result: None,
            error: None,
        },
    );
    let span = tracing::info_span!("task", task.id = %task_id, agent.id = %agent.id);
    span.in_scope(|| debug!(kind = %body.kind, timeout_ms, "task accepted"));
    tokio::spawn(
        run_task(
            state.clone(),
            session,
            task_id.clone(),
            body.kind,
            payload,
            Duration::from_millis(timeout_ms),
        )
        .instrument(span),
    );

    let view = state
        .tasks
        .wait(&task_id, Duration::from_millis(wait_ms))
        .await
        .ok_or_else(|| {
            ApiError::internal(format!("task {task_id} vanished from the task table"))
        })?;
    finished_response(view)
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
fn finished_response(view: TaskView) -> Result<Response, ApiError> {
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
