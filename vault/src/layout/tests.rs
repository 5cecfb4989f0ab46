use super::*;

fn project(account: &str, name: &str) -> ProjectRef {
    ProjectRef::new(account, name).unwrap()
}

#[test]
fn keys_match_documented_bytes() {
    let project = project("ab", "c");
    assert_eq!(project_prefix(&project), b"\x00\x02ab\x00\x01c");
    assert_eq!(
        data_key_key(&project, 1),
        b"\x00\x02ab\x00\x01c\x00\x00\x00\x01"
    );
    assert_eq!(
        secret_key(&project, "db", 258),
        b"\x00\x02ab\x00\x01c\x00\x02db\x00\x00\x01\x02"
    );
    assert_eq!(
        secret_meta_key(&project, "db/x"),
        b"\x00\x02ab\x00\x01cdb/x"
    );
    assert_eq!(definition_key(&project, "db/x"), b"\x00\x02ab\x00\x01cdb/x");
}

#[test]
fn project_prefixes_do_not_overlap() {
    let short = project_prefix(&project("a", "p"));
    let longer = project_prefix(&project("a", "p2"));
    let shifted = project_prefix(&project("ap", "2"));
    assert!(!longer.starts_with(&short));
    assert!(!shifted.starts_with(&short));
    assert_ne!(longer, shifted);
}

#[test]
fn secret_versions_sort_numerically() {
    let project = project("a", "p");
    let versions = [1u32, 2, 9, 10, 255, 256, 65_536];
    let keys: Vec<Vec<u8>> = versions
        .iter()
        .map(|v| secret_key(&project, "n", *v))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
}

#[test]
fn secret_name_prefix_is_not_shared() {
    let project = project("a", "p");
    let mut name_prefix = project_prefix(&project);
    push_component(&mut name_prefix, b"n");
    assert!(secret_key(&project, "n", 5).starts_with(&name_prefix));
    assert!(!secret_key(&project, "nn", 5).starts_with(&name_prefix));
    assert!(!secret_key(&project, "n\0", 5).starts_with(&name_prefix));
}

#[test]
fn data_key_version_reads_suffix() {
    let project = project("a", "p");
    let prefix = project_prefix(&project);
    assert_eq!(
        data_key_version(&prefix, &data_key_key(&project, 7)),
        Some(7)
    );
    assert_eq!(data_key_version(&prefix, &prefix), None);
    assert_eq!(data_key_version(b"other", &data_key_key(&project, 7)), None);
}

#[test]
fn split_data_key_key_round_trips() {
    let key = data_key_key(&project("acme", "prod"), 3);
    assert_eq!(
        split_data_key_key(&key),
        Some(("acme".to_owned(), "prod".to_owned(), 3))
    );
    assert_eq!(split_data_key_key(&key[..key.len() - 1]), None);
    assert_eq!(split_data_key_key(b"\x00\x09ab"), None);
    assert_eq!(split_data_key_key(b""), None);
}
