//! `keygate-bench`: closed-loop load generators for a running keygate.
//!
//! `relay` submits tasks to one agent, `secrets` resolves one secret
//! definition, `read` reads one hosted secret's value, `write` stores new
//! versions of one hosted secret, and `static` fetches any path (the nginx
//! baseline). Each runs N concurrent workers over persistent HTTP/2
//! connections for a bounded time and prints throughput and latency
//! percentiles. `benches/run.sh` starts a server, an agent and nginx and runs
//! them. `verify` measures token verification alone, in this process, and
//! `sessions` keeps idle agent sessions open to measure the gateway's memory per
//! session and a reconnect storm (`benches/sessions.sh`). `kv-server` is the
//! upstream secret manager of the external-resolution benchmark
//! (`benches/external.sh`).

#![forbid(unsafe_code)]

mod client;
mod kv_server;
mod load;
mod nats;
mod sessions;
mod verify;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http::Method;

#[derive(Parser)]
#[command(name = "keygate-bench", about = "Load generators for keygate")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Submit tasks to one agent and wait for each result.
    Relay(RelayArgs),
    /// Resolve one secret definition as a runner.
    Secrets(SecretArgs),
    /// Read the current value of one hosted secret (`GET .../secrets/NAME/value`).
    Read(HostedSecretArgs),
    /// Store new versions of one hosted secret (`PUT .../secrets/NAME`).
    Write(WriteArgs),
    /// Fetch one path and expect 200, such as a static file served by nginx.
    Static(StaticArgs),
    /// Measure token verifications per second on one thread, in this process.
    Verify(VerifyArgs),
    /// Hold idle agent sessions, report the gateway's memory per session, and optionally a reconnect storm.
    Sessions(SessionsArgs),
    /// Serve a fixed HashiCorp Vault KV v2 secret on loopback for a bounded time.
    KvServer(KvServerArgs),
    /// Reply to NATS requests with their own payload, on one connection to nats-server, for a bounded time.
    NatsResponder(NatsResponderArgs),
    /// Send NATS requests through nats-server and wait for each reply (the relay's baseline).
    NatsRequest(NatsRequestArgs),
}

#[derive(Args)]
struct NatsServer {
    /// `host:port` of nats-server's client listener (TLS); must be a loopback address.
    #[arg(long)]
    nats: std::net::SocketAddr,
    /// CA certificate of nats-server's certificate, which must name `localhost`.
    #[arg(long)]
    ca: PathBuf,
    /// Subject the requests go to.
    #[arg(long, default_value = "bench.echo")]
    subject: String,
}

#[derive(Args)]
struct NatsResponderArgs {
    #[command(flatten)]
    server: NatsServer,
    /// How long to reply, in seconds (at most 3600).
    #[arg(long, default_value_t = 600)]
    duration_secs: u64,
}

#[derive(Args)]
struct NatsRequestArgs {
    #[command(flatten)]
    server: NatsServer,
    #[command(flatten)]
    load: LoadShape,
    /// Request payload size in bytes, as in `relay`: the same JSON submission body.
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
}

#[derive(Args)]
struct KvServerArgs {
    /// Loopback `host:port` to listen on.
    #[arg(long)]
    addr: std::net::SocketAddr,
    /// The `X-Vault-Token` every read must carry.
    #[arg(long)]
    token: String,
    /// How long to serve, in seconds (at most 3600).
    #[arg(long, default_value_t = 600)]
    duration_secs: u64,
}

#[derive(Args)]
struct SessionsArgs {
    /// `host:port` of the agent listener; must be a loopback address.
    #[arg(long, default_value = "127.0.0.1:8443")]
    agent: std::net::SocketAddr,
    /// Folder with the agent's `ca.pem`, `client.pem` and `client-key.pem`.
    #[arg(long)]
    creds_dir: PathBuf,
    #[arg(long)]
    client_id: String,
    /// File holding the agent's client secret.
    #[arg(long)]
    client_secret_file: PathBuf,
    /// Sessions to hold open (at most 100000).
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Sessions opened at once while filling up.
    #[arg(long, default_value_t = 64)]
    open_concurrency: usize,
    /// Process id of the gateway, whose resident memory is read from /proc.
    #[arg(long)]
    server_pid: u32,
    /// Seconds to wait after the last session opened before reading the memory.
    #[arg(long, default_value_t = 5)]
    settle_secs: u64,
    /// Then drop every session at once and time their reconnection.
    #[arg(long)]
    storm: bool,
    /// Carrier of each session's frames: an HTTP/1.1 connection upgraded to
    /// bare frames (as the reference agent connects), or an HTTP/2 stream.
    #[arg(long, value_enum, default_value_t = sessions::Transport::Upgrade)]
    transport: sessions::Transport,
}

#[derive(Args)]
struct VerifyArgs {
    /// Length of each of the two measurements, in seconds (at most 300).
    #[arg(long, default_value_t = 5)]
    duration_secs: u64,
    /// Distinct tokens verified in turn.
    #[arg(long, default_value_t = 1000)]
    tokens: usize,
}

#[derive(Args)]
struct Target {
    /// `host:port` of the API listener; must be a loopback address.
    #[arg(long, default_value = "127.0.0.1:8443")]
    api: std::net::SocketAddr,
    /// CA certificate of the server.
    #[arg(long)]
    ca: PathBuf,
    /// File holding the bearer token.
    #[arg(long)]
    token_file: PathBuf,
    #[command(flatten)]
    load: LoadShape,
}

/// The closed loop's size and length, shared by the HTTP and NATS loads.
#[derive(Args)]
struct LoadShape {
    /// Concurrent workers, each with one request in flight.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Connections the workers share; default: one per 16 workers, at least one.
    #[arg(long)]
    connections: Option<usize>,
    /// Length of the measured run, in seconds (at most 300).
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Unmeasured warm-up before the run, in seconds.
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
}

impl LoadShape {
    /// Checks the bounds and returns the number of connections to open.
    fn connections(&self) -> Result<usize, String> {
        if self.concurrency == 0 || self.concurrency > 4096 {
            return Err(format!(
                "--concurrency {} must be between 1 and 4096",
                self.concurrency
            ));
        }
        if self.duration_secs == 0 || self.duration_secs > 300 {
            return Err(format!(
                "--duration-secs {} must be between 1 and 300",
                self.duration_secs
            ));
        }
        Ok(self
            .connections
            .unwrap_or(self.concurrency.div_ceil(16))
            .clamp(1, self.concurrency))
    }
}

#[derive(Args)]
struct RelayArgs {
    #[command(flatten)]
    target: Target,
    /// The agent that runs the tasks.
    #[arg(long)]
    agent_id: String,
    /// Task payload size in bytes (an `echo` payload of that many characters).
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
}

#[derive(Args)]
struct SecretArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value = "bench")]
    project: String,
    /// Name of the secret definition to resolve; `{worker}` in it becomes
    /// each worker's index (0, 1, ...), so workers can resolve different definitions.
    #[arg(long, default_value = "bench-secret")]
    definition: String,
}

#[derive(Args)]
struct HostedSecretArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value = "bench")]
    project: String,
    /// Name of the hosted secret.
    #[arg(long, default_value = "bench-secret")]
    secret: String,
}

#[derive(Args)]
struct WriteArgs {
    #[command(flatten)]
    secret: HostedSecretArgs,
    /// Size of each stored value in bytes.
    #[arg(long, default_value_t = 32)]
    value_bytes: usize,
}

#[derive(Args)]
struct StaticArgs {
    #[command(flatten)]
    target: Target,
    /// Path to fetch, such as `/secret.json`.
    #[arg(long)]
    path: String,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Relay(args) => {
            let path = format!("/v1/agents/{}/tasks", args.agent_id);
            run(
                "relay",
                &args.target,
                Method::POST,
                path,
                relay_body(args.payload_bytes),
            )
            .await
        }
        Command::NatsResponder(args) => {
            if !args.server.nats.ip().is_loopback()
                || args.duration_secs == 0
                || args.duration_secs > 3600
            {
                Err(format!(
                    "--nats {} must be a loopback address and --duration-secs {} between 1 and 3600",
                    args.server.nats, args.duration_secs
                ))
            } else {
                nats::respond(
                    args.server.nats,
                    &args.server.ca,
                    &args.server.subject,
                    Duration::from_secs(args.duration_secs),
                )
                .await
            }
        }
        Command::NatsRequest(args) => nats_request(args).await,
        Command::Verify(args) => {
            if args.duration_secs == 0 || args.duration_secs > 300 || args.tokens == 0 {
                Err(format!(
                    "--duration-secs {} must be between 1 and 300 and --tokens {} at least 1",
                    args.duration_secs, args.tokens
                ))
            } else {
                verify::run(Duration::from_secs(args.duration_secs), args.tokens)
            }
        }
        Command::Secrets(args) => {
            let path = format!(
                "/v1/projects/{}/secret-definitions/{}/value",
                args.project, args.definition
            );
            run("secrets", &args.target, Method::GET, path, Bytes::new()).await
        }
        Command::Read(args) => match hosted_secret_path(&args.project, &args.secret, "/value") {
            Ok(path) => run("read", &args.target, Method::GET, path, Bytes::new()).await,
            Err(e) => Err(e),
        },
        Command::Write(args) => {
            match hosted_secret_path(&args.secret.project, &args.secret.secret, "") {
                Ok(path) => {
                    let body = serde_json::json!({ "value": "v".repeat(args.value_bytes) });
                    run(
                        "write",
                        &args.secret.target,
                        Method::PUT,
                        path,
                        Bytes::from(body.to_string()),
                    )
                    .await
                }
                Err(e) => Err(e),
            }
        }
        Command::Sessions(args) => {
            if !args.agent.ip().is_loopback() || args.count == 0 || args.count > 100_000 {
                Err(format!(
                    "--agent {} must be a loopback address and --count {} between 1 and 100000",
                    args.agent, args.count
                ))
            } else {
                match std::fs::read_to_string(&args.client_secret_file) {
                    Err(e) => Err(format!(
                        "cannot read --client-secret-file {}: {e}",
                        args.client_secret_file.display()
                    )),
                    Ok(secret) => {
                        sessions::run(sessions::SessionsPlan {
                            agent: args.agent,
                            creds_dir: args.creds_dir,
                            client_id: args.client_id,
                            client_secret: secret.trim().to_owned(),
                            count: args.count,
                            open_concurrency: args.open_concurrency,
                            server_pid: args.server_pid,
                            settle: Duration::from_secs(args.settle_secs),
                            storm: args.storm,
                            transport: args.transport,
                        })
                        .await
                    }
                }
            }
        }
        Command::KvServer(args) => {
            if args.duration_secs == 0 || args.duration_secs > 3600 {
                Err(format!(
                    "--duration-secs {} must be between 1 and 3600",
                    args.duration_secs
                ))
            } else {
                kv_server::run(
                    args.addr,
                    args.token,
                    Duration::from_secs(args.duration_secs),
                )
                .await
            }
        }
        Command::Static(args) => {
            if !args.path.starts_with('/') {
                Err(format!("--path {:?} must start with '/'", args.path))
            } else {
                run("static", &args.target, Method::GET, args.path, Bytes::new()).await
            }
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Returns the submission body of the relay load: an `echo` task whose
/// payload carries `payload_bytes` characters.
fn relay_body(payload_bytes: usize) -> Bytes {
    let body = serde_json::json!({
        "kind": "echo",
        "payload": {"data": "x".repeat(payload_bytes)},
        "timeout_ms": 10_000,
    });
    Bytes::from(body.to_string())
}

async fn nats_request(args: NatsRequestArgs) -> Result<(), String> {
    if !args.server.nats.ip().is_loopback() {
        return Err(format!(
            "--nats {} is not a loopback address; load runs stay on this machine",
            args.server.nats
        ));
    }
    let connections = args.load.connections()?;
    let plan = nats::RequestPlan {
        subject: args.server.subject,
        payload: relay_body(args.payload_bytes),
        concurrency: args.load.concurrency,
        connections,
        warmup: Duration::from_secs(args.load.warmup_secs),
        duration: Duration::from_secs(args.load.duration_secs),
    };
    let report = nats::request(args.server.nats, &args.server.ca, plan).await?;
    report.print("nats", args.load.concurrency, connections);
    Ok(())
}

/// Returns the path of a hosted secret plus `suffix`. Both names must be
/// URL-safe as they are (letters, digits, `.`, `_`, `-`), so no encoding is
/// needed.
fn hosted_secret_path(project: &str, secret: &str, suffix: &str) -> Result<String, String> {
    for (option, value) in [("--project", project), ("--secret", secret)] {
        let url_safe = !value.is_empty()
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !url_safe {
            return Err(format!(
                "{option} {value:?} must be letters, digits, '.', '_' and '-' only"
            ));
        }
    }
    Ok(format!("/v1/projects/{project}/secrets/{secret}{suffix}"))
}

async fn run(
    name: &str,
    target: &Target,
    method: Method,
    path: String,
    body: Bytes,
) -> Result<(), String> {
    if !target.api.ip().is_loopback() {
        return Err(format!(
            "--api {} is not a loopback address; load runs stay on this machine",
            target.api
        ));
    }
    let connections = target.load.connections()?;
    let token = std::fs::read_to_string(&target.token_file)
        .map_err(|e| {
            format!(
                "cannot read --token-file {}: {e}",
                target.token_file.display()
            )
        })?
        .trim()
        .to_owned();
    let senders = client::connect_all(target.api, &target.ca, connections).await?;
    let request = load::RequestTemplate {
        method,
        path,
        body,
        authorization: format!("Bearer {token}"),
    };
    let report = load::run(
        senders,
        request,
        target.load.concurrency,
        Duration::from_secs(target.load.warmup_secs),
        Duration::from_secs(target.load.duration_secs),
    )
    .await;
    report.print(name, target.load.concurrency, connections);
    Ok(())
}
