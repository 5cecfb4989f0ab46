//! Encoding and decoding of the field types that make up frame bodies.
//!
//! Integers are big-endian. A `str` is a `u16` byte length followed by UTF-8,
//! and a `bytes` field is a `u32` byte length followed by raw bytes.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::FrameError;

/// Maximum byte length of a `str` field.
pub(crate) const MAX_STR_BYTES: usize = u16::MAX as usize;
/// Maximum byte length of a `bytes` field.
pub(crate) const MAX_BYTES_FIELD_BYTES: usize = u32::MAX as usize;

/// One field of a frame body, borrowed from the frame, in the form the encoder writes.
pub(crate) enum Field<'a> {
    U8(u8),
    U16(u16),
    U32(u32),
    U64(u64),
    Str { name: &'static str, value: &'a str },
    Bytes { name: &'static str, value: &'a [u8] },
}

impl Field<'_> {
    /// Number of bytes `encode` writes for this field, length prefix included.
    pub(crate) fn encoded_len(&self) -> usize {
        match self {
            Field::U8(_) => 1,
            Field::U16(_) => 2,
            Field::U32(_) => 4,
            Field::U64(_) => 8,
            Field::Str { value, .. } => 2 + value.len(),
            Field::Bytes { value, .. } => 4 + value.len(),
        }
    }

    /// Checks that the field's length fits its length prefix.
    pub(crate) fn check_length(&self) -> Result<(), FrameError> {
        let (name, length, max) = match self {
            Field::Str { name, value } => (*name, value.len(), MAX_STR_BYTES),
            Field::Bytes { name, value } => (*name, value.len(), MAX_BYTES_FIELD_BYTES),
            _ => return Ok(()),
        };
        if length > max {
            return Err(FrameError::FieldTooLong {
                field: name,
                length,
                max,
            });
        }
        Ok(())
    }

    /// Appends the field to `dst`. The caller has checked `check_length`,
    /// so the casts of lengths below do not wrap.
    pub(crate) fn encode(&self, dst: &mut BytesMut) {
        match self {
            Field::U8(value) => dst.put_u8(*value),
            Field::U16(value) => dst.put_u16(*value),
            Field::U32(value) => dst.put_u32(*value),
            Field::U64(value) => dst.put_u64(*value),
            Field::Str { value, .. } => {
                dst.put_u16(value.len() as u16);
                dst.put_slice(value.as_bytes());
            }
            Field::Bytes { value, .. } => {
                dst.put_u32(value.len() as u32);
                dst.put_slice(value);
            }
        }
    }
}

/// Cursor over the body of one frame, which reads fields in order and
/// reports each shortfall with the name of the field being read.
pub(crate) struct FieldReader<'a> {
    remaining: &'a [u8],
    frame_type: u8,
}

impl<'a> FieldReader<'a> {
    /// Starts reading `body`, the bytes after the type byte of a frame of
    /// type `frame_type`.
    pub(crate) fn new(body: &'a [u8], frame_type: u8) -> Self {
        FieldReader {
            remaining: body,
            frame_type,
        }
    }

    pub(crate) fn read_u8(&mut self, field: &'static str) -> Result<u8, FrameError> {
        let [value] = self.take_array::<1>(field)?;
        Ok(value)
    }

    pub(crate) fn read_u16(&mut self, field: &'static str) -> Result<u16, FrameError> {
        Ok(u16::from_be_bytes(self.take_array(field)?))
    }

    pub(crate) fn read_u32(&mut self, field: &'static str) -> Result<u32, FrameError> {
        Ok(u32::from_be_bytes(self.take_array(field)?))
    }

    pub(crate) fn read_u64(&mut self, field: &'static str) -> Result<u64, FrameError> {
        Ok(u64::from_be_bytes(self.take_array(field)?))
    }

    /// Reads a `u16` length and that many bytes of UTF-8.
    pub(crate) fn read_str(&mut self, field: &'static str) -> Result<String, FrameError> {
        let length = usize::from(self.read_u16(field)?);
        let raw = self.take(field, length)?;
        match std::str::from_utf8(raw) {
            Ok(text) => Ok(text.to_owned()),
            Err(source) => Err(FrameError::InvalidUtf8 { field, source }),
        }
    }

    /// Reads a `u32` length and that many raw bytes.
    ///
    /// The bytes are copied so that a payload kept by the caller does not
    /// hold on to the whole receive buffer it was decoded from.
    pub(crate) fn read_bytes(&mut self, field: &'static str) -> Result<Bytes, FrameError> {
        let length = self.read_u32(field)?;
        // A length that does not fit in usize cannot fit in the input either.
        let length = usize::try_from(length).unwrap_or(usize::MAX);
        let raw = self.take(field, length)?;
        Ok(Bytes::copy_from_slice(raw))
    }

    /// Ends the body, rejecting any bytes left after the last field.
    pub(crate) fn finish(self) -> Result<(), FrameError> {
        if self.remaining.is_empty() {
            return Ok(());
        }
        Err(FrameError::TrailingBytes {
            frame_type: self.frame_type,
            count: self.remaining.len(),
        })
    }

    fn take_array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], FrameError> {
        let raw = self.take(field, N)?;
        let mut array = [0u8; N];
        array.copy_from_slice(raw);
        Ok(array)
    }

    fn take(&mut self, field: &'static str, needed: usize) -> Result<&'a [u8], FrameError> {
        if needed > self.remaining.len() {
            return Err(FrameError::Truncated {
                field,
                needed,
                available: self.remaining.len(),
            });
        }
        let (taken, rest) = self.remaining.split_at(needed);
        self.remaining = rest;
        Ok(taken)
    }
}
