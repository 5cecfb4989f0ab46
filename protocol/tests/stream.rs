//! The streaming decoder fed with a session body split into chunks.

mod common;

use common::{encode_to_vec, raw_frame, sample_frames};
use keygate_protocol::{Frame, FrameDecoder, FrameError, DEFAULT_MAX_FRAME_BYTES};

/// Encodes all sample frames back to back, as one direction of a session.
fn sample_stream() -> Vec<u8> {
    sample_frames().iter().flat_map(encode_to_vec).collect()
}

/// Feeds `chunks` in order, pulling frames after each one, and returns the
/// frames decoded. Fails the test on any decoding error.
fn decode_chunks(chunks: &[&[u8]]) -> (Vec<Frame>, FrameDecoder) {
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
    let mut frames = Vec::new();
    for chunk in chunks {
        decoder.extend(chunk);
        while let Some(frame) = decoder.next_frame().expect("valid stream") {
            frames.push(frame);
        }
    }
    (frames, decoder)
}

#[test]
fn split_at_every_byte_boundary() {
    let stream = sample_stream();
    let expected = sample_frames();

    for split in 0..=stream.len() {
        let (frames, decoder) = decode_chunks(&[&stream[..split], &stream[split..]]);

        assert_eq!(frames, expected, "split at byte {split}");
        assert_eq!(decoder.buffered_len(), 0, "split at byte {split}");
    }
}

#[test]
fn split_at_every_pair_of_boundaries() {
    let stream = sample_stream();
    let expected = sample_frames();

    for first in 0..=stream.len() {
        for second in first..=stream.len() {
            let chunks: [&[u8]; 3] = [&stream[..first], &stream[first..second], &stream[second..]];
            let (frames, _) = decode_chunks(&chunks);

            assert_eq!(frames, expected, "splits at bytes {first} and {second}");
        }
    }
}

#[test]
fn one_byte_chunks() {
    let stream = sample_stream();
    let chunks: Vec<&[u8]> = stream.chunks(1).collect();

    let (frames, decoder) = decode_chunks(&chunks);

    assert_eq!(frames, sample_frames());
    assert_eq!(decoder.buffered_len(), 0);
}

#[test]
fn incomplete_frame_waits_for_more_bytes() {
    let encoded = encode_to_vec(&Frame::Ping { nonce: 9 });
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);

    decoder.extend(&encoded[..encoded.len() - 1]);

    assert_eq!(decoder.next_frame(), Ok(None));
    assert_eq!(decoder.next_frame(), Ok(None));
    assert_eq!(decoder.buffered_len(), encoded.len() - 1);

    decoder.extend(&encoded[encoded.len() - 1..]);

    assert_eq!(decoder.next_frame(), Ok(Some(Frame::Ping { nonce: 9 })));
    assert_eq!(decoder.buffered_len(), 0);
}

#[test]
fn partial_next_frame_stays_buffered() {
    let first = encode_to_vec(&Frame::Ping { nonce: 1 });
    let second = encode_to_vec(&Frame::Pong { nonce: 2 });
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);

    decoder.extend(&first);
    decoder.extend(&second[..3]);

    assert_eq!(decoder.next_frame(), Ok(Some(Frame::Ping { nonce: 1 })));
    assert_eq!(decoder.next_frame(), Ok(None));
    assert_eq!(decoder.buffered_len(), 3);
}

#[test]
fn error_is_final() {
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
    decoder.extend(&raw_frame(200, &[]));
    let expected = FrameError::UnknownFrameType { frame_type: 200 };

    assert_eq!(decoder.next_frame(), Err(expected.clone()));

    let buffered = decoder.buffered_len();
    decoder.extend(&encode_to_vec(&Frame::Ping { nonce: 1 }));
    assert_eq!(
        decoder.buffered_len(),
        buffered,
        "input after an error is discarded"
    );
    assert_eq!(decoder.next_frame(), Err(expected));
}

#[test]
fn frames_before_an_error_are_returned() {
    let mut stream = encode_to_vec(&Frame::Ping { nonce: 1 });
    stream.extend(raw_frame(0, &[]));
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);

    decoder.extend(&stream);

    assert_eq!(decoder.next_frame(), Ok(Some(Frame::Ping { nonce: 1 })));
    assert_eq!(
        decoder.next_frame(),
        Err(FrameError::UnknownFrameType { frame_type: 0 })
    );
}

/// Reads `bytes` the way an upgraded session does: into the decoder's own
/// buffer, each read taking at most `read_size` bytes and never more than
/// the buffer's free space, as `AsyncReadExt::read_buf` does.
fn read_through_buffer(decoder: &mut FrameDecoder, bytes: &[u8], read_size: usize) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let buffer = decoder.read_buffer(read_size);
        let spare = buffer.capacity() - buffer.len();
        assert!(spare > 0, "no room to read into");
        let (piece, after) = rest.split_at(rest.len().min(read_size).min(spare));
        buffer.extend_from_slice(piece);
        rest = after;
        while let Some(frame) = decoder.next_frame().expect("valid stream") {
            frames.push(frame);
        }
    }
    frames
}

#[test]
fn read_buffer_decodes_like_extend() {
    let stream = sample_stream();
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
    assert_eq!(
        read_through_buffer(&mut decoder, &stream, 7),
        sample_frames()
    );
    assert_eq!(decoder.buffered_len(), 0);
}

#[test]
fn read_buffer_released_after_a_large_frame() {
    let large = Frame::TaskResultChunk {
        task_id: "t-large".into(),
        payload: bytes::Bytes::from(vec![1u8; 300_000]),
    };
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
    let frames = read_through_buffer(&mut decoder, &encode_to_vec(&large), 1024);
    assert_eq!(frames, vec![large]);
    let retained = decoder.read_buffer(1024).capacity();
    assert!(
        retained < 64 * 1024,
        "an idle decoder retained {retained} bytes"
    );
}

#[test]
fn read_buffer_near_frame_end_not_doubled() {
    let large = Frame::TaskResultChunk {
        task_id: "t-near".into(),
        payload: bytes::Bytes::from(vec![2u8; 200_000]),
    };
    let bytes = encode_to_vec(&large);
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
    // All but the last 10 bytes, in reads of at most 1 KiB.
    let frames = read_through_buffer(&mut decoder, &bytes[..bytes.len() - 10], 1024);
    assert!(frames.is_empty());
    let capacity = decoder.read_buffer(1024).capacity();
    assert!(
        capacity < bytes.len() + 1024,
        "a buffer for a {}-byte frame grew to {capacity}",
        bytes.len()
    );
}
