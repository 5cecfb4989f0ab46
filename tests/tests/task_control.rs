//! Controlling tasks and agents from the API: cancel a task, pause and resume
//! an agent, restart its session.

use std::time::Duration;

use http::{Method, StatusCode};
use keygate_tests::keygate_gateway::server::Server;
use keygate_tests::{TestServer, ACCOUNT};
use serde_json::{json, Value};

/// Submits a task that returns at once with its id (`wait_ms` 0).
async fn submit_no_wait(server: &TestServer, agent_id: &str, task: Value) -> String {
    let mut task = task;
    task["wait_ms"] = json!(0);
    let (status, body) = server.submit(agent_id, task).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body["id"].as_str().expect("task id").to_owned()
}

async fn call(server: &TestServer, method: Method, path: &str) -> (StatusCode, Value) {
    let (status, _, body) = server
        .api()
        .request(method, path, Some(&server.admin_token), None)
        .await;
    (status, body)
}

/// Polls the task until its status is `status` (at most 10 s).
async fn wait_for_status(server: &TestServer, task_id: &str, status: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..200 {
        let (_, body) = call(server, Method::GET, &format!("/v1/tasks/{task_id}")).await;
        if body["status"] == status {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("task {task_id} did not reach {status} within 10 s; last seen: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_queued_and_running_tasks() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 1).await;

    let long = json!({"kind": "sleep", "payload": {"ms": 60_000}, "timeout_ms": 120_000});
    let running = submit_no_wait(&server, &creds.id, long.clone()).await;
    wait_for_status(&server, &running, "running").await;
    let queued = submit_no_wait(&server, &creds.id, long).await;

    let (status, body) = call(&server, Method::DELETE, &format!("/v1/tasks/{queued}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "cancelled");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("before it was sent"),
        "{body}"
    );

    let (status, body) = call(&server, Method::DELETE, &format!("/v1/tasks/{queued}")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["type"], "urn:keygate:problem:task-finished");
    assert_eq!(body["status"], "cancelled");

    let (status, body) = call(&server, Method::DELETE, &format!("/v1/tasks/{running}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "cancelled");
    assert!(body["error"].as_str().unwrap().contains("ran it"), "{body}");

    // The agent runs one task at a time. The echo below finishes within its
    // timeout only if the cancel stopped the 60 s sleep on the agent too.
    let (status, body) = server
        .submit(
            &creds.id,
            json!({"kind": "echo", "payload": "after", "timeout_ms": 10_000}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"], "after");

    let (status, body) = call(
        &server,
        Method::DELETE,
        "/v1/tasks/tsk_000000000000000000000000",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_is_per_account() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 1).await;
    let task = submit_no_wait(
        &server,
        &creds.id,
        json!({"kind": "sleep", "payload": {"ms": 60_000}, "timeout_ms": 120_000}),
    )
    .await;
    let other = server.token("other", &["tasks:write"], None);
    let (status, _, body) = server
        .api()
        .request(
            Method::DELETE,
            &format!("/v1/tasks/{task}"),
            Some(&other),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (_, body) = call(&server, Method::GET, &format!("/v1/tasks/{task}")).await;
    assert!(
        matches!(body["status"].as_str(), Some("queued" | "running")),
        "another account's cancel changed the task: {body}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_agent_queues_until_resumed() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 2).await;
    let agent_path = format!("/v1/agents/{}", creds.id);

    let (status, body) = call(&server, Method::POST, &format!("{agent_path}/pause")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["paused"], true);
    assert_eq!(body["status"], "paused");

    let (status, body) = server
        .submit(
            &creds.id,
            json!({"kind": "echo", "payload": 7, "wait_ms": 300, "timeout_ms": 30_000}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        body["status"], "queued",
        "a paused agent got a task: {body}"
    );
    let task = body["id"].as_str().unwrap().to_owned();
    let (_, shown) = call(&server, Method::GET, &agent_path).await;
    assert_eq!(shown["status"], "paused");
    assert_eq!(shown["in_flight"], 0);
    assert_eq!(shown["queued_tasks"], 1);

    let (status, body) = call(&server, Method::POST, &format!("{agent_path}/resume")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["paused"], false);
    assert_eq!(body["status"], "running");
    let done = wait_for_status(&server, &task, "succeeded").await;
    assert_eq!(done["result"], 7);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_survives_a_server_restart() {
    let mut server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let (status, _) = call(
        &server,
        Method::POST,
        &format!("/v1/agents/{}/pause", creds.id),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    server.shutdown().await;

    let again = Server::start(server.config.clone())
        .await
        .expect("the server starts again on the same data folder");
    let record = again
        .state()
        .agents
        .get(&creds.id)
        .expect("directory read")
        .expect("the agent exists");
    assert!(record.paused, "the pause was not stored");
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_drains_then_reconnects() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 1).await;
    let old_session = server
        .server()
        .state()
        .sessions
        .get(&creds.id)
        .unwrap()
        .session_id
        .clone();

    let running = submit_no_wait(
        &server,
        &creds.id,
        json!({"kind": "sleep", "payload": {"ms": 500}, "timeout_ms": 30_000}),
    )
    .await;
    wait_for_status(&server, &running, "running").await;

    let (status, body) = call(
        &server,
        Method::POST,
        &format!("/v1/agents/{}/restart", creds.id),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "stopping");
    assert_eq!(body["restart"]["in_flight"], 1);

    // Submitted while the old session drains: it waits for the next session.
    let queued = submit_no_wait(
        &server,
        &creds.id,
        json!({"kind": "echo", "payload": "moved", "timeout_ms": 30_000}),
    )
    .await;

    let done = wait_for_status(&server, &running, "succeeded").await;
    assert_eq!(done["result"], json!({"slept_ms": 500}));
    let moved = wait_for_status(&server, &queued, "succeeded").await;
    assert_eq!(moved["result"], "moved");

    let new_session = server
        .server()
        .state()
        .sessions
        .get(&creds.id)
        .expect("the agent reconnected")
        .session_id
        .clone();
    assert_ne!(new_session, old_session, "the session was not restarted");

    agent.stop().await;
    let (status, body) = call(
        &server,
        Method::POST,
        &format!("/v1/agents/{}/restart", creds.id),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["type"], "urn:keygate:problem:agent-not-connected");
}
