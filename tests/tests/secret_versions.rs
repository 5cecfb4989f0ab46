//! Hosted secret versions over HTTPS: check-and-set, reads of a version,
//! the maximum number of versions, delete, undelete and destroy, names that
//! need percent-encoding, listing, project deletion and key rotation.

use http::{Method, StatusCode};
use keygate_tests::{HttpsClient, TestServer, ACCOUNT};
use serde_json::{json, Value};

/// Percent-encodes every byte outside the unreserved set, as clients must for
/// one path segment.
fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn secret(name: &str, rest: &str) -> String {
    format!("/v1/projects/etl/secrets/{}{rest}", encode(name))
}

async fn call(
    api: &HttpsClient,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let (status, _, body) = api.request(method, path, Some(token), body).await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_set_sequence() {
    let server = TestServer::start().await;
    let api = server.api();
    let admin = &server.admin_token;
    let put = |cas: u32, value: &str| json!({"value": value, "cas": cas});

    let (status, body) = call(
        &api,
        admin,
        Method::PUT,
        &secret("db", ""),
        Some(put(0, "one")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["version"], 1);

    let (status, body) = call(
        &api,
        admin,
        Method::PUT,
        &secret("db", ""),
        Some(put(0, "again")),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["type"], "urn:keygate:problem:conflict", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("current version is 1"),
        "{body}"
    );

    let (status, body) = call(
        &api,
        admin,
        Method::PUT,
        &secret("db", ""),
        Some(put(1, "two")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 2);

    let (status, body) = call(&api, admin, Method::GET, &secret("db", "/value"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["version"].as_u64(), body["value"].as_str()),
        (Some(2), Some("two"))
    );
    let (_, body) = call(
        &api,
        admin,
        Method::GET,
        &secret("db", "/value?version=1"),
        None,
    )
    .await;
    assert_eq!(body["value"], "one", "{body}");

    for bad in ["0", "x", "-1"] {
        let path = secret("db", &format!("/value?version={bad}"));
        let (status, body) = call(&api, admin, Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (status, body) = call(
        &api,
        admin,
        Method::GET,
        &secret("db", "/value?version=9"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("latest version is 2"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_round_trip_exactly() {
    let server = TestServer::start().await;
    let api = server.api();
    let admin = &server.admin_token;
    let names = [
        "team/db/password",
        "with space",
        "100%",
        "%2F literal",
        "a+b=c",
        "ünïcödé",
        "..",
        "value",
    ];
    for name in names {
        let (status, body) = call(
            &api,
            admin,
            Method::PUT,
            &secret(name, ""),
            Some(json!({"value": name})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{name:?}: {body}");
        assert_eq!(body["name"], name);
        let (status, body) = call(&api, admin, Method::GET, &secret(name, "/value"), None).await;
        assert_eq!(status, StatusCode::OK, "{name:?}: {body}");
        assert_eq!(
            (body["name"].as_str(), body["value"].as_str()),
            (Some(name), Some(name))
        );
    }

    let (_, body) = call(
        &api,
        admin,
        Method::GET,
        "/v1/projects/etl/secrets?limit=1000",
        None,
    )
    .await;
    let mut listed: Vec<&str> = body["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    listed.sort_unstable();
    let mut expected = names.to_vec();
    expected.sort_unstable();
    assert_eq!(listed, expected);
    assert!(
        !body.to_string().contains("\"value\":"),
        "listing never shows values: {body}"
    );

    for (bad, rule) in [
        ("a%01b", "control characters"),
        (&"x".repeat(257)[..], "257 bytes"),
    ] {
        let path = format!("/v1/projects/etl/secrets/{bad}");
        let (status, body) =
            call(&api, admin, Method::PUT, &path, Some(json!({"value": "v"}))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let detail = body["detail"].as_str().unwrap();
        assert!(
            detail.contains(rule) && detail.contains("allowed: 1 to 256 bytes"),
            "{detail}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_versions_and_version_states() {
    let server = TestServer::start_with(|config| config.vault.default_max_versions = Some(4)).await;
    let api = server.api();
    let admin = &server.admin_token;
    for n in 1..=5 {
        call(
            &api,
            admin,
            Method::PUT,
            &secret("db", ""),
            Some(json!({"value": format!("v{n}")})),
        )
        .await;
    }
    let (_, meta) = call(&api, admin, Method::GET, &secret("db", ""), None).await;
    assert_eq!(meta["current_version"], 5, "{meta}");
    assert_eq!(meta["oldest_version"], 2, "{meta}");
    assert_eq!(meta["max_versions_in_force"], 4, "{meta}");
    assert_eq!(meta["max_versions"], Value::Null, "{meta}");

    let (status, meta) = call(
        &api,
        admin,
        Method::PATCH,
        &secret("db", ""),
        Some(json!({"max_versions": 2, "custom_metadata": {"owner": "data-eng"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{meta}");
    assert_eq!(
        (
            meta["max_versions"].as_u64(),
            meta["oldest_version"].as_u64()
        ),
        (Some(2), Some(4))
    );
    assert_eq!(meta["custom_metadata"]["owner"], "data-eng");
    let (status, body) = call(
        &api,
        admin,
        Method::PATCH,
        &secret("db", ""),
        Some(json!({"max_versions": 0})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("from 1 to 1000"),
        "{body}"
    );

    let (status, meta) = call(
        &api,
        admin,
        Method::POST,
        &secret("db", "/delete"),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{meta}");
    assert!(meta["versions"]["5"]["deleted_at_ms"].is_u64(), "{meta}");
    let (status, body) = call(&api, admin, Method::GET, &secret("db", "/value"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(
        body["type"], "urn:keygate:problem:version-deleted",
        "{body}"
    );

    call(
        &api,
        admin,
        Method::POST,
        &secret("db", "/undelete"),
        Some(json!({"versions": [5]})),
    )
    .await;
    let (_, body) = call(&api, admin, Method::GET, &secret("db", "/value"), None).await;
    assert_eq!(body["value"], "v5", "{body}");

    let (status, meta) = call(
        &api,
        admin,
        Method::POST,
        &secret("db", "/destroy"),
        Some(json!({"versions": [4]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{meta}");
    assert_eq!(meta["versions"]["4"]["destroyed"], true, "{meta}");
    let (status, body) = call(
        &api,
        admin,
        Method::GET,
        &secret("db", "/value?version=4"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::GONE, "{body}");
    let (status, body) = call(
        &api,
        admin,
        Method::POST,
        &secret("db", "/destroy"),
        Some(json!({"versions": []})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (status, body) = call(&api, admin, Method::DELETE, &secret("db", ""), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["destroyed_versions"], 1, "{body}");
    let (status, _) = call(&api, admin, Method::GET, &secret("db", ""), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_is_paginated() {
    let server = TestServer::start().await;
    let api = server.api();
    let admin = &server.admin_token;
    for n in 0..5 {
        call(
            &api,
            admin,
            Method::PUT,
            &secret(&format!("s{n}"), ""),
            Some(json!({"value": "v"})),
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let query = match &after {
            Some(name) => format!("?limit=2&after={}", encode(name)),
            None => "?limit=2".to_owned(),
        };
        let (status, body) = call(
            &api,
            admin,
            Method::GET,
            &format!("/v1/projects/etl/secrets{query}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for item in body["secrets"].as_array().unwrap() {
            seen.push(item["name"].as_str().unwrap().to_owned());
        }
        match body["next_after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["s0", "s1", "s2", "s3", "s4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_key_rotation_reencryption_and_project_deletion() {
    let server = TestServer::start().await;
    let api = server.api();
    let admin = &server.admin_token;
    for n in 0..3 {
        call(
            &api,
            admin,
            Method::PUT,
            &secret(&format!("s{n}"), ""),
            Some(json!({"value": format!("v{n}")})),
        )
        .await;
    }
    let (status, keys) = call(
        &api,
        admin,
        Method::POST,
        "/v1/projects/etl/data-keys/rotate",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    assert_eq!(keys["current_version"], 2, "{keys}");
    assert_eq!(keys["versions"].as_array().unwrap().len(), 2, "{keys}");

    let keys_admin = server.token(ACCOUNT, &["keys:admin"], None);
    let (status, _) = call(&api, admin, Method::POST, "/v1/admin/vault/reencrypt", None).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "re-encryption needs keys:admin"
    );
    let (status, body) = call(
        &api,
        &keys_admin,
        Method::POST,
        "/v1/admin/vault/reencrypt",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let mut progress = body["progress"].clone();
    for _ in 0..200 {
        if progress["done"] == true {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let (_, body) = call(
            &api,
            &keys_admin,
            Method::GET,
            "/v1/admin/vault/reencrypt",
            None,
        )
        .await;
        progress = body["progress"].clone();
    }
    assert_eq!(progress["done"], true, "{progress}");
    assert_eq!(progress["rewritten"], 3, "{progress}");
    let (_, keys) = call(&api, admin, Method::GET, "/v1/projects/etl/data-keys", None).await;
    assert_eq!(keys["current_encryptions"], 3, "{keys}");
    let (_, body) = call(&api, admin, Method::GET, &secret("s1", "/value"), None).await;
    assert_eq!(body["value"], "v1", "{body}");

    let runner = server.token(ACCOUNT, &["secrets:read"], Some(&["etl"]));
    let (status, _) = call(&api, &runner, Method::DELETE, "/v1/projects/etl", None).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "deleting a project needs secrets:admin"
    );
    let (status, body) = call(&api, admin, Method::DELETE, "/v1/projects/etl", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["data_keys"].as_u64(), body["secrets"].as_u64()),
        (Some(2), Some(3)),
        "{body}"
    );
    let (status, _) = call(&api, admin, Method::GET, &secret("s1", "/value"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_reencryption_resumes_after_restart() {
    let mut server = TestServer::start().await;
    let admin = server.admin_token.clone();
    for n in 0..3 {
        let path = secret(&format!("s{n}"), "");
        let value = json!({"value": format!("v{n}")});
        call(&server.api(), &admin, Method::PUT, &path, Some(value)).await;
    }
    let rotate = "/v1/projects/etl/data-keys/rotate";
    let (status, keys) = call(&server.api(), &admin, Method::POST, rotate, None).await;
    assert_eq!(status, StatusCode::OK, "{keys}");

    // The job is recorded as started but none of its steps runs before the
    // server stops, as when a server is stopped in the middle of the job.
    let vault = server.server().state().vault.get().expect("vault is open");
    let started = vault.start_reencrypt().unwrap();
    assert!(!started.done);
    drop(vault);
    server.restart().await;

    let keys_admin = server.token(ACCOUNT, &["keys:admin"], None);
    let progress_path = "/v1/admin/vault/reencrypt";
    let mut progress = Value::Null;
    for _ in 0..200 {
        let (_, body) = call(&server.api(), &keys_admin, Method::GET, progress_path, None).await;
        progress = body["progress"].clone();
        if progress["done"] == true {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(progress["done"], true, "{progress}");
    assert_eq!(progress["rewritten"], 3, "{progress}");
    let (_, keys) = call(
        &server.api(),
        &admin,
        Method::GET,
        "/v1/projects/etl/data-keys",
        None,
    )
    .await;
    assert_eq!(keys["current_encryptions"], 3, "{keys}");
    let (_, body) = call(
        &server.api(),
        &admin,
        Method::GET,
        &secret("s2", "/value"),
        None,
    )
    .await;
    assert_eq!(body["value"], "v2", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencrypt_command_follows_the_job_to_the_end() {
    let server = TestServer::start().await;
    let api = server.api();
    let admin = &server.admin_token;
    for n in 0..4 {
        call(
            &api,
            admin,
            Method::PUT,
            &secret(&format!("s{n}"), ""),
            Some(json!({"value": "v"})),
        )
        .await;
    }
    call(
        &api,
        admin,
        Method::POST,
        "/v1/projects/etl/data-keys/rotate",
        None,
    )
    .await;

    let keys_admin = server.token(ACCOUNT, &["keys:admin"], None);
    let output = tokio::process::Command::new(keygate_tests::process::keygate_bin())
        .args(["vault", "reencrypt", "--api"])
        .arg(server.api_addr.to_string())
        .arg("--ca")
        .arg(server.ca_path())
        .env("KEYGATE_TOKEN", &keys_admin)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("100%  4/4 versions scanned, 4 re-encrypted"),
        "{stdout}"
    );
    assert!(stdout.contains("re-encryption finished"), "{stdout}");

    let output = tokio::process::Command::new(keygate_tests::process::keygate_bin())
        .args(["vault", "reencrypt", "--api"])
        .arg(server.api_addr.to_string())
        .arg("--ca")
        .arg(server.ca_path())
        .env("KEYGATE_TOKEN", admin)
        .output()
        .await
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "a token without keys:admin is refused"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("keys:admin"));
}
