//! The server's token signing keys: kept sealed in the vault, rotated by an
//! operator, published in the JWK set before they sign, and dropped once
//! every token they signed has expired.

use std::path::Path;
use std::sync::{Arc, RwLock};

use keygate_auth::{
    unix_now, Claims, KeyError, KeyRing, KeyStatus, SigningKey, TokenIssuer, TokenRequest,
};
use keygate_vault::{Vault, VaultError};
use tracing::{info, warn};

/// Name of the vault system secret that stores the key ring.
const SYSTEM_SECRET_NAME: &str = "token_signing_keys";

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("cannot remove the imported key file {path}: {source}; delete it by hand, the key is now in the vault")]
    RemoveFile {
        path: String,
        source: std::io::Error,
    },
}

/// Schedule settings of the key ring.
#[derive(Clone, Debug)]
pub struct SigningSettings {
    pub issuer: String,
    pub audience: String,
    /// Time between a rotation publishing a key and that key signing.
    pub publish_delay_secs: u64,
    /// How long a replaced key stays published: the maximum token lifetime plus the leeway.
    pub retention_secs: u64,
}

pub struct SigningKeys {
    ring: RwLock<KeyRing>,
    vault: Arc<Vault>,
    settings: SigningSettings,
}

impl SigningKeys {
    /// Loads the ring from the vault. On the first start it imports the key
    /// file at `import_path` if there is one (then deletes the file), or else
    /// generates a key, and stores the ring sealed in the vault.
    pub fn load_or_init(
        vault: Arc<Vault>,
        import_path: &Path,
        settings: SigningSettings,
    ) -> Result<SigningKeys, SigningError> {
        let ring = match load_ring(&vault)? {
            Some(ring) => {
                if import_path.exists() {
                    warn!(path = %import_path.display(), "a token signing key file exists although the vault already stores the keys; the file is ignored, delete it");
                }
                ring
            }
            None => {
                let key = if import_path.exists() {
                    SigningKey::load(import_path)?
                } else {
                    SigningKey::generate()?
                };
                let ring = KeyRing::with_key(key, unix_now());
                vault.put_system_secret(SYSTEM_SECRET_NAME, &ring.to_json())?;
                if import_path.exists() {
                    std::fs::remove_file(import_path).map_err(|source| {
                        SigningError::RemoveFile {
                            path: import_path.display().to_string(),
                            source,
                        }
                    })?;
                    info!(path = %import_path.display(), "imported the token signing key into the vault and deleted the file");
                }
                ring
            }
        };
        Ok(SigningKeys {
            ring: RwLock::new(ring),
            vault,
            settings,
        })
    }

    /// Signs a token with the key that is active now.
    pub fn issue(&self, request: &TokenRequest) -> Result<(String, Claims), KeyError> {
        let key = self.active_key();
        TokenIssuer::new(
            key,
            self.settings.issuer.clone(),
            self.settings.audience.clone(),
        )
        .issue(request)
    }

    /// Seconds since the key in use started signing.
    pub fn active_key_age_secs(&self) -> u64 {
        let now = unix_now();
        now.saturating_sub(
            self.ring
                .read()
                .expect("key ring lock")
                .active(now)
                .activates_at,
        )
    }

    pub fn active_key(&self) -> Arc<SigningKey> {
        self.ring
            .read()
            .expect("key ring lock")
            .active(unix_now())
            .key
            .clone()
    }

    pub fn verifying_keys(&self) -> Vec<keygate_auth::VerifyingKey> {
        self.ring.read().expect("key ring lock").verifying_keys()
    }

    pub fn status(&self) -> Vec<KeyStatus> {
        self.ring
            .read()
            .expect("key ring lock")
            .status(unix_now(), self.settings.retention_secs)
    }

    /// Adds the next key and stores the ring; returns the new key's status.
    pub fn rotate(&self) -> Result<KeyStatus, SigningError> {
        let mut ring = self.ring.write().expect("key ring lock");
        let now = unix_now();
        let mut next = ring.clone();
        let kid = next
            .rotate(now, self.settings.publish_delay_secs)?
            .key
            .kid()
            .to_owned();
        self.vault
            .put_system_secret(SYSTEM_SECRET_NAME, &next.to_json())?;
        *ring = next;
        info!(key.id = %kid, activates_in_s = self.settings.publish_delay_secs, "token signing key rotated");
        let status = ring.status(now, self.settings.retention_secs);
        Ok(status
            .into_iter()
            .find(|s| s.kid == kid)
            .expect("the new key is in the ring"))
    }

    /// Drops keys whose tokens have all expired and stores the ring; returns
    /// whether the set of published keys changed.
    pub fn prune(&self) -> Result<bool, SigningError> {
        let mut ring = self.ring.write().expect("key ring lock");
        let mut next = ring.clone();
        let removed = next.prune(unix_now(), self.settings.retention_secs);
        if removed.is_empty() {
            return Ok(false);
        }
        self.vault
            .put_system_secret(SYSTEM_SECRET_NAME, &next.to_json())?;
        *ring = next;
        info!(key.ids = ?removed, "token signing keys unpublished after their last tokens expired");
        Ok(true)
    }
}

/// Reads the ring from the vault, if one was stored.
pub fn load_ring(vault: &Vault) -> Result<Option<KeyRing>, SigningError> {
    match vault.get_system_secret(SYSTEM_SECRET_NAME)? {
        Some(json) => Ok(Some(KeyRing::from_json(&json)?)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_vault::{MasterKey, MemStore};

    fn settings(delay: u64) -> SigningSettings {
        SigningSettings {
            issuer: "keygate".into(),
            audience: "keygate".into(),
            publish_delay_secs: delay,
            retention_secs: 3600,
        }
    }

    #[test]
    fn imported_file_is_deleted_and_ring_persists() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jwt-signing.pem");
        let key = SigningKey::generate().unwrap();
        key.save(&file).unwrap();
        let vault = Arc::new(Vault::new(Arc::new(MemStore::new()), MasterKey::generate()));

        let keys = SigningKeys::load_or_init(vault.clone(), &file, settings(0)).unwrap();
        assert!(
            !file.exists(),
            "the plain key file is gone after the import"
        );
        assert_eq!(keys.active_key().kid(), key.kid());

        let again = SigningKeys::load_or_init(vault, &file, settings(0)).unwrap();
        assert_eq!(
            again.active_key().kid(),
            key.kid(),
            "the ring comes back from the vault"
        );
    }

    #[test]
    fn rotation_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Arc::new(Vault::new(Arc::new(MemStore::new()), MasterKey::generate()));
        let keys =
            SigningKeys::load_or_init(vault.clone(), &dir.path().join("none.pem"), settings(300))
                .unwrap();
        let first = keys.active_key().kid().to_owned();
        let next = keys.rotate().unwrap();
        assert_eq!(next.state, "pending");
        assert_eq!(
            keys.active_key().kid(),
            first,
            "the new key waits for its publish delay"
        );
        assert_eq!(keys.verifying_keys().len(), 2);
        assert!(matches!(
            keys.rotate(),
            Err(SigningError::Key(KeyError::RotationPending { .. }))
        ));
        let reloaded =
            SigningKeys::load_or_init(vault, &dir.path().join("none.pem"), settings(300)).unwrap();
        assert_eq!(reloaded.verifying_keys().len(), 2);
    }
}
