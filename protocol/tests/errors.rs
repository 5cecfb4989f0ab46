//! Each decoding error, with the offending value it reports.

mod common;

use common::{encode_to_vec, raw_frame};
use keygate_protocol::{decode_frame, Frame, FrameDecoder, FrameError, DEFAULT_MAX_FRAME_BYTES};

fn decode_error(bytes: &[u8]) -> FrameError {
    match decode_frame(bytes, DEFAULT_MAX_FRAME_BYTES) {
        Ok((frame, _)) => panic!("expected an error, decoded {frame:?}"),
        Err(error) => error,
    }
}

/// Body of a `Hello` frame with the given raw `agent_version` bytes.
fn hello_body(agent_version: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 1, 0, 0, 0, 4];
    body.extend(u16::try_from(agent_version.len()).unwrap().to_be_bytes());
    body.extend_from_slice(agent_version);
    body.extend([0, 2, b'i', b'd']);
    body
}

#[test]
fn oversized_length_rejected_before_body() {
    let max = 1024;
    let mut decoder = FrameDecoder::new(max);

    // Only the length prefix has arrived, and none of the body.
    decoder.extend(&1025u32.to_be_bytes());

    assert_eq!(
        decoder.next_frame(),
        Err(FrameError::FrameTooLarge {
            length: 1025,
            max: 1024
        })
    );
}

#[test]
fn max_length_prefix_rejected_before_body() {
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);

    decoder.extend(&u32::MAX.to_be_bytes());

    assert_eq!(
        decoder.next_frame(),
        Err(FrameError::FrameTooLarge {
            length: u32::MAX as usize,
            max: DEFAULT_MAX_FRAME_BYTES
        })
    );
}

#[test]
fn oversized_length_rejected_by_decode_frame() {
    let error = decode_frame(&2000u32.to_be_bytes(), 1024).unwrap_err();

    assert_eq!(
        error,
        FrameError::FrameTooLarge {
            length: 2000,
            max: 1024
        }
    );
}

#[test]
fn frame_of_exactly_max_length_accepted() {
    let frame = Frame::Ping { nonce: 3 };
    let encoded = encode_to_vec(&frame);
    let frame_length = encoded.len() - 4;

    let mut decoder = FrameDecoder::new(frame_length);
    decoder.extend(&encoded);
    assert_eq!(decoder.next_frame(), Ok(Some(frame)));

    let mut decoder = FrameDecoder::new(frame_length - 1);
    decoder.extend(&encoded);
    assert_eq!(
        decoder.next_frame(),
        Err(FrameError::FrameTooLarge {
            length: frame_length,
            max: frame_length - 1
        })
    );
}

#[test]
fn zero_length_is_empty_frame() {
    assert_eq!(decode_error(&[0, 0, 0, 0]), FrameError::EmptyFrame);
}

#[test]
fn unknown_frame_types_named() {
    for frame_type in [0, 15, 255] {
        let error = decode_error(&raw_frame(frame_type, &[]));

        assert_eq!(error, FrameError::UnknownFrameType { frame_type });
        assert_eq!(
            error.to_string(),
            format!("unknown frame type {frame_type}")
        );
    }
}

#[test]
fn incomplete_length_prefix_truncated() {
    assert_eq!(
        decode_error(&[0, 0, 1]),
        FrameError::Truncated {
            field: "length prefix",
            needed: 4,
            available: 3
        }
    );
}

#[test]
fn incomplete_body_truncated() {
    let encoded = encode_to_vec(&Frame::Pong { nonce: 1 });

    assert_eq!(
        decode_error(&encoded[..10]),
        FrameError::Truncated {
            field: "frame body",
            needed: 9,
            available: 6
        }
    );
}

#[test]
fn short_integer_field_truncated() {
    let error = decode_error(&raw_frame(5, &[1, 2, 3, 4, 5, 6, 7]));

    assert_eq!(
        error,
        FrameError::Truncated {
            field: "ping.nonce",
            needed: 8,
            available: 7
        }
    );
}

#[test]
fn str_longer_than_frame_truncated() {
    // Hello whose instance_id declares 10 bytes but has 2.
    let mut body = hello_body(b"v1");
    let instance_id_length = body.len() - 4;
    body[instance_id_length..instance_id_length + 2].copy_from_slice(&10u16.to_be_bytes());

    let error = decode_error(&raw_frame(1, &body));

    assert_eq!(
        error,
        FrameError::Truncated {
            field: "hello.instance_id",
            needed: 10,
            available: 2
        }
    );
}

#[test]
fn missing_str_length_truncated() {
    // Welcome that ends after protocol_version and one byte of the
    // session_id length.
    let error = decode_error(&raw_frame(2, &[0, 1, 0]));

    assert_eq!(
        error,
        FrameError::Truncated {
            field: "welcome.session_id",
            needed: 2,
            available: 1
        }
    );
}

#[test]
fn huge_bytes_length_truncated() {
    // TaskResult whose payload declares u32::MAX bytes.
    let body = [0, 1, b't', 0, 0xff, 0xff, 0xff, 0xff, 1, 2];

    let error = decode_error(&raw_frame(4, &body));

    assert_eq!(
        error,
        FrameError::Truncated {
            field: "task_result.payload",
            needed: u32::MAX as usize,
            available: 2
        }
    );
}

#[test]
fn invalid_utf8_names_field() {
    let error = decode_error(&raw_frame(1, &hello_body(b"ok\xff")));

    let FrameError::InvalidUtf8 { field, source } = &error else {
        panic!("expected InvalidUtf8, got {error:?}");
    };
    assert_eq!(*field, "hello.agent_version");
    assert_eq!(source.valid_up_to(), 2);
}

#[test]
fn overlong_utf8_encoding_rejected() {
    // 0xC0 0xAF is an overlong encoding of '/', which UTF-8 forbids.
    let error = decode_error(&raw_frame(1, &hello_body(b"\xc0\xaf")));

    assert!(
        matches!(
            error,
            FrameError::InvalidUtf8 {
                field: "hello.agent_version",
                ..
            }
        ),
        "got {error:?}"
    );
}

#[test]
fn invalid_outcome_value_reported() {
    for value in [2, 255] {
        let body = [0, 1, b't', value, 0, 0, 0, 0];

        assert_eq!(
            decode_error(&raw_frame(4, &body)),
            FrameError::InvalidOutcome { value }
        );
    }
}

#[test]
fn invalid_go_away_reason_reported() {
    for value in [6, 255] {
        let body = [value, 0, 0, 0, 0, 0, 0];

        assert_eq!(
            decode_error(&raw_frame(7, &body)),
            FrameError::InvalidGoAwayReason { value }
        );
    }
}

#[test]
fn trailing_bytes_counted() {
    let error = decode_error(&raw_frame(5, &[0, 0, 0, 0, 0, 0, 0, 1, 0xAA, 0xBB]));

    assert_eq!(
        error,
        FrameError::TrailingBytes {
            frame_type: 5,
            count: 2
        }
    );
}

#[test]
fn trailing_bytes_after_payload_counted() {
    let mut encoded = encode_to_vec(&Frame::TaskResult {
        task_id: "t".to_owned(),
        outcome: keygate_protocol::TaskOutcome::Succeeded,
        traceparent: None,
        payload: bytes::Bytes::from_static(b"done"),
    });
    // Grow the length prefix by one and append one byte inside the frame.
    let length = u32::from_be_bytes(encoded[..4].try_into().unwrap()) + 1;
    encoded[..4].copy_from_slice(&length.to_be_bytes());
    encoded.push(0);

    assert_eq!(
        decode_error(&encoded),
        FrameError::TrailingBytes {
            frame_type: 4,
            count: 1
        }
    );
}

#[test]
fn error_messages_show_values() {
    let cases = [
        (
            FrameError::FrameTooLarge {
                length: 2000,
                max: 1024,
            },
            "frame length 2000 exceeds the maximum of 1024 bytes",
        ),
        (
            FrameError::Truncated {
                field: "ping.nonce",
                needed: 8,
                available: 7,
            },
            "truncated `ping.nonce`: needs 8 bytes, but only 7 are left",
        ),
        (
            FrameError::InvalidOutcome { value: 9 },
            "invalid task outcome 9, expected 0 (succeeded) or 1 (failed)",
        ),
        (
            FrameError::TrailingBytes {
                frame_type: 5,
                count: 2,
            },
            "frame type 5 has 2 trailing bytes after its last field",
        ),
    ];

    for (error, message) in cases {
        assert_eq!(error.to_string(), message);
    }
}
