//! Finished spans as the exporter receives them, and [`SpanTimer`], which makes one.

use std::time::{SystemTime, UNIX_EPOCH};

use super::TraceContext;

/// The role of a span in a call between services, as OTLP's `Span.SpanKind` defines it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    Internal,
    /// Handles a request from a remote caller.
    Server,
    /// Sends a request to a remote service and waits for it.
    Client,
    /// Hands work to another component without waiting for it.
    Producer,
    /// Takes work that a producer handed over.
    Consumer,
}

impl SpanKind {
    /// Returns the value of OTLP's `SPAN_KIND_...` enum.
    pub fn otlp_code(self) -> u8 {
        match self {
            SpanKind::Internal => 1,
            SpanKind::Server => 2,
            SpanKind::Client => 3,
            SpanKind::Producer => 4,
            SpanKind::Consumer => 5,
        }
    }
}

/// The outcome of a span's operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpanStatus {
    /// No outcome was set, which OTLP treats as the default and not as an error.
    Unset,
    Ok,
    /// The operation failed; the message is a short reason, never a secret or a token.
    Error(String),
}

impl SpanStatus {
    /// Returns the value of OTLP's `STATUS_CODE_...` enum.
    pub fn otlp_code(&self) -> u8 {
        match self {
            SpanStatus::Unset => 0,
            SpanStatus::Ok => 1,
            SpanStatus::Error(_) => 2,
        }
    }
}

/// The value of a span attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttributeValue {
    String(String),
    Int(i64),
    Bool(bool),
}

impl From<String> for AttributeValue {
    fn from(value: String) -> Self {
        AttributeValue::String(value)
    }
}

impl From<&str> for AttributeValue {
    fn from(value: &str) -> Self {
        AttributeValue::String(value.to_owned())
    }
}

impl From<i64> for AttributeValue {
    fn from(value: i64) -> Self {
        AttributeValue::Int(value)
    }
}

impl From<u32> for AttributeValue {
    fn from(value: u32) -> Self {
        AttributeValue::Int(i64::from(value))
    }
}

impl From<bool> for AttributeValue {
    fn from(value: bool) -> Self {
        AttributeValue::Bool(value)
    }
}

/// One key and value of a span.
///
/// Keys are names fixed in the code (`agent.id`, `task.kind`), so no value
/// received from a caller can become a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribute {
    pub key: &'static str,
    pub value: AttributeValue,
}

impl Attribute {
    pub fn new(key: &'static str, value: impl Into<AttributeValue>) -> Attribute {
        Attribute {
            key,
            value: value.into(),
        }
    }
}

/// A finished span, ready for export.
///
/// Spans leave the process for a collector that other teams may read, so no
/// field (name, attribute value, status message) may hold a secret value, a
/// token, a key or a task payload. Ids, kinds, sizes and outcomes are fine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The span this one was started from; `None` for the root of a trace.
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    pub kind: SpanKind,
    /// Start time in nanoseconds since the Unix epoch.
    pub start_time_unix_nano: u64,
    /// End time in nanoseconds since the Unix epoch.
    pub end_time_unix_nano: u64,
    pub attributes: Vec<Attribute>,
    pub status: SpanStatus,
}

/// Returns nanoseconds since the Unix epoch from the system clock, or 0 if
/// the clock is set before 1970.
pub fn unix_nanos_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A span in progress: its context and start time, taken when the operation begins.
///
/// ```
/// use keygate_gateway::telemetry::{Attribute, SpanKind, SpanStatus, SpanTimer, TraceContext};
///
/// let incoming = TraceContext::new_root(true);
/// let own = incoming.child();
/// let timer = SpanTimer::start("task.relay", SpanKind::Internal, &own, Some(incoming.span_id));
/// // ... the operation runs ...
/// let span = timer.finish(SpanStatus::Ok, vec![Attribute::new("task.kind", "echo")]);
/// assert_eq!(span.parent_span_id, Some(incoming.span_id));
/// assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
/// ```
#[derive(Clone, Debug)]
pub struct SpanTimer {
    context: TraceContext,
    parent_span_id: Option<[u8; 8]>,
    name: String,
    kind: SpanKind,
    start_time_unix_nano: u64,
}

impl SpanTimer {
    /// Starts timing the span `context.span_id` of `context.trace_id`.
    /// `parent` is the span that started this one, `None` for a trace's root.
    pub fn start(
        name: impl Into<String>,
        kind: SpanKind,
        context: &TraceContext,
        parent: Option<[u8; 8]>,
    ) -> SpanTimer {
        SpanTimer {
            context: *context,
            parent_span_id: parent,
            name: name.into(),
            kind,
            start_time_unix_nano: unix_nanos_now(),
        }
    }

    /// Returns the context of the span being timed, to pass on to callees.
    pub fn context(&self) -> &TraceContext {
        &self.context
    }

    /// Ends the span now and returns its record.
    pub fn finish(self, status: SpanStatus, attributes: Vec<Attribute>) -> SpanRecord {
        // The system clock can step back while the operation runs; a span
        // never ends before it starts.
        let end = unix_nanos_now().max(self.start_time_unix_nano);
        SpanRecord {
            trace_id: self.context.trace_id,
            span_id: self.context.span_id,
            parent_span_id: self.parent_span_id,
            name: self.name,
            kind: self.kind,
            start_time_unix_nano: self.start_time_unix_nano,
            end_time_unix_nano: end,
            attributes,
            status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_fills_record() {
        let context = TraceContext::new_root(true);
        let before = unix_nanos_now();
        let timer = SpanTimer::start("agent.session", SpanKind::Server, &context, None);
        let span = timer.finish(
            SpanStatus::Error("agent disconnected".into()),
            vec![Attribute::new("agent.id", "agent-1")],
        );
        assert_eq!(span.trace_id, context.trace_id);
        assert_eq!(span.span_id, context.span_id);
        assert_eq!(span.parent_span_id, None);
        assert_eq!(span.name, "agent.session");
        assert_eq!(span.kind, SpanKind::Server);
        assert!(span.start_time_unix_nano >= before);
        assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
        assert_eq!(span.status.otlp_code(), 2);
        assert_eq!(
            span.attributes,
            vec![Attribute {
                key: "agent.id",
                value: AttributeValue::String("agent-1".into())
            }]
        );
    }

    #[test]
    fn otlp_enum_values() {
        let kinds = [
            (SpanKind::Internal, 1),
            (SpanKind::Server, 2),
            (SpanKind::Client, 3),
            (SpanKind::Producer, 4),
            (SpanKind::Consumer, 5),
        ];
        for (kind, code) in kinds {
            assert_eq!(kind.otlp_code(), code, "{kind:?}");
        }
        assert_eq!(SpanStatus::Unset.otlp_code(), 0);
        assert_eq!(SpanStatus::Ok.otlp_code(), 1);
        assert_eq!(SpanStatus::Error(String::new()).otlp_code(), 2);
    }
}
