//! Maps a listener, method and path to a route, decoding each path segment exactly once.
//!
//! Names may contain `/`: clients send it percent-encoded (`%2F`), the path
//! is split on literal `/` first and each segment decoded afterwards.

use http::Method;
use percent_encoding::percent_decode_str;

use super::problem::ApiError;

/// The listener a request arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    Agent,
    Api,
    Ops,
}

impl ListenerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Agent => "agent",
            ListenerKind::Api => "api",
            ListenerKind::Ops => "ops",
        }
    }
}

/// The change a version-changing route applies to the versions it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionChange {
    Delete,
    Undelete,
    Destroy,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Jwks,
    OpenApi,
    Token,
    AgentSession,
    CreateAgent,
    ListAgents,
    GetAgent {
        agent: String,
    },
    DisableAgent {
        agent: String,
    },
    EnableAgent {
        agent: String,
    },
    PauseAgent {
        agent: String,
    },
    ResumeAgent {
        agent: String,
    },
    RestartAgent {
        agent: String,
    },
    RotateAgentSecret {
        agent: String,
    },
    SubmitTask {
        agent: String,
    },
    GetTask {
        task: String,
    },
    CancelTask {
        task: String,
    },
    ListSecrets {
        project: String,
    },
    PutSecret {
        project: String,
        name: String,
    },
    GetSecret {
        project: String,
        name: String,
    },
    UpdateSecretMetadata {
        project: String,
        name: String,
    },
    DeleteSecret {
        project: String,
        name: String,
    },
    ReadSecretValue {
        project: String,
        name: String,
    },
    ChangeSecretVersions {
        project: String,
        name: String,
        change: VersionChange,
    },
    DeleteProject {
        project: String,
    },
    DataKeyStatus {
        project: String,
    },
    RotateDataKey {
        project: String,
    },
    ReencryptProgress,
    StartReencrypt,
    CreateVaultBackup,
    ListDefinitions {
        project: String,
    },
    PutDefinition {
        project: String,
        name: String,
    },
    GetDefinition {
        project: String,
        name: String,
    },
    ResolveDefinitions {
        project: String,
    },
    InvalidateDefinitionCache {
        project: String,
        name: String,
    },
    ListConnections,
    PutConnection {
        name: String,
    },
    GetConnection {
        name: String,
    },
    DeleteConnection {
        name: String,
    },
    ResolveDefinition {
        project: String,
        name: String,
    },
    ListSigningKeys,
    RotateSigningKey,
    HashAuditValue,
    Metrics,
    Healthz,
    Readyz,
    GetLogFilter,
    SetLogFilter,
}

impl Route {
    /// Returns the route's path template, used as the `route` label of HTTP metrics.
    pub fn template(&self) -> &'static str {
        match self {
            Route::Jwks => "/.well-known/jwks.json",
            Route::OpenApi => "/openapi.json",
            Route::Token => "/oauth/token",
            Route::AgentSession => "/v1/agent/session",
            Route::CreateAgent | Route::ListAgents => "/v1/agents",
            Route::GetAgent { .. } => "/v1/agents/{agent_id}",
            Route::DisableAgent { .. } => "/v1/agents/{agent_id}/disable",
            Route::EnableAgent { .. } => "/v1/agents/{agent_id}/enable",
            Route::PauseAgent { .. } => "/v1/agents/{agent_id}/pause",
            Route::ResumeAgent { .. } => "/v1/agents/{agent_id}/resume",
            Route::RestartAgent { .. } => "/v1/agents/{agent_id}/restart",
            Route::RotateAgentSecret { .. } => "/v1/agents/{agent_id}/rotate-secret",
            Route::SubmitTask { .. } => "/v1/agents/{agent_id}/tasks",
            Route::GetTask { .. } | Route::CancelTask { .. } => "/v1/tasks/{task_id}",
            Route::ListSecrets { .. } => "/v1/projects/{project}/secrets",
            Route::PutSecret { .. }
            | Route::GetSecret { .. }
            | Route::UpdateSecretMetadata { .. }
            | Route::DeleteSecret { .. } => "/v1/projects/{project}/secrets/{name}",
            Route::ReadSecretValue { .. } => "/v1/projects/{project}/secrets/{name}/value",
            Route::ChangeSecretVersions { change, .. } => match change {
                VersionChange::Delete => "/v1/projects/{project}/secrets/{name}/delete",
                VersionChange::Undelete => "/v1/projects/{project}/secrets/{name}/undelete",
                VersionChange::Destroy => "/v1/projects/{project}/secrets/{name}/destroy",
            },
            Route::DeleteProject { .. } => "/v1/projects/{project}",
            Route::DataKeyStatus { .. } => "/v1/projects/{project}/data-keys",
            Route::RotateDataKey { .. } => "/v1/projects/{project}/data-keys/rotate",
            Route::ReencryptProgress | Route::StartReencrypt => "/v1/admin/vault/reencrypt",
            Route::CreateVaultBackup => "/v1/admin/vault/backups",
            Route::ListDefinitions { .. } => "/v1/projects/{project}/secret-definitions",
            Route::PutDefinition { .. } | Route::GetDefinition { .. } => {
                "/v1/projects/{project}/secret-definitions/{name}"
            }
            Route::ResolveDefinitions { .. } => "/v1/projects/{project}/resolve",
            Route::InvalidateDefinitionCache { .. } => {
                "/v1/projects/{project}/secret-definitions/{name}/cache"
            }
            Route::ListConnections => "/v1/connections",
            Route::PutConnection { .. }
            | Route::GetConnection { .. }
            | Route::DeleteConnection { .. } => "/v1/connections/{name}",
            Route::ResolveDefinition { .. } => {
                "/v1/projects/{project}/secret-definitions/{name}/value"
            }
            Route::ListSigningKeys => "/v1/admin/signing-keys",
            Route::RotateSigningKey => "/v1/admin/signing-keys/rotate",
            Route::HashAuditValue => "/v1/admin/audit/hash",
            Route::Metrics => "/metrics",
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::GetLogFilter | Route::SetLogFilter => "/log-filter",
        }
    }
}

/// Finds the route for a request, or returns the 404, 405 or 400 error to send.
pub fn route(listener: ListenerKind, method: &Method, path: &str) -> Result<Route, ApiError> {
    let segments = decode_segments(path)?;
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let candidates = candidates(listener, &segs);
    if candidates.is_empty() {
        return Err(ApiError::not_found(format!(
            "no route for {path} on the {} listener",
            listener.as_str()
        )));
    }
    if let Some((_, route)) = candidates.iter().find(|(m, _)| m == method) {
        return Ok(route.clone());
    }
    let allowed: Vec<Method> = candidates.into_iter().map(|(m, _)| m).collect();
    Err(ApiError::method_not_allowed(method, &allowed))
}

fn decode_segments(path: &str) -> Result<Vec<String>, ApiError> {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    trimmed
        .split('/')
        .map(|seg| {
            percent_decode_str(seg)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| {
                    ApiError::bad_request(
                        "invalid-path",
                        format!("path segment {seg:?} is not valid UTF-8 after percent-decoding"),
                    )
                })
        })
        .collect()
}

fn candidates(listener: ListenerKind, segs: &[&str]) -> Vec<(Method, Route)> {
    use ListenerKind::*;
    let s = |v: &str| v.to_owned();
    match (listener, segs) {
        (Agent | Api, [".well-known", "jwks.json"]) => vec![(Method::GET, Route::Jwks)],
        (Api, ["openapi.json"]) => vec![(Method::GET, Route::OpenApi)],
        (Agent, ["oauth", "token"]) => vec![(Method::POST, Route::Token)],
        (Agent, ["v1", "agent", "session"]) => vec![(Method::POST, Route::AgentSession)],
        (Api, ["v1", "agents"]) => vec![
            (Method::POST, Route::CreateAgent),
            (Method::GET, Route::ListAgents),
        ],
        (Api, ["v1", "agents", agent]) if !agent.is_empty() => {
            vec![(Method::GET, Route::GetAgent { agent: s(agent) })]
        }
        (Api, ["v1", "agents", agent, "disable"]) if !agent.is_empty() => {
            vec![(Method::POST, Route::DisableAgent { agent: s(agent) })]
        }
        (Api, ["v1", "agents", agent, "enable"]) if !agent.is_empty() => {
            vec![(Method::POST, Route::EnableAgent { agent: s(agent) })]
        }
        (Api, ["v1", "agents", agent, "pause"]) if !agent.is_empty() => {
            vec![(Method::POST, Route::PauseAgent { agent: s(agent) })]
        }
        (Api, ["v1", "agents", agent, "resume"]) if !agent.is_empty() => {
            vec![(Method::POST, Route::ResumeAgent { agent: s(agent) })]
        }
        (Api, ["v1", "agents", agent, "restart"]) if !agent.is_empty() => {
            vec![(Method::POST, Route::RestartAgent { agent: s(agent) })]
        }
        (Api, ["v1", "agents", agent, "rotate-secret"]) if !agent.is_empty() => {
            vec![(Method::POST, Route::RotateAgentSecret { agent: s(agent) })]
        }
        (Api, ["v1", "agents", agent, "tasks"]) if !agent.is_empty() => {
            vec![(Method::POST, Route::SubmitTask { agent: s(agent) })]
        }
        (Api, ["v1", "tasks", task]) if !task.is_empty() => vec![
            (Method::GET, Route::GetTask { task: s(task) }),
            (Method::DELETE, Route::CancelTask { task: s(task) }),
        ],
        (Api, ["v1", "projects", project, "secrets"]) => {
            vec![(
                Method::GET,
                Route::ListSecrets {
                    project: s(project),
                },
            )]
        }
        (Api, ["v1", "projects", project, "secrets", name]) => vec![
            (
                Method::PUT,
                Route::PutSecret {
                    project: s(project),
                    name: s(name),
                },
            ),
            (
                Method::GET,
                Route::GetSecret {
                    project: s(project),
                    name: s(name),
                },
            ),
            (
                Method::PATCH,
                Route::UpdateSecretMetadata {
                    project: s(project),
                    name: s(name),
                },
            ),
            (
                Method::DELETE,
                Route::DeleteSecret {
                    project: s(project),
                    name: s(name),
                },
            ),
        ],
        (Api, ["v1", "projects", project, "secrets", name, "value"]) => vec![(
            Method::GET,
            Route::ReadSecretValue {
                project: s(project),
                name: s(name),
            },
        )],
        (
            Api,
            ["v1", "projects", project, "secrets", name, action @ ("delete" | "undelete" | "destroy")],
        ) => {
            let change = match *action {
                "delete" => VersionChange::Delete,
                "undelete" => VersionChange::Undelete,
                _ => VersionChange::Destroy,
            };
            vec![(
                Method::POST,
                Route::ChangeSecretVersions {
                    project: s(project),
                    name: s(name),
                    change,
                },
            )]
        }
        (Api, ["v1", "projects", project]) => vec![(
            Method::DELETE,
            Route::DeleteProject {
                project: s(project),
            },
        )],
        (Api, ["v1", "projects", project, "data-keys"]) => vec![(
            Method::GET,
            Route::DataKeyStatus {
                project: s(project),
            },
        )],
        (Api, ["v1", "projects", project, "data-keys", "rotate"]) => vec![(
            Method::POST,
            Route::RotateDataKey {
                project: s(project),
            },
        )],
        (Api, ["v1", "admin", "vault", "reencrypt"]) => vec![
            (Method::GET, Route::ReencryptProgress),
            (Method::POST, Route::StartReencrypt),
        ],
        (Api, ["v1", "admin", "vault", "backups"]) => {
            vec![(Method::POST, Route::CreateVaultBackup)]
        }
        (Api, ["v1", "projects", project, "secret-definitions"]) => {
            vec![(
                Method::GET,
                Route::ListDefinitions {
                    project: s(project),
                },
            )]
        }
        (Api, ["v1", "projects", project, "secret-definitions", name]) => vec![
            (
                Method::PUT,
                Route::PutDefinition {
                    project: s(project),
                    name: s(name),
                },
            ),
            (
                Method::GET,
                Route::GetDefinition {
                    project: s(project),
                    name: s(name),
                },
            ),
        ],
        (Api, ["v1", "projects", project, "secret-definitions", name, "value"]) => {
            vec![(
                Method::GET,
                Route::ResolveDefinition {
                    project: s(project),
                    name: s(name),
                },
            )]
        }
        (Api, ["v1", "projects", project, "secret-definitions", name, "cache"]) => {
            vec![(
                Method::DELETE,
                Route::InvalidateDefinitionCache {
                    project: s(project),
                    name: s(name),
                },
            )]
        }
        (Api, ["v1", "projects", project, "resolve"]) => vec![(
            Method::POST,
            Route::ResolveDefinitions {
                project: s(project),
            },
        )],
        (Api, ["v1", "connections"]) => vec![(Method::GET, Route::ListConnections)],
        (Api, ["v1", "connections", name]) if !name.is_empty() => vec![
            (Method::PUT, Route::PutConnection { name: s(name) }),
            (Method::GET, Route::GetConnection { name: s(name) }),
            (Method::DELETE, Route::DeleteConnection { name: s(name) }),
        ],
        (Api, ["v1", "admin", "signing-keys"]) => vec![(Method::GET, Route::ListSigningKeys)],
        (Api, ["v1", "admin", "audit", "hash"]) => vec![(Method::POST, Route::HashAuditValue)],
        (Api, ["v1", "admin", "signing-keys", "rotate"]) => {
            vec![(Method::POST, Route::RotateSigningKey)]
        }
        (Ops, ["metrics"]) => vec![(Method::GET, Route::Metrics)],
        (Ops, ["healthz"]) => vec![(Method::GET, Route::Healthz)],
        (Ops, ["readyz"]) => vec![(Method::GET, Route::Readyz)],
        (Ops, ["log-filter"]) => vec![
            (Method::GET, Route::GetLogFilter),
            (Method::PUT, Route::SetLogFilter),
        ],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_slash_stays_in_name() {
        let route = route(
            ListenerKind::Api,
            &Method::PUT,
            "/v1/projects/p1/secrets/db%2Fpass%20word%25",
        )
        .unwrap();
        assert_eq!(
            route,
            Route::PutSecret {
                project: "p1".into(),
                name: "db/pass word%".into()
            }
        );
    }

    #[test]
    fn wrong_method_lists_allowed() {
        let err = route(ListenerKind::Api, &Method::DELETE, "/v1/agents").unwrap_err();
        assert_eq!(err.status, http::StatusCode::METHOD_NOT_ALLOWED);
        assert!(err.detail.contains("POST, GET"), "{}", err.detail);
    }

    #[test]
    fn routes_belong_to_their_listener() {
        assert!(route(ListenerKind::Api, &Method::POST, "/oauth/token").is_err());
        assert!(route(ListenerKind::Agent, &Method::POST, "/oauth/token").is_ok());
        assert!(route(ListenerKind::Api, &Method::GET, "/metrics").is_err());
        assert!(route(ListenerKind::Ops, &Method::GET, "/metrics").is_ok());
    }

    #[test]
    fn invalid_utf8_segment_rejected() {
        let err = route(ListenerKind::Api, &Method::GET, "/v1/tasks/%FF").unwrap_err();
        assert_eq!(err.status, http::StatusCode::BAD_REQUEST);
    }
}
