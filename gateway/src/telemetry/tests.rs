//! Exporter tests against a small OTLP receiver on a loopback port.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};

use super::metrics::{ExportMetrics, DROP_EXPORT_FAILED, DROP_QUEUE_FULL, DROP_SHUTDOWN};
use super::*;

/// One request that the receiver recorded.
struct Received {
    path: String,
    headers: HeaderMap,
    body: Value,
}

impl Received {
    fn spans(&self) -> &Vec<Value> {
        self.body["resourceSpans"][0]["scopeSpans"][0]["spans"]
            .as_array()
            .expect("spans is an array")
    }
}

/// An OTLP/HTTP receiver that sends each request to the test on a channel and
/// responds with a fixed status. With a gate, it responds only once the test
/// adds a permit, so the exporter stays busy with that request until then.
struct Receiver {
    endpoint: String,
    requests: mpsc::UnboundedReceiver<Received>,
    connections: Arc<AtomicUsize>,
}

impl Receiver {
    async fn start(status: StatusCode, gate: Option<Arc<Semaphore>>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let (sender, requests) = mpsc::unbounded_channel();
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let sender = sender.clone();
                let gate = gate.clone();
                let service = service_fn(move |request: http::Request<Incoming>| {
                    let sender = sender.clone();
                    let gate = gate.clone();
                    async move {
                        let path = request.uri().path().to_owned();
                        let headers = request.headers().clone();
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        let body: Value = serde_json::from_slice(&body).unwrap();
                        let _ = sender.send(Received {
                            path,
                            headers,
                            body,
                        });
                        if let Some(gate) = gate {
                            gate.acquire().await.unwrap().forget();
                        }
                        let response = http::Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(b"{}")))
                            .unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            endpoint,
            requests,
            connections,
        }
    }

    async fn next(&mut self) -> Received {
        self.requests
            .recv()
            .await
            .expect("the receiver task is running")
    }

    /// Returns whether a request arrived that the test has not taken yet.
    fn has_pending(&mut self) -> bool {
        !self.requests.is_empty()
    }
}

fn config(endpoint: &str) -> TelemetryConfig {
    TelemetryConfig {
        otlp_endpoint: endpoint.to_owned(),
        // Batches leave by size, flush or shutdown in these tests, never by the timer.
        otlp_export_interval_ms: 600_000,
        otlp_timeout_ms: 30_000,
        ..TelemetryConfig::default()
    }
}

fn start(config: &TelemetryConfig) -> (Telemetry, ExportMetrics) {
    let metrics = ExportMetrics::new();
    let telemetry = Telemetry::start_with_metrics(config, metrics.clone(), "node-7").unwrap();
    assert!(telemetry.is_enabled());
    (telemetry, metrics)
}

fn span(number: u8) -> SpanRecord {
    SpanRecord {
        trace_id: [number; 16],
        span_id: [number; 8],
        parent_span_id: None,
        name: format!("span-{number}"),
        kind: SpanKind::Internal,
        start_time_unix_nano: 1_000,
        end_time_unix_nano: 2_000,
        attributes: Vec::new(),
        status: SpanStatus::Unset,
    }
}

fn dropped(metrics: &ExportMetrics, reason: &str) -> u64 {
    metrics.spans_dropped.with_label_values(&[reason]).get()
}

#[tokio::test]
async fn export_sends_otlp_json() {
    let mut receiver = Receiver::start(StatusCode::OK, None).await;
    let mut config = config(&receiver.endpoint);
    config.service_name = "keygate-test".into();
    config
        .otlp_headers
        .0
        .insert("x-api-key".into(), "collector-key".into());
    let (telemetry, metrics) = start(&config);

    let root =
        TraceContext::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
    let child = root.child();
    telemetry.record(SpanRecord {
        trace_id: child.trace_id,
        span_id: child.span_id,
        parent_span_id: Some(root.span_id),
        name: "task.relay".into(),
        kind: SpanKind::Client,
        start_time_unix_nano: 1_700_000_000_123_456_789,
        end_time_unix_nano: 1_700_000_000_223_456_789,
        attributes: vec![
            Attribute::new("agent.id", "agent-42"),
            Attribute::new("task.payload_bytes", 512i64),
            Attribute::new("task.queued", false),
        ],
        status: SpanStatus::Error("timed out".into()),
    });
    telemetry.record(span(9));
    telemetry.flush().await;

    let request = receiver.next().await;
    assert_eq!(request.path, "/v1/traces");
    assert_eq!(request.headers["content-type"], "application/json");
    assert_eq!(request.headers["x-api-key"], "collector-key");

    let resource = &request.body["resourceSpans"][0]["resource"]["attributes"];
    assert_eq!(
        resource,
        &json!([
            {"key": "service.name", "value": {"stringValue": "keygate-test"}},
            {"key": "service.instance.id", "value": {"stringValue": "node-7"}},
            {"key": "service.version", "value": {"stringValue": env!("CARGO_PKG_VERSION")}},
        ])
    );
    assert_eq!(
        request.body["resourceSpans"][0]["scopeSpans"][0]["scope"]["name"],
        "keygate"
    );

    let spans = request.spans();
    assert_eq!(spans.len(), 2);
    let relay = &spans[0];
    assert_eq!(relay["traceId"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(relay["spanId"], child.span_id_hex());
    assert_eq!(relay["parentSpanId"], "b7ad6b7169203331");
    assert_eq!(relay["name"], "task.relay");
    assert_eq!(relay["kind"], 3);
    assert_eq!(relay["startTimeUnixNano"], "1700000000123456789");
    assert_eq!(relay["endTimeUnixNano"], "1700000000223456789");
    assert_eq!(
        relay["attributes"],
        json!([
            {"key": "agent.id", "value": {"stringValue": "agent-42"}},
            {"key": "task.payload_bytes", "value": {"intValue": "512"}},
            {"key": "task.queued", "value": {"boolValue": false}},
        ])
    );
    assert_eq!(relay["status"], json!({"code": 2, "message": "timed out"}));
    assert_eq!(spans[1]["name"], "span-9");
    assert_eq!(spans[1]["traceId"], "09090909090909090909090909090909");

    assert_eq!(metrics.spans_exported.get(), 2);
    assert_eq!(metrics.export_failures.get(), 0);
    assert_eq!(metrics.export_duration.get_sample_count(), 1);
    telemetry.shutdown().await;
}

#[tokio::test]
async fn full_batch_sent_without_flush() {
    let mut receiver = Receiver::start(StatusCode::OK, None).await;
    let mut config = config(&receiver.endpoint);
    config.otlp_max_batch_spans = 2;
    let (telemetry, metrics) = start(&config);

    for number in 1..=4 {
        telemetry.record(span(number));
    }
    // The timer is 10 minutes away and nothing flushes, so only the batch size sends these.
    let first = receiver.next().await;
    let second = receiver.next().await;
    let names = |request: &Received| -> Vec<String> {
        request
            .spans()
            .iter()
            .map(|span| span["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&first), ["span-1", "span-2"]);
    assert_eq!(names(&second), ["span-3", "span-4"]);

    telemetry.record(span(5));
    telemetry.flush().await;
    let third = receiver.next().await;
    assert_eq!(names(&third), ["span-5"]);
    assert_eq!(metrics.spans_exported.get(), 5);
    assert_eq!(
        receiver.connections.load(Ordering::SeqCst),
        1,
        "the three requests share one kept-alive connection"
    );
}

#[tokio::test]
async fn error_status_drops_batch() {
    let mut receiver = Receiver::start(StatusCode::INTERNAL_SERVER_ERROR, None).await;
    let (telemetry, metrics) = start(&config(&receiver.endpoint));

    for number in 1..=3 {
        telemetry.record(span(number));
    }
    telemetry.flush().await;

    assert_eq!(receiver.next().await.spans().len(), 3);
    assert_eq!(metrics.export_failures.get(), 1);
    assert_eq!(dropped(&metrics, DROP_EXPORT_FAILED), 3);
    assert_eq!(metrics.spans_exported.get(), 0);
    assert!(!receiver.has_pending(), "a failed batch is not sent again");
}

#[tokio::test]
async fn unreachable_collector_drops_batch() {
    // Bind, then close, a loopback port so nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (telemetry, metrics) = start(&config(&format!("http://127.0.0.1:{port}")));

    telemetry.record(span(1));
    telemetry.record(span(2));
    telemetry.flush().await;

    assert_eq!(metrics.export_failures.get(), 1);
    assert_eq!(dropped(&metrics, DROP_EXPORT_FAILED), 2);
}

#[tokio::test]
async fn full_queue_drops_span() {
    let gate = Arc::new(Semaphore::new(0));
    let mut receiver = Receiver::start(StatusCode::OK, Some(gate.clone())).await;
    let mut config = config(&receiver.endpoint);
    config.otlp_max_queue_spans = 2;
    config.otlp_max_batch_spans = 1;
    let (telemetry, metrics) = start(&config);

    telemetry.record(span(1));
    // The export task now waits for the receiver's response to span 1, so it
    // takes nothing from the queue until the gate opens.
    assert_eq!(receiver.next().await.spans()[0]["name"], "span-1");
    telemetry.record(span(2));
    telemetry.record(span(3));
    telemetry.record(span(4));
    assert_eq!(dropped(&metrics, DROP_QUEUE_FULL), 1);

    gate.add_permits(3);
    telemetry.flush().await;
    assert_eq!(receiver.next().await.spans()[0]["name"], "span-2");
    assert_eq!(receiver.next().await.spans()[0]["name"], "span-3");
    assert_eq!(metrics.spans_exported.get(), 3);
    assert_eq!(dropped(&metrics, DROP_QUEUE_FULL), 1);
}

#[tokio::test]
async fn shutdown_exports_queued_spans() {
    let mut receiver = Receiver::start(StatusCode::OK, None).await;
    let (telemetry, metrics) = start(&config(&receiver.endpoint));
    let clone = telemetry.clone();

    telemetry.record(span(1));
    telemetry.record(span(2));
    telemetry.shutdown().await;
    assert_eq!(receiver.next().await.spans().len(), 2);
    assert_eq!(metrics.spans_exported.get(), 2);

    clone.record(span(3));
    assert_eq!(dropped(&metrics, DROP_SHUTDOWN), 1);
    // Flush and shutdown after shutdown return at once.
    clone.flush().await;
    clone.shutdown().await;
}

#[tokio::test]
async fn disabled_handle_does_nothing() {
    let telemetry = Telemetry::disabled();
    assert!(!telemetry.is_enabled());
    telemetry.record(span(1));
    telemetry.flush().await;
    telemetry.shutdown().await;

    let metrics = Metrics::new();
    let telemetry = Telemetry::start(&TelemetryConfig::default(), &metrics, "node-1").unwrap();
    assert!(!telemetry.is_enabled(), "no endpoint means no export");
    telemetry.record(span(1));
    let text = metrics.render();
    assert!(
        text.contains("keygate_telemetry_spans_dropped_total{reason=\"queue_full\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("keygate_telemetry_spans_exported_total 0"),
        "{text}"
    );
}

#[tokio::test]
async fn invalid_endpoint_rejected() {
    let error = Telemetry::start_with_metrics(
        &config("http://collector.example.com:4318"),
        ExportMetrics::new(),
        "node-1",
    )
    .err()
    .expect("a plain-http remote endpoint is an error");
    assert!(
        matches!(error, TelemetryError::Endpoint { .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("collector.example.com"),
        "{error}"
    );
}
