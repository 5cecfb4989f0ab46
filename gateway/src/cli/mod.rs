//! The `keygate` command line: argument parsing and the exit codes of each subcommand.
//!
//! Exit codes: 0 success, 1 runtime failure, 64 usage or configuration error (EX_USAGE).
//! `audit verify` exits with 1 for a broken audit log and 2 when it cannot read it.
//! `audit search` exits with 1 when no record matched and 2 when it cannot read
//! the store or write its output.
//! The API subcommands (`agents`, `tasks`, `secrets`, `definitions`, `keys`,
//! `audit hash`) also exit 3 for not found, 4 for a conflict or rejected request
//! and 5 for an unauthorized or forbidden one ([`EXIT_CODES_HELP`]).

mod agent_cmd;
mod agents_cmd;
mod api_client;
mod audit_cmd;
mod backup_cmd;
mod config_cmd;
mod connections_cmd;
mod definitions_cmd;
mod keys_cmd;
mod output;
mod progress;
mod reencrypt_cmd;
mod secrets_cmd;
mod serve_cmd;
mod tasks_cmd;
mod tools_cmd;
mod vault_cmd;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::logging::LogFormat;

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_USAGE: i32 = 64;
/// The server responded 404 or 410.
pub const EXIT_NOT_FOUND: i32 = 3;
/// The server rejected the request: 409, or another 4xx such as 400 or 422.
pub const EXIT_REJECTED: i32 = 4;
/// The server responded 401 or 403.
pub const EXIT_UNAUTHORIZED: i32 = 5;

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0   success
  1   failure: a 5xx response, a connection or TLS error, a task that did not succeed;
      audit verify: the log is broken; audit search: no record matched
  2   audit verify and audit search: the store or audit file cannot be read,
      or the search output cannot be written
  3   not found (404, 410)
  4   conflict or rejected request (409, 400, 422 and other 4xx)
  5   unauthorized or forbidden (401, 403)
  64  usage or configuration error
Codes 3 to 5 come from the API commands; `vault backup` and `vault reencrypt`
exit 1 for every error response.

API commands take the token from KEYGATE_TOKEN, else from --token-file.";

#[derive(Parser)]
#[command(
    name = "keygate",
    version,
    about = "Agent gateway and secret vault for a data-integration platform",
    after_help = EXIT_CODES_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log line format.
    #[arg(
        long,
        global = true,
        env = "KEYGATE_LOG_FORMAT",
        value_enum,
        default_value = "pretty"
    )]
    log_format: LogFormat,
    /// Log filter, e.g. `info` or `info,keygate_gateway=debug`.
    #[arg(long, global = true, env = "KEYGATE_LOG", default_value = "info")]
    log_filter: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server on development defaults, creating the data folder, a development CA and keys on first start.
    Dev(DevArgs),
    /// Create the data folder's development CA, server certificate and keys, then exit.
    Init(InitArgs),
    /// Run the server from a TOML configuration file.
    Serve(ServeArgs),
    /// Manage tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Issue certificates from the development CA.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Check a configuration file or print an example one.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Inspect and rotate the token signing keys of a running server.
    #[command(subcommand)]
    Keys(keys_cmd::KeysCommand),
    /// Run the reference agent.
    Agent(agent_cmd::AgentArgs),
    /// Verify or search the vault audit log, or hash a string to search for.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCommand),
    /// Back up and restore the vault store.
    #[command(subcommand)]
    Vault(VaultCommand),
    /// Create, list, show, disable, enable, pause, resume and restart agents, and rotate their client secrets.
    #[command(subcommand)]
    Agents(agents_cmd::AgentsCommand),
    /// Submit tasks to agents and follow them to their result.
    #[command(subcommand)]
    Tasks(tasks_cmd::TasksCommand),
    /// Write, read, list and manage the versions of hosted secrets.
    #[command(subcommand)]
    Secrets(secrets_cmd::SecretsCommand),
    /// Store, show, list and resolve secret definitions, and clear their cached values.
    #[command(subcommand)]
    Definitions(definitions_cmd::DefinitionsCommand),
    /// Store, show, list and delete connections to external secret managers.
    #[command(subcommand)]
    Connections(connections_cmd::ConnectionsCommand),
}

#[derive(Subcommand)]
enum VaultCommand {
    /// Write a backup of the store: through the running server, or with --offline from a stopped server's data folder.
    Backup(backup_cmd::BackupArgs),
    /// Restore a backup into the store folder of a new data folder, and check it against the master key.
    Restore(backup_cmd::RestoreArgs),
    /// Re-encrypt every data key under a new master key, in one atomic write; the server must be stopped.
    RotateMaster(vault_cmd::RotateMasterArgs),
    /// Wrap a new or existing master key with AWS KMS for the `aws_kms` source.
    WrapKey(vault_cmd::WrapKeyArgs),
    /// Re-seal old ciphertexts under their project's current data key, through the running server, showing progress.
    Reencrypt(reencrypt_cmd::ReencryptArgs),
}

#[derive(Args)]
struct ListenArgs {
    /// Address of the agent listener (mTLS, HTTP/2) [default: 127.0.0.1:7443; with serve, listen.agent].
    #[arg(long, env = "KEYGATE_AGENT_ADDR")]
    agent_addr: Option<SocketAddr>,
    /// Address of the API listener (HTTPS) [default: 127.0.0.1:8443; with serve, listen.api].
    #[arg(long, env = "KEYGATE_API_ADDR")]
    api_addr: Option<SocketAddr>,
    /// Address of the ops listener (plain HTTP: /metrics, /healthz, /readyz, /log-filter) [default: 127.0.0.1:9464; with serve, listen.ops].
    #[arg(long, env = "KEYGATE_OPS_ADDR")]
    ops_addr: Option<SocketAddr>,
}

#[derive(Args)]
struct DevArgs {
    /// Folder for the store, keys and certificates.
    #[arg(long, env = "KEYGATE_DATA_DIR", default_value = "./keygate-data")]
    data_dir: PathBuf,
    #[command(flatten)]
    listen: ListenArgs,
}

#[derive(Args)]
struct InitArgs {
    /// Folder for the store, keys and certificates.
    #[arg(long, env = "KEYGATE_DATA_DIR", default_value = "./keygate-data")]
    data_dir: PathBuf,
}

#[derive(Args)]
struct ServeArgs {
    /// TOML configuration file; `docs/CONFIG.md` lists the options.
    #[arg(long, env = "KEYGATE_CONFIG")]
    config: PathBuf,
    #[command(flatten)]
    listen: ListenArgs,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Sign a token for a platform caller or runner with the local signing key and print it.
    Issue(tools_cmd::TokenIssueArgs),
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Issue an agent's client certificate from the development CA.
    Agent(tools_cmd::CertAgentArgs),
}

/// Location of the server's configuration for tool commands: a config file, or a data folder with defaults.
#[derive(Args)]
struct ConfigSource {
    /// TOML configuration file of the server.
    #[arg(long, env = "KEYGATE_CONFIG", conflicts_with = "data_dir")]
    config: Option<PathBuf>,
    /// Data folder of a server that runs on defaults.
    #[arg(long, env = "KEYGATE_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

impl ConfigSource {
    fn load(&self) -> Result<Config, String> {
        match (&self.config, &self.data_dir) {
            (Some(path), _) => {
                Config::load_with_env(path, std::env::vars()).map_err(|e| e.to_string())
            }
            (None, dir) => Ok(Config {
                data_dir: dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("./keygate-data")),
                ..Config::default()
            }),
        }
    }
}

/// Parses the arguments, runs the subcommand and returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    EXIT_OK
                }
                _ => EXIT_USAGE,
            };
        }
    };
    if let Err(e) = crate::logging::init(cli.log_format, &cli.log_filter) {
        eprintln!("error: {e}");
        return EXIT_USAGE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return EXIT_FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => serve_cmd::dev(args).await,
            Command::Init(args) => serve_cmd::init(args),
            Command::Serve(args) => serve_cmd::serve(args).await,
            Command::Token(TokenCommand::Issue(args)) => tools_cmd::token_issue(args).await,
            Command::Certs(CertsCommand::Agent(args)) => tools_cmd::cert_agent(args),
            Command::Agent(args) => agent_cmd::run(args).await,
            Command::Audit(command) => audit_cmd::run(command).await,
            Command::Keys(command) => keys_cmd::run(command).await,
            Command::Config(command) => config_cmd::run(command),
            Command::Vault(VaultCommand::Backup(args)) => backup_cmd::backup(args).await,
            Command::Vault(VaultCommand::Restore(args)) => backup_cmd::restore(args),
            Command::Vault(VaultCommand::RotateMaster(args)) => {
                vault_cmd::rotate_master(args).await
            }
            Command::Vault(VaultCommand::WrapKey(args)) => vault_cmd::wrap_key(args).await,
            Command::Vault(VaultCommand::Reencrypt(args)) => reencrypt_cmd::run(args).await,
            Command::Agents(command) => agents_cmd::run(command).await,
            Command::Tasks(command) => tasks_cmd::run(command).await,
            Command::Secrets(command) => secrets_cmd::run(command).await,
            Command::Definitions(command) => definitions_cmd::run(command).await,
            Command::Connections(command) => connections_cmd::run(command).await,
        }
    })
}
