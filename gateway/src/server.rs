//! Starting and stopping a server instance: opens the store and keys, binds
//! the three listeners and runs them until shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use keygate_auth::{
    CachedVerifier, JwkSet, SigningKey, TokenIssuer, TokenVerifier, VerifierSettings,
};
use keygate_protocol::GoAwayReason;
use keygate_vault::{MasterKey, RocksStore, Vault};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info};

use crate::config::Config;
use crate::directory::AgentDirectory;
use crate::http::ListenerKind;
use crate::listener;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::relay::TaskTable;
use crate::session::SessionRegistry;
use crate::state::{AppState, SharedState};
use crate::tls::reload::TlsReloader;
use crate::tls::{ServerTlsFiles, TlsError};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the store: {0}")]
    Store(#[from] keygate_vault::StoreError),
    #[error("cannot load the master key: {0}")]
    MasterKey(keygate_vault::VaultError),
    #[error("cannot load the token signing key: {0}")]
    SigningKey(#[from] keygate_auth::KeyError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot listen on {addr} for the {listener} listener: {source}; is another process using it? Set listen.{listener} or its flag to another address")]
    Bind {
        listener: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("missing file {path}: {hint}")]
    MissingFile { path: PathBuf, hint: &'static str },
}

/// A running server.
pub struct Server {
    pub agent_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub ops_addr: SocketAddr,
    state: SharedState,
    tls: Arc<TlsReloader>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Opens everything the configuration names and starts serving.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        for (path, hint) in [
            (
                config.master_key_path(),
                "run `keygate init` or `keygate dev` to create it, or set vault.master_key_file",
            ),
            (
                config.signing_key_path(),
                "run `keygate init` or `keygate dev` to create it, or set auth.signing_key",
            ),
            (
                config.server_cert_path(),
                "run `keygate init` or `keygate dev`, or set tls.server_cert",
            ),
            (
                config.client_ca_path(),
                "run `keygate init` or `keygate dev`, or set tls.client_ca",
            ),
        ] {
            if !path.exists() {
                return Err(StartError::MissingFile { path, hint });
            }
        }
        let master = MasterKey::load(&config.master_key_path()).map_err(StartError::MasterKey)?;
        let signing_key = Arc::new(SigningKey::load(&config.signing_key_path())?);
        let store = Arc::new(RocksStore::open(&config.db_dir())?);
        let vault = Arc::new(Vault::new(store.clone(), master));
        if vault.verify_master_key().map_err(StartError::MasterKey)? {
            info!("master key recorded; later starts check the key against this record");
        }

        let tls = Arc::new(TlsReloader::load(ServerTlsFiles::from_config(&config))?);

        let bind = |listener: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    listener,
                    addr,
                    source,
                })
        };
        let agent_listener = bind("agent", config.listen.agent).await?;
        let api_listener = bind("api", config.listen.api).await?;
        let ops_listener = bind("ops", config.listen.ops).await?;
        let local = |l: &TcpListener| l.local_addr().expect("a bound socket has an address");
        let (agent_addr, api_addr, ops_addr) = (
            local(&agent_listener),
            local(&api_listener),
            local(&ops_listener),
        );

        let auth = &config.auth;
        let verifier = TokenVerifier::new(
            [signing_key.verifying_key().clone()],
            VerifierSettings {
                issuer: auth.issuer.clone(),
                audience: auth.audience.clone(),
                leeway_secs: auth.leeway_secs,
                max_lifetime_secs: auth.max_token_lifetime_secs,
            },
        );
        let jwks = JwkSet {
            keys: verifier.keys().map(|k| k.to_jwk()).collect(),
        };
        let verifier = CachedVerifier::new(verifier, auth.verified_token_cache_size);
        let state: SharedState = Arc::new(AppState {
            issuer: TokenIssuer::new(signing_key, auth.issuer.clone(), auth.audience.clone()),
            verifier,
            agents: AgentDirectory::new(store),
            vault,
            sessions: SessionRegistry::default(),
            tasks: TaskTable::new(config.gateway.max_finished_tasks),
            metrics: Metrics::new(),
            login_limiter: RateLimiter::new(config.auth.token_requests_per_minute),
            jwks: Bytes::from(serde_json::to_vec(&jwks).expect("JWK sets serialize")),
            config,
        });
        tls.register_metrics(&state.metrics);

        let (shutdown, shutdown_rx) = watch::channel(false);
        let grace = Duration::from_millis(state.config.gateway.shutdown_grace_ms);
        let tasks = vec![
            tokio::spawn(listener::serve(
                agent_listener,
                ListenerKind::Agent,
                Some(tls.agent_config()),
                state.clone(),
                shutdown_rx.clone(),
                grace,
            )),
            tokio::spawn(listener::serve(
                api_listener,
                ListenerKind::Api,
                Some(tls.api_config()),
                state.clone(),
                shutdown_rx.clone(),
                grace,
            )),
            tokio::spawn(listener::serve(
                ops_listener,
                ListenerKind::Ops,
                None,
                state.clone(),
                shutdown_rx.clone(),
                grace,
            )),
            tokio::spawn(tls.clone().watch(
                Duration::from_millis(state.config.tls.reload_check_interval_ms),
                shutdown_rx.clone(),
            )),
            tokio::spawn(sweep_finished_tasks(state.clone(), shutdown_rx)),
        ];
        info!(%agent_addr, %api_addr, %ops_addr, data_dir = %state.config.data_dir.display(), "keygate started");
        Ok(Server {
            agent_addr,
            api_addr,
            ops_addr,
            state,
            tls,
            shutdown,
            tasks,
        })
    }

    pub fn state(&self) -> &SharedState {
        &self.state
    }

    /// Reloads the certificates, key, client CA bundle and CRLs for new TLS
    /// handshakes, as SIGHUP does; on failure the previous ones stay in use.
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        self.tls.reload("request")
    }

    /// Tells agents to reconnect, stops accepting, and waits for open
    /// connections up to the grace period.
    pub async fn shutdown(self) {
        info!("keygate shutting down");
        self.state.sessions.close_all(GoAwayReason::ShuttingDown);
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        info!("keygate stopped");
    }
}

async fn sweep_finished_tasks(state: SharedState, mut shutdown: watch::Receiver<bool>) {
    let retention = Duration::from_secs(state.config.gateway.finished_task_retention_secs);
    let mut ticker = tokio::time::interval(Duration::from_secs(10).min(retention));
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let removed = state.tasks.sweep(retention);
                if removed > 0 {
                    debug!(removed, "expired finished tasks");
                }
            }
            _ = crate::stopped(&mut shutdown) => return,
        }
    }
}

/// Resolves when the process receives SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => info!(signal = "SIGTERM", "shutdown requested"),
        _ = int.recv() => info!(signal = "SIGINT", "shutdown requested"),
    }
}
