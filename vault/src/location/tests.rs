use serde_json::json;

use super::*;

fn hosted(secret: &str) -> SecretLocation {
    SecretLocation::Hosted {
        secret: secret.to_owned(),
        json_key: None,
    }
}

fn aws() -> SecretLocation {
    SecretLocation::AwsSecretsManager {
        secret_id: "prod/db".to_owned(),
        version_id: None,
        version_stage: Some("AWSCURRENT".to_owned()),
        json_key: Some("password".to_owned()),
        connection: Some("aws-main".to_owned()),
    }
}

fn azure(vault_url: &str) -> SecretLocation {
    SecretLocation::AzureKeyVault {
        vault_url: vault_url.to_owned(),
        name: "db-password".to_owned(),
        version: None,
        json_key: None,
        connection: None,
    }
}

fn gcp(version: Option<&str>) -> SecretLocation {
    SecretLocation::GcpSecretManager {
        project: "my-project".to_owned(),
        secret: "db".to_owned(),
        version: version.map(str::to_owned),
        json_key: None,
        connection: None,
    }
}

fn hashicorp(version: Option<u32>) -> SecretLocation {
    SecretLocation::HashicorpVault {
        mount: "secret".to_owned(),
        path: "apps/db".to_owned(),
        key: Some("password".to_owned()),
        version,
        connection: None,
    }
}

/// Asserts an `InvalidLocation` error on `field` whose value is `value`.
fn assert_rejected(location: &SecretLocation, field: &str, value: &str) {
    let error = location.validate().unwrap_err();
    match &error {
        VaultError::InvalidLocation {
            field: actual_field,
            value: actual_value,
            ..
        } => {
            assert_eq!(*actual_field, field, "{error}");
            assert_eq!(actual_value, value, "{error}");
        }
        other => panic!("expected InvalidLocation on {field}, got {other:?}"),
    }
    let message = error.to_string();
    assert!(message.contains(&format!("`{field}`")), "{message}");
}

#[test]
fn providers_have_snake_case_names() {
    assert_eq!(hosted("db").provider(), "hosted");
    assert_eq!(aws().provider(), "aws_secrets_manager");
    assert_eq!(
        azure("https://x.vault.azure.net").provider(),
        "azure_key_vault"
    );
    assert_eq!(gcp(None).provider(), "gcp_secret_manager");
    assert_eq!(hashicorp(None).provider(), "hashicorp_vault");
}

#[test]
fn json_uses_type_tag_and_skips_none() {
    let value = serde_json::to_value(hosted("db/password")).unwrap();
    assert_eq!(value, json!({"type": "hosted", "secret": "db/password"}));

    let value = serde_json::to_value(aws()).unwrap();
    assert_eq!(
        value,
        json!({
            "type": "aws_secrets_manager",
            "secret_id": "prod/db",
            "version_stage": "AWSCURRENT",
            "json_key": "password",
            "connection": "aws-main"
        })
    );
}

#[test]
fn json_round_trips_every_provider() {
    let locations = [
        hosted("db"),
        aws(),
        azure("https://x.vault.azure.net"),
        gcp(Some("latest")),
        hashicorp(Some(3)),
    ];
    for location in locations {
        let text = serde_json::to_string(&location).unwrap();
        let parsed: SecretLocation = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, location, "{text}");
        assert_eq!(
            location.provider(),
            serde_json::from_str::<serde_json::Value>(&text).unwrap()["type"]
        );
    }
}

#[test]
fn json_rejects_unknown_fields_and_types() {
    let unknown_field = serde_json::from_value::<SecretLocation>(
        json!({"type": "hosted", "secret": "db", "extra": 1}),
    );
    assert!(unknown_field.is_err());

    let unknown_type =
        serde_json::from_value::<SecretLocation>(json!({"type": "vaultwarden", "secret": "db"}));
    assert!(unknown_type.is_err());

    let missing_field =
        serde_json::from_value::<SecretLocation>(json!({"type": "aws_secrets_manager"}));
    assert!(missing_field.is_err());

    let parsed = serde_json::from_value::<SecretLocation>(
        json!({"type": "hosted", "secret": "db", "json_key": "a.b"}),
    );
    assert_eq!(
        parsed.unwrap(),
        SecretLocation::Hosted {
            secret: "db".into(),
            json_key: Some("a.b".into())
        }
    );
}

#[test]
fn valid_locations_pass() {
    let locations = [
        hosted("db/pass word%"),
        aws(),
        azure("https://x.vault.azure.net/"),
        azure("http://127.0.0.1:8200"),
        azure("http://localhost"),
        azure("HTTP://LOCALHOST:80/path"),
        azure("http://[::1]:9000"),
        gcp(None),
        gcp(Some("latest")),
        gcp(Some("1")),
        gcp(Some("42")),
        hashicorp(None),
        hashicorp(Some(1)),
    ];
    for location in locations {
        assert!(
            location.validate().is_ok(),
            "{location:?}: {:?}",
            location.validate()
        );
    }
}

#[test]
fn hosted_rejects_invalid_secret_name() {
    assert_rejected(&hosted(""), "secret", "");
    assert_rejected(&hosted("a\u{1}b"), "secret", "a\u{1}b");
    let location = SecretLocation::Hosted {
        secret: "db".into(),
        json_key: Some(String::new()),
    };
    assert_rejected(&location, "json_key", "");
}

#[test]
fn aws_rejects_bad_fields() {
    let mut location = aws();
    if let SecretLocation::AwsSecretsManager { secret_id, .. } = &mut location {
        secret_id.clear();
    }
    assert_rejected(&location, "secret_id", "");

    let both_versions = SecretLocation::AwsSecretsManager {
        secret_id: "s".into(),
        version_id: Some("v-1".into()),
        version_stage: Some("AWSCURRENT".into()),
        json_key: None,
        connection: None,
    };
    assert_rejected(&both_versions, "version_stage", "AWSCURRENT");

    let empty_connection = SecretLocation::AwsSecretsManager {
        secret_id: "s".into(),
        version_id: None,
        version_stage: None,
        json_key: None,
        connection: Some(String::new()),
    };
    assert_rejected(&empty_connection, "connection", "");
}

#[test]
fn azure_requires_https_except_loopback() {
    for url in [
        "http://x.vault.azure.net",
        "http://127.0.0.2",
        "http://localhost.evil.com",
        "http://[::2]",
    ] {
        assert_rejected(&azure(url), "vault_url", url);
    }
    for url in [
        "ftp://x.vault.azure.net",
        "x.vault.azure.net",
        "https://",
        "https://user@x.vault.azure.net",
        "",
    ] {
        assert_rejected(&azure(url), "vault_url", url);
    }
    let message = azure("http://x.vault.azure.net")
        .validate()
        .unwrap_err()
        .to_string();
    assert!(message.contains("must use https"), "{message}");
}

#[test]
fn azure_rejects_empty_name() {
    let location = SecretLocation::AzureKeyVault {
        vault_url: "https://x.vault.azure.net".into(),
        name: String::new(),
        version: None,
        json_key: None,
        connection: None,
    };
    assert_rejected(&location, "name", "");
}

#[test]
fn gcp_version_is_latest_or_positive() {
    for version in ["0", "00", "-1", "+1", "1.0", "Latest", "v1", " 1", ""] {
        assert_rejected(&gcp(Some(version)), "version", version);
    }
    let message = gcp(Some("v1")).validate().unwrap_err().to_string();
    assert!(
        message.contains("\"latest\" or a positive integer"),
        "{message}"
    );
}

#[test]
fn gcp_rejects_empty_project() {
    let location = SecretLocation::GcpSecretManager {
        project: String::new(),
        secret: "db".into(),
        version: None,
        json_key: None,
        connection: None,
    };
    assert_rejected(&location, "project", "");
}

#[test]
fn hashicorp_rejects_bad_fields() {
    assert_rejected(&hashicorp(Some(0)), "version", "0");

    let location = SecretLocation::HashicorpVault {
        mount: "secret".into(),
        path: String::new(),
        key: None,
        version: None,
        connection: None,
    };
    assert_rejected(&location, "path", "");

    let location = SecretLocation::HashicorpVault {
        mount: String::new(),
        path: "apps/db".into(),
        key: None,
        version: None,
        connection: None,
    };
    assert_rejected(&location, "mount", "");
}

#[test]
fn fields_reject_controls_and_long_values() {
    let long = "a".repeat(MAX_LOCATION_FIELD_BYTES + 1);
    let location = SecretLocation::HashicorpVault {
        mount: "secret".into(),
        path: long.clone(),
        key: None,
        version: None,
        connection: None,
    };
    assert_rejected(&location, "path", &long);

    let location = SecretLocation::HashicorpVault {
        mount: "sec\nret".into(),
        path: "p".into(),
        key: None,
        version: None,
        connection: None,
    };
    assert_rejected(&location, "mount", "sec\nret");
}

#[test]
fn external_ids_name_the_secret_at_its_provider() {
    assert_eq!(hosted("warehouse").external_id(), None);
    assert_eq!(aws().external_id().as_deref(), Some("prod/db"));
    assert_eq!(
        azure("https://kv.vault.azure.net/")
            .external_id()
            .as_deref(),
        Some("https://kv.vault.azure.net/secrets/db-password")
    );
    assert_eq!(
        gcp(Some("3")).external_id().as_deref(),
        Some("projects/my-project/secrets/db")
    );
    assert_eq!(
        hashicorp(Some(2)).external_id().as_deref(),
        Some("secret/apps/db")
    );
}
