//! The GCP Secret Manager client against a local OAuth and Secret Manager mock.

use std::time::Duration;

use keygate_gateway::external::gcp;
use keygate_gateway::external::http::{ClientSettings, HttpClient};
use keygate_gateway::external::tokens::TokenCache;
use keygate_gateway::external::{FailureKind, Fetched, ProviderContext, ProviderError};
use keygate_tests::gcp_mock::{
    self, GcpMock, VersionState, CLIENT_EMAIL, OTHER_PRIVATE_KEY_PEM, PRIVATE_KEY_PEM,
};

const PROJECT: &str = "keygate-test";

fn context() -> ProviderContext {
    let settings = ClientSettings {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        loopback_only: true,
    };
    ProviderContext {
        http: HttpClient::new(settings, None).expect("HTTP client"),
        tokens: TokenCache::default(),
        aws_metadata: None,
    }
}

async fn fetch(
    ctx: &ProviderContext,
    gcp: &GcpMock,
    secret: &str,
    version: Option<&str>,
) -> Result<Fetched, ProviderError> {
    fetch_with(ctx, gcp, false, &gcp.service_account_key(), secret, version).await
}

async fn fetch_with(
    ctx: &ProviderContext,
    gcp: &GcpMock,
    latest_falls_back_to_enabled: bool,
    service_account_key: &str,
    secret: &str,
    version: Option<&str>,
) -> Result<Fetched, ProviderError> {
    gcp::fetch(
        ctx,
        Some(&gcp.url()),
        Some(&gcp.token_url()),
        latest_falls_back_to_enabled,
        service_account_key,
        PROJECT,
        secret,
        version,
    )
    .await
}

/// Returns the base64 body lines of a PEM key, the parts that must never
/// appear in a message.
fn key_lines(pem: &str) -> Vec<&str> {
    pem.lines()
        .filter(|line| !line.starts_with("-----") && line.len() > 16)
        .collect()
}

/// Asserts that `error` quotes no private key, token or secret value.
fn assert_no_secrets(error: &ProviderError, secret_values: &[&str]) {
    for pem in [PRIVATE_KEY_PEM, OTHER_PRIVATE_KEY_PEM] {
        for line in key_lines(pem) {
            assert!(
                !error.message.contains(line),
                "message contains the private key: {}",
                error.message
            );
        }
    }
    assert!(
        !error.message.contains("ya29."),
        "message contains an access token: {}",
        error.message
    );
    for value in secret_values {
        assert!(
            !error.message.contains(value),
            "message contains a secret value: {}",
            error.message
        );
    }
}

#[tokio::test]
async fn latest_version_is_read() {
    let gcp = GcpMock::start().await;
    gcp.add_version(PROJECT, "db-password", "first");
    gcp.add_version(PROJECT, "db-password", "second");
    let ctx = context();

    let fetched = fetch(&ctx, &gcp, "db-password", None).await.expect("fetch");

    assert_eq!(fetched.value.as_str(), "second");
    assert_eq!(fetched.version.as_deref(), Some("2"));
}

#[tokio::test]
async fn numbered_version_is_read() {
    let gcp = GcpMock::start().await;
    gcp.add_version(PROJECT, "db-password", "first");
    gcp.add_version(PROJECT, "db-password", "second");
    let ctx = context();

    let fetched = fetch(&ctx, &gcp, "db-password", Some("1"))
        .await
        .expect("fetch");

    assert_eq!(fetched.value.as_str(), "first");
    assert_eq!(fetched.version.as_deref(), Some("1"));
}

#[tokio::test]
async fn explicit_latest_is_read() {
    let gcp = GcpMock::start().await;
    gcp.add_version(PROJECT, "db-password", "only");
    let ctx = context();

    let fetched = fetch(&ctx, &gcp, "db-password", Some("latest"))
        .await
        .expect("fetch");

    assert_eq!(fetched.value.as_str(), "only");
    assert_eq!(fetched.version.as_deref(), Some("1"));
}

#[tokio::test]
async fn key_token_uri_is_ignored() {
    // The mock's key file names a closed loopback port as token_uri, so
    // this fetch succeeds only through the configured token URL.
    let gcp = GcpMock::start().await;
    gcp.add_version(PROJECT, "db-password", "hunter2");
    let ctx = context();

    fetch(&ctx, &gcp, "db-password", None).await.expect("fetch");

    assert_eq!(gcp.token_requests(), 1);
}

#[tokio::test]
async fn token_is_cached_across_fetches() {
    let gcp = GcpMock::start().await;
    gcp.add_version(PROJECT, "one", "1");
    gcp.add_version(PROJECT, "two", "2");
    let ctx = context();

    for secret in ["one", "two", "one"] {
        fetch(&ctx, &gcp, secret, None).await.expect("fetch");
    }

    assert_eq!(gcp.token_requests(), 1);
    assert_eq!(gcp.access_requests(), 3);
}

#[tokio::test]
async fn revoked_token_is_replaced_once() {
    let gcp = GcpMock::start().await;
    gcp.add_version(PROJECT, "db-password", "hunter2");
    let ctx = context();
    fetch(&ctx, &gcp, "db-password", None)
        .await
        .expect("first fetch");
    gcp.revoke_tokens();

    let fetched = fetch(&ctx, &gcp, "db-password", None)
        .await
        .expect("fetch after revocation");

    assert_eq!(fetched.value.as_str(), "hunter2");
    assert_eq!(gcp.token_requests(), 2);
    assert_eq!(gcp.access_requests(), 3);
}

#[tokio::test]
async fn second_unauthenticated_is_access_denied() {
    let gcp = GcpMock::start().await;
    gcp.add_version(PROJECT, "db-password", "hunter2");
    gcp.set_reject_tokens(true);
    let ctx = context();

    let error = fetch(&ctx, &gcp, "db-password", None)
        .await
        .err()
        .expect("fetch fails");

    assert_eq!(error.kind, FailureKind::AccessDenied, "{}", error.message);
    assert!(
        error.message.contains("UNAUTHENTICATED"),
        "{}",
        error.message
    );
    assert_eq!(gcp.access_requests(), 2);
    assert_eq!(gcp.token_requests(), 2);
    assert_no_secrets(&error, &["hunter2"]);
}

#[tokio::test]
async fn throttled_with_retry_after() {
    let gcp = GcpMock::start().await;
    gcp.add_version(PROJECT, "db-password", "hunter2");
    gcp.throttle_next(1, 11);
    let ctx = context();

    let error = fetch(&ctx, &gcp, "db-password", None)
        .await
        .err()
        .expect("fetch fails");

    assert_eq!(error.kind, FailureKind::Throttled, "{}", error.message);
    assert_eq!(error.retry_after, Some(Duration::from_secs(11)));
    assert!(
        error.message.contains("RESOURCE_EXHAUSTED"),
        "{}",
        error.message
    );

    let fetched = fetch(&ctx, &gcp, "db-password", None)
        .await
        .expect("fetch after the throttle ends");
    assert_eq!(fetched.value.as_str(), "hunter2");
}

#[tokio::test]
async fn missing_secret_is_not_found() {
    let gcp = GcpMock::start().await;
    let ctx = context();

    let error = fetch(&ctx, &gcp, "no-such-secret", None)
        .await
        .err()
        .expect("fetch fails");

    assert_eq!(error.kind, FailureKind::NotFound, "{}", error.message);
    assert!(error.message.contains("NOT_FOUND"), "{}", error.message);
    assert!(
        error.message.contains("no-such-secret"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn missing_version_is_not_found() {
    let gcp = GcpMock::start().await;
    gcp.add_version(PROJECT, "db-password", "hunter2");
    let ctx = context();

    let error = fetch(&ctx, &gcp, "db-password", Some("7"))
        .await
        .err()
        .expect("fetch fails");

    assert_eq!(error.kind, FailureKind::NotFound, "{}", error.message);
}

#[tokio::test]
async fn forbidden_secret_is_access_denied() {
    let gcp = GcpMock::start().await;
    gcp.add_version(PROJECT, "db-password", "hunter2");
    gcp.forbid(PROJECT, "db-password");
    let ctx = context();

    let error = fetch(&ctx, &gcp, "db-password", None)
        .await
        .err()
        .expect("fetch fails");

    assert_eq!(error.kind, FailureKind::AccessDenied, "{}", error.message);
    assert!(
        error.message.contains("PERMISSION_DENIED"),
        "{}",
        error.message
    );
    assert!(error.message.contains(CLIENT_EMAIL), "{}", error.message);
    assert_no_secrets(&error, &["hunter2"]);
}

#[tokio::test]
async fn destroyed_latest_is_disabled() {
    let gcp = GcpMock::start().await;
    gcp.add_version(PROJECT, "db-password", "first");
    gcp.add_version(PROJECT, "db-password", "second");
    gcp.set_state(PROJECT, "db-password", 2, VersionState::Destroyed);
    let ctx = context();

    let error = fetch(&ctx, &gcp, "db-password", None)
        .await
        .err()
        .expect("fetch fails");

    assert_eq!(error.kind, FailureKind::Disabled, "{}", error.message);
    assert!(
        error.message.contains("FAILED_PRECONDITION"),
        "{}",
        error.message
    );
    assert!(error.message.contains("DESTROYED"), "{}", error.message);
    assert_eq!(gcp.list_requests(), 0);
    assert_no_secrets(&error, &["first", "second"]);
}

#[tokio::test]
async fn disabled_numbered_version_is_disabled() {
    let gcp = GcpMock::start().await;
    gcp.add_version(PROJECT, "db-password", "first");
    gcp.add_version(PROJECT, "db-password", "second");
    gcp.set_state(PROJECT, "db-password", 1, VersionState::Disabled);
    let ctx = context();

    let error = fetch_with(
        &ctx,
        &gcp,
        true,
        &gcp.service_account_key(),
        "db-password",
        Some("1"),
    )
    .await
    .err()
    .expect("a numbered version never falls back");

    assert_eq!(error.kind, FailureKind::Disabled, "{}", error.message);
    assert!(error.message.contains("DISABLED"), "{}", error.message);
    assert_eq!(gcp.list_requests(), 0);
}

#[tokio::test]
async fn fallback_reads_newest_enabled_version() {
    let gcp = GcpMock::start().await;
    for value in ["v1", "v2", "v3", "v4", "v5"] {
        gcp.add_version(PROJECT, "db-password", value);
    }
    gcp.set_state(PROJECT, "db-password", 5, VersionState::Destroyed);
    gcp.set_state(PROJECT, "db-password", 4, VersionState::Disabled);
    gcp.set_state(PROJECT, "db-password", 2, VersionState::Disabled);
    let ctx = context();

    let fetched = fetch_with(
        &ctx,
        &gcp,
        true,
        &gcp.service_account_key(),
        "db-password",
        None,
    )
    .await
    .expect("fetch");

    assert_eq!(fetched.value.as_str(), "v3");
    assert_eq!(fetched.version.as_deref(), Some("3"));
    assert_eq!(gcp.list_requests(), 1);
    assert_eq!(gcp.access_requests(), 2);
}

#[tokio::test]
async fn fallback_follows_page_tokens() {
    let gcp = GcpMock::start().await;
    for value in ["v1", "v2", "v3", "v4"] {
        gcp.add_version(PROJECT, "db-password", value);
    }
    gcp.set_state(PROJECT, "db-password", 4, VersionState::Disabled);
    gcp.set_max_page_size(1);
    let ctx = context();

    let fetched = fetch_with(
        &ctx,
        &gcp,
        true,
        &gcp.service_account_key(),
        "db-password",
        None,
    )
    .await
    .expect("fetch");

    assert_eq!(fetched.value.as_str(), "v3");
    // Three enabled versions, one per page.
    assert_eq!(gcp.list_requests(), 3);
}

#[tokio::test]
async fn fallback_without_enabled_version_is_disabled() {
    let gcp = GcpMock::start().await;
    gcp.add_version(PROJECT, "db-password", "v1");
    gcp.add_version(PROJECT, "db-password", "v2");
    gcp.set_state(PROJECT, "db-password", 1, VersionState::Destroyed);
    gcp.set_state(PROJECT, "db-password", 2, VersionState::Disabled);
    let ctx = context();

    let error = fetch_with(
        &ctx,
        &gcp,
        true,
        &gcp.service_account_key(),
        "db-password",
        None,
    )
    .await
    .err()
    .expect("fetch fails");

    assert_eq!(error.kind, FailureKind::Disabled, "{}", error.message);
    assert!(
        error.message.contains("no enabled version"),
        "{}",
        error.message
    );
    assert_no_secrets(&error, &["v1", "v2"]);
}

#[tokio::test]
async fn fallback_denied_list_names_permission() {
    let gcp = GcpMock::start().await;
    gcp.add_version(PROJECT, "db-password", "v1");
    gcp.add_version(PROJECT, "db-password", "v2");
    gcp.set_state(PROJECT, "db-password", 2, VersionState::Disabled);
    gcp.forbid_list(PROJECT, "db-password");
    let ctx = context();

    let error = fetch_with(
        &ctx,
        &gcp,
        true,
        &gcp.service_account_key(),
        "db-password",
        None,
    )
    .await
    .err()
    .expect("fetch fails");

    assert_eq!(error.kind, FailureKind::AccessDenied, "{}", error.message);
    assert!(
        error.message.contains("secretmanager.versions.list"),
        "{}",
        error.message
    );
    assert_eq!(gcp.list_requests(), 1);
}

#[tokio::test]
async fn non_utf8_payload_is_invalid_response() {
    let gcp = GcpMock::start().await;
    gcp.add_version_bytes(PROJECT, "binary", &[0xff, 0xfe, 0x00, 0x41]);
    let ctx = context();

    let error = fetch(&ctx, &gcp, "binary", None)
        .await
        .err()
        .expect("fetch fails");

    assert_eq!(
        error.kind,
        FailureKind::InvalidResponse,
        "{}",
        error.message
    );
    assert!(error.message.contains("UTF-8"), "{}", error.message);
}

#[tokio::test]
async fn empty_payload_is_empty_value() {
    let gcp = GcpMock::start().await;
    gcp.add_version(PROJECT, "empty", "");
    let ctx = context();

    let fetched = fetch(&ctx, &gcp, "empty", None).await.expect("fetch");

    assert_eq!(fetched.value.as_str(), "");
}

#[tokio::test]
async fn unknown_service_account_is_access_denied() {
    let gcp = GcpMock::start().await;
    gcp.add_version(PROJECT, "db-password", "hunter2");
    let key = gcp_mock::service_account_key(
        "someone-else@keygate-test.iam.gserviceaccount.com",
        PRIVATE_KEY_PEM,
    );
    let ctx = context();

    let error = fetch_with(&ctx, &gcp, false, &key, "db-password", None)
        .await
        .err()
        .expect("fetch fails");

    assert_eq!(error.kind, FailureKind::AccessDenied, "{}", error.message);
    assert!(error.message.contains("invalid_grant"), "{}", error.message);
    assert_eq!(gcp.access_requests(), 0);
    assert_no_secrets(&error, &["hunter2"]);
}

#[tokio::test]
async fn wrong_private_key_is_access_denied() {
    let gcp = GcpMock::start().await;
    gcp.add_version(PROJECT, "db-password", "hunter2");
    let key = gcp_mock::service_account_key(CLIENT_EMAIL, OTHER_PRIVATE_KEY_PEM);
    let ctx = context();

    let error = fetch_with(&ctx, &gcp, false, &key, "db-password", None)
        .await
        .err()
        .expect("fetch fails");

    assert_eq!(error.kind, FailureKind::AccessDenied, "{}", error.message);
    assert!(error.message.contains("invalid_grant"), "{}", error.message);
    assert!(error.message.contains("Signature"), "{}", error.message);
    assert_no_secrets(&error, &["hunter2"]);
}

#[tokio::test]
async fn malformed_keys_are_misconfigured() {
    let gcp = GcpMock::start().await;
    let good: serde_json::Value =
        serde_json::from_str(&gcp.service_account_key()).expect("key JSON");
    let with = |field: &str, value: serde_json::Value| {
        let mut key = good.clone();
        key[field] = value;
        key.to_string()
    };
    let without = |field: &str| {
        let mut key = good.clone();
        key.as_object_mut().expect("object").remove(field);
        key.to_string()
    };
    let truncated_pem = PRIVATE_KEY_PEM
        .lines()
        .take(10)
        .chain(std::iter::once("-----END PRIVATE KEY-----"))
        .collect::<Vec<_>>()
        .join("\n");
    let pkcs1_label = PRIVATE_KEY_PEM.replace("PRIVATE KEY", "RSA PRIVATE KEY");
    let cases: Vec<(&str, String, &str)> = vec![
        ("not JSON", PRIVATE_KEY_PEM.to_owned(), "not a JSON object"),
        ("JSON array", "[]".to_owned(), "not a JSON object"),
        (
            "wrong type",
            with("type", "authorized_user".into()),
            "authorized_user",
        ),
        ("no client_email", without("client_email"), "client_email"),
        ("no private_key", without("private_key"), "private_key"),
        (
            "private_key not PEM",
            with("private_key", "not a key".into()),
            "BEGIN PRIVATE KEY",
        ),
        (
            "PKCS#1 private_key",
            with("private_key", pkcs1_label.into()),
            "PKCS#1",
        ),
        (
            "truncated private_key",
            with("private_key", truncated_pem.into()),
            "RSA key",
        ),
    ];
    let ctx = context();

    for (case, key, expected) in cases {
        let error = fetch_with(&ctx, &gcp, false, &key, "db-password", None)
            .await
            .err()
            .unwrap_or_else(|| panic!("{case}: fetch succeeds"));
        assert_eq!(
            error.kind,
            FailureKind::Misconfigured,
            "{case}: {}",
            error.message
        );
        assert!(
            error.message.contains(expected),
            "{case}: expected {expected:?} in {}",
            error.message
        );
        assert_no_secrets(&error, &[]);
    }
    assert_eq!(gcp.token_requests(), 0);
}
