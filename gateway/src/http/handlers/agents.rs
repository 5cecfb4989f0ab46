//! Agent administration: create, list, show.

use http::StatusCode;
use hyper::body::Incoming;
use keygate_auth::Scope;
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use super::{blocking, page};
use crate::directory::AgentRecord;
use crate::http::body::{json_response, read_json, Response};
use crate::http::problem::ApiError;
use crate::http::{authenticate, require_scope, ConnInfo};
use crate::state::SharedState;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateAgent {
    #[serde(default)]
    name: Option<String>,
}

const MAX_NAME_CHARS: usize = 128;

pub async fn create(
    state: &SharedState,
    conn: &ConnInfo,
    req: http::Request<Incoming>,
) -> Result<Response, ApiError> {
    let principal = authenticate(state, conn, req.headers())?;
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
    let (record, secret) = blocking(move || directory.create(&account, body.name))
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
    let principal = authenticate(state, conn, req.headers())?;
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
    let principal = authenticate(state, conn, req.headers())?;
    require_scope(&principal, Scope::AgentsAdmin)?;
    let record = find_agent(state, &principal.account, agent_id).await?;
    Ok(json_response(StatusCode::OK, &agent_view(state, &record)))
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
    let session = state.sessions.get(&record.id);
    json!({
        "id": record.id,
        "account": record.account,
        "name": record.name,
        "created_at_ms": record.created_at_ms,
        "disabled": record.disabled,
        "connected": session.is_some(),
        "session": session.map(|s| json!({
            "id": s.session_id,
            "capacity": s.capacity,
            "in_flight": s.in_flight(),
            "queued": s.queued(),
        })),
    })
}
