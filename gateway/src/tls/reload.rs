//! Reloading of the TLS listeners' certificates, key, client CA bundle and
//! CRLs without a restart: on request, on SIGHUP, or when a file changes.
//!
//! A reload builds new configurations for new handshakes only. Connections
//! already open keep the configuration they were accepted with, so agent
//! sessions survive it. A reload that fails keeps the previous configuration.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::{ServerConfigs, ServerTlsFiles, TlsError};
use crate::metrics::Metrics;

/// The server configuration that new handshakes of one listener use; a reload replaces it.
#[derive(Clone)]
pub struct ReloadableServerConfig(Arc<RwLock<Arc<ServerConfig>>>);

impl ReloadableServerConfig {
    fn new(config: ServerConfig) -> ReloadableServerConfig {
        ReloadableServerConfig(Arc::new(RwLock::new(Arc::new(config))))
    }

    /// Returns the configuration for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        // A panic while the lock was held cannot leave a half-written Arc, so a poisoned lock is still usable.
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn replace(&self, config: ServerConfig) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
    }
}

/// Size, modification time and inode of a file, or `None` if it cannot be read.
/// The inode catches a file replaced by a rename that kept the old time and size.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    device: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let metadata = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: metadata.modified().ok(),
        len: metadata.len(),
        device: metadata.dev(),
        inode: metadata.ino(),
    })
}

/// The notAfter times, in Unix seconds, of the certificates in use.
#[derive(Clone, Copy, Debug)]
struct NotAfter {
    server: Option<i64>,
    /// The earliest notAfter of the client CA bundle.
    client_ca: Option<i64>,
}

impl NotAfter {
    fn of(configs: &ServerConfigs) -> NotAfter {
        NotAfter {
            server: not_after(&configs.server_cert),
            client_ca: configs.client_ca.iter().filter_map(not_after).min(),
        }
    }
}

fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

struct ReloadState {
    /// File stamps taken just before the last load, whether it succeeded or not.
    loaded: Vec<Option<FileStamp>>,
    /// Stamps of a change seen by the last check. The reload waits until they
    /// stay the same for one interval, so a file still being written is not read.
    pending: Option<Vec<Option<FileStamp>>>,
    not_after: NotAfter,
}

struct TlsMetrics {
    reloads: IntCounterVec,
    expiry: IntGaugeVec,
}

impl TlsMetrics {
    fn new() -> TlsMetrics {
        let reloads = IntCounterVec::new(
            Opts::new(
                "keygate_tls_reloads_total",
                "Reloads of the TLS certificates, key, client CA bundle and CRLs, by result.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let expiry = IntGaugeVec::new(
            Opts::new(
                "keygate_tls_certificate_expiry_seconds",
                "Seconds until the notAfter time of the server certificate or of the first-expiring client CA certificate.",
            ),
            &["certificate"],
        )
        .expect("valid metric");
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]);
        }
        TlsMetrics { reloads, expiry }
    }

    fn set_expiry(&self, not_after: NotAfter) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        for (label, time) in [
            ("server", not_after.server),
            ("client_ca", not_after.client_ca),
        ] {
            if let Some(time) = time {
                self.expiry.with_label_values(&[label]).set(time - now);
            }
        }
    }
}

/// The TLS configurations of the agent and API listeners, and the files they come from.
pub struct TlsReloader {
    files: ServerTlsFiles,
    agent: ReloadableServerConfig,
    api: ReloadableServerConfig,
    state: Mutex<ReloadState>,
    metrics: TlsMetrics,
}

impl TlsReloader {
    /// Loads the files for the first time.
    pub fn load(files: ServerTlsFiles) -> Result<TlsReloader, TlsError> {
        let loaded = stamps(&files);
        let configs = ServerConfigs::load(&files)?;
        let not_after = NotAfter::of(&configs);
        let metrics = TlsMetrics::new();
        metrics.set_expiry(not_after);
        Ok(TlsReloader {
            agent: ReloadableServerConfig::new(configs.agent),
            api: ReloadableServerConfig::new(configs.api),
            files,
            state: Mutex::new(ReloadState {
                loaded,
                pending: None,
                not_after,
            }),
            metrics,
        })
    }

    pub fn agent_config(&self) -> ReloadableServerConfig {
        self.agent.clone()
    }

    pub fn api_config(&self) -> ReloadableServerConfig {
        self.api.clone()
    }

    /// Adds the reload counter and the expiry gauge to the server's registry.
    pub fn register_metrics(&self, metrics: &Metrics) {
        metrics.register(Box::new(self.metrics.reloads.clone()));
        metrics.register(Box::new(self.metrics.expiry.clone()));
    }

    /// Reads every file again and, if all are valid, makes new handshakes use
    /// them. On failure the previous configuration stays in use. `trigger`
    /// names the cause in the logs.
    pub fn reload(&self, trigger: &'static str) -> Result<(), TlsError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        // Stamps taken before reading: a write after this point changes them again, so a later check reloads once more.
        state.loaded = stamps(&self.files);
        state.pending = None;
        match ServerConfigs::load(&self.files) {
            Ok(configs) => {
                state.not_after = NotAfter::of(&configs);
                self.agent.replace(configs.agent);
                self.api.replace(configs.api);
                self.metrics.set_expiry(state.not_after);
                self.metrics.reloads.with_label_values(&["success"]).inc();
                info!(
                    trigger,
                    server_cert.not_after = state.not_after.server,
                    client_ca.not_after = state.not_after.client_ca,
                    "TLS configuration reloaded"
                );
                Ok(())
            }
            Err(e) => {
                self.metrics.reloads.with_label_values(&["failure"]).inc();
                error!(trigger, error = %e, "TLS reload failed; the previous TLS configuration stays in use");
                Err(e)
            }
        }
    }

    /// Reloads if a file changed since the last load and has not changed
    /// since the previous check; refreshes the expiry gauge either way.
    fn check_files(&self) {
        let now = stamps(&self.files);
        let reload = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            self.metrics.set_expiry(state.not_after);
            if now == state.loaded {
                state.pending = None;
                false
            } else if state.pending.as_ref() == Some(&now) {
                true
            } else {
                state.pending = Some(now);
                false
            }
        };
        if reload {
            // The outcome is logged and counted by `reload`.
            let _ = self.reload("file change");
        }
    }

    /// Reloads on SIGHUP and checks the files every `interval`, until `shutdown` turns true.
    pub async fn watch(self: Arc<Self>, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(hangup) => Some(hangup),
            Err(e) => {
                warn!(error = %e, "cannot install a SIGHUP handler; TLS files are still checked for changes");
                None
            }
        };
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => self.check_files(),
                received = next_signal(&mut hangup) => {
                    if received {
                        info!(signal = "SIGHUP", "TLS reload requested");
                        let _ = self.reload("SIGHUP");
                    } else {
                        hangup = None;
                    }
                }
                _ = crate::stopped(&mut shutdown) => return,
            }
        }
    }
}

/// Waits for the next signal; returns false once the signal stream has ended, and never resolves without one.
async fn next_signal(signal: &mut Option<tokio::signal::unix::Signal>) -> bool {
    match signal {
        Some(signal) => signal.recv().await.is_some(),
        None => std::future::pending().await,
    }
}

fn stamps(files: &ServerTlsFiles) -> Vec<Option<FileStamp>> {
    files.paths().into_iter().map(stamp).collect()
}
