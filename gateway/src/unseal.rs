//! Unsealing the vault: the master key is fetched from its source, checked
//! against the store's master-key check, and then opens the token signing
//! keys. While any step fails the vault stays sealed and a background task
//! tries again with capped exponential backoff.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keygate_vault::{KvStore, MasterKey, Vault, VaultError};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::master_key::{MasterKeySource, SourceError};
use crate::signing::SigningError;
use crate::state::SharedState;

/// Wait before the first retry; it doubles after each failure.
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// Maximum wait between two attempts.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Why one attempt to unseal failed; the text is the cause callers see in
/// "vault is sealed: CAUSE".
#[derive(Debug, thiserror::Error)]
pub enum UnsealError {
    #[error("{0}")]
    Source(#[from] SourceError),
    #[error("the master key from {origin} is not the key this store was created with ({reason}); the store was not changed, so start keygate with the original key")]
    WrongKey { origin: String, reason: String },
    #[error("checking the master key from {origin} against the store failed: {error}")]
    Check { origin: String, error: VaultError },
    #[error("cannot open the token signing keys: {0}")]
    Signing(#[from] SigningError),
    #[error("an unsealing task failed: {0}")]
    Task(String),
}

impl UnsealError {
    /// Returns whether the key was read but is not the store's key.
    pub fn is_wrong_key(&self) -> bool {
        matches!(self, UnsealError::WrongKey { .. })
    }
}

/// The inputs of unsealing besides the server state.
pub struct Unsealer {
    config: Config,
    store: Arc<dyn KvStore>,
}

impl Unsealer {
    pub fn new(config: Config, store: Arc<dyn KvStore>) -> Unsealer {
        Unsealer { config, store }
    }

    /// Names the configured source, e.g. `environment variable KEYGATE_MASTER_KEY`.
    pub fn describe_source(&self) -> String {
        match MasterKeySource::from_config(&self.config) {
            Ok(source) => source.describe(),
            Err(_) => format!("{:?} source", self.config.vault.master_key_source),
        }
    }

    /// Fetches and checks the master key, then opens the signing keys with
    /// it; returns the open vault. Nothing is stored unless the key matches
    /// the store's check record (or the store is new and gets one).
    pub async fn open_vault(&self, state: &SharedState) -> Result<Arc<Vault>, UnsealError> {
        let source = MasterKeySource::from_config(&self.config)?;
        let described = source.describe();
        let key = source.fetch().await?;
        let vault = self.check_key(key, described).await?;
        let import_path: PathBuf = self.config.signing_key_path();
        let (worker, unsealed) = (state.clone(), vault.clone());
        tokio::task::spawn_blocking(move || worker.signing.unseal(unsealed, &import_path))
            .await
            .map_err(|e| UnsealError::Task(e.to_string()))??;
        Ok(vault)
    }

    async fn check_key(&self, key: MasterKey, source: String) -> Result<Arc<Vault>, UnsealError> {
        let vault = Arc::new(Vault::with_options(
            self.store.clone(),
            key,
            self.config.vault.vault_options(),
        ));
        let checked = vault.clone();
        let recorded = tokio::task::spawn_blocking(move || checked.verify_master_key())
            .await
            .map_err(|e| UnsealError::Task(e.to_string()))?;
        match recorded {
            Ok(true) => {
                info!("master key recorded; later starts check the key against this record")
            }
            Ok(false) => {}
            Err(VaultError::MasterKey { reason, .. }) => {
                return Err(UnsealError::WrongKey {
                    origin: source,
                    reason,
                })
            }
            Err(error) => {
                return Err(UnsealError::Check {
                    origin: source,
                    error,
                })
            }
        }
        Ok(vault)
    }
}

/// Retries unsealing until it succeeds or the server shuts down. Each failure
/// updates the cause that sealed-vault responses show.
pub async fn retry_until_unsealed(
    state: SharedState,
    unsealer: Unsealer,
    mut shutdown: watch::Receiver<bool>,
) {
    let source = unsealer.describe_source();
    let mut wait = FIRST_RETRY;
    let mut attempt: u32 = 1;
    while state.vault.is_sealed() {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
        attempt += 1;
        match unsealer.open_vault(&state).await {
            Ok(vault) => {
                finish_unseal(&state, vault);
                info!(source = %source, attempt, "vault unsealed");
                return;
            }
            Err(e) => {
                let cause = e.to_string();
                if e.is_wrong_key() {
                    error!(source = %source, attempt, retry_in_ms = wait.as_millis() as u64, error = %cause, "vault stays sealed: wrong master key");
                } else {
                    warn!(source = %source, attempt, retry_in_ms = wait.as_millis() as u64, error = %cause, "vault stays sealed: the master key is not available");
                }
                state.vault.set_cause(cause);
            }
        }
        wait = (wait * 2).min(MAX_RETRY);
    }
}

/// Makes an open vault available: handlers see it, the verifier trusts the
/// ring's keys, and a re-encryption job left unfinished resumes.
pub fn finish_unseal(state: &SharedState, vault: Arc<Vault>) {
    if let Err(e) = state.audit.load_hmac_key(&vault) {
        // Records are still written; only HMACs of sensitive strings wait
        // for the key, which the next request that needs one loads again.
        warn!(error = %e, "loading the audit HMAC key failed");
    }
    state.vault.unseal(vault.clone());
    state.sync_verifier_keys();
    if matches!(vault.reencrypt_progress(), Ok(Some(progress)) if !progress.done) {
        info!("resuming the unfinished re-encryption job");
        crate::reencrypt::ReencryptJob::ensure_running(state);
    }
}
