//! Tenant isolation: two accounts with two projects each, a token per role,
//! and every route tried by every role. Cross-account and cross-project
//! attempts are rejected; allowed ones succeed.

use http::{Method, StatusCode};
use keygate_tests::{AgentCredentials, RunningAgent, TestServer};
use serde_json::{json, Value};

const ACME: &str = "acme";
const GLOBEX: &str = "globex";

/// A caller: which account its token is for, its scopes and project restriction.
struct Role {
    name: &'static str,
    account: &'static str,
    scopes: &'static [&'static str],
    projects: Option<&'static [&'static str]>,
}

const ROLES: &[Role] = &[
    Role {
        name: "acme agents admin",
        account: ACME,
        scopes: &["agents:admin"],
        projects: None,
    },
    Role {
        name: "acme task writer",
        account: ACME,
        scopes: &["tasks:write"],
        projects: None,
    },
    Role {
        name: "acme secrets admin",
        account: ACME,
        scopes: &["secrets:admin"],
        projects: None,
    },
    Role {
        name: "acme secrets admin of a2",
        account: ACME,
        scopes: &["secrets:admin"],
        projects: Some(&["a2"]),
    },
    Role {
        name: "acme runner of a1",
        account: ACME,
        scopes: &["secrets:read"],
        projects: Some(&["a1"]),
    },
    Role {
        name: "acme runner of a2",
        account: ACME,
        scopes: &["secrets:read"],
        projects: Some(&["a2"]),
    },
    Role {
        name: "globex with every scope",
        account: GLOBEX,
        scopes: &[
            "agents:admin",
            "tasks:write",
            "secrets:admin",
            "secrets:read",
        ],
        projects: None,
    },
    Role {
        name: "globex runner",
        account: GLOBEX,
        scopes: &["secrets:read"],
        projects: None,
    },
];

/// One request against acme's resources, and which roles may make it.
struct Attempt {
    method: Method,
    path: String,
    body: Option<Value>,
    allowed: &'static [&'static str],
}

struct World {
    server: TestServer,
    acme_agent: AgentCredentials,
    _running: RunningAgent,
    task_id: String,
}

async fn world() -> World {
    let server = TestServer::start().await;
    let admin = server.token(
        ACME,
        &[
            "agents:admin",
            "tasks:write",
            "secrets:admin",
            "secrets:read",
        ],
        None,
    );
    let acme_agent = server.create_agent(ACME).await;
    let running = server.start_agent(&acme_agent, 4).await;
    let api = server.api();
    for project in ["a1", "a2"] {
        let (status, _, body) = api
            .request(
                Method::PUT,
                &format!("/v1/projects/{project}/secrets/db"),
                Some(&admin),
                Some(json!({"value": format!("acme-{project}-value")})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, _, body) = api
            .request(
                Method::PUT,
                &format!("/v1/projects/{project}/secret-definitions/db"),
                Some(&admin),
                Some(json!({"location": {"type": "hosted", "secret": "db"}})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, body) = server
        .submit(&acme_agent.id, json!({"kind": "echo", "payload": 1}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let task_id = body["id"].as_str().unwrap().to_owned();
    World {
        server,
        acme_agent,
        _running: running,
        task_id,
    }
}

fn attempts(world: &World) -> Vec<Attempt> {
    let agent = &world.acme_agent.id;
    let mut list = vec![
        Attempt {
            method: Method::GET,
            path: "/v1/agents".into(),
            body: None,
            allowed: &["acme agents admin", "globex with every scope"],
        },
        Attempt {
            method: Method::GET,
            path: format!("/v1/agents/{agent}"),
            body: None,
            allowed: &["acme agents admin"],
        },
        Attempt {
            method: Method::POST,
            path: format!("/v1/agents/{agent}/tasks"),
            body: Some(json!({"kind": "echo", "payload": "x"})),
            allowed: &["acme task writer"],
        },
        Attempt {
            method: Method::GET,
            path: format!("/v1/tasks/{}", world.task_id),
            body: None,
            allowed: &["acme task writer"],
        },
    ];
    for project in ["a1", "a2"] {
        let admins: &'static [&'static str] = if project == "a2" {
            &["acme secrets admin", "acme secrets admin of a2"]
        } else {
            &["acme secrets admin"]
        };
        let runner: &'static [&'static str] = if project == "a1" {
            &["acme runner of a1"]
        } else {
            &["acme runner of a2"]
        };
        list.push(Attempt {
            method: Method::GET,
            path: format!("/v1/projects/{project}/secrets"),
            body: None,
            allowed: admins,
        });
        list.push(Attempt {
            method: Method::GET,
            path: format!("/v1/projects/{project}/secrets/db"),
            body: None,
            allowed: admins,
        });
        list.push(Attempt {
            method: Method::GET,
            path: format!("/v1/projects/{project}/secret-definitions"),
            body: None,
            allowed: admins,
        });
        list.push(Attempt {
            method: Method::GET,
            path: format!("/v1/projects/{project}/secret-definitions/db"),
            body: None,
            allowed: admins,
        });
        list.push(Attempt {
            method: Method::GET,
            path: format!("/v1/projects/{project}/secret-definitions/db/value"),
            body: None,
            allowed: runner,
        });
    }
    list
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_on_every_route() {
    let world = world().await;
    let api = world.server.api();
    let mut failures = Vec::new();
    for attempt in attempts(&world) {
        for role in ROLES {
            let token = world.server.token(role.account, role.scopes, role.projects);
            let (status, _, body) = api
                .request(
                    attempt.method.clone(),
                    &attempt.path,
                    Some(&token),
                    attempt.body.clone(),
                )
                .await;
            let allowed = attempt.allowed.contains(&role.name);
            // Another account listing "a1" lists its own namespace, which is empty.
            let text = body.to_string();
            let own_empty_listing = role.account != ACME
                && attempt.path.ends_with('s')
                && status.is_success()
                && !text.contains(r#""name":"db""#);
            let ok = if allowed {
                status.is_success()
            } else {
                matches!(status, StatusCode::FORBIDDEN | StatusCode::NOT_FOUND) || own_empty_listing
            };
            let leaked = status.is_success()
                && role.account != ACME
                && (text.contains(&world.acme_agent.id) || text.contains("acme-a"));
            if !ok || leaked {
                failures.push(format!(
                    "{} {} as {}: expected {}, got {status}: {body}",
                    attempt.method,
                    attempt.path,
                    role.name,
                    if allowed { "success" } else { "403 or 404" }
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} isolation failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_stay_in_own_account_and_project() {
    let world = world().await;
    let api = world.server.api();
    let globex = world
        .server
        .token(GLOBEX, &["secrets:admin", "secrets:read"], None);
    // The same project name under another account is another namespace.
    let (status, _, body) = api
        .request(
            Method::PUT,
            "/v1/projects/a1/secrets/db",
            Some(&globex),
            Some(json!({"value": "globex-value"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "globex's own a1: {body}");

    let restricted = world.server.token(ACME, &["secrets:admin"], Some(&["a2"]));
    let (status, _, _) = api
        .request(
            Method::PUT,
            "/v1/projects/a1/secrets/db",
            Some(&restricted),
            Some(json!({"value": "overwrite"})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a token restricted to a2 cannot write a1"
    );

    for agent_action in ["disable", "enable", "rotate-secret"] {
        let (status, _, _) = api
            .request(
                Method::POST,
                &format!("/v1/agents/{}/{agent_action}", world.acme_agent.id),
                Some(&globex),
                None,
            )
            .await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{agent_action}: wrong scope and wrong account"
        );
    }

    let runner = world.server.token(ACME, &["secrets:read"], Some(&["a1"]));
    let (status, _, body) = api
        .request(
            Method::GET,
            "/v1/projects/a1/secret-definitions/db/value",
            Some(&runner),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["value"], "acme-a1-value", "acme's secret is untouched");
    assert_eq!(body["source_version"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_project_allowlist_enforced() {
    let server = TestServer::start().await;
    let creds = server
        .create_agent_with(ACME, json!({"name": "restricted", "projects": ["a1"]}))
        .await;
    let agent = server.start_agent(&creds, 2).await;
    let cases = [
        (json!({"kind": "echo", "project": "a1"}), StatusCode::OK),
        (
            json!({"kind": "echo", "project": "a2"}),
            StatusCode::FORBIDDEN,
        ),
        (json!({"kind": "echo"}), StatusCode::FORBIDDEN),
    ];
    for (body, expected) in cases {
        let (status, answer) = server.submit(&creds.id, body.clone()).await;
        assert_eq!(status, expected, "{body}: {answer}");
    }
    let token = server.token(ACME, &["tasks:write"], Some(&["a2"]));
    let (status, _, _) = server
        .api()
        .request(
            Method::POST,
            &format!("/v1/agents/{}/tasks", creds.id),
            Some(&token),
            Some(json!({"kind": "echo", "project": "a1"})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the token's restriction applies too"
    );

    let admin = server.token(ACME, &["agents:admin"], None);
    let (status, _, body) = server
        .api()
        .request(
            Method::POST,
            "/v1/agents",
            Some(&admin),
            Some(json!({"projects": []})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _, body) = server
        .api()
        .request(
            Method::POST,
            "/v1/agents",
            Some(&admin),
            Some(json!({"projects": ["Bad!"]})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    agent.stop().await;
}
