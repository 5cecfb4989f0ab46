use super::*;

fn project(account: &str, name: &str) -> ProjectRef {
    ProjectRef::new(account, name).unwrap()
}

fn key(byte: u8) -> AeadKey {
    AeadKey::new(&[byte; KEY_LEN])
}

#[test]
fn seal_then_open_round_trips() {
    let aad = b"place";
    for plaintext in [&b""[..], b"x", &[0xa5; 70_000]] {
        let record = key(1).seal(9, plaintext, aad);
        let sealed = SealedRecord::decode(&record).unwrap();
        assert_eq!(sealed.key_version, 9);
        assert_eq!(key(1).open(&sealed, aad).unwrap().as_slice(), plaintext);
    }
}

#[test]
fn record_layout_matches_documentation() {
    let record = key(1).seal(0x0102_0304, b"hello", b"");
    assert_eq!(record.len(), 1 + 4 + 12 + 5 + 16);
    assert_eq!(record[0], 1, "format byte");
    assert_eq!(&record[1..5], &[1, 2, 3, 4], "key version, big-endian");
    assert_ne!(
        &record[17..22],
        b"hello",
        "ciphertext differs from plaintext"
    );
}

#[test]
fn nonces_differ_between_seals() {
    let first = key(1).seal(1, b"same", b"aad");
    let second = key(1).seal(1, b"same", b"aad");
    assert_ne!(&first[5..17], &second[5..17]);
    assert_ne!(first, second);
}

#[test]
fn open_fails_on_wrong_key_or_aad() {
    let record = key(1).seal(1, b"secret", b"place-a");
    let sealed = SealedRecord::decode(&record).unwrap();
    assert!(key(2).open(&sealed, b"place-a").is_err(), "wrong key");
    assert!(
        key(1).open(&sealed, b"place-b").is_err(),
        "wrong associated data"
    );
    assert!(key(1).open(&sealed, b"place-a").is_ok(), "control");
}

#[test]
fn open_fails_on_any_flipped_byte() {
    let record = key(1).seal(1, b"secret", b"aad");
    // Byte 0 and the key version are checked by the caller, so start at the nonce.
    for index in 5..record.len() {
        let mut damaged = record.clone();
        damaged[index] ^= 0x01;
        let sealed = SealedRecord::decode(&damaged).unwrap();
        assert!(
            key(1).open(&sealed, b"aad").is_err(),
            "flipped byte {index}"
        );
    }
}

#[test]
fn decode_rejects_damaged_records() {
    let short = SealedRecord::decode(&[1; 32]).err().unwrap();
    assert!(short.contains("shorter than the minimum of 33"), "{short}");

    let mut record = key(1).seal(1, b"x", b"");
    record[0] = 2;
    let format = SealedRecord::decode(&record).err().unwrap();
    assert!(format.contains("format 2"), "{format}");
}

#[test]
fn aad_components_cannot_shift() {
    let ab_c = secret_aad(&project("ab", "c"), "n", 1);
    let a_bc = secret_aad(&project("a", "bc"), "n", 1);
    assert_ne!(ab_c, a_bc);

    let project_name = secret_aad(&project("a", "b"), "cd", 1);
    let shifted = secret_aad(&project("a", "bc"), "d", 1);
    assert_ne!(project_name, shifted);
}

#[test]
fn aad_differs_per_place_and_purpose() {
    let base = secret_aad(&project("a", "p"), "n", 1);
    assert_ne!(base, secret_aad(&project("a", "p"), "n", 2));
    assert_ne!(base, secret_aad(&project("a", "p"), "m", 1));
    assert_ne!(base, secret_aad(&project("a", "q"), "n", 1));
    assert_ne!(base, secret_aad(&project("b", "p"), "n", 1));

    let data_key = data_key_aad(&project("a", "p"), 1);
    assert_ne!(data_key, data_key_aad(&project("a", "p"), 2));
    assert_ne!(data_key, data_key_aad(&project("a", "q"), 1));
    assert_ne!(data_key, master_key_check_aad());
    assert!(data_key.starts_with(b"\x00\x13keygate/data-key/v1"));
}

#[test]
fn data_keys_are_random() {
    assert_ne!(*generate_data_key(), *generate_data_key());
}
