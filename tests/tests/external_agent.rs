//! Hybrid lookups through the customer's agent: the real gateway sends them
//! to the `keygate agent` binary, which resolves them with its own
//! connections file against moto's server and a local Vault server.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use http::{Method, StatusCode};
use keygate_gateway::external::aws::send_signed;
use keygate_gateway::external::http::{ClientSettings, HttpClient};
use keygate_gateway::external::tokens::TokenCache;
use keygate_gateway::external::ProviderContext;
use keygate_tests::azure_mock::{self, AzureMock};
use keygate_tests::gcp_mock::GcpMock;
use keygate_tests::moto::{self, Moto, REGION};
use keygate_tests::process::keygate_bin;
use keygate_tests::vault_mock::VaultMock;
use keygate_tests::{AgentCredentials, TestServer, ACCOUNT};
use serde_json::{json, Value};

const CANNOT_ACCESS: &str = "The agent can't access the customer's secret manager";
const VAULT_TOKEN: &str = "hvs.agent-side-token";

/// The `keygate agent` process, killed when dropped.
struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(
    server: &TestServer,
    creds: &AgentCredentials,
    connections: &Path,
    log: &Path,
) -> AgentProcess {
    let child = Command::new(keygate_bin())
        .args([
            "agent",
            "--gateway",
            &server.agent_addr.to_string(),
            "--client-id",
            &creds.id,
        ])
        .arg("--credentials-dir")
        .arg(&creds.dir)
        .arg("--connections")
        .arg(connections)
        .env("KEYGATE_AGENT_CLIENT_SECRET", &creds.secret)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    AgentProcess(child)
}

async fn create_aws_secret(endpoint: &str, name: &str, value: &str) {
    let ctx = ProviderContext {
        http: HttpClient::new(
            ClientSettings {
                connect_timeout: std::time::Duration::from_secs(5),
                request_timeout: std::time::Duration::from_secs(30),
                loopback_only: true,
            },
            None,
        )
        .unwrap(),
        tokens: TokenCache::default(),
        aws_metadata: None,
    };
    let response = send_signed(
        &ctx,
        &moto::credentials(),
        endpoint,
        REGION,
        "secretsmanager",
        "application/x-amz-json-1.1",
        Some("secretsmanager.CreateSecret"),
        json!({"Name": name, "SecretString": value})
            .to_string()
            .into_bytes(),
    )
    .await
    .unwrap();
    assert!(response.status.is_success(), "{:?}", response.body);
}

async fn request(
    server: &TestServer,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let (status, _, body) = server.api().request(method, path, Some(token), body).await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_go_through_the_agent_binary() {
    let moto = Moto::start();
    create_aws_secret(&moto.endpoint(), "agent/db", "{\"password\":\"via-agent\"}").await;
    let vault = VaultMock::start().await;
    vault.add_token(VAULT_TOKEN);
    vault.put(
        "secret",
        "etl/warehouse",
        json!({"user": "etl", "password": "vault-pw"}),
    );
    vault.put("secret", "locked/thing", json!({"a": "b"}));
    vault.forbid("secret", "locked/thing");
    let azure = AzureMock::start().await;
    azure.set_secret("warehouse", "azure-via-agent");
    let gcp = GcpMock::start().await;
    gcp.add_version("acme-prod", "api-key", "gcp-via-agent");

    let server = TestServer::start().await;
    let admin = server.admin_token.clone();
    let creds = server.create_agent(ACCOUNT).await;

    // The agent's own connections and credential files, on its machine.
    let work = tempfile::tempdir().unwrap();
    let aws_keys = work.path().join("aws.json");
    std::fs::write(
        &aws_keys,
        json!({"access_key_id": moto::ACCESS_KEY_ID, "secret_access_key": moto::SECRET_ACCESS_KEY})
            .to_string(),
    )
    .unwrap();
    let token_file = work.path().join("vault-token");
    std::fs::write(&token_file, format!("{VAULT_TOKEN}\n")).unwrap();
    let azure_secret = work.path().join("azure-client-secret");
    std::fs::write(&azure_secret, azure_mock::CLIENT_SECRET).unwrap();
    let gcp_key = work.path().join("gcp-key.json");
    std::fs::write(&gcp_key, gcp.service_account_key()).unwrap();
    let connections = work.path().join("connections.json");
    std::fs::write(
        &connections,
        json!({
            "aws-local": {"type": "aws_secrets_manager", "region": REGION, "endpoint": moto.endpoint(),
                          "credentials": {"file": aws_keys}},
            "vault-local": {"type": "hashicorp_vault", "address": vault.url(),
                            "auth": {"method": "token", "token": {"file": token_file}}},
            "azure-local": {"type": "azure_key_vault", "tenant_id": azure_mock::TENANT_ID,
                            "client_id": azure_mock::CLIENT_ID, "authority_url": azure.url(),
                            "client_secret": {"file": azure_secret}},
            "gcp-local": {"type": "gcp_secret_manager", "endpoint": gcp.url(), "token_url": gcp.token_url(),
                          "service_account_key": {"file": gcp_key}}
        })
        .to_string(),
    )
    .unwrap();
    let log = work.path().join("agent.log");
    let agent = start_agent(&server, &creds, &connections, &log);
    server.wait_for_session(&creds.id).await;

    // Gateway side: connections that name the agent and its connections.
    for (name, agent_connection) in [
        ("via-aws", "aws-local"),
        ("via-vault", "vault-local"),
        ("via-azure", "azure-local"),
        ("via-gcp", "gcp-local"),
        ("via-nothing", "absent"),
    ] {
        let (status, body) = request(
            &server,
            Method::PUT,
            &format!("/v1/connections/{name}"),
            &admin,
            Some(json!({"connection": {"type": "agent", "agent_id": creds.id, "connection": agent_connection}})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let definitions = [
        (
            "aws-password",
            json!({"type": "aws_secrets_manager", "secret_id": "agent/db", "json_key": "password", "connection": "via-aws"}),
        ),
        (
            "vault-password",
            json!({"type": "hashicorp_vault", "mount": "secret", "path": "etl/warehouse", "key": "password", "connection": "via-vault"}),
        ),
        (
            "azure-warehouse",
            json!({"type": "azure_key_vault", "vault_url": azure.url(), "name": "warehouse", "connection": "via-azure"}),
        ),
        (
            "gcp-api-key",
            json!({"type": "gcp_secret_manager", "project": "acme-prod", "secret": "api-key", "connection": "via-gcp"}),
        ),
        (
            "vault-locked",
            json!({"type": "hashicorp_vault", "mount": "secret", "path": "locked/thing", "connection": "via-vault"}),
        ),
        (
            "unknown-connection",
            json!({"type": "hashicorp_vault", "mount": "secret", "path": "etl/warehouse", "connection": "via-nothing"}),
        ),
    ];
    for (name, location) in &definitions {
        let (status, body) = request(
            &server,
            Method::PUT,
            &format!("/v1/projects/etl/secret-definitions/{name}"),
            &admin,
            Some(json!({"location": location})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    let runner = server.token(ACCOUNT, &["secrets:read"], Some(&["etl"]));
    let resolve = |name: &'static str| {
        let (server, runner) = (&server, runner.clone());
        async move {
            request(
                server,
                Method::GET,
                &format!("/v1/projects/etl/secret-definitions/{name}/value"),
                &runner,
                None,
            )
            .await
        }
    };
    let (status, body) = resolve("aws-password").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["value"], "via-agent");
    let (status, body) = resolve("vault-password").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["value"], "vault-pw");
    assert_eq!(body["provider_version"], "1");
    for (definition, expected) in [
        ("azure-warehouse", "azure-via-agent"),
        ("gcp-api-key", "gcp-via-agent"),
    ] {
        let (status, body) = resolve(definition).await;
        assert_eq!(status, StatusCode::OK, "{definition}: {body}");
        assert_eq!(body["value"], expected);
    }

    let (status, body) = resolve("vault-locked").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["reason"], "access_denied");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(CANNOT_ACCESS) && detail.contains("permission denied"),
        "{detail}"
    );

    let (status, body) = resolve("unknown-connection").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("has no connection") && detail.contains("absent"),
        "{detail}"
    );

    // Lookups are not tasks: the stored tasks never hold a value.
    let stored = server
        .server()
        .state()
        .tasks
        .store()
        .unwrap()
        .load_all()
        .unwrap();
    assert!(stored.is_empty(), "lookups left task records behind");

    // Neither the agent's log nor the gateway's responses contain credentials.
    drop(agent);
    let agent_log = std::fs::read_to_string(&log).unwrap();
    for secret in [
        VAULT_TOKEN,
        "vault-pw",
        "via-agent",
        azure_mock::CLIENT_SECRET,
    ] {
        assert!(
            !agent_log.contains(secret),
            "the agent's log shows {secret:?}: {agent_log}"
        );
    }
    assert!(!agent_log.contains("gcp-via-agent"), "{agent_log}");

    // With the agent gone, the lookup fails as unreachable (the cached
    // values stay until their life ends, so ask for one never cached).
    server
        .api()
        .request(
            Method::DELETE,
            "/v1/projects/etl/secret-definitions/vault-password/cache",
            Some(&admin),
            None,
        )
        .await;
    let mut last = (StatusCode::OK, Value::Null);
    for _ in 0..100 {
        last = resolve("vault-password").await;
        if last.0 != StatusCode::OK {
            break;
        }
        server
            .api()
            .request(
                Method::DELETE,
                "/v1/projects/etl/secret-definitions/vault-password/cache",
                Some(&admin),
                None,
            )
            .await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (status, body) = last;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["reason"], "unreachable");
    assert!(
        body["detail"].as_str().unwrap().starts_with(CANNOT_ACCESS),
        "{body}"
    );
}
