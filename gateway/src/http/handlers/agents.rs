//! Agent administration: create, list, show, disable, pause, restart, rotate credentials.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::StatusCode;
use hyper::body::Incoming;
use keygate_auth::Scope;
use keygate_protocol::GoAwayReason;
use serde::Deserialize;
use serde_json::json;
use tracing::{info, warn};

use super::{blocking, page};
use crate::directory::AgentRecord;
use crate::http::body::{json_response, read_json, Response};
use crate::http::problem::ApiError;
use crate::http::{authenticate, require_scope, ConnInfo};
use crate::session::SessionHandle;
use crate::state::SharedState;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateAgent {
    #[serde(default)]
    name: Option<String>,
    /// Projects the agent serves; without it, every project of the account.
    #[serde(default)]
    projects: Option<Vec<String>>,
}

const MAX_NAME_CHARS: usize = 128;
/// How long after the drain a restarted agent's tasks are accepted while it reconnects.
const RESTART_RETURN_WINDOW: Duration = Duration::from_secs(30);
/// How often a restart checks whether the session's running tasks have finished.
const DRAIN_POLL: Duration = Duration::from_millis(50);

pub async fn create(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
) -> Result<Response, ApiError> {
    let principal = authenticate(state, conn, req.headers()).await?;
    require_scope(&principal, Scope::AgentsAdmin)?;
    let body: CreateAgent = read_json(req.into_body(), state.config.http.max_body_bytes).await?;
    if let Some(name) = &body.name {
        if name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                "invalid-input",
                format!("agent name {name:?} must be at most {MAX_NAME_CHARS} characters without control characters"),
            ));
        }
    }
    let directory = state.agents.clone();
    let account = principal.account.clone();
    if let Some(projects) = &body.projects {
        if projects.is_empty() {
            return Err(ApiError::bad_request(
                "invalid-input",
                "projects is an empty list; leave it out to allow every project of the account",
            ));
        }
        for project in projects {
            keygate_vault::validate_project_id(project)?;
        }
    }
    let (record, secret) = blocking(move || directory.create(&account, body.name, body.projects))
        .await?
        .map_err(|e| ApiError::internal(format!("storing the agent failed: {e}")))?;
    info!(agent.id = %record.id, account = %record.account, "agent created");
    let mut view = agent_view(state, &record);
    view["client_id"] = json!(record.id);
    view["client_secret"] = json!(secret.expose());
    Ok(json_response(StatusCode::CREATED, &view))
}

pub async fn list(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
) -> Result<Response, ApiError> {
    let principal = authenticate(state, conn, req.headers()).await?;
    require_scope(&principal, Scope::AgentsAdmin)?;
    let page = page(&req)?;
    let directory = state.agents.clone();
    let account = principal.account.clone();
    let agents = blocking(move || directory.list(&account, page.after.as_deref(), page.limit))
        .await?
        .map_err(|e| ApiError::internal(format!("listing agents failed: {e}")))?;
    let views: Vec<_> = agents.iter().map(|a| agent_view(state, a)).collect();
    Ok(json_response(StatusCode::OK, &json!({ "agents": views })))
}

pub async fn get(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    agent_id: &str,
) -> Result<Response, ApiError> {
    let principal = authenticate(state, conn, req.headers()).await?;
    require_scope(&principal, Scope::AgentsAdmin)?;
    let record = find_agent(state, &principal.account, agent_id).await?;
    Ok(json_response(StatusCode::OK, &agent_view(state, &record)))
}

/// Disables or enables an agent. Disabling closes its session at once and
/// revokes its tokens; enabling lets it log in again.
pub async fn set_disabled(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    agent_id: &str,
    disabled: bool,
) -> Result<Response, ApiError> {
    let principal = authenticate(state, conn, req.headers()).await?;
    require_scope(&principal, Scope::AgentsAdmin)?;
    find_agent(state, &principal.account, agent_id).await?;
    let directory = state.agents.clone();
    let id = agent_id.to_owned();
    let record = blocking(move || directory.set_disabled(&id, disabled))
        .await?
        .map_err(|e| ApiError::internal(format!("updating agent {agent_id} failed: {e}")))?;
    let mut view = agent_view(state, &record);
    if disabled {
        close_session(state, agent_id, &mut view);
    }
    info!(agent.id = %agent_id, account = %record.account, disabled, actor = %principal.subject, "agent updated");
    Ok(json_response(StatusCode::OK, &view))
}

/// Pauses or resumes task delivery. A paused agent keeps its session and
/// finishes the tasks it runs. New tasks are accepted and queue until the
/// agent is resumed or they time out.
pub async fn set_paused(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    agent_id: &str,
    paused: bool,
) -> Result<Response, ApiError> {
    let principal = authenticate(state, conn, req.headers()).await?;
    require_scope(&principal, Scope::AgentsAdmin)?;
    find_agent(state, &principal.account, agent_id).await?;
    let directory = state.agents.clone();
    let id = agent_id.to_owned();
    let record = blocking(move || directory.set_paused(&id, paused))
        .await?
        .map_err(|e| ApiError::internal(format!("updating agent {agent_id} failed: {e}")))?;
    state.gates.set_paused(agent_id, paused);
    info!(agent.id = %agent_id, account = %record.account, paused, actor = %principal.subject, "agent task delivery changed");
    Ok(json_response(StatusCode::OK, &agent_view(state, &record)))
}

/// Restarts the agent's session: no new task is sent on it, and once its
/// running tasks finish (or the shutdown grace period ends) the agent gets
/// GoAway and reconnects. Queued tasks wait for the new session.
pub async fn restart(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    agent_id: &str,
) -> Result<Response, ApiError> {
    let principal = authenticate(state, conn, req.headers()).await?;
    require_scope(&principal, Scope::AgentsAdmin)?;
    let record = find_agent(state, &principal.account, agent_id).await?;
    let sessions: Vec<_> = state
        .sessions
        .sessions_of(agent_id)
        .into_iter()
        .filter(|s| s.is_accepting())
        .collect();
    if sessions.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "agent-not-connected",
            format!("agent {agent_id} has no open session to restart"),
        ));
    }
    let grace = Duration::from_millis(state.config.gateway.shutdown_grace_ms);
    state
        .sessions
        .expect_return(agent_id, grace + RESTART_RETURN_WINDOW);
    let mut in_flight = 0;
    for session in sessions {
        session.start_drain();
        in_flight += session.in_flight();
        info!(agent.id = %agent_id, session.id = %session.session_id, agent.instance = %session.instance_id, in_flight = session.in_flight(), actor = %principal.subject, "agent restart requested");
        tokio::spawn(async move {
            let drained = tokio::time::timeout(grace, async {
                while session.in_flight() > 0 {
                    tokio::time::sleep(DRAIN_POLL).await;
                }
            })
            .await
            .is_ok();
            if !drained {
                warn!(agent.id = %session.agent_id, session.id = %session.session_id, in_flight = session.in_flight(), "running tasks did not finish within the grace period; closing the session");
            }
            session.close(GoAwayReason::ShuttingDown);
        });
    }
    let mut view = agent_view(state, &record);
    view["restart"] = json!({ "in_flight": in_flight, "grace_ms": grace.as_millis() as u64 });
    Ok(json_response(StatusCode::ACCEPTED, &view))
}

/// Issues a new client secret. The old one keeps working for the configured
/// overlap, tokens issued so far are revoked, and the open session is closed
/// so the agent logs in again.
pub async fn rotate_secret(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
    agent_id: &str,
) -> Result<Response, ApiError> {
    let principal = authenticate(state, conn, req.headers()).await?;
    require_scope(&principal, Scope::AgentsAdmin)?;
    find_agent(state, &principal.account, agent_id).await?;
    let directory = state.agents.clone();
    let id = agent_id.to_owned();
    let overlap_ms = state.config.auth.client_secret_rotation_overlap_secs * 1000;
    let (record, secret) = blocking(move || directory.rotate_secret(&id, overlap_ms))
        .await?
        .map_err(|e| {
            ApiError::internal(format!(
                "rotating the secret of agent {agent_id} failed: {e}"
            ))
        })?;
    let mut view = agent_view(state, &record);
    close_session(state, agent_id, &mut view);
    info!(agent.id = %agent_id, account = %record.account, actor = %principal.subject, "agent client secret rotated");
    view["client_id"] = json!(record.id);
    view["client_secret"] = json!(secret.expose());
    Ok(json_response(StatusCode::OK, &view))
}

/// Closes every session of the agent and shows them as closed in `view`.
fn close_session(state: &SharedState, agent_id: &str, view: &mut serde_json::Value) {
    for session in state.sessions.sessions_of(agent_id) {
        session.close(GoAwayReason::Unauthorized);
    }
    view["connected"] = json!(false);
    view["instances"] = json!([]);
}

/// Looks an agent up for `account`: 404 if it does not exist, 403 if it belongs to another account.
pub async fn find_agent(
    state: &SharedState,
    account: &str,
    agent_id: &str,
) -> Result<AgentRecord, ApiError> {
    let directory = state.agents.clone();
    let id = agent_id.to_owned();
    let record = blocking(move || directory.get(&id))
        .await?
        .map_err(|e| ApiError::internal(format!("agent lookup failed: {e}")))?
        .ok_or_else(|| ApiError::not_found(format!("agent {agent_id} does not exist")))?;
    if record.account != account {
        return Err(ApiError::forbidden(format!(
            "agent {agent_id} belongs to another account than the token's ({account})"
        )));
    }
    Ok(record)
}

fn agent_view(state: &SharedState, record: &AgentRecord) -> serde_json::Value {
    let sessions = state.sessions.sessions_of(&record.id);
    let heartbeat_ms = state.config.gateway.heartbeat_interval_ms;
    let now = crate::now_ms();
    // A session silent for more than one and a half heartbeat intervals has
    // missed a heartbeat; the gateway closes it after three.
    let silent = |s: &SessionHandle| {
        now.saturating_sub(s.last_heard_ms.load(Ordering::Relaxed)) > heartbeat_ms * 3 / 2
    };
    let status = if record.disabled {
        "disabled"
    } else if state.is_draining() || sessions.iter().any(|s| s.is_draining()) {
        "stopping"
    } else if record.paused {
        "paused"
    } else if sessions.is_empty() {
        if record.first_connected_at_ms.is_some() {
            "stopped"
        } else {
            "pending"
        }
    } else if sessions.iter().all(|s| silent(s)) {
        "unknown"
    } else {
        "running"
    };
    let capacity: u64 = sessions.iter().map(|s| u64::from(s.capacity)).sum();
    let in_flight: usize = sessions.iter().map(|s| s.in_flight()).sum();
    let instances: Vec<_> = sessions
        .iter()
        .map(|s| {
            json!({
                "instance_id": s.instance_id,
                "session_id": s.session_id,
                "agent_version": s.agent_version,
                "protocol_version": s.protocol_version,
                "connected_at_ms": s.opened_at_ms,
                "last_heard_at_ms": s.last_heard_ms.load(Ordering::Relaxed),
                "capacity": s.capacity,
                "in_flight": s.in_flight(),
                "accepting": s.is_accepting(),
            })
        })
        .collect();
    json!({
        "id": record.id,
        "account": record.account,
        "name": record.name,
        "created_at_ms": record.created_at_ms,
        "status": status,
        "disabled": record.disabled,
        "paused": record.paused,
        "queued_tasks": state.gates.queued(&record.id),
        "projects": record.projects,
        "previous_secret_valid_until_ms": record.previous_secret.as_ref().map(|p| p.valid_until_ms),
        "first_connected_at_ms": record.first_connected_at_ms,
        "connected": !sessions.is_empty(),
        "capacity": capacity,
        "in_flight": in_flight,
        "instances": instances,
    })
}
