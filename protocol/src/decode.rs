//! Decoding of whole frames from a buffer.

use crate::codec::FieldReader;
use crate::encode::LENGTH_PREFIX_BYTES;
use crate::error::FrameError;
use crate::frame::{self, Frame, GoAwayReason, TaskOutcome};

/// Decodes exactly one frame from the start of `buf`.
///
/// Returns the frame and the number of bytes it took, length prefix
/// included. Bytes after the frame are left alone. A frame that is not
/// complete in `buf` is a [`FrameError::Truncated`] error on the field
/// `"length prefix"` or `"frame body"`. The length prefix is checked against
/// `max_frame_bytes` (which counts the type byte and the body) before the
/// body is looked at.
pub fn decode_frame(buf: &[u8], max_frame_bytes: usize) -> Result<(Frame, usize), FrameError> {
    let Some(length) = read_length_prefix(buf, max_frame_bytes)? else {
        return Err(FrameError::Truncated {
            field: "length prefix",
            needed: LENGTH_PREFIX_BYTES,
            available: buf.len(),
        });
    };

    let available = buf.len() - LENGTH_PREFIX_BYTES;
    if length > available {
        return Err(FrameError::Truncated {
            field: "frame body",
            needed: length,
            available,
        });
    }

    let consumed = LENGTH_PREFIX_BYTES + length;
    let frame = decode_contents(&buf[LENGTH_PREFIX_BYTES..consumed])?;
    Ok((frame, consumed))
}

/// Reads and checks the length prefix at the start of `buf`.
///
/// Returns `Ok(None)` when `buf` is shorter than the prefix, or the frame
/// length (type byte plus body) once it is known to be between 1 and
/// `max_frame_bytes`.
pub(crate) fn read_length_prefix(
    buf: &[u8],
    max_frame_bytes: usize,
) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = buf.first_chunk::<LENGTH_PREFIX_BYTES>() else {
        return Ok(None);
    };
    // A length that does not fit in usize is above any limit.
    let length = usize::try_from(u32::from_be_bytes(*prefix)).unwrap_or(usize::MAX);

    if length == 0 {
        return Err(FrameError::EmptyFrame);
    }
    if length > max_frame_bytes {
        return Err(FrameError::FrameTooLarge {
            length,
            max: max_frame_bytes,
        });
    }
    Ok(Some(length))
}

/// Decodes the type byte and body of one frame. `contents` must be exactly
/// the bytes covered by the length prefix, and must not be empty.
pub(crate) fn decode_contents(contents: &[u8]) -> Result<Frame, FrameError> {
    let Some((&frame_type, body)) = contents.split_first() else {
        return Err(FrameError::EmptyFrame);
    };
    let mut reader = FieldReader::new(body, frame_type);

    let frame = match frame_type {
        frame::HELLO => Frame::Hello {
            protocol_version: reader.read_u16("hello.protocol_version")?,
            max_concurrent_tasks: reader.read_u32("hello.max_concurrent_tasks")?,
            agent_version: reader.read_str("hello.agent_version")?,
            instance_id: reader.read_str("hello.instance_id")?,
        },
        frame::WELCOME => Frame::Welcome {
            protocol_version: reader.read_u16("welcome.protocol_version")?,
            session_id: reader.read_str("welcome.session_id")?,
            heartbeat_interval_ms: reader.read_u32("welcome.heartbeat_interval_ms")?,
        },
        frame::TASK => Frame::Task {
            task_id: reader.read_str("task.task_id")?,
            kind: reader.read_str("task.kind")?,
            timeout_ms: reader.read_u32("task.timeout_ms")?,
            traceparent: None,
            payload: reader.read_bytes("task.payload")?,
        },
        frame::TRACED_TASK => Frame::Task {
            task_id: reader.read_str("task.task_id")?,
            kind: reader.read_str("task.kind")?,
            timeout_ms: reader.read_u32("task.timeout_ms")?,
            traceparent: Some(reader.read_str("task.traceparent")?),
            payload: reader.read_bytes("task.payload")?,
        },
        frame::TASK_RESULT => Frame::TaskResult {
            task_id: reader.read_str("task_result.task_id")?,
            outcome: TaskOutcome::try_from(reader.read_u8("task_result.outcome")?)?,
            traceparent: None,
            payload: reader.read_bytes("task_result.payload")?,
        },
        frame::TRACED_TASK_RESULT => Frame::TaskResult {
            task_id: reader.read_str("task_result.task_id")?,
            outcome: TaskOutcome::try_from(reader.read_u8("task_result.outcome")?)?,
            traceparent: Some(reader.read_str("task_result.traceparent")?),
            payload: reader.read_bytes("task_result.payload")?,
        },
        frame::CANCEL_TASK => Frame::CancelTask {
            task_id: reader.read_str("cancel_task.task_id")?,
            reason: reader.read_str("cancel_task.reason")?,
        },
        frame::TASK_ACCEPTED => Frame::TaskAccepted {
            task_id: reader.read_str("task_accepted.task_id")?,
        },
        frame::TASK_RESULT_CHUNK => Frame::TaskResultChunk {
            task_id: reader.read_str("task_result_chunk.task_id")?,
            payload: reader.read_bytes("task_result_chunk.payload")?,
        },
        frame::PING => Frame::Ping {
            nonce: reader.read_u64("ping.nonce")?,
        },
        frame::PONG => Frame::Pong {
            nonce: reader.read_u64("pong.nonce")?,
        },
        frame::GO_AWAY => Frame::GoAway {
            reason: GoAwayReason::try_from(reader.read_u8("go_away.reason")?)?,
            reconnect_after_ms: reader.read_u32("go_away.reconnect_after_ms")?,
            message: reader.read_str("go_away.message")?,
        },
        frame::TOKEN_REFRESH => Frame::TokenRefresh {
            access_token: reader.read_str("token_refresh.access_token")?,
        },
        frame::TOKEN_ACCEPTED => Frame::TokenAccepted {
            expires_in_ms: reader.read_u64("token_accepted.expires_in_ms")?,
        },
        _ => return Err(FrameError::UnknownFrameType { frame_type }),
    };

    reader.finish()?;
    Ok(frame)
}
