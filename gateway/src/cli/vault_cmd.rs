//! `keygate vault rotate-master` and `keygate vault wrap-key`: offline work
//! on the master key of a stopped server.
//!
//! Neither command prints key material. Each writes a new key to a new file
//! with mode 0600: the plain key in hex, or the KMS-wrapped key as base64
//! ciphertext. Existing files are never overwritten.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use keygate_vault::keys::KEY_LEN;
use keygate_vault::{MasterKey, RocksStore, StoreError, Vault, VaultError};
use zeroize::Zeroizing;

use super::{ConfigSource, EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
use crate::config::{Config, MasterKeySourceKind};
use crate::master_key::{self, AwsKmsSource, MasterKeySource};

#[derive(Args)]
pub struct RotateMasterArgs {
    /// The stopped server's configuration or data folder; its master-key source provides the current key.
    #[command(flatten)]
    source: ConfigSource,
    /// New file for the new key, created with mode 0600 and never overwritten: the key as 64 hex characters for the `file` and `env` sources, the KMS-wrapped key for `aws_kms`.
    #[arg(long)]
    new_key_file: PathBuf,
    /// With `aws_kms`: wrap the new key under this KMS key instead of vault.aws_kms.key_id.
    #[arg(long)]
    key_id: Option<String>,
}

#[derive(Args)]
pub struct WrapKeyArgs {
    /// The server's configuration, with vault.master_key_source = "aws_kms".
    #[command(flatten)]
    source: ConfigSource,
    /// Existing master key file (64 hex characters, mode 0600) to wrap, e.g. when moving a store from the `file` source to `aws_kms`; without it a new key is generated, which only a new store accepts.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Output file of the wrapped key [default: vault.aws_kms.wrapped_key_file, or DATA_DIR/keys/master.key.kms].
    #[arg(long)]
    out: Option<PathBuf>,
    /// KMS key to wrap under [default: vault.aws_kms.key_id].
    #[arg(long)]
    key_id: Option<String>,
}

/// A failure with the exit code it maps to.
struct Failure {
    code: i32,
    message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }

    fn runtime(message: impl std::fmt::Display) -> Failure {
        Failure {
            code: EXIT_FAILURE,
            message: message.to_string(),
        }
    }
}

fn finish(result: Result<(), Failure>) -> i32 {
    match result {
        Ok(()) => EXIT_OK,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            failure.code
        }
    }
}

/// Re-seals every data key under a new master key, in one atomic write.
pub async fn rotate_master(args: RotateMasterArgs) -> i32 {
    finish(rotate_master_inner(args).await)
}

async fn rotate_master_inner(args: RotateMasterArgs) -> Result<(), Failure> {
    let config = args.source.load().map_err(Failure::usage)?;
    if args.new_key_file.exists() {
        return Err(Failure::usage(format!(
            "--new-key-file {} already exists; name a new file, an existing one is never overwritten",
            args.new_key_file.display()
        )));
    }
    let source =
        MasterKeySource::from_config(&config).map_err(|e| Failure::usage(e.to_string()))?;
    let vault = open_vault_offline(&config, &source).await?;
    let old_version = vault.master_key_version();

    let new_key = match &source {
        MasterKeySource::File { .. } | MasterKeySource::Env { .. } => {
            MasterKey::create(&args.new_key_file).map_err(Failure::runtime)?
        }
        MasterKeySource::AwsKms(kms) => {
            let key_id = args
                .key_id
                .clone()
                .or_else(|| kms.key_id().map(str::to_owned))
                .ok_or_else(|| {
                    Failure::usage(
                        "the KMS key to wrap the new master key under is unknown; set vault.aws_kms.key_id or pass --key-id",
                    )
                })?;
            let bytes = master_key::generate_key_bytes();
            write_wrapped_key(kms, &key_id, &bytes, &args.new_key_file).await?;
            MasterKey::from_bytes(&bytes[..]).map_err(Failure::runtime)?
        }
    };

    let rotated = {
        let vault = vault.clone();
        tokio::task::spawn_blocking(move || vault.rotate_master(new_key))
            .await
            .map_err(|e| Failure::runtime(format!("the rotation task failed: {e}")))?
    };
    let rotation = match rotated {
        Ok(rotation) => rotation,
        Err(e) => {
            // The batch is atomic, so the store is still sealed by the old
            // key and the new file is of no use.
            let _ = std::fs::remove_file(&args.new_key_file);
            return Err(Failure::runtime(format!(
                "rotating the master key failed, and the store still uses the old key: {e}"
            )));
        }
    };

    println!(
        "rotated the master key from version {old_version} to version {}: re-sealed {} data keys and {} server secrets; secret values were not rewritten",
        rotation.version, rotation.data_keys, rotation.system_secrets
    );
    println!("the old master key no longer opens the store.");
    print_next_steps(&config, &source, &args);
    Ok(())
}

fn print_next_steps(config: &Config, source: &MasterKeySource, args: &RotateMasterArgs) {
    let new = args.new_key_file.display();
    match source {
        MasterKeySource::File { path } => println!(
            "next: set vault.master_key_file = \"{new}\" in the configuration, or move {new} over {}, then start the server",
            path.display()
        ),
        MasterKeySource::Env { variable } => println!(
            "next: set {variable} to the contents of {new} wherever the server's environment is defined, start the server, then delete {new}"
        ),
        MasterKeySource::AwsKms(kms) => {
            println!(
                "next: set vault.aws_kms.wrapped_key_file = \"{new}\", or move {new} over {}, then start the server",
                kms.wrapped_key_file().display()
            );
            if let Some(key_id) = &args.key_id {
                if config.vault.aws_kms.key_id.as_deref() != Some(key_id.as_str()) {
                    println!("also set vault.aws_kms.key_id = \"{key_id}\"");
                }
            }
        }
    }
}

/// Wraps a master key with KMS for the `aws_kms` source and writes the wrapped file.
pub async fn wrap_key(args: WrapKeyArgs) -> i32 {
    finish(wrap_key_inner(args).await)
}

async fn wrap_key_inner(args: WrapKeyArgs) -> Result<(), Failure> {
    let config = args.source.load().map_err(Failure::usage)?;
    if config.vault.master_key_source != MasterKeySourceKind::AwsKms {
        return Err(Failure::usage(
            "`keygate vault wrap-key` needs vault.master_key_source = \"aws_kms\" and the [vault.aws_kms] settings in the configuration",
        ));
    }
    let MasterKeySource::AwsKms(kms) =
        MasterKeySource::from_config(&config).map_err(|e| Failure::usage(e.to_string()))?
    else {
        unreachable!("the source kind was checked above");
    };
    let key_id = args
        .key_id
        .clone()
        .or_else(|| kms.key_id().map(str::to_owned))
        .ok_or_else(|| Failure::usage("set vault.aws_kms.key_id or pass --key-id"))?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| config.wrapped_key_path());
    if out.exists() {
        return Err(Failure::usage(format!(
            "{} already exists and is never overwritten; pass --out to write elsewhere",
            out.display()
        )));
    }

    let bytes = match &args.key_file {
        Some(path) => read_key_file(path)?,
        None => {
            let db = config.db_dir();
            if db.join("CURRENT").is_file() {
                return Err(Failure::usage(format!(
                    "a store exists in {}, sealed by its current master key, which a new key cannot open; pass --key-file with that key, or use `keygate vault rotate-master` to change it",
                    db.display()
                )));
            }
            master_key::generate_key_bytes()
        }
    };
    write_wrapped_key(&kms, &key_id, &bytes, &out).await?;
    let origin = match &args.key_file {
        Some(path) => format!("the master key from {}", path.display()),
        None => "a new master key".to_owned(),
    };
    println!(
        "wrote {}: {origin}, wrapped by KMS key {key_id} at {}",
        out.display(),
        kms.client().endpoint()
    );
    if out != config.wrapped_key_path() {
        println!(
            "set vault.aws_kms.wrapped_key_file = \"{}\" in the configuration",
            out.display()
        );
    }
    Ok(())
}

/// Opens the stopped server's store and checks the current master key against it.
async fn open_vault_offline(
    config: &Config,
    source: &MasterKeySource,
) -> Result<Arc<Vault>, Failure> {
    let db = config.db_dir();
    if !db.join("CURRENT").is_file() {
        return Err(Failure::runtime(format!(
            "no store in {}; pass the --config or --data-dir of the server whose master key to rotate",
            db.display()
        )));
    }
    let key = source.fetch().await.map_err(|e| {
        Failure::runtime(format!(
            "cannot get the current master key from {}: {e}",
            source.describe()
        ))
    })?;
    let store = match RocksStore::open(&db) {
        Ok(store) => store,
        Err(StoreError::Locked { .. }) => {
            return Err(Failure::runtime(format!(
                "a running process has the store in {} open; stop the server first, then run this command again",
                db.display()
            )))
        }
        Err(e) => return Err(Failure::runtime(e)),
    };
    let vault = Arc::new(Vault::with_options(
        Arc::new(store),
        key,
        config.vault.vault_options(),
    ));
    let checked = vault.clone();
    let verified = tokio::task::spawn_blocking(move || checked.verify_master_key())
        .await
        .map_err(|e| Failure::runtime(format!("the check task failed: {e}")))?;
    match verified {
        Ok(_) => Ok(vault),
        Err(VaultError::MasterKey { reason, .. }) => Err(Failure::runtime(format!(
            "the master key from {} does not open the store in {}: {reason}",
            source.describe(),
            db.display()
        ))),
        Err(e) => Err(Failure::runtime(e)),
    }
}

/// Wraps `key` under `key_id`, checks that KMS unwraps the result to the same
/// key, and writes it to the new file `path` (mode 0600, fsynced).
async fn write_wrapped_key(
    kms: &AwsKmsSource,
    key_id: &str,
    key: &[u8; KEY_LEN],
    path: &Path,
) -> Result<(), Failure> {
    let text = kms.wrap(key_id, key).await.map_err(Failure::runtime)?;
    let blob = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| Failure::runtime(format!("the wrapped key is not base64: {e}")))?
    };
    let credentials = kms.credentials().map_err(Failure::runtime)?;
    let unwrapped = kms
        .client()
        .decrypt(&credentials, &blob, Some(key_id))
        .await
        .map_err(|e| {
            Failure::runtime(format!(
                "KMS wrapped the key but does not unwrap it again, so nothing was written: {e}"
            ))
        })?;
    if unwrapped.as_slice() != key.as_slice() {
        return Err(Failure::runtime(format!(
            "KMS at {} unwrapped the new wrapped key to other bytes, so nothing was written",
            kms.client().endpoint()
        )));
    }
    write_new_private_file(path, text.as_bytes())
        .map_err(|e| Failure::runtime(format!("cannot write {}: {e}", path.display())))
}

/// Reads a master key file after [`MasterKey::load`] has checked its mode and format.
fn read_key_file(path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>, Failure> {
    MasterKey::load(path).map_err(Failure::runtime)?;
    let text = Zeroizing::new(
        std::fs::read(path)
            .map_err(|e| Failure::runtime(format!("cannot read {}: {e}", path.display())))?,
    );
    master_key::parse_hex_key(&text)
        .map_err(|reason| Failure::runtime(format!("{}: {reason}", path.display())))
}

/// Creates `path` with mode 0600, failing if it exists, and fsyncs it.
fn write_new_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;

    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let written = file.write_all(contents).and_then(|()| file.sync_all());
    if written.is_err() {
        let _ = std::fs::remove_file(path);
    }
    written
}
