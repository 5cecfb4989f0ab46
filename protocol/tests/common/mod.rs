//! Sample frames and helpers shared by the integration tests.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use bytes::{Bytes, BytesMut};
use keygate_protocol::{Frame, GoAwayReason, TaskOutcome, PROTOCOL_VERSION};

/// Returns one frame of every type, with non-trivial values in every field.
pub fn sample_frames() -> Vec<Frame> {
    vec![
        Frame::Hello {
            protocol_version: PROTOCOL_VERSION,
            max_concurrent_tasks: 16,
            agent_version: "keygate-agent 0.3.1".to_owned(),
            instance_id: "host-7f3a/1".to_owned(),
        },
        Frame::Welcome {
            protocol_version: PROTOCOL_VERSION,
            session_id: "sess-01JD2".to_owned(),
            heartbeat_interval_ms: 15_000,
        },
        Frame::Task {
            task_id: "task-42".to_owned(),
            kind: "db.rotate-password".to_owned(),
            timeout_ms: 30_000,
            traceparent: None,
            payload: Bytes::from_static(b"{\"user\":\"app\"}\x00\xff"),
        },
        Frame::Task {
            task_id: "task-44".to_owned(),
            kind: "echo".to_owned(),
            timeout_ms: 1_000,
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
            payload: Bytes::from_static(b"{}"),
        },
        Frame::TaskResult {
            task_id: "task-42".to_owned(),
            outcome: TaskOutcome::Succeeded,
            traceparent: None,
            payload: Bytes::from_static(b"ok"),
        },
        Frame::TaskResult {
            task_id: "task-44".to_owned(),
            outcome: TaskOutcome::Succeeded,
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01".to_owned()),
            payload: Bytes::from_static(b"{}"),
        },
        Frame::TaskResult {
            task_id: "task-43".to_owned(),
            outcome: TaskOutcome::Failed,
            traceparent: None,
            payload: Bytes::new(),
        },
        Frame::Ping {
            nonce: 0x0102_0304_0506_0708,
        },
        Frame::Pong { nonce: u64::MAX },
        Frame::GoAway {
            reason: GoAwayReason::ProtocolError,
            reconnect_after_ms: 5_000,
            message: "protocol version 9 is not supported, the gateway speaks 1 — naïve".to_owned(),
        },
        Frame::TokenRefresh {
            access_token: "eyJhbGciOiJFZERTQSJ9.e30.c2ln".to_owned(),
        },
        Frame::TokenAccepted {
            expires_in_ms: 900_000,
        },
        Frame::CancelTask {
            task_id: "task-42".to_owned(),
            reason: "cancelled by the caller".to_owned(),
        },
        Frame::TaskAccepted {
            task_id: "task-44".to_owned(),
        },
        Frame::TaskResultChunk {
            task_id: "task-44".to_owned(),
            payload: Bytes::from_static(b"{\"rows\": [1, 2, \x00\xff"),
        },
    ]
}

/// Every `GoAway` reason, for tests that cover each enum value.
pub const ALL_GO_AWAY_REASONS: [GoAwayReason; 6] = [
    GoAwayReason::ShuttingDown,
    GoAwayReason::Replaced,
    GoAwayReason::ProtocolError,
    GoAwayReason::HeartbeatTimeout,
    GoAwayReason::Unauthorized,
    GoAwayReason::TokenExpired,
];

/// Encodes `frame` into a fresh vector.
pub fn encode_to_vec(frame: &Frame) -> Vec<u8> {
    let mut buffer = BytesMut::new();
    frame.encode(&mut buffer);
    buffer.to_vec()
}

/// Builds a frame from a type byte and raw body bytes, with a correct
/// length prefix, so tests can hand-craft invalid bodies.
pub fn raw_frame(frame_type: u8, body: &[u8]) -> Vec<u8> {
    let length = u32::try_from(1 + body.len()).expect("test frame fits u32");
    let mut bytes = length.to_be_bytes().to_vec();
    bytes.push(frame_type);
    bytes.extend_from_slice(body);
    bytes
}
