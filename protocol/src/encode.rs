//! Encoding of whole frames, and the length checks to run before encoding.

use bytes::{BufMut, BytesMut};

use crate::codec::Field;
use crate::error::FrameError;
use crate::frame::Frame;

/// Size of the `u32` length prefix that starts every frame.
pub(crate) const LENGTH_PREFIX_BYTES: usize = 4;

impl Frame {
    /// Appends the encoded frame, length prefix included, to `dst`.
    ///
    /// # Panics
    ///
    /// Panics if the frame fails the field checks of [`Frame::validate`]: a
    /// `str` longer than 65535 bytes, or a `bytes` field or whole frame longer
    /// than `u32::MAX` bytes. Writing a wrapped length instead would make the
    /// peer read a field's content as the fields after it. Call `validate`
    /// first on frames built from input that is not under the caller's control.
    pub fn encode(&self, dst: &mut BytesMut) {
        let fields = self.fields();
        for field in &fields {
            if let Err(error) = field.check_length() {
                panic!("cannot encode {} frame: {error}", self.name());
            }
        }
        let frame_length = 1 + fields.iter().map(Field::encoded_len).sum::<usize>();
        let Ok(length_prefix) = u32::try_from(frame_length) else {
            panic!(
                "cannot encode {} frame: length {frame_length} does not fit the u32 length prefix",
                self.name()
            );
        };

        dst.reserve(LENGTH_PREFIX_BYTES + frame_length);
        dst.put_u32(length_prefix);
        dst.put_u8(self.frame_type());
        for field in &fields {
            field.encode(dst);
        }
    }

    /// Returns the number of bytes [`Frame::encode`] writes, length prefix included.
    pub fn encoded_len(&self) -> usize {
        LENGTH_PREFIX_BYTES + self.frame_length()
    }

    /// Checks that the frame can be encoded and that its length, type byte
    /// included, is at most `max_frame_bytes`.
    ///
    /// Returns [`FrameError::FieldTooLong`] for the first field longer than its
    /// length prefix allows, or [`FrameError::FrameTooLarge`] for a frame
    /// longer than `max_frame_bytes` or than the `u32` length prefix allows.
    /// A frame that passes never makes `encode` panic, and the peer's
    /// [`crate::FrameDecoder`] with the same limit accepts its length.
    pub fn validate(&self, max_frame_bytes: usize) -> Result<(), FrameError> {
        for field in self.fields() {
            field.check_length()?;
        }

        let length = self.frame_length();
        let max = max_frame_bytes.min(u32::MAX as usize);
        if length > max {
            return Err(FrameError::FrameTooLarge { length, max });
        }
        Ok(())
    }

    /// Returns the value of the length prefix: the type byte plus the body.
    fn frame_length(&self) -> usize {
        let body: usize = self.fields().iter().map(Field::encoded_len).sum();
        1 + body
    }

    /// Lists the body fields in wire order. This is the single description of
    /// the body layout that `encode`, `encoded_len` and `validate` share.
    fn fields(&self) -> Vec<Field<'_>> {
        match self {
            Frame::Hello {
                protocol_version,
                max_concurrent_tasks,
                agent_version,
                instance_id,
            } => vec![
                Field::U16(*protocol_version),
                Field::U32(*max_concurrent_tasks),
                Field::Str {
                    name: "hello.agent_version",
                    value: agent_version,
                },
                Field::Str {
                    name: "hello.instance_id",
                    value: instance_id,
                },
            ],
            Frame::Welcome {
                protocol_version,
                session_id,
                heartbeat_interval_ms,
            } => vec![
                Field::U16(*protocol_version),
                Field::Str {
                    name: "welcome.session_id",
                    value: session_id,
                },
                Field::U32(*heartbeat_interval_ms),
            ],
            Frame::Task {
                task_id,
                kind,
                timeout_ms,
                traceparent,
                payload,
            } => {
                let mut fields = vec![
                    Field::Str {
                        name: "task.task_id",
                        value: task_id,
                    },
                    Field::Str {
                        name: "task.kind",
                        value: kind,
                    },
                    Field::U32(*timeout_ms),
                ];
                if let Some(traceparent) = traceparent {
                    fields.push(Field::Str {
                        name: "task.traceparent",
                        value: traceparent,
                    });
                }
                fields.push(Field::Bytes {
                    name: "task.payload",
                    value: payload,
                });
                fields
            }
            Frame::TaskResult {
                task_id,
                outcome,
                traceparent,
                payload,
            } => {
                let mut fields = vec![
                    Field::Str {
                        name: "task_result.task_id",
                        value: task_id,
                    },
                    Field::U8(*outcome as u8),
                ];
                if let Some(traceparent) = traceparent {
                    fields.push(Field::Str {
                        name: "task_result.traceparent",
                        value: traceparent,
                    });
                }
                fields.push(Field::Bytes {
                    name: "task_result.payload",
                    value: payload,
                });
                fields
            }
            Frame::Ping { nonce } | Frame::Pong { nonce } => vec![Field::U64(*nonce)],
            Frame::GoAway {
                reason,
                reconnect_after_ms,
                message,
            } => vec![
                Field::U8(*reason as u8),
                Field::U32(*reconnect_after_ms),
                Field::Str {
                    name: "go_away.message",
                    value: message,
                },
            ],
            Frame::TokenRefresh { access_token } => vec![Field::Str {
                name: "token_refresh.access_token",
                value: access_token,
            }],
            Frame::TokenAccepted { expires_in_ms } => vec![Field::U64(*expires_in_ms)],
            Frame::CancelTask { task_id, reason } => vec![
                Field::Str {
                    name: "cancel_task.task_id",
                    value: task_id,
                },
                Field::Str {
                    name: "cancel_task.reason",
                    value: reason,
                },
            ],
            Frame::TaskAccepted { task_id } => vec![Field::Str {
                name: "task_accepted.task_id",
                value: task_id,
            }],
            Frame::TaskResultChunk { task_id, payload } => vec![
                Field::Str {
                    name: "task_result_chunk.task_id",
                    value: task_id,
                },
                Field::Bytes {
                    name: "task_result_chunk.payload",
                    value: payload,
                },
            ],
        }
    }
}
