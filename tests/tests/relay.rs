//! Task relay end to end: the reference agent connected over mTLS, tasks submitted over HTTPS.

use std::time::Duration;

use http::{Method, StatusCode};
use keygate_tests::{TestServer, ACCOUNT};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_task_round_trip() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 4).await;

    let (status, body) = server
        .submit(
            &creds.id,
            json!({"kind": "echo", "payload": {"hello": "world", "n": [1, 2]}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["result"], json!({"hello": "world", "n": [1, 2]}));
    assert_eq!(body["agent_id"], creds.id.as_str());
    let task_id = body["id"].as_str().unwrap();
    assert!(task_id.starts_with("tsk_"));

    let (status, _, polled) = server
        .api()
        .request(
            Method::GET,
            &format!("/v1/tasks/{task_id}"),
            Some(&server.admin_token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(polled["status"], "succeeded");
    assert!(polled["finished_at_ms"].as_u64().is_some());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_in_flight_on_one_session() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 32).await;

    // 32 tasks of 300 ms each finish in about 300 ms only if they run at once.
    let started = std::time::Instant::now();
    let mut calls = Vec::new();
    for i in 0..32 {
        let api = server.api();
        let token = server.admin_token.clone();
        let path = format!("/v1/agents/{}/tasks", creds.id);
        calls.push(tokio::spawn(async move {
            let body = json!({"kind": "sleep", "payload": {"ms": 300}, "timeout_ms": 10_000});
            let (status, _, body) = api
                .request(Method::POST, &path, Some(&token), Some(body))
                .await;
            (i, status, body)
        }));
    }
    for call in calls {
        let (i, status, body) = call.await.unwrap();
        assert_eq!(status, StatusCode::OK, "task {i}: {body}");
        assert_eq!(body["result"], json!({"slept_ms": 300}), "task {i}");
    }
    let sessions = server.server().state().sessions.len();
    assert_eq!(sessions, 1, "all tasks share one session");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "32 concurrent 300 ms tasks took {:?}; they did not run concurrently",
        started.elapsed()
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_not_connected_fails_at_once() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let (status, body) = server
        .submit(&creds.id, json!({"kind": "echo", "payload": 1}))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["type"], "urn:keygate:problem:agent-not-connected");
    assert!(body["detail"].as_str().unwrap().contains(&creds.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_agent_times_out() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 2).await;
    let (status, body) = server
        .submit(
            &creds.id,
            json!({"kind": "sleep", "payload": {"ms": 5000}, "timeout_ms": 300}),
        )
        .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["type"], "urn:keygate:problem:task-timed-out");
    let task_id = body["task_id"].as_str().unwrap();
    let (_, _, polled) = server
        .api()
        .request(
            Method::GET,
            &format!("/v1/tasks/{task_id}"),
            Some(&server.admin_token),
            None,
        )
        .await;
    assert_eq!(polled["status"], "timed_out");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_wait_returns_202_then_poll() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 2).await;
    let (status, headers, body) = server
        .api()
        .request(
            Method::POST,
            &format!("/v1/agents/{}/tasks", creds.id),
            Some(&server.admin_token),
            Some(json!({"kind": "sleep", "payload": {"ms": 200}, "wait_ms": 0})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let task_id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        headers[http::header::LOCATION],
        format!("/v1/tasks/{task_id}").as_str()
    );

    let mut last = serde_json::Value::Null;
    for _ in 0..100 {
        let (_, _, polled) = server
            .api()
            .request(
                Method::GET,
                &format!("/v1/tasks/{task_id}"),
                Some(&server.admin_token),
                None,
            )
            .await;
        last = polled;
        if last["status"] == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last["status"], "succeeded", "{last}");
    assert_eq!(last["result"], json!({"slept_ms": 200}));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_task_reports_agent_error() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 2).await;
    let (status, body) = server
        .submit(&creds.id, json!({"kind": "no-such-kind", "payload": {}}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "failed");
    assert!(
        body["error"].as_str().unwrap().contains("no-such-kind"),
        "{body}"
    );

    let (status, body) = server
        .submit(
            &creds.id,
            json!({"kind": "sleep", "payload": {"seconds": 1}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "failed");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_submissions_rejected() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let cases = [
        (json!({"kind": "Echo!"}), "kind"),
        (json!({"kind": ""}), "kind"),
        (json!({"kind": "echo", "timeout_ms": 0}), "timeout_ms 0"),
        (
            json!({"kind": "echo", "timeout_ms": 999_999_999}),
            "timeout_ms 999999999",
        ),
        (json!({"kind": "echo", "colour": "red"}), "colour"),
        (json!({"payload": 1}), "kind"),
    ];
    for (body, expected) in cases {
        let (status, problem) = server.submit(&creds.id, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains(expected),
            "{body}: detail {detail:?} should mention {expected:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_to_other_accounts_agents_forbidden() {
    let server = TestServer::start().await;
    let other = server.create_agent("globex").await;
    let (status, body) = server.submit(&other.id, json!({"kind": "echo"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = server
        .submit("agt_doesnotexist", json!({"kind": "echo"}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let reader = server.token(ACCOUNT, &["secrets:read"], None);
    let (status, _, body) = server
        .api()
        .request(
            Method::POST,
            &format!("/v1/agents/{}/tasks", other.id),
            Some(&reader),
            Some(json!({"kind": "echo"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["type"], "urn:keygate:problem:insufficient-scope");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_agent_queue_answers_429() {
    let server = TestServer::start_with(|c| c.gateway.max_queued_tasks_per_agent = 1).await;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 1).await;
    // One task runs, one waits for the slot; the third finds the queue full.
    for _ in 0..2 {
        let (status, body) = server
            .submit(
                &creds.id,
                json!({"kind": "sleep", "payload": {"ms": 2000}, "wait_ms": 0}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, headers, body) = server
        .api()
        .request(
            Method::POST,
            &format!("/v1/agents/{}/tasks", creds.id),
            Some(&server.admin_token),
            Some(json!({"kind": "echo"})),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(headers[http::header::RETRY_AFTER], "1");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_disconnect_fails_task_after_last_attempt() {
    let server = TestServer::start_with(|config| config.gateway.max_delivery_attempts = 1).await;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 2).await;
    let (status, body) = server
        .submit(
            &creds.id,
            json!({"kind": "sleep", "payload": {"ms": 3000}, "wait_ms": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let task_id = body["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // With one delivery attempt allowed, closing the session from the
    // gateway's side ends the task as agent_disconnected.
    let session = server.server().state().sessions.get(&creds.id).unwrap();
    session.close(keygate_protocol::GoAwayReason::Replaced);
    let mut status_seen = serde_json::Value::Null;
    for _ in 0..100 {
        let (_, _, polled) = server
            .api()
            .request(
                Method::GET,
                &format!("/v1/tasks/{task_id}"),
                Some(&server.admin_token),
                None,
            )
            .await;
        status_seen = polled["status"].clone();
        if !matches!(status_seen.as_str(), Some("running" | "dispatched")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status_seen, "agent_disconnected");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_view_shows_session() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let (status, _, body) = server
        .api()
        .request(
            Method::GET,
            &format!("/v1/agents/{}", creds.id),
            Some(&server.admin_token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["connected"], false);
    assert_eq!(body["status"], "pending", "never connected: {body}");
    assert!(body.get("client_secret").is_none());
    let agent = server.start_agent(&creds, 7).await;
    let (_, _, body) = server
        .api()
        .request(
            Method::GET,
            &format!("/v1/agents/{}", creds.id),
            Some(&server.admin_token),
            None,
        )
        .await;
    assert_eq!(body["connected"], true);
    assert_eq!(body["status"], "running");
    assert_eq!(body["capacity"], 7);
    assert_eq!(body["instances"][0]["capacity"], 7);
    assert_eq!(body["instances"][0]["instance_id"], "test-instance");
    assert_eq!(
        body["instances"][0]["protocol_version"],
        keygate_protocol::PROTOCOL_VERSION
    );
    let (_, _, list) = server
        .api()
        .request(Method::GET, "/v1/agents", Some(&server.admin_token), None)
        .await;
    assert_eq!(list["agents"].as_array().unwrap().len(), 1);
    agent.stop().await;
}

/// Returns a result of 2 MiB.
struct Oversized;

impl keygate_gateway::agent::TaskHandler for Oversized {
    fn run(&self, _payload: bytes::Bytes) -> keygate_gateway::agent::TaskFuture {
        Box::pin(async { Ok(bytes::Bytes::from(vec![b'7'; 2 * 1024 * 1024])) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_result_fails_task_not_session() {
    let server = TestServer::start_with(|c| c.gateway.max_result_bytes = 1024 * 1024).await;
    let creds = server.create_agent(ACCOUNT).await;
    let mut handlers = keygate_gateway::agent::TaskHandlers::builtin();
    handlers.register("oversized", Oversized);
    let agent = server.start_agent_with(&creds, 2, handlers).await;
    let session_before = server
        .server()
        .state()
        .sessions
        .get(&creds.id)
        .unwrap()
        .session_id
        .clone();

    let (status, body) = server.submit(&creds.id, json!({"kind": "oversized"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "failed");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("exceeds gateway.max_result_bytes (1048576 bytes)"),
        "{body}"
    );

    let (status, body) = server
        .submit(&creds.id, json!({"kind": "echo", "payload": 1}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let session_after = server
        .server()
        .state()
        .sessions
        .get(&creds.id)
        .unwrap()
        .session_id
        .clone();
    assert_eq!(session_before, session_after, "the session survived");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_larger_than_a_frame_arrives_whole() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 4).await;
    let size = 5 * 1024 * 1024 + 17;

    let (status, body) = server
        .submit(
            &creds.id,
            json!({"kind": "fill", "payload": {"bytes": size}, "timeout_ms": 30_000}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "succeeded", "{}", body["error"]);
    let data = body["result"]["data"].as_str().expect("the result's data");
    assert_eq!(data.len(), size);
    assert!(data.bytes().all(|b| b == b'a'));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_task_waits_for_the_result() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 2).await;
    let (status, body) = server
        .submit(
            &creds.id,
            json!({"kind": "sleep", "payload": {"ms": 300}, "wait_ms": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let task_id = body["id"].as_str().unwrap().to_owned();

    let (status, _, view) = server
        .api()
        .request(
            Method::GET,
            &format!("/v1/tasks/{task_id}?wait_ms=10000"),
            Some(&server.admin_token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["status"], "succeeded", "{view}");
    assert_eq!(view["result"], json!({"slept_ms": 300}));

    let (status, _, problem) = server
        .api()
        .request(
            Method::GET,
            &format!("/v1/tasks/{task_id}?wait_ms=soon"),
            Some(&server.admin_token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert_eq!(problem["type"], "urn:keygate:problem:invalid-query");
    assert!(problem["detail"].as_str().unwrap().contains("\"soon\""));
    agent.stop().await;
}
