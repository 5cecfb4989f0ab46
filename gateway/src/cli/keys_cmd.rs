//! `keygate keys status|rotate`: token signing key administration through the API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

use serde_json::Value;

use super::api_client;
use super::output::{cell, time_cell, OutputFormat, Table};
use super::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE};

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Show the signing keys: pending, active and retired, with their times.
    Status(KeysArgs),
    /// Publish a new signing key; it starts signing after `auth.signing_key_publish_delay_secs`.
    Rotate(KeysArgs),
}

#[derive(Args)]
pub struct KeysArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Output format: an aligned text table, or the server's JSON response.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
}

/// How to reach the API.
#[derive(Args)]
pub struct ApiArgs {
    /// Address of the API listener.
    #[arg(long, env = "KEYGATE_API_ADDR", default_value = "127.0.0.1:8443")]
    api: SocketAddr,
    /// Name the server's certificate must carry.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// CA certificate that signed the server's certificate.
    #[arg(long, default_value = "./keygate-data/tls/ca.pem")]
    ca: PathBuf,
    /// File holding the API token; KEYGATE_TOKEN takes precedence.
    #[arg(long, default_value = "./keygate-data/dev-admin.token")]
    token_file: PathBuf,
}

pub async fn run(command: KeysCommand) -> i32 {
    let (keys_args, method, path) = match &command {
        KeysCommand::Status(args) => (args, http::Method::GET, "/v1/admin/signing-keys"),
        KeysCommand::Rotate(args) => (args, http::Method::POST, "/v1/admin/signing-keys/rotate"),
    };
    let args = &keys_args.api;
    let token = match read_token(args) {
        Ok(token) => token,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    match call(args, method, path, &token, Bytes::new()).await {
        Ok((status, body)) if status.is_success() => {
            match keys_args.output {
                OutputFormat::Json => println!("{}", pretty(&body)),
                OutputFormat::Table => print_keys(&body),
            }
            EXIT_OK
        }
        Ok((status, body)) => error_response(status, &body),
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILURE
        }
    }
}

/// Prints an error response the way the API subcommands do and returns its exit code.
pub(super) fn error_response(status: http::StatusCode, body: &[u8]) -> i32 {
    let error = api_client::status_error(status, body);
    error.print();
    error.exit_code()
}

/// Returns the token from `KEYGATE_TOKEN`, or else from `--token-file`.
pub(super) fn read_token(args: &ApiArgs) -> Result<String, String> {
    if let Ok(token) = std::env::var("KEYGATE_TOKEN") {
        return Ok(token);
    }
    std::fs::read_to_string(&args.token_file)
        .map(|token| token.trim().to_owned())
        .map_err(|e| {
            format!(
                "cannot read --token-file {}: {e}; set KEYGATE_TOKEN or --token-file",
                args.token_file.display()
            )
        })
}

/// Returns the address of the API listener that `args` names.
pub(super) fn api_addr(args: &ApiArgs) -> SocketAddr {
    args.api
}

/// Sends one request with a bearer token and a JSON `body` (empty for none)
/// and returns the status and the response body.
pub(super) async fn call(
    args: &ApiArgs,
    method: http::Method,
    path: &str,
    token: &str,
    body: Bytes,
) -> Result<(http::StatusCode, Bytes), String> {
    let config = crate::tls::client_config(&args.ca, None, false).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(args.api)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", args.api))?;
    let name = ServerName::try_from(args.server_name.clone())
        .map_err(|e| format!("invalid --server-name {:?}: {e}", args.server_name))?;
    let stream = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {} failed: {e}", args.api))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {} failed: {e}", args.api))?;
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, args.server_name.as_str())
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("the request failed: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the response failed: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// Prints the key list as a table; times are UTC, from the API's Unix seconds.
fn print_keys(body: &[u8]) {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let seconds = |v: &Value| time_cell(&v.as_u64().map_or(Value::Null, |s| Value::from(s * 1000)));
    let mut table = Table::new(&[
        "KID",
        "STATE",
        "CREATED",
        "ACTIVATES",
        "RETIRED",
        "UNPUBLISHED",
    ]);
    for key in value["keys"].as_array().into_iter().flatten() {
        table.push(vec![
            cell(&key["kid"]),
            cell(&key["state"]),
            seconds(&key["created_at"]),
            seconds(&key["activates_at"]),
            seconds(&key["retired_at"]),
            seconds(&key["unpublish_at"]),
        ]);
    }
    print!("{}", table.render());
    if let Some(kid) = value["rotated"]["kid"].as_str() {
        eprintln!("published key {kid}; it signs from its ACTIVATES time");
    }
}

pub(super) fn pretty(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}
