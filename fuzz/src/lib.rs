//! Properties of the frame decoder, checked on one fuzz input.
//!
//! The `frame_decoder` fuzz target calls [`check_frame_decoder_input`], and
//! the protocol crate's `fuzz_corpus` test compiles this same file (through
//! `#[path]`) to replay the corpus on stable Rust. So this file may use only
//! `std`, `bytes` and `keygate_protocol`.

#![forbid(unsafe_code)]

use bytes::BytesMut;
use keygate_protocol::{decode_frame, Frame, FrameDecoder, FrameError};

/// Maximum frame length used for fuzzing. It is far below the protocol
/// default so that short fuzz inputs also reach the oversized-frame path.
pub const FUZZ_MAX_FRAME_BYTES: usize = 4096;

/// End state of a byte stream after its last decodable frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// Every byte belonged to a decoded frame.
    Complete,
    /// The last `remaining` bytes are the start of a frame.
    Incomplete { remaining: usize },
    /// Decoding stopped with this error.
    Failed(FrameError),
}

/// Frames decoded from one fuzz input and how its stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSummary {
    pub frames: Vec<Frame>,
    pub end: StreamEnd,
}

/// Checks the decoders on `data`, panicking on any violated property.
///
/// The first byte of `data` picks the split position and the rest is the
/// stream. The stream is decoded twice: once by calling `decode_frame`
/// repeatedly, and once by a `FrameDecoder` fed the stream in two chunks
/// split at `first byte % (stream length + 1)`. Checked properties:
///
/// - both ways yield the same frames and end the same way;
/// - each decoded frame passes `validate` and re-encodes to exactly the
///   bytes it was decoded from, which decode to an equal frame;
/// - after an error, `FrameDecoder` returns that same error again.
pub fn check_frame_decoder_input(data: &[u8]) -> CheckSummary {
    let Some((&split_seed, stream)) = data.split_first() else {
        return CheckSummary {
            frames: Vec::new(),
            end: StreamEnd::Complete,
        };
    };
    let split = usize::from(split_seed) % (stream.len() + 1);

    let expected = decode_repeatedly(stream);
    let streamed = decode_in_two_chunks(stream, split);
    assert_eq!(
        streamed, expected,
        "FrameDecoder split at byte {split} disagrees with decode_frame"
    );
    expected
}

/// Decodes `stream` with `decode_frame` until it fails or runs out, and
/// checks each frame against its source bytes.
fn decode_repeatedly(stream: &[u8]) -> CheckSummary {
    let mut frames = Vec::new();
    let mut offset = 0;

    let end = loop {
        if offset == stream.len() {
            break StreamEnd::Complete;
        }
        match decode_frame(&stream[offset..], FUZZ_MAX_FRAME_BYTES) {
            Ok((frame, consumed)) => {
                check_reencoding(&frame, &stream[offset..offset + consumed]);
                frames.push(frame);
                offset += consumed;
            }
            Err(FrameError::Truncated {
                field: "length prefix" | "frame body",
                ..
            }) => {
                break StreamEnd::Incomplete {
                    remaining: stream.len() - offset,
                }
            }
            Err(error) => break StreamEnd::Failed(error),
        }
    };

    CheckSummary { frames, end }
}

/// Decodes `stream` with a `FrameDecoder` fed `stream[..split]`, then
/// `stream[split..]`, pulling frames after each chunk.
fn decode_in_two_chunks(stream: &[u8], split: usize) -> CheckSummary {
    let mut decoder = FrameDecoder::new(FUZZ_MAX_FRAME_BYTES);
    let mut frames = Vec::new();

    for chunk in [&stream[..split], &stream[split..]] {
        decoder.extend(chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(error) => {
                    assert_eq!(
                        decoder.next_frame(),
                        Err(error.clone()),
                        "FrameDecoder did not repeat its error"
                    );
                    return CheckSummary {
                        frames,
                        end: StreamEnd::Failed(error),
                    };
                }
            }
        }
    }

    let end = match decoder.buffered_len() {
        0 => StreamEnd::Complete,
        remaining => StreamEnd::Incomplete { remaining },
    };
    CheckSummary { frames, end }
}

/// Checks that `frame`, decoded from `source`, encodes back to `source` and
/// decodes from there to an equal frame.
fn check_reencoding(frame: &Frame, source: &[u8]) {
    assert_eq!(
        frame.validate(FUZZ_MAX_FRAME_BYTES),
        Ok(()),
        "decoded {frame:?} fails validate"
    );
    assert_eq!(
        frame.encoded_len(),
        source.len(),
        "encoded_len of {frame:?}"
    );

    let mut encoded = BytesMut::new();
    frame.encode(&mut encoded);
    assert_eq!(
        &encoded[..],
        source,
        "re-encoding of {frame:?} differs from its source bytes"
    );

    let (decoded, consumed) = decode_frame(&encoded, FUZZ_MAX_FRAME_BYTES)
        .unwrap_or_else(|error| panic!("re-encoded {frame:?} fails to decode: {error}"));
    assert_eq!(&decoded, frame);
    assert_eq!(consumed, encoded.len());
}
