//! Encode-then-decode round trips and the exact byte layout of frames.

mod common;

use bytes::{Bytes, BytesMut};
use common::{encode_to_vec, sample_frames, ALL_GO_AWAY_REASONS};
use keygate_protocol::{decode_frame, Frame, GoAwayReason, TaskOutcome, DEFAULT_MAX_FRAME_BYTES};

#[test]
fn every_sample_frame_round_trips() {
    for frame in sample_frames() {
        let encoded = encode_to_vec(&frame);

        let (decoded, consumed) = decode_frame(&encoded, DEFAULT_MAX_FRAME_BYTES)
            .unwrap_or_else(|error| panic!("{} frame failed to decode: {error}", frame.name()));

        assert_eq!(decoded, frame);
        assert_eq!(consumed, encoded.len(), "{} frame", frame.name());
    }
}

#[test]
fn every_go_away_reason_round_trips() {
    for reason in ALL_GO_AWAY_REASONS {
        let frame = Frame::GoAway {
            reason,
            reconnect_after_ms: 0,
            message: String::new(),
        };
        let encoded = encode_to_vec(&frame);

        let (decoded, _) = decode_frame(&encoded, DEFAULT_MAX_FRAME_BYTES).unwrap();

        assert_eq!(decoded, frame);
    }
}

#[test]
fn empty_fields_round_trip() {
    let frame = Frame::Task {
        task_id: String::new(),
        kind: String::new(),
        timeout_ms: 0,
        traceparent: None,
        payload: Bytes::new(),
    };
    let encoded = encode_to_vec(&frame);

    let (decoded, _) = decode_frame(&encoded, DEFAULT_MAX_FRAME_BYTES).unwrap();

    assert_eq!(decoded, frame);
}

#[test]
fn longest_str_field_round_trips() {
    let frame = Frame::GoAway {
        reason: GoAwayReason::ShuttingDown,
        reconnect_after_ms: 1,
        message: "x".repeat(usize::from(u16::MAX)),
    };
    let encoded = encode_to_vec(&frame);

    let (decoded, _) = decode_frame(&encoded, DEFAULT_MAX_FRAME_BYTES).unwrap();

    assert_eq!(decoded, frame);
}

#[test]
fn encoded_len_matches_encode() {
    for frame in sample_frames() {
        assert_eq!(
            frame.encoded_len(),
            encode_to_vec(&frame).len(),
            "{} frame",
            frame.name()
        );
    }
}

#[test]
fn encode_appends_to_existing_bytes() {
    let frame = Frame::Ping { nonce: 7 };
    let mut buffer = BytesMut::from(&b"prefix"[..]);

    frame.encode(&mut buffer);

    assert_eq!(&buffer[..6], b"prefix");
    assert_eq!(&buffer[6..], encode_to_vec(&frame).as_slice());
}

#[test]
fn hello_wire_layout() {
    let frame = Frame::Hello {
        protocol_version: 1,
        max_concurrent_tasks: 8,
        agent_version: "1.2".to_owned(),
        instance_id: "a".to_owned(),
    };

    let expected: &[u8] = &[
        0, 0, 0, 15, // length: type byte + 14 body bytes
        1,  // type
        0, 1, // protocol_version
        0, 0, 0, 8, // max_concurrent_tasks
        0, 3, b'1', b'.', b'2', // agent_version
        0, 1, b'a', // instance_id
    ];
    assert_eq!(encode_to_vec(&frame), expected);
}

#[test]
fn task_result_wire_layout() {
    let frame = Frame::TaskResult {
        task_id: "t".to_owned(),
        outcome: TaskOutcome::Failed,
        traceparent: None,
        payload: Bytes::from_static(&[0xAB, 0xCD]),
    };

    let expected: &[u8] = &[
        0, 0, 0, 11, // length
        4,  // type
        0, 1, b't', // task_id
        1,    // outcome: failed
        0, 0, 0, 2, 0xAB, 0xCD, // payload
    ];
    assert_eq!(encode_to_vec(&frame), expected);
}

#[test]
fn ping_wire_layout() {
    let frame = Frame::Ping {
        nonce: 0x0102_0304_0506_0708,
    };

    let expected: &[u8] = &[0, 0, 0, 9, 5, 1, 2, 3, 4, 5, 6, 7, 8];
    assert_eq!(encode_to_vec(&frame), expected);
}

#[test]
fn traced_task_layout() {
    let frame = Frame::Task {
        task_id: "t".to_owned(),
        kind: "k".to_owned(),
        timeout_ms: 1,
        traceparent: Some("tp".to_owned()),
        payload: Bytes::from_static(b"p"),
    };

    let expected: &[u8] = &[
        0, 0, 0, 20, // length
        10, // type: task with trace context
        0, 1, b't', // task_id
        0, 1, b'k', // kind
        0, 0, 0, 1, // timeout_ms
        0, 2, b't', b'p', // traceparent
        0, 0, 0, 1, b'p', // payload
    ];
    assert_eq!(encode_to_vec(&frame), expected);
}

#[test]
fn frame_type_and_name_per_variant() {
    let expected = [
        (1, "hello"),
        (2, "welcome"),
        (3, "task"),
        (10, "task"),
        (4, "task_result"),
        (11, "task_result"),
        (4, "task_result"),
        (5, "ping"),
        (6, "pong"),
        (7, "go_away"),
        (8, "token_refresh"),
        (9, "token_accepted"),
        (12, "cancel_task"),
        (13, "task_accepted"),
        (14, "task_result_chunk"),
    ];
    assert_eq!(sample_frames().len(), expected.len());

    for (frame, (frame_type, name)) in sample_frames().iter().zip(expected) {
        assert_eq!(frame.frame_type(), frame_type, "{frame:?}");
        assert_eq!(frame.name(), name, "{frame:?}");
        assert_eq!(encode_to_vec(frame)[4], frame_type, "type byte of {name}");
    }
}

#[test]
fn decode_frame_leaves_following_bytes() {
    let first = Frame::Ping { nonce: 1 };
    let second = Frame::Pong { nonce: 2 };
    let mut buffer = encode_to_vec(&first);
    let first_len = buffer.len();
    buffer.extend(encode_to_vec(&second));

    let (decoded, consumed) = decode_frame(&buffer, DEFAULT_MAX_FRAME_BYTES).unwrap();

    assert_eq!(decoded, first);
    assert_eq!(consumed, first_len);
    let (decoded, _) = decode_frame(&buffer[consumed..], DEFAULT_MAX_FRAME_BYTES).unwrap();
    assert_eq!(decoded, second);
}
