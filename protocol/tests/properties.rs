//! Property tests of the codec on randomly generated frames and bytes.

use bytes::{Bytes, BytesMut};
use keygate_protocol::{
    decode_frame, Frame, FrameDecoder, FrameError, GoAwayReason, TaskOutcome,
    DEFAULT_MAX_FRAME_BYTES,
};
use proptest::collection::vec;
use proptest::prelude::*;

/// Strings of any Unicode scalar values, including multi-byte ones.
fn text() -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..40).prop_map(String::from_iter)
}

fn payload() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..300).prop_map(Bytes::from)
}

fn outcome() -> impl Strategy<Value = TaskOutcome> {
    (0u8..=1).prop_map(|value| TaskOutcome::try_from(value).unwrap())
}

fn go_away_reason() -> impl Strategy<Value = GoAwayReason> {
    (0u8..=4).prop_map(|value| GoAwayReason::try_from(value).unwrap())
}

fn any_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u16>(), any::<u32>(), text(), text()).prop_map(
            |(protocol_version, max_concurrent_tasks, agent_version, instance_id)| Frame::Hello {
                protocol_version,
                max_concurrent_tasks,
                agent_version,
                instance_id,
            }
        ),
        (any::<u16>(), text(), any::<u32>()).prop_map(
            |(protocol_version, session_id, heartbeat_interval_ms)| Frame::Welcome {
                protocol_version,
                session_id,
                heartbeat_interval_ms,
            }
        ),
        (
            text(),
            text(),
            any::<u32>(),
            prop::option::of(text()),
            payload()
        )
            .prop_map(
                |(task_id, kind, timeout_ms, traceparent, payload)| Frame::Task {
                    task_id,
                    kind,
                    timeout_ms,
                    traceparent,
                    payload,
                }
            ),
        (text(), outcome(), prop::option::of(text()), payload()).prop_map(
            |(task_id, outcome, traceparent, payload)| Frame::TaskResult {
                task_id,
                outcome,
                traceparent,
                payload,
            }
        ),
        (text(), text()).prop_map(|(task_id, reason)| Frame::CancelTask { task_id, reason }),
        text().prop_map(|task_id| Frame::TaskAccepted { task_id }),
        (text(), payload())
            .prop_map(|(task_id, payload)| Frame::TaskResultChunk { task_id, payload }),
        any::<u64>().prop_map(|nonce| Frame::Ping { nonce }),
        any::<u64>().prop_map(|nonce| Frame::Pong { nonce }),
        (go_away_reason(), any::<u32>(), text()).prop_map(
            |(reason, reconnect_after_ms, message)| Frame::GoAway {
                reason,
                reconnect_after_ms,
                message,
            }
        ),
    ]
}

fn encode(frame: &Frame) -> Vec<u8> {
    let mut buffer = BytesMut::new();
    frame.encode(&mut buffer);
    buffer.to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn frame_round_trips(frame in any_frame()) {
        let encoded = encode(&frame);

        prop_assert_eq!(encoded.len(), frame.encoded_len());
        prop_assert_eq!(frame.validate(DEFAULT_MAX_FRAME_BYTES), Ok(()));
        let (decoded, consumed) = decode_frame(&encoded, DEFAULT_MAX_FRAME_BYTES)?;
        prop_assert_eq!(decoded, frame);
        prop_assert_eq!(consumed, encoded.len());
    }

    #[test]
    fn stream_of_frames_split_anywhere(
        frames in vec(any_frame(), 0..8),
        split_seed in any::<usize>(),
    ) {
        let stream: Vec<u8> = frames.iter().flat_map(encode).collect();
        let split = split_seed % (stream.len() + 1);
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        let mut decoded = Vec::new();

        for chunk in [&stream[..split], &stream[split..]] {
            decoder.extend(chunk);
            while let Some(frame) = decoder.next_frame()? {
                decoded.push(frame);
            }
        }

        prop_assert_eq!(decoded, frames);
        prop_assert_eq!(decoder.buffered_len(), 0);
    }

    #[test]
    fn truncated_encoding_is_incomplete(frame in any_frame(), cut_seed in any::<usize>()) {
        let encoded = encode(&frame);
        let cut = cut_seed % encoded.len();

        let error = decode_frame(&encoded[..cut], DEFAULT_MAX_FRAME_BYTES).unwrap_err();
        let expected_field = if cut < 4 { "length prefix" } else { "frame body" };
        prop_assert!(
            matches!(error, FrameError::Truncated { field, .. } if field == expected_field),
            "cut at {}: {:?}", cut, error
        );

        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        decoder.extend(&encoded[..cut]);
        prop_assert_eq!(decoder.next_frame(), Ok(None));
    }

    #[test]
    fn arbitrary_bytes_decode_canonically(bytes in vec(any::<u8>(), 0..64)) {
        // Any frame decoded from arbitrary bytes re-encodes to exactly the
        // bytes it was decoded from, because the format has one encoding per
        // frame.
        if let Ok((frame, consumed)) = decode_frame(&bytes, DEFAULT_MAX_FRAME_BYTES) {
            prop_assert_eq!(encode(&frame), &bytes[..consumed]);
        }
    }

    #[test]
    fn valid_header_with_random_body_is_canonical(
        frame_type in 1u8..=7,
        body in vec(any::<u8>(), 0..64),
    ) {
        // Random bodies behind a correct header reach the field decoders far
        // more often than fully random bytes do.
        let mut bytes = u32::try_from(body.len() + 1).unwrap().to_be_bytes().to_vec();
        bytes.push(frame_type);
        bytes.extend(&body);

        if let Ok((frame, consumed)) = decode_frame(&bytes, DEFAULT_MAX_FRAME_BYTES) {
            prop_assert_eq!(consumed, bytes.len());
            prop_assert_eq!(encode(&frame), bytes);
        }
    }
}
