//! `keygate vault backup` and `keygate vault restore`.
//!
//! A running server holds the RocksDB lock, so an online backup is a request
//! to its API (`POST /v1/admin/vault/backups`). With `--offline` the command
//! opens a stopped server's store itself. A restore always runs offline, into
//! a data folder that no server uses yet.

use std::path::PathBuf;

use bytes::Bytes;
use clap::Args;
use keygate_vault::backup::{self, BackupError};
use keygate_vault::{MasterKey, RocksStore, StoreError};

use super::keys_cmd::{self, ApiArgs};
use super::progress::FileProgress;
use super::{ConfigSource, EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
use crate::backups::default_backup_name;

#[derive(Args)]
pub struct BackupArgs {
    /// Name of the backup's folder inside the backup folder [default: backup-<UTC time>].
    #[arg(long)]
    name: Option<String>,
    /// Open the data folder directly instead of asking the server; the server must be stopped.
    #[arg(long)]
    offline: bool,
    /// With --offline: folder to write the backup into [default: vault.backup_dir, or DATA_DIR/backups].
    #[arg(long, requires = "offline")]
    backup_dir: Option<PathBuf>,
    /// With --offline: the stopped server's configuration or data folder.
    #[command(flatten)]
    source: ConfigSource,
    /// Without --offline: how to reach the running server.
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The backup to restore: a folder holding keygate-backup.json, such as BACKUP_DIR/NAME.
    #[arg(long = "from", value_name = "BACKUP")]
    from: PathBuf,
    /// The new server's configuration or data folder; the store goes into its `db` folder, which must be missing or empty.
    #[command(flatten)]
    target: ConfigSource,
    /// Master key file the backed-up store was written with [default: vault.master_key_file, or DATA_DIR/keys/master.key].
    #[arg(long)]
    master_key_file: Option<PathBuf>,
}

pub async fn backup(args: BackupArgs) -> i32 {
    if let Some(name) = &args.name {
        if let Err(e) = backup::validate_backup_name(name) {
            eprintln!("error: --name: {e}");
            return EXIT_USAGE;
        }
    }
    if args.offline {
        backup_offline(&args)
    } else {
        backup_online(&args).await
    }
}

async fn backup_online(args: &BackupArgs) -> i32 {
    let token = match keys_cmd::read_token(&args.api) {
        Ok(token) => token,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let body = match &args.name {
        Some(name) => serde_json::json!({ "name": name }),
        None => serde_json::json!({}),
    };
    println!(
        "asking the server at {} to write a backup",
        keys_cmd::api_addr(&args.api)
    );
    let response = keys_cmd::call(
        &args.api,
        http::Method::POST,
        "/v1/admin/vault/backups",
        &token,
        Bytes::from(body.to_string()),
    )
    .await;
    match response {
        Ok((status, body)) if status.is_success() => {
            let written: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            println!(
                "backup {} written to {} on the server's machine: {} files, {} bytes",
                written["name"].as_str().unwrap_or("?"),
                written["path"].as_str().unwrap_or("?"),
                written["files"],
                written["bytes"],
            );
            print_key_reminder();
            EXIT_OK
        }
        Ok((status, body)) => {
            eprintln!(
                "error: the server responded {status}: {}",
                keys_cmd::pretty(&body)
            );
            EXIT_FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}; is the server running? With the server stopped, use --offline");
            EXIT_FAILURE
        }
    }
}

fn backup_offline(args: &BackupArgs) -> i32 {
    let config = match args.source.load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let db = config.db_dir();
    if !db.join("CURRENT").is_file() {
        eprintln!(
            "error: no store in {}; pass the --config or --data-dir of the server to back up",
            db.display()
        );
        return EXIT_FAILURE;
    }
    let store = match RocksStore::open(&db) {
        Ok(store) => store,
        Err(StoreError::Locked { .. }) => {
            eprintln!(
                "error: a running server has the store in {} open; run `keygate vault backup` without --offline so that server writes the backup",
                db.display()
            );
            return EXIT_FAILURE;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILURE;
        }
    };
    let dir = args
        .backup_dir
        .clone()
        .unwrap_or_else(|| config.backup_dir());
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| default_backup_name(time::OffsetDateTime::now_utc()));
    let mut display = FileProgress::new();
    let created = backup::create_backup(&store, &dir, &name, &mut |p| display.show(p));
    display.finish();
    match created {
        Ok(_) => {
            println!("backup {name} written to {}", dir.join(&name).display());
            print_key_reminder();
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit_code(&e)
        }
    }
}

pub fn restore(args: RestoreArgs) -> i32 {
    if args.target.config.is_none() && args.target.data_dir.is_none() {
        eprintln!(
            "error: name the data folder to restore into with --data-dir NEW (or --config FILE of the server that will use it)"
        );
        return EXIT_USAGE;
    }
    let config = match args.target.load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let key_path = args
        .master_key_file
        .clone()
        .unwrap_or_else(|| config.master_key_path());
    let master = match MasterKey::load(&key_path) {
        Ok(master) => master,
        Err(e) => {
            eprintln!(
                "error: {e}\nThe master key is not part of a backup: pass the key file kept with it as --master-key-file, or place it at {}",
                config.master_key_path().display()
            );
            return EXIT_FAILURE;
        }
    };
    let db = config.db_dir();
    let mut display = FileProgress::new();
    let restored = backup::restore_backup(&args.from, &db, master, &mut |p| display.show(p));
    display.finish();
    match restored {
        Ok(manifest) => {
            println!(
                "restored backup {} ({} files, {} bytes) into {}",
                manifest.name,
                manifest.files.len(),
                manifest.total_bytes(),
                db.display()
            );
            if key_path != config.master_key_path() {
                println!(
                    "the server on this data folder needs the same master key: copy {} to {} (mode 0600) or set vault.master_key_file",
                    key_path.display(),
                    config.master_key_path().display()
                );
            }
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit_code(&e)
        }
    }
}

fn print_key_reminder() {
    println!(
        "the backup holds no master key; keep the master key file separately, without it the backup cannot be decrypted"
    );
}

fn exit_code(error: &BackupError) -> i32 {
    match error {
        BackupError::InvalidName { .. } | BackupError::TargetNotEmpty { .. } => EXIT_USAGE,
        _ => EXIT_FAILURE,
    }
}
