use super::*;
use crate::error::VaultError;
use crate::vault::MAX_SECRET_VALUE_BYTES;

#[test]
fn put_assigns_versions_in_order() {
    let vault = memory_vault();
    for expected in 1..=3 {
        let metadata = vault
            .put_secret(&project(), "db", &text(&format!("v{expected}")))
            .unwrap();
        assert_eq!(metadata.current_version, expected);
        assert_eq!(metadata.name, "db");
    }
}

#[test]
fn read_returns_latest_and_old_versions() {
    let vault = memory_vault();
    for value in ["one", "two", "three"] {
        vault.put_secret(&project(), "db", &text(value)).unwrap();
    }

    let (latest, metadata) = vault.read_secret(&project(), "db", None).unwrap();
    assert_eq!(latest.as_str(), Some("three"));
    assert_eq!(metadata.current_version, 3);

    let (old, metadata) = vault.read_secret(&project(), "db", Some(1)).unwrap();
    assert_eq!(old.as_str(), Some("one"));
    assert_eq!(
        metadata.current_version, 3,
        "metadata describes the latest version"
    );

    let (middle, _) = vault.read_secret(&project(), "db", Some(2)).unwrap();
    assert_eq!(middle.as_str(), Some("two"));
}

#[test]
fn read_missing_version_names_latest() {
    let vault = memory_vault();
    vault.put_secret(&project(), "db", &text("one")).unwrap();
    vault.put_secret(&project(), "db", &text("two")).unwrap();

    for version in [0, 3, u32::MAX] {
        let error = vault
            .read_secret(&project(), "db", Some(version))
            .unwrap_err();
        assert!(
            matches!(&error, VaultError::VersionNotFound { version: v, latest: 2, name, .. } if *v == version && name == "db"),
            "{error:?}"
        );
    }
}

#[test]
fn read_missing_secret_is_not_found() {
    let vault = memory_vault();
    let error = vault.read_secret(&project(), "absent", None).unwrap_err();
    assert!(
        matches!(&error, VaultError::SecretNotFound { name, project: p } if name == "absent" && *p == project())
    );
    assert_eq!(
        error.to_string(),
        "secret \"absent\" not found in project acme/prod"
    );

    let error = vault.secret_metadata(&project(), "absent").unwrap_err();
    assert!(matches!(error, VaultError::SecretNotFound { .. }));
}

#[test]
fn values_keep_exact_bytes() {
    let vault = memory_vault();
    let binary: Vec<u8> = (0..=255u8).collect();
    let largest = vec![0x42; MAX_SECRET_VALUE_BYTES];
    let cases: [(&str, Vec<u8>); 3] = [
        ("empty", Vec::new()),
        ("binary", binary),
        ("largest", largest),
    ];
    for (name, bytes) in cases {
        vault
            .put_secret(&project(), name, &SecretValue::from_bytes(bytes.clone()))
            .unwrap();
        let (value, _) = vault.read_secret(&project(), name, None).unwrap();
        assert_eq!(value.as_bytes(), bytes.as_slice(), "{name}");
    }
}

#[test]
fn oversized_value_is_rejected() {
    let vault = memory_vault();
    let value = SecretValue::from_bytes(vec![0; MAX_SECRET_VALUE_BYTES + 1]);
    let error = vault.put_secret(&project(), "big", &value).unwrap_err();
    assert!(
        matches!(
            error,
            VaultError::ValueTooLarge {
                size: 65_537,
                max: 65_536
            }
        ),
        "{error:?}"
    );
    assert!(matches!(
        vault.secret_metadata(&project(), "big"),
        Err(VaultError::SecretNotFound { .. })
    ));
}

#[test]
fn metadata_keeps_created_time() {
    let vault = memory_vault();
    let first = vault.put_secret(&project(), "db", &text("one")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let second = vault.put_secret(&project(), "db", &text("two")).unwrap();

    assert_eq!(second.created_at_ms, first.created_at_ms);
    assert!(second.updated_at_ms > first.updated_at_ms);
    assert!(
        first.created_at_ms > 1_600_000_000_000,
        "milliseconds since 1970"
    );
    assert_eq!(vault.secret_metadata(&project(), "db").unwrap(), second);
}

#[test]
fn names_are_exact_and_case_sensitive() {
    let vault = memory_vault();
    let names = ["db/password", "with space", "100%", "DB", "db", "db "];
    for (index, name) in names.iter().enumerate() {
        vault
            .put_secret(&project(), name, &text(&index.to_string()))
            .unwrap();
    }
    for (index, name) in names.iter().enumerate() {
        let (value, metadata) = vault.read_secret(&project(), name, None).unwrap();
        assert_eq!(value.as_str(), Some(index.to_string().as_str()), "{name:?}");
        assert_eq!(metadata.name, *name);
        assert_eq!(metadata.current_version, 1, "{name:?}");
    }
}

#[test]
fn projects_and_accounts_are_isolated() {
    let vault = memory_vault();
    let places = [
        ("acme", "prod"),
        ("acme", "dev"),
        ("globex", "prod"),
        ("acme-p", "rod"),
    ];
    for (account, project) in places {
        let project = ProjectRef::new(account, project).unwrap();
        vault
            .put_secret(&project, "db", &text(&project.to_string()))
            .unwrap();
    }
    for (account, project) in places {
        let project = ProjectRef::new(account, project).unwrap();
        let (value, metadata) = vault.read_secret(&project, "db", None).unwrap();
        assert_eq!(value.as_str(), Some(project.to_string().as_str()));
        assert_eq!(metadata.current_version, 1);
        assert_eq!(vault.list_secrets(&project, None, 10).unwrap().len(), 1);
    }
}

#[test]
fn invalid_inputs_are_rejected() {
    let vault = memory_vault();
    let error = vault
        .put_secret(&project(), "bad\nname", &text("v"))
        .unwrap_err();
    assert!(matches!(error, VaultError::InvalidName { .. }), "{error:?}");

    // The fields of ProjectRef are public, so the vault validates them again.
    let unchecked = ProjectRef {
        account: "Not Valid".to_owned(),
        project: "prod".to_owned(),
    };
    let error = vault.put_secret(&unchecked, "db", &text("v")).unwrap_err();
    assert!(
        matches!(error, VaultError::InvalidAccount { .. }),
        "{error:?}"
    );
    assert!(matches!(
        vault.read_secret(&unchecked, "db", None),
        Err(VaultError::InvalidAccount { .. })
    ));
    assert!(matches!(
        vault.list_secrets(&unchecked, None, 1),
        Err(VaultError::InvalidAccount { .. })
    ));

    let huge_project = ProjectRef {
        account: "acme".to_owned(),
        project: "p".repeat(70_000),
    };
    let error = vault.secret_metadata(&huge_project, "db").unwrap_err();
    assert!(
        matches!(error, VaultError::InvalidProject { .. }),
        "{error:?}"
    );
}

#[test]
fn store_accessor_returns_the_store() {
    let store: Arc<dyn KvStore> = Arc::new(MemStore::new());
    let vault = Vault::new(Arc::clone(&store), MasterKey::generate());
    assert!(Arc::ptr_eq(vault.store(), &store));
    assert_eq!(format!("{vault:?}"), "Vault(keys REDACTED)");
}
