//! Hosted secrets, secret definitions and runner resolution end to end.

use http::{Method, StatusCode};
use keygate_tests::{TestServer, ACCOUNT};
use serde_json::json;

fn path(project: &str, rest: &str) -> String {
    format!("/v1/projects/{project}/{rest}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_define_and_resolve() {
    let server = TestServer::start().await;
    let api = server.api();
    let admin = &server.admin_token;

    let (status, _, body) = api
        .request(
            Method::PUT,
            &path("etl", "secrets/db"),
            Some(admin),
            Some(json!({"value": "{\"user\":\"etl\",\"password\":\"s3cr3t-one\"}"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["version"], 1);
    assert!(body.get("value").is_none());

    let (status, _, body) = api
        .request(
            Method::PUT,
            &path("etl", "secrets/db"),
            Some(admin),
            Some(json!({"value": "{\"user\":\"etl\",\"password\":\"s3cr3t-two\"}"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 2);

    let (status, _, body) = api
        .request(
            Method::PUT,
            &path("etl", "secret-definitions/warehouse-password"),
            Some(admin),
            Some(json!({"location": {"type": "hosted", "secret": "db", "json_key": "password"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["location"]["type"], "hosted");

    let runner = server.token(ACCOUNT, &["secrets:read"], Some(&["etl"]));
    let (status, headers, body) = api
        .request(
            Method::GET,
            &path("etl", "secret-definitions/warehouse-password/value"),
            Some(&runner),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["value"], "s3cr3t-two");
    assert_eq!(body["source_version"], 2);
    assert_eq!(headers[http::header::CACHE_CONTROL], "no-store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_access_rules() {
    let server = TestServer::start().await;
    let api = server.api();
    let admin = &server.admin_token;
    for project in ["etl", "billing"] {
        api.request(
            Method::PUT,
            &path(project, "secrets/key"),
            Some(admin),
            Some(json!({"value": format!("value-of-{project}")})),
        )
        .await;
        let (status, _, body) = api
            .request(
                Method::PUT,
                &path(project, "secret-definitions/key"),
                Some(admin),
                Some(json!({"location": {"type": "hosted", "secret": "key"}})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let runner = server.token(ACCOUNT, &["secrets:read"], Some(&["etl"]));

    let (status, headers, body) = api
        .request(
            Method::GET,
            &path("billing", "secret-definitions/key/value"),
            Some(&runner),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "another project: {body}");
    assert_eq!(headers[http::header::CACHE_CONTROL], "no-store");

    let (status, _, body) = api
        .request(
            Method::GET,
            &path("etl", "secret-definitions/missing/value"),
            Some(&runner),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "unknown name: {body}");
    assert_eq!(body["type"], "urn:keygate:problem:not-found");

    // A token of another account reaches none of this account's projects.
    let stranger = server.token("globex", &["secrets:read"], None);
    let (status, _, _) = api
        .request(
            Method::GET,
            &path("etl", "secret-definitions/key/value"),
            Some(&stranger),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Reading values needs secrets:read, even for an admin of secrets.
    let writer = server.token(ACCOUNT, &["secrets:admin"], None);
    let (status, _, _) = api
        .request(
            Method::GET,
            &path("etl", "secret-definitions/key/value"),
            Some(&writer),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Writing needs secrets:admin.
    let (status, _, _) = api
        .request(
            Method::PUT,
            &path("etl", "secrets/key"),
            Some(&runner),
            Some(json!({"value": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let metrics = server.server().state().metrics.render();
    assert!(
        metrics.contains(r#"keygate_vault_resolutions_total{outcome="forbidden"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"keygate_vault_resolutions_total{outcome="not_found"} 2"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_never_returns_values() {
    let server = TestServer::start().await;
    let api = server.api();
    let admin = &server.admin_token;
    let names = ["a/b", "with space", "100%", "plain"];
    for name in names {
        let encoded: String =
            percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC)
                .collect();
        let (status, _, body) = api
            .request(
                Method::PUT,
                &path("etl", &format!("secrets/{encoded}")),
                Some(admin),
                Some(json!({"value": "listing-canary-value"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{name}: {body}");
        let (status, _, body) = api
            .request(
                Method::GET,
                &path("etl", &format!("secrets/{encoded}")),
                Some(admin),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["name"], name);
    }
    let (status, _, body) = api
        .request(Method::GET, &path("etl", "secrets"), Some(admin), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut listed: Vec<&str> = body["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    listed.sort();
    let mut expected = names.to_vec();
    expected.sort();
    assert_eq!(listed, expected);
    assert!(!body.to_string().contains("listing-canary-value"));

    let (_, _, page) = api
        .request(
            Method::GET,
            &path("etl", "secrets?limit=2"),
            Some(admin),
            None,
        )
        .await;
    assert_eq!(page["secrets"].as_array().unwrap().len(), 2);
    let (status, _, _) = api
        .request(
            Method::GET,
            &path("etl", "secrets?limit=0"),
            Some(admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_definitions_need_an_existing_connection() {
    let server = TestServer::start().await;
    let api = server.api();
    let admin = &server.admin_token;
    let location =
        json!({"type": "aws_secrets_manager", "secret_id": "prod/db", "json_key": "password"});
    let (status, _, body) = api
        .request(
            Method::PUT,
            &path("etl", "secret-definitions/aws-db"),
            Some(admin),
            Some(json!({"location": location})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["type"], "urn:keygate:problem:connection-misconfigured");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("needs connection"),
        "{body}"
    );

    let mut location = location;
    location["connection"] = json!("aws-prod");
    let (status, _, body) = api
        .request(
            Method::PUT,
            &path("etl", "secret-definitions/aws-db"),
            Some(admin),
            Some(json!({"location": location})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("PUT /v1/connections/aws-prod"),
        "{body}"
    );

    let (status, _, body) = api
        .request(
            Method::PUT,
            "/v1/connections/aws-prod",
            Some(admin),
            Some(
                json!({"connection": {"type": "aws_secrets_manager", "region": "eu-west-1",
                                        "endpoint": "http://127.0.0.1:9"}}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _, body) = api
        .request(
            Method::PUT,
            &path("etl", "secret-definitions/aws-db"),
            Some(admin),
            Some(json!({"location": location})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, _, stored) = api
        .request(
            Method::GET,
            &path("etl", "secret-definitions/aws-db"),
            Some(admin),
            None,
        )
        .await;
    assert_eq!(stored["location"]["secret_id"], "prod/db");

    let (status, _, body) = api
        .request(
            Method::PUT,
            &path("etl", "secret-definitions/bad"),
            Some(admin),
            Some(json!({"location": {"type": "carrier_pigeon"}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("carrier_pigeon"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_secret_input_rejected() {
    let server = TestServer::start().await;
    let api = server.api();
    let admin = &server.admin_token;
    let (status, _, body) = api
        .request(
            Method::PUT,
            &path("Bad_Project!", "secrets/x"),
            Some(admin),
            Some(json!({"value": "v"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("Bad_Project!"),
        "{body}"
    );

    let (status, _, body) = api
        .request(
            Method::PUT,
            &path("etl", "secrets/ctl%01char"),
            Some(admin),
            Some(json!({"value": "v"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (status, _, body) = api
        .request(
            Method::PUT,
            &path("etl", "secrets/x"),
            Some(admin),
            Some(json!({"value": 42})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("`value` must be a JSON string, got a number"),
        "{body}"
    );

    let (status, _, body) = api
        .request(
            Method::PUT,
            &path("etl", "secrets/x"),
            Some(admin),
            Some(json!({"secret": "v"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["type"], "urn:keygate:problem:invalid-json");

    let huge = "x".repeat(70 * 1024);
    let (status, _, body) = api
        .request(
            Method::PUT,
            &path("etl", "secrets/x"),
            Some(admin),
            Some(json!({"value": huge})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("65536"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_ciphertext_reaches_disk() {
    let mut server = TestServer::start().await;
    let value = format!("disk-canary-{}", keygate_gateway::directory::random_hex(16));
    let name = "canary-secret-name";
    let (status, _, body) = server
        .api()
        .request(
            Method::PUT,
            &path("etl", &format!("secrets/{name}")),
            Some(&server.admin_token),
            Some(json!({"value": value})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    server.shutdown().await;

    let mut value_found = Vec::new();
    let mut name_found = false;
    let mut files = 0;
    for entry in walk(&server.config.db_dir()) {
        let bytes = std::fs::read(&entry).unwrap();
        files += 1;
        if contains(&bytes, value.as_bytes()) {
            value_found.push(entry.clone());
        }
        name_found |= contains(&bytes, name.as_bytes());
    }
    assert!(files > 0);
    assert!(
        name_found,
        "control: the secret name is stored in plain text in the keys, so the scan can find it"
    );
    assert!(
        value_found.is_empty(),
        "the plaintext value was found in {value_found:?}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
