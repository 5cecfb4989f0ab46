//! W3C trace context across the relay, and span export to an OTLP collector
//! on loopback.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use keygate_tests::{TestServer, ACCOUNT};
use serde_json::{json, Value};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP receiver that keeps every span it is sent.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Value>>>,
    paths: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the collector");
        let addr = listener.local_addr().expect("local address");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let (accept_spans, accept_paths) = (spans.clone(), paths.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (spans, paths) = (accept_spans.clone(), accept_paths.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: http::Request<hyper::body::Incoming>| {
                            let (spans, paths) = (spans.clone(), paths.clone());
                            async move {
                                paths.lock().unwrap().push(request.uri().path().to_owned());
                                let body = request.into_body().collect().await?.to_bytes();
                                let export: Value =
                                    serde_json::from_slice(&body).unwrap_or(Value::Null);
                                for resource in
                                    export["resourceSpans"].as_array().into_iter().flatten()
                                {
                                    for scope in
                                        resource["scopeSpans"].as_array().into_iter().flatten()
                                    {
                                        for span in scope["spans"].as_array().into_iter().flatten()
                                        {
                                            let mut span = span.clone();
                                            span["resource"] = resource["resource"].clone();
                                            spans.lock().unwrap().push(span);
                                        }
                                    }
                                }
                                let response = http::Response::builder()
                                    .header(http::header::CONTENT_TYPE, "application/json")
                                    .body(Full::new(Bytes::from_static(b"{}")))
                                    .expect("response");
                                Ok::<_, hyper::Error>(response)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Collector { addr, spans, paths }
    }

    fn spans_of_trace(&self, trace_id: &str) -> Vec<Value> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s["traceId"] == trace_id)
            .cloned()
            .collect()
    }
}

fn attribute<'a>(span: &'a Value, key: &str) -> &'a Value {
    span["attributes"]
        .as_array()
        .and_then(|attrs| attrs.iter().find(|a| a["key"] == key))
        .map(|a| &a["value"]["stringValue"])
        .unwrap_or(&Value::Null)
}

async fn submit_traced(
    server: &TestServer,
    agent_id: &str,
    traceparent: &str,
) -> (StatusCode, Option<String>, Value) {
    let headers = [
        (http::header::CONTENT_TYPE, "application/json".to_owned()),
        (
            http::header::AUTHORIZATION,
            format!("Bearer {}", server.admin_token),
        ),
        (
            http::HeaderName::from_static("traceparent"),
            traceparent.to_owned(),
        ),
    ];
    let body = json!({"kind": "echo", "payload": {"n": 1}});
    let (status, headers, raw) = server
        .api()
        .send(
            Method::POST,
            &format!("/v1/agents/{agent_id}/tasks"),
            &headers,
            Bytes::from(body.to_string()),
        )
        .await;
    let header = headers
        .get("traceparent")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, header, serde_json::from_slice(&raw).unwrap())
}

async fn traced_server(collector: &Collector) -> TestServer {
    let endpoint = format!("http://{}", collector.addr);
    TestServer::start_with(move |config| {
        config.telemetry.otlp_endpoint = endpoint;
        config.telemetry.service_name = "keygate-test".into();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_trace_reaches_the_agent_and_the_collector() {
    let collector = Collector::start().await;
    let server = traced_server(&collector).await;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 2).await;

    let caller = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let (status, header, task) = submit_traced(&server, &creds.id, &caller).await;
    assert_eq!(status, StatusCode::OK, "{task}");
    assert_eq!(task["status"], "succeeded");
    let header = header.expect("the response carries a traceparent");
    assert_eq!(task["traceparent"], header.as_str());
    assert!(
        header.starts_with(&format!("00-{TRACE_ID}-")) && header.ends_with("-01"),
        "the task's span is not in the caller's trace: {header}"
    );
    let task_span = &header[36..52];
    assert_ne!(task_span, CALLER_SPAN, "the task needs a span of its own");

    server.server().state().telemetry.flush().await;
    let spans = collector.spans_of_trace(TRACE_ID);
    assert_eq!(spans.len(), 1, "{spans:?}");
    let span = &spans[0];
    assert_eq!(span["spanId"], task_span);
    assert_eq!(span["parentSpanId"], CALLER_SPAN);
    assert_eq!(span["name"], "task echo");
    assert_eq!(span["status"]["code"], 1, "status OK: {span}");
    assert_eq!(attribute(span, "keygate.task.id"), &task["id"]);
    assert_eq!(attribute(span, "keygate.agent.id"), creds.id.as_str());
    assert_eq!(attribute(span, "keygate.task.status"), "succeeded");
    let start: u64 = span["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
    let end: u64 = span["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(start > 0, "{span}");
    assert!(end >= start, "{span}");

    // The agent ran the task in a child span of the same trace and sent its
    // context back with the result.
    let agent_context = attribute(span, "keygate.agent.traceparent")
        .as_str()
        .expect("the agent returned its trace context");
    assert!(
        agent_context.starts_with(&format!("00-{TRACE_ID}-")),
        "{agent_context}"
    );
    assert_ne!(&agent_context[36..52], task_span);

    let service = span["resource"]["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == "service.name")
        .map(|a| a["value"]["stringValue"].clone());
    assert_eq!(service, Some(json!("keygate-test")));
    assert!(collector
        .paths
        .lock()
        .unwrap()
        .iter()
        .all(|p| p == "/v1/traces"));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsampled_traces_are_not_exported() {
    let collector = Collector::start().await;
    let server = traced_server(&collector).await;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 2).await;

    let unsampled_trace = "0af7651916cd43dd8448eb211c80319c";
    let caller = format!("00-{unsampled_trace}-b7ad6b7169203331-00");
    let (status, header, task) = submit_traced(&server, &creds.id, &caller).await;
    assert_eq!(status, StatusCode::OK, "{task}");
    let header = header.unwrap();
    assert!(header.starts_with(&format!("00-{unsampled_trace}-")));
    assert!(
        header.ends_with("-00"),
        "the sampled flag must pass on: {header}"
    );

    // A sampled task afterwards proves the exporter works and has flushed.
    let sampled = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    submit_traced(&server, &creds.id, &sampled).await;
    server.server().state().telemetry.flush().await;
    assert_eq!(collector.spans_of_trace(TRACE_ID).len(), 1);
    assert!(collector.spans_of_trace(unsampled_trace).is_empty());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_invalid_traceparent_starts_a_new_trace() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 2).await;

    for invalid in [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "not a traceparent",
    ] {
        let (status, header, task) = submit_traced(&server, &creds.id, invalid).await;
        assert_eq!(status, StatusCode::OK, "{invalid}: {task}");
        let header = header.unwrap();
        assert_eq!(header.len(), 55, "{header}");
        assert!(
            header.starts_with("00-") && header.ends_with("-01"),
            "{header}"
        );
        assert!(
            !header.contains(TRACE_ID),
            "an invalid header must not be continued: {invalid} gave {header}"
        );
    }

    let (status, body) = server
        .submit(&creds.id, json!({"kind": "echo", "payload": 2}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let traceparent = body["traceparent"].as_str().unwrap();
    assert_eq!(traceparent.len(), 55, "{traceparent}");
    agent.stop().await;
}
