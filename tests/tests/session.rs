//! The agent session protocol spoken by hand: hello rules, heartbeats, replacement and shutdown.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use keygate_gateway::http::body::ChannelBody;
use keygate_protocol::{Frame, FrameDecoder, GoAwayReason, PROTOCOL_VERSION};
use keygate_tests::{agent_h2, agent_token, AgentCredentials, TestServer, ACCOUNT};
use tokio::sync::mpsc;

/// A session opened by hand: frames go out through `tx`, come back through `next`.
struct RawSession {
    tx: mpsc::Sender<Bytes>,
    body: Incoming,
    decoder: FrameDecoder,
}

impl RawSession {
    async fn open(server: &TestServer, creds: &AgentCredentials) -> RawSession {
        let token = agent_token(server, creds).await;
        let mut sender = agent_h2::<ChannelBody>(server.agent_addr, &creds.dir)
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(16);
        let request = http::Request::post("https://localhost/v1/agent/session")
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(ChannelBody::new(rx))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        RawSession {
            tx,
            body: response.into_body(),
            decoder: FrameDecoder::new(keygate_protocol::DEFAULT_MAX_FRAME_BYTES),
        }
    }

    async fn send(&self, frame: Frame) {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        self.tx.send(buf.freeze()).await.unwrap();
    }

    async fn hello(&self, version: u16) {
        self.send(Frame::Hello {
            protocol_version: version,
            max_concurrent_tasks: 4,
            agent_version: "test".into(),
            instance_id: "raw".into(),
        })
        .await;
    }

    /// Returns the next frame from the gateway, or None when the stream ends; fails after 5 s.
    async fn next(&mut self) -> Option<Frame> {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(frame) = self.decoder.next_frame().unwrap() {
                    return Some(frame);
                }
                match self.body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            self.decoder.extend(&data);
                        }
                    }
                    _ => return None,
                }
            }
        })
        .await
        .expect("a frame or the end of the stream within 5 s")
    }

    /// Skips pings until a GoAway arrives; returns its reason and message.
    async fn expect_go_away(&mut self) -> (GoAwayReason, String) {
        loop {
            match self.next().await {
                Some(Frame::GoAway {
                    reason, message, ..
                }) => return (reason, message),
                Some(Frame::Ping { .. }) | Some(Frame::Welcome { .. }) => continue,
                other => panic!("expected GoAway, got {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_then_welcome() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let mut session = RawSession::open(&server, &creds).await;
    session.hello(PROTOCOL_VERSION).await;
    match session.next().await {
        Some(Frame::Welcome {
            protocol_version,
            heartbeat_interval_ms,
            session_id,
        }) => {
            assert_eq!(protocol_version, PROTOCOL_VERSION);
            assert_eq!(heartbeat_interval_ms, 10_000);
            assert!(session_id.starts_with("ses_"));
        }
        other => panic!("expected Welcome, got {other:?}"),
    }
    session.send(Frame::Ping { nonce: 42 }).await;
    assert_eq!(session.next().await, Some(Frame::Pong { nonce: 42 }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_protocol_version_gets_go_away() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let mut session = RawSession::open(&server, &creds).await;
    session.hello(99).await;
    let (reason, message) = session.expect_go_away().await;
    assert_eq!(reason, GoAwayReason::ProtocolError);
    assert!(
        message.contains("99") && message.contains(&PROTOCOL_VERSION.to_string()),
        "{message}"
    );
    assert_eq!(session.next().await, None, "the stream ends after GoAway");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_frame_must_be_hello() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let mut session = RawSession::open(&server, &creds).await;
    session.send(Frame::Ping { nonce: 1 }).await;
    let (reason, message) = session.expect_go_away().await;
    assert_eq!(reason, GoAwayReason::ProtocolError);
    assert!(message.contains("hello"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_agent_closed_after_missed_heartbeats() {
    let server = TestServer::start_with(|c| c.gateway.heartbeat_interval_ms = 200).await;
    let creds = server.create_agent(ACCOUNT).await;
    let mut session = RawSession::open(&server, &creds).await;
    session.hello(PROTOCOL_VERSION).await;
    let started = std::time::Instant::now();
    let (reason, _) = session.expect_go_away().await;
    assert_eq!(reason, GoAwayReason::HeartbeatTimeout);
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "closed after {:?}",
        started.elapsed()
    );
    for _ in 0..50 {
        if server.server().state().sessions.get(&creds.id).is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the closed session is still registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_session_replaces_first() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let mut first = RawSession::open(&server, &creds).await;
    first.hello(PROTOCOL_VERSION).await;
    assert!(matches!(first.next().await, Some(Frame::Welcome { .. })));
    let first_id = server
        .server()
        .state()
        .sessions
        .get(&creds.id)
        .unwrap()
        .session_id
        .clone();

    let mut second = RawSession::open(&server, &creds).await;
    second.hello(PROTOCOL_VERSION).await;
    assert!(matches!(second.next().await, Some(Frame::Welcome { .. })));
    let (reason, _) = first.expect_go_away().await;
    assert_eq!(reason, GoAwayReason::Replaced);
    let current = server.server().state().sessions.get(&creds.id).unwrap();
    assert_ne!(current.session_id, first_id);
    assert_eq!(server.server().state().sessions.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_go_away() {
    let mut server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let mut session = RawSession::open(&server, &creds).await;
    session.hello(PROTOCOL_VERSION).await;
    assert!(matches!(session.next().await, Some(Frame::Welcome { .. })));
    let shutdown = tokio::spawn(async move {
        server.shutdown().await;
        server
    });
    let (reason, _) = session.expect_go_away().await;
    assert_eq!(reason, GoAwayReason::ShuttingDown);
    drop(session);
    let _server = tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown finishes")
        .unwrap();
}

/// Reads one metric's value from the ops listener; 0 when the series is absent.
async fn metric(server: &TestServer, series: &str) -> f64 {
    let client = keygate_tests::HttpsClient::plain(server.ops_addr);
    let (_, _, body) = client
        .send(http::Method::GET, "/metrics", &[], Bytes::new())
        .await;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_that_stops_reading_is_closed() {
    let server = TestServer::start_with(|config| config.gateway.write_timeout_ms = 300).await;
    let creds = server.create_agent(ACCOUNT).await;
    let mut session = RawSession::open(&server, &creds).await;
    session
        .send(Frame::Hello {
            protocol_version: PROTOCOL_VERSION,
            max_concurrent_tasks: 1000,
            agent_version: "test".into(),
            instance_id: "stalled".into(),
        })
        .await;
    assert!(matches!(session.next().await, Some(Frame::Welcome { .. })));

    // From here on the agent reads nothing. Large tasks fill the flow-control
    // window, then the gateway's bounded buffers, then the write timeout hits.
    let blob = "x".repeat(200_000);
    let mut submitted = 0;
    while server.server().state().sessions.get(&creds.id).is_some() {
        assert!(submitted < 1000, "the stalled session was never closed");
        let (status, body) = server
            .submit(
                &creds.id,
                serde_json::json!({"kind": "echo", "payload": blob, "wait_ms": 0}),
            )
            .await;
        assert!(
            status.is_success() || status == http::StatusCode::SERVICE_UNAVAILABLE,
            "{status}: {body}"
        );
        submitted += 1;
    }
    // The session leaves the registry just before the counter is raised.
    let mut closed = 0.0;
    for _ in 0..50 {
        closed = metric(&server, "keygate_gateway_slow_consumer_sessions_total").await;
        if closed > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(closed, 1.0);
    drop(session);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_beyond_the_limit_are_shed() {
    let server =
        TestServer::start_with(|config| config.gateway.max_concurrent_handshakes = 1).await;
    // A connection that never starts its handshake takes the only slot.
    let hog = tokio::net::TcpStream::connect(server.api_addr)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let config = keygate_gateway::tls::client_config(&server.ca_path(), None, false).unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tcp = tokio::net::TcpStream::connect(server.api_addr)
        .await
        .unwrap();
    let shed = connector.connect(name.clone(), tcp).await;
    assert!(
        shed.is_err(),
        "a second handshake must be shed while the slot is held"
    );
    assert_eq!(
        metric(
            &server,
            "keygate_listener_handshakes_shed_total{listener=\"api\"}"
        )
        .await,
        1.0
    );

    drop(hog);
    let mut accepted = false;
    for _ in 0..50 {
        let tcp = tokio::net::TcpStream::connect(server.api_addr)
            .await
            .unwrap();
        if connector.connect(name.clone(), tcp).await.is_ok() {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(accepted, "handshakes work again once the slot is free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_agent_does_not_slow_another() {
    let server = TestServer::start_with(|config| config.gateway.write_timeout_ms = 60_000).await;
    let stalled = server.create_agent(ACCOUNT).await;
    let mut session = RawSession::open(&server, &stalled).await;
    session
        .send(Frame::Hello {
            protocol_version: PROTOCOL_VERSION,
            max_concurrent_tasks: 1000,
            agent_version: "test".into(),
            instance_id: "stalled".into(),
        })
        .await;
    assert!(matches!(session.next().await, Some(Frame::Welcome { .. })));

    // The stalled agent reads nothing from here on; these tasks fill its
    // flow-control window and the gateway's buffers for its session.
    let blob = "x".repeat(200_000);
    for _ in 0..40 {
        let (status, body) = server
            .submit(
                &stalled.id,
                serde_json::json!({"kind": "echo", "payload": blob, "wait_ms": 0, "timeout_ms": 60_000}),
            )
            .await;
        assert_eq!(status, http::StatusCode::ACCEPTED, "{body}");
    }

    let healthy = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&healthy, 16).await;
    for i in 0..50 {
        let (status, body) = server
            .submit(
                &healthy.id,
                serde_json::json!({"kind": "echo", "payload": {"n": i}, "timeout_ms": 5000, "wait_ms": 5000}),
            )
            .await;
        assert_eq!(
            status,
            http::StatusCode::OK,
            "task {i} of the healthy agent: {body}"
        );
        assert_eq!(body["status"], "succeeded", "{body}");
    }
    assert!(
        server.server().state().sessions.get(&stalled.id).is_some(),
        "the stalled session was still open, and still blocked, while the other agent worked"
    );
    agent.stop().await;
    drop(session);
}

impl RawSession {
    /// Skips pings until a task arrives; returns its id.
    async fn next_task_id(&mut self) -> String {
        loop {
            match self.next().await {
                Some(Frame::Task { task_id, .. }) => return task_id,
                Some(Frame::Ping { .. }) | Some(Frame::Welcome { .. }) => continue,
                other => panic!("expected a task, got {other:?}"),
            }
        }
    }
}

async fn task_view(server: &TestServer, task_id: &str) -> serde_json::Value {
    let (status, _, body) = server
        .api()
        .request(
            http::Method::GET,
            &format!("/v1/tasks/{task_id}"),
            Some(&server.admin_token),
            None,
        )
        .await;
    assert_eq!(status, http::StatusCode::OK, "{body}");
    body
}

/// Polls a task until it has ended; fails after 5 s.
async fn final_view(server: &TestServer, task_id: &str) -> serde_json::Value {
    for _ in 0..50 {
        let view = task_view(server, task_id).await;
        let status = view["status"].as_str().unwrap_or_default();
        if !["queued", "dispatched", "running"].contains(&status) {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("task {task_id} did not end within 5 s");
}

async fn submit_without_wait(server: &TestServer, agent_id: &str) -> String {
    let (status, body) = server
        .submit(
            agent_id,
            serde_json::json!({"kind": "echo", "payload": {}, "wait_ms": 0}),
        )
        .await;
    assert_eq!(status, http::StatusCode::ACCEPTED, "{body}");
    body["id"].as_str().expect("a task id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_chunks_interleave_with_other_tasks() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let mut session = RawSession::open(&server, &creds).await;
    session.hello(PROTOCOL_VERSION).await;
    assert!(matches!(session.next().await, Some(Frame::Welcome { .. })));
    server.wait_for_session(&creds.id).await;

    let large = submit_without_wait(&server, &creds.id).await;
    assert_eq!(session.next_task_id().await, large);
    session
        .send(Frame::TaskAccepted {
            task_id: large.clone(),
        })
        .await;
    let mut first_part = Bytes::from(format!("{{\"data\": \"{}", "a".repeat(3 * 1024 * 1024)));
    while !first_part.is_empty() {
        let chunk = first_part.split_to(first_part.len().min(keygate_protocol::RESULT_CHUNK_BYTES));
        session
            .send(Frame::TaskResultChunk {
                task_id: large.clone(),
                payload: chunk,
            })
            .await;
    }

    // A second task runs to its end while the first one's result is half sent.
    let small = submit_without_wait(&server, &creds.id).await;
    assert_eq!(session.next_task_id().await, small);
    session
        .send(Frame::TaskResult {
            task_id: small.clone(),
            outcome: keygate_protocol::TaskOutcome::Succeeded,
            traceparent: None,
            payload: Bytes::from_static(b"{\"small\": true}"),
        })
        .await;
    let small_view = final_view(&server, &small).await;
    assert_eq!(small_view["status"], "succeeded", "{small_view}");
    assert_eq!(small_view["result"], serde_json::json!({"small": true}));
    let large_view = task_view(&server, &large).await;
    assert_eq!(large_view["status"], "running", "{large_view}");

    session
        .send(Frame::TaskResult {
            task_id: large.clone(),
            outcome: keygate_protocol::TaskOutcome::Succeeded,
            traceparent: None,
            payload: Bytes::from_static(b"\"}"),
        })
        .await;
    let view = final_view(&server, &large).await;
    assert_eq!(view["status"], "succeeded");
    let data = view["result"]["data"].as_str().expect("the joined result");
    assert_eq!(data.len(), 3 * 1024 * 1024);
    assert!(data.bytes().all(|b| b == b'a'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_over_the_limit_fails_its_task() {
    let server = TestServer::start_with(|c| c.gateway.max_result_bytes = 100_000).await;
    let creds = server.create_agent(ACCOUNT).await;
    let mut session = RawSession::open(&server, &creds).await;
    session.hello(PROTOCOL_VERSION).await;
    assert!(matches!(session.next().await, Some(Frame::Welcome { .. })));
    server.wait_for_session(&creds.id).await;

    let task = submit_without_wait(&server, &creds.id).await;
    assert_eq!(session.next_task_id().await, task);
    for _ in 0..2 {
        session
            .send(Frame::TaskResultChunk {
                task_id: task.clone(),
                payload: Bytes::from(vec![b'a'; 60_000]),
            })
            .await;
    }
    // The agent goes on sending; the rest is dropped.
    session
        .send(Frame::TaskResult {
            task_id: task.clone(),
            outcome: keygate_protocol::TaskOutcome::Succeeded,
            traceparent: None,
            payload: Bytes::from_static(b"\"}"),
        })
        .await;
    let view = final_view(&server, &task).await;
    assert_eq!(view["status"], "failed", "{view}");
    let error = view["error"].as_str().unwrap();
    assert!(
        error.contains("gateway.max_result_bytes (100000 bytes)"),
        "{error}"
    );

    // The session goes on serving tasks.
    let next = submit_without_wait(&server, &creds.id).await;
    assert_eq!(session.next_task_id().await, next);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_chunk_needs_protocol_version_4() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let mut session = RawSession::open(&server, &creds).await;
    session.hello(3).await;
    assert!(matches!(session.next().await, Some(Frame::Welcome { .. })));
    session
        .send(Frame::TaskResultChunk {
            task_id: "tsk_none".into(),
            payload: Bytes::from_static(b"{"),
        })
        .await;
    let (reason, message) = session.expect_go_away().await;
    assert_eq!(reason, GoAwayReason::ProtocolError);
    assert!(message.contains("task_result_chunk"), "{message}");
}
