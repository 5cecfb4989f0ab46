//! Backups round-trip, never overwrite, hold no plaintext, and reject damage.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tempfile::TempDir;

use super::*;
use crate::ids::ProjectRef;
use crate::keys::{MasterKey, SecretValue};
use crate::store::KvStore;
use crate::vault::Vault;

const MASTER: [u8; 32] = [0x5a; 32];

fn project() -> ProjectRef {
    ProjectRef::new("acme", "prod").unwrap()
}

fn master() -> MasterKey {
    MasterKey::from_bytes(&MASTER).unwrap()
}

/// Creates a store with two secrets, the second in two versions, and its vault.
fn filled_store(dir: &Path) -> (Arc<RocksStore>, Vault) {
    let store = Arc::new(RocksStore::open(&dir.join("db")).unwrap());
    let vault = Vault::new(Arc::clone(&store) as Arc<dyn KvStore>, master());
    vault.verify_master_key().unwrap();
    let put = |name: &str, value: &str| {
        vault
            .put_secret(
                &project(),
                name,
                &SecretValue::from_string(value.to_owned()),
            )
            .unwrap();
    };
    put("warehouse", "plaintext-marker-warehouse");
    put("api", "plaintext-marker-api-v1");
    put("api", "plaintext-marker-api-v2");
    (store, vault)
}

fn read(vault: &Vault, name: &str, version: u32) -> String {
    let (value, _) = vault.read_secret(&project(), name, Some(version)).unwrap();
    value.as_str().unwrap().to_owned()
}

fn quiet() -> impl FnMut(Progress<'_>) {
    |_: Progress<'_>| {}
}

/// Returns the counts of a `Progress::Files`: done, total, bytes done, bytes total.
fn progress_owned(progress: Progress<'_>) -> (usize, usize, u64, Option<u64>) {
    match progress {
        Progress::Files {
            done,
            total,
            bytes_done,
            bytes_total,
        } => (done, total, bytes_done, bytes_total),
        Progress::Step(step) => panic!("expected file counts, got step {step:?}"),
    }
}

fn make_backup(dir: &TempDir) -> (PathBuf, BackupManifest) {
    let (store, _vault) = filled_store(dir.path());
    let backups = dir.path().join("backups");
    let manifest = create_backup(&store, &backups, "nightly-1", &mut quiet()).unwrap();
    (backups.join("nightly-1"), manifest)
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn backup_and_restored_folders_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let (folder, _) = make_backup(&dir);
    assert_eq!(mode(&folder), 0o700, "the backup folder");
    let target = dir.path().join("restored/db");
    restore_backup(&folder, &target, master(), &mut quiet()).unwrap();
    assert_eq!(mode(&target), 0o700, "the restored database folder");
}

#[test]
fn names_follow_the_rule() {
    for valid in ["a", "nightly-2026.12.04", "B_1", &"x".repeat(64)] {
        assert!(validate_backup_name(valid).is_ok(), "{valid:?} is valid");
    }
    let cases = [
        ("", "empty"),
        (&"x".repeat(65), "longer than 64"),
        ("..", "start with a letter or digit"),
        (".hidden", "start with a letter or digit"),
        ("-x", "start with a letter or digit"),
        ("a/b", "not allowed"),
        ("a\\b", "not allowed"),
        ("a b", "not allowed"),
        ("caf\u{e9}", "not allowed"),
    ];
    for (name, reason) in cases {
        let error = validate_backup_name(name).unwrap_err();
        let message = error.to_string();
        assert!(message.contains(reason), "{name:?}: {message}");
        assert!(message.contains(BACKUP_NAME_RULE), "{name:?}: {message}");
    }
}

#[test]
fn backup_round_trips() {
    let dir = TempDir::new().unwrap();
    let (folder, manifest) = make_backup(&dir);
    assert_eq!(manifest.name, "nightly-1");
    assert_eq!(manifest.format, MANIFEST_FORMAT);
    assert!(!manifest.files.is_empty());
    assert!(folder.join(MANIFEST_FILE).is_file());
    assert_eq!(read_manifest(&folder).unwrap(), manifest);

    let target = dir.path().join("restored/db");
    let mut lines = Vec::new();
    let mut last_files = None;
    let restored = restore_backup(&folder, &target, master(), &mut |progress| match progress {
        Progress::Step(line) => lines.push(line.to_owned()),
        Progress::Files { .. } => last_files = Some(progress_owned(progress)),
    })
    .unwrap();
    assert_eq!(restored, manifest);
    assert!(lines.len() >= 3, "one line per step: {lines:?}");
    let files = manifest.files.len();
    assert_eq!(
        last_files,
        Some((
            files,
            files,
            manifest.total_bytes(),
            Some(manifest.total_bytes())
        )),
        "the copy step counts every file and byte"
    );

    let store = Arc::new(RocksStore::open(&target).unwrap());
    let vault = Vault::new(store as Arc<dyn KvStore>, master());
    assert!(
        !vault.verify_master_key().unwrap(),
        "the check record was restored"
    );
    assert_eq!(read(&vault, "warehouse", 1), "plaintext-marker-warehouse");
    assert_eq!(read(&vault, "api", 1), "plaintext-marker-api-v1");
    assert_eq!(read(&vault, "api", 2), "plaintext-marker-api-v2");
}

#[test]
fn backup_sees_writes_made_before_it() {
    let dir = TempDir::new().unwrap();
    let (store, vault) = filled_store(dir.path());
    vault
        .put_secret(&project(), "late", &SecretValue::from_string("late".into()))
        .unwrap();
    let backups = dir.path().join("backups");
    create_backup(&store, &backups, "after-late", &mut quiet()).unwrap();
    vault
        .put_secret(
            &project(),
            "later",
            &SecretValue::from_string("later".into()),
        )
        .unwrap();

    let target = dir.path().join("restored/db");
    restore_backup(&backups.join("after-late"), &target, master(), &mut quiet()).unwrap();
    let restored = Vault::new(
        Arc::new(RocksStore::open(&target).unwrap()) as Arc<dyn KvStore>,
        master(),
    );
    assert_eq!(read(&restored, "late", 1), "late");
    assert!(restored.secret_metadata(&project(), "later").is_err());
}

#[test]
fn backup_never_overwrites() {
    let dir = TempDir::new().unwrap();
    let (store, _vault) = filled_store(dir.path());
    let backups = dir.path().join("backups");
    let first = create_backup(&store, &backups, "same", &mut quiet()).unwrap();

    let error = create_backup(&store, &backups, "same", &mut quiet()).unwrap_err();
    assert!(
        matches!(error, BackupError::AlreadyExists { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("same"), "{error}");
    assert_eq!(
        verify_backup(&backups.join("same"), &mut quiet()).unwrap(),
        first
    );
}

#[test]
fn invalid_name_creates_nothing() {
    let dir = TempDir::new().unwrap();
    let (store, _vault) = filled_store(dir.path());
    let backups = dir.path().join("backups");
    let error = create_backup(&store, &backups, "../escape", &mut quiet()).unwrap_err();
    assert!(
        matches!(error, BackupError::InvalidName { .. }),
        "{error:?}"
    );
    assert!(!dir.path().join("escape").exists());
    assert!(!backups.exists());
}

#[test]
fn backup_contains_no_plaintext_or_master_key() {
    let dir = TempDir::new().unwrap();
    let (folder, _) = make_backup(&dir);
    let master_hex = crate::error::hex(&MASTER);
    let mut scanned = 0;
    for entry in walk(&folder) {
        let bytes = fs::read(&entry).unwrap();
        for needle in [
            b"plaintext-marker".as_slice(),
            MASTER.as_slice(),
            master_hex.as_bytes(),
        ] {
            assert!(
                !contains(&bytes, needle),
                "{} contains a secret value or the master key",
                entry.display()
            );
        }
        scanned += 1;
    }
    assert!(scanned > 2, "scanned {scanned} files");
}

#[test]
fn restore_refuses_non_empty_target() {
    let dir = TempDir::new().unwrap();
    let (folder, _) = make_backup(&dir);
    let target = dir.path().join("busy/db");
    fs::create_dir_all(&target).unwrap();
    fs::write(target.join("keep.txt"), b"keep").unwrap();

    let error = restore_backup(&folder, &target, master(), &mut quiet()).unwrap_err();
    assert!(
        matches!(error, BackupError::TargetNotEmpty { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("busy"), "{error}");
    assert_eq!(fs::read(target.join("keep.txt")).unwrap(), b"keep");
    assert_eq!(fs::read_dir(&target).unwrap().count(), 1);
}

#[test]
fn restore_into_empty_folder_works() {
    let dir = TempDir::new().unwrap();
    let (folder, _) = make_backup(&dir);
    let target = dir.path().join("empty/db");
    fs::create_dir_all(&target).unwrap();
    restore_backup(&folder, &target, master(), &mut quiet()).unwrap();
    assert!(target.join("CURRENT").is_file());
}

#[test]
fn restore_with_wrong_master_key_leaves_nothing() {
    let dir = TempDir::new().unwrap();
    let (folder, _) = make_backup(&dir);
    let parent = dir.path().join("wrong-key");
    let target = parent.join("db");
    let wrong = MasterKey::from_bytes(&[0x11; 32]).unwrap();

    let error = restore_backup(&folder, &target, wrong, &mut quiet()).unwrap_err();
    assert!(matches!(error, BackupError::Check(_)), "{error:?}");
    assert!(error.to_string().contains("master key"), "{error}");
    assert!(!target.exists());
    assert_eq!(
        fs::read_dir(&parent).unwrap().count(),
        0,
        "the partly restored folder was removed"
    );
}

#[test]
fn changed_file_is_reported() {
    let dir = TempDir::new().unwrap();
    let (folder, manifest) = make_backup(&dir);
    let file = manifest.files.iter().find(|f| f.bytes > 0).unwrap();
    let path = folder.join(DATABASE_FOLDER).join(&file.name);
    let mut bytes = fs::read(&path).unwrap();
    // The file may be a hard link to the live database's file, so it is
    // replaced by a new file and not changed in place.
    fs::remove_file(&path).unwrap();
    bytes[0] ^= 0xff;
    fs::write(&path, &bytes).unwrap();

    let error = verify_backup(&folder, &mut quiet()).unwrap_err();
    assert!(matches!(error, BackupError::Damaged { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains(&file.name), "{message}");
    assert!(message.contains("SHA-256"), "{message}");

    let target = dir.path().join("restored/db");
    assert!(restore_backup(&folder, &target, master(), &mut quiet()).is_err());
    assert!(!target.exists());
}

#[test]
fn truncated_and_missing_files_are_reported() {
    let dir = TempDir::new().unwrap();
    let (folder, manifest) = make_backup(&dir);
    let database = folder.join(DATABASE_FOLDER);
    let file = manifest.files.iter().find(|f| f.bytes > 1).unwrap();
    let path = database.join(&file.name);
    let bytes = fs::read(&path).unwrap();
    fs::remove_file(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    let message = verify_backup(&folder, &mut quiet())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains(&format!("{} bytes", file.bytes - 1)),
        "{message}"
    );

    fs::remove_file(&path).unwrap();
    let message = verify_backup(&folder, &mut quiet())
        .unwrap_err()
        .to_string();
    assert!(message.contains("missing"), "{message}");
    assert!(message.contains(&file.name), "{message}");
}

#[test]
fn folder_without_manifest_is_incomplete() {
    let dir = TempDir::new().unwrap();
    let (folder, _) = make_backup(&dir);
    fs::remove_file(folder.join(MANIFEST_FILE)).unwrap();
    let error = read_manifest(&folder).unwrap_err();
    assert!(matches!(error, BackupError::Incomplete { .. }), "{error:?}");
    assert!(error.to_string().contains("did not finish"), "{error}");

    let missing = read_manifest(&dir.path().join("nothing-here")).unwrap_err();
    assert!(
        matches!(missing, BackupError::NotFound { .. }),
        "{missing:?}"
    );
}

#[test]
fn manifest_paths_must_be_plain_names() {
    let dir = TempDir::new().unwrap();
    let (folder, mut manifest) = make_backup(&dir);
    for name in ["../outside", "sub/file", "..", ""] {
        manifest.files[0].name = name.to_owned();
        fs::write(
            folder.join(MANIFEST_FILE),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
        let error = read_manifest(&folder).unwrap_err();
        assert!(
            matches!(error, BackupError::Incomplete { .. }),
            "{name:?}: {error:?}"
        );
    }
}

#[test]
fn other_manifest_format_is_rejected() {
    let dir = TempDir::new().unwrap();
    let (folder, mut manifest) = make_backup(&dir);
    manifest.format = 2;
    fs::write(
        folder.join(MANIFEST_FILE),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    let error = read_manifest(&folder).unwrap_err();
    assert!(
        matches!(error, BackupError::UnsupportedFormat { format: 2, .. }),
        "{error:?}"
    );
}

fn walk(folder: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(folder).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}
