//! `keygate secrets ...`: write, read, list and manage the versions of hosted secrets.
//!
//! Only `secrets get` prints a secret value; every other command prints metadata.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use super::api_client::{
    self, parse_version_list, segment, ApiClient, CliError, CommonArgs, PageArgs, VersionList,
};
use super::output::{cell, print_fields, print_json, time_cell, write_value, OutputFormat, Table};

#[derive(Subcommand)]
pub enum SecretsCommand {
    /// Store a new version of a secret, read from standard input or --file.
    Put(PutArgs),
    /// Print a secret's value: the current version, or --version.
    Get(GetArgs),
    /// Show a secret's metadata; never its value.
    Show(NameArgs),
    /// List the project's secrets.
    List(ListArgs),
    /// Show the state of each kept version of a secret.
    Versions(NameArgs),
    /// Soft-delete versions (default: the current one); they stay stored but cannot be read.
    Delete(DeleteArgs),
    /// Make soft-deleted versions readable again.
    Undelete(VersionsArgs),
    /// Remove versions' ciphertext for good.
    Destroy(VersionsArgs),
    /// Destroy every version and the metadata of a secret; its name starts again at version 1.
    Rm(NameArgs),
    /// Set a secret's maximum number of versions or replace its custom metadata.
    Settings(SettingsArgs),
}

/// The project and name of one secret.
#[derive(Args)]
struct SecretRef {
    /// The secret's name: 1 to 256 bytes of UTF-8 without control characters.
    name: String,
    /// The project that contains the secret.
    #[arg(long, env = "KEYGATE_PROJECT")]
    project: String,
}

impl SecretRef {
    fn path(&self, rest: &str) -> String {
        format!(
            "/v1/projects/{}/secrets/{}{rest}",
            segment(&self.project),
            segment(&self.name)
        )
    }
}

#[derive(Args)]
pub struct PutArgs {
    #[command(flatten)]
    secret: SecretRef,
    /// Read the value from this file, byte for byte. Without it the value is
    /// standard input without its final line break.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Write only if the current version is this number; 0: only if the secret does not exist.
    #[arg(long, value_name = "VERSION")]
    cas: Option<u32>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
pub struct GetArgs {
    #[command(flatten)]
    secret: SecretRef,
    /// The version to read [default: the current one].
    #[arg(long)]
    version: Option<u32>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
pub struct NameArgs {
    #[command(flatten)]
    secret: SecretRef,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
pub struct ListArgs {
    /// The project whose secrets to list.
    #[arg(long, env = "KEYGATE_PROJECT")]
    project: String,
    #[command(flatten)]
    page: PageArgs,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    secret: SecretRef,
    /// Comma-separated version numbers, such as 1,2 [default: the current version].
    #[arg(long, value_parser = parse_version_list)]
    versions: Option<VersionList>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
pub struct VersionsArgs {
    #[command(flatten)]
    secret: SecretRef,
    /// Comma-separated version numbers, such as 1,2.
    #[arg(long, value_parser = parse_version_list)]
    versions: VersionList,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
pub struct SettingsArgs {
    #[command(flatten)]
    secret: SecretRef,
    /// Maximum number of versions to keep, 1 to 1000; older ones are purged.
    #[arg(long, conflicts_with = "default_max_versions")]
    max_versions: Option<u32>,
    /// Go back to the server's `vault.default_max_versions`.
    #[arg(long)]
    default_max_versions: bool,
    /// A custom metadata entry KEY=VALUE; repeat for several. The entries replace the whole map.
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = parse_entry)]
    metadata: Vec<(String, String)>,
    /// Remove every custom metadata entry.
    #[arg(long, conflicts_with = "metadata")]
    clear_metadata: bool,
    #[command(flatten)]
    common: CommonArgs,
}

fn parse_entry(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{text:?} has no `=`; write KEY=VALUE"))
}

pub async fn run(command: SecretsCommand) -> i32 {
    api_client::finish(dispatch(command).await)
}

async fn dispatch(command: SecretsCommand) -> Result<(), CliError> {
    match command {
        SecretsCommand::Put(args) => put(args).await,
        SecretsCommand::Get(args) => get(args).await,
        SecretsCommand::Show(args) => {
            let client = ApiClient::new(&args.common.api)?;
            let metadata = client.get(&args.secret.path("")).await?;
            print_metadata(&metadata, args.common.output);
            Ok(())
        }
        SecretsCommand::List(args) => list(args).await,
        SecretsCommand::Versions(args) => {
            let client = ApiClient::new(&args.common.api)?;
            let metadata = client.get(&args.secret.path("")).await?;
            print_versions(&metadata, args.common.output);
            Ok(())
        }
        SecretsCommand::Delete(args) => {
            let body = match args.versions {
                Some(VersionList(versions)) => json!({ "versions": versions }),
                None => json!({}),
            };
            change_versions(&args.secret, &args.common, "/delete", body).await
        }
        SecretsCommand::Undelete(args) => {
            let body = json!({ "versions": args.versions.0 });
            change_versions(&args.secret, &args.common, "/undelete", body).await
        }
        SecretsCommand::Destroy(args) => {
            let body = json!({ "versions": args.versions.0 });
            change_versions(&args.secret, &args.common, "/destroy", body).await
        }
        SecretsCommand::Rm(args) => remove(args).await,
        SecretsCommand::Settings(args) => settings(args).await,
    }
}

async fn put(args: PutArgs) -> Result<(), CliError> {
    let value = read_value(&args.file)?;
    let client = ApiClient::new(&args.common.api)?;
    let mut request = json!({ "value": value });
    if let Some(cas) = args.cas {
        request["cas"] = json!(cas);
    }
    let (_, written) = client
        .send(http::Method::PUT, &args.secret.path(""), Some(&request))
        .await?;
    if args.common.output == OutputFormat::Json {
        print_json(&written);
        return Ok(());
    }
    print_fields(&[
        ("name", cell(&written["name"])),
        ("version", cell(&written["version"])),
        ("created", time_cell(&written["created_at_ms"])),
        ("purged versions", cell(&written["purged_versions"])),
    ]);
    Ok(())
}

/// Reads the value from `file` exactly, or from standard input without one
/// final `\n` or `\r\n`. The server stores strings, so the value must be UTF-8.
fn read_value(file: &Option<PathBuf>) -> Result<String, CliError> {
    let bytes = match file {
        Some(path) => std::fs::read(path)
            .map_err(|e| CliError::Usage(format!("cannot read --file {}: {e}", path.display())))?,
        None => {
            if std::io::stdin().is_terminal() {
                eprintln!("reading the value from standard input; end it with Ctrl-D");
            }
            let mut bytes = Vec::new();
            std::io::stdin().read_to_end(&mut bytes).map_err(|e| {
                CliError::Usage(format!("cannot read the value from standard input: {e}"))
            })?;
            if bytes.ends_with(b"\n") {
                bytes.pop();
                if bytes.ends_with(b"\r") {
                    bytes.pop();
                }
            }
            bytes
        }
    };
    String::from_utf8(bytes).map_err(|_| {
        CliError::Usage(
            "the value is not valid UTF-8; the server stores text, so encode binary values (for example as base64) first"
                .to_owned(),
        )
    })
}

async fn get(args: GetArgs) -> Result<(), CliError> {
    let client = ApiClient::new(&args.common.api)?;
    let path = api_client::with_query(
        &args.secret.path("/value"),
        &[("version", args.version.map(|v| v.to_string()))],
    );
    let body = client.get(&path).await?;
    if args.common.output == OutputFormat::Json {
        print_json(&body);
        return Ok(());
    }
    let value = body["value"]
        .as_str()
        .ok_or_else(|| CliError::Connection("the server's response has no `value`".to_owned()))?;
    write_value(value)
        .map_err(|e| CliError::Failed(format!("writing the value to standard output failed: {e}")))
}

async fn list(args: ListArgs) -> Result<(), CliError> {
    let client = ApiClient::new(&args.common.api)?;
    let path = format!("/v1/projects/{}/secrets", segment(&args.project));
    let listing = api_client::fetch_list(&client, &path, "secrets", "name", &args.page).await?;
    if args.common.output == OutputFormat::Json {
        print_json(&listing.body);
        return Ok(());
    }
    let mut table = Table::new(&["NAME", "CURRENT", "OLDEST", "KEPT", "MAX", "UPDATED"]);
    for secret in &listing.items {
        let kept = secret["versions"].as_object().map_or(0, Map::len);
        table.push(vec![
            cell(&secret["name"]),
            cell(&secret["current_version"]),
            cell(&secret["oldest_version"]),
            kept.to_string(),
            cell(&secret["max_versions_in_force"]),
            time_cell(&secret["updated_at_ms"]),
        ]);
    }
    print!("{}", table.render());
    if let Some(next) = listing.next_after {
        eprintln!("more secrets follow: pass --after {next}");
    }
    Ok(())
}

async fn change_versions(
    secret: &SecretRef,
    common: &CommonArgs,
    action: &str,
    body: Value,
) -> Result<(), CliError> {
    let client = ApiClient::new(&common.api)?;
    let (_, metadata) = client
        .send(http::Method::POST, &secret.path(action), Some(&body))
        .await?;
    print_versions(&metadata, common.output);
    Ok(())
}

async fn remove(args: NameArgs) -> Result<(), CliError> {
    let client = ApiClient::new(&args.common.api)?;
    let (_, deleted) = client
        .send(http::Method::DELETE, &args.secret.path(""), None)
        .await?;
    if args.common.output == OutputFormat::Json {
        print_json(&deleted);
        return Ok(());
    }
    print_fields(&[
        ("name", cell(&deleted["name"])),
        ("destroyed versions", cell(&deleted["destroyed_versions"])),
    ]);
    Ok(())
}

async fn settings(args: SettingsArgs) -> Result<(), CliError> {
    let mut request = json!({});
    if let Some(max) = args.max_versions {
        request["max_versions"] = json!(max);
    } else if args.default_max_versions {
        request["max_versions"] = Value::Null;
    }
    if args.clear_metadata || !args.metadata.is_empty() {
        let entries: Map<String, Value> = args
            .metadata
            .iter()
            .map(|(key, value)| (key.clone(), json!(value)))
            .collect();
        request["custom_metadata"] = Value::Object(entries);
    }
    if request.as_object().is_some_and(Map::is_empty) {
        return Err(CliError::Usage(
            "nothing to change: pass --max-versions, --default-max-versions, --metadata or --clear-metadata".to_owned(),
        ));
    }
    let client = ApiClient::new(&args.common.api)?;
    let (_, metadata) = client
        .send(http::Method::PATCH, &args.secret.path(""), Some(&request))
        .await?;
    print_metadata(&metadata, args.common.output);
    Ok(())
}

fn print_metadata(metadata: &Value, output: OutputFormat) {
    if output == OutputFormat::Json {
        print_json(metadata);
        return;
    }
    let custom = metadata["custom_metadata"]
        .as_object()
        .map(|entries| {
            entries
                .iter()
                .map(|(key, value)| format!("{key}={}", cell(value)))
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| "-".to_owned());
    print_fields(&[
        ("name", cell(&metadata["name"])),
        ("current version", cell(&metadata["current_version"])),
        ("oldest version", cell(&metadata["oldest_version"])),
        ("max versions", cell(&metadata["max_versions"])),
        (
            "max versions in force",
            cell(&metadata["max_versions_in_force"]),
        ),
        ("created", time_cell(&metadata["created_at_ms"])),
        ("updated", time_cell(&metadata["updated_at_ms"])),
        ("custom metadata", custom),
    ]);
    println!();
    print_version_table(metadata);
}

fn print_versions(metadata: &Value, output: OutputFormat) {
    if output == OutputFormat::Json {
        print_json(metadata);
        return;
    }
    print_version_table(metadata);
}

/// Prints one row per kept version, newest first.
fn print_version_table(metadata: &Value) {
    let current = metadata["current_version"].as_u64();
    let mut versions: Vec<(u64, &Value)> = metadata["versions"]
        .as_object()
        .map(|versions| {
            versions
                .iter()
                .filter_map(|(number, info)| number.parse().ok().map(|n| (n, info)))
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by_key(|(number, _)| std::cmp::Reverse(*number));
    let mut table = Table::new(&["VERSION", "STATE", "CREATED", "DELETED"]);
    for (number, info) in versions {
        table.push(vec![
            number.to_string(),
            version_state(info, Some(number) == current).to_owned(),
            time_cell(&info["created_at_ms"]),
            time_cell(&info["deleted_at_ms"]),
        ]);
    }
    print!("{}", table.render());
}

fn version_state(info: &Value, is_current: bool) -> &'static str {
    if info["destroyed"].as_bool() == Some(true) {
        "destroyed"
    } else if info.get("deleted_at_ms").is_some() {
        "deleted"
    } else if is_current {
        "current"
    } else {
        "readable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_states() {
        assert_eq!(version_state(&json!({"created_at_ms": 1}), true), "current");
        assert_eq!(
            version_state(&json!({"created_at_ms": 1}), false),
            "readable"
        );
        assert_eq!(
            version_state(&json!({"created_at_ms": 1, "deleted_at_ms": 2}), true),
            "deleted"
        );
        assert_eq!(
            version_state(
                &json!({"created_at_ms": 1, "deleted_at_ms": 2, "destroyed": true}),
                false
            ),
            "destroyed"
        );
    }

    #[test]
    fn metadata_entries_parse() {
        assert_eq!(
            parse_entry("owner=data=team").unwrap(),
            ("owner".to_owned(), "data=team".to_owned())
        );
        assert!(parse_entry("owner").unwrap_err().contains("KEY=VALUE"));
    }
}
