//! The state shared by every connection of one server instance.

use std::sync::Arc;

use keygate_auth::CachedVerifier;

use crate::audit::Audit;
use crate::backups::Backups;
use crate::config::Config;
use crate::directory::AgentDirectory;
use crate::external::resolver::ExternalSecrets;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::reencrypt::ReencryptJob;
use crate::relay::{AgentGates, KeyLocks, TaskTable};
use crate::session::SessionRegistry;
use crate::signing::SigningKeys;
use crate::telemetry::Telemetry;
use crate::trusted_issuers::TrustedIssuers;
use crate::vault_slot::VaultSlot;

pub struct AppState {
    pub config: Config,
    /// The token signing keys; the verifier's key set follows them.
    pub signing: SigningKeys,
    pub verifier: CachedVerifier,
    /// External identity providers whose tokens are accepted too.
    pub trusted_issuers: TrustedIssuers,
    /// The vault, sealed until the master key arrives; handlers take it with
    /// `state.vault.get()?`, which returns 503 while it is sealed.
    pub vault: VaultSlot,
    /// The audit log of vault accesses; an access whose record cannot be
    /// written is refused.
    pub audit: Audit,
    pub agents: AgentDirectory,
    pub sessions: SessionRegistry,
    pub tasks: TaskTable,
    /// Per-agent pause switches and queue counts of the relay.
    pub gates: AgentGates,
    /// Set at the start of shutdown: no new sessions or tasks are accepted.
    pub draining: std::sync::atomic::AtomicBool,
    /// Set to true at shutdown: relays stop and leave their tasks stored.
    pub relay_stop: tokio::sync::watch::Sender<bool>,
    /// Serializes submissions that carry the same idempotency key.
    pub idempotency_locks: KeyLocks,
    /// Span export to an OTLP collector; does nothing when none is configured.
    pub telemetry: Telemetry,
    /// Lookups at customers' secret managers, their cache and connections.
    pub external: ExternalSecrets,
    pub metrics: Metrics,
    /// Logins per client id at the agent token endpoint.
    pub login_limiter: RateLimiter,
    /// The runner of the vault's re-encryption job.
    pub reencrypt: ReencryptJob,
    /// Online backups of the store into `vault.backup_dir`.
    pub backups: Backups,
}

impl AppState {
    /// Returns whether the server is shutting down and refuses new work.
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Makes the verifier trust exactly the server's signing keys, and
    /// clears cached tokens in case a key was dropped.
    pub fn sync_verifier_keys(&self) {
        self.verifier
            .inner()
            .set_keys(self.signing.verifying_keys());
        self.verifier.clear();
    }
}

pub type SharedState = Arc<AppState>;
