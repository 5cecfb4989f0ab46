//! Starting and stopping a server instance: opens the store and keys, binds
//! the three listeners and runs them until shutdown. The server starts with
//! the vault sealed when the master key is not available, and unseals it in
//! the background once the key arrives.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keygate_auth::{CachedVerifier, TokenVerifier, VerifierSettings};
use keygate_protocol::GoAwayReason;
use keygate_vault::{KvStore, RocksStore};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::audit::Audit;
use crate::backups::Backups;
use crate::config::Config;
use crate::directory::AgentDirectory;
use crate::external::resolver::ExternalSecrets;
use crate::http::ListenerKind;
use crate::listener;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::reencrypt::ReencryptJob;
use crate::relay::{AgentGates, FinishedLimits, KeyLocks, TaskStore, TaskTable};
use crate::session::SessionRegistry;
use crate::signing::{SigningKeys, SigningSettings};
use crate::state::{AppState, SharedState};
use crate::telemetry::Telemetry;
use crate::tls::reload::TlsReloader;
use crate::tls::{ServerTlsFiles, TlsError};
use crate::trusted_issuers::{TrustedIssuerError, TrustedIssuers};
use crate::unseal::{self, Unsealer};
use crate::vault_slot::VaultSlot;

/// Reason the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the store: {0}")]
    Store(#[from] keygate_vault::StoreError),
    #[error("cannot load the token signing keys: {0}")]
    SigningKeys(#[from] crate::signing::SigningError),
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
    #[error(transparent)]
    TrustedIssuer(#[from] TrustedIssuerError),
    #[error("cannot start the audit log: {0}")]
    Audit(#[from] keygate_vault::audit::AuditError),
    #[error("cannot start the span exporter: {0}")]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    #[error("cannot set up calls to external secret managers: {0}")]
    External(TlsError),
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
        let store = Arc::new(RocksStore::open(&config.db_dir())?);
        // The store opens without the master key; only the vault waits for it.
        let signing = SigningKeys::open_sealed(
            store.clone(),
            SigningSettings {
                issuer: config.auth.issuer.clone(),
                audience: config.auth.audience.clone(),
                publish_delay_secs: config.auth.signing_key_publish_delay_secs,
                retention_secs: config.auth.max_token_lifetime_secs + config.auth.leeway_secs,
            },
        )?;
        // Records are written while the vault is sealed too; the HMAC key
        // is read from the vault when it opens.
        let audit = Audit::start(
            store.clone(),
            None,
            config.vault.audit_file.clone(),
            config.vault.audit_sync_reads.unwrap_or(false),
        )?;
        let unsealer = Unsealer::new(config.clone(), store.clone() as Arc<dyn KvStore>);
        let vault = VaultSlot::sealed(format!(
            "waiting for the master key from {}",
            unsealer.describe_source()
        ));

        let tls = Arc::new(TlsReloader::load(ServerTlsFiles::from_config(&config))?);
        let trusted_issuers = TrustedIssuers::from_config(&config.auth)?;

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
            signing.verifying_keys(),
            VerifierSettings {
                issuer: auth.issuer.clone(),
                audience: auth.audience.clone(),
                leeway_secs: auth.leeway_secs,
                max_lifetime_secs: auth.max_token_lifetime_secs,
            },
        );
        let verifier = CachedVerifier::new(verifier, auth.verified_token_cache_size);
        let metrics = Metrics::new();
        let telemetry = Telemetry::start(&config.telemetry, &metrics, &instance_id(api_addr))?;
        let external = ExternalSecrets::new(&config.external, &metrics, store.clone())
            .map_err(StartError::External)?;
        let state: SharedState = Arc::new(AppState {
            signing,
            verifier,
            trusted_issuers,
            backups: Backups::new(store.clone(), config.backup_dir()),
            agents: AgentDirectory::new(store.clone()),
            vault,
            audit,
            sessions: SessionRegistry::default(),
            tasks: TaskTable::with_store(
                FinishedLimits {
                    max_tasks: config.gateway.max_finished_tasks,
                    max_result_bytes: config.gateway.max_finished_result_bytes,
                },
                TaskStore::new(store.clone()),
            ),
            gates: AgentGates::default(),
            idempotency_locks: KeyLocks::default(),
            relay_stop: watch::channel(false).0,
            draining: std::sync::atomic::AtomicBool::new(false),
            telemetry,
            external,
            metrics,
            login_limiter: RateLimiter::new(config.auth.token_requests_per_minute),
            reencrypt: ReencryptJob::default(),
            config,
        });
        tls.register_metrics(&state.metrics);
        state.audit.register_metrics(&state.metrics);
        state.trusted_issuers.register_metrics(&state.metrics);
        state.vault.register_metrics(&state.metrics);
        // Before the listeners serve, so the first external tokens find keys.
        state.trusted_issuers.load_all().await;
        crate::relay::recover_tasks(&state);
        // Before the listeners serve too, so a server whose key is at hand
        // never returns "vault is sealed".
        let first_attempt = unsealer.open_vault(&state).await;
        let retry_unseal = match first_attempt {
            Ok(vault) => {
                unseal::finish_unseal(&state, vault);
                info!(source = %unsealer.describe_source(), "vault unsealed");
                None
            }
            Err(e) => {
                let source = unsealer.describe_source();
                if e.is_wrong_key() {
                    error!(source = %source, error = %e, "keygate starts with the vault sealed: wrong master key");
                } else {
                    warn!(source = %source, error = %e, "keygate starts with the vault sealed; retrying in the background");
                }
                state.vault.set_cause(e.to_string());
                Some(unsealer)
            }
        };

        let (shutdown, shutdown_rx) = watch::channel(false);
        let grace = Duration::from_millis(state.config.gateway.shutdown_grace_ms);
        let mut tasks = vec![
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
            tokio::spawn(sweep_finished_tasks(state.clone(), shutdown_rx.clone())),
        ];
        if let Some(unsealer) = retry_unseal {
            tasks.push(tokio::spawn(unseal::retry_until_unsealed(
                state.clone(),
                unsealer,
                shutdown_rx,
            )));
        }
        info!(%agent_addr, %api_addr, %ops_addr, data_dir = %state.config.data_dir.display(), vault.sealed = state.vault.is_sealed(), "keygate started");
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

    /// Stops taking sessions and tasks, stops sending tasks on open
    /// sessions, and waits up to `gateway.shutdown_grace_ms` for the tasks
    /// the agents run to finish. Tasks still queued stay stored for the next
    /// start; tasks still running then are queued again when their session
    /// closes.
    async fn drain_sessions(&self) {
        let state = &self.state;
        state
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for session in state.sessions.all() {
            session.start_drain();
        }
        let grace = Duration::from_millis(state.config.gateway.shutdown_grace_ms);
        let running = || -> usize { state.sessions.all().iter().map(|s| s.in_flight()).sum() };
        let started = running();
        if started == 0 {
            return;
        }
        info!(
            running = started,
            grace_ms = grace.as_millis() as u64,
            "waiting for running tasks before closing agent sessions"
        );
        let drained = tokio::time::timeout(grace, async {
            while running() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if drained.is_err() {
            warn!(
                running = running(),
                "tasks still run after the grace period; they are queued again for the next start"
            );
        }
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
        self.drain_sessions().await;
        self.state.sessions.close_all(GoAwayReason::ShuttingDown);
        self.state.reencrypt.stop();
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        self.state.relay_stop.send_replace(true);
        // Final statuses wait in the task writer's queue; written now, they
        // keep finished tasks from running again after the restart.
        if let Some(store) = self.state.tasks.store() {
            if let Err(error) = store.flush().await {
                warn!(%error, "cannot write the last task statuses; those tasks run again after the restart");
            }
        }
        self.state.telemetry.shutdown().await;
        // Relays and sessions drop their handles as they end. The store closes
        // with the last one, so a restart in the same process can open it again.
        let released = tokio::time::timeout(RELEASE_WAIT, async {
            while Arc::strong_count(&self.state) > 1 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        if released.is_err() {
            warn!(
                holders = Arc::strong_count(&self.state) - 1,
                "parts of the server still run after shutdown"
            );
        }
        info!("keygate stopped");
    }
}

/// How long shutdown waits for relays and sessions to let go of the state.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// Deletes idempotency keys older than `gateway.idempotency_window_secs`.
async fn expire_idempotency_keys(state: &SharedState) {
    let Some(store) = state.tasks.store().cloned() else {
        return;
    };
    let window_ms = state.config.gateway.idempotency_window_secs * 1000;
    let cutoff = crate::now_ms().saturating_sub(window_ms);
    match tokio::task::spawn_blocking(move || store.expire_idempotency(cutoff)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(expired)) => debug!(expired, "expired idempotency keys"),
        Ok(Err(e)) => warn!(error = %e, "cannot expire idempotency keys; retrying later"),
        Err(e) => warn!(error = %e, "the idempotency key sweep failed; retrying later"),
    }
}

/// Names this process in exported spans: the host name and the API port.
fn instance_id(api_addr: SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let host = if host.is_empty() {
        "localhost".to_owned()
    } else {
        host
    };
    format!("{host}:{}", api_addr.port())
}

/// Drops finished tasks past their retention and signing keys past theirs.
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
                expire_idempotency_keys(&state).await;
                if let Some(age) = state.signing.active_key_age_secs() {
                    state.metrics.signing_key_age.set(age as i64);
                }
                match state.signing.prune() {
                    Ok(true) => state.sync_verifier_keys(),
                    Ok(false) => {}
                    Err(e) => warn!(error = %e, "dropping expired token signing keys failed; retrying later"),
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
