//! Agent tokens that expire while their session is open: in-band refresh,
//! the "token expired" close, and refreshes that must be rejected.

use std::time::Duration;

use bytes::BytesMut;
use http_body_util::BodyExt;
use keygate_gateway::http::body::ChannelBody;
use keygate_protocol::{Frame, FrameDecoder, GoAwayReason, PROTOCOL_VERSION};
use keygate_tests::{agent_h2, agent_token, AgentCredentials, TestServer, ACCOUNT};
use serde_json::json;
use tokio::sync::mpsc;

const SHORT_LIFETIME_SECS: u64 = 5;

async fn short_lived_server() -> TestServer {
    TestServer::start_with(|c| c.auth.agent_token_lifetime_secs = SHORT_LIFETIME_SECS).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_agent_refreshes_in_band() {
    let server = short_lived_server().await;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 2).await;
    let session = server
        .server()
        .state()
        .sessions
        .get(&creds.id)
        .unwrap()
        .session_id
        .clone();

    // Past the first token's expiry, the same session still relays tasks.
    tokio::time::sleep(Duration::from_secs(SHORT_LIFETIME_SECS + 2)).await;
    let (status, body) = server
        .submit(&creds.id, json!({"kind": "echo", "payload": "still here"}))
        .await;
    assert_eq!(status, http::StatusCode::OK, "{body}");
    let current = server
        .server()
        .state()
        .sessions
        .get(&creds.id)
        .unwrap()
        .session_id
        .clone();
    assert_eq!(session, current, "the session was kept, not reopened");
    agent.stop().await;
}

/// Opens a version `version` session by hand and returns the frame sender and the response body.
async fn raw_session(
    server: &TestServer,
    creds: &AgentCredentials,
    version: u16,
) -> (mpsc::Sender<bytes::Bytes>, hyper::body::Incoming) {
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
    send(
        &tx,
        Frame::Hello {
            protocol_version: version,
            max_concurrent_tasks: 1,
            agent_version: "test".into(),
            instance_id: "raw".into(),
        },
    )
    .await;
    // Keep the HTTP/2 connection alive with the stream.
    std::mem::forget(sender);
    (tx, response.into_body())
}

async fn send(tx: &mpsc::Sender<bytes::Bytes>, frame: Frame) {
    let mut buf = BytesMut::new();
    frame.encode(&mut buf);
    tx.send(buf.freeze()).await.unwrap();
}

/// Reads frames, replying to pings, until one that is not a ping arrives (at most `limit`).
async fn next_non_ping(
    tx: &mpsc::Sender<bytes::Bytes>,
    body: &mut hyper::body::Incoming,
    decoder: &mut FrameDecoder,
    limit: Duration,
) -> Frame {
    tokio::time::timeout(limit, async {
        loop {
            if let Some(frame) = decoder.next_frame().unwrap() {
                match frame {
                    Frame::Ping { nonce } => send(tx, Frame::Pong { nonce }).await,
                    other => return other,
                }
                continue;
            }
            let chunk = body.frame().await.expect("the stream stays open").unwrap();
            if let Ok(data) = chunk.into_data() {
                decoder.extend(&data);
            }
        }
    })
    .await
    .expect("a frame in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrefreshed_session_closed_as_token_expired() {
    let server = short_lived_server().await;
    let creds = server.create_agent(ACCOUNT).await;
    let (tx, mut body) = raw_session(&server, &creds, PROTOCOL_VERSION).await;
    let mut decoder = FrameDecoder::new(keygate_protocol::DEFAULT_MAX_FRAME_BYTES);
    let limit = Duration::from_secs(SHORT_LIFETIME_SECS + 3);
    assert!(matches!(
        next_non_ping(&tx, &mut body, &mut decoder, limit).await,
        Frame::Welcome { .. }
    ));
    match next_non_ping(&tx, &mut body, &mut decoder, limit).await {
        Frame::GoAway {
            reason, message, ..
        } => {
            assert_eq!(reason, GoAwayReason::TokenExpired);
            assert!(message.contains("token expired"), "{message}");
        }
        other => panic!("expected GoAway, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_1_session_gets_unauthorized_instead() {
    let server = short_lived_server().await;
    let creds = server.create_agent(ACCOUNT).await;
    let (tx, mut body) = raw_session(&server, &creds, 1).await;
    let mut decoder = FrameDecoder::new(keygate_protocol::DEFAULT_MAX_FRAME_BYTES);
    let limit = Duration::from_secs(SHORT_LIFETIME_SECS + 3);
    match next_non_ping(&tx, &mut body, &mut decoder, limit).await {
        Frame::Welcome {
            protocol_version, ..
        } => assert_eq!(protocol_version, 1),
        other => panic!("expected Welcome, got {other:?}"),
    }
    match next_non_ping(&tx, &mut body, &mut decoder, limit).await {
        Frame::GoAway { reason, .. } => assert_eq!(reason, GoAwayReason::Unauthorized),
        other => panic!("expected GoAway, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_with_valid_token_accepted() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let (tx, mut body) = raw_session(&server, &creds, PROTOCOL_VERSION).await;
    let mut decoder = FrameDecoder::new(keygate_protocol::DEFAULT_MAX_FRAME_BYTES);
    let limit = Duration::from_secs(5);
    assert!(matches!(
        next_non_ping(&tx, &mut body, &mut decoder, limit).await,
        Frame::Welcome { .. }
    ));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = agent_token(&server, &creds).await;
    send(
        &tx,
        Frame::TokenRefresh {
            access_token: fresh,
        },
    )
    .await;
    match next_non_ping(&tx, &mut body, &mut decoder, limit).await {
        Frame::TokenAccepted { expires_in_ms } => {
            assert!(
                expires_in_ms > 800_000 && expires_in_ms <= 900_000,
                "{expires_in_ms}"
            );
        }
        other => panic!("expected TokenAccepted, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_with_other_agents_token_rejected() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let other = server.create_agent(ACCOUNT).await;
    let (tx, mut body) = raw_session(&server, &creds, PROTOCOL_VERSION).await;
    let mut decoder = FrameDecoder::new(keygate_protocol::DEFAULT_MAX_FRAME_BYTES);
    let limit = Duration::from_secs(5);
    assert!(matches!(
        next_non_ping(&tx, &mut body, &mut decoder, limit).await,
        Frame::Welcome { .. }
    ));
    let foreign = agent_token(&server, &other).await;
    send(
        &tx,
        Frame::TokenRefresh {
            access_token: foreign,
        },
    )
    .await;
    match next_non_ping(&tx, &mut body, &mut decoder, limit).await {
        Frame::GoAway {
            reason, message, ..
        } => {
            assert_eq!(reason, GoAwayReason::Unauthorized);
            assert!(message.contains("rejected"), "{message}");
        }
        other => panic!("expected GoAway, got {other:?}"),
    }
    let metrics = server.server().state().metrics.render();
    assert!(
        metrics.contains(r#"keygate_auth_failures_total{reason="certificate_mismatch"} 1"#),
        "{metrics}"
    );
}
