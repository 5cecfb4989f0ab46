//! The API subcommands of the `keygate` binary (`agents`, `tasks`, `secrets`,
//! `definitions`) run against a real server: output, pagination and exit codes.

use std::process::{Output, Stdio};

use keygate_tests::process::keygate_bin;
use keygate_tests::{TestServer, ACCOUNT};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// Runs `keygate ARGS` against `server` with `token` in `KEYGATE_TOKEN`,
/// feeding `stdin` to it.
async fn keygate(server: &TestServer, token: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = tokio::process::Command::new(keygate_bin())
        .args(args)
        .arg("--api")
        .arg(server.api_addr.to_string())
        .arg("--ca")
        .arg(server.ca_path())
        .env("KEYGATE_TOKEN", token)
        .env_remove("KEYGATE_PROJECT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start keygate");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    child.wait_with_output().await.unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        stdout(output),
        stderr(output)
    )
}

fn json_output(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", describe(output)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_put_get_and_versions() {
    let server = TestServer::start().await;
    let token = &server.admin_token;
    let name = "db/pass word";

    let out = keygate(
        &server,
        token,
        &["secrets", "put", name, "--project", "etl"],
        b"first value\n",
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        !stdout(&out).contains("first value"),
        "put never prints the value"
    );
    let out = keygate(
        &server,
        token,
        &["secrets", "put", name, "--project", "etl", "--cas", "1"],
        b"second value",
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    let out = keygate(
        &server,
        token,
        &["secrets", "get", name, "--project", "etl"],
        b"",
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        stdout(&out),
        "second value",
        "a pipe receives the value unchanged"
    );
    let out = keygate(
        &server,
        token,
        &["secrets", "get", name, "--project", "etl", "--version", "1"],
        b"",
    )
    .await;
    assert_eq!(
        stdout(&out),
        "first value",
        "the final line break of standard input is not stored"
    );

    let out = keygate(
        &server,
        token,
        &[
            "secrets",
            "delete",
            name,
            "--project",
            "etl",
            "--versions",
            "1",
        ],
        b"",
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let out = keygate(
        &server,
        token,
        &["secrets", "versions", name, "--project", "etl"],
        b"",
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let lines: Vec<Vec<String>> = stdout(&out)
        .lines()
        .map(|line| line.split_whitespace().map(str::to_owned).collect())
        .collect();
    assert_eq!(lines.len(), 3, "{}", describe(&out));
    assert_eq!(lines[0][..2], ["VERSION", "STATE"], "{}", describe(&out));
    assert_eq!(lines[1][..2], ["2", "current"], "{}", describe(&out));
    assert_eq!(lines[2][..2], ["1", "deleted"], "{}", describe(&out));

    let out = keygate(
        &server,
        token,
        &[
            "secrets",
            "show",
            name,
            "--project",
            "etl",
            "--output",
            "json",
        ],
        b"",
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let metadata = json_output(&out);
    assert_eq!(metadata["name"], name);
    assert_eq!(metadata["current_version"], 2);
    assert!(
        metadata["versions"]["1"]["deleted_at_ms"].is_u64(),
        "{metadata}"
    );
    assert!(
        !stdout(&out).contains("second value"),
        "show never prints the value"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_exit_codes() {
    let server = TestServer::start().await;
    let token = &server.admin_token;
    let put_new = [
        "secrets",
        "put",
        "api-key",
        "--project",
        "etl",
        "--cas",
        "0",
    ];
    let out = keygate(&server, token, &put_new, b"v").await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    let out = keygate(&server, token, &put_new, b"v").await;
    assert_eq!(
        out.status.code(),
        Some(4),
        "cas conflict: {}",
        describe(&out)
    );
    assert!(stderr(&out).starts_with("error: "), "{}", describe(&out));
    assert!(
        !stderr(&out).contains("urn:keygate:problem"),
        "only the problem's detail is printed: {}",
        describe(&out)
    );

    let out = keygate(
        &server,
        token,
        &["secrets", "get", "missing", "--project", "etl"],
        b"",
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "not found: {}", describe(&out));

    let out = keygate(
        &server,
        "not-a-token",
        &["secrets", "get", "api-key", "--project", "etl"],
        b"",
    )
    .await;
    assert_eq!(out.status.code(), Some(5), "bad token: {}", describe(&out));

    let read_only = server.token(ACCOUNT, &["secrets:read"], None);
    let out = keygate(
        &server,
        &read_only,
        &["secrets", "list", "--project", "etl"],
        b"",
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(5),
        "missing scope: {}",
        describe(&out)
    );

    let out = keygate(&server, token, &["secrets", "get", "api-key"], b"").await;
    assert_eq!(
        out.status.code(),
        Some(64),
        "missing --project: {}",
        describe(&out)
    );
    let out = keygate(
        &server,
        token,
        &[
            "secrets",
            "destroy",
            "api-key",
            "--project",
            "etl",
            "--versions",
            "1,x",
        ],
        b"",
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(64),
        "bad --versions: {}",
        describe(&out)
    );
    assert!(stderr(&out).contains("\"x\""), "{}", describe(&out));
    let out = keygate(&server, token, &["secrets", "frobnicate"], b"").await;
    assert_eq!(
        out.status.code(),
        Some(64),
        "unknown subcommand: {}",
        describe(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_list_across_pages() {
    let server = TestServer::start().await;
    let token = &server.admin_token;
    for n in 0..5 {
        let name = format!("s{n}");
        let out = keygate(
            &server,
            token,
            &["secrets", "put", &name, "--project", "etl"],
            b"v",
        )
        .await;
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    }

    let out = keygate(
        &server,
        token,
        &["secrets", "list", "--project", "etl"],
        b"",
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let names: Vec<String> = stdout(&out)
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().next().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["s0", "s1", "s2", "s3", "s4"], "{}", describe(&out));

    let out = keygate(
        &server,
        token,
        &[
            "secrets",
            "list",
            "--project",
            "etl",
            "--limit",
            "2",
            "--output",
            "json",
        ],
        b"",
    )
    .await;
    let page = json_output(&out);
    assert_eq!(page["secrets"].as_array().unwrap().len(), 2, "{page}");
    assert_eq!(page["next_after"], "s1", "{page}");

    let out = keygate(
        &server,
        token,
        &[
            "secrets",
            "list",
            "--project",
            "etl",
            "--limit",
            "2",
            "--after",
            "s3",
        ],
        b"",
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(stdout(&out).lines().count(), 2, "{}", describe(&out));
    assert!(
        stdout(&out).lines().nth(1).unwrap().starts_with("s4 "),
        "{}",
        describe(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_put_and_resolve() {
    let server = TestServer::start().await;
    let token = &server.admin_token;
    let out = keygate(
        &server,
        token,
        &["secrets", "put", "warehouse", "--project", "etl"],
        br#"{"user": "etl", "password": "hunter2"}"#,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    let out = keygate(
        &server,
        token,
        &[
            "definitions",
            "put",
            "warehouse-password",
            "--project",
            "etl",
            "--hosted",
            "warehouse",
            "--json-key",
            "password",
        ],
        b"",
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let out = keygate(
        &server,
        token,
        &["definitions", "list", "--project", "etl"],
        b"",
    )
    .await;
    assert!(
        stdout(&out).contains("warehouse-password  hosted"),
        "{}",
        describe(&out)
    );

    let out = keygate(
        &server,
        token,
        &[
            "definitions",
            "resolve",
            "warehouse-password",
            "--project",
            "etl",
        ],
        b"",
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(stdout(&out), "hunter2");

    let out = keygate(
        &server,
        token,
        &[
            "definitions",
            "put",
            "bad",
            "--project",
            "etl",
            "--location",
            r#"{"type": "nowhere"}"#,
        ],
        b"",
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(4),
        "rejected location: {}",
        describe(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_create_and_list() {
    let server = TestServer::start().await;
    let token = &server.admin_token;
    let secret_file = server.dir.path().join("agent.secret");
    let secret_path = secret_file.to_str().unwrap();
    let out = keygate(
        &server,
        token,
        &[
            "agents",
            "create",
            "--name",
            "edge-1",
            "--project",
            "etl",
            "--output",
            "json",
            "--client-secret-file",
            secret_path,
        ],
        b"",
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let created = json_output(&out);
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(created.get("client_secret").is_none(), "{created}");
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    assert!(!secret.trim().is_empty());
    assert!(!stdout(&out).contains(secret.trim()));

    let out = keygate(
        &server,
        token,
        &["agents", "create", "--client-secret-file", secret_path],
        b"",
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(64),
        "existing secret file: {}",
        describe(&out)
    );

    let out = keygate(&server, token, &["agents", "list"], b"").await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let rows: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(rows.len(), 2, "{}", describe(&out));
    assert!(rows[0].starts_with("ID"), "{}", describe(&out));
    let cells: Vec<&str> = rows[1].split_whitespace().collect();
    assert_eq!(cells[..4], [id.as_str(), "edge-1", "pending", "etl"]);

    let out = keygate(
        &server,
        token,
        &["agents", "disable", &id, "--output", "json"],
        b"",
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(json_output(&out)["disabled"], true);
    let out = keygate(&server, token, &["agents", "show", "agt_doesnotexist"], b"").await;
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_submit_and_wait() {
    let server = TestServer::start().await;
    let token = &server.admin_token;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 2).await;

    let out = keygate(
        &server,
        token,
        &[
            "tasks",
            "submit",
            &creds.id,
            "--kind",
            "sleep",
            "--payload",
            r#"{"ms": 300}"#,
            "--wait-ms",
            "0",
            "--output",
            "json",
        ],
        b"",
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let task = json_output(&out);
    let task_id = task["id"].as_str().unwrap().to_owned();

    let out = keygate(
        &server,
        token,
        &["tasks", "wait", &task_id, "--timeout", "30"],
        b"",
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stdout(&out)
            .lines()
            .any(|line| line.split_whitespace().eq(["status", "succeeded"])),
        "{}",
        describe(&out)
    );

    let out = keygate(
        &server,
        token,
        &[
            "tasks",
            "submit",
            &creds.id,
            "--kind",
            "echo",
            "--payload-file",
            "-",
            "--output",
            "json",
        ],
        br#"{"hello": "world"}"#,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(json_output(&out)["result"]["hello"], "world");

    let out = keygate(
        &server,
        token,
        &[
            "tasks",
            "submit",
            &creds.id,
            "--kind",
            "echo",
            "--payload",
            "{not json",
        ],
        b"",
    )
    .await;
    assert_eq!(out.status.code(), Some(64), "{}", describe(&out));
    let out = keygate(&server, token, &["tasks", "get", "tsk_doesnotexist"], b"").await;
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_pause_resume_restart_and_task_cancel() {
    let server = TestServer::start().await;
    let token = &server.admin_token;
    let creds = server.create_agent(ACCOUNT).await;
    let agent = server.start_agent(&creds, 1).await;
    let id = creds.id.as_str();

    let out = keygate(&server, token, &["agents", "pause", id], b"").await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stdout(&out)
            .lines()
            .any(|line| line.split_whitespace().eq(["status", "paused"])),
        "{}",
        describe(&out)
    );

    let submit = [
        "tasks",
        "submit",
        id,
        "--kind",
        "echo",
        "--payload",
        "1",
        "--wait-ms",
        "0",
        "--output",
        "json",
    ];
    let out = keygate(&server, token, &submit, b"").await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let task = json_output(&out);
    assert_eq!(task["status"], "queued");
    let task_id = task["id"].as_str().unwrap().to_owned();

    let out = keygate(
        &server,
        token,
        &["tasks", "cancel", &task_id, "--output", "json"],
        b"",
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(json_output(&out)["status"], "cancelled");
    let out = keygate(&server, token, &["tasks", "cancel", &task_id], b"").await;
    assert_eq!(
        out.status.code(),
        Some(4),
        "cancelling a finished task is refused: {}",
        describe(&out)
    );
    assert!(stderr(&out).contains("already ended"), "{}", describe(&out));

    let out = keygate(
        &server,
        token,
        &["agents", "resume", id, "--output", "json"],
        b"",
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(json_output(&out)["status"], "running");

    let out = keygate(
        &server,
        token,
        &["agents", "restart", id, "--output", "json"],
        b"",
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(json_output(&out)["restart"]["in_flight"], 0);
    let out = keygate(
        &server,
        token,
        &[
            "tasks",
            "submit",
            id,
            "--kind",
            "echo",
            "--payload",
            "2",
            "--output",
            "json",
        ],
        b"",
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "the task waits for the restarted session: {}",
        describe(&out)
    );
    assert_eq!(json_output(&out)["result"], 2);

    let out = keygate(
        &server,
        token,
        &["agents", "pause", "agt_doesnotexist"],
        b"",
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_status_and_rotate() {
    let server = TestServer::start().await;
    let token = server.token(ACCOUNT, &["keys:admin"], None);

    let out = keygate(&server, &token, &["keys", "status"], b"").await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let rows: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert!(rows[0].starts_with("KID"), "{}", describe(&out));
    assert_eq!(rows.len(), 2, "one active key: {}", describe(&out));
    assert!(rows[1].contains("active"), "{}", describe(&out));
    assert!(
        rows[1].split_whitespace().any(|cell| cell.ends_with('Z')),
        "times print as UTC dates: {}",
        describe(&out)
    );

    let out = keygate(
        &server,
        &token,
        &["keys", "rotate", "--output", "json"],
        b"",
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let body = json_output(&out);
    assert_eq!(body["keys"].as_array().unwrap().len(), 2, "{body}");
    let rotated = body["rotated"]["kid"].as_str().unwrap().to_owned();

    let out = keygate(&server, &token, &["keys", "status"], b"").await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let pending = stdout(&out)
        .lines()
        .find(|line| line.starts_with(&rotated))
        .map(str::to_owned);
    assert!(
        pending.as_deref().is_some_and(|l| l.contains("pending")),
        "the new key is pending: {}",
        describe(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_put_list_get_rm() {
    let server = TestServer::start().await;
    let token = &server.admin_token;
    let connection = r#"{"type": "hashicorp_vault", "address": "http://127.0.0.1:9",
        "auth": {"method": "token", "token": {"project": "ops", "secret": "vault-token"}}}"#;
    let out = keygate(
        &server,
        token,
        &[
            "connections",
            "put",
            "onprem",
            "--connection",
            connection,
            "--project",
            "etl",
        ],
        b"",
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stdout(&out).contains("hashicorp_vault"),
        "{}",
        describe(&out)
    );

    let out = keygate(&server, token, &["connections", "list"], b"").await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stdout(&out).contains("onprem  hashicorp_vault  etl"),
        "{}",
        describe(&out)
    );

    let out = keygate(
        &server,
        token,
        &[
            "connections",
            "put",
            "broken",
            "--connection",
            "{\"type\": \"ftp\"}",
        ],
        b"",
    )
    .await;
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));

    let out = keygate(
        &server,
        token,
        &["definitions", "invalidate", "anything", "--project", "etl"],
        b"",
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stdout(&out).contains("dropped 0 cached values"),
        "{}",
        describe(&out)
    );

    let out = keygate(&server, token, &["connections", "rm", "onprem"], b"").await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let out = keygate(&server, token, &["connections", "get", "onprem"], b"").await;
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
}
