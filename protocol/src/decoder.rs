//! Incremental decoder that turns the chunks of a session body into frames.

use bytes::{Buf, BytesMut};

use crate::decode::{decode_contents, read_length_prefix};
use crate::encode::LENGTH_PREFIX_BYTES;
use crate::error::FrameError;
use crate::frame::Frame;

/// Frames larger than this make the read buffer be released once it is empty.
const RETAINED_BYTES: usize = 64 * 1024;

/// Decoder for one direction of a session: feed it the body chunks as they
/// arrive with [`FrameDecoder::extend`], then call
/// [`FrameDecoder::next_frame`] until it returns `Ok(None)`.
///
/// The length prefix of a frame is checked against `max_frame_bytes` as soon
/// as its 4 bytes are buffered, before the body arrives. A caller that calls
/// `next_frame` until `Ok(None)` after every `extend` therefore buffers less
/// than `max_frame_bytes` + 4 bytes plus the last chunk.
///
/// The first error is final: `next_frame` returns it again on every later
/// call, and `extend` discards further input, because the frame boundaries
/// after a bad frame cannot be trusted.
#[derive(Debug)]
pub struct FrameDecoder {
    buffer: BytesMut,
    max_frame_bytes: usize,
    failure: Option<FrameError>,
    /// Set when the buffer grew past [`RETAINED_BYTES`] for a frame. Its
    /// capacity does not show that: after the frame is consumed, `capacity`
    /// counts only the space behind it.
    grown: bool,
}

impl FrameDecoder {
    /// Creates a decoder that rejects frames whose length prefix, which
    /// counts the type byte and the body, is above `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Self {
        FrameDecoder {
            buffer: BytesMut::new(),
            max_frame_bytes,
            failure: None,
            grown: false,
        }
    }

    /// Appends received bytes. Discards them once the decoder has failed.
    pub fn extend(&mut self, chunk: &[u8]) {
        if self.failure.is_none() {
            self.buffer.extend_from_slice(chunk);
        }
    }

    /// Returns the next complete frame, `Ok(None)` if more bytes are needed,
    /// or the error that made the stream unusable.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(error) = &self.failure {
            return Err(error.clone());
        }
        match self.decode_next() {
            Ok(frame) => Ok(frame),
            Err(error) => {
                self.failure = Some(error.clone());
                Err(error)
            }
        }
    }

    /// Returns the buffer to read received bytes into directly, as
    /// `AsyncReadExt::read_buf` does. It has at least `min_spare` bytes free,
    /// or the rest of a partly received frame if that is less. The buffer
    /// already has room for that rest, and growing it could double its size.
    /// Bytes read into it after a failure are never decoded. An empty buffer
    /// that grew for a large frame is released first, so a session that
    /// goes idle after one keeps only `min_spare` bytes.
    pub fn read_buffer(&mut self, min_spare: usize) -> &mut BytesMut {
        if self.buffer.is_empty() && self.grown {
            self.buffer = BytesMut::new();
            self.grown = false;
        }
        let needed = match read_length_prefix(&self.buffer, self.max_frame_bytes) {
            Ok(Some(length)) => {
                let rest = (LENGTH_PREFIX_BYTES + length).saturating_sub(self.buffer.len());
                min_spare.min(rest.max(1))
            }
            _ => min_spare,
        };
        if self.buffer.capacity() - self.buffer.len() < needed {
            self.buffer.reserve(needed);
        }
        &mut self.buffer
    }

    /// Returns the number of bytes buffered but not yet decoded.
    pub fn buffered_len(&self) -> usize {
        self.buffer.len()
    }

    fn decode_next(&mut self) -> Result<Option<Frame>, FrameError> {
        let Some(length) = read_length_prefix(&self.buffer, self.max_frame_bytes)? else {
            return Ok(None);
        };

        let frame_end = LENGTH_PREFIX_BYTES + length;
        if self.buffer.len() < frame_end {
            // Reserve the rest of the frame at once rather than growing with
            // each chunk. `length` is already within the limit, so this
            // requests at most `max_frame_bytes` + 4 bytes.
            self.buffer.reserve(frame_end - self.buffer.len());
            self.grown |= frame_end > RETAINED_BYTES;
            return Ok(None);
        }

        let frame = decode_contents(&self.buffer[LENGTH_PREFIX_BYTES..frame_end])?;
        self.buffer.advance(frame_end);
        Ok(Some(frame))
    }
}
