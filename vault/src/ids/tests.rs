use super::*;

#[test]
fn ids_accept_valid_values() {
    for id in ["a", "0", "acme", "acme-prod_2", "9lives", &"a".repeat(64)] {
        assert!(validate_account_id(id).is_ok(), "{id}");
        assert!(validate_project_id(id).is_ok(), "{id}");
    }
}

#[test]
fn ids_reject_invalid_values() {
    let too_long = "a".repeat(65);
    let cases: [(&str, &str); 8] = [
        ("", "empty"),
        (&too_long, "65 characters"),
        ("Acme", "'A'"),
        ("ac me", "' '"),
        ("acme/prod", "'/'"),
        ("-acme", "first character"),
        ("_acme", "first character"),
        ("acmé", "'é'"),
    ];
    for (id, reason) in cases {
        let error = validate_account_id(id).unwrap_err();
        assert!(
            matches!(&error, VaultError::InvalidAccount { value, .. } if value == id),
            "{error:?}"
        );
        assert!(error.to_string().contains(reason), "{id:?}: {error}");

        let error = validate_project_id(id).unwrap_err();
        assert!(
            matches!(&error, VaultError::InvalidProject { value, .. } if value == id),
            "{error:?}"
        );
    }
}

#[test]
fn account_error_names_rule_and_value() {
    let message = validate_account_id("Acme").unwrap_err().to_string();
    assert_eq!(
        message,
        "invalid account id \"Acme\": character 'A' at position 0 is not allowed \
         (allowed: 1 to 64 characters of a-z, 0-9, '_' and '-', starting with a letter or digit)"
    );
}

#[test]
fn project_ref_new_validates_both() {
    let project = ProjectRef::new("acme", "prod").unwrap();
    assert_eq!(project.account, "acme");
    assert_eq!(project.project, "prod");
    assert_eq!(project.to_string(), "acme/prod");

    assert!(matches!(
        ProjectRef::new("ACME", "prod"),
        Err(VaultError::InvalidAccount { .. })
    ));
    assert!(matches!(
        ProjectRef::new("acme", "Prod"),
        Err(VaultError::InvalidProject { .. })
    ));
}

#[test]
fn secret_names_accept_printable_text() {
    let longest = "n".repeat(MAX_SECRET_NAME_BYTES);
    for name in [
        "db",
        "db/password",
        "with space",
        "100%",
        "a.b",
        "Ünïcode ключ",
        " leading",
        "~!@#$^&*()",
        &longest,
    ] {
        assert!(validate_secret_name(name).is_ok(), "{name:?}");
    }
}

#[test]
fn secret_names_reject_controls_and_lengths() {
    let too_long = "n".repeat(MAX_SECRET_NAME_BYTES + 1);
    // 86 three-byte characters are 258 bytes, over the byte limit but under 256 characters.
    let too_long_multibyte = "€".repeat(86);
    let cases: [(&str, &str); 7] = [
        ("", "empty"),
        (&too_long, "257 bytes"),
        (&too_long_multibyte, "258 bytes"),
        ("a\u{1}b", "control characters"),
        ("tab\there", "control characters"),
        ("line\n", "control characters"),
        ("del\u{7f}", "control characters"),
    ];
    for (name, reason) in cases {
        let error = validate_secret_name(name).unwrap_err();
        assert!(
            matches!(&error, VaultError::InvalidName { value, .. } if value == name),
            "{error:?}"
        );
        assert!(error.to_string().contains(reason), "{name:?}: {error}");
    }
}

#[test]
fn secret_name_error_message() {
    let message = validate_secret_name("a\u{1}b").unwrap_err().to_string();
    assert_eq!(
        message,
        "invalid secret name \"a\\u{1}b\": control characters are not allowed \
         (allowed: 1 to 256 bytes of UTF-8 without control characters U+0000 to U+001F and U+007F)"
    );
}
