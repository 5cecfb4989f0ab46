//! `Frame::validate` and the encoder's guard against unencodable fields.

mod common;

use bytes::BytesMut;
use common::sample_frames;
use keygate_protocol::{Frame, FrameError, GoAwayReason, DEFAULT_MAX_FRAME_BYTES};

fn go_away_with_message(message: String) -> Frame {
    Frame::GoAway {
        reason: GoAwayReason::ShuttingDown,
        reconnect_after_ms: 0,
        message,
    }
}

#[test]
fn sample_frames_are_valid() {
    for frame in sample_frames() {
        assert_eq!(frame.validate(DEFAULT_MAX_FRAME_BYTES), Ok(()), "{frame:?}");
    }
}

#[test]
fn str_of_max_length_is_valid() {
    let frame = go_away_with_message("x".repeat(65_535));

    assert_eq!(frame.validate(DEFAULT_MAX_FRAME_BYTES), Ok(()));
}

#[test]
fn str_over_max_length_rejected() {
    let frame = go_away_with_message("x".repeat(65_536));

    assert_eq!(
        frame.validate(DEFAULT_MAX_FRAME_BYTES),
        Err(FrameError::FieldTooLong {
            field: "go_away.message",
            length: 65_536,
            max: 65_535
        })
    );
}

#[test]
fn first_too_long_field_reported() {
    let frame = Frame::Hello {
        protocol_version: 1,
        max_concurrent_tasks: 1,
        agent_version: "v".to_owned(),
        instance_id: "i".repeat(70_000),
    };

    assert_eq!(
        frame.validate(usize::MAX),
        Err(FrameError::FieldTooLong {
            field: "hello.instance_id",
            length: 70_000,
            max: 65_535
        })
    );
}

#[test]
fn frame_over_max_rejected() {
    let frame = Frame::Ping { nonce: 1 };
    let frame_length = frame.encoded_len() - 4;

    assert_eq!(frame.validate(frame_length), Ok(()));
    assert_eq!(
        frame.validate(frame_length - 1),
        Err(FrameError::FrameTooLarge {
            length: frame_length,
            max: frame_length - 1
        })
    );
}

#[test]
#[should_panic(expected = "go_away.message")]
fn encode_panics_on_too_long_str() {
    let frame = go_away_with_message("x".repeat(65_536));

    frame.encode(&mut BytesMut::new());
}
