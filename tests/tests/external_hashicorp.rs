//! The HashiCorp Vault client against the mock Vault server: KV v2 reads
//! with a token and with AppRole, and how Vault's errors map to failure kinds.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use keygate_gateway::external::connection::VaultAuth;
use keygate_gateway::external::hashicorp;
use keygate_gateway::external::http::{ClientSettings, HttpClient};
use keygate_gateway::external::tokens::TokenCache;
use keygate_gateway::external::{FailureKind, Fetched, ProviderContext, ProviderError};
use keygate_tests::vault_mock::VaultMock;
use keygate_tests::JwksServer;
use serde_json::{json, Value};

const TOKEN: &str = "hvs.test-root-token-5f2a";
const ROLE_ID: &str = "role-6d1e";
const SECRET_ID: &str = "secret-id-93c7b1";
const DB_PASSWORD: &str = "pw-db-7731";

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

fn token_auth() -> VaultAuth<String> {
    VaultAuth::Token {
        token: "stored elsewhere".to_owned(),
    }
}

fn approle_auth(mount: Option<&str>) -> VaultAuth<String> {
    VaultAuth::Approle {
        role_id: ROLE_ID.to_owned(),
        secret_id: "stored elsewhere".to_owned(),
        mount: mount.map(str::to_owned),
    }
}

/// Starts a mock Vault with `TOKEN`, the AppRole role at `approle`, and
/// secret `app/db` (version 1) in mount `secret`.
async fn vault() -> VaultMock {
    let vault = VaultMock::start().await;
    vault.add_token(TOKEN);
    vault.add_approle("approle", ROLE_ID, SECRET_ID, Duration::from_secs(3600));
    vault.put(
        "secret",
        "app/db",
        json!({"username": "app", "password": DB_PASSWORD, "port": 5432, "tls": {"mode": "verify-full"}}),
    );
    vault
}

/// A read with one set of inputs; tests change the fields they exercise.
struct Read<'a> {
    address: String,
    namespace: Option<&'a str>,
    auth: VaultAuth<String>,
    credential: &'a str,
    mount: &'a str,
    path: &'a str,
    key: Option<&'a str>,
    version: Option<u32>,
}

impl<'a> Read<'a> {
    fn token(vault: &VaultMock) -> Read<'a> {
        Read {
            address: vault.url(),
            namespace: None,
            auth: token_auth(),
            credential: TOKEN,
            mount: "secret",
            path: "app/db",
            key: Some("password"),
            version: None,
        }
    }

    fn approle(vault: &VaultMock) -> Read<'a> {
        Read {
            auth: approle_auth(None),
            credential: SECRET_ID,
            ..Read::token(vault)
        }
    }

    async fn send(&self, ctx: &ProviderContext) -> Result<Fetched, ProviderError> {
        hashicorp::fetch(
            ctx,
            &self.address,
            self.namespace,
            &self.auth,
            self.credential,
            self.mount,
            self.path,
            self.key,
            self.version,
        )
        .await
    }

    /// Sends the read and returns its failure, after checking that the
    /// message contains none of the credentials or secret values.
    async fn failure(&self, ctx: &ProviderContext, vault: &VaultMock) -> ProviderError {
        let error = match self.send(ctx).await {
            Ok(fetched) => panic!(
                "the read succeeded with version {:?}, a failure was expected",
                fetched.version
            ),
            Err(error) => error,
        };
        assert_no_secrets(&error, vault);
        error
    }
}

/// Checks that `error` contains no token, secret id or secret value.
fn assert_no_secrets(error: &ProviderError, vault: &VaultMock) {
    let mut secrets = vec![
        TOKEN.to_owned(),
        SECRET_ID.to_owned(),
        DB_PASSWORD.to_owned(),
    ];
    secrets.extend(vault.issued_tokens());
    for secret in secrets {
        assert!(
            !error.message.contains(&secret),
            "the message {:?} contains the secret {secret:?}",
            error.message
        );
    }
}

#[tokio::test]
async fn token_read_with_key() {
    let vault = vault().await;
    let ctx = context();

    let fetched = Read::token(&vault).send(&ctx).await.expect("read succeeds");
    assert_eq!(fetched.value.as_str(), DB_PASSWORD);
    assert_eq!(fetched.version.as_deref(), Some("1"));

    let port = Read {
        key: Some("port"),
        ..Read::token(&vault)
    };
    let fetched = port.send(&ctx).await.expect("read succeeds");
    assert_eq!(fetched.value.as_str(), "5432");

    let object = Read {
        key: Some("tls"),
        ..Read::token(&vault)
    };
    let fetched = object.send(&ctx).await.expect("read succeeds");
    assert_eq!(fetched.value.as_str(), r#"{"mode":"verify-full"}"#);
    assert_eq!(vault.reads(), 3);
    assert_eq!(vault.logins(), 0);
}

#[tokio::test]
async fn token_read_without_key() {
    let vault = vault().await;
    let ctx = context();
    let read = Read {
        key: None,
        ..Read::token(&vault)
    };

    let fetched = read.send(&ctx).await.expect("read succeeds");

    let value: Value = serde_json::from_str(&fetched.value).expect("the value is JSON");
    assert_eq!(
        value,
        json!({"username": "app", "password": DB_PASSWORD, "port": 5432, "tls": {"mode": "verify-full"}})
    );
    assert!(
        !fetched.value.contains(' '),
        "not compact: {}",
        fetched.value.as_str()
    );
    assert!(
        !fetched.value.contains('\n'),
        "not compact: {}",
        fetched.value.as_str()
    );
    assert_eq!(fetched.version.as_deref(), Some("1"));
}

#[tokio::test]
async fn specific_version_read() {
    let vault = vault().await;
    vault.put("secret", "app/db", json!({"password": "pw-rotated"}));
    let ctx = context();

    let first = Read {
        version: Some(1),
        ..Read::token(&vault)
    };
    let fetched = first.send(&ctx).await.expect("version 1 read succeeds");
    assert_eq!(fetched.value.as_str(), DB_PASSWORD);
    assert_eq!(fetched.version.as_deref(), Some("1"));

    let fetched = Read::token(&vault)
        .send(&ctx)
        .await
        .expect("current read succeeds");
    assert_eq!(fetched.value.as_str(), "pw-rotated");
    assert_eq!(fetched.version.as_deref(), Some("2"));
}

#[tokio::test]
async fn path_segments_are_percent_encoded() {
    let vault = vault().await;
    vault.put(
        "kv/team a",
        "my app/db key+1",
        json!({"password": "pw-spaces"}),
    );
    let ctx = context();
    let read = Read {
        mount: "/kv/team a/",
        path: "my app/db key+1",
        ..Read::token(&vault)
    };

    let fetched = read.send(&ctx).await.expect("read succeeds");

    assert_eq!(fetched.value.as_str(), "pw-spaces");
}

#[tokio::test]
async fn invalid_path_segments_are_rejected() {
    let vault = vault().await;
    let ctx = context();
    for (mount, path) in [
        ("secret", "app/../db"),
        ("secret", "app//db"),
        ("", "app/db"),
        ("secret", ""),
    ] {
        let read = Read {
            mount,
            path,
            ..Read::token(&vault)
        };
        let error = read.failure(&ctx, &vault).await;
        assert_eq!(
            error.kind,
            FailureKind::Misconfigured,
            "{mount:?} {path:?}: {error}"
        );
    }
    assert_eq!(
        vault.requests(),
        0,
        "no request is sent for an invalid path"
    );
}

#[tokio::test]
async fn approle_token_cached_across_reads() {
    let vault = vault().await;
    let ctx = context();

    for _ in 0..3 {
        let fetched = Read::approle(&vault)
            .send(&ctx)
            .await
            .expect("read succeeds");
        assert_eq!(fetched.value.as_str(), DB_PASSWORD);
    }

    assert_eq!(vault.logins(), 1);
    assert_eq!(vault.reads(), 3);
}

#[tokio::test]
async fn approle_custom_mount() {
    let vault = vault().await;
    vault.add_approle("ci-approle", ROLE_ID, SECRET_ID, Duration::from_secs(3600));
    let ctx = context();
    let read = Read {
        auth: approle_auth(Some("ci-approle")),
        ..Read::approle(&vault)
    };

    let fetched = read.send(&ctx).await.expect("read succeeds");

    assert_eq!(fetched.value.as_str(), DB_PASSWORD);
    assert_eq!(vault.logins(), 1);
}

#[tokio::test]
async fn revoked_token_logs_in_again_once() {
    let vault = vault().await;
    let ctx = context();
    Read::approle(&vault)
        .send(&ctx)
        .await
        .expect("first read succeeds");
    vault.revoke_issued_tokens();

    let fetched = Read::approle(&vault)
        .send(&ctx)
        .await
        .expect("read after revocation succeeds");

    assert_eq!(fetched.value.as_str(), DB_PASSWORD);
    assert_eq!(vault.logins(), 2);
    assert_eq!(
        vault.reads(),
        3,
        "one read, then the rejected read and its retry"
    );
    Read::approle(&vault)
        .send(&ctx)
        .await
        .expect("the new token is cached");
    assert_eq!(vault.logins(), 2);
}

#[tokio::test]
async fn expired_lease_logs_in_again() {
    let vault = VaultMock::start().await;
    // A lease shorter than the cache's expiry margin is never reused.
    vault.add_approle("approle", ROLE_ID, SECRET_ID, Duration::from_secs(30));
    vault.put("secret", "app/db", json!({"password": DB_PASSWORD}));
    let ctx = context();

    Read::approle(&vault)
        .send(&ctx)
        .await
        .expect("first read succeeds");
    Read::approle(&vault)
        .send(&ctx)
        .await
        .expect("second read succeeds");

    assert_eq!(vault.logins(), 2);
    assert_eq!(vault.reads(), 2);
}

#[tokio::test]
async fn permission_denied_is_access_denied() {
    let vault = vault().await;
    vault.forbid("secret", "app/db");
    let ctx = context();

    let error = Read::token(&vault).failure(&ctx, &vault).await;

    assert_eq!(error.kind, FailureKind::AccessDenied);
    assert!(error.message.contains("permission denied"), "{error}");
    assert!(error.message.contains("secret/data/app/db"), "{error}");
}

#[tokio::test]
async fn unknown_token_is_access_denied() {
    let vault = vault().await;
    let ctx = context();
    let read = Read {
        credential: "hvs.not-a-valid-token",
        ..Read::token(&vault)
    };

    let error = read.failure(&ctx, &vault).await;

    assert_eq!(error.kind, FailureKind::AccessDenied);
    assert!(!error.message.contains("hvs.not-a-valid-token"), "{error}");
}

#[tokio::test]
async fn approle_permission_denied_with_fresh_token() {
    let vault = vault().await;
    vault.forbid("secret", "app/db");
    let ctx = context();

    let error = Read::approle(&vault).failure(&ctx, &vault).await;

    assert_eq!(error.kind, FailureKind::AccessDenied);
    assert_eq!(vault.logins(), 1, "a token from this login is not replaced");
    assert_eq!(vault.reads(), 1);
}

#[tokio::test]
async fn approle_permission_denied_with_cached_token() {
    let vault = vault().await;
    vault.put("secret", "app/other", json!({"password": "pw-other"}));
    vault.forbid("secret", "app/db");
    let ctx = context();
    let allowed = Read {
        path: "app/other",
        ..Read::approle(&vault)
    };
    allowed.send(&ctx).await.expect("allowed read succeeds");

    let error = Read::approle(&vault).failure(&ctx, &vault).await;

    assert_eq!(error.kind, FailureKind::AccessDenied);
    assert_eq!(vault.logins(), 2, "one login again for the cached token");
    assert_eq!(vault.reads(), 3);
}

#[tokio::test]
async fn missing_secret_is_not_found() {
    let vault = vault().await;
    let ctx = context();
    let read = Read {
        path: "app/missing",
        ..Read::token(&vault)
    };

    let error = read.failure(&ctx, &vault).await;

    assert_eq!(error.kind, FailureKind::NotFound);
    assert!(error.message.contains("secret/data/app/missing"), "{error}");
}

#[tokio::test]
async fn missing_version_is_not_found() {
    let vault = vault().await;
    let ctx = context();
    let read = Read {
        version: Some(7),
        ..Read::token(&vault)
    };

    let error = read.failure(&ctx, &vault).await;

    assert_eq!(error.kind, FailureKind::NotFound);
    assert!(error.message.contains("version 7"), "{error}");
}

#[tokio::test]
async fn unknown_mount_is_not_found() {
    let vault = vault().await;
    let ctx = context();
    let read = Read {
        mount: "nomount",
        ..Read::token(&vault)
    };

    let error = read.failure(&ctx, &vault).await;

    assert_eq!(error.kind, FailureKind::NotFound);
    assert!(error.message.contains("route entry not found"), "{error}");
}

#[tokio::test]
async fn deleted_version_is_disabled() {
    let vault = vault().await;
    vault.put("secret", "app/db", json!({"password": "pw-2"}));
    vault.delete_version("secret", "app/db", 1);
    let ctx = context();
    let read = Read {
        version: Some(1),
        ..Read::token(&vault)
    };

    let error = read.failure(&ctx, &vault).await;

    assert_eq!(error.kind, FailureKind::Disabled);
    assert!(error.message.contains("version 1"), "{error}");
    assert!(error.message.contains("was deleted"), "{error}");
    let current = Read::token(&vault)
        .send(&ctx)
        .await
        .expect("version 2 is readable");
    assert_eq!(current.value.as_str(), "pw-2");
}

#[tokio::test]
async fn deleted_current_version_is_disabled() {
    let vault = vault().await;
    vault.delete_version("secret", "app/db", 1);
    let ctx = context();

    let error = Read::token(&vault).failure(&ctx, &vault).await;

    assert_eq!(error.kind, FailureKind::Disabled);
    assert!(error.message.contains("version 1"), "{error}");
}

#[tokio::test]
async fn destroyed_version_is_disabled() {
    let vault = vault().await;
    vault.destroy_version("secret", "app/db", 1);
    let ctx = context();
    let read = Read {
        version: Some(1),
        ..Read::token(&vault)
    };

    let error = read.failure(&ctx, &vault).await;

    assert_eq!(error.kind, FailureKind::Disabled);
    assert!(error.message.contains("destroyed"), "{error}");
}

#[tokio::test]
async fn missing_key_names_existing_keys() {
    let vault = vault().await;
    let ctx = context();
    let read = Read {
        key: Some("api_key"),
        ..Read::token(&vault)
    };

    let error = read.failure(&ctx, &vault).await;

    assert_eq!(error.kind, FailureKind::NotFound);
    assert!(error.message.contains("\"api_key\""), "{error}");
    for key in ["username", "password", "port", "tls"] {
        assert!(
            error.message.contains(&format!("\"{key}\"")),
            "{key} missing in {error}"
        );
    }
    assert!(!error.message.contains("verify-full"), "{error}");
    assert!(!error.message.contains("5432"), "{error}");
}

#[tokio::test]
async fn namespace_header_is_sent() {
    let vault = vault().await;
    vault.set_namespace(Some("team-a"));
    let ctx = context();

    let token_read = Read {
        namespace: Some("team-a"),
        ..Read::token(&vault)
    };
    let fetched = token_read.send(&ctx).await.expect("token read succeeds");
    assert_eq!(fetched.value.as_str(), DB_PASSWORD);

    let approle_read = Read {
        namespace: Some("team-a"),
        ..Read::approle(&vault)
    };
    let fetched = approle_read
        .send(&ctx)
        .await
        .expect("AppRole read succeeds");
    assert_eq!(fetched.value.as_str(), DB_PASSWORD);
    assert_eq!(vault.logins(), 1);
}

#[tokio::test]
async fn wrong_namespace_is_access_denied() {
    let vault = vault().await;
    vault.set_namespace(Some("team-a"));
    let ctx = context();

    let error = Read::token(&vault).failure(&ctx, &vault).await;
    assert_eq!(error.kind, FailureKind::AccessDenied);

    let other = Read {
        namespace: Some("team-b"),
        ..Read::token(&vault)
    };
    let error = other.failure(&ctx, &vault).await;
    assert_eq!(error.kind, FailureKind::AccessDenied);
    assert!(error.message.contains("team-b"), "{error}");
}

#[tokio::test]
async fn sealed_vault_is_provider_error() {
    let vault = vault().await;
    vault.set_sealed(true);
    let ctx = context();

    for read in [Read::token(&vault), Read::approle(&vault)] {
        let error = read.failure(&ctx, &vault).await;
        assert_eq!(error.kind, FailureKind::ProviderError);
        assert!(error.message.contains("503"), "{error}");
        assert!(error.message.contains("Vault is sealed"), "{error}");
    }
}

#[tokio::test]
async fn rate_limit_is_throttled() {
    let vault = vault().await;
    vault.set_rate_limited(Some(Duration::from_secs(2)));
    let ctx = context();

    for read in [Read::token(&vault), Read::approle(&vault)] {
        let error = read.failure(&ctx, &vault).await;
        assert_eq!(error.kind, FailureKind::Throttled);
        assert_eq!(error.retry_after, Some(Duration::from_secs(2)));
        assert!(
            error.message.contains("rate limit quota exceeded"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn wrong_secret_id_is_access_denied() {
    let vault = vault().await;
    let ctx = context();
    let read = Read {
        credential: "secret-id-wrong-4410",
        ..Read::approle(&vault)
    };

    let error = read.failure(&ctx, &vault).await;

    assert_eq!(error.kind, FailureKind::AccessDenied);
    assert!(
        error.message.contains("invalid role or secret ID"),
        "{error}"
    );
    assert!(!error.message.contains("secret-id-wrong-4410"), "{error}");
    assert_eq!(vault.reads(), 0);
}

#[tokio::test]
async fn wrong_role_id_is_access_denied() {
    let vault = vault().await;
    let ctx = context();
    let read = Read {
        auth: VaultAuth::Approle {
            role_id: "role-unknown".to_owned(),
            secret_id: "stored elsewhere".to_owned(),
            mount: None,
        },
        ..Read::approle(&vault)
    };

    let error = read.failure(&ctx, &vault).await;

    assert_eq!(error.kind, FailureKind::AccessDenied);
    assert!(
        error.message.contains("invalid role or secret ID"),
        "{error}"
    );
}

#[tokio::test]
async fn no_message_contains_credentials() {
    let vault = vault().await;
    vault.put("secret", "app/db", json!({"password": "pw-2"}));
    vault.delete_version("secret", "app/db", 1);
    vault.put("secret", "app/gone", json!({"password": DB_PASSWORD}));
    vault.destroy_version("secret", "app/gone", 1);
    vault.forbid("secret", "app/forbidden");
    let ctx = context();

    let failing_reads = [
        Read {
            version: Some(1),
            ..Read::token(&vault)
        },
        Read {
            path: "app/gone",
            ..Read::token(&vault)
        },
        Read {
            path: "app/forbidden",
            ..Read::token(&vault)
        },
        Read {
            path: "app/forbidden",
            ..Read::approle(&vault)
        },
        Read {
            path: "app/missing",
            ..Read::approle(&vault)
        },
        Read {
            key: Some("nope"),
            ..Read::approle(&vault)
        },
        Read {
            credential: "hvs.unknown",
            ..Read::token(&vault)
        },
        Read {
            namespace: Some("other"),
            ..Read::approle(&vault)
        },
    ];
    for read in &failing_reads {
        read.failure(&ctx, &vault).await;
    }
    vault.set_sealed(true);
    Read::approle(&vault).failure(&ctx, &vault).await;
    vault.set_sealed(false);
    vault.set_rate_limited(Some(Duration::from_secs(1)));
    Read::token(&vault).failure(&ctx, &vault).await;
}

#[tokio::test]
async fn closed_port_is_unreachable() {
    // Bind, then close, a loopback port so nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("local address")
        .port();
    let vault = VaultMock::start().await;
    let ctx = context();
    let read = Read {
        address: format!("http://127.0.0.1:{port}"),
        ..Read::token(&vault)
    };

    let error = read.failure(&ctx, &vault).await;

    assert_eq!(error.kind, FailureKind::Unreachable, "{error}");
}

#[tokio::test]
async fn body_that_is_not_json_is_invalid_response() {
    let server = JwksServer::start(&json!({})).await;
    server.set_answer(
        StatusCode::OK,
        Bytes::from_static(b"<html>proxy login</html>"),
    );
    let vault = VaultMock::start().await;
    let ctx = context();
    let read = Read {
        address: format!("http://{}", server.addr),
        ..Read::token(&vault)
    };

    let error = read.failure(&ctx, &vault).await;

    assert_eq!(error.kind, FailureKind::InvalidResponse, "{error}");
}

#[tokio::test]
async fn kv_version_1_shape_is_invalid_response() {
    let server = JwksServer::start(&json!({"data": {"password": DB_PASSWORD}})).await;
    let vault = VaultMock::start().await;
    let ctx = context();
    let read = Read {
        address: format!("http://{}", server.addr),
        ..Read::token(&vault)
    };

    let error = read.failure(&ctx, &vault).await;

    assert_eq!(error.kind, FailureKind::InvalidResponse, "{error}");
    assert!(error.message.contains("KV version 2"), "{error}");
}

#[tokio::test]
async fn login_without_client_token_is_invalid_response() {
    let server = JwksServer::start(&json!({"auth": null, "errors": []})).await;
    let vault = VaultMock::start().await;
    let ctx = context();
    let read = Read {
        address: format!("http://{}", server.addr),
        ..Read::approle(&vault)
    };

    let error = read.failure(&ctx, &vault).await;

    assert_eq!(error.kind, FailureKind::InvalidResponse, "{error}");
    assert_eq!(server.requests(), 1, "no read follows a failed login");
}
