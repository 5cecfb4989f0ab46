use std::path::PathBuf;

use tempfile::TempDir;

use super::*;

const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn expected_key() -> Vec<u8> {
    (0u8..32).collect()
}

#[cfg(unix)]
fn write_key_file(dir: &TempDir, contents: &[u8], mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;

    let path = dir.path().join("master.key");
    fs::write(&path, contents).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[cfg(unix)]
fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;

    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn from_bytes_requires_32_bytes() {
    assert_eq!(
        MasterKey::from_bytes(&[7; 32]).unwrap().as_bytes(),
        &[7; 32]
    );
    for length in [0, 16, 31, 33, 64] {
        let error = MasterKey::from_bytes(&vec![7; length]).unwrap_err();
        assert!(
            matches!(&error, VaultError::MasterKey { path: None, .. }),
            "{error:?}"
        );
        assert!(
            error.to_string().contains(&format!("got {length}")),
            "{error}"
        );
    }
}

#[test]
fn generate_gives_distinct_keys() {
    let first = MasterKey::generate();
    let second = MasterKey::generate();
    assert_ne!(first.as_bytes(), second.as_bytes());
    assert_ne!(first.as_bytes(), &[0; KEY_LEN]);
}

#[test]
fn debug_output_is_redacted() {
    let key = MasterKey::from_bytes(&[0xab; 32]).unwrap();
    assert_eq!(format!("{key:?}"), "MasterKey(REDACTED)");

    let value = SecretValue::from_string("hunter2".to_owned());
    assert_eq!(format!("{value:?}"), "SecretValue(REDACTED, 7 bytes)");
}

#[test]
fn secret_value_accessors() {
    let text = SecretValue::from_bytes(b"hello".as_slice());
    assert_eq!(text.as_bytes(), b"hello");
    assert_eq!(text.as_str(), Some("hello"));
    assert_eq!(text.len(), 5);
    assert!(!text.is_empty());

    let binary = SecretValue::from_bytes(vec![0xff, 0xfe]);
    assert_eq!(binary.as_str(), None);

    let empty = SecretValue::from_bytes(Vec::new());
    assert!(empty.is_empty());
    assert_eq!(empty.as_str(), Some(""));
}

#[cfg(unix)]
#[test]
fn load_accepts_hex_with_optional_newline() {
    let dir = TempDir::new().unwrap();
    let upper = KEY_HEX.to_ascii_uppercase();
    let cases: [Vec<u8>; 4] = [
        KEY_HEX.as_bytes().to_vec(),
        format!("{KEY_HEX}\n").into_bytes(),
        format!("{KEY_HEX}\r\n").into_bytes(),
        upper.into_bytes(),
    ];
    for contents in cases {
        let path = write_key_file(&dir, &contents, 0o600);
        let key = MasterKey::load(&path).unwrap();
        assert_eq!(key.as_bytes().as_slice(), expected_key().as_slice());
        fs::remove_file(&path).unwrap();
    }
}

#[cfg(unix)]
#[test]
fn load_rejects_group_or_other_access() {
    let dir = TempDir::new().unwrap();
    for mode in [0o644, 0o640, 0o604, 0o660, 0o602, 0o620] {
        let path = write_key_file(&dir, KEY_HEX.as_bytes(), mode);
        let error = MasterKey::load(&path).unwrap_err();
        let message = error.to_string();
        assert!(message.contains(&format!("{mode:04o}")), "{message}");
        assert!(
            message.contains(&format!("chmod 600 {}", path.display())),
            "{message}"
        );
        assert!(matches!(&error, VaultError::MasterKey { path: Some(p), .. } if *p == path));
        fs::remove_file(&path).unwrap();
    }

    let path = write_key_file(&dir, KEY_HEX.as_bytes(), 0o400);
    assert!(
        MasterKey::load(&path).is_ok(),
        "owner-only read access is accepted"
    );
}

#[cfg(unix)]
#[test]
fn load_rejects_bad_contents_without_quoting_them() {
    let dir = TempDir::new().unwrap();
    let not_hex = format!("{}zz", &KEY_HEX[..62]);
    // 0x5a is 'Z', so a message that quoted these bytes would contain "ZZZZ".
    let raw_bytes = [0x5au8; 32];
    let leading_space = format!("  {KEY_HEX}");
    let cases: [(&[u8], &str); 5] = [
        (b"", "found 0 bytes"),
        (&KEY_HEX.as_bytes()[..63], "found 63 bytes"),
        (
            not_hex.as_bytes(),
            "byte 62 or 63 is not a hexadecimal character",
        ),
        (&raw_bytes, "found 32 bytes"),
        (leading_space.as_bytes(), "found 66 bytes"),
    ];
    for (contents, reason) in cases {
        let path = write_key_file(&dir, contents, 0o600);
        let message = MasterKey::load(&path).unwrap_err().to_string();
        assert!(message.contains(reason), "{message}");
        assert!(
            !message.contains(&KEY_HEX[..20]),
            "message quotes the key: {message}"
        );
        assert!(
            !message.contains("ZZZZ"),
            "message quotes the contents: {message}"
        );
        fs::remove_file(&path).unwrap();
    }
}

#[test]
fn load_reports_missing_file() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("absent.key");
    let error = MasterKey::load(&path).unwrap_err();
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
    assert!(error.to_string().contains("cannot open"), "{error}");
}

#[test]
fn load_rejects_folder() {
    let dir = TempDir::new().unwrap();
    let error = MasterKey::load(dir.path()).unwrap_err();
    assert!(
        error.to_string().contains("is not a regular file"),
        "{error}"
    );
}

#[cfg(unix)]
#[test]
fn create_writes_private_hex_file() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("keys/master.key");
    let key = MasterKey::create(&path).unwrap();

    assert_eq!(mode_of(&path), 0o600);
    assert_eq!(mode_of(path.parent().unwrap()), 0o700);
    let contents = fs::read_to_string(&path).unwrap();
    assert_eq!(contents, format!("{}\n", crate::error::hex(key.as_bytes())));

    let loaded = MasterKey::load(&path).unwrap();
    assert_eq!(loaded.as_bytes(), key.as_bytes());
}

#[test]
fn create_never_overwrites() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("master.key");
    fs::write(&path, b"keep me").unwrap();
    let error = MasterKey::create(&path).unwrap_err();
    assert!(error.to_string().contains("already exists"), "{error}");
    assert_eq!(fs::read(&path).unwrap(), b"keep me");
}

#[test]
fn load_or_create_creates_then_loads() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("master.key");

    let (created, was_created) = MasterKey::load_or_create(&path).unwrap();
    assert!(was_created);
    let (loaded, was_created) = MasterKey::load_or_create(&path).unwrap();
    assert!(!was_created);
    assert_eq!(created.as_bytes(), loaded.as_bytes());
}

#[cfg(unix)]
#[test]
fn load_or_create_rejects_open_mode() {
    let dir = TempDir::new().unwrap();
    let path = write_key_file(&dir, KEY_HEX.as_bytes(), 0o644);
    let error = MasterKey::load_or_create(&path).unwrap_err();
    assert!(error.to_string().contains("chmod 600"), "{error}");
    assert_eq!(
        fs::read(&path).unwrap(),
        KEY_HEX.as_bytes(),
        "the file is left as it was"
    );
}

#[cfg(unix)]
#[test]
fn load_rejects_oversized_file() {
    let dir = TempDir::new().unwrap();
    let contents = format!("{KEY_HEX}{}", " ".repeat(2000));
    let path = write_key_file(&dir, contents.as_bytes(), 0o600);
    let error = MasterKey::load(&path).unwrap_err();
    assert!(error.to_string().contains("2064 bytes long"), "{error}");
}

#[test]
fn key_file_encoding_round_trips() {
    let key: [u8; KEY_LEN] = expected_key().try_into().unwrap();
    let text = encode_key_file(&key);
    assert_eq!(text.as_slice(), format!("{KEY_HEX}\n").as_bytes());
    assert_eq!(*decode_hex_key(&text).unwrap(), key);
}
