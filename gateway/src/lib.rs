//! The keygate server: agent gateway, task relay, HTTP APIs and the reference agent.
//!
//! `server::Server::start` runs an instance from a `config::Config`; the
//! `keygate` binary is a thin command line over this library (`cli`).

#![forbid(unsafe_code)]

pub mod agent;
pub mod audit;
pub mod backups;
pub mod cli;
pub mod config;
pub mod devinit;
pub mod directory;
pub mod external;
pub mod http;
pub mod jwks_client;
mod linger;
mod listener;
pub mod logging;
pub mod master_key;
pub mod metrics;
pub mod outbound;
pub mod pki;
pub mod ratelimit;
pub mod reencrypt;
pub mod relay;
pub mod server;
pub mod session;
pub mod signing;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod trusted_issuers;
pub mod unseal;
pub mod vault_slot;

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Resolves once the shutdown flag is true (at once if it already is, or if its sender is gone).
pub async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
