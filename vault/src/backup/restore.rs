//! Restoring a backup into a new database folder.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{
    sync_folder, verify_backup, BackupError, BackupManifest, FileCounter, Progress, DATABASE_FOLDER,
};
use crate::keys::MasterKey;
use crate::store::rocks::RocksStore;
use crate::vault::Vault;

/// Restores the backup in `backup` as the database folder `db_dir`, checks
/// that it opens and that `master` is the key it was written with, and
/// returns the backup's manifest.
///
/// `db_dir` must be missing or empty. The files are checked against the
/// manifest, copied into a folder beside `db_dir`, synced, opened and checked
/// there, and only then renamed to `db_dir`, so a failed restore leaves
/// `db_dir` as it was. `progress` receives one line per step.
pub fn restore_backup(
    backup: &Path,
    db_dir: &Path,
    master: MasterKey,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<BackupManifest, BackupError> {
    check_empty_target(db_dir)?;
    let manifest = verify_backup(backup, progress)?;

    let staging = staging_folder(db_dir)?;
    super::private_folder(&staging).map_err(|e| BackupError::io("create", &staging, e))?;
    let result = fill_and_check(backup, &manifest, &staging, master, progress);
    if let Err(error) = result {
        if let Err(cleanup) = fs::remove_dir_all(&staging) {
            tracing::warn!(
                path = %staging.display(),
                error = %cleanup,
                "removing a partly restored folder failed; delete it by hand"
            );
        }
        return Err(error);
    }

    // Renaming over an empty folder replaces it; a folder that someone
    // filled since the first check makes the rename fail instead.
    if let Err(error) = fs::rename(&staging, db_dir) {
        let _ = fs::remove_dir_all(&staging);
        return Err(match error.kind() {
            io::ErrorKind::DirectoryNotEmpty | io::ErrorKind::AlreadyExists => {
                BackupError::TargetNotEmpty {
                    path: db_dir.to_owned(),
                }
            }
            _ => BackupError::io("rename the restored folder to", db_dir, error),
        });
    }
    if let Some(parent) = db_dir.parent() {
        if !parent.as_os_str().is_empty() {
            sync_folder(parent)?;
        }
    }
    progress(Progress::Step(&format!(
        "restored backup {} into {}",
        manifest.name,
        db_dir.display()
    )));
    tracing::info!(
        backup.name = %manifest.name,
        backup.path = %backup.display(),
        path = %db_dir.display(),
        "backup restored"
    );
    Ok(manifest)
}

fn check_empty_target(db_dir: &Path) -> Result<(), BackupError> {
    match fs::read_dir(db_dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                Err(BackupError::TargetNotEmpty {
                    path: db_dir.to_owned(),
                })
            } else {
                Ok(())
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => Err(BackupError::TargetNotEmpty {
            path: db_dir.to_owned(),
        }),
        Err(e) => Err(BackupError::io("read", db_dir, e)),
    }
}

/// Returns a folder name beside `db_dir` for the copy, creating the parent.
fn staging_folder(db_dir: &Path) -> Result<PathBuf, BackupError> {
    let parent = match db_dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(|e| BackupError::io("create", &parent, e))?;
    let base = db_dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "db".to_owned());
    Ok(parent.join(format!(".{base}.restoring-{}", std::process::id())))
}

fn fill_and_check(
    backup: &Path,
    manifest: &BackupManifest,
    staging: &Path,
    master: MasterKey,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<(), BackupError> {
    progress(Progress::Step(&format!(
        "copying {} files into {}",
        manifest.files.len(),
        staging.display()
    )));
    let source = backup.join(DATABASE_FOLDER);
    let mut counter = FileCounter::new(manifest.files.len(), Some(manifest.total_bytes()));
    for file in &manifest.files {
        let from = source.join(&file.name);
        let to = staging.join(&file.name);
        fs::copy(&from, &to).map_err(|e| BackupError::io("copy", &from, e))?;
        fs::File::open(&to)
            .and_then(|copy| copy.sync_all())
            .map_err(|e| BackupError::io("sync", &to, e))?;
        counter.done(file.bytes, progress);
    }
    sync_folder(staging)?;

    progress(Progress::Step(
        "opening the restored database and checking the master key",
    ));
    let store = RocksStore::open(staging)?;
    let vault = Vault::new(Arc::new(store), master);
    let recorded = vault.verify_master_key().map_err(BackupError::Check)?;
    if recorded {
        progress(Progress::Step(
            "the backup had no master key check record; recorded one for this key",
        ));
    }
    // Dropping the vault closes the database before its folder is renamed.
    drop(vault);
    Ok(())
}
