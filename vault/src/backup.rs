//! Backups of a RocksDB store: a checkpoint of the database in a named folder
//! with a manifest of its files, their sizes and SHA-256 digests.
//!
//! A backup folder `NAME` contains `db/`, a RocksDB checkpoint that opens as a
//! database of its own, and [`MANIFEST_FILE`], written last, so a folder
//! without a manifest is a backup that did not finish. A backup contains what
//! the store contains: values and data keys stay sealed, and the master key is
//! not in it, so restoring needs the master key file the store was used with.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::VaultError;
use crate::store::rocks::RocksStore;
use crate::store::StoreError;

mod restore;

#[cfg(test)]
mod tests;

pub use restore::restore_backup;

/// Name of the manifest file in a backup folder.
pub const MANIFEST_FILE: &str = "keygate-backup.json";

/// Name of the folder inside a backup that contains the database files.
pub const DATABASE_FOLDER: &str = "db";

/// The manifest format this version writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;

/// Maximum length of a backup name, in bytes.
pub const MAX_BACKUP_NAME_BYTES: usize = 64;

/// The rule a backup name must follow, for error messages.
pub const BACKUP_NAME_RULE: &str =
    "1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit";

/// The contents of a backup, as recorded when it was taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupManifest {
    /// [`MANIFEST_FORMAT`] when written by this version.
    pub format: u32,
    pub name: String,
    /// When the backup finished, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// The program that wrote it, such as `keygate-vault 0.1.0`.
    pub created_by: String,
    /// Every file of the database folder, sorted by name.
    pub files: Vec<BackupFile>,
}

/// One file of a backup's database folder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupFile {
    /// File name inside the database folder; never contains a path separator.
    pub name: String,
    pub bytes: u64,
    /// SHA-256 of the contents, lowercase hexadecimal.
    pub sha256: String,
}

impl BackupManifest {
    /// Returns the total size of the database files, in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|file| file.bytes).sum()
    }
}

/// A failed backup, check or restore. Messages name the folder or file and
/// the next step.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("invalid backup name {name:?}: {reason} (allowed: {BACKUP_NAME_RULE})")]
    InvalidName { name: String, reason: &'static str },

    #[error(
        "backup folder {path} already exists; choose another name (backups are never overwritten)"
    )]
    AlreadyExists { path: PathBuf },

    #[error("backup folder {path} does not exist")]
    NotFound { path: PathBuf },

    #[error("{path} is not a complete keygate backup: {reason}")]
    Incomplete { path: PathBuf, reason: String },

    #[error("backup {path} has manifest format {format}, but this keygate reads format {MANIFEST_FORMAT} only; restore it with the keygate version that wrote it ({created_by})")]
    UnsupportedFormat {
        path: PathBuf,
        format: u32,
        created_by: String,
    },

    #[error("backup {path} is damaged: file {file}: {reason}; restore another backup")]
    Damaged {
        path: PathBuf,
        file: String,
        reason: String,
    },

    #[error("cannot restore into {path}: the folder is not empty; restore into a new data folder, or move the existing database away first")]
    TargetNotEmpty { path: PathBuf },

    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error(transparent)]
    Store(#[from] StoreError),

    /// The restored copy opened, but the master key check failed on it.
    #[error("the restored database failed its check: {0}")]
    Check(VaultError),
}

impl BackupError {
    pub(crate) fn io(action: &'static str, path: &Path, source: io::Error) -> BackupError {
        BackupError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

/// Checks a backup name against [`BACKUP_NAME_RULE`], so that a name is one
/// plain folder name and can never reach outside the backup folder.
pub fn validate_backup_name(name: &str) -> Result<(), BackupError> {
    let reject = |reason| {
        Err(BackupError::InvalidName {
            name: name.chars().take(80).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return reject("it is empty");
    }
    if name.len() > MAX_BACKUP_NAME_BYTES {
        return reject("it is longer than 64 bytes");
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return reject("it must start with a letter or digit");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return reject("it contains a character that is not allowed");
    }
    Ok(())
}

/// Writes a backup of `store` into `backup_dir/name` and returns its manifest.
///
/// The folder `backup_dir/name` is created first and must not exist, so a
/// backup never replaces another. If any step fails, the folder is removed
/// again. `progress` receives one line per step.
pub fn create_backup(
    store: &RocksStore,
    backup_dir: &Path,
    name: &str,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<BackupManifest, BackupError> {
    validate_backup_name(name)?;
    fs::create_dir_all(backup_dir)
        .map_err(|e| BackupError::io("create the backup folder", backup_dir, e))?;
    let folder = backup_dir.join(name);
    // Only the owner may enter: the backup contains secret names, definitions
    // and audit records in plain text beside the ciphertexts.
    match private_folder(&folder) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(BackupError::AlreadyExists { path: folder });
        }
        Err(e) => return Err(BackupError::io("create the backup folder", &folder, e)),
    }

    let result = write_backup(store, &folder, name, progress);
    if result.is_err() {
        if let Err(error) = fs::remove_dir_all(&folder) {
            tracing::warn!(
                path = %folder.display(),
                error = %error,
                "removing a failed backup folder failed; delete it by hand"
            );
        }
    }
    result
}

fn write_backup(
    store: &RocksStore,
    folder: &Path,
    name: &str,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<BackupManifest, BackupError> {
    let database = folder.join(DATABASE_FOLDER);
    progress(Progress::Step(&format!(
        "writing a checkpoint of {} to {}",
        store.path().display(),
        database.display()
    )));
    store.checkpoint(&database)?;

    let names = list_files(&database)?;
    progress(Progress::Step(&format!(
        "computing SHA-256 digests of {} files",
        names.len()
    )));
    let mut counter = FileCounter::new(names.len(), None);
    let mut files = Vec::with_capacity(names.len());
    for file_name in names {
        let path = database.join(&file_name);
        let (bytes, sha256) = digest_file(&path, true)?;
        counter.done(bytes, progress);
        files.push(BackupFile {
            name: file_name,
            bytes,
            sha256,
        });
    }
    sync_folder(&database)?;

    let manifest = BackupManifest {
        format: MANIFEST_FORMAT,
        name: name.to_owned(),
        created_at_ms: unix_now_ms(),
        created_by: format!("keygate-vault {}", env!("CARGO_PKG_VERSION")),
        files,
    };
    progress(Progress::Step(&format!("writing {MANIFEST_FILE}")));
    write_manifest(folder, &manifest)?;
    progress(Progress::Step(&format!(
        "backup {name} complete: {} files, {} bytes",
        manifest.files.len(),
        manifest.total_bytes()
    )));
    tracing::info!(
        backup.name = %name,
        backup.path = %folder.display(),
        backup.files = manifest.files.len(),
        backup.bytes = manifest.total_bytes(),
        "backup written"
    );
    Ok(manifest)
}

/// Creates one folder that only its owner may list or enter (mode 0700).
pub(crate) fn private_folder(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new().mode(0o700).create(path)
}

/// Reads a backup's manifest and checks every file it lists against its size
/// and SHA-256 digest. Returns the manifest when everything matches.
pub fn verify_backup(
    folder: &Path,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<BackupManifest, BackupError> {
    let manifest = read_manifest(folder)?;
    let database = folder.join(DATABASE_FOLDER);
    progress(Progress::Step(&format!(
        "checking {} files ({} bytes) of backup {} against its manifest",
        manifest.files.len(),
        manifest.total_bytes(),
        manifest.name
    )));
    let mut counter = FileCounter::new(manifest.files.len(), Some(manifest.total_bytes()));
    for file in &manifest.files {
        let path = database.join(&file.name);
        let damaged = |reason: String| BackupError::Damaged {
            path: folder.to_owned(),
            file: file.name.clone(),
            reason,
        };
        let (bytes, sha256) = match digest_file(&path, false) {
            Ok(found) => found,
            Err(BackupError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Err(damaged("the file is missing".to_owned()));
            }
            Err(other) => return Err(other),
        };
        if bytes != file.bytes {
            return Err(damaged(format!(
                "it has {bytes} bytes, the manifest records {}",
                file.bytes
            )));
        }
        if sha256 != file.sha256 {
            return Err(damaged(
                "its SHA-256 digest differs from the one in the manifest".to_owned(),
            ));
        }
        counter.done(bytes, progress);
    }
    Ok(manifest)
}

/// Progress report of a backup, verification or restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress<'a> {
    /// A step begins; the text names it.
    Step(&'a str),
    /// One more file of the current step is done.
    Files {
        done: usize,
        total: usize,
        bytes_done: u64,
        /// Known when a manifest lists the files' sizes.
        bytes_total: Option<u64>,
    },
}

/// Counts the files of one step and reports each.
pub(crate) struct FileCounter {
    done: usize,
    total: usize,
    bytes_done: u64,
    bytes_total: Option<u64>,
}

impl FileCounter {
    pub(crate) fn new(total: usize, bytes_total: Option<u64>) -> FileCounter {
        FileCounter {
            done: 0,
            total,
            bytes_done: 0,
            bytes_total,
        }
    }

    pub(crate) fn done(&mut self, bytes: u64, progress: &mut dyn FnMut(Progress<'_>)) {
        self.done += 1;
        self.bytes_done += bytes;
        progress(Progress::Files {
            done: self.done,
            total: self.total,
            bytes_done: self.bytes_done,
            bytes_total: self.bytes_total,
        });
    }
}

/// Reads and checks the manifest of the backup in `folder`.
pub fn read_manifest(folder: &Path) -> Result<BackupManifest, BackupError> {
    if !folder.is_dir() {
        return Err(BackupError::NotFound {
            path: folder.to_owned(),
        });
    }
    let path = folder.join(MANIFEST_FILE);
    let incomplete = |reason: String| BackupError::Incomplete {
        path: folder.to_owned(),
        reason,
    };
    let text = match fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(incomplete(format!(
                "{MANIFEST_FILE} is missing, so the backup did not finish or this is another folder"
            )));
        }
        Err(e) => return Err(BackupError::io("read", &path, e)),
    };
    let manifest: BackupManifest = serde_json::from_slice(&text)
        .map_err(|e| incomplete(format!("{MANIFEST_FILE} is not a valid manifest: {e}")))?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(BackupError::UnsupportedFormat {
            path: folder.to_owned(),
            format: manifest.format,
            created_by: manifest.created_by,
        });
    }
    for file in &manifest.files {
        let plain = !file.name.is_empty()
            && file.name != "."
            && file.name != ".."
            && !file.name.contains(['/', '\\', '\0']);
        if !plain {
            return Err(incomplete(format!(
                "{MANIFEST_FILE} lists {:?}, which is not a plain file name",
                file.name
            )));
        }
    }
    Ok(manifest)
}

fn write_manifest(folder: &Path, manifest: &BackupManifest) -> Result<(), BackupError> {
    let json = serde_json::to_vec_pretty(manifest).expect("a manifest serializes to JSON");
    let partial = folder.join(format!("{MANIFEST_FILE}.partial"));
    let mut file =
        fs::File::create(&partial).map_err(|e| BackupError::io("create", &partial, e))?;
    file.write_all(&json)
        .and_then(|()| file.sync_all())
        .map_err(|e| BackupError::io("write", &partial, e))?;
    let path = folder.join(MANIFEST_FILE);
    fs::rename(&partial, &path).map_err(|e| BackupError::io("rename into place", &path, e))?;
    sync_folder(folder)?;
    if let Some(parent) = folder.parent() {
        sync_folder(parent)?;
    }
    Ok(())
}

/// Names of the regular files in `folder`, sorted.
pub(crate) fn list_files(folder: &Path) -> Result<Vec<String>, BackupError> {
    let entries = fs::read_dir(folder).map_err(|e| BackupError::io("list", folder, e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| BackupError::io("list", folder, e))?;
        let file_type = entry
            .file_type()
            .map_err(|e| BackupError::io("inspect", &entry.path(), e))?;
        if !file_type.is_file() {
            return Err(BackupError::Damaged {
                path: folder.to_owned(),
                file: entry.file_name().to_string_lossy().into_owned(),
                reason: "it is not a regular file".to_owned(),
            });
        }
        let name = entry
            .file_name()
            .into_string()
            .map_err(|raw| BackupError::Damaged {
                path: folder.to_owned(),
                file: raw.to_string_lossy().into_owned(),
                reason: "its name is not UTF-8".to_owned(),
            })?;
        names.push(name);
    }
    names.sort();
    Ok(names)
}

/// Returns the size and SHA-256 (hex) of a file, syncing it to disk first
/// when `sync` is set.
pub(crate) fn digest_file(path: &Path, sync: bool) -> Result<(u64, String), BackupError> {
    let mut file = fs::File::open(path).map_err(|e| BackupError::io("open", path, e))?;
    if sync {
        file.sync_all()
            .map_err(|e| BackupError::io("sync", path, e))?;
    }
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buffer = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    loop {
        let read = file
            .read(&mut buffer)
            .map_err(|e| BackupError::io("read", path, e))?;
        if read == 0 {
            break;
        }
        context.update(&buffer[..read]);
        bytes += read as u64;
    }
    Ok((bytes, crate::error::hex(context.finish().as_ref())))
}

fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Syncs a folder, so the names created in it survive a crash.
pub(crate) fn sync_folder(folder: &Path) -> Result<(), BackupError> {
    fs::File::open(folder)
        .and_then(|handle| handle.sync_all())
        .map_err(|e| BackupError::io("sync", folder, e))
}
