//! The master key's sources and the sealed vault, end to end with the
//! `keygate` binary. The sources are a file, an environment variable, and a
//! key wrapped by AWS KMS, with moto's server as the KMS. A server starts
//! sealed and unseals without a restart, and `keygate vault rotate-master`
//! moves a store to a new key.
//!
//! Every server runs as a child process with only the variables the test
//! gives it, so tests can use different variables at the same time.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use keygate_tests::moto::{self, Moto, Relay};
use keygate_tests::serve_process::{run_keygate, ServeProcess};
use keygate_tests::HttpsClient;
use ring::rand::SecureRandom;
use serde_json::{json, Value};

const ACCOUNT: &str = "acme";
/// The variable of the `env` source in these tests.
const KEY_VARIABLE: &str = "KG_TEST_MASTER_KEY";
const SECRET_VALUE: &str = "hunter2-master-key-test";

/// A data folder made by `keygate init` and a configuration file for it.
struct Install {
    _work: tempfile::TempDir,
    work: PathBuf,
    data: PathBuf,
    config: PathBuf,
}

impl Install {
    fn new() -> Install {
        let work = tempfile::tempdir().unwrap();
        let data = work.path().join("data");
        let output = run_keygate(&["init", "--data-dir", &data.display().to_string()], &[]);
        assert!(output.status.success(), "keygate init: {output:?}");
        Install {
            work: work.path().to_owned(),
            config: work.path().join("keygate.toml"),
            data,
            _work: work,
        }
    }

    /// Writes the configuration: loopback listeners on free ports and `vault` as the vault sections.
    fn configure(&self, vault: &str) {
        let text = format!(
            "data_dir = \"{}\"\n\n[listen]\nagent = \"127.0.0.1:0\"\napi = \"127.0.0.1:0\"\nops = \"127.0.0.1:0\"\n\n[gateway]\nshutdown_grace_ms = 2000\n\n{vault}\n",
            self.data.display()
        );
        std::fs::write(&self.config, text).unwrap();
    }

    fn config_arg(&self) -> String {
        self.config.display().to_string()
    }

    fn ca(&self) -> PathBuf {
        self.data.join("tls/ca.pem")
    }

    fn serve(&self, env: &[(String, String)], log_name: &str) -> ServeProcess {
        ServeProcess::start(&self.config, env, &self.work.join(log_name))
    }

    /// Signs an admin token with `keygate token issue`, which reads the
    /// signing keys through the configured master-key source.
    fn admin_token(&self, env: &[(String, String)]) -> String {
        let output = run_keygate(
            &[
                "token",
                "issue",
                "--config",
                &self.config_arg(),
                "--subject",
                "master-key-test",
                "--account",
                ACCOUNT,
                "--scope",
                "agents:admin,tasks:write,secrets:admin,secrets:read",
                "--lifetime-secs",
                "3600",
            ],
            env,
        );
        assert!(
            output.status.success(),
            "keygate token issue: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }
}

fn new_hex_key() -> String {
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes).unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn env_with_key(key: &str) -> Vec<(String, String)> {
    vec![(KEY_VARIABLE.to_owned(), key.to_owned())]
}

fn env_vault(extra: &str) -> String {
    format!("[vault]\nmaster_key_source = \"env\"\nmaster_key_env = \"{KEY_VARIABLE}\"\n{extra}")
}

async fn readyz(server: &ServeProcess) -> (StatusCode, Value) {
    let (status, _, body) = HttpsClient::plain(server.ops_addr)
        .request(Method::GET, "/readyz", None, None)
        .await;
    (status, body)
}

/// Polls `/readyz` until it returns 200, for at most `limit`.
async fn wait_until_ready(server: &ServeProcess, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let (status, body) = readyz(server).await;
        if status == StatusCode::OK {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not ready after {limit:?}: {body}\nlog:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn sealed_gauge(server: &ServeProcess) -> String {
    let (status, _, body) = HttpsClient::plain(server.ops_addr)
        .request(Method::GET, "/metrics", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    body.as_str()
        .unwrap_or_default()
        .lines()
        .find(|line| line.starts_with("keygate_vault_sealed "))
        .unwrap_or("keygate_vault_sealed is missing")
        .to_owned()
}

/// Asserts that the vault is sealed and `/readyz` names `cause`.
async fn assert_sealed(server: &ServeProcess, cause: &str) -> String {
    let (status, body) = readyz(server).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let reason = body["reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.starts_with("vault is sealed: "), "{reason}");
    assert!(reason.contains(cause), "expected {cause:?} in {reason:?}");
    assert_eq!(sealed_gauge(server).await, "keygate_vault_sealed 1");
    reason
}

/// Stores a secret and a definition that points at it.
async fn store_secret(server: &ServeProcess, ca: &Path, token: &str) {
    let api = HttpsClient::new(server.api_addr, ca, None);
    let (status, _, body) = api
        .request(
            Method::PUT,
            "/v1/projects/etl/secrets/warehouse",
            Some(token),
            Some(json!({ "value": SECRET_VALUE })),
        )
        .await;
    assert!(status.is_success(), "put secret: {status} {body}");
    let (status, _, body) = api
        .request(
            Method::PUT,
            "/v1/projects/etl/secret-definitions/warehouse-password",
            Some(token),
            Some(json!({"location": {"type": "hosted", "secret": "warehouse"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "put definition: {body}");
}

/// Resolves the definition [`store_secret`] wrote.
async fn resolve_secret(server: &ServeProcess, ca: &Path, token: &str) -> (StatusCode, Value) {
    let (status, _, body) = HttpsClient::new(server.api_addr, ca, None)
        .request(
            Method::GET,
            "/v1/projects/etl/secret-definitions/warehouse-password/value",
            Some(token),
            None,
        )
        .await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_source_unseals_and_serves_secrets() {
    let install = Install::new();
    install.configure(&env_vault(""));
    let key = new_hex_key();
    let env = env_with_key(&key);

    let server = install.serve(&env, "server.log");
    wait_until_ready(&server, Duration::from_secs(10)).await;
    assert_eq!(sealed_gauge(&server).await, "keygate_vault_sealed 0");
    let token = install.admin_token(&env);
    store_secret(&server, &install.ca(), &token).await;
    let (status, body) = resolve_secret(&server, &install.ca(), &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["value"], SECRET_VALUE);

    let log = server.log();
    assert!(server.stop().success());
    assert!(!log.contains(&key), "the log shows the master key");
    assert!(
        log.contains("environment variable KG_TEST_MASTER_KEY"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_source_missing_or_invalid_starts_sealed() {
    let install = Install::new();
    install.configure(&env_vault(""));

    let server = install.serve(&[], "missing.log");
    assert_sealed(
        &server,
        "the environment variable KG_TEST_MASTER_KEY is not set",
    )
    .await;
    let (status, _, _) = HttpsClient::plain(server.ops_addr)
        .request(Method::GET, "/healthz", None, None)
        .await;
    assert_eq!(status, StatusCode::OK, "a sealed server is alive");
    assert!(server.stop().success());

    let invalid = "not-a-master-key-0123";
    let server = install.serve(&env_with_key(invalid), "invalid.log");
    assert_sealed(
        &server,
        "the environment variable KG_TEST_MASTER_KEY does not hold a master key: expected 64 hexadecimal characters, found 21 bytes",
    )
    .await;
    let log = server.log();
    assert!(server.stop().success());
    assert!(!log.contains(invalid), "the log shows the variable's value");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_source_group_readable_sealed_until_fixed() {
    use std::os::unix::fs::PermissionsExt;

    let install = Install::new();
    install.configure("[vault]\nmaster_key_source = \"file\"\n");
    let key_file = install.data.join("keys/master.key");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o640)).unwrap();

    let server = install.serve(&[], "server.log");
    assert_sealed(&server, "mode 0640 gives the group or others access").await;
    assert_sealed(&server, "chmod 600").await;

    // The retry reads the file again, so fixing its mode unseals the vault
    // without a restart.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    wait_until_ready(&server, Duration::from_secs(60)).await;
    assert_eq!(sealed_gauge(&server).await, "keygate_vault_sealed 0");
    let log = server.log();
    assert!(server.stop().success());
    assert!(log.contains("\"message\":\"vault unsealed\""), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_stays_sealed_and_store_unchanged() {
    let install = Install::new();
    install.configure(&env_vault(""));
    let key = new_hex_key();
    let server = install.serve(&env_with_key(&key), "first.log");
    wait_until_ready(&server, Duration::from_secs(10)).await;
    assert!(server.stop().success());

    let server = install.serve(&env_with_key(&new_hex_key()), "wrong.log");
    assert_sealed(&server, "is not the key this store was created with").await;
    let log = server.log();
    assert!(server.stop().success());
    assert!(log.contains("wrong master key"), "{log}");

    // The wrong key did not replace the store's check record.
    let server = install.serve(&env_with_key(&key), "again.log");
    wait_until_ready(&server, Duration::from_secs(10)).await;
    assert!(server.stop().success());
}

/// Returns the `[vault]` sections of the `aws_kms` source.
fn kms_vault(endpoint: &str, key_id: &str, extra: &str) -> String {
    format!(
        "[vault]\nmaster_key_source = \"aws_kms\"\n\n[vault.aws_kms]\nendpoint = \"{endpoint}\"\nregion = \"{}\"\nkey_id = \"{key_id}\"\ntimeout_ms = 3000\n{extra}",
        moto::REGION
    )
}

fn wrap_key(install: &Install, extra_args: &[&str]) -> String {
    let config = install.config_arg();
    let mut args = vec!["vault", "wrap-key", "--config", config.as_str()];
    args.extend_from_slice(extra_args);
    let output = run_keygate(&args, &moto::aws_env());
    assert!(
        output.status.success(),
        "keygate vault wrap-key: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_source_over_tls_against_moto() {
    let install = Install::new();
    let moto = Moto::start_tls(
        &install.data.join("tls/server.pem"),
        &install.data.join("tls/server-key.pem"),
    );
    let key_id = moto.create_key(Some(&install.ca())).await;
    let ca_line = format!("ca_file = \"{}\"\n", install.ca().display());
    install.configure(&kms_vault(&moto.endpoint(), &key_id, &ca_line));

    let printed = wrap_key(&install, &[]);
    let wrapped = install.data.join("keys/master.key.kms");
    assert!(
        printed.contains(&wrapped.display().to_string()),
        "{printed}"
    );
    assert!(printed.contains(&key_id), "{printed}");
    let refused = run_keygate(
        &["vault", "wrap-key", "--config", &install.config_arg()],
        &moto::aws_env(),
    );
    assert_eq!(
        refused.status.code(),
        Some(64),
        "an existing file is never overwritten"
    );

    let server = install.serve(&moto::aws_env(), "server.log");
    wait_until_ready(&server, Duration::from_secs(10)).await;
    let token = install.admin_token(&moto::aws_env());
    store_secret(&server, &install.ca(), &token).await;
    let (status, body) = resolve_secret(&server, &install.ca(), &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["value"], SECRET_VALUE);
    let log = server.log();
    assert!(server.stop().success());
    assert!(
        !log.contains(moto::SECRET_ACCESS_KEY),
        "the log shows AWS credentials"
    );

    // Without credentials the server starts sealed and names the variables to set.
    let server = install.serve(&[], "no-credentials.log");
    assert_sealed(&server, "AWS_ACCESS_KEY_ID is not set").await;
    assert!(server.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_unreachable_starts_sealed_then_unseals() {
    let install = Install::new();
    let moto = Moto::start();
    let key_id = moto.create_key(None).await;
    let relay = Relay::start(moto.addr).await;
    install.configure(&kms_vault(&relay.endpoint(), &key_id, ""));
    wrap_key(&install, &[]);

    // First run with KMS reachable: a token, an agent and a secret.
    let server = install.serve(&moto::aws_env(), "first.log");
    wait_until_ready(&server, Duration::from_secs(10)).await;
    let token = install.admin_token(&moto::aws_env());
    store_secret(&server, &install.ca(), &token).await;
    let api = HttpsClient::new(server.api_addr, &install.ca(), None);
    let (status, _, agent) = api
        .request(
            Method::POST,
            "/v1/agents",
            Some(&token),
            Some(json!({"name": "sealed-test"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{agent}");
    assert!(server.stop().success());

    // Second run with KMS unreachable: sealed, with the endpoint in the reason.
    relay.set_open(false);
    let server = install.serve(&moto::aws_env(), "sealed.log");
    let cause = format!("KMS at {} is unreachable", relay.endpoint());
    assert_sealed(&server, &cause).await;

    let api = HttpsClient::new(server.api_addr, &install.ca(), None);
    let (status, body) = resolve_secret(&server, &install.ca(), &token).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["type"], "urn:keygate:problem:vault-sealed");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.starts_with("vault is sealed: "), "{detail}");
    assert!(detail.contains(&cause), "{detail}");
    let (status, _, body) = api
        .request(
            Method::PUT,
            "/v1/projects/etl/secrets/other",
            Some(&token),
            Some(json!({"value": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    // Tokens verify with the stored public keys, and the agent directory
    // does not need the master key.
    let (status, _, listed) = api
        .request(Method::GET, "/v1/agents", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let (status, _, jwks) = api
        .request(Method::GET, "/.well-known/jwks.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(1), "{jwks}");

    // An agent logs in and relays a task while the vault is sealed.
    let agent_id = agent["client_id"].as_str().unwrap().to_owned();
    let agent_dir = install.work.join("agent");
    issue_agent_cert(&install.data, &agent_id, &agent_dir);
    let (stop_agent, stop_rx) = tokio::sync::watch::channel(false);
    let options = agent_options(&server, &install.ca(), &agent_dir, &agent);
    let agent_task = tokio::spawn(keygate_tests::keygate_gateway::agent::run(
        options,
        keygate_tests::keygate_gateway::agent::TaskHandlers::builtin(),
        stop_rx,
    ));
    wait_for_session(&api, &token, &agent_id).await;
    let (status, _, task) = api
        .request(
            Method::POST,
            &format!("/v1/agents/{agent_id}/tasks"),
            Some(&token),
            Some(json!({"kind": "echo", "payload": {"sealed": true}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{task}");
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["result"], json!({"sealed": true}));

    // KMS comes back: the vault unseals without a restart.
    relay.set_open(true);
    wait_until_ready(&server, Duration::from_secs(60)).await;
    assert_eq!(sealed_gauge(&server).await, "keygate_vault_sealed 0");
    let (status, body) = resolve_secret(&server, &install.ca(), &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["value"], SECRET_VALUE);

    // The agent's session, opened with a standby-key token, keeps relaying.
    let (status, _, task) = api
        .request(
            Method::POST,
            &format!("/v1/agents/{agent_id}/tasks"),
            Some(&token),
            Some(json!({"kind": "echo", "payload": {"sealed": false}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{task}");
    assert_eq!(task["result"], json!({"sealed": false}));

    let _ = stop_agent.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), agent_task).await;
    let log = server.log();
    assert!(server.stop().success());
    assert!(log.contains("\"message\":\"vault unsealed\""), "{log}");
}

fn issue_agent_cert(data: &Path, agent_id: &str, dir: &Path) {
    let (ca, _) = keygate_tests::keygate_gateway::pki::DevCa::load_or_create(&data.join("tls"))
        .expect("dev CA");
    std::fs::create_dir_all(dir).unwrap();
    ca.issue_client_cert(agent_id)
        .expect("client cert")
        .write(&dir.join("client.pem"), &dir.join("client-key.pem"))
        .expect("write client cert");
}

fn agent_options(
    server: &ServeProcess,
    ca: &Path,
    dir: &Path,
    agent: &Value,
) -> keygate_tests::keygate_gateway::agent::AgentOptions {
    keygate_tests::keygate_gateway::agent::AgentOptions {
        gateway: server.agent_addr.to_string(),
        server_name: "localhost".into(),
        ca_cert: ca.to_owned(),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client-key.pem"),
        client_id: agent["client_id"].as_str().unwrap().to_owned(),
        client_secret: agent["client_secret"].as_str().unwrap().to_owned().into(),
        capacity: 4,
        instance_id: "master-key-test".into(),
    }
}

/// Waits until `GET /v1/agents/{id}` shows a session (at most 20 s).
async fn wait_for_session(api: &HttpsClient, token: &str, agent_id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _, body) = api
            .request(
                Method::GET,
                &format!("/v1/agents/{agent_id}"),
                Some(token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["connected"] == true {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "agent {agent_id} did not connect within 20 s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_master_offline_with_file_source() {
    let install = Install::new();
    install.configure("[vault]\nmaster_key_source = \"file\"\n");
    let server = install.serve(&[], "first.log");
    wait_until_ready(&server, Duration::from_secs(10)).await;
    let token = install.admin_token(&[]);
    store_secret(&server, &install.ca(), &token).await;

    let new_key = install.work.join("master-v2.key");
    let new_key_arg = new_key.display().to_string();
    let rotate = |env: &[(String, String)]| {
        run_keygate(
            &[
                "vault",
                "rotate-master",
                "--config",
                &install.config_arg(),
                "--new-key-file",
                &new_key_arg,
            ],
            env,
        )
    };
    let locked = rotate(&[]);
    assert_eq!(locked.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&locked.stderr);
    assert!(stderr.contains("stop the server first"), "{stderr}");
    assert!(!new_key.exists(), "a refused rotation leaves no key file");
    assert!(server.stop().success());

    let rotated = rotate(&[]);
    let stdout = String::from_utf8_lossy(&rotated.stdout);
    assert!(
        rotated.status.success(),
        "rotate-master: {stdout}{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    assert!(stdout.contains("to version 1"), "{stdout}");
    assert!(
        stdout.contains(&format!("vault.master_key_file = \"{new_key_arg}\"")),
        "{stdout}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&new_key).unwrap().permissions(),
    ) & 0o777;
    assert_eq!(mode, 0o600);
    let again = rotate(&[]);
    assert_eq!(
        again.status.code(),
        Some(64),
        "the new key file is never overwritten"
    );

    // The old key no longer opens the store.
    let server = install.serve(&[], "old-key.log");
    assert_sealed(&server, "is not the key this store was created with").await;
    assert!(server.stop().success());

    install.configure(&format!(
        "[vault]\nmaster_key_source = \"file\"\nmaster_key_file = \"{new_key_arg}\"\n"
    ));
    let server = install.serve(&[], "new-key.log");
    wait_until_ready(&server, Duration::from_secs(10)).await;
    let (status, body) = resolve_secret(&server, &install.ca(), &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["value"], SECRET_VALUE,
        "secrets written before read back after"
    );
    assert!(server.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_master_offline_with_kms_source() {
    let install = Install::new();
    let moto = Moto::start();
    let key_id = moto.create_key(None).await;
    install.configure(&kms_vault(&moto.endpoint(), &key_id, ""));
    wrap_key(&install, &[]);
    let server = install.serve(&moto::aws_env(), "first.log");
    wait_until_ready(&server, Duration::from_secs(10)).await;
    let token = install.admin_token(&moto::aws_env());
    store_secret(&server, &install.ca(), &token).await;
    assert!(server.stop().success());

    let new_wrapped = install.work.join("master-v2.key.kms");
    let new_arg = new_wrapped.display().to_string();
    let rotated = run_keygate(
        &[
            "vault",
            "rotate-master",
            "--config",
            &install.config_arg(),
            "--new-key-file",
            &new_arg,
        ],
        &moto::aws_env(),
    );
    let stdout = String::from_utf8_lossy(&rotated.stdout);
    assert!(
        rotated.status.success(),
        "rotate-master: {stdout}{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    assert!(
        stdout.contains(&format!("vault.aws_kms.wrapped_key_file = \"{new_arg}\"")),
        "{stdout}"
    );

    let server = install.serve(&moto::aws_env(), "old-key.log");
    assert_sealed(&server, "is not the key this store was created with").await;
    assert!(server.stop().success());

    install.configure(&kms_vault(
        &moto.endpoint(),
        &key_id,
        &format!("wrapped_key_file = \"{new_arg}\"\n"),
    ));
    let server = install.serve(&moto::aws_env(), "new-key.log");
    wait_until_ready(&server, Duration::from_secs(10)).await;
    let (status, body) = resolve_secret(&server, &install.ca(), &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["value"], SECRET_VALUE);
    assert!(server.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrap_key_moves_file_store_to_kms() {
    let install = Install::new();
    install.configure("[vault]\nmaster_key_source = \"file\"\n");
    let server = install.serve(&[], "file.log");
    wait_until_ready(&server, Duration::from_secs(10)).await;
    let token = install.admin_token(&[]);
    store_secret(&server, &install.ca(), &token).await;
    assert!(server.stop().success());

    let moto = Moto::start();
    let key_id = moto.create_key(None).await;
    install.configure(&kms_vault(&moto.endpoint(), &key_id, ""));
    let refused = run_keygate(
        &["vault", "wrap-key", "--config", &install.config_arg()],
        &moto::aws_env(),
    );
    assert_eq!(refused.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("pass --key-file"), "{stderr}");

    let key_file = install.data.join("keys/master.key").display().to_string();
    let printed = wrap_key(&install, &["--key-file", &key_file]);
    assert!(
        printed.contains(&format!("the master key from {key_file}")),
        "{printed}"
    );

    let server = install.serve(&moto::aws_env(), "kms.log");
    wait_until_ready(&server, Duration::from_secs(10)).await;
    let (status, body) = resolve_secret(&server, &install.ca(), &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["value"], SECRET_VALUE);
    assert!(server.stop().success());
}
