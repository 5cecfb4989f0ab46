//! The Azure Key Vault client against a local Entra ID and Key Vault mock.

use std::time::Duration;

use keygate_gateway::external::azure;
use keygate_gateway::external::http::{ClientSettings, HttpClient};
use keygate_gateway::external::tokens::TokenCache;
use keygate_gateway::external::{FailureKind, Fetched, ProviderContext, ProviderError};
use keygate_tests::azure_mock::{AzureMock, CLIENT_ID, CLIENT_SECRET, TENANT_ID};

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
    azure: &AzureMock,
    name: &str,
    version: Option<&str>,
) -> Result<Fetched, ProviderError> {
    fetch_with_secret(ctx, azure, CLIENT_SECRET, name, version).await
}

async fn fetch_with_secret(
    ctx: &ProviderContext,
    azure: &AzureMock,
    client_secret: &str,
    name: &str,
    version: Option<&str>,
) -> Result<Fetched, ProviderError> {
    azure::fetch(
        ctx,
        TENANT_ID,
        CLIENT_ID,
        Some(&azure.url()),
        client_secret,
        &azure.url(),
        name,
        version,
    )
    .await
}

/// Asserts that `error` quotes no credential, token or secret value.
fn assert_no_secrets(error: &ProviderError, secret_values: &[&str]) {
    assert!(
        !error.message.contains(CLIENT_SECRET),
        "message contains the client secret: {}",
        error.message
    );
    assert!(
        !error.message.contains("mock-entra-access-token"),
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
async fn current_version_is_read() {
    let azure = AzureMock::start().await;
    azure.set_secret("db-password", "first");
    let current = azure.set_secret("db-password", "second");
    let ctx = context();

    let fetched = fetch(&ctx, &azure, "db-password", None)
        .await
        .expect("fetch");

    assert_eq!(fetched.value.as_str(), "second");
    assert_eq!(fetched.version.as_deref(), Some(current.as_str()));
}

#[tokio::test]
async fn named_version_is_read() {
    let azure = AzureMock::start().await;
    let first = azure.set_secret("db-password", "first");
    azure.set_secret("db-password", "second");
    let ctx = context();

    let fetched = fetch(&ctx, &azure, "db-password", Some(&first))
        .await
        .expect("fetch");

    assert_eq!(fetched.value.as_str(), "first");
    assert_eq!(fetched.version.as_deref(), Some(first.as_str()));
}

#[tokio::test]
async fn name_is_percent_encoded() {
    let azure = AzureMock::start().await;
    azure.set_secret("a/b c?", "odd name");
    let ctx = context();

    let fetched = fetch(&ctx, &azure, "a/b c?", None).await.expect("fetch");

    assert_eq!(fetched.value.as_str(), "odd name");
}

#[tokio::test]
async fn token_is_cached_across_fetches() {
    let azure = AzureMock::start().await;
    azure.set_secret("one", "1");
    azure.set_secret("two", "2");
    let ctx = context();

    for name in ["one", "two", "one"] {
        fetch(&ctx, &azure, name, None).await.expect("fetch");
    }

    assert_eq!(azure.token_requests(), 1);
    assert_eq!(azure.secret_requests(), 3);
}

#[tokio::test]
async fn revoked_token_is_replaced_once() {
    let azure = AzureMock::start().await;
    azure.set_secret("db-password", "hunter2");
    let ctx = context();
    fetch(&ctx, &azure, "db-password", None)
        .await
        .expect("first fetch");
    azure.revoke_tokens();

    let fetched = fetch(&ctx, &azure, "db-password", None)
        .await
        .expect("fetch after revocation");

    assert_eq!(fetched.value.as_str(), "hunter2");
    assert_eq!(azure.token_requests(), 2);
    assert_eq!(azure.unauthorized_responses(), 1);
    assert_eq!(azure.secret_requests(), 3);
}

#[tokio::test]
async fn second_unauthorized_is_access_denied() {
    let azure = AzureMock::start().await;
    azure.set_secret("db-password", "hunter2");
    azure.set_reject_tokens(true);
    let ctx = context();

    let error = fetch(&ctx, &azure, "db-password", None)
        .await
        .err()
        .expect("fetch fails");

    assert_eq!(error.kind, FailureKind::AccessDenied, "{}", error.message);
    assert!(error.message.contains("Unauthorized"), "{}", error.message);
    assert!(error.message.contains("401"), "{}", error.message);
    assert_eq!(azure.secret_requests(), 2);
    assert_eq!(azure.token_requests(), 2);
    assert_no_secrets(&error, &["hunter2"]);
}

#[tokio::test]
async fn rejected_token_is_not_kept() {
    let azure = AzureMock::start().await;
    azure.set_secret("db-password", "hunter2");
    azure.set_reject_tokens(true);
    let ctx = context();
    fetch(&ctx, &azure, "db-password", None)
        .await
        .err()
        .expect("fetch fails");
    azure.set_reject_tokens(false);

    fetch(&ctx, &azure, "db-password", None)
        .await
        .expect("fetch after the vault accepts tokens again");

    assert_eq!(azure.token_requests(), 3);
}

#[tokio::test]
async fn throttled_with_retry_after() {
    let azure = AzureMock::start().await;
    azure.set_secret("db-password", "hunter2");
    azure.throttle_next(1, 7);
    let ctx = context();

    let error = fetch(&ctx, &azure, "db-password", None)
        .await
        .err()
        .expect("fetch fails");

    assert_eq!(error.kind, FailureKind::Throttled, "{}", error.message);
    assert_eq!(error.retry_after, Some(Duration::from_secs(7)));
    assert!(error.message.contains("Throttled"), "{}", error.message);
    assert_no_secrets(&error, &["hunter2"]);

    let fetched = fetch(&ctx, &azure, "db-password", None)
        .await
        .expect("fetch after the throttle ends");
    assert_eq!(fetched.value.as_str(), "hunter2");
}

#[tokio::test]
async fn disabled_secret_is_disabled() {
    let azure = AzureMock::start().await;
    azure.set_secret("db-password", "hunter2");
    azure.set_enabled("db-password", None, false);
    let ctx = context();

    let error = fetch(&ctx, &azure, "db-password", None)
        .await
        .err()
        .expect("fetch fails");

    assert_eq!(error.kind, FailureKind::Disabled, "{}", error.message);
    assert!(
        error.message.contains("SecretDisabled"),
        "{}",
        error.message
    );
    assert_no_secrets(&error, &["hunter2"]);
}

#[tokio::test]
async fn disabled_old_version_leaves_current_readable() {
    let azure = AzureMock::start().await;
    let old = azure.set_secret("db-password", "old");
    azure.set_secret("db-password", "new");
    azure.set_enabled("db-password", Some(&old), false);
    let ctx = context();

    let current = fetch(&ctx, &azure, "db-password", None)
        .await
        .expect("fetch current");
    let error = fetch(&ctx, &azure, "db-password", Some(&old))
        .await
        .err()
        .expect("fetch old fails");

    assert_eq!(current.value.as_str(), "new");
    assert_eq!(error.kind, FailureKind::Disabled, "{}", error.message);
}

#[tokio::test]
async fn missing_secret_is_not_found() {
    let azure = AzureMock::start().await;
    let ctx = context();

    let error = fetch(&ctx, &azure, "no-such-secret", None)
        .await
        .err()
        .expect("fetch fails");

    assert_eq!(error.kind, FailureKind::NotFound, "{}", error.message);
    assert!(
        error.message.contains("SecretNotFound"),
        "{}",
        error.message
    );
    assert!(error.message.contains("404"), "{}", error.message);
}

#[tokio::test]
async fn missing_version_is_not_found() {
    let azure = AzureMock::start().await;
    azure.set_secret("db-password", "hunter2");
    let ctx = context();

    let error = fetch(
        &ctx,
        &azure,
        "db-password",
        Some("0123456789abcdef0123456789abcdef"),
    )
    .await
    .err()
    .expect("fetch fails");

    assert_eq!(error.kind, FailureKind::NotFound, "{}", error.message);
}

#[tokio::test]
async fn forbidden_secret_is_access_denied() {
    let azure = AzureMock::start().await;
    azure.set_secret("db-password", "hunter2");
    azure.forbid("db-password");
    let ctx = context();

    let error = fetch(&ctx, &azure, "db-password", None)
        .await
        .err()
        .expect("fetch fails");

    assert_eq!(error.kind, FailureKind::AccessDenied, "{}", error.message);
    assert!(error.message.contains("Forbidden"), "{}", error.message);
    assert!(error.message.contains(CLIENT_ID), "{}", error.message);
    assert_no_secrets(&error, &["hunter2"]);
}

#[tokio::test]
async fn bad_client_secret_is_access_denied() {
    let azure = AzureMock::start().await;
    azure.set_secret("db-password", "hunter2");
    let ctx = context();
    let wrong_secret = "kg~WrongClientSecret.9Xy";

    let error = fetch_with_secret(&ctx, &azure, wrong_secret, "db-password", None)
        .await
        .err()
        .expect("fetch fails");

    assert_eq!(error.kind, FailureKind::AccessDenied, "{}", error.message);
    assert!(
        error.message.contains("invalid_client"),
        "{}",
        error.message
    );
    assert!(error.message.contains("AADSTS7000215"), "{}", error.message);
    assert!(
        !error.message.contains("Trace ID"),
        "only the first line of the description is kept: {}",
        error.message
    );
    assert!(!error.message.contains(wrong_secret), "{}", error.message);
    assert_no_secrets(&error, &["hunter2"]);
    assert_eq!(azure.secret_requests(), 0);
}

#[tokio::test]
async fn unknown_tenant_is_access_denied() {
    let azure = AzureMock::start().await;
    let ctx = context();

    let error = azure::fetch(
        &ctx,
        "another-tenant",
        CLIENT_ID,
        Some(&azure.url()),
        CLIENT_SECRET,
        &azure.url(),
        "db-password",
        None,
    )
    .await
    .err()
    .expect("fetch fails");

    assert_eq!(error.kind, FailureKind::AccessDenied, "{}", error.message);
    assert!(
        error.message.contains("invalid_request"),
        "{}",
        error.message
    );
    assert_no_secrets(&error, &[]);
}

#[tokio::test]
async fn rotated_client_secret_gets_new_token() {
    let azure = AzureMock::start().await;
    azure.set_secret("db-password", "hunter2");
    let ctx = context();
    fetch(&ctx, &azure, "db-password", None)
        .await
        .expect("fetch");

    let error = fetch_with_secret(&ctx, &azure, "kg~Rotated.1", "db-password", None)
        .await
        .err()
        .expect("a changed client secret does not reuse the cached token");

    assert_eq!(error.kind, FailureKind::AccessDenied, "{}", error.message);
    assert_eq!(azure.token_requests(), 2);
}

#[tokio::test]
async fn empty_name_is_misconfigured() {
    let azure = AzureMock::start().await;
    let ctx = context();

    let error = fetch(&ctx, &azure, "", None)
        .await
        .err()
        .expect("fetch fails");

    assert_eq!(error.kind, FailureKind::Misconfigured, "{}", error.message);
    assert_eq!(azure.token_requests(), 0);
}
