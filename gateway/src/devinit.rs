//! Creates the files a data folder needs on first start: the development CA,
//! a localhost server certificate and the master key. Existing files are
//! kept, so running it again changes nothing. The token signing keys are not
//! files: the server creates them sealed in the vault on its first start.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use keygate_auth::{Scope, ScopeSet, TokenRequest};
use keygate_vault::MasterKey;

use crate::config::Config;
use crate::pki::{write_file, DevCa, PkiError};
use crate::signing::SigningKeys;

/// Names of the server certificate of a development install.
pub const DEV_SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// The account of the development admin token.
pub const DEV_ACCOUNT: &str = "dev";

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot create folder {path}: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("master key: {0}")]
    MasterKey(#[from] keygate_vault::VaultError),
    #[error("token signing key: {0}")]
    SigningKey(#[from] keygate_auth::KeyError),
    #[error("token signing key: {0}")]
    Signing(#[from] crate::signing::SigningError),
}

/// Creates whatever is missing of the data folder; returns the files it created.
pub fn ensure_material(config: &Config) -> Result<Vec<PathBuf>, InitError> {
    let mut created = Vec::new();
    let tls_dir = config.data_dir.join("tls");
    let keys_dir = config.data_dir.join("keys");
    for dir in [&config.data_dir, &tls_dir, &keys_dir] {
        make_private_dir(dir)?;
    }
    let (ca, ca_created) = DevCa::load_or_create(&tls_dir)?;
    if ca_created {
        created.push(tls_dir.join("ca.pem"));
    }
    let cert_path = config.server_cert_path();
    if !cert_path.exists() {
        ca.issue_server_cert(&DEV_SERVER_NAMES)?
            .write(&cert_path, &config.server_key_path())?;
        created.push(cert_path);
    }
    let master_path = config.master_key_path();
    if MasterKey::load_or_create(&master_path)?.1 {
        created.push(master_path);
    }
    Ok(created)
}

/// Writes a fresh admin token for the development account, valid for the
/// maximum token lifetime, to `data_dir/dev-admin.token` (mode 0600).
pub fn write_dev_admin_token(config: &Config, signing: &SigningKeys) -> Result<PathBuf, InitError> {
    let mut scopes = ScopeSet::default();
    for scope in Scope::PLATFORM {
        scopes.insert(scope);
    }
    let (token, _) = signing.issue(&TokenRequest {
        subject: "dev-admin".into(),
        account: DEV_ACCOUNT.into(),
        scopes,
        projects: None,
        lifetime_secs: config.auth.max_token_lifetime_secs,
        certificate_thumbprint: None,
    })?;
    let path = config.data_dir.join("dev-admin.token");
    write_file(&path, token.as_bytes(), 0o600)?;
    Ok(path)
}

fn make_private_dir(dir: &Path) -> Result<(), InitError> {
    let err = |source| InitError::Folder {
        path: dir.into(),
        source,
    };
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(err)
}
