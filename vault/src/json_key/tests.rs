use super::*;

fn select(value: &str, key: &str) -> Result<String, VaultError> {
    let value = SecretValue::from_bytes(value.as_bytes());
    select_json_key(&value, "creds", key).map(|selected| selected.as_str().unwrap().to_owned())
}

#[test]
fn string_entry_returns_text() {
    assert_eq!(
        select(r#"{"password": "p\"w"}"#, "password").unwrap(),
        "p\"w"
    );
}

#[test]
fn other_entries_return_compact_json() {
    let value = r#"{"n": 42, "f": 1.5, "t": true, "z": null, "o": {"a": [1, 2]}, "l": ["x", 1]}"#;
    assert_eq!(select(value, "n").unwrap(), "42");
    assert_eq!(select(value, "f").unwrap(), "1.5");
    assert_eq!(select(value, "t").unwrap(), "true");
    assert_eq!(select(value, "z").unwrap(), "null");
    assert_eq!(select(value, "o").unwrap(), r#"{"a":[1,2]}"#);
    assert_eq!(select(value, "l").unwrap(), r#"["x",1]"#);
}

#[test]
fn literal_key_wins_over_nested_path() {
    let value = r#"{"a.b": "literal", "a": {"b": "nested"}}"#;
    assert_eq!(select(value, "a.b").unwrap(), "literal");
}

#[test]
fn dotted_key_walks_nested_objects() {
    let value = r#"{"a": {"b": {"c": "deep"}}, "x": "top"}"#;
    assert_eq!(select(value, "a.b.c").unwrap(), "deep");
    assert_eq!(select(value, "a.b").unwrap(), r#"{"c":"deep"}"#);
}

#[test]
fn missing_keys_are_not_found() {
    let value = r#"{"a": {"b": "v"}, "list": [{"c": 1}]}"#;
    for key in ["missing", "a.c", "a.b.c", "list.0.c", "a.", ".a", ""] {
        let error = select(value, key).unwrap_err();
        assert!(
            matches!(&error, VaultError::JsonKeyNotFound { secret, key: k } if secret == "creds" && k == key),
            "{key:?}: {error:?}"
        );
    }
}

#[test]
fn non_objects_are_rejected() {
    let values = [
        "not json s3cr3t",
        r#"["s3cr3t"]"#,
        r#""s3cr3t""#,
        "42",
        "",
        r#"{"a": "s3cr3t""#,
    ];
    for value in values {
        let error = select(value, "a").unwrap_err();
        assert!(
            matches!(&error, VaultError::ValueNotJsonObject { secret } if secret == "creds"),
            "{value:?}: {error:?}"
        );
        assert!(
            !error.to_string().contains("s3cr3t"),
            "the message quotes the value: {error}"
        );
    }
}
