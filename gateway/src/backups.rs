//! Online backups of the vault store, taken by the running server because it
//! holds the RocksDB lock; `POST /v1/admin/vault/backups` calls them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use keygate_vault::backup::{create_backup, BackupError, BackupManifest, Progress};
use keygate_vault::RocksStore;

/// Writes backups of one store into one folder, one backup at a time.
pub struct Backups {
    store: Arc<RocksStore>,
    dir: PathBuf,
    /// Held while a backup runs, so a second request waits for the first.
    running: Mutex<()>,
}

impl Backups {
    pub fn new(store: Arc<RocksStore>, dir: PathBuf) -> Backups {
        Backups {
            store,
            dir,
            running: Mutex::new(()),
        }
    }

    /// Returns the folder that backups are written into (`vault.backup_dir`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a backup named `name`, or `backup-<UTC time>` without a name,
    /// into the backup folder. Blocks until the backup is complete.
    pub fn create(&self, name: Option<&str>) -> Result<BackupManifest, BackupError> {
        let name = match name {
            Some(name) => name.to_owned(),
            None => default_backup_name(time::OffsetDateTime::now_utc()),
        };
        // A poisoned lock is safe to reuse: it guards no data.
        let _running = self
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        create_backup(&self.store, &self.dir, &name, &mut |progress| {
            if let Progress::Step(step) = progress {
                tracing::debug!(backup.name = %name, step, "backup step");
            }
        })
    }
}

/// Returns `backup-YYYYMMDDTHHMMSSZ` for `at`, a name that sorts by time.
pub fn default_backup_name(at: time::OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "backup-{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_name_is_utc_time() {
        let at = time::OffsetDateTime::from_unix_timestamp(1_796_400_005).unwrap();
        assert_eq!(default_backup_name(at), "backup-20261204T160005Z");
        assert!(keygate_vault::backup::validate_backup_name(&default_backup_name(at)).is_ok());
    }
}
