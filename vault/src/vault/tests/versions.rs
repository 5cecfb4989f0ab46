use std::collections::BTreeMap;

use super::*;
use crate::error::{ErrorKind, VaultError};
use crate::vault::{MetadataUpdate, PutOptions, VaultOptions};

fn cas(version: u32) -> PutOptions {
    PutOptions { cas: Some(version) }
}

fn vault_keeping(max_versions: u32) -> Vault {
    Vault::with_options(
        Arc::new(MemStore::new()),
        MasterKey::generate(),
        VaultOptions {
            default_max_versions: max_versions,
            ..VaultOptions::default()
        },
    )
}

#[test]
fn check_and_set_sequence() {
    let vault = memory_vault();
    let first = vault
        .put_secret_with(&project(), "db", &text("one"), &cas(0))
        .unwrap();
    assert_eq!(first.version, 1);

    let error = vault
        .put_secret_with(&project(), "db", &text("again"), &cas(0))
        .unwrap_err();
    assert!(
        matches!(
            error,
            VaultError::CasMismatch {
                expected: 0,
                current: 1,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.kind(), ErrorKind::Conflict);
    let (value, metadata) = vault.read_secret(&project(), "db", None).unwrap();
    assert_eq!(
        value.as_str(),
        Some("one"),
        "a failed check-and-set changes nothing"
    );
    assert_eq!(metadata.current_version, 1);

    let second = vault
        .put_secret_with(&project(), "db", &text("two"), &cas(1))
        .unwrap();
    assert_eq!(second.version, 2);
    let error = vault
        .put_secret_with(&project(), "db", &text("stale"), &cas(1))
        .unwrap_err();
    assert!(error.to_string().contains("retry with cas=2"), "{error}");
}

#[test]
fn cas_on_missing_secret() {
    let vault = memory_vault();
    let error = vault
        .put_secret_with(&project(), "new", &text("v"), &cas(3))
        .unwrap_err();
    assert!(error.to_string().contains("(it does not exist)"), "{error}");
    assert!(vault.secret_metadata(&project(), "new").is_err());
}

#[test]
fn oldest_versions_beyond_the_maximum_are_purged() {
    let vault = vault_keeping(3);
    for n in 1..=5 {
        let written = vault
            .put_secret_with(
                &project(),
                "db",
                &text(&format!("v{n}")),
                &PutOptions::default(),
            )
            .unwrap();
        let expected_purged: Vec<u32> = if n > 3 { vec![n - 3] } else { vec![] };
        assert_eq!(written.purged_versions, expected_purged);
    }
    let metadata = vault.secret_metadata(&project(), "db").unwrap();
    assert_eq!(metadata.current_version, 5);
    assert_eq!(metadata.oldest_version, 3);
    assert_eq!(metadata.max_versions_in_force, 3);
    assert_eq!(
        metadata.versions.keys().copied().collect::<Vec<_>>(),
        [3, 4, 5]
    );
    assert!(matches!(
        vault.read_secret(&project(), "db", Some(2)).unwrap_err(),
        VaultError::VersionNotFound { version: 2, .. }
    ));
    assert!(vault
        .store()
        .get(
            Space::Secrets,
            &crate::layout::secret_key(&project(), "db", 1)
        )
        .unwrap()
        .is_none());
    assert_eq!(
        vault
            .read_secret(&project(), "db", Some(3))
            .unwrap()
            .0
            .as_str(),
        Some("v3")
    );
}

#[test]
fn per_secret_max_versions() {
    let vault = vault_keeping(10);
    for n in 1..=6 {
        vault
            .put_secret(&project(), "db", &text(&format!("v{n}")))
            .unwrap();
    }
    let update = MetadataUpdate {
        max_versions: Some(Some(2)),
        custom_metadata: Some(BTreeMap::from([(
            "owner".to_owned(),
            "data-eng".to_owned(),
        )])),
    };
    let metadata = vault
        .update_secret_metadata(&project(), "db", &update)
        .unwrap();
    assert_eq!(metadata.max_versions, Some(2));
    assert_eq!(metadata.max_versions_in_force, 2);
    assert_eq!(
        metadata.versions.keys().copied().collect::<Vec<_>>(),
        [5, 6]
    );
    assert_eq!(metadata.custom_metadata["owner"], "data-eng");

    let back_to_default = MetadataUpdate {
        max_versions: Some(None),
        custom_metadata: None,
    };
    let metadata = vault
        .update_secret_metadata(&project(), "db", &back_to_default)
        .unwrap();
    assert_eq!(metadata.max_versions, None);
    assert_eq!(metadata.max_versions_in_force, 10);
    assert_eq!(
        metadata.custom_metadata["owner"], "data-eng",
        "left as it was"
    );
}

#[test]
fn invalid_settings_name_the_rule() {
    let vault = memory_vault();
    vault.put_secret(&project(), "db", &text("v")).unwrap();
    for max in [0, crate::vault::MAX_VERSIONS_LIMIT + 1] {
        let update = MetadataUpdate {
            max_versions: Some(Some(max)),
            custom_metadata: None,
        };
        let error = vault
            .update_secret_metadata(&project(), "db", &update)
            .unwrap_err();
        assert!(
            error.to_string().contains("must be from 1 to 1000"),
            "{error}"
        );
    }
    let update = MetadataUpdate {
        max_versions: None,
        custom_metadata: Some(BTreeMap::from([("k".to_owned(), "x".repeat(513))])),
    };
    let error = vault
        .update_secret_metadata(&project(), "db", &update)
        .unwrap_err();
    assert!(error.to_string().contains("at most 512 bytes"), "{error}");
}

#[test]
fn soft_delete_undelete_and_destroy() {
    let vault = memory_vault();
    for value in ["one", "two", "three"] {
        vault.put_secret(&project(), "db", &text(value)).unwrap();
    }

    let metadata = vault.delete_versions(&project(), "db", &[]).unwrap();
    assert_eq!(
        metadata.versions[&3].state(),
        "deleted",
        "empty list = current"
    );
    assert!(matches!(
        vault.read_secret(&project(), "db", None).unwrap_err(),
        VaultError::VersionDeleted { version: 3, .. }
    ));
    assert_eq!(
        vault
            .read_secret(&project(), "db", Some(2))
            .unwrap()
            .0
            .as_str(),
        Some("two")
    );

    vault.undelete_versions(&project(), "db", &[3]).unwrap();
    assert_eq!(
        vault
            .read_secret(&project(), "db", None)
            .unwrap()
            .0
            .as_str(),
        Some("three")
    );

    let metadata = vault.destroy_versions(&project(), "db", &[1]).unwrap();
    assert_eq!(metadata.versions[&1].state(), "destroyed");
    assert!(vault
        .store()
        .get(
            Space::Secrets,
            &crate::layout::secret_key(&project(), "db", 1)
        )
        .unwrap()
        .is_none());
    assert!(matches!(
        vault.read_secret(&project(), "db", Some(1)).unwrap_err(),
        VaultError::VersionDestroyed { version: 1, .. }
    ));
    assert!(matches!(
        vault.undelete_versions(&project(), "db", &[1]).unwrap_err(),
        VaultError::VersionDestroyed { version: 1, .. }
    ));
}

#[test]
fn version_list_with_unknown_version() {
    let vault = memory_vault();
    vault.put_secret(&project(), "db", &text("one")).unwrap();
    let error = vault
        .delete_versions(&project(), "db", &[1, 7])
        .unwrap_err();
    assert!(
        matches!(error, VaultError::VersionNotFound { version: 7, .. }),
        "{error:?}"
    );
    assert_eq!(
        vault
            .read_secret(&project(), "db", Some(1))
            .unwrap()
            .0
            .as_str(),
        Some("one")
    );
    assert!(
        vault.undelete_versions(&project(), "db", &[]).is_err(),
        "undelete needs versions"
    );
}

#[test]
fn delete_secret_frees_name() {
    let vault = memory_vault();
    vault.put_secret(&project(), "db", &text("one")).unwrap();
    vault.put_secret(&project(), "db", &text("two")).unwrap();
    assert_eq!(vault.delete_secret(&project(), "db").unwrap(), 2);
    assert!(matches!(
        vault.secret_metadata(&project(), "db").unwrap_err(),
        VaultError::SecretNotFound { .. }
    ));
    let prefix = crate::layout::project_prefix(&project());
    assert!(vault
        .store()
        .scan_prefix(Space::Secrets, &prefix, None, 10)
        .unwrap()
        .is_empty());
    let written = vault
        .put_secret_with(&project(), "db", &text("new"), &cas(0))
        .unwrap();
    assert_eq!(written.version, 1);
}

#[test]
fn metadata_written_before_version_states_reads_back() {
    let vault = memory_vault();
    let old = br#"{"name":"db","version":2,"created_at_ms":5,"updated_at_ms":9}"#;
    raw_put(
        vault.store().as_ref(),
        Space::SecretMeta,
        crate::layout::secret_meta_key(&project(), "db"),
        old.to_vec(),
    );
    let metadata = vault.secret_metadata(&project(), "db").unwrap();
    assert_eq!(metadata.current_version, 2);
    assert_eq!(metadata.oldest_version, 1);
    assert_eq!(
        metadata.versions.keys().copied().collect::<Vec<_>>(),
        [1, 2]
    );
}
