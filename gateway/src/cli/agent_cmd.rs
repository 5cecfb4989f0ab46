//! `keygate agent`: runs the reference agent until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use tokio::sync::watch;
use zeroize::Zeroizing;

use super::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
use crate::agent::lookup::{LookupHandler, SecretLookup};
use crate::agent::{AgentOptions, TaskHandlers};
use crate::external::resolver::AGENT_TASK_KIND;

#[derive(Args)]
pub struct AgentArgs {
    /// `host:port` of the gateway's agent listener.
    #[arg(long, env = "KEYGATE_GATEWAY", default_value = "127.0.0.1:7443")]
    gateway: String,
    /// Name to expect in the gateway's certificate.
    #[arg(long, env = "KEYGATE_SERVER_NAME", default_value = "localhost")]
    server_name: String,
    /// Folder with `ca.pem`, `client.pem` and `client-key.pem`, as written by `keygate certs agent`.
    #[arg(long, env = "KEYGATE_AGENT_CREDENTIALS_DIR")]
    credentials_dir: Option<PathBuf>,
    /// CA certificate that signed the gateway's certificate (overrides the credentials folder).
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// Client certificate (overrides the credentials folder).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client private key (overrides the credentials folder).
    #[arg(long)]
    key: Option<PathBuf>,
    /// The agent's client id, as returned by `POST /v1/agents`.
    #[arg(long, env = "KEYGATE_AGENT_CLIENT_ID")]
    client_id: String,
    /// File holding the client secret; otherwise it is read from KEYGATE_AGENT_CLIENT_SECRET.
    #[arg(long)]
    client_secret_file: Option<PathBuf>,
    /// Tasks this agent runs at once.
    #[arg(long, default_value_t = 16)]
    capacity: u32,
    /// Name of this agent instance; default: host name and process id.
    #[arg(long)]
    instance_id: Option<String>,
    /// JSON file of the secret-manager connections this agent resolves
    /// lookups with, by name; credentials are `{"file": "/absolute/path"}`.
    #[arg(long, env = "KEYGATE_AGENT_CONNECTIONS")]
    connections: Option<PathBuf>,
}

pub async fn run(args: AgentArgs) -> i32 {
    let mut handlers = TaskHandlers::builtin();
    if let Some(path) = &args.connections {
        match SecretLookup::from_file(path) {
            Ok(lookup) => {
                tracing::info!(connections = ?lookup.names(), "secret lookups enabled");
                handlers.register(AGENT_TASK_KIND, LookupHandler(Arc::new(lookup)));
            }
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_USAGE;
            }
        }
    }
    let options = match options(args) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        crate::server::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    match crate::agent::run(options, handlers, stop_rx).await {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILURE
        }
    }
}

fn options(args: AgentArgs) -> Result<AgentOptions, String> {
    let from_dir = |name: &str| args.credentials_dir.as_ref().map(|d| d.join(name));
    let pick = |explicit: Option<PathBuf>, name: &str, flag: &str| {
        explicit
            .or_else(|| from_dir(name))
            .ok_or_else(|| format!("set --{flag} or --credentials-dir"))
    };
    let secret = match &args.client_secret_file {
        Some(path) => std::fs::read_to_string(path)
            .map(|s| Zeroizing::new(s.trim().to_owned()))
            .map_err(|e| format!("cannot read --client-secret-file {}: {e}", path.display()))?,
        None => Zeroizing::new(std::env::var("KEYGATE_AGENT_CLIENT_SECRET").map_err(|_| {
            "the client secret is missing: set KEYGATE_AGENT_CLIENT_SECRET or --client-secret-file".to_owned()
        })?),
    };
    if args.capacity == 0 || args.capacity > 10_000 {
        return Err(format!(
            "--capacity {} must be between 1 and 10000",
            args.capacity
        ));
    }
    let instance_id = args.instance_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    Ok(AgentOptions {
        ca_cert: pick(args.ca_cert.clone(), "ca.pem", "ca-cert")?,
        client_cert: pick(args.cert.clone(), "client.pem", "cert")?,
        client_key: pick(args.key.clone(), "client-key.pem", "key")?,
        gateway: args.gateway,
        server_name: args.server_name,
        client_id: args.client_id,
        client_secret: secret,
        capacity: args.capacity,
        instance_id,
    })
}
