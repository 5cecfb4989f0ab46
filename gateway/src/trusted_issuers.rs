//! Tokens of external identity providers: a verifier and a JWK set client
//! per `[[auth.trusted_issuers]]` entry, and the refetch of a key set when a
//! token names a key that is not cached.
//!
//! Every key set is fetched once at start. After that, a token with an
//! unknown `kid` triggers a refetch, at most one per `refetch_cooldown_secs`
//! per issuer. Requests that miss while a refetch runs wait for it instead of
//! starting their own. A failed fetch keeps the previous keys.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate_auth::{
    AuthError, ExternalIssuerSettings, ExternalKeySet, ExternalVerifier, Principal, Scope, ScopeSet,
};
use prometheus::{IntCounter, IntCounterVec, Opts};
use tracing::{debug, info, warn};

use crate::config::AuthConfig;
use crate::jwks_client::{JwksClient, JwksClientError};
use crate::metrics::Metrics;

/// Returns the scopes a trusted issuer may grant: the platform scopes that act
/// within one account. `keys:admin` concerns keygate itself, and
/// `agent:session` only comes from keygate's agent token endpoint.
pub fn grantable_scopes() -> Vec<Scope> {
    Scope::PLATFORM
        .into_iter()
        .filter(|scope| *scope != Scope::KeysAdmin)
        .collect()
}

/// A trusted issuer from the configuration could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TrustedIssuerError {
    #[error("trusted issuer {issuer:?}: {source}")]
    Client {
        issuer: String,
        source: JwksClientError,
    },
    #[error("trusted issuer {issuer:?}: {reason}")]
    Scopes { issuer: String, reason: String },
}

/// The trusted issuers by their `iss` value.
pub struct TrustedIssuers {
    by_issuer: HashMap<String, Arc<TrustedIssuer>>,
    /// `keygate_auth_jwks_fetches_total{issuer, result}`; `issuer` is the
    /// configured `iss`, so its values are bounded by the configuration.
    fetches: IntCounterVec,
}

/// One external identity provider whose tokens keygate accepts.
pub struct TrustedIssuer {
    verifier: ExternalVerifier,
    client: JwksClient,
    /// Held while a refetch runs, so concurrent misses share one fetch.
    refetch_lock: tokio::sync::Mutex<()>,
    fetch_successes: IntCounter,
    fetch_failures: IntCounter,
}

impl TrustedIssuers {
    /// Builds a verifier and client per configured issuer; fetches nothing yet.
    pub fn from_config(auth: &AuthConfig) -> Result<TrustedIssuers, TrustedIssuerError> {
        let fetches = IntCounterVec::new(
            Opts::new(
                "keygate_auth_jwks_fetches_total",
                "Fetches of trusted issuers' JWK sets, by configured issuer and result.",
            ),
            &["issuer", "result"],
        )
        .expect("valid metric");
        let mut by_issuer = HashMap::new();
        for entry in &auth.trusted_issuers {
            let client =
                JwksClient::new(&entry.jwks_url, entry.ca_file.as_deref()).map_err(|source| {
                    TrustedIssuerError::Client {
                        issuer: entry.issuer.clone(),
                        source,
                    }
                })?;
            let allowed_scopes = ScopeSet::parse_strict(
                entry.allowed_scopes.iter().map(String::as_str),
                &grantable_scopes(),
            )
            .map_err(|reason| TrustedIssuerError::Scopes {
                issuer: entry.issuer.clone(),
                reason,
            })?;
            let settings = ExternalIssuerSettings {
                issuer: entry.issuer.clone(),
                audience: entry.audience.clone(),
                account: entry.account.clone(),
                allowed_scopes,
                leeway_secs: auth.leeway_secs,
                max_lifetime_secs: auth.max_token_lifetime_secs,
                refetch_cooldown: Duration::from_secs(entry.refetch_cooldown_secs),
            };
            let issuer = TrustedIssuer {
                verifier: ExternalVerifier::new(settings),
                client,
                refetch_lock: tokio::sync::Mutex::new(()),
                fetch_successes: fetches.with_label_values(&[&entry.issuer, "success"]),
                fetch_failures: fetches.with_label_values(&[&entry.issuer, "failure"]),
            };
            by_issuer.insert(entry.issuer.clone(), Arc::new(issuer));
        }
        Ok(TrustedIssuers { by_issuer, fetches })
    }

    pub fn register_metrics(&self, metrics: &Metrics) {
        metrics.register(Box::new(self.fetches.clone()));
    }

    /// Returns the issuer whose configured `iss` is `issuer`.
    pub fn get(&self, issuer: &str) -> Option<&Arc<TrustedIssuer>> {
        self.by_issuer.get(issuer)
    }

    pub fn len(&self) -> usize {
        self.by_issuer.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_issuer.is_empty()
    }

    /// Fetches every issuer's key set once, all at the same time. A failure
    /// is logged and leaves that issuer without keys until a refetch succeeds.
    pub async fn load_all(&self) {
        let mut loads = tokio::task::JoinSet::new();
        for issuer in self.by_issuer.values() {
            let issuer = issuer.clone();
            loads.spawn(async move { issuer.fetch_and_install("start").await });
        }
        while let Some(result) = loads.join_next().await {
            if let Err(e) = result {
                warn!(error = %e, "loading a trusted issuer's key set stopped unexpectedly");
            }
        }
    }
}

impl TrustedIssuer {
    pub fn issuer(&self) -> &str {
        &self.verifier.settings().issuer
    }

    /// Verifies a token of this issuer, refetching the key set first when the
    /// token names a key that is not cached and the cooldown allows it.
    pub async fn verify(
        self: &Arc<Self>,
        token: &str,
        presented_thumbprint: Option<&str>,
    ) -> Result<Principal, AuthError> {
        match self.verifier.verify(token, presented_thumbprint) {
            Err(AuthError::UnknownKeyId(_) | AuthError::JwksUnavailable { .. }) => {}
            done => return done,
        }
        // A task of its own, so a client that disconnects cannot cancel a
        // refetch halfway and leave the cooldown running without new keys.
        let issuer = self.clone();
        if let Err(e) = tokio::spawn(async move { issuer.refetch_if_allowed().await }).await {
            warn!(issuer = %self.issuer(), error = %e, "refetching a trusted issuer's key set stopped unexpectedly");
        }
        self.verifier.verify(token, presented_thumbprint)
    }

    /// Refetches the key set unless another refetch runs or the cooldown has
    /// not passed. A caller that waited for a running refetch returns after it.
    async fn refetch_if_allowed(&self) {
        let _refetching = self.refetch_lock.lock().await;
        if self.verifier.try_begin_refetch(Instant::now()) {
            debug!(issuer = %self.issuer(), "a token names an unknown key; refetching the key set");
            self.fetch_and_install("unknown_kid").await;
            self.verifier.end_refetch(Instant::now());
        }
    }

    /// Fetches and parses the key set; installs it on success, and otherwise
    /// logs the reason and keeps the previous keys.
    async fn fetch_and_install(&self, trigger: &'static str) {
        let issuer = self.issuer();
        let url = self.client.url();
        let parsed = match self.client.fetch().await {
            Ok(body) => ExternalKeySet::parse(&body).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match parsed {
            Ok(set) => {
                self.fetch_successes.inc();
                for skipped in set.skipped() {
                    warn!(issuer, jwks_url = %url, key = %skipped, "ignoring a key of a trusted issuer's key set");
                }
                info!(issuer, jwks_url = %url, trigger, kids = ?set.key_ids(), "trusted issuer's key set loaded");
                self.verifier.install(set);
            }
            Err(reason) => {
                self.fetch_failures.inc();
                self.verifier.record_fetch_failure();
                let loaded = self.verifier.key_ids().len();
                if loaded == 0 {
                    warn!(issuer, jwks_url = %url, trigger, error = %reason, "fetching a trusted issuer's key set failed; no key of this issuer is loaded, so its tokens are rejected");
                } else {
                    warn!(issuer, jwks_url = %url, trigger, error = %reason, keys_kept = loaded, "fetching a trusted issuer's key set failed; keeping the previous keys");
                }
            }
        }
    }
}
