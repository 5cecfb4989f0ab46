//! Task delivery that survives lost sessions and gateway restarts: receipt
//! confirmation, redelivery, stored tasks and idempotency keys.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use keygate_tests::{TestServer, ACCOUNT};
use serde_json::{json, Value};

async fn call(server: &TestServer, method: Method, path: &str) -> (StatusCode, Value) {
    let (status, _, body) = server
        .api()
        .request(method, path, Some(&server.admin_token), None)
        .await;
    (status, body)
}

/// Polls the task until its status is `status` (at most 20 s).
async fn wait_for_status(server: &TestServer, task_id: &str, status: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..400 {
        let (_, body) = call(server, Method::GET, &format!("/v1/tasks/{task_id}")).await;
        if body["status"] == status {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("task {task_id} did not reach {status} within 20 s; last seen: {last}");
}

/// Submits `task` with an `Idempotency-Key`; returns status, headers and body.
async fn submit_keyed(
    server: &TestServer,
    agent_id: &str,
    key: &str,
    task: &Value,
) -> (StatusCode, HeaderMap, Value) {
    let headers = [
        (http::header::CONTENT_TYPE, "application/json".to_owned()),
        (
            http::header::AUTHORIZATION,
            format!("Bearer {}", server.admin_token),
        ),
        (
            http::HeaderName::from_static("idempotency-key"),
            key.to_owned(),
        ),
    ];
    let (status, headers, raw) = server
        .api()
        .send(
            Method::POST,
            &format!("/v1/agents/{agent_id}/tasks"),
            &headers,
            Bytes::from(task.to_string()),
        )
        .await;
    let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    (status, headers, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_confirms_receipt_before_running() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 2).await;

    let (status, body) = server
        .submit(
            &creds.id,
            json!({"kind": "sleep", "payload": {"ms": 2000}, "wait_ms": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let task_id = body["id"].as_str().unwrap();
    let running = wait_for_status(&server, task_id, "running").await;
    assert_eq!(running["attempts"], 1);
    let dispatched = running["dispatched_at_ms"]
        .as_u64()
        .expect("dispatched_at_ms");
    let started = running["started_at_ms"].as_u64().expect("started_at_ms");
    assert!(started >= dispatched, "{running}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_session_redelivers_the_task() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 2).await;

    let (status, body) = server
        .submit(
            &creds.id,
            json!({"kind": "sleep", "payload": {"ms": 1500}, "wait_ms": 0, "timeout_ms": 30_000}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let task_id = body["id"].as_str().unwrap().to_owned();
    wait_for_status(&server, &task_id, "running").await;

    // The gateway ends the session; the reference agent reconnects after the
    // GoAway delay and gets the task again.
    let session = server.server().state().sessions.get(&creds.id).unwrap();
    session.close(keygate_protocol::GoAwayReason::Replaced);

    let done = wait_for_status(&server, &task_id, "succeeded").await;
    assert_eq!(done["attempts"], 2, "{done}");
    assert_eq!(done["result"], json!({"slept_ms": 1500}));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_task_survives_a_gateway_restart() {
    let mut server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 2).await;
    let agent_path = format!("/v1/agents/{}", creds.id);
    let (status, _) = call(&server, Method::POST, &format!("{agent_path}/pause")).await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = server
        .submit(
            &creds.id,
            json!({"kind": "echo", "payload": "kept", "wait_ms": 0, "timeout_ms": 60_000}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let task_id = body["id"].as_str().unwrap().to_owned();
    let traceparent = body["traceparent"].clone();

    agent.stop().await;
    server.restart().await;

    let (status, body) = call(&server, Method::GET, &format!("/v1/tasks/{task_id}")).await;
    assert_eq!(status, StatusCode::OK, "the task was not stored: {body}");
    assert_eq!(body["status"], "queued");
    assert_eq!(body["traceparent"], traceparent);

    let agent = server.start_agent(&creds, 2).await;
    let (status, _) = call(&server, Method::POST, &format!("{agent_path}/resume")).await;
    assert_eq!(status, StatusCode::OK);
    let done = wait_for_status(&server, &task_id, "succeeded").await;
    assert_eq!(done["result"], "kept");

    // Finished tasks stay readable after another restart, until they expire.
    agent.stop().await;
    server.restart().await;
    let (status, body) = call(&server, Method::GET, &format!("/v1/tasks/{task_id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["result"], "kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_past_its_timeout_at_restart_times_out() {
    let mut server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 2).await;
    call(
        &server,
        Method::POST,
        &format!("/v1/agents/{}/pause", creds.id),
    )
    .await;
    let (_, body) = server
        .submit(
            &creds.id,
            json!({"kind": "echo", "payload": 1, "wait_ms": 0, "timeout_ms": 500}),
        )
        .await;
    let task_id = body["id"].as_str().unwrap().to_owned();
    agent.stop().await;
    server.shutdown().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    server.restart().await;

    let (status, body) = call(&server, Method::GET, &format!("/v1/tasks/{task_id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "timed_out");
    assert!(
        body["error"].as_str().unwrap().contains("restarted"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_maps_repeats_to_one_task() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 2).await;
    let task = json!({"kind": "echo", "payload": {"n": 1}});

    let (status, headers, first) = submit_keyed(&server, &creds.id, "order-17", &task).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert!(headers.get("idempotent-replayed").is_none());
    let (status, headers, again) = submit_keyed(&server, &creds.id, "order-17", &task).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], first["id"], "a repeat must not create a task");
    assert_eq!(again["result"], json!({"n": 1}));
    assert_eq!(headers["idempotent-replayed"], "true");

    let other = json!({"kind": "echo", "payload": {"n": 2}});
    let (status, _, body) = submit_keyed(&server, &creds.id, "order-17", &other).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["type"], "urn:keygate:problem:idempotency-key-reused");
    assert_eq!(body["task_id"], first["id"]);

    let (status, _, fresh) = submit_keyed(&server, &creds.id, "order-18", &task).await;
    assert_eq!(status, StatusCode::OK, "{fresh}");
    assert_ne!(fresh["id"], first["id"]);

    for bad in ["", "has space", &"k".repeat(256)] {
        let (status, _, body) = submit_keyed(&server, &creds.id, bad, &task).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "key {bad:?}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains("Idempotency-Key"),
            "{body}"
        );
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_repeats_create_one_task() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 4).await;
    let task = json!({"kind": "sleep", "payload": {"ms": 200}, "wait_ms": 0});

    let mut calls = Vec::new();
    for _ in 0..8 {
        let api = server.api();
        let token = server.admin_token.clone();
        let path = format!("/v1/agents/{}/tasks", creds.id);
        let body = Bytes::from(task.to_string());
        calls.push(tokio::spawn(async move {
            let headers = [
                (http::header::CONTENT_TYPE, "application/json".to_owned()),
                (http::header::AUTHORIZATION, format!("Bearer {token}")),
                (
                    http::HeaderName::from_static("idempotency-key"),
                    "same-key".to_owned(),
                ),
            ];
            let (status, _, raw) = api.send(Method::POST, &path, &headers, body).await;
            let body: Value = serde_json::from_slice(&raw).unwrap();
            (status, body["id"].as_str().unwrap_or_default().to_owned())
        }));
    }
    let mut ids = Vec::new();
    for call in calls {
        let (status, id) = call.await.unwrap();
        assert!(status.is_success(), "{status}");
        ids.push(id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "concurrent repeats created {ids:?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_outlives_a_restart() {
    let mut server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 2).await;
    let task = json!({"kind": "echo", "payload": "once"});
    let (status, _, first) = submit_keyed(&server, &creds.id, "restart-key", &task).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    agent.stop().await;
    server.restart().await;

    let agent = server.start_agent(&creds, 2).await;
    let (status, headers, again) = submit_keyed(&server, &creds.id, "restart-key", &task).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(headers["idempotent-replayed"], "true");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_then_keeps_queued() {
    let mut server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 1).await;

    let (_, body) = server
        .submit(
            &creds.id,
            json!({"kind": "sleep", "payload": {"ms": 800}, "wait_ms": 0, "timeout_ms": 60_000}),
        )
        .await;
    let running = body["id"].as_str().unwrap().to_owned();
    wait_for_status(&server, &running, "running").await;
    let (_, body) = server
        .submit(
            &creds.id,
            json!({"kind": "echo", "payload": "later", "wait_ms": 0, "timeout_ms": 60_000}),
        )
        .await;
    let queued = body["id"].as_str().unwrap().to_owned();

    server.shutdown().await;
    agent.stop().await;
    server.restart().await;

    let (_, body) = call(&server, Method::GET, &format!("/v1/tasks/{running}")).await;
    assert_eq!(
        body["status"], "succeeded",
        "the running task was cut: {body}"
    );
    assert_eq!(body["attempts"], 1, "{body}");
    let (_, body) = call(&server, Method::GET, &format!("/v1/tasks/{queued}")).await;
    assert_eq!(body["status"], "queued", "{body}");

    let agent = server.start_agent(&creds, 1).await;
    let done = wait_for_status(&server, &queued, "succeeded").await;
    assert_eq!(done["result"], "later");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_server_refuses_tasks_and_sessions() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    server
        .server()
        .state()
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);

    let (status, headers, body) = server
        .api()
        .request(
            Method::POST,
            &format!("/v1/agents/{}/tasks", creds.id),
            Some(&server.admin_token),
            Some(json!({"kind": "echo"})),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["type"], "urn:keygate:problem:shutting-down");
    assert_eq!(headers[http::header::RETRY_AFTER], "1");

    let token = keygate_tests::agent_token(&server, &creds).await;
    let mut sender =
        keygate_tests::agent_h2::<http_body_util::Full<Bytes>>(server.agent_addr, &creds.dir)
            .await
            .unwrap();
    let request = http::Request::post("https://localhost/v1/agent/session")
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}

/// Polls the agent until `check` holds for its view (at most 10 s).
async fn wait_for_agent(
    server: &TestServer,
    agent_id: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    for _ in 0..200 {
        let (_, body) = call(server, Method::GET, &format!("/v1/agents/{agent_id}")).await;
        if check(&body) {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("agent {agent_id} did not reach the expected state within 10 s: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_spread_over_agent_instances() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let handlers = keygate_tests::keygate_gateway::agent::TaskHandlers::builtin;
    let first = server.spawn_agent(&creds, 1, handlers(), "host-a");
    let second = server.spawn_agent(&creds, 1, handlers(), "host-b");
    let agent = wait_for_agent(&server, &creds.id, |a| {
        a["instances"].as_array().is_some_and(|i| i.len() == 2)
    })
    .await;
    assert_eq!(agent["capacity"], 2);
    assert_eq!(agent["status"], "running");

    // Each instance runs one task at a time, so both tasks run at once only
    // if they went to different instances.
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let (status, body) = server
            .submit(
                &creds.id,
                json!({"kind": "sleep", "payload": {"ms": 3000}, "wait_ms": 0}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        tasks.push(body["id"].as_str().unwrap().to_owned());
    }
    for task in &tasks {
        wait_for_status(&server, task, "running").await;
    }
    let busy = wait_for_agent(&server, &creds.id, |a| a["in_flight"] == 2).await;
    for instance in busy["instances"].as_array().unwrap() {
        assert_eq!(instance["in_flight"], 1, "{busy}");
    }

    first.stop().await;
    second.stop().await;
    let stopped = wait_for_agent(&server, &creds.id, |a| a["connected"] == false).await;
    assert_eq!(
        stopped["status"], "stopped",
        "it had connected before: {stopped}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_session_of_an_instance_replaces_the_old() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let handlers = keygate_tests::keygate_gateway::agent::TaskHandlers::builtin;
    let first = server.spawn_agent(&creds, 2, handlers(), "host-a");
    let before = wait_for_agent(&server, &creds.id, |a| a["connected"] == true).await;
    let old_session = before["instances"][0]["session_id"].clone();

    let again = server.spawn_agent(&creds, 2, handlers(), "host-a");
    let after = wait_for_agent(&server, &creds.id, |a| {
        a["instances"]
            .as_array()
            .is_some_and(|i| i.len() == 1 && i[0]["session_id"] != old_session)
    })
    .await;
    assert_eq!(after["instances"][0]["instance_id"], "host-a");
    again.stop().await;
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_timeout_ends_a_task_never_sent() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 1).await;
    call(
        &server,
        Method::POST,
        &format!("/v1/agents/{}/pause", creds.id),
    )
    .await;

    let (status, body) = server
        .submit(
            &creds.id,
            json!({"kind": "echo", "payload": 1, "timeout_ms": 60_000, "queue_timeout_ms": 300, "wait_ms": 10_000}),
        )
        .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("queue_timeout_ms"),
        "{body}"
    );

    let (status, body) = server
        .submit(
            &creds.id,
            json!({"kind": "echo", "timeout_ms": 1000, "queue_timeout_ms": 2000}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("queue_timeout_ms 2000"),
        "{body}"
    );
    agent.stop().await;
}
