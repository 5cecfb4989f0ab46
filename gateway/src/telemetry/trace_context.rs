//! The W3C Trace Context `traceparent` header: parsing, formatting and new ids.
//!
//! The rules follow the W3C Trace Context Recommendation (level 1): a header is
//! `version-traceid-parentid-flags` in lowercase hexadecimal. Version `00` has
//! exactly these four fields. A higher version may append more fields after a
//! further `-`, and only its first four fields are read.

use ring::rand::{SecureRandom, SystemRandom};

/// Maximum number of characters of a rejected header that an error keeps.
const MAX_ERROR_VALUE_CHARS: usize = 100;
/// Length of a version `00` header: 2 + 1 + 32 + 1 + 16 + 1 + 2.
const HEADER_LEN: usize = 55;
/// The `sampled` bit of the trace flags.
const FLAG_SAMPLED: u8 = 0x01;

/// The trace and span that an operation belongs to, as a `traceparent` header carries them.
///
/// For a parsed header, `span_id` is the caller's span (the header's `parent-id`).
/// For a context made by [`TraceContext::new_root`] or [`TraceContext::child`],
/// it is the span of the operation that owns the context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// The trace id; never all zeros.
    pub trace_id: [u8; 16],
    /// The span id; never all zeros.
    pub span_id: [u8; 8],
    /// Trace flags; bit 0 is `sampled`.
    pub flags: u8,
}

/// A `traceparent` header that breaks a rule of the W3C Trace Context format.
///
/// Each variant carries the header (at most 100 characters of it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TraceparentError {
    #[error(
        "invalid traceparent {value:?}: the version must be 2 lowercase hex digits other than ff"
    )]
    Version { value: String },
    #[error("invalid traceparent {value:?}: version 00 must be exactly 55 characters, 00-<32 hex>-<16 hex>-<2 hex>")]
    Length { value: String },
    #[error("invalid traceparent {value:?}: the fields must be separated by a single -")]
    Separator { value: String },
    #[error("invalid traceparent {value:?}: the trace id must be 32 lowercase hex digits")]
    TraceId { value: String },
    #[error("invalid traceparent {value:?}: the parent id must be 16 lowercase hex digits")]
    ParentId { value: String },
    #[error("invalid traceparent {value:?}: the flags must be 2 lowercase hex digits")]
    Flags { value: String },
    #[error("invalid traceparent {value:?}: the trace id must not be all zeros")]
    ZeroTraceId { value: String },
    #[error("invalid traceparent {value:?}: the parent id must not be all zeros")]
    ZeroParentId { value: String },
}

impl TraceparentError {
    /// Returns the rejected header, cut to at most 100 characters.
    pub fn value(&self) -> &str {
        match self {
            TraceparentError::Version { value }
            | TraceparentError::Length { value }
            | TraceparentError::Separator { value }
            | TraceparentError::TraceId { value }
            | TraceparentError::ParentId { value }
            | TraceparentError::Flags { value }
            | TraceparentError::ZeroTraceId { value }
            | TraceparentError::ZeroParentId { value } => value,
        }
    }
}

impl TraceContext {
    /// Parses a `traceparent` header value.
    pub fn parse(header: &str) -> Result<TraceContext, TraceparentError> {
        let value = || truncate(header);
        let bytes = header.as_bytes();

        let version = bytes
            .get(..2)
            .and_then(decode_hex::<1>)
            .ok_or_else(|| TraceparentError::Version { value: value() })?[0];
        if version == 0xff {
            return Err(TraceparentError::Version { value: value() });
        }
        // Version 00 has exactly four fields; a later version may add more after
        // the flags, but never fewer characters than version 00.
        if (version == 0 && bytes.len() != HEADER_LEN) || bytes.len() < HEADER_LEN {
            return Err(TraceparentError::Length { value: value() });
        }
        let trailing_ok = bytes.len() == HEADER_LEN || bytes[HEADER_LEN] == b'-';
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' || !trailing_ok {
            return Err(TraceparentError::Separator { value: value() });
        }

        let trace_id = decode_hex::<16>(&bytes[3..35])
            .ok_or_else(|| TraceparentError::TraceId { value: value() })?;
        let span_id = decode_hex::<8>(&bytes[36..52])
            .ok_or_else(|| TraceparentError::ParentId { value: value() })?;
        let flags = decode_hex::<1>(&bytes[53..55])
            .ok_or_else(|| TraceparentError::Flags { value: value() })?[0];
        if trace_id == [0; 16] {
            return Err(TraceparentError::ZeroTraceId { value: value() });
        }
        if span_id == [0; 8] {
            return Err(TraceparentError::ZeroParentId { value: value() });
        }
        Ok(TraceContext {
            trace_id,
            span_id,
            flags,
        })
    }

    /// Starts a new trace with random ids, with the `sampled` flag set as given.
    pub fn new_root(sampled: bool) -> TraceContext {
        TraceContext {
            trace_id: random_nonzero_id(),
            span_id: random_nonzero_id(),
            flags: if sampled { FLAG_SAMPLED } else { 0 },
        }
    }

    /// Returns a context for a new span in the same trace: same trace id and
    /// flags, a new random span id.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            trace_id: self.trace_id,
            span_id: random_nonzero_id(),
            flags: self.flags,
        }
    }

    /// Formats the context as a version `00` `traceparent` header.
    pub fn to_header(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            self.trace_id_hex(),
            self.span_id_hex(),
            self.flags
        )
    }

    /// Returns the trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        encode_hex(&self.trace_id)
    }

    /// Returns the span id as 16 lowercase hex digits.
    pub fn span_id_hex(&self) -> String {
        encode_hex(&self.span_id)
    }

    /// Returns whether the `sampled` flag is set: the caller records this trace
    /// and expects its callees to record their spans too.
    pub fn sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }
}

impl std::fmt::Display for TraceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_header())
    }
}

impl std::str::FromStr for TraceContext {
    type Err = TraceparentError;

    fn from_str(text: &str) -> Result<TraceContext, TraceparentError> {
        TraceContext::parse(text)
    }
}

/// Formats bytes as lowercase hex digits.
pub fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(DIGITS[usize::from(byte >> 4)] as char);
        text.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
    text
}

/// Decodes exactly `2 * N` lowercase hex digits; uppercase digits are rejected.
fn decode_hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    if digits.len() != 2 * N {
        return None;
    }
    let nibble = |digit: u8| match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    };
    let mut bytes = [0u8; N];
    for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(bytes)
}

fn truncate(header: &str) -> String {
    header.chars().take(MAX_ERROR_VALUE_CHARS).collect()
}

/// Returns random bytes from the operating system that are not all zeros,
/// which the format reserves as invalid.
fn random_nonzero_id<const N: usize>() -> [u8; N] {
    let random = SystemRandom::new();
    let mut id = [0u8; N];
    while id == [0u8; N] {
        // ring reads the kernel's random source (getrandom(2) on Linux), so a
        // failure means a broken host, not a state a caller could recover from.
        random
            .fill(&mut id)
            .expect("the operating system's random number generator failed");
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parse_valid_version_00() {
        let context = TraceContext::parse(VALID).unwrap();
        assert_eq!(context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.span_id_hex(), "00f067aa0ba902b7");
        assert_eq!(context.flags, 0x01);
        assert!(context.sampled());
    }

    #[test]
    fn parse_unsampled_and_unknown_flags() {
        let context =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!context.sampled());
        let context =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-fe").unwrap();
        assert_eq!(context.flags, 0xfe);
        assert!(!context.sampled());
    }

    #[test]
    fn parse_higher_version_reads_four_fields() {
        let context = TraceContext::parse(
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-adds",
        )
        .unwrap();
        assert_eq!(context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.span_id_hex(), "00f067aa0ba902b7");
        assert!(context.sampled());
        let exact =
            TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(exact.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn parse_rejects_each_rule() {
        type Variant = fn(&TraceparentError) -> bool;
        let cases: [(&str, Variant); 18] = [
            ("", |e| matches!(e, TraceparentError::Version { .. })),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                |e| matches!(e, TraceparentError::Version { .. }),
            ),
            (
                "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                |e| matches!(e, TraceparentError::Version { .. }),
            ),
            (
                "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                |e| matches!(e, TraceparentError::Version { .. }),
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                |e| matches!(e, TraceparentError::Length { .. }),
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
                |e| matches!(e, TraceparentError::Length { .. }),
            ),
            (
                "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                |e| matches!(e, TraceparentError::Length { .. }),
            ),
            (
                "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
                |e| matches!(e, TraceparentError::Separator { .. }),
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                |e| matches!(e, TraceparentError::Separator { .. }),
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
                |e| matches!(e, TraceparentError::Separator { .. }),
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
                |e| matches!(e, TraceparentError::Separator { .. }),
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                |e| matches!(e, TraceparentError::TraceId { .. }),
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473z-00f067aa0ba902b7-01",
                |e| matches!(e, TraceparentError::TraceId { .. }),
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
                |e| matches!(e, TraceparentError::ParentId { .. }),
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0G",
                |e| matches!(e, TraceparentError::Flags { .. }),
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-AB",
                |e| matches!(e, TraceparentError::Flags { .. }),
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                |e| matches!(e, TraceparentError::ZeroTraceId { .. }),
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                |e| matches!(e, TraceparentError::ZeroParentId { .. }),
            ),
        ];
        for (header, is_expected) in cases {
            let error = TraceContext::parse(header).expect_err(header);
            assert!(is_expected(&error), "{header:?}: got {error:?}");
            assert_eq!(error.value(), header, "the error carries the header");
        }
    }

    #[test]
    fn parse_rejects_multibyte_text() {
        // 55 bytes, but not ASCII: the separators fall inside multibyte characters.
        let header = format!("00-{}", "é".repeat(26));
        assert_eq!(header.len(), HEADER_LEN);
        let error = TraceContext::parse(&header).unwrap_err();
        assert!(
            matches!(error, TraceparentError::Separator { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn error_value_truncated() {
        let long = format!("zz{}", "a".repeat(500));
        let error = TraceContext::parse(&long).unwrap_err();
        assert_eq!(error.value().chars().count(), MAX_ERROR_VALUE_CHARS);
        assert!(error.to_string().contains("the version must be"), "{error}");
    }

    #[test]
    fn header_round_trip() {
        let context = TraceContext::parse(VALID).unwrap();
        assert_eq!(context.to_header(), VALID);
        assert_eq!(context.to_string(), VALID);

        let higher =
            TraceContext::parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more")
                .unwrap();
        assert_eq!(
            higher.to_header(),
            VALID,
            "a higher version is written as 00"
        );

        let root = TraceContext::new_root(true);
        assert_eq!(TraceContext::parse(&root.to_header()).unwrap(), root);
    }

    #[test]
    fn new_root_sets_sampled_flag() {
        let sampled = TraceContext::new_root(true);
        assert!(sampled.sampled());
        assert_ne!(sampled.trace_id, [0; 16]);
        assert_ne!(sampled.span_id, [0; 8]);
        assert!(!TraceContext::new_root(false).sampled());
        assert_ne!(
            TraceContext::new_root(true).trace_id,
            sampled.trace_id,
            "each root starts a new trace"
        );
    }

    #[test]
    fn child_keeps_trace_and_flags() {
        let parent = TraceContext::parse(VALID).unwrap();
        let child = parent.child();
        assert_eq!(child.trace_id, parent.trace_id);
        assert_eq!(child.flags, parent.flags);
        assert_ne!(child.span_id, parent.span_id);
        assert_ne!(child.span_id, [0; 8]);
    }

    #[test]
    fn hex_encoding() {
        assert_eq!(encode_hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        assert_eq!(decode_hex::<2>(b"0fa0"), Some([0x0f, 0xa0]));
        assert_eq!(decode_hex::<2>(b"0fa"), None);
        assert_eq!(decode_hex::<1>(b"0F"), None);
    }
}
