//! The server's token signing keys: kept sealed in the vault, rotated by an
//! operator, published in the JWK set before they sign, and dropped once
//! every token they signed has expired.
//!
//! The public keys are also stored in plain text, so that tokens can be
//! verified while the vault is sealed. Until it is unsealed, agent logins are
//! signed by a standby key that lives only in memory: agents connect and
//! relay tasks, while every other signing operation waits for the vault.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use keygate_auth::{
    unix_now, Claims, JwkSet, KeyError, KeyRing, KeyStatus, SigningKey, TokenIssuer, TokenRequest,
    VerifyingKey,
};
use keygate_vault::{KvStore, Space, StoreError, Vault, VaultError, WriteBatch};
use tracing::{info, warn};

/// Name of the vault system secret that stores the key ring.
const SYSTEM_SECRET_NAME: &str = "token_signing_keys";

/// Key in the `meta` space of the published public keys: a JWK set in plain
/// text, rewritten whenever the ring is stored.
pub const PUBLIC_KEYS_KEY: &[u8] = b"public/token_signing_keys";

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("cannot remove the imported key file {path}: {source}; delete it by hand, the key is now in the vault")]
    RemoveFile {
        path: String,
        source: std::io::Error,
    },
    #[error("the stored public signing keys are not a valid JWK set: {reason}")]
    PublicKeys { reason: String },
    #[error("the token signing keys are sealed in the vault, which is sealed")]
    Sealed,
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

enum RingState {
    /// The vault is sealed: only the stored public keys are known.
    Sealed {
        published: Vec<VerifyingKey>,
    },
    Open {
        ring: KeyRing,
        vault: Arc<Vault>,
    },
}

/// The in-memory key that signs agent tokens while the vault is sealed.
struct StandbyKey {
    key: Arc<SigningKey>,
    /// Whether it signed a token, which then keeps it trusted after the unseal.
    used: AtomicBool,
    /// Unix time from which no token it signed can still be valid; set when
    /// the vault is unsealed.
    expires_at: Option<u64>,
}

pub struct SigningKeys {
    state: RwLock<RingState>,
    standby: RwLock<Option<StandbyKey>>,
    store: Arc<dyn KvStore>,
    settings: SigningSettings,
}

impl SigningKeys {
    /// Opens the keys while the vault is sealed: the public keys come from the
    /// store, and a new standby key signs agent tokens until [`Self::unseal`].
    pub fn open_sealed(
        store: Arc<dyn KvStore>,
        settings: SigningSettings,
    ) -> Result<SigningKeys, SigningError> {
        let published = load_public_keys(store.as_ref())?;
        let standby = StandbyKey {
            key: Arc::new(SigningKey::generate()?),
            used: AtomicBool::new(false),
            expires_at: None,
        };
        Ok(SigningKeys {
            state: RwLock::new(RingState::Sealed { published }),
            standby: RwLock::new(Some(standby)),
            store,
            settings,
        })
    }

    /// Loads the ring from the vault, as [`Self::open_sealed`] and then
    /// [`Self::unseal`] do.
    pub fn load_or_init(
        vault: Arc<Vault>,
        import_path: &Path,
        settings: SigningSettings,
    ) -> Result<SigningKeys, SigningError> {
        let keys = SigningKeys::open_sealed(vault.store().clone(), settings)?;
        keys.unseal(vault, import_path)?;
        Ok(keys)
    }

    /// Loads the ring from the unsealed vault. On the first start it imports
    /// the key file at `import_path` if there is one (then deletes the file),
    /// or else generates a key, and stores the ring sealed in the vault. The
    /// public keys are stored again in plain text.
    ///
    /// The standby key is dropped at once if it signed nothing, or else once
    /// every token it signed has expired.
    pub fn unseal(&self, vault: Arc<Vault>, import_path: &Path) -> Result<(), SigningError> {
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
        store_public_keys(self.store.as_ref(), &ring)?;
        *self.state.write().expect("key ring lock") = RingState::Open { ring, vault };

        let mut standby = self.standby.write().expect("standby key lock");
        let signed = standby
            .as_ref()
            .is_some_and(|key| key.used.load(Ordering::Acquire));
        if !signed {
            *standby = None;
        } else if let Some(key) = standby.as_mut() {
            key.expires_at = Some(unix_now() + self.settings.retention_secs);
        }
        Ok(())
    }

    /// Returns whether the ring is loaded, which it is once the vault is unsealed.
    pub fn is_unsealed(&self) -> bool {
        matches!(
            *self.state.read().expect("key ring lock"),
            RingState::Open { .. }
        )
    }

    /// Signs a token with the key that is active now.
    pub fn issue(&self, request: &TokenRequest) -> Result<(String, Claims), SigningError> {
        let key = self.active_key()?;
        Ok(self.issuer(key).issue(request)?)
    }

    /// Signs an agent token: with the active key, or while the vault is
    /// sealed, with the standby key.
    pub fn issue_agent_token(
        &self,
        request: &TokenRequest,
    ) -> Result<(String, Claims), SigningError> {
        if let Ok(key) = self.active_key() {
            return Ok(self.issuer(key).issue(request)?);
        }
        let guard = self.standby.read().expect("standby key lock");
        if let Some(standby) = guard.as_ref() {
            if !standby.used.swap(true, Ordering::AcqRel) {
                info!(key.id = %standby.key.kid(), "signing agent tokens with an in-memory standby key until the vault is unsealed");
            }
            return Ok(self.issuer(standby.key.clone()).issue(request)?);
        }
        drop(guard);
        // The vault was unsealed since the check above, and the unused
        // standby key is gone.
        Ok(self.issuer(self.active_key()?).issue(request)?)
    }

    fn issuer(&self, key: Arc<SigningKey>) -> TokenIssuer {
        TokenIssuer::new(
            key,
            self.settings.issuer.clone(),
            self.settings.audience.clone(),
        )
    }

    /// Seconds since the key in use started signing, or `None` while the vault is sealed.
    pub fn active_key_age_secs(&self) -> Option<u64> {
        let now = unix_now();
        match &*self.state.read().expect("key ring lock") {
            RingState::Open { ring, .. } => Some(now.saturating_sub(ring.active(now).activates_at)),
            RingState::Sealed { .. } => None,
        }
    }

    pub fn active_key(&self) -> Result<Arc<SigningKey>, SigningError> {
        match &*self.state.read().expect("key ring lock") {
            RingState::Open { ring, .. } => Ok(ring.active(unix_now()).key.clone()),
            RingState::Sealed { .. } => Err(SigningError::Sealed),
        }
    }

    /// Returns the keys of the JWK set: the ring's keys, or while the vault is
    /// sealed, the stored public keys.
    pub fn published_keys(&self) -> Vec<VerifyingKey> {
        match &*self.state.read().expect("key ring lock") {
            RingState::Open { ring, .. } => ring.verifying_keys(),
            RingState::Sealed { published } => published.clone(),
        }
    }

    /// Returns every key a token of this server may carry: the published
    /// keys and the standby key while its tokens may be valid.
    pub fn verifying_keys(&self) -> Vec<VerifyingKey> {
        let mut keys = self.published_keys();
        if let Some(standby) = self.standby.read().expect("standby key lock").as_ref() {
            keys.push(standby.key.verifying_key().clone());
        }
        keys
    }

    pub fn status(&self) -> Result<Vec<KeyStatus>, SigningError> {
        match &*self.state.read().expect("key ring lock") {
            RingState::Open { ring, .. } => {
                Ok(ring.status(unix_now(), self.settings.retention_secs))
            }
            RingState::Sealed { .. } => Err(SigningError::Sealed),
        }
    }

    /// Adds the next key and stores the ring; returns the new key's status.
    pub fn rotate(&self) -> Result<KeyStatus, SigningError> {
        let mut state = self.state.write().expect("key ring lock");
        let RingState::Open { ring, vault } = &mut *state else {
            return Err(SigningError::Sealed);
        };
        let now = unix_now();
        let mut next = ring.clone();
        let kid = next
            .rotate(now, self.settings.publish_delay_secs)?
            .key
            .kid()
            .to_owned();
        vault.put_system_secret(SYSTEM_SECRET_NAME, &next.to_json())?;
        store_public_keys(self.store.as_ref(), &next)?;
        *ring = next;
        info!(key.id = %kid, activates_in_s = self.settings.publish_delay_secs, "token signing key rotated");
        let status = ring.status(now, self.settings.retention_secs);
        Ok(status
            .into_iter()
            .find(|s| s.kid == kid)
            .expect("the new key is in the ring"))
    }

    /// Drops keys whose tokens have all expired, and stores the ring; returns
    /// whether the set of trusted keys changed.
    pub fn prune(&self) -> Result<bool, SigningError> {
        let now = unix_now();
        let standby_dropped = {
            let mut standby = self.standby.write().expect("standby key lock");
            let expired = standby
                .as_ref()
                .and_then(|key| key.expires_at)
                .is_some_and(|at| at <= now);
            if expired {
                *standby = None;
                info!("dropped the standby signing key: every agent token it signed has expired");
            }
            expired
        };

        let mut state = self.state.write().expect("key ring lock");
        let RingState::Open { ring, vault } = &mut *state else {
            return Ok(standby_dropped);
        };
        let mut next = ring.clone();
        let removed = next.prune(now, self.settings.retention_secs);
        if removed.is_empty() {
            return Ok(standby_dropped);
        }
        vault.put_system_secret(SYSTEM_SECRET_NAME, &next.to_json())?;
        store_public_keys(self.store.as_ref(), &next)?;
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

/// Writes the ring's public keys in plain text.
///
/// NOTE: this is a second write after the sealed ring. If the process stops
/// between the two, the stored public keys lag behind the ring until the next
/// unseal rewrites them, and while sealed, tokens of a key rotated in just
/// then do not verify.
fn store_public_keys(store: &dyn KvStore, ring: &KeyRing) -> Result<(), SigningError> {
    let set = JwkSet {
        keys: ring.verifying_keys().iter().map(|k| k.to_jwk()).collect(),
    };
    let mut batch = WriteBatch::default();
    batch.put(
        Space::Meta,
        PUBLIC_KEYS_KEY.to_vec(),
        serde_json::to_vec(&set).expect("JWK sets serialize"),
    );
    store.write(batch)?;
    Ok(())
}

/// Reads the stored public keys; a store without them (new, or written by a
/// version before they were stored) has none.
fn load_public_keys(store: &dyn KvStore) -> Result<Vec<VerifyingKey>, SigningError> {
    let Some(bytes) = store.get(Space::Meta, PUBLIC_KEYS_KEY)? else {
        return Ok(Vec::new());
    };
    let set: JwkSet = serde_json::from_slice(&bytes).map_err(|e| SigningError::PublicKeys {
        reason: e.to_string(),
    })?;
    set.keys
        .iter()
        .map(|jwk| {
            VerifyingKey::from_jwk(jwk).map_err(|e| SigningError::PublicKeys {
                reason: e.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_vault::{KvStore, MasterKey, MemStore};

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
        assert_eq!(keys.active_key().unwrap().kid(), key.kid());

        let again = SigningKeys::load_or_init(vault, &file, settings(0)).unwrap();
        assert_eq!(
            again.active_key().unwrap().kid(),
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
        let first = keys.active_key().unwrap().kid().to_owned();
        let next = keys.rotate().unwrap();
        assert_eq!(next.state, "pending");
        assert_eq!(
            keys.active_key().unwrap().kid(),
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

    fn agent_request() -> TokenRequest {
        let mut scopes = keygate_auth::ScopeSet::default();
        scopes.insert(keygate_auth::Scope::AgentSession);
        TokenRequest {
            subject: "agent-1".into(),
            account: "acme".into(),
            scopes,
            projects: None,
            lifetime_secs: 60,
            certificate_thumbprint: None,
        }
    }

    #[test]
    fn sealed_keys_come_from_public_record() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn KvStore> = Arc::new(MemStore::new());
        let vault = Arc::new(Vault::new(store.clone(), MasterKey::generate()));
        let unsealed =
            SigningKeys::load_or_init(vault, &dir.path().join("none.pem"), settings(300)).unwrap();
        unsealed.rotate().unwrap();
        let published: Vec<String> = unsealed
            .published_keys()
            .iter()
            .map(|k| k.kid.clone())
            .collect();
        assert_eq!(published.len(), 2);

        let sealed = SigningKeys::open_sealed(store, settings(300)).unwrap();
        assert!(!sealed.is_unsealed());
        let stored: Vec<String> = sealed
            .published_keys()
            .iter()
            .map(|k| k.kid.clone())
            .collect();
        assert_eq!(
            stored, published,
            "the public keys survive without the master key"
        );
        assert!(matches!(sealed.active_key(), Err(SigningError::Sealed)));
        assert!(matches!(sealed.status(), Err(SigningError::Sealed)));
        assert!(matches!(sealed.rotate(), Err(SigningError::Sealed)));
        assert!(matches!(
            sealed.issue(&agent_request()),
            Err(SigningError::Sealed)
        ));
        assert_eq!(sealed.active_key_age_secs(), None);
    }

    #[test]
    fn standby_key_signs_agent_tokens_while_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn KvStore> = Arc::new(MemStore::new());
        let keys = SigningKeys::open_sealed(store.clone(), settings(0)).unwrap();
        assert!(
            keys.published_keys().is_empty(),
            "a new store has no keys yet"
        );
        let (token, _) = keys.issue_agent_token(&agent_request()).unwrap();
        let standby_kid = keys.verifying_keys()[0].kid.clone();
        assert!(!token.is_empty());
        assert!(
            !keys.published_keys().iter().any(|k| k.kid == standby_kid),
            "the standby key is trusted here but not published"
        );

        let vault = Arc::new(Vault::new(store, MasterKey::generate()));
        keys.unseal(vault, &dir.path().join("none.pem")).unwrap();
        let trusted: Vec<String> = keys
            .verifying_keys()
            .iter()
            .map(|k| k.kid.clone())
            .collect();
        assert!(
            trusted.contains(&standby_kid),
            "tokens the standby key signed stay valid after the unseal"
        );
        let (_, claims) = keys.issue_agent_token(&agent_request()).unwrap();
        assert!(claims.exp > 0);
        assert_ne!(keys.active_key().unwrap().kid(), standby_kid);
        assert!(
            !keys.prune().unwrap(),
            "the standby key waits for its tokens to expire"
        );
    }

    #[test]
    fn unused_standby_key_dropped_at_unseal() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn KvStore> = Arc::new(MemStore::new());
        let keys = SigningKeys::open_sealed(store.clone(), settings(0)).unwrap();
        assert_eq!(keys.verifying_keys().len(), 1, "the standby key");
        let vault = Arc::new(Vault::new(store, MasterKey::generate()));
        keys.unseal(vault, &dir.path().join("none.pem")).unwrap();
        let trusted = keys.verifying_keys();
        assert_eq!(trusted.len(), 1, "only the ring's key");
        assert_eq!(trusted[0].kid, keys.active_key().unwrap().kid());
    }
}
