use super::*;
use crate::error::{ErrorKind, VaultError};
use crate::location::SecretLocation;

fn hosted(secret: &str, json_key: Option<&str>) -> SecretLocation {
    SecretLocation::Hosted {
        secret: secret.to_owned(),
        json_key: json_key.map(str::to_owned),
    }
}

fn external_locations() -> Vec<SecretLocation> {
    vec![
        SecretLocation::AwsSecretsManager {
            secret_id: "prod/db".into(),
            version_id: None,
            version_stage: None,
            json_key: None,
            connection: None,
        },
        SecretLocation::AzureKeyVault {
            vault_url: "https://x.vault.azure.net".into(),
            name: "db".into(),
            version: None,
            json_key: None,
            connection: None,
        },
        SecretLocation::GcpSecretManager {
            project: "p".into(),
            secret: "db".into(),
            version: Some("latest".into()),
            json_key: None,
            connection: None,
        },
        SecretLocation::HashicorpVault {
            mount: "secret".into(),
            path: "db".into(),
            key: None,
            version: None,
            connection: None,
        },
    ]
}

#[test]
fn put_then_get_definition() {
    let vault = memory_vault();
    let stored = vault
        .put_definition(&project(), "db url", hosted("db/url", None))
        .unwrap();
    assert_eq!(stored.name, "db url");
    assert_eq!(stored.location, hosted("db/url", None));
    assert_eq!(stored.created_at_ms, stored.updated_at_ms);
    assert_eq!(vault.get_definition(&project(), "db url").unwrap(), stored);
}

#[test]
fn replace_keeps_created_time() {
    let vault = memory_vault();
    let first = vault
        .put_definition(&project(), "db", hosted("one", None))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let second = vault
        .put_definition(&project(), "db", hosted("two", Some("k")))
        .unwrap();

    assert_eq!(second.created_at_ms, first.created_at_ms);
    assert!(second.updated_at_ms > first.updated_at_ms);
    assert_eq!(
        vault.get_definition(&project(), "db").unwrap().location,
        hosted("two", Some("k"))
    );
    assert_eq!(
        vault.list_definitions(&project(), None, 10).unwrap().len(),
        1
    );
}

#[test]
fn external_definitions_are_stored() {
    let vault = memory_vault();
    for (index, location) in external_locations().into_iter().enumerate() {
        let name = format!("external-{index}");
        vault
            .put_definition(&project(), &name, location.clone())
            .unwrap();
        assert_eq!(
            vault.get_definition(&project(), &name).unwrap().location,
            location
        );
    }
}

#[test]
fn invalid_definitions_are_rejected() {
    let vault = memory_vault();
    let error = vault
        .put_definition(&project(), "db", hosted("bad\u{7f}", None))
        .unwrap_err();
    assert!(
        matches!(
            error,
            VaultError::InvalidLocation {
                field: "secret",
                ..
            }
        ),
        "{error:?}"
    );

    let error = vault
        .put_definition(&project(), "", hosted("db", None))
        .unwrap_err();
    assert!(matches!(error, VaultError::InvalidName { .. }), "{error:?}");

    let azure = SecretLocation::AzureKeyVault {
        vault_url: "http://example.com".into(),
        name: "db".into(),
        version: None,
        json_key: None,
        connection: None,
    };
    let error = vault.put_definition(&project(), "db", azure).unwrap_err();
    assert!(
        matches!(
            error,
            VaultError::InvalidLocation {
                field: "vault_url",
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.kind(), ErrorKind::InvalidInput);

    assert!(vault
        .list_definitions(&project(), None, 10)
        .unwrap()
        .is_empty());
}

#[test]
fn missing_definition_is_not_found() {
    let vault = memory_vault();
    let error = vault.get_definition(&project(), "absent").unwrap_err();
    assert!(
        matches!(&error, VaultError::DefinitionNotFound { name, .. } if name == "absent"),
        "{error:?}"
    );
    let error = vault.resolve(&project(), "absent").unwrap_err();
    assert!(
        matches!(error, VaultError::DefinitionNotFound { .. }),
        "{error:?}"
    );
}

#[test]
fn resolve_hosted_reads_latest() {
    let vault = memory_vault();
    vault
        .put_secret(&project(), "db/password", &text("old"))
        .unwrap();
    vault
        .put_secret(&project(), "db/password", &text("new"))
        .unwrap();
    vault
        .put_definition(&project(), "DB_PASSWORD", hosted("db/password", None))
        .unwrap();

    let resolved = vault.resolve(&project(), "DB_PASSWORD").unwrap();
    assert_eq!(resolved.value.as_str(), Some("new"));
    assert_eq!(resolved.definition, "DB_PASSWORD");
    assert_eq!(resolved.source_version, Some(2));

    let debug = format!("{resolved:?}");
    assert!(!debug.contains("new"), "{debug}");
    assert!(debug.contains("REDACTED"), "{debug}");
}

#[test]
fn resolve_hosted_without_secret_is_not_found() {
    let vault = memory_vault();
    vault
        .put_definition(&project(), "later", hosted("not-yet", None))
        .unwrap();
    let error = vault.resolve(&project(), "later").unwrap_err();
    assert!(
        matches!(&error, VaultError::SecretNotFound { name, .. } if name == "not-yet"),
        "{error:?}"
    );
}

#[test]
fn resolve_json_key_literal_then_nested() {
    let vault = memory_vault();
    let json = r#"{"a.b": "literal", "a": {"b": "nested", "c": {"d": 5}}, "user": "admin"}"#;
    vault.put_secret(&project(), "creds", &text(json)).unwrap();
    let cases = [
        ("a.b", "literal"),
        ("user", "admin"),
        ("a.c.d", "5"),
        ("a.c", r#"{"d":5}"#),
    ];
    for (key, expected) in cases {
        let name = format!("by-{key}");
        vault
            .put_definition(&project(), &name, hosted("creds", Some(key)))
            .unwrap();
        let resolved = vault.resolve(&project(), &name).unwrap();
        assert_eq!(resolved.value.as_str(), Some(expected), "{key}");
        assert_eq!(resolved.source_version, Some(1));
    }
}

#[test]
fn resolve_json_key_errors() {
    let vault = memory_vault();
    vault
        .put_secret(&project(), "creds", &text(r#"{"user": "admin"}"#))
        .unwrap();
    vault
        .put_secret(&project(), "plain", &text("hunter2"))
        .unwrap();
    vault
        .put_definition(&project(), "missing-key", hosted("creds", Some("password")))
        .unwrap();
    vault
        .put_definition(&project(), "not-json", hosted("plain", Some("password")))
        .unwrap();

    let error = vault.resolve(&project(), "missing-key").unwrap_err();
    assert!(
        matches!(&error, VaultError::JsonKeyNotFound { secret, key } if secret == "creds" && key == "password"),
        "{error:?}"
    );
    assert_eq!(error.kind(), ErrorKind::NotFound);

    let error = vault.resolve(&project(), "not-json").unwrap_err();
    assert!(
        matches!(&error, VaultError::ValueNotJsonObject { secret } if secret == "plain"),
        "{error:?}"
    );
    assert!(!error.to_string().contains("hunter2"), "{error}");
}

#[test]
fn resolve_external_is_not_supported() {
    let vault = memory_vault();
    for location in external_locations() {
        let provider = location.provider();
        vault
            .put_definition(&project(), provider, location)
            .unwrap();
        let error = vault.resolve(&project(), provider).unwrap_err();
        assert!(
            matches!(&error, VaultError::ProviderNotSupported { provider: p, definition } if *p == provider && definition == provider),
            "{error:?}"
        );
        assert_eq!(error.kind(), ErrorKind::NotSupported);
        assert!(error.to_string().contains(provider), "{error}");
    }
}
