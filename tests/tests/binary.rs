//! The `keygate` binary as a newcomer uses it: `keygate dev`, `certs agent`,
//! `agent`, `token issue`, `serve` with a bad config; and a scan of every log
//! line of the run for the secrets and tokens it handled.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use keygate_tests::HttpsClient;
use serde_json::json;

/// Returns the `keygate` binary next to this test's deps folder (built by `scripts/test.sh`), or `KEYGATE_BIN`.
fn keygate_bin() -> PathBuf {
    if let Ok(path) = std::env::var("KEYGATE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("keygate");
    assert!(
        bin.exists(),
        "{} is missing; build it with `cargo build --release --bin keygate` (scripts/test.sh does) or set KEYGATE_BIN",
        bin.display()
    );
    bin
}

fn stop(child: &mut Child) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not exit within 20 s of SIGTERM", child.id());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads `keygate dev` output until the three listener lines appear.
fn read_addresses(child: &mut Child) -> (SocketAddr, SocketAddr, SocketAddr) {
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let (mut agent, mut api, mut ops) = (None, None, None);
    let find = |line: &str, label: &str, scheme: &str| -> Option<SocketAddr> {
        let rest = line.trim().strip_prefix(label)?.trim();
        rest.strip_prefix(scheme)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    while agent.is_none() || api.is_none() || ops.is_none() {
        let line = lines
            .next()
            .expect("keygate dev ended before printing its addresses")
            .unwrap();
        agent = agent.or(find(&line, "agent listener", "https://"));
        api = api.or(find(&line, "API listener", "https://"));
        ops = ops.or(find(&line, "ops listener", "http://"));
    }
    std::thread::spawn(move || for _ in lines {});
    (agent.unwrap(), api.unwrap(), ops.unwrap())
}

fn log_file(dir: &Path, name: &str) -> (PathBuf, std::fs::File) {
    let path = dir.join(name);
    let file = std::fs::File::create(&path).unwrap();
    (path, file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newcomer_walkthrough_and_log_scan() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("keygate-data");
    let bin = keygate_bin();

    let (server_log, server_log_file) = log_file(work.path(), "server.log");
    let mut server = Command::new(&bin)
        .args(["dev", "--data-dir"])
        .arg(&data)
        .args([
            "--agent-addr",
            "127.0.0.1:0",
            "--api-addr",
            "127.0.0.1:0",
            "--ops-addr",
            "127.0.0.1:0",
        ])
        .args(["--log-filter", "debug", "--log-format", "json"])
        .stdout(Stdio::piped())
        .stderr(server_log_file)
        .spawn()
        .unwrap();
    let (agent_addr, api_addr, ops_addr) = read_addresses(&mut server);

    let mode = |p: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(&data.join("keys/master.key")), 0o600);
    assert!(
        !data.join("keys/jwt-signing.pem").exists(),
        "the token signing keys live sealed in the vault, not in a plain file"
    );
    assert_eq!(mode(&data.join("dev-admin.token")), 0o600);

    let admin = std::fs::read_to_string(data.join("dev-admin.token")).unwrap();
    let api = HttpsClient::new(api_addr, &data.join("tls/ca.pem"), None);
    let (status, _, created) = api
        .request(
            Method::POST,
            "/v1/agents",
            Some(&admin),
            Some(json!({"name": "walkthrough"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let agent_id = created["client_id"].as_str().unwrap().to_owned();
    let client_secret = created["client_secret"].as_str().unwrap().to_owned();

    let certs = Command::new(&bin)
        .args(["certs", "agent", "--data-dir"])
        .arg(&data)
        .args(["--agent-id", &agent_id])
        .output()
        .unwrap();
    assert!(
        certs.status.success(),
        "{}",
        String::from_utf8_lossy(&certs.stderr)
    );

    let (agent_log, agent_log_file) = log_file(work.path(), "agent.log");
    let mut agent = Command::new(&bin)
        .args([
            "agent",
            "--gateway",
            &agent_addr.to_string(),
            "--client-id",
            &agent_id,
            "--credentials-dir",
        ])
        .arg(data.join("agents").join(&agent_id))
        .args(["--log-filter", "debug"])
        .env("KEYGATE_AGENT_CLIENT_SECRET", &client_secret)
        .stdout(Stdio::null())
        .stderr(agent_log_file)
        .spawn()
        .unwrap();

    let task_path = format!("/v1/agents/{agent_id}/tasks");
    let mut last = (StatusCode::IM_A_TEAPOT, json!(null));
    for _ in 0..100 {
        let (status, _, body) = api
            .request(
                Method::POST,
                &task_path,
                Some(&admin),
                Some(json!({"kind": "echo", "payload": {"ping": "pong"}})),
            )
            .await;
        last = (status, body);
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last.0, StatusCode::OK, "{}", last.1);
    assert_eq!(last.1["result"], json!({"ping": "pong"}));

    // A task submitted with a W3C traceparent: every log line about it, on
    // the server and on the agent, names its trace.
    let trace_id = "5c0a2b6e9f3d4a1b8c7d6e5f4a3b2c1d";
    let (status, _, traced) = api
        .send(
            Method::POST,
            &task_path,
            &[
                (http::header::CONTENT_TYPE, "application/json".to_owned()),
                (
                    http::header::AUTHORIZATION,
                    format!("Bearer {}", admin.trim()),
                ),
                (
                    http::HeaderName::from_static("traceparent"),
                    format!("00-{trace_id}-1a2b3c4d5e6f7a8b-01"),
                ),
            ],
            bytes::Bytes::from_static(b"{\"kind\": \"echo\", \"payload\": 1}"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{traced:?}");
    let traced: serde_json::Value = serde_json::from_slice(&traced).unwrap();
    let traced_task = traced["id"].as_str().unwrap().to_owned();

    let secret_value = format!(
        "walkthrough-secret-{}",
        keygate_gateway::directory::random_hex(8)
    );
    let (status, _, body) = api
        .request(
            Method::PUT,
            "/v1/projects/etl/secrets/db-password",
            Some(&admin),
            Some(json!({"value": secret_value})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _, body) = api
        .request(
            Method::PUT,
            "/v1/projects/etl/secret-definitions/db-password",
            Some(&admin),
            Some(json!({"location": {"type": "hosted", "secret": "db-password"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let issued = Command::new(&bin)
        .args(["token", "issue", "--data-dir"])
        .arg(&data)
        .args([
            "--subject",
            "runner-1",
            "--account",
            "dev",
            "--scope",
            "secrets:read",
            "--project",
            "etl",
            "--lifetime-secs",
            "600",
        ])
        .output()
        .unwrap();
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let runner = String::from_utf8(issued.stdout).unwrap().trim().to_owned();
    let (status, _, body) = api
        .request(
            Method::GET,
            "/v1/projects/etl/secret-definitions/db-password/value",
            Some(&runner),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["value"], secret_value.as_str());

    let key_args = |command: &str| {
        let mut cmd = Command::new(&bin);
        cmd.args(["keys", command, "--api", &api_addr.to_string()])
            .arg("--ca")
            .arg(data.join("tls/ca.pem"))
            .arg("--token-file")
            .arg(data.join("dev-admin.token"))
            .args(["--output", "json"]);
        cmd.output().unwrap()
    };
    let rotated = key_args("rotate");
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    let status = key_args("status");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(listed["keys"].as_array().unwrap().len(), 2, "{listed}");

    let ops = HttpsClient::plain(ops_addr);
    let (status, _, _) = ops
        .send(Method::GET, "/readyz", &[], bytes::Bytes::new())
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, _, body) = ops
        .send(Method::GET, "/log-filter", &[], bytes::Bytes::new())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        String::from_utf8_lossy(&body).contains("\"debug\""),
        "{body:?}"
    );
    let new_filter = bytes::Bytes::from_static(b"info,keygate_gateway=debug");
    let (status, _, _) = ops.send(Method::PUT, "/log-filter", &[], new_filter).await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, body) = ops
        .send(Method::GET, "/log-filter", &[], bytes::Bytes::new())
        .await;
    assert!(
        String::from_utf8_lossy(&body).contains("info,keygate_gateway=debug"),
        "{body:?}"
    );
    let bad_filter = bytes::Bytes::from_static(b"info,[bad");
    let (status, _, body) = ops.send(Method::PUT, "/log-filter", &[], bad_filter).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}");

    assert!(stop(&mut agent).success(), "the agent exits 0 on SIGTERM");
    assert!(stop(&mut server).success(), "the server exits 0 on SIGTERM");

    let logs = std::fs::read_to_string(&server_log).unwrap()
        + &std::fs::read_to_string(&agent_log).unwrap();
    assert!(
        logs.contains(&agent_id),
        "control: the logs name the agent id, so the scan reads the right text"
    );
    let opened = logs
        .lines()
        .find(|line| line.contains("agent session open"))
        .expect("the server logged the session");
    assert!(
        opened.contains(r#""transport":"upgrade""#),
        "the reference agent's session runs on an upgraded connection: {opened}"
    );
    assert!(
        logs.contains("agent session closed by the agent"),
        "a stopped agent ends its session cleanly"
    );
    let agent_lines = std::fs::read_to_string(&agent_log).unwrap();
    assert!(
        agent_lines.lines().any(|l| l.contains(&traced_task)),
        "control: the agent logged the traced task"
    );
    let task_lines: Vec<&str> = logs.lines().filter(|l| l.contains(&traced_task)).collect();
    assert!(
        task_lines.len() >= 3,
        "control: the task's log lines: {task_lines:?}"
    );
    for line in task_lines {
        assert!(
            line.contains(trace_id),
            "a log line of task {traced_task} lacks its trace id: {line}"
        );
    }
    for (what, needle) in [
        ("secret value", secret_value.as_str()),
        ("client secret", client_secret.as_str()),
        ("admin token", admin.trim()),
        ("runner token", runner.as_str()),
        ("any JWT", "eyJ"),
    ] {
        assert!(!logs.contains(needle), "the logs contain the {what}");
    }
}

#[test]
fn serve_with_bad_config_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keygate.toml");
    std::fs::write(&config, "[gateway]\nheartbeat_interval_ms = 5\n").unwrap();
    let out = Command::new(keygate_bin())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("gateway.heartbeat_interval_ms"), "{stderr}");
    assert!(stderr.contains("5"), "{stderr}");

    std::fs::write(&config, "[listen]\napi = 8443\n").unwrap();
    let out = Command::new(keygate_bin())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("api"));
}

#[test]
fn usage_errors_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(keygate_bin())
        .args([
            "token",
            "issue",
            "--subject",
            "x",
            "--account",
            "dev",
            "--scope",
            "secrets:write",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("secrets:write"));

    let out = Command::new(keygate_bin())
        .args(["dev", "--api-addr", "nowhere"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn config_check_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        "[gateway]\nheartbeat_interval_ms = 5\n[http]\nmax_body_bytes = 1\n",
    )
    .unwrap();
    let out = Command::new(keygate_bin())
        .args(["config", "check"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("gateway.heartbeat_interval_ms"), "{stderr}");
    assert!(stderr.contains("http.max_body_bytes"), "{stderr}");
    assert!(stderr.contains("2 problem(s)"), "{stderr}");

    let example = Command::new(keygate_bin())
        .args(["config", "example"])
        .output()
        .unwrap();
    assert!(example.status.success());
    std::fs::write(&config, &example.stdout).unwrap();
    let out = Command::new(keygate_bin())
        .args(["config", "check"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = Command::new(keygate_bin())
        .args(["config", "check"])
        .arg(&config)
        .env("KEYGATE_GATEWAY_MAX_WAIT_MS", "999999999")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "variables are checked too");
    assert!(String::from_utf8_lossy(&out.stderr).contains("gateway.max_wait_ms"));
}
