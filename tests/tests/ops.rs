//! The ops listener: metrics text, health and readiness.

use bytes::Bytes;
use http::{Method, StatusCode};
use keygate_tests::{HttpsClient, TestServer, ACCOUNT};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_bounded_labels() {
    let server = TestServer::start().await;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 2).await;
    let secret_name = "label-canary-secret";
    server
        .api()
        .request(
            Method::PUT,
            &format!("/v1/projects/etl/secrets/{secret_name}"),
            Some(&server.admin_token),
            Some(json!({"value": "label-canary-value"})),
        )
        .await;
    let (status, _) = server
        .submit(&creds.id, json!({"kind": "echo", "payload": {"x": 1}}))
        .await;
    assert_eq!(status, StatusCode::OK);

    let ops = HttpsClient::plain(server.ops_addr);
    let (status, headers, body) = ops.send(Method::GET, "/metrics", &[], Bytes::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[http::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8(body.to_vec()).unwrap();
    for expected in [
        "keygate_gateway_agent_sessions 1",
        r#"keygate_gateway_tasks_total{outcome="succeeded"} 1"#,
        "keygate_gateway_relay_duration_seconds_count 1",
        "keygate_auth_signing_key_age_seconds ",
        r#"keygate_http_requests_total{listener="api",route="/v1/agents/{agent_id}/tasks",status="200"} 1"#,
        r#"keygate_http_requests_total{listener="api",route="/v1/projects/{project}/secrets/{name}",status="201"} 1"#,
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    for forbidden in [
        secret_name,
        "label-canary-value",
        creds.id.as_str(),
        server.admin_token.as_str(),
    ] {
        assert!(
            !text.contains(forbidden),
            "metrics must not contain {forbidden:?}"
        );
    }

    let (status, _, body) = ops.send(Method::GET, "/healthz", &[], Bytes::new()).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let (status, _, body) = ops.send(Method::GET, "/readyz", &[], Bytes::new()).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    agent.stop().await;
}
