//! The vault of a running server: sealed until the master key arrives from its
//! source, then open for the rest of the process.
//!
//! Handlers take the vault with `let vault = state.vault.get()?;`, which
//! returns a 503 `vault-sealed` problem while the vault is sealed.

use std::fmt;
use std::sync::{Arc, RwLock};

use keygate_vault::Vault;
use prometheus::IntGauge;

use crate::metrics::Metrics;

/// Error of a sealed vault, with the reason the master key is not available.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    pub cause: String,
}

impl fmt::Display for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vault is sealed: {}", self.cause)
    }
}

impl std::error::Error for Sealed {}

enum SlotState {
    Sealed { cause: String },
    Open(Arc<Vault>),
}

/// Holds the vault once it is unsealed. A vault never seals again.
pub struct VaultSlot {
    state: RwLock<SlotState>,
    /// `keygate_vault_sealed`: 1 while sealed, 0 once unsealed.
    sealed_gauge: IntGauge,
}

impl VaultSlot {
    /// Creates a sealed slot; `cause` is shown to callers until it changes.
    pub fn sealed(cause: impl Into<String>) -> VaultSlot {
        let sealed_gauge = IntGauge::new(
            "keygate_vault_sealed",
            "1 while the vault is sealed because the master key is not available, 0 once it is unsealed.",
        )
        .expect("valid metric");
        sealed_gauge.set(1);
        VaultSlot {
            state: RwLock::new(SlotState::Sealed {
                cause: cause.into(),
            }),
            sealed_gauge,
        }
    }

    /// Creates an unsealed slot holding `vault`.
    pub fn open(vault: Arc<Vault>) -> VaultSlot {
        let slot = VaultSlot::sealed("");
        slot.unseal(vault);
        slot
    }

    /// Returns the vault, or why it is sealed.
    pub fn get(&self) -> Result<Arc<Vault>, Sealed> {
        match &*self.read() {
            SlotState::Open(vault) => Ok(vault.clone()),
            SlotState::Sealed { cause } => Err(Sealed {
                cause: cause.clone(),
            }),
        }
    }

    pub fn is_sealed(&self) -> bool {
        matches!(&*self.read(), SlotState::Sealed { .. })
    }

    /// Replaces the reason shown while the vault stays sealed; does nothing once it is open.
    pub fn set_cause(&self, cause: impl Into<String>) {
        let mut state = self.write();
        if let SlotState::Sealed { cause: current } = &mut *state {
            *current = cause.into();
        }
    }

    /// Makes `vault` available to every caller from now on.
    pub fn unseal(&self, vault: Arc<Vault>) {
        *self.write() = SlotState::Open(vault);
        self.sealed_gauge.set(0);
    }

    /// Adds `keygate_vault_sealed` to the server's metrics.
    pub fn register_metrics(&self, metrics: &Metrics) {
        metrics.register(Box::new(self.sealed_gauge.clone()));
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, SlotState> {
        // The state is replaced whole, so a panic while the lock was held
        // cannot leave it half written.
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, SlotState> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_vault::{MasterKey, MemStore};

    #[test]
    fn sealed_until_unsealed() {
        let slot = VaultSlot::sealed("waiting for the master key");
        let err = slot.get().expect_err("sealed");
        assert_eq!(
            err.to_string(),
            "vault is sealed: waiting for the master key"
        );
        assert!(slot.is_sealed());
        assert_eq!(slot.sealed_gauge.get(), 1);

        slot.set_cause("KMS at http://127.0.0.1:1 is unreachable");
        assert_eq!(
            slot.get().expect_err("still sealed").cause,
            "KMS at http://127.0.0.1:1 is unreachable"
        );

        let vault = Arc::new(Vault::new(Arc::new(MemStore::new()), MasterKey::generate()));
        slot.unseal(vault.clone());
        assert!(!slot.is_sealed());
        assert!(Arc::ptr_eq(&slot.get().expect("open"), &vault));
        assert_eq!(slot.sealed_gauge.get(), 0);

        slot.set_cause("ignored once open");
        assert!(slot.get().is_ok(), "an open vault does not seal again");
    }
}
