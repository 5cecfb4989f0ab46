//! The vault audit log end to end: records of resolutions, definition
//! writes, hosted secret operations, connection changes and denied attempts,
//! external locations recorded as HMACs, the HMAC endpoint,
//! `keygate audit verify` on an intact and a tampered store and file,
//! `keygate audit search`, and
//! refusal of accesses while records cannot be written.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use keygate_tests::process::keygate_bin;
use keygate_tests::vault_mock::VaultMock;
use keygate_tests::{HttpsClient, TestServer, ACCOUNT};
use keygate_vault::audit::seq_key;
use keygate_vault::{KvStore, ProjectRef, RocksStore, SecretValue, Space, StoreError, WriteBatch};
use serde_json::{json, Value};

const VALUE: &str = "audit-canary-value-7f3a";

fn request_id(headers: &HeaderMap) -> String {
    headers["x-request-id"]
        .to_str()
        .expect("ASCII request id")
        .to_owned()
}

/// Returns every audit record in the running server's store, in order.
fn records(server: &TestServer) -> Vec<Value> {
    let vault = server.server().state().vault.get().expect("vault is open");
    vault
        .store()
        .scan_prefix(Space::Audit, b"", None, 100_000)
        .expect("scan the audit space")
        .into_iter()
        .map(|(_, value)| serde_json::from_slice(&value).expect("record JSON"))
        .collect()
}

fn records_of(server: &TestServer, request_id: &str) -> Vec<Value> {
    records(server)
        .into_iter()
        .filter(|record| record["request_id"] == request_id)
        .collect()
}

/// Stores secret `warehouse` in project `etl` directly in the vault.
fn put_secret(server: &TestServer) {
    let vault = server.server().state().vault.get().expect("vault is open");
    vault
        .put_secret(
            &ProjectRef::new(ACCOUNT, "etl").unwrap(),
            "warehouse",
            &SecretValue::from_string(VALUE.to_owned()),
        )
        .expect("store the secret");
}

async fn put_definition(server: &TestServer, name: &str) -> HeaderMap {
    let (status, headers, body) = server
        .api()
        .request(
            Method::PUT,
            &format!("/v1/projects/etl/secret-definitions/{name}"),
            Some(&server.admin_token),
            Some(json!({"location": {"type": "hosted", "secret": "warehouse"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    headers
}

async fn resolve(server: &TestServer, token: Option<&str>) -> (StatusCode, HeaderMap, Value) {
    server
        .api()
        .request(
            Method::GET,
            "/v1/projects/etl/secret-definitions/warehouse-def/value",
            token,
            None,
        )
        .await
}

fn runner_token(server: &TestServer) -> String {
    server.token(ACCOUNT, &["secrets:read"], Some(&["etl"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_is_recorded() {
    let server = TestServer::start().await;
    put_secret(&server);
    put_definition(&server, "warehouse-def").await;

    let (status, headers, body) = resolve(&server, Some(&runner_token(&server))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["value"], VALUE);

    let id = request_id(&headers);
    let found = records_of(&server, &id);
    assert_eq!(found.len(), 1, "one record per resolution: {found:?}");
    let record = &found[0];
    assert_eq!(record["actor"], "test-caller");
    assert_eq!(record["account"], ACCOUNT);
    assert_eq!(record["project"], "etl");
    assert_eq!(record["secret"], "warehouse-def");
    assert_eq!(record["version"], 1);
    assert_eq!(record["operation"], "resolve");
    assert_eq!(record["outcome"], "success");
    assert_eq!(record["details"], json!({"hosted_secret": "warehouse"}));
    assert_eq!(record["hash"].as_str().unwrap().len(), 64);

    for record in records(&server) {
        assert!(
            !record.to_string().contains(VALUE),
            "a record contains the value: {record}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definition_write_is_recorded_twice() {
    let server = TestServer::start().await;
    let headers = put_definition(&server, "pg-def").await;

    let found = records_of(&server, &request_id(&headers));
    let outcomes: Vec<&str> = found
        .iter()
        .map(|record| record["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, vec!["started", "success"]);
    for record in &found {
        assert_eq!(record["operation"], "put_definition");
        assert_eq!(record["secret"], "pg-def");
        assert_eq!(record["details"], json!({"hosted_secret": "warehouse"}));
    }
    let seqs: Vec<u64> = found.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs[0] < seqs[1], "started comes first: {seqs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_resolution_is_recorded() {
    let server = TestServer::start().await;
    let (status, headers, _) = resolve(&server, Some(&runner_token(&server))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let found = records_of(&server, &request_id(&headers));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["outcome"], "not_found");
    assert_eq!(found[0]["version"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_attempts_are_recorded() {
    let server = TestServer::start().await;
    put_secret(&server);
    put_definition(&server, "warehouse-def").await;

    let cases = [
        ("no token", None, StatusCode::UNAUTHORIZED, ""),
        (
            "wrong scope",
            Some(server.token(ACCOUNT, &["tasks:write"], None)),
            StatusCode::FORBIDDEN,
            "test-caller",
        ),
        (
            "other project",
            Some(server.token(ACCOUNT, &["secrets:read"], Some(&["billing"]))),
            StatusCode::FORBIDDEN,
            "test-caller",
        ),
    ];
    for (case, token, expected_status, actor) in cases {
        let (status, headers, body) = resolve(&server, token.as_deref()).await;
        assert_eq!(status, expected_status, "{case}: {body}");
        let found = records_of(&server, &request_id(&headers));
        assert_eq!(found.len(), 1, "{case}: {found:?}");
        let record = &found[0];
        assert_eq!(record["outcome"], "denied", "{case}");
        assert_eq!(record["operation"], "resolve", "{case}");
        assert_eq!(record["secret"], "warehouse-def", "{case}");
        assert_eq!(record["project"], "etl", "{case}");
        assert_eq!(record["actor"], actor, "{case}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_endpoint_matches_log_key() {
    let mut server = TestServer::start().await;
    let keys_admin = server.token(ACCOUNT, &["keys:admin"], None);
    let hash = |token: String| {
        let api = server.api();
        async move {
            api.request(
                Method::POST,
                "/v1/admin/audit/hash",
                Some(&token),
                Some(json!({"value": "idempotency-key-1"})),
            )
            .await
        }
    };

    let (status, _, body) = hash(keys_admin.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let hmac = body["hmac"].as_str().expect("hmac").to_owned();
    assert_eq!(hmac.len(), 64);
    let expected = server
        .server()
        .state()
        .audit
        .hmac("idempotency-key-1")
        .unwrap();
    assert_eq!(hmac, expected);

    let (status, _, body) = hash(server.admin_token.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "needs keys:admin: {body}");

    let (status, _, body) = server
        .api()
        .request(
            Method::POST,
            "/v1/admin/audit/hash",
            Some(&keys_admin),
            Some(json!({"value": 5})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // The key is kept in the vault, so a restart keeps the same HMACs.
    server.shutdown().await;
    let restarted = restart(&server).await;
    assert_eq!(
        restarted.state().audit.hmac("idempotency-key-1").unwrap(),
        hmac
    );
    restarted.shutdown().await;
}

/// Returns `(operation, outcome, version)` of each record of one request.
fn summary(server: &TestServer, headers: &HeaderMap) -> Vec<(String, String, Value)> {
    records_of(server, &request_id(headers))
        .into_iter()
        .map(|record| {
            (
                record["operation"].as_str().unwrap().to_owned(),
                record["outcome"].as_str().unwrap().to_owned(),
                record["version"].clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosted_secret_operations_are_recorded() {
    let server = TestServer::start().await;
    let admin = server.admin_token.clone();
    let runner = runner_token(&server);
    let call = |method: Method, path: &'static str, token: &str, body: Option<Value>| {
        let (api, token) = (server.api(), token.to_owned());
        async move {
            let (status, headers, body) = api.request(method, path, Some(&token), body).await;
            (status, headers, body)
        }
    };
    let row = |operation: &str, outcome: &str, version: Value| {
        (operation.to_owned(), outcome.to_owned(), version)
    };
    let secret = "/v1/projects/etl/secrets/warehouse";

    let (status, headers, body) =
        call(Method::PUT, secret, &admin, Some(json!({"value": VALUE}))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        summary(&server, &headers),
        vec![
            row("write", "started", Value::Null),
            row("write", "success", json!(1)),
        ]
    );

    let value_path = "/v1/projects/etl/secrets/warehouse/value";
    let (status, headers, body) = call(Method::GET, value_path, &runner, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        summary(&server, &headers),
        vec![row("read_value", "success", json!(1))]
    );

    let missing_version = "/v1/projects/etl/secrets/warehouse/value?version=9";
    let (status, headers, body) = call(Method::GET, missing_version, &runner, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(
        summary(&server, &headers),
        vec![row("read_value", "not_found", json!(9))]
    );

    let other_project = server.token(ACCOUNT, &["secrets:read"], Some(&["billing"]));
    let (status, headers, body) = call(Method::GET, value_path, &other_project, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        summary(&server, &headers),
        vec![row("read_value", "denied", Value::Null)]
    );

    let (status, headers, body) = call(Method::GET, secret, &admin, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        summary(&server, &headers),
        vec![row("read_metadata", "success", Value::Null)]
    );

    let list = "/v1/projects/etl/secrets";
    let (status, headers, body) = call(Method::GET, list, &admin, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        summary(&server, &headers),
        vec![row("list", "success", Value::Null)]
    );

    let version_changes = [
        ("/v1/projects/etl/secrets/warehouse/delete", "delete"),
        ("/v1/projects/etl/secrets/warehouse/undelete", "undelete"),
        ("/v1/projects/etl/secrets/warehouse/destroy", "destroy"),
    ];
    for (path, operation) in version_changes {
        let (status, headers, body) =
            call(Method::POST, path, &admin, Some(json!({"versions": [1]}))).await;
        assert_eq!(status, StatusCode::OK, "{operation}: {body}");
        assert_eq!(
            summary(&server, &headers),
            vec![
                row(operation, "started", Value::Null),
                row(operation, "success", json!(1)),
            ],
            "{operation}"
        );
    }

    let (status, headers, body) = call(Method::DELETE, secret, &admin, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let found = summary(&server, &headers);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0].0, "delete_secret");
    assert_eq!(found[0].1, "started");
    assert_eq!(found[1].0, "delete_secret");
    assert_eq!(found[1].1, "success");

    for record in records(&server) {
        assert!(
            !record.to_string().contains(VALUE),
            "a record contains the value: {record}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_location_is_recorded_as_hmac() {
    const TOKEN: &str = "hvs.audit-token";
    let vault = VaultMock::start().await;
    vault.add_token(TOKEN);
    vault.put("secret", "etl/db", json!({"password": "vault-pw"}));
    let server = TestServer::start().await;
    let admin = server.admin_token.clone();
    let admin_call = |method: Method, path: &str, body: Value| {
        let (api, admin, path) = (server.api(), admin.clone(), path.to_owned());
        async move {
            let (status, headers, body) =
                api.request(method, &path, Some(&admin), Some(body)).await;
            assert!(status.is_success(), "{path}: {status} {body}");
            (headers, body)
        }
    };
    admin_call(
        Method::PUT,
        "/v1/projects/ops/secrets/vault-token",
        json!({"value": TOKEN}),
    )
    .await;
    admin_call(
        Method::PUT,
        "/v1/connections/vault",
        json!({"connection": {"type": "hashicorp_vault", "address": vault.url(),
               "auth": {"method": "token", "token": {"project": "ops", "secret": "vault-token"}}}}),
    )
    .await;
    let define = |name: &'static str, path: &'static str| {
        admin_call(
            Method::PUT,
            &format!("/v1/projects/etl/secret-definitions/{name}"),
            json!({"location": {"type": "hashicorp_vault", "mount": "secret", "path": path,
                   "key": "password", "connection": "vault"}}),
        )
    };
    let (defined, _) = define("db", "etl/db").await;
    define("gone", "etl/missing").await;
    let keys_admin = server.token(ACCOUNT, &["keys:admin"], None);
    let hmac_of = |value: &'static str| {
        let (api, token) = (server.api(), keys_admin.clone());
        async move {
            let (status, _, body) = api
                .request(
                    Method::POST,
                    "/v1/admin/audit/hash",
                    Some(&token),
                    Some(json!({"value": value})),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["hmac"].as_str().expect("hmac").to_owned()
        }
    };
    let expected = |hmac: String| json!({"provider": "hashicorp_vault", "location_hmac": hmac});

    // The definition's two records carry the HMAC of the secret's id at
    // the provider, which the hash endpoint computes from the id's text.
    let found = records_of(&server, &request_id(&defined));
    assert_eq!(found.len(), 2, "{found:?}");
    for record in &found {
        assert_eq!(record["details"], expected(hmac_of("secret/etl/db").await));
    }

    let runner = runner_token(&server);
    let resolve = |name: &'static str| {
        let (api, runner) = (server.api(), runner.clone());
        async move {
            api.request(
                Method::GET,
                &format!("/v1/projects/etl/secret-definitions/{name}/value"),
                Some(&runner),
                None,
            )
            .await
        }
    };
    let (status, headers, body) = resolve("db").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["value"], "vault-pw");
    let found = records_of(&server, &request_id(&headers));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["outcome"], "success");
    assert_eq!(
        found[0]["details"],
        expected(hmac_of("secret/etl/db").await)
    );

    // A lookup that fails at the provider names the location it tried.
    let (status, headers, body) = resolve("gone").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let found = records_of(&server, &request_id(&headers));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["outcome"], "not_found");
    assert_eq!(
        found[0]["details"],
        expected(hmac_of("secret/etl/missing").await)
    );

    for record in records(&server) {
        let text = record.to_string();
        assert!(
            !text.contains("etl/db") && !text.contains("vault-pw"),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_command_prints_hmac() {
    let server = TestServer::start().await;
    let token_file = server.dir.path().join("keys-admin.token");
    std::fs::write(&token_file, server.token(ACCOUNT, &["keys:admin"], None)).unwrap();
    let mut command = Command::new(keygate_bin());
    command
        .args([
            "audit",
            "hash",
            "--api",
            &server.api_addr.to_string(),
            "--ca",
        ])
        .arg(server.ca_path())
        .arg("--token-file")
        .arg(&token_file)
        .env_remove("KEYGATE_TOKEN")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());

    // The command runs on a blocking thread so the in-process server keeps serving.
    let output = tokio::task::spawn_blocking(move || {
        let mut child = command.spawn().expect("start keygate audit hash");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"idempotency-key-1\n")
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let expected = server
        .server()
        .state()
        .audit
        .hmac("idempotency-key-1")
        .unwrap();
    assert_eq!(
        text(&output.stdout).trim(),
        expected,
        "the final line break is not hashed"
    );
}

fn run_search(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(keygate_bin())
        .args(["audit", "search", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .output()
        .expect("run keygate audit search")
}

/// Returns the records printed by a search, one JSON object per line.
fn printed_records(output: &Output) -> Vec<Value> {
    text(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a record per line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_command_finds_records() {
    let server = TestServer::start().await;
    put_secret(&server);
    put_definition(&server, "warehouse-def").await;
    let mut resolutions = Vec::new();
    for _ in 0..2 {
        let (status, headers, body) = resolve(&server, Some(&runner_token(&server))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        resolutions.push(request_id(&headers));
    }
    let (status, _, _) = resolve(&server, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let data = &server.config.data_dir;

    // The store opens read-only, so searching works while the server runs.
    let output = run_search(data, &["--operation", "resolve", "--outcome", "success"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let found = printed_records(&output);
    let ids: Vec<&str> = found
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, resolutions);
    assert!(
        text(&output.stderr).starts_with("2 matched, "),
        "{}",
        text(&output.stderr)
    );
    let vault = server.server().state().vault.get().expect("vault is open");
    for (line, record) in text(&output.stdout).lines().zip(&found) {
        let seq = record["seq"].as_u64().unwrap();
        let stored = vault
            .store()
            .get(Space::Audit, &seq_key(seq))
            .unwrap()
            .unwrap();
        assert_eq!(
            line.as_bytes(),
            &stored[..],
            "record {seq} is printed as stored"
        );
    }
    assert_eq!(
        found,
        records_of(&server, &resolutions[0])
            .into_iter()
            .chain(records_of(&server, &resolutions[1]))
            .collect::<Vec<_>>(),
        "the stored records are printed as they are"
    );

    let output = run_search(data, &["--request-id", &resolutions[1]]);
    assert_eq!(printed_records(&output).len(), 1);

    let output = run_search(data, &["--outcome", "denied", "--secret", "warehouse-def"]);
    let denied = printed_records(&output);
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["actor"], "", "the request had no token");
    let output = run_search(
        data,
        &[
            "--outcome",
            "error",
            "--outcome",
            "denied",
            "--secret",
            "warehouse-def",
        ],
    );
    assert_eq!(
        printed_records(&output),
        denied,
        "repeated conditions match any"
    );

    // `--since` includes a record's own time and `--until` excludes it.
    let first_resolution = &found[0];
    let millis = first_resolution["time_ms"].as_u64().unwrap();
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let output = run_search(data, &["--request-id", &resolutions[0], "--since", &at]);
    assert_eq!(printed_records(&output).len(), 1, "--since {at}");
    let output = run_search(data, &["--request-id", &resolutions[0], "--until", &at]);
    assert_eq!(output.status.code(), Some(1), "--until {at}");
    let seq = first_resolution["seq"].as_u64().unwrap().to_string();
    let output = run_search(data, &["--from-seq", &seq, "--to-seq", &seq]);
    assert_eq!(
        printed_records(&output),
        std::slice::from_ref(first_resolution)
    );

    // Definition writes record the hosted secret they point to.
    let output = run_search(
        data,
        &["--detail", "warehouse", "--operation", "put_definition"],
    );
    let outcomes: Vec<Value> = printed_records(&output)
        .iter()
        .map(|record| record["outcome"].clone())
        .collect();
    assert_eq!(outcomes, [json!("started"), json!("success")]);

    let output = run_search(data, &["--operation", "resolve", "--limit", "1"]);
    assert_eq!(output.status.code(), Some(0));
    let first = printed_records(&output);
    assert_eq!(first.len(), 1);
    let next = first[0]["seq"].as_u64().unwrap() + 1;
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!("continue with --from-seq {next}")),
        "{stderr}"
    );
    let output = run_search(
        data,
        &[
            "--operation",
            "resolve",
            "--outcome",
            "success",
            "--from-seq",
            &next.to_string(),
        ],
    );
    let rest = printed_records(&output);
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0]["request_id"], resolutions[1].as_str());

    let output = run_search(data, &["--secret", "no-such-secret"]);
    assert_eq!(output.status.code(), Some(1), "nothing matched");
    assert!(output.stdout.is_empty());
    let output = run_search(data, &["--since", "2100-01-01T00:00:00Z"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    let output = run_search(data, &["--until", "2100-01-01T00:00:00Z"]);
    assert_eq!(printed_records(&output).len(), records(&server).len());

    for (args, expected) in [
        (&["--operation", "read"][..], "expected one of read_value"),
        (&["--since", "yesterday"][..], "not an RFC 3339 time"),
        (
            &[
                "--since",
                "2026-12-05T10:00:00Z",
                "--until",
                "2026-12-05T09:00:00Z",
            ][..],
            "must be before --until",
        ),
        (
            &["--from-seq", "5", "--to-seq", "4"][..],
            "--to-seq 4 is before --from-seq 5",
        ),
        (&["--limit", "0"][..], "--limit"),
    ] {
        let output = run_search(data, args);
        assert_eq!(output.status.code(), Some(64), "{args:?}");
        let stderr = text(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let output = run_search(&server.dir.path().join("no-such-folder"), &[]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));

    // Output that cannot be written is an error, unlike a closed pipe.
    let output = Command::new(keygate_bin())
        .args(["audit", "search", "--data-dir"])
        .arg(data)
        .stdout(std::fs::File::create("/dev/full").expect("open /dev/full"))
        .output()
        .expect("run keygate audit search");
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("writing the records failed"), "{stderr}");
}

/// Starts a new server on the stopped `server`'s data folder.
async fn restart(server: &TestServer) -> keygate_tests::keygate_gateway::server::Server {
    keygate_tests::keygate_gateway::server::Server::start(server.config.clone())
        .await
        .expect("server restarts")
}

fn run_verify(data_dir: &Path, file: Option<&Path>) -> Output {
    let mut command = Command::new(keygate_bin());
    command
        .args(["audit", "verify", "--data-dir"])
        .arg(data_dir);
    if let Some(file) = file {
        command.arg("--file").arg(file);
    }
    command.output().expect("run keygate audit verify")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Opens the stopped server's store, waiting while the last handles of the
/// stopped server are released.
fn open_store(db: &Path) -> RocksStore {
    for _ in 0..100 {
        match RocksStore::open(db) {
            Ok(store) => return store,
            Err(StoreError::Locked { .. }) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("open the store: {e}"),
        }
    }
    panic!("the store in {} stayed locked for 10 s", db.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_command_detects_tampering() {
    let audit_file = tempfile::tempdir().unwrap();
    let file = audit_file.path().join("audit.jsonl");
    let file_for_config = file.clone();
    let mut server =
        TestServer::start_with(move |config| config.vault.audit_file = Some(file_for_config)).await;
    put_secret(&server);
    put_definition(&server, "warehouse-def").await;
    for _ in 0..3 {
        let (status, _, body) = resolve(&server, Some(&runner_token(&server))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let record_count = records(&server).len();
    assert!(record_count >= 5, "{record_count} records");

    // The store opens read-only, so verify works while the server runs.
    let output = run_verify(&server.config.data_dir, Some(&file));
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("the store's audit log is intact"),
        "{stdout}"
    );
    assert!(stdout.contains("the audit file is intact"), "{stdout}");
    assert!(stdout.contains("agrees with the store"), "{stdout}");

    server.shutdown().await;
    let output = run_verify(&server.config.data_dir, None);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains(&format!("{record_count} records")),
        "{}",
        text(&output.stdout)
    );

    // Change the outcome of record 2 and keep its hash.
    {
        let store = open_store(&server.config.db_dir());
        let key = seq_key(2);
        let mut record: Value =
            serde_json::from_slice(&store.get(Space::Audit, &key).unwrap().unwrap()).unwrap();
        record["outcome"] = json!("denied");
        let mut batch = WriteBatch::default();
        batch.put(Space::Audit, key.to_vec(), record.to_string());
        store.write(batch).unwrap();
    }
    let output = run_verify(&server.config.data_dir, None);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stdout));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("record 2 was changed"), "{stderr}");
    assert!(stderr.contains("record 1 is the last good one"), "{stderr}");

    let output = Command::new(keygate_bin())
        .args(["audit", "verify", "--data-dir"])
        .arg(server.dir.path().join("no-such-folder"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_command_detects_file_tampering() {
    let audit_file = tempfile::tempdir().unwrap();
    let file = audit_file.path().join("audit.jsonl");
    let file_for_config = file.clone();
    let mut server =
        TestServer::start_with(move |config| config.vault.audit_file = Some(file_for_config)).await;
    put_secret(&server);
    put_definition(&server, "warehouse-def").await;
    let (status, _, _) = resolve(&server, Some(&runner_token(&server))).await;
    assert_eq!(status, StatusCode::OK);
    server.shutdown().await;

    let lines: Vec<String> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 3, "started, success, resolve: {lines:?}");

    let without_middle = format!("{}\n{}\n", lines[0], lines[2]);
    std::fs::write(&file, without_middle).unwrap();
    let output = run_verify(&server.config.data_dir, Some(&file));
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stdout));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("record 2 is missing"), "{stderr}");

    let without_tail = format!("{}\n{}\n", lines[0], lines[1]);
    std::fs::write(&file, without_tail).unwrap();
    let output = run_verify(&server.config.data_dir, Some(&file));
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stdout));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("the audit file ends at record 2"),
        "the store shows the removed tail: {stderr}"
    );
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_audit_refuses_access() {
    // Every write to /dev/full fails with "no space left on device".
    let server =
        TestServer::start_with(|config| config.vault.audit_file = Some("/dev/full".into())).await;
    let ops = HttpsClient::plain(server.ops_addr);
    let (status, _, body) = ops.send(Method::GET, "/readyz", &[], Bytes::new()).await;
    assert_eq!(status, StatusCode::OK, "ready before any record: {body:?}");

    put_secret(&server);
    let vault = server.server().state().vault.get().unwrap();
    vault
        .put_definition(
            &ProjectRef::new(ACCOUNT, "etl").unwrap(),
            "warehouse-def",
            serde_json::from_value(json!({"type": "hosted", "secret": "warehouse"})).unwrap(),
        )
        .unwrap();

    let (status, _, body) = resolve(&server, Some(&runner_token(&server))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["type"], "urn:keygate:problem:audit-unavailable");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("audit log unavailable"), "{detail}");
    assert!(detail.contains("/dev/full"), "{detail}");
    assert!(detail.contains("the access was refused"), "{detail}");
    assert!(
        !body.to_string().contains(VALUE),
        "the value was sent: {body}"
    );

    // A write is refused before it changes anything.
    let (status, _, body) = server
        .api()
        .request(
            Method::PUT,
            "/v1/projects/etl/secret-definitions/second-def",
            Some(&server.admin_token),
            Some(json!({"location": {"type": "hosted", "secret": "warehouse"}})),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let stored = vault.get_definition(&ProjectRef::new(ACCOUNT, "etl").unwrap(), "second-def");
    assert!(stored.is_err(), "the definition was stored: {stored:?}");

    let (status, _, body) = ops.send(Method::GET, "/readyz", &[], Bytes::new()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = serde_json::from_slice(&body).unwrap();
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("audit log is failing"), "{reason}");
    assert!(reason.contains("/dev/full"), "{reason}");

    let (_, _, metrics) = ops.send(Method::GET, "/metrics", &[], Bytes::new()).await;
    let metrics = String::from_utf8(metrics.to_vec()).unwrap();
    assert!(metrics.contains("keygate_audit_failing 1"), "{metrics}");
    assert!(
        metrics.contains("keygate_audit_failures_total 2"),
        "one resolution, one started write: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_metrics_count_records() {
    let server = TestServer::start().await;
    put_definition(&server, "counted-def").await;
    let ops = HttpsClient::plain(server.ops_addr);
    let (_, _, metrics) = ops.send(Method::GET, "/metrics", &[], Bytes::new()).await;
    let metrics = String::from_utf8(metrics.to_vec()).unwrap();
    assert!(
        metrics.contains("keygate_audit_records_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("keygate_audit_failures_total 0"),
        "{metrics}"
    );
    assert!(metrics.contains("keygate_audit_failing 0"), "{metrics}");
    assert!(
        metrics.contains("keygate_audit_batch_size_count "),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_resolutions_get_one_chained_record_each() {
    let server = TestServer::start().await;
    put_secret(&server);
    put_definition(&server, "warehouse-def").await;
    let token = runner_token(&server);
    let before = records(&server).len();

    let resolutions: Vec<_> = (0..48)
        .map(|_| {
            let api = server.api();
            let token = token.clone();
            tokio::spawn(async move {
                api.request(
                    Method::GET,
                    "/v1/projects/etl/secret-definitions/warehouse-def/value",
                    Some(&token),
                    None,
                )
                .await
            })
        })
        .collect();
    let mut ids = Vec::new();
    for resolution in resolutions {
        let (status, headers, body) = resolution.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        ids.push(request_id(&headers));
    }

    let all = records(&server);
    assert_eq!(all.len(), before + ids.len());
    for id in &ids {
        assert_eq!(records_of(&server, id).len(), 1, "request {id}");
    }
    for (index, record) in all.iter().enumerate() {
        assert_eq!(record["seq"], index as u64 + 1);
        if index > 0 {
            assert_eq!(
                record["prev_hash"],
                all[index - 1]["hash"],
                "record {}",
                index + 1
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_changes_are_recorded() {
    let server = TestServer::start().await;
    let api = server.api();
    let spec = json!({"connection": {"type": "aws_secrets_manager", "region": "eu-west-1",
                                      "endpoint": "http://127.0.0.1:9"}});

    let (status, headers, body) = api
        .request(
            Method::PUT,
            "/v1/connections/aws-prod",
            Some(&server.admin_token),
            Some(spec.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let put = records_of(&server, &request_id(&headers));
    let outcomes: Vec<&Value> = put.iter().map(|record| &record["outcome"]).collect();
    assert_eq!(outcomes, ["started", "success"]);
    for record in &put {
        assert_eq!(record["operation"], "put_connection");
        assert_eq!(record["secret"], "aws-prod");
        assert_eq!(record["project"], "");
        assert_eq!(record["account"], ACCOUNT);
    }

    // Connections belong to the whole account: a token restricted to
    // projects may not manage them, even with the admin scope, and a token
    // without that scope may not either.
    let restricted_admin = server.token(ACCOUNT, &["secrets:admin"], Some(&["etl"]));
    for token in [restricted_admin, runner_token(&server)] {
        let (status, headers, body) = api
            .request(
                Method::PUT,
                "/v1/connections/aws-prod",
                Some(&token),
                Some(spec.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        let denied = records_of(&server, &request_id(&headers));
        assert_eq!(denied.len(), 1, "{denied:?}");
        assert_eq!(denied[0]["operation"], "put_connection");
        assert_eq!(denied[0]["outcome"], "denied");
    }

    let (status, headers, body) = api
        .request(
            Method::DELETE,
            "/v1/connections/aws-prod",
            Some(&server.admin_token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let deleted = records_of(&server, &request_id(&headers));
    let outcomes: Vec<&Value> = deleted.iter().map(|record| &record["outcome"]).collect();
    assert_eq!(outcomes, ["started", "success"]);
    assert_eq!(deleted[1]["operation"], "delete_connection");

    let (status, headers, _) = api
        .request(
            Method::DELETE,
            "/v1/connections/aws-prod",
            Some(&server.admin_token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let missing = records_of(&server, &request_id(&headers));
    let outcomes: Vec<&Value> = missing.iter().map(|record| &record["outcome"]).collect();
    assert_eq!(outcomes, ["started", "not_found"]);
}
