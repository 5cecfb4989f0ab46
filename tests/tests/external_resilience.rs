//! Retries, throttling, circuit breakers, stale serving, not-found caching
//! and provider-specific states of hybrid lookups, through the server's API
//! against local Azure Key Vault, GCP Secret Manager and Vault servers.

use std::time::Duration;

use http::{Method, StatusCode};
use keygate_gateway::config::Config;
use keygate_tests::azure_mock::{self, AzureMock};
use keygate_tests::gcp_mock::{GcpMock, VersionState};
use keygate_tests::vault_mock::VaultMock;
use keygate_tests::{TestServer, ACCOUNT};
use serde_json::{json, Value};

const CANNOT_ACCESS: &str = "The agent can't access the customer's secret manager";
const VAULT_TOKEN: &str = "hvs.resilience-token";

struct Setup {
    server: TestServer,
    runner: String,
}

impl Setup {
    async fn start(adjust: impl FnOnce(&mut Config)) -> Setup {
        let server = TestServer::start_with(adjust).await;
        let runner = server.token(ACCOUNT, &["secrets:read"], Some(&["etl"]));
        Setup { server, runner }
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let admin = self.server.admin_token.clone();
        let (status, _, body) = self
            .server
            .api()
            .request(method, path, Some(&admin), body)
            .await;
        (status, body)
    }

    /// Stores `value` as the hosted secret `ops/NAME`.
    async fn credential(&self, name: &str, value: &str) {
        let (status, body) = self
            .admin(
                Method::PUT,
                &format!("/v1/projects/ops/secrets/{name}"),
                Some(json!({"value": value})),
            )
            .await;
        assert!(status.is_success(), "{body}");
    }

    async fn connection(&self, name: &str, connection: Value) {
        let (status, body) = self
            .admin(
                Method::PUT,
                &format!("/v1/connections/{name}"),
                Some(json!({"connection": connection})),
            )
            .await;
        assert!(status.is_success(), "{body}");
    }

    async fn define(&self, name: &str, location: Value) {
        let (status, body) = self
            .admin(
                Method::PUT,
                &format!("/v1/projects/etl/secret-definitions/{name}"),
                Some(json!({"location": location})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    async fn resolve(&self, name: &str) -> (StatusCode, http::HeaderMap, Value) {
        self.server
            .api()
            .request(
                Method::GET,
                &format!("/v1/projects/etl/secret-definitions/{name}/value"),
                Some(&self.runner),
                None,
            )
            .await
    }

    async fn vault_connection(&self, vault: &VaultMock) {
        self.credential("vault-token", VAULT_TOKEN).await;
        self.connection(
            "vault",
            json!({"type": "hashicorp_vault", "address": vault.url(),
                   "auth": {"method": "token", "token": {"project": "ops", "secret": "vault-token"}}}),
        )
        .await;
    }
}

fn vault_location(path: &str) -> Value {
    json!({"type": "hashicorp_vault", "mount": "secret", "path": path, "key": "password", "connection": "vault"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_throttling_challenge_and_disabled_secrets() {
    let azure = AzureMock::start().await;
    azure.set_secret("db-password", "azure-value");
    azure.set_secret("old-key", "old");
    azure.set_enabled("old-key", None, false);
    let setup = Setup::start(|config| config.external.max_retry_after_ms = 2000).await;
    setup
        .credential("azure-secret", azure_mock::CLIENT_SECRET)
        .await;
    setup
        .connection(
            "azure",
            json!({"type": "azure_key_vault", "tenant_id": azure_mock::TENANT_ID, "client_id": azure_mock::CLIENT_ID,
                   "authority_url": azure.url(), "client_secret": {"project": "ops", "secret": "azure-secret"}}),
        )
        .await;
    let azure_location = |name: &str| json!({"type": "azure_key_vault", "vault_url": azure.url(), "name": name, "connection": "azure"});
    setup.define("db", azure_location("db-password")).await;
    setup.define("old", azure_location("old-key")).await;

    // A 429 with a short Retry-After is waited out, and the retry succeeds.
    azure.throttle_next(1, 1);
    let before = azure.secret_requests();
    let started = std::time::Instant::now();
    let (status, _, body) = setup.resolve("db").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["value"], "azure-value");
    assert_eq!(
        azure.secret_requests() - before,
        2,
        "one throttled call, one retry"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the retry waited for Retry-After"
    );

    // A new token is fetched after the vault rejects the cached one.
    setup
        .admin(
            Method::DELETE,
            "/v1/projects/etl/secret-definitions/db/cache",
            None,
        )
        .await;
    azure.revoke_tokens();
    let tokens_before = azure.token_requests();
    let (status, _, body) = setup.resolve("db").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(azure.token_requests() - tokens_before, 1);

    // A Retry-After beyond external.max_retry_after_ms fails at once with it.
    setup
        .admin(
            Method::DELETE,
            "/v1/projects/etl/secret-definitions/db/cache",
            None,
        )
        .await;
    azure.throttle_next(1, 30);
    let (status, headers, body) = setup.resolve("db").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["reason"], "throttled");
    assert_eq!(headers[http::header::RETRY_AFTER], "30");
    assert_eq!(body["retry_after_secs"], 30);
    assert!(
        body["detail"].as_str().unwrap().starts_with(CANNOT_ACCESS),
        "{body}"
    );

    // A disabled secret is its own error, not "not found".
    let (status, _, body) = setup.resolve("old").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["type"], "urn:keygate:problem:external-secret-disabled");
    assert!(
        body["detail"].as_str().unwrap().contains("SecretDisabled"),
        "{body}"
    );
    let text = body.to_string();
    assert!(!text.contains(azure_mock::CLIENT_SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_destroyed_latest_fails_unless_the_connection_falls_back() {
    let gcp = GcpMock::start().await;
    gcp.add_version("acme-prod", "api-key", "first");
    let second = gcp.add_version("acme-prod", "api-key", "second");
    gcp.set_state("acme-prod", "api-key", second, VersionState::Destroyed);
    let setup = Setup::start(|_| {}).await;
    setup
        .credential("gcp-key", &gcp.service_account_key())
        .await;
    for (name, fallback) in [("gcp-strict", false), ("gcp-fallback", true)] {
        setup
            .connection(
                name,
                json!({"type": "gcp_secret_manager", "endpoint": gcp.url(), "token_url": gcp.token_url(),
                       "service_account_key": {"project": "ops", "secret": "gcp-key"},
                       "latest_falls_back_to_enabled": fallback}),
            )
            .await;
        setup
            .define(
                name,
                json!({"type": "gcp_secret_manager", "project": "acme-prod", "secret": "api-key", "connection": name}),
            )
            .await;
    }
    setup
        .define(
            "gcp-missing",
            json!({"type": "gcp_secret_manager", "project": "acme-prod", "secret": "nope", "connection": "gcp-strict"}),
        )
        .await;

    let (status, _, body) = setup.resolve("gcp-strict").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("FAILED_PRECONDITION"),
        "{body}"
    );
    let (status, _, body) = setup.resolve("gcp-fallback").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["value"], "first");
    assert_eq!(body["provider_version"], "1");
    let (status, _, body) = setup.resolve("gcp-missing").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("NOT_FOUND"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_provider_opens_the_circuit_then_recovers() {
    let vault = VaultMock::start().await;
    vault.add_token(VAULT_TOKEN);
    vault.put("secret", "etl/db", json!({"password": "vault-pw"}));
    let setup = Setup::start(|config| {
        config.external.max_attempts = 1;
        config.external.breaker_failures = 2;
        config.external.breaker_open_ms = 500;
    })
    .await;
    setup.vault_connection(&vault).await;
    setup.define("db", vault_location("etl/db")).await;

    vault.set_sealed(true);
    for _ in 0..2 {
        let (status, _, body) = setup.resolve("db").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        assert_eq!(body["reason"], "provider_error");
        assert!(
            body["detail"].as_str().unwrap().contains("Vault is sealed"),
            "{body}"
        );
    }
    let reads = vault.reads();
    let (status, headers, body) = setup.resolve("db").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        body["type"],
        "urn:keygate:problem:secret-manager-unavailable"
    );
    assert!(headers.contains_key(http::header::RETRY_AFTER));
    assert_eq!(vault.reads(), reads, "an open circuit makes no call");

    vault.set_sealed(false);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, _, body) = setup.resolve("db").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the test call after breaker_open_ms closes the circuit: {body}"
    );
    assert_eq!(body["value"], "vault-pw");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_values_and_not_found_answers_follow_their_settings() {
    let vault = VaultMock::start().await;
    vault.add_token(VAULT_TOKEN);
    vault.put("secret", "etl/db", json!({"password": "before-outage"}));
    let setup = Setup::start(|config| {
        config.external.cache_ttl_ms = 200;
        config.external.cache_refresh_ahead_ms = 0;
        config.external.cache_serve_stale_ms = 60_000;
        config.external.cache_not_found_ttl_ms = 400;
        config.external.max_attempts = 1;
    })
    .await;
    setup.vault_connection(&vault).await;
    setup.define("db", vault_location("etl/db")).await;
    setup.define("later", vault_location("etl/later")).await;

    assert_eq!(setup.resolve("db").await.2["value"], "before-outage");
    vault.set_sealed(true);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (status, _, body) = setup.resolve("db").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a value past its life is served while Vault fails: {body}"
    );
    assert_eq!(body["value"], "before-outage");
    vault.set_sealed(false);

    // Not found is remembered for cache_not_found_ttl_ms, then asked again.
    let (status, _, body) = setup.resolve("later").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    vault.put("secret", "etl/later", json!({"password": "created"}));
    let reads = vault.reads();
    let (status, _, _) = setup.resolve("later").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        vault.reads(),
        reads,
        "the not-found answer came from the cache"
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    let (status, _, body) = setup.resolve("later").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["value"], "created");
}
