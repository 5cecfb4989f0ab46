//! The agent session protocol spoken by hand, over both transports: hello
//! rules, heartbeats, replacement, shutdown, slow agents and the upgrade's
//! own errors.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use keygate_gateway::http::body::ChannelBody;
use keygate_gateway::session::stream;
use keygate_protocol::{Frame, FrameDecoder, GoAwayReason, PROTOCOL_VERSION};
use keygate_tests::{agent_h2, agent_http1, agent_token, AgentCredentials, TestServer, ACCOUNT};
use tokio::io::ReadHalf;
use tokio::sync::mpsc;

/// Carrier of a hand-made session's frames.
#[derive(Clone, Copy, Debug)]
enum Transport {
    Http2,
    Upgrade,
}

enum Inbound {
    Http2(Incoming),
    Upgraded(ReadHalf<TokioIo<Upgraded>>),
}

/// A session opened by hand: frames go out through `tx`, come back through `next`.
struct RawSession {
    tx: mpsc::Sender<Bytes>,
    inbound: Inbound,
    decoder: FrameDecoder,
}

impl RawSession {
    async fn open(server: &TestServer, creds: &AgentCredentials) -> RawSession {
        RawSession::open_over(server, creds, Transport::Http2).await
    }

    async fn open_over(
        server: &TestServer,
        creds: &AgentCredentials,
        transport: Transport,
    ) -> RawSession {
        let token = agent_token(server, creds).await;
        let (tx, rx) = mpsc::channel(16);
        let inbound = match transport {
            Transport::Http2 => {
                let mut sender = agent_h2::<ChannelBody>(server.agent_addr, &creds.dir)
                    .await
                    .unwrap();
                let request = http::Request::post("https://localhost/v1/agent/session")
                    .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
                    .body(ChannelBody::new(rx))
                    .unwrap();
                let response = sender.send_request(request).await.unwrap();
                assert_eq!(response.status(), http::StatusCode::OK);
                Inbound::Http2(response.into_body())
            }
            Transport::Upgrade => {
                let response =
                    upgrade_request(server, creds, Some(&token), Some("keygate-session")).await;
                assert_eq!(response.status(), http::StatusCode::SWITCHING_PROTOCOLS);
                assert_eq!(response.headers()["upgrade"], "keygate-session");
                let upgraded = hyper::upgrade::on(response).await.unwrap();
                let (reader, writer) = tokio::io::split(TokioIo::new(upgraded));
                tokio::spawn(async move {
                    let mut frames = rx;
                    stream::write_frames(writer, &mut frames, Duration::from_secs(60)).await
                });
                Inbound::Upgraded(reader)
            }
        };
        RawSession {
            tx,
            inbound,
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
            let body = match &mut self.inbound {
                Inbound::Http2(body) => body,
                Inbound::Upgraded(reader) => {
                    return stream::read_frame(reader, &mut self.decoder, 1024)
                        .await
                        .unwrap();
                }
            };
            loop {
                if let Some(frame) = self.decoder.next_frame().unwrap() {
                    return Some(frame);
                }
                match body.frame().await {
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
async fn hello_then_welcome_over_http2() {
    hello_then_welcome(Transport::Http2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_then_welcome_over_upgrade() {
    hello_then_welcome(Transport::Upgrade).await;
}

async fn hello_then_welcome(transport: Transport) {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let mut session = RawSession::open_over(&server, &creds, transport).await;
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
async fn silent_agent_closed_after_missed_heartbeats_over_http2() {
    silent_agent_closed_after_missed_heartbeats(Transport::Http2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_agent_closed_after_missed_heartbeats_over_upgrade() {
    silent_agent_closed_after_missed_heartbeats(Transport::Upgrade).await;
}

async fn silent_agent_closed_after_missed_heartbeats(transport: Transport) {
    let server = TestServer::start_with(|c| c.gateway.heartbeat_interval_ms = 200).await;
    let creds = server.create_agent(ACCOUNT).await;
    let mut session = RawSession::open_over(&server, &creds, transport).await;
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

    // The new session upgrades HTTP/1.1: replacement does not depend on the transport.
    let mut second = RawSession::open_over(&server, &creds, Transport::Upgrade).await;
    second.hello(PROTOCOL_VERSION).await;
    assert!(matches!(second.next().await, Some(Frame::Welcome { .. })));
    let (reason, _) = first.expect_go_away().await;
    assert_eq!(reason, GoAwayReason::Replaced);
    let current = server.server().state().sessions.get(&creds.id).unwrap();
    assert_ne!(current.session_id, first_id);
    assert_eq!(server.server().state().sessions.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_go_away_over_http2() {
    shutdown_sends_go_away(Transport::Http2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_go_away_over_upgrade() {
    shutdown_sends_go_away(Transport::Upgrade).await;
}

async fn shutdown_sends_go_away(transport: Transport) {
    let mut server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let mut session = RawSession::open_over(&server, &creds, transport).await;
    session.hello(PROTOCOL_VERSION).await;
    assert!(matches!(session.next().await, Some(Frame::Welcome { .. })));
    let shutdown = tokio::spawn(async move {
        server.shutdown().await;
        server
    });
    let (reason, _) = session.expect_go_away().await;
    assert_eq!(reason, GoAwayReason::ShuttingDown);
    // The server ends the stream itself after the GoAway.
    assert_eq!(session.next().await, None);
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
async fn agent_that_stops_reading_is_closed_over_http2() {
    agent_that_stops_reading_is_closed(Transport::Http2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_that_stops_reading_is_closed_over_upgrade() {
    agent_that_stops_reading_is_closed(Transport::Upgrade).await;
}

async fn agent_that_stops_reading_is_closed(transport: Transport) {
    let server = TestServer::start_with(|config| config.gateway.write_timeout_ms = 300).await;
    let creds = server.create_agent(ACCOUNT).await;
    let mut session = RawSession::open_over(&server, &creds, transport).await;
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

/// Sends `POST /v1/agent/session` over HTTP/1.1 with the given token and
/// `Upgrade` header, and returns the response.
async fn upgrade_request(
    server: &TestServer,
    creds: &AgentCredentials,
    token: Option<&str>,
    upgrade: Option<&str>,
) -> http::Response<Incoming> {
    let mut sender = agent_http1::<Empty<Bytes>>(server.agent_addr, &creds.dir)
        .await
        .unwrap();
    let mut request =
        http::Request::post("/v1/agent/session").header(http::header::HOST, "localhost");
    if let Some(token) = token {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if let Some(upgrade) = upgrade {
        request = request
            .header(http::header::CONNECTION, "upgrade")
            .header(http::header::UPGRADE, upgrade);
    }
    sender
        .send_request(request.body(Empty::new()).unwrap())
        .await
        .unwrap()
}

/// Returns the `detail` of a problem response.
async fn problem_detail(response: http::Response<Incoming>) -> String {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    problem["detail"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_session_without_upgrade_gets_426() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let token = agent_token(&server, &creds).await;
    let response = upgrade_request(&server, &creds, Some(&token), None).await;
    assert_eq!(response.status(), http::StatusCode::UPGRADE_REQUIRED);
    assert_eq!(response.headers()["upgrade"], "keygate-session");
    let detail = problem_detail(response).await;
    assert!(detail.contains("Upgrade: keygate-session"), "{detail}");

    // `Upgrade` alone is not enough: without `Connection: upgrade`, HTTP/1.1
    // servers and proxies do not switch protocols.
    let mut sender = agent_http1::<Empty<Bytes>>(server.agent_addr, &creds.dir)
        .await
        .unwrap();
    let request = http::Request::post("/v1/agent/session")
        .header(http::header::HOST, "localhost")
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::UPGRADE, "keygate-session")
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::UPGRADE_REQUIRED);
    let detail = problem_detail(response).await;
    assert!(detail.contains("Connection: upgrade"), "{detail}");
    assert!(server.server().state().sessions.get(&creds.id).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_to_another_protocol_is_refused() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let token = agent_token(&server, &creds).await;
    let response = upgrade_request(&server, &creds, Some(&token), Some("websocket")).await;
    assert_eq!(response.status(), http::StatusCode::BAD_REQUEST);
    let detail = problem_detail(response).await;
    assert!(
        detail.contains("\"websocket\"") && detail.contains("keygate-session"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_needs_a_valid_token() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let missing = upgrade_request(&server, &creds, None, Some("keygate-session")).await;
    assert_eq!(missing.status(), http::StatusCode::UNAUTHORIZED);
    let forged = upgrade_request(
        &server,
        &creds,
        Some("not.a.token"),
        Some("keygate-session"),
    )
    .await;
    assert_eq!(forged.status(), http::StatusCode::UNAUTHORIZED);
    assert!(server.server().state().sessions.get(&creds.id).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_sent_with_the_upgrade_request_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let token = agent_token(&server, &creds).await;
    let mut stream = keygate_tests::agent_tls_http1(server.agent_addr, &creds.dir)
        .await
        .unwrap();
    // The request head and the first frame in one write, before any response,
    // and an `Upgrade` header that lists another protocol first.
    let mut bytes = format!(
        "POST /v1/agent/session HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\
         connection: Upgrade\r\nupgrade: h2c, keygate-session\r\ncontent-length: 0\r\n\r\n"
    )
    .into_bytes();
    let mut hello = BytesMut::new();
    Frame::Hello {
        protocol_version: PROTOCOL_VERSION,
        max_concurrent_tasks: 1,
        agent_version: "test".into(),
        instance_id: "pipelined".into(),
    }
    .encode(&mut hello);
    bytes.extend_from_slice(&hello);
    stream.write_all(&bytes).await.unwrap();

    // The response head ends with an empty line; frames follow it.
    let mut received = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("a response within 5 s")
            .unwrap();
        assert!(
            n > 0,
            "the connection closed: {:?}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&chunk[..n]);
        if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&received[..head_end]).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: keygate-session"), "{head}");
    let mut decoder = FrameDecoder::new(keygate_protocol::DEFAULT_MAX_FRAME_BYTES);
    decoder.extend(&received[head_end..]);
    let welcome = tokio::time::timeout(
        Duration::from_secs(5),
        stream::read_frame(&mut stream, &mut decoder, 1024),
    )
    .await
    .expect("a frame within 5 s")
    .unwrap();
    assert!(
        matches!(welcome, Some(Frame::Welcome { .. })),
        "{welcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_with_body_or_http10_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let token = agent_token(&server, &creds).await;
    let cases = [
        (
            "HTTP/1.1",
            "content-length: 3\r\n",
            "abc",
            "400",
            "send the hello frame after the 101 response",
        ),
        ("HTTP/1.0", "", "", "426", "the request used HTTP/1.0"),
    ];
    for (version, extra, body, status, detail) in cases {
        let mut stream = keygate_tests::agent_tls_http1(server.agent_addr, &creds.dir)
            .await
            .unwrap();
        let request = format!(
            "POST /v1/agent/session {version}\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\
             connection: upgrade\r\nupgrade: keygate-session\r\n{extra}\r\n{body}"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        // Both cases end with a complete problem document; read until it has arrived.
        while !String::from_utf8_lossy(&answer).contains(detail) {
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
                .await
                .expect("a response within 5 s")
                .unwrap();
            assert!(n > 0, "{version}: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&chunk[..n]);
        }
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.contains(&format!(" {status} ")),
            "{version}: {answer}"
        );
        assert!(server.server().state().sessions.get(&creds.id).is_none());
    }
}
