//! The state shared by every connection of one server instance.

use std::sync::Arc;

use bytes::Bytes;
use keygate_auth::{CachedVerifier, TokenIssuer};
use keygate_vault::Vault;

use crate::config::Config;
use crate::directory::AgentDirectory;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::relay::TaskTable;
use crate::session::SessionRegistry;

pub struct AppState {
    pub config: Config,
    pub issuer: TokenIssuer,
    pub verifier: CachedVerifier,
    pub vault: Arc<Vault>,
    pub agents: AgentDirectory,
    pub sessions: SessionRegistry,
    pub tasks: TaskTable,
    pub metrics: Metrics,
    /// Logins per client id at the agent token endpoint.
    pub login_limiter: RateLimiter,
    /// The JWK set document, rendered once at start.
    pub jwks: Bytes,
}

pub type SharedState = Arc<AppState>;
