use super::*;

fn project() -> ProjectRef {
    ProjectRef::new("acme", "prod").unwrap()
}

#[test]
fn kinds_cover_each_class() {
    let invalid = VaultError::ValueTooLarge { size: 2, max: 1 };
    assert_eq!(invalid.kind(), ErrorKind::InvalidInput);

    let not_json = VaultError::ValueNotJsonObject { secret: "s".into() };
    assert_eq!(not_json.kind(), ErrorKind::InvalidInput);

    let missing = VaultError::SecretNotFound {
        project: project(),
        name: "db".into(),
    };
    assert_eq!(missing.kind(), ErrorKind::NotFound);

    let key_missing = VaultError::JsonKeyNotFound {
        secret: "s".into(),
        key: "k".into(),
    };
    assert_eq!(key_missing.kind(), ErrorKind::NotFound);

    let unsupported = VaultError::ProviderNotSupported {
        provider: "aws_secrets_manager",
        definition: "d".into(),
    };
    assert_eq!(unsupported.kind(), ErrorKind::NotSupported);

    let decrypt = VaultError::Decrypt {
        account: "acme".into(),
        project: "prod".into(),
        name: "db".into(),
        version: 3,
    };
    assert_eq!(decrypt.kind(), ErrorKind::Internal);
    assert!(!decrypt.is_retryable());
}

#[test]
fn not_found_messages_name_the_place() {
    let error = VaultError::VersionNotFound {
        project: project(),
        name: "db/password".into(),
        version: 7,
        latest: 3,
    };
    assert_eq!(
        error.to_string(),
        "version 7 of secret \"db/password\" not found in project acme/prod (latest version is 3)"
    );
}

#[test]
fn decrypt_message_names_location() {
    let error = VaultError::Decrypt {
        account: "acme".into(),
        project: "prod".into(),
        name: "db".into(),
        version: 3,
    };
    let message = error.to_string();
    assert!(
        message.contains("version 3 of secret \"db\" in project acme/prod"),
        "{message}"
    );
    assert!(message.contains("does not match its location"), "{message}");
}

#[test]
fn long_values_are_cut_in_messages() {
    let name = "x".repeat(10_000);
    let error = VaultError::InvalidName {
        value: name.clone(),
        reason: "the name is 10000 bytes long".into(),
    };
    let message = error.to_string();
    assert!(message.len() < 400, "{} bytes", message.len());
    assert!(message.contains("(10000 bytes in all)"), "{message}");
    assert!(matches!(error, VaultError::InvalidName { value, .. } if value == name));
}

#[test]
fn master_key_message_names_file() {
    let error = VaultError::MasterKey {
        path: Some(PathBuf::from("/etc/keygate/master.key")),
        reason: "cannot read".into(),
    };
    assert_eq!(
        error.to_string(),
        "master key file /etc/keygate/master.key: cannot read"
    );

    let error = VaultError::MasterKey {
        path: None,
        reason: "expected exactly 32 bytes, got 3".into(),
    };
    assert_eq!(
        error.to_string(),
        "master key: expected exactly 32 bytes, got 3"
    );
}

#[test]
fn hex_encodes_bytes() {
    assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    assert_eq!(hex(&[]), "");
}
