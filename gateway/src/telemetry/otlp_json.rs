//! The OTLP/HTTP JSON body of an `ExportTraceServiceRequest`.
//!
//! OTLP's JSON form is the protobuf JSON mapping with two changes that the
//! OTLP specification (opentelemetry-proto, `docs/specification.md`, "JSON
//! Protobuf Encoding") makes: trace and span ids are lowercase hex strings,
//! not base64, and enums are integers. 64-bit integers are decimal strings.

use serde_json::{json, Map, Value};

use super::span::{AttributeValue, SpanRecord};
use super::trace_context::encode_hex;

/// The instrumentation scope that every exported span belongs to.
pub const SCOPE_NAME: &str = "keygate";

/// The resource that every exported span describes: this server process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    /// `service.name`.
    pub service_name: String,
    /// `service.instance.id`: distinguishes the processes of one service.
    pub service_instance_id: String,
    /// `service.version`.
    pub service_version: String,
}

/// Encodes one export request carrying `spans`.
pub fn encode_request(resource: &Resource, spans: &[SpanRecord]) -> Vec<u8> {
    let resource_attributes = vec![
        string_attribute("service.name", &resource.service_name),
        string_attribute("service.instance.id", &resource.service_instance_id),
        string_attribute("service.version", &resource.service_version),
    ];
    let body = json!({
        "resourceSpans": [{
            "resource": { "attributes": resource_attributes },
            "scopeSpans": [{
                "scope": {
                    "name": SCOPE_NAME,
                    "version": env!("CARGO_PKG_VERSION"),
                },
                "spans": spans.iter().map(encode_span).collect::<Vec<Value>>(),
            }],
        }],
    });
    serde_json::to_vec(&body).expect("a JSON value always serializes")
}

fn encode_span(span: &SpanRecord) -> Value {
    let mut fields = Map::new();
    fields.insert("traceId".into(), encode_hex(&span.trace_id).into());
    fields.insert("spanId".into(), encode_hex(&span.span_id).into());
    if let Some(parent) = &span.parent_span_id {
        fields.insert("parentSpanId".into(), encode_hex(parent).into());
    }

    fields.insert("name".into(), span.name.as_str().into());
    fields.insert("kind".into(), span.kind.otlp_code().into());
    fields.insert(
        "startTimeUnixNano".into(),
        span.start_time_unix_nano.to_string().into(),
    );
    fields.insert(
        "endTimeUnixNano".into(),
        span.end_time_unix_nano.to_string().into(),
    );

    let attributes: Vec<Value> = span
        .attributes
        .iter()
        .map(|attribute| {
            json!({
                "key": attribute.key,
                "value": encode_value(&attribute.value),
            })
        })
        .collect();
    fields.insert("attributes".into(), attributes.into());

    let mut status = Map::new();
    status.insert("code".into(), span.status.otlp_code().into());
    if let super::SpanStatus::Error(message) = &span.status {
        status.insert("message".into(), message.as_str().into());
    }
    fields.insert("status".into(), status.into());
    Value::Object(fields)
}

fn encode_value(value: &AttributeValue) -> Value {
    match value {
        AttributeValue::String(text) => json!({ "stringValue": text }),
        AttributeValue::Int(number) => json!({ "intValue": number.to_string() }),
        AttributeValue::Bool(flag) => json!({ "boolValue": flag }),
    }
}

fn string_attribute(key: &str, value: &str) -> Value {
    json!({ "key": key, "value": { "stringValue": value } })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{Attribute, SpanKind, SpanStatus};

    fn resource() -> Resource {
        Resource {
            service_name: "keygate".into(),
            service_instance_id: "node-1".into(),
            service_version: "1.2.3".into(),
        }
    }

    #[test]
    fn span_fields_encoded() {
        let span = SpanRecord {
            trace_id: [0xab; 16],
            span_id: [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08],
            parent_span_id: Some([0xff; 8]),
            name: "task.relay".into(),
            kind: SpanKind::Client,
            start_time_unix_nano: 1_700_000_000_000_000_001,
            end_time_unix_nano: u64::MAX,
            attributes: vec![
                Attribute::new("task.kind", "echo"),
                Attribute::new("task.attempt", -3i64),
                Attribute::new("task.queued", true),
            ],
            status: SpanStatus::Error("timed out".into()),
        };
        let body: Value = serde_json::from_slice(&encode_request(&resource(), &[span])).unwrap();
        let encoded = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(encoded["traceId"], "abababababababababababababababab");
        assert_eq!(encoded["spanId"], "0102030405060708");
        assert_eq!(encoded["parentSpanId"], "ffffffffffffffff");
        assert_eq!(encoded["name"], "task.relay");
        assert_eq!(encoded["kind"], 3);
        assert_eq!(encoded["startTimeUnixNano"], "1700000000000000001");
        assert_eq!(encoded["endTimeUnixNano"], "18446744073709551615");
        assert_eq!(
            encoded["attributes"],
            json!([
                {"key": "task.kind", "value": {"stringValue": "echo"}},
                {"key": "task.attempt", "value": {"intValue": "-3"}},
                {"key": "task.queued", "value": {"boolValue": true}},
            ])
        );
        assert_eq!(
            encoded["status"],
            json!({"code": 2, "message": "timed out"})
        );
    }

    #[test]
    fn root_span_has_no_parent() {
        let span = SpanRecord {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: None,
            name: "root".into(),
            kind: SpanKind::Server,
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            attributes: Vec::new(),
            status: SpanStatus::Ok,
        };
        let body: Value = serde_json::from_slice(&encode_request(&resource(), &[span])).unwrap();
        let encoded = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert!(encoded.get("parentSpanId").is_none(), "{encoded}");
        assert_eq!(encoded["status"], json!({"code": 1}));
    }

    #[test]
    fn resource_and_scope_encoded() {
        let body: Value = serde_json::from_slice(&encode_request(&resource(), &[])).unwrap();
        let resource_spans = &body["resourceSpans"][0];
        assert_eq!(
            resource_spans["resource"]["attributes"],
            json!([
                {"key": "service.name", "value": {"stringValue": "keygate"}},
                {"key": "service.instance.id", "value": {"stringValue": "node-1"}},
                {"key": "service.version", "value": {"stringValue": "1.2.3"}},
            ])
        );
        assert_eq!(resource_spans["scopeSpans"][0]["scope"]["name"], "keygate");
        assert_eq!(resource_spans["scopeSpans"][0]["spans"], json!([]));
    }
}
