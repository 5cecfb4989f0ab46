//! Vault backups: the admin route, `keygate vault backup` online and offline,
//! and `keygate vault restore` into a new data folder that a server then runs on.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use http::{Method, StatusCode};
use keygate_tests::process::{keygate_bin, DevProcess, H2Client};
use keygate_tests::{TestServer, ACCOUNT};
use serde_json::{json, Value};

const PROJECT: &str = "etl";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_route_writes_named_backups() {
    let backups = tempfile::tempdir().unwrap();
    let dir = backups.path().to_owned();
    let server = TestServer::start_with(|c| c.vault.backup_dir = Some(dir)).await;
    let operator = server.token(ACCOUNT, &["keys:admin"], None);
    let api = server.api();
    let post = |token: String, body: Option<Value>| {
        let api = &api;
        async move {
            let (status, _, body) = api
                .request(Method::POST, "/v1/admin/vault/backups", Some(&token), body)
                .await;
            (status, body)
        }
    };

    let (status, body) = post(operator.clone(), Some(json!({"name": "first"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["name"], "first");
    assert!(body["files"].as_u64().unwrap() > 0, "{body}");
    assert!(body["bytes"].as_u64().unwrap() > 0, "{body}");
    let folder = backups.path().join("first");
    assert_eq!(body["path"], json!(folder.display().to_string()));
    assert!(folder.join("keygate-backup.json").is_file());

    let (status, body) = post(operator.clone(), Some(json!({"name": "first"}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["type"], "urn:keygate:problem:backup-exists");

    let (status, body) = post(operator.clone(), Some(json!({"name": "../outside"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("../outside"),
        "{body}"
    );
    assert!(!backups.path().join("../outside").exists());

    let (status, body) = post(operator.clone(), Some(json!({"label": "x"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (status, body) = post(operator.clone(), None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(
        body["name"].as_str().unwrap().starts_with("backup-"),
        "{body}"
    );

    let (status, body) = post(server.admin_token.clone(), Some(json!({"name": "x"}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "without keys:admin: {body}");
    assert!(!backups.path().join("x").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_round_trip_through_the_binary() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    let log = work.path().join("server.log");
    let server = DevProcess::start(&source, &log);
    let token = server.admin_token();
    let client = H2Client::connect(server.api_addr, &server.ca_path())
        .await
        .unwrap();
    put_secret(&client, &token, "warehouse", "plaintext-before-1").await;
    put_secret(&client, &token, "warehouse", "plaintext-before-2").await;
    put_secret(&client, &token, "api-key", "plaintext-before-3").await;

    let api = server.api_addr.to_string();
    let ca = server.ca_path();
    let token_file = source.join("dev-admin.token");
    let online = |name: &str| {
        run(Command::new(keygate_bin())
            .args(["vault", "backup", "--name", name, "--api", &api, "--ca"])
            .arg(&ca)
            .arg("--token-file")
            .arg(&token_file))
    };

    let out = online("first");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains("backup first written"),
        "{}",
        text(&out)
    );
    assert!(stdout(&out).contains("master key"), "{}", text(&out));
    let backup = source.join("backups/first");
    assert!(backup.join("keygate-backup.json").is_file());

    let out = online("first");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("already exists"), "{}", text(&out));

    let out = online("../first");
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));

    let out = run(Command::new(keygate_bin())
        .args([
            "vault",
            "backup",
            "--offline",
            "--name",
            "while-running",
            "--data-dir",
        ])
        .arg(&source));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("without --offline"), "{}", text(&out));

    put_secret(&client, &token, "after-backup", "plaintext-after").await;
    assert!(server.stop().success());

    for file in walk(&backup) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(9).any(|w| w == b"plaintext"),
            "{} holds a plaintext secret value",
            file.display()
        );
    }

    let out = run(Command::new(keygate_bin())
        .args([
            "vault",
            "backup",
            "--offline",
            "--name",
            "offline-1",
            "--data-dir",
        ])
        .arg(&source));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).lines().count() >= 4,
        "one line per step: {}",
        text(&out)
    );
    assert!(
        has_final_files_line(&stdout(&out)),
        "without a terminal, file progress is plain lines: {}",
        text(&out)
    );
    assert!(
        !stdout(&out).contains('\r'),
        "no in-place redraw without a terminal: {}",
        text(&out)
    );
    assert!(source
        .join("backups/offline-1/keygate-backup.json")
        .is_file());

    let target = work.path().join("restored");
    let restore = |data_dir: &Path, key: &Path| {
        run(Command::new(keygate_bin())
            .args(["vault", "restore", "--from"])
            .arg(&backup)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--master-key-file")
            .arg(key))
    };
    let source_key = source.join("keys/master.key");

    let wrong_key = work.path().join("wrong.key");
    std::fs::write(&wrong_key, format!("{}\n", "ab".repeat(32))).unwrap();
    std::fs::set_permissions(&wrong_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let wrong_target = work.path().join("wrong");
    let out = restore(&wrong_target, &wrong_key);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("master key"), "{}", text(&out));
    assert!(!wrong_target.join("db").exists());

    let out = restore(&target, &source_key);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains("restored backup first"),
        "{}",
        text(&out)
    );
    assert!(stdout(&out).lines().count() >= 4, "{}", text(&out));
    assert!(has_final_files_line(&stdout(&out)), "{}", text(&out));

    let out = restore(&target, &source_key);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(stderr(&out).contains("not empty"), "{}", text(&out));

    let out = run(Command::new(keygate_bin())
        .args(["vault", "restore", "--from"])
        .arg(&backup));
    assert_eq!(out.status.code(), Some(64), "no target: {}", text(&out));

    std::fs::create_dir_all(target.join("keys")).unwrap();
    std::fs::copy(&source_key, target.join("keys/master.key")).unwrap();
    std::fs::set_permissions(
        target.join("keys/master.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let restored = DevProcess::start(&target, &work.path().join("restored.log"));
    let token = restored.admin_token();
    let client = H2Client::connect(restored.api_addr, &restored.ca_path())
        .await
        .unwrap();
    assert_eq!(
        read_value(&client, &token, "warehouse", 1).await,
        (StatusCode::OK, json!("plaintext-before-1"))
    );
    assert_eq!(
        read_value(&client, &token, "warehouse", 2).await,
        (StatusCode::OK, json!("plaintext-before-2"))
    );
    assert_eq!(
        read_value(&client, &token, "api-key", 1).await,
        (StatusCode::OK, json!("plaintext-before-3"))
    );
    let (status, _) = read_value(&client, &token, "after-backup", 1).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "written after the backup");
    assert!(restored.stop().success());
}

async fn put_secret(client: &H2Client, token: &str, name: &str, value: &str) {
    let (status, body) = client
        .request(
            Method::PUT,
            &format!("/v1/projects/{PROJECT}/secrets/{name}"),
            token,
            Some(&json!({ "value": value })),
        )
        .await
        .unwrap();
    assert!(status.is_success(), "PUT {name}: {status} {body}");
}

async fn read_value(
    client: &H2Client,
    token: &str,
    name: &str,
    version: u32,
) -> (StatusCode, Value) {
    let (status, body) = client
        .request(
            Method::GET,
            &format!("/v1/projects/{PROJECT}/secrets/{name}/value?version={version}"),
            token,
            None,
        )
        .await
        .unwrap();
    (status, body["value"].clone())
}

fn run(command: &mut Command) -> Output {
    command.output().expect("run keygate")
}

/// Returns whether a progress line reports all files done, as in `7 of 7 files, 1.2 MiB`.
fn has_final_files_line(stdout: &str) -> bool {
    stdout.lines().any(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words.len() >= 4 && words[1] == "of" && words[0] == words[2] && words[3] == "files,"
    })
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        stdout(out),
        stderr(out)
    )
}

fn walk(folder: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(folder).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
