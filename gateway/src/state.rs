//! The state shared by every connection of one server instance.

use std::sync::Arc;

use keygate_auth::CachedVerifier;
use keygate_vault::Vault;

use crate::config::Config;
use crate::directory::AgentDirectory;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::relay::TaskTable;
use crate::session::SessionRegistry;
use crate::signing::SigningKeys;
use crate::trusted_issuers::TrustedIssuers;

pub struct AppState {
    pub config: Config,
    /// The token signing keys; the verifier's key set follows them.
    pub signing: SigningKeys,
    pub verifier: CachedVerifier,
    /// External identity providers whose tokens are accepted too.
    pub trusted_issuers: TrustedIssuers,
    pub vault: Arc<Vault>,
    pub agents: AgentDirectory,
    pub sessions: SessionRegistry,
    pub tasks: TaskTable,
    pub metrics: Metrics,
    /// Logins per client id at the agent token endpoint.
    pub login_limiter: RateLimiter,
}

impl AppState {
    /// Makes the verifier trust exactly the published signing keys, and
    /// clears cached tokens in case a key was dropped.
    pub fn sync_verifier_keys(&self) {
        self.verifier
            .inner()
            .set_keys(self.signing.verifying_keys());
        self.verifier.clear();
    }
}

pub type SharedState = Arc<AppState>;
