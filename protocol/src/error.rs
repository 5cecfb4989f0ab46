//! Errors of frame decoding and of frame validation before encoding.

use std::str::Utf8Error;

/// Error of decoding a frame, or of validating a frame before encoding it.
///
/// Decoding errors are fatal to a stream: frames carry no resynchronisation
/// marker, so the bytes after a bad frame cannot be trusted. The session
/// should end with a `GoAway` of reason `ProtocolError`.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix, or the length of a frame being validated, is above
    /// the configured maximum. `length` counts the type byte and the body.
    #[error("frame length {length} exceeds the maximum of {max} bytes")]
    FrameTooLarge { length: usize, max: usize },

    /// The length prefix is 0, so the frame lacks even its type byte.
    #[error("frame length is 0, but every frame contains at least its type byte")]
    EmptyFrame,

    /// The type byte names no frame of this protocol version.
    #[error("unknown frame type {frame_type}")]
    UnknownFrameType { frame_type: u8 },

    /// The input ended inside `field`, which needed `needed` more bytes.
    #[error("truncated `{field}`: needs {needed} bytes, but only {available} are left")]
    Truncated {
        field: &'static str,
        needed: usize,
        available: usize,
    },

    /// A `str` field contains bytes that are not UTF-8.
    #[error("field `{field}` is not valid UTF-8: {source}")]
    InvalidUtf8 {
        field: &'static str,
        #[source]
        source: Utf8Error,
    },

    /// A `TaskResult` outcome byte other than 0 (succeeded) or 1 (failed).
    #[error("invalid task outcome {value}, expected 0 (succeeded) or 1 (failed)")]
    InvalidOutcome { value: u8 },

    /// A `GoAway` reason byte outside 0..=4.
    #[error("invalid go-away reason {value}, expected a value from 0 to 4")]
    InvalidGoAwayReason { value: u8 },

    /// The frame's length prefix covers `count` bytes after its last field.
    #[error("frame type {frame_type} has {count} trailing bytes after its last field")]
    TrailingBytes { frame_type: u8, count: usize },

    /// A field is longer than its length prefix can express: 65535 bytes for
    /// a `str`, 4 GiB - 1 for a `bytes` field. Only `Frame::validate` returns it.
    #[error("field `{field}` is {length} bytes long, above its maximum of {max} bytes")]
    FieldTooLong {
        field: &'static str,
        length: usize,
        max: usize,
    },
}
