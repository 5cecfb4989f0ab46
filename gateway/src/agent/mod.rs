//! The reference agent: logs in over mTLS, keeps one session open to the gateway
//! on an upgraded HTTP/1.1 connection, runs the tasks it receives and
//! reconnects with backoff.

mod connection;
pub mod lookup;
mod tasks;
mod tls_rejection;

pub use connection::AgentError;
pub use tasks::{TaskFuture, TaskHandler, TaskHandlers};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ring::rand::SecureRandom;
use tokio::sync::watch;
use tracing::{error, info, warn};
use zeroize::Zeroizing;

/// Gateway address and credentials of an agent.
pub struct AgentOptions {
    /// `host:port` of the gateway's agent listener.
    pub gateway: String,
    /// Name the gateway's certificate must carry.
    pub server_name: String,
    pub ca_cert: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub client_id: String,
    pub client_secret: Zeroizing<String>,
    /// Tasks this agent runs at once.
    pub capacity: u32,
    pub instance_id: String,
}

/// Delay before reconnecting after the gateway rejected the credentials: long,
/// because retrying cannot help until an operator fixes them.
const AUTH_FAILURE_BACKOFF: Duration = Duration::from_secs(60);
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Runs the agent until `shutdown` turns true.
pub async fn run(
    options: AgentOptions,
    handlers: TaskHandlers,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let mut tls = crate::tls::client_config(
        &options.ca_cert,
        Some((&options.client_cert, &options.client_key)),
        false,
    )?;
    // Sessions upgrade an HTTP/1.1 connection to a bare frame stream.
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = Arc::new(tls);
    info!(agent.id = %options.client_id, gateway = %options.gateway, capacity = options.capacity, kinds = ?handlers.kinds(), "agent starting");
    let mut failures: u32 = 0;
    loop {
        let result = connection::run_session(&options, tls.clone(), &handlers, &mut shutdown).await;
        let delay = match result {
            Ok(connection::SessionEnd::Shutdown) => {
                info!("agent stopped");
                return Ok(());
            }
            Ok(connection::SessionEnd::GoAway { reconnect_after }) => {
                failures = 0;
                reconnect_after + jitter(reconnect_after)
            }
            Ok(connection::SessionEnd::Closed) => {
                failures = 0;
                jitter(MIN_BACKOFF * 5)
            }
            Err(AgentError::Unauthorized(message)) => {
                error!(error = %message, retry_in_s = AUTH_FAILURE_BACKOFF.as_secs(), "the gateway rejected this agent's credentials; check the client id, secret and certificate");
                AUTH_FAILURE_BACKOFF
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let cap = MIN_BACKOFF
                    .saturating_mul(1 << failures.min(10))
                    .min(MAX_BACKOFF);
                let delay = jitter(cap);
                warn!(error = %e, attempt = failures, retry_in_ms = delay.as_millis() as u64, "session failed; reconnecting");
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = crate::stopped(&mut shutdown) => return Ok(()),
        }
    }
}

/// Returns a uniformly random duration in `[0, max]` ("full jitter").
fn jitter(max: Duration) -> Duration {
    let mut bytes = [0u8; 4];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    let fraction = u32::from_le_bytes(bytes) as f64 / u32::MAX as f64;
    max.mul_f64(fraction)
}
