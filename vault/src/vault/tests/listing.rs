use super::*;
use crate::location::SecretLocation;
use crate::vault::MAX_LIST_LIMIT;

fn names_of_secrets(vault: &Vault, start_after: Option<&str>, limit: usize) -> Vec<String> {
    let listed = vault.list_secrets(&project(), start_after, limit).unwrap();
    listed.into_iter().map(|metadata| metadata.name).collect()
}

fn hosted(secret: &str) -> SecretLocation {
    SecretLocation::Hosted {
        secret: secret.to_owned(),
        json_key: None,
    }
}

#[test]
fn secrets_list_in_byte_order_with_exact_names() {
    let vault = memory_vault();
    let names = ["b", "a/b", "a b", "a%20b", "A", "a", "ab", "é", "a/"];
    for name in names {
        vault.put_secret(&project(), name, &text("v")).unwrap();
    }
    vault
        .put_secret(&project(), "a", &text("second version"))
        .unwrap();

    let mut expected: Vec<String> = names.iter().map(|name| name.to_string()).collect();
    expected.sort();
    assert_eq!(names_of_secrets(&vault, None, 100), expected);
    assert_eq!(expected[..4], ["A", "a", "a b", "a%20b"]);

    let listed = vault.list_secrets(&project(), None, 100).unwrap();
    let a = listed.iter().find(|metadata| metadata.name == "a").unwrap();
    assert_eq!(a.current_version, 2);
}

#[test]
fn secrets_list_pages() {
    let vault = memory_vault();
    for index in 0..7 {
        vault
            .put_secret(&project(), &format!("s{index}"), &text("v"))
            .unwrap();
    }

    assert_eq!(names_of_secrets(&vault, None, 3), ["s0", "s1", "s2"]);
    assert_eq!(names_of_secrets(&vault, Some("s2"), 3), ["s3", "s4", "s5"]);
    assert_eq!(names_of_secrets(&vault, Some("s5"), 3), ["s6"]);
    assert!(names_of_secrets(&vault, Some("s6"), 3).is_empty());
    assert_eq!(
        names_of_secrets(&vault, Some("s25"), 2),
        ["s3", "s4"],
        "after a name that does not exist"
    );
    assert!(names_of_secrets(&vault, None, 0).is_empty());
}

#[test]
fn list_limit_is_capped() {
    let vault = memory_vault();
    for index in 0..MAX_LIST_LIMIT + 5 {
        vault
            .put_secret(&project(), &format!("s{index:05}"), &text("v"))
            .unwrap();
        vault
            .put_definition(&project(), &format!("d{index:05}"), hosted("s"))
            .unwrap();
    }
    assert_eq!(
        vault
            .list_secrets(&project(), None, usize::MAX)
            .unwrap()
            .len(),
        MAX_LIST_LIMIT
    );
    assert_eq!(
        vault
            .list_definitions(&project(), None, 5000)
            .unwrap()
            .len(),
        MAX_LIST_LIMIT
    );

    let rest = vault
        .list_secrets(&project(), Some("s00999"), usize::MAX)
        .unwrap();
    assert_eq!(rest.len(), 5);
}

#[test]
fn lists_stay_inside_the_project() {
    let vault = memory_vault();
    let other = ProjectRef::new("acme", "prod2").unwrap();
    vault.put_secret(&project(), "mine", &text("v")).unwrap();
    vault.put_secret(&other, "theirs", &text("v")).unwrap();
    vault
        .put_definition(&other, "theirs", hosted("theirs"))
        .unwrap();

    assert_eq!(names_of_secrets(&vault, None, 10), ["mine"]);
    assert!(vault
        .list_definitions(&project(), None, 10)
        .unwrap()
        .is_empty());
}

#[test]
fn definitions_list_pages() {
    let vault = memory_vault();
    for name in ["d/2", "d 1", "d%3", "a"] {
        vault.put_definition(&project(), name, hosted("s")).unwrap();
    }
    let names = |after: Option<&str>, limit| -> Vec<String> {
        let listed = vault.list_definitions(&project(), after, limit).unwrap();
        listed
            .into_iter()
            .map(|definition| definition.name)
            .collect()
    };
    assert_eq!(names(None, 10), ["a", "d 1", "d%3", "d/2"]);
    assert_eq!(names(None, 2), ["a", "d 1"]);
    assert_eq!(names(Some("d 1"), 2), ["d%3", "d/2"]);
    assert!(names(Some("d/2"), 2).is_empty());
}
