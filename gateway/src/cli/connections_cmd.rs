//! `keygate connections ...`: store, show, list and delete the account's
//! connections to external secret managers.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::api_client::{self, segment, ApiClient, CliError, CommonArgs, PageArgs};
use super::output::{cell, print_fields, print_json, time_cell, OutputFormat, Table};

#[derive(Subcommand)]
pub enum ConnectionsCommand {
    /// Store a connection: a provider endpoint and the hosted secret with its credential.
    Put(PutArgs),
    /// Show one connection.
    Get(NameArgs),
    /// List the account's connections.
    List(ListArgs),
    /// Delete a connection; definitions that name it then fail to resolve.
    Rm(NameArgs),
}

#[derive(Args)]
pub struct PutArgs {
    /// The connection's name: 1 to 128 ASCII letters, digits, '-', '_' or '.'.
    name: String,
    /// The connection as JSON, such as `{"type": "hashicorp_vault", "address": ..., "auth": ...}`; README lists the types.
    #[arg(
        long,
        value_name = "JSON",
        conflicts_with = "file",
        required_unless_present = "file"
    )]
    connection: Option<String>,
    /// Read the connection's JSON from this file.
    #[arg(long, value_name = "FILE")]
    file: Option<std::path::PathBuf>,
    /// Allow only definitions of this project to use it; repeat for more. Default: every project.
    #[arg(long = "project", value_name = "PROJECT")]
    projects: Vec<String>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
pub struct NameArgs {
    /// The connection's name.
    name: String,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    page: PageArgs,
    #[command(flatten)]
    common: CommonArgs,
}

pub async fn run(command: ConnectionsCommand) -> i32 {
    api_client::finish(dispatch(command).await)
}

fn path(name: &str) -> String {
    format!("/v1/connections/{}", segment(name))
}

async fn dispatch(command: ConnectionsCommand) -> Result<(), CliError> {
    match command {
        ConnectionsCommand::Put(args) => put(args).await,
        ConnectionsCommand::Get(args) => {
            let client = ApiClient::new(&args.common.api)?;
            let connection = client.get(&path(&args.name)).await?;
            print_connection(&connection, args.common.output);
            Ok(())
        }
        ConnectionsCommand::List(args) => list(args).await,
        ConnectionsCommand::Rm(args) => {
            let client = ApiClient::new(&args.common.api)?;
            let (_, answer) = client
                .send(http::Method::DELETE, &path(&args.name), None)
                .await?;
            if args.common.output == OutputFormat::Json {
                print_json(&answer);
            } else {
                println!("deleted connection {}", args.name);
            }
            Ok(())
        }
    }
}

async fn put(args: PutArgs) -> Result<(), CliError> {
    let text = match (&args.connection, &args.file) {
        (Some(text), _) => text.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .map_err(|e| CliError::Usage(format!("cannot read --file {}: {e}", file.display())))?,
        (None, None) => {
            return Err(CliError::Usage(
                "the connection is missing: pass --connection JSON or --file FILE".to_owned(),
            ))
        }
    };
    let connection: Value = serde_json::from_str(&text)
        .map_err(|e| CliError::Usage(format!("the connection is not valid JSON: {e}")))?;
    let mut body = json!({ "connection": connection });
    if !args.projects.is_empty() {
        body["projects"] = json!(args.projects);
    }
    let client = ApiClient::new(&args.common.api)?;
    let (_, stored) = client
        .send(http::Method::PUT, &path(&args.name), Some(&body))
        .await?;
    print_connection(&stored, args.common.output);
    Ok(())
}

async fn list(args: ListArgs) -> Result<(), CliError> {
    let client = ApiClient::new(&args.common.api)?;
    let listing = api_client::fetch_list(
        &client,
        "/v1/connections",
        "connections",
        "name",
        &args.page,
    )
    .await?;
    if args.common.output == OutputFormat::Json {
        print_json(&listing.body);
        return Ok(());
    }
    let mut table = Table::new(&["NAME", "TYPE", "PROJECTS", "UPDATED"]);
    for connection in &listing.items {
        table.push(vec![
            cell(&connection["name"]),
            cell(&connection["spec"]["type"]),
            projects_text(&connection["projects"]),
            time_cell(&connection["updated_at_ms"]),
        ]);
    }
    print!("{}", table.render());
    if let Some(next) = listing.next_after {
        eprintln!("more connections follow: pass --after {next}");
    }
    Ok(())
}

/// Returns the project allowlist as `a,b`, or `(all)` when there is none.
fn projects_text(projects: &Value) -> String {
    match projects.as_array() {
        Some(list) => list.iter().map(cell).collect::<Vec<_>>().join(","),
        None => "(all)".to_owned(),
    }
}

fn print_connection(connection: &Value, output: OutputFormat) {
    if output == OutputFormat::Json {
        print_json(connection);
        return;
    }
    let settings = connection["spec"]
        .as_object()
        .map(|fields| {
            fields
                .iter()
                .filter(|(key, _)| key.as_str() != "type")
                .map(|(key, value)| format!("{key}={}", cell(value)))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    print_fields(&[
        ("name", cell(&connection["name"])),
        ("type", cell(&connection["spec"]["type"])),
        ("settings", settings),
        ("projects", projects_text(&connection["projects"])),
        ("created", time_cell(&connection["created_at_ms"])),
        ("updated", time_cell(&connection["updated_at_ms"])),
    ]);
}
