//! Every API error is an `application/problem+json` document with the right status.

use bytes::Bytes;
use http::{Method, StatusCode};
use keygate_tests::TestServer;
use serde_json::Value;

fn assert_problem(
    status: StatusCode,
    headers: &http::HeaderMap,
    body: &[u8],
    expected: StatusCode,
) -> Value {
    assert_eq!(status, expected, "{}", String::from_utf8_lossy(body));
    assert_eq!(
        headers[http::header::CONTENT_TYPE],
        "application/problem+json"
    );
    let doc: Value = serde_json::from_slice(body).expect("a JSON problem document");
    for member in ["type", "title", "status", "detail"] {
        assert!(
            doc.get(member).is_some(),
            "member {member} missing in {doc}"
        );
    }
    assert_eq!(doc["status"], expected.as_u16());
    assert!(!doc["detail"].as_str().unwrap().is_empty());
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_400() {
    let server = TestServer::start().await;
    let headers = [
        (
            http::header::AUTHORIZATION,
            format!("Bearer {}", server.admin_token),
        ),
        (http::header::CONTENT_TYPE, "application/json".to_owned()),
    ];
    let (status, resp_headers, body) = server
        .api()
        .send(
            Method::POST,
            "/v1/agents",
            &headers,
            Bytes::from_static(b"{\"name\": "),
        )
        .await;
    let doc = assert_problem(status, &resp_headers, &body, StatusCode::BAD_REQUEST);
    assert_eq!(doc["type"], "urn:keygate:problem:invalid-json");
    assert!(doc["detail"].as_str().unwrap().contains("line 1"), "{doc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_is_413() {
    let server = TestServer::start_with(|c| c.http.max_body_bytes = 4096).await;
    let headers = [
        (
            http::header::AUTHORIZATION,
            format!("Bearer {}", server.admin_token),
        ),
        (http::header::CONTENT_TYPE, "application/json".to_owned()),
    ];
    let big = format!("{{\"value\": \"{}\"}}", "x".repeat(10_000));
    let (status, resp_headers, body) = server
        .api()
        .send(
            Method::PUT,
            "/v1/projects/etl/secrets/big",
            &headers,
            Bytes::from(big),
        )
        .await;
    let doc = assert_problem(status, &resp_headers, &body, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(doc["detail"].as_str().unwrap().contains("4096"), "{doc}");
}

/// Responses sent before the request body is read (a 413, a 404) reach a
/// client that is still sending: the server drains the connection rather
/// than closing it on unread input, which would reset it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_response_reaches_sending_client() {
    let server = TestServer::start_with(|c| c.http.max_body_bytes = 4096).await;
    let headers = [
        (
            http::header::AUTHORIZATION,
            format!("Bearer {}", server.admin_token),
        ),
        (http::header::CONTENT_TYPE, "application/json".to_owned()),
    ];
    let big = Bytes::from(format!("{{\"value\": \"{}\"}}", "x".repeat(8 << 20)));
    let (status, resp_headers, body) = server
        .api()
        .send(
            Method::PUT,
            "/v1/projects/etl/secrets/big",
            &headers,
            big.clone(),
        )
        .await;
    assert_problem(status, &resp_headers, &body, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, resp_headers, body) = server
        .api()
        .send(Method::PUT, "/v2/nothing", &headers, big)
        .await;
    assert_problem(status, &resp_headers, &body, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_route_is_404_and_wrong_method_405() {
    let server = TestServer::start().await;
    let (status, headers, body) = server
        .api()
        .send(Method::GET, "/v2/nothing", &[], Bytes::new())
        .await;
    assert_problem(status, &headers, &body, StatusCode::NOT_FOUND);

    let (status, headers, body) = server
        .api()
        .send(Method::DELETE, "/v1/agents", &[], Bytes::new())
        .await;
    assert_problem(status, &headers, &body, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers[http::header::ALLOW], "POST, GET");

    let (status, headers, body) = server
        .api()
        .send(Method::GET, "/metrics", &[], Bytes::new())
        .await;
    assert_problem(status, &headers, &body, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_errors_are_problems() {
    let server = TestServer::start().await;
    let (status, headers, body) = server
        .api()
        .send(Method::GET, "/v1/tasks/tsk_x", &[], Bytes::new())
        .await;
    assert_problem(status, &headers, &body, StatusCode::UNAUTHORIZED);

    let token = server.token("acme", &["secrets:read"], None);
    let auth = [(http::header::AUTHORIZATION, format!("Bearer {token}"))];
    let (status, headers, body) = server
        .api()
        .send(Method::GET, "/v1/tasks/tsk_x", &auth, Bytes::new())
        .await;
    assert_problem(status, &headers, &body, StatusCode::FORBIDDEN);

    let admin = [(
        http::header::AUTHORIZATION,
        format!("Bearer {}", server.admin_token),
    )];
    let (status, headers, body) = server
        .api()
        .send(Method::GET, "/v1/tasks/tsk_x", &admin, Bytes::new())
        .await;
    assert_problem(status, &headers, &body, StatusCode::NOT_FOUND);
}
