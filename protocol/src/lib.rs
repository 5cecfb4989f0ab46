//! Frames of the agent session protocol and their binary codec.
//!
//! An agent session is one long-lived HTTP/2 `POST /v1/agent/session`. The
//! request body carries the frames from agent to gateway, and the response
//! body carries the frames from gateway to agent. Each direction is a plain
//! sequence of frames, which [`FrameDecoder`] splits back out of the body
//! chunks.
//!
//! # Wire format
//!
//! ```text
//! frame := length: u32   number of bytes after this field (type byte + body)
//!          type:   u8
//!          body:   the fields of that type, in the order below
//! ```
//!
//! Integers are big-endian. A `str` field is a `u16` byte length followed by
//! that many bytes of UTF-8, and a `bytes` field is a `u32` byte length
//! followed by that many raw bytes.
//!
//! | type | frame        | direction       | body fields |
//! |------|--------------|-----------------|-------------|
//! | 1    | `Hello`      | agent → gateway | `protocol_version: u16`, `max_concurrent_tasks: u32`, `agent_version: str`, `instance_id: str` |
//! | 2    | `Welcome`    | gateway → agent | `protocol_version: u16`, `session_id: str`, `heartbeat_interval_ms: u32` |
//! | 3    | `Task`       | gateway → agent | `task_id: str`, `kind: str`, `timeout_ms: u32`, `payload: bytes` |
//! | 4    | `TaskResult` | agent → gateway | `task_id: str`, `outcome: u8` (0 succeeded, 1 failed), `payload: bytes` |
//! | 5    | `Ping`       | either          | `nonce: u64` |
//! | 6    | `Pong`       | either          | `nonce: u64` |
//! | 7    | `GoAway`     | gateway → agent | `reason: u8` (see [`GoAwayReason`]), `reconnect_after_ms: u32`, `message: str` |
//! | 8    | `TokenRefresh` | agent → gateway, version 2 | `access_token: str` |
//! | 9    | `TokenAccepted` | gateway → agent, version 2 | `expires_in_ms: u64` |
//! | 10   | `Task` with trace context | gateway → agent, version 3 | `task_id: str`, `kind: str`, `timeout_ms: u32`, `traceparent: str`, `payload: bytes` |
//! | 11   | `TaskResult` with trace context | agent → gateway, version 3 | `task_id: str`, `outcome: u8`, `traceparent: str`, `payload: bytes` |
//! | 12   | `CancelTask` | gateway → agent, version 3 | `task_id: str`, `reason: str` |
//! | 13   | `TaskAccepted` | agent → gateway, version 3 | `task_id: str` |
//! | 14   | `TaskResultChunk` | agent → gateway, version 4 | `task_id: str`, `payload: bytes` |
//!
//! Types 10 and 11 decode to [`Frame::Task`] and [`Frame::TaskResult`] with
//! `traceparent` set; the field contains a W3C Trace Context `traceparent` header
//! value.
//!
//! A result payload longer than [`RESULT_CHUNK_BYTES`] is sent, on version
//! 4 and later, as `TaskResultChunk` frames of that size carrying its first
//! parts in order, then the `TaskResult` with the last part. The receiver
//! joins them. Small frames keep a large result from holding up pings and
//! other tasks' frames on the same stream, and a result may exceed the
//! maximum frame size (up to a limit the gateway sets).
//!
//! Decoding is strict. The decoder rejects a length prefix of 0, or one above
//! the receiver's maximum frame size ([`DEFAULT_MAX_FRAME_BYTES`] unless
//! configured otherwise). It also rejects an unknown type byte, a field that
//! runs past the end of its frame, a `str` that is not UTF-8, an unknown
//! outcome or reason byte, and bytes left in a frame after its last field.
//! Any such error ends the stream, because the frame boundaries after it
//! cannot be trusted.
//!
//! Encoding never fails for a frame that passes [`Frame::validate`], which
//! checks each field against its length prefix and the frame against a
//! maximum size. [`Frame::encode`] panics on a field too long for its length
//! prefix instead of writing a wrapped length.
//!
//! # Versioning
//!
//! The agent's first frame is `Hello`, which carries the protocol version it
//! speaks. The gateway answers with `Welcome`, carrying the version it speaks
//! on the session, or with `GoAway` of reason `ProtocolError` whose message
//! names both versions. So that this exchange works between any two versions,
//! the layouts of `Hello`, `Welcome` and `GoAway` and their type bytes stay
//! fixed in every version. Since unknown frame types and trailing bytes are
//! errors, any other new frame type or field needs a new [`PROTOCOL_VERSION`],
//! and a peer sends it only on sessions that agreed on that version.

#![forbid(unsafe_code)]

mod codec;
mod decode;
mod decoder;
mod encode;
mod error;
mod frame;

pub use decode::decode_frame;
pub use decoder::FrameDecoder;
pub use error::FrameError;
pub use frame::{Frame, GoAwayReason, TaskOutcome};

/// Protocol version implemented by this crate, sent in `Hello` and `Welcome`.
///
/// Version 2 adds `TokenRefresh`, `TokenAccepted` and the `TokenExpired`
/// reason of `GoAway`. Version 3 adds the trace context of tasks and results
/// (types 10 and 11), `CancelTask` and `TaskAccepted`. Version 4 adds
/// `TaskResultChunk`.
pub const PROTOCOL_VERSION: u16 = 4;

/// Oldest protocol version a gateway still accepts in `Hello`. A session gets
/// only the frames and reasons of the version agreed in `Welcome`.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// Default maximum frame length in bytes, counting the type byte and the body
/// but not the 4-byte length prefix.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1024 * 1024;

/// Size of each `TaskResultChunk` payload: small enough that a ping queued
/// behind a large result waits for one chunk, not for the whole result.
pub const RESULT_CHUNK_BYTES: usize = 64 * 1024;
