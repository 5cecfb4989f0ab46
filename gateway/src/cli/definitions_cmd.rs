//! `keygate definitions ...`: store, show, list and resolve secret definitions.
//!
//! `definitions resolve` prints the resolved secret value, like `secrets get`.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::api_client::{self, segment, ApiClient, CliError, CommonArgs, PageArgs};
use super::output::{cell, print_fields, print_json, time_cell, write_value, OutputFormat, Table};

#[derive(Subcommand)]
pub enum DefinitionsCommand {
    /// Store a definition: a name plus the location of a secret.
    Put(PutArgs),
    /// Show one definition.
    Get(NameArgs),
    /// List the project's definitions.
    List(ListArgs),
    /// Resolve a definition and print the secret value it points to.
    Resolve(NameArgs),
    /// Drop an external definition's cached values, so the next resolution reads from its provider.
    Invalidate(NameArgs),
}

/// The project and name of one definition.
#[derive(Args)]
struct DefinitionRef {
    /// The definition's name: 1 to 256 bytes of UTF-8 without control characters.
    name: String,
    /// The project that contains the definition.
    #[arg(long, env = "KEYGATE_PROJECT")]
    project: String,
}

impl DefinitionRef {
    fn path(&self, rest: &str) -> String {
        format!(
            "/v1/projects/{}/secret-definitions/{}{rest}",
            segment(&self.project),
            segment(&self.name)
        )
    }
}

#[derive(Args)]
pub struct PutArgs {
    #[command(flatten)]
    definition: DefinitionRef,
    /// The location as JSON, such as `{"type": "aws_secrets_manager", "secret_id": "db"}`; README lists the types.
    #[arg(long, conflicts_with_all = ["hosted", "json_key"], required_unless_present = "hosted")]
    location: Option<String>,
    /// Point at this hosted secret of the same project.
    #[arg(long, value_name = "SECRET")]
    hosted: Option<String>,
    /// With --hosted: resolve this key of the secret's JSON-object value.
    #[arg(long, requires = "hosted")]
    json_key: Option<String>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
pub struct NameArgs {
    #[command(flatten)]
    definition: DefinitionRef,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
pub struct ListArgs {
    /// The project whose definitions to list.
    #[arg(long, env = "KEYGATE_PROJECT")]
    project: String,
    #[command(flatten)]
    page: PageArgs,
    #[command(flatten)]
    common: CommonArgs,
}

pub async fn run(command: DefinitionsCommand) -> i32 {
    api_client::finish(dispatch(command).await)
}

async fn dispatch(command: DefinitionsCommand) -> Result<(), CliError> {
    match command {
        DefinitionsCommand::Put(args) => put(args).await,
        DefinitionsCommand::Get(args) => {
            let client = ApiClient::new(&args.common.api)?;
            let definition = client.get(&args.definition.path("")).await?;
            print_definition(&definition, args.common.output);
            Ok(())
        }
        DefinitionsCommand::List(args) => list(args).await,
        DefinitionsCommand::Resolve(args) => resolve(args).await,
        DefinitionsCommand::Invalidate(args) => {
            let client = ApiClient::new(&args.common.api)?;
            let (_, answer) = client
                .send(http::Method::DELETE, &args.definition.path("/cache"), None)
                .await?;
            if args.common.output == OutputFormat::Json {
                print_json(&answer);
            } else {
                println!(
                    "dropped {} cached values of {}",
                    cell(&answer["dropped_entries"]),
                    args.definition.name
                );
            }
            Ok(())
        }
    }
}

async fn put(args: PutArgs) -> Result<(), CliError> {
    let location = match (&args.location, &args.hosted) {
        (Some(text), _) => serde_json::from_str::<Value>(text)
            .map_err(|e| CliError::Usage(format!("--location is not valid JSON: {e}")))?,
        (None, Some(secret)) => {
            let mut location = json!({ "type": "hosted", "secret": secret });
            if let Some(key) = &args.json_key {
                location["json_key"] = json!(key);
            }
            location
        }
        (None, None) => {
            return Err(CliError::Usage(
                "the location is missing: pass --hosted SECRET or --location JSON".to_owned(),
            ))
        }
    };
    let client = ApiClient::new(&args.common.api)?;
    let (_, definition) = client
        .send(
            http::Method::PUT,
            &args.definition.path(""),
            Some(&json!({ "location": location })),
        )
        .await?;
    print_definition(&definition, args.common.output);
    Ok(())
}

async fn list(args: ListArgs) -> Result<(), CliError> {
    let client = ApiClient::new(&args.common.api)?;
    let path = format!("/v1/projects/{}/secret-definitions", segment(&args.project));
    let listing =
        api_client::fetch_list(&client, &path, "secret_definitions", "name", &args.page).await?;
    if args.common.output == OutputFormat::Json {
        print_json(&listing.body);
        return Ok(());
    }
    let mut table = Table::new(&["NAME", "TYPE", "LOCATION", "UPDATED"]);
    for definition in &listing.items {
        table.push(vec![
            cell(&definition["name"]),
            cell(&definition["location"]["type"]),
            location_text(&definition["location"]),
            time_cell(&definition["updated_at_ms"]),
        ]);
    }
    print!("{}", table.render());
    if let Some(next) = listing.next_after {
        eprintln!("more definitions follow: pass --after {next}");
    }
    Ok(())
}

async fn resolve(args: NameArgs) -> Result<(), CliError> {
    let client = ApiClient::new(&args.common.api)?;
    let resolved = client.get(&args.definition.path("/value")).await?;
    if args.common.output == OutputFormat::Json {
        print_json(&resolved);
        return Ok(());
    }
    let value = resolved["value"]
        .as_str()
        .ok_or_else(|| CliError::Connection("the server's response has no `value`".to_owned()))?;
    write_value(value)
        .map_err(|e| CliError::Failed(format!("writing the value to standard output failed: {e}")))
}

/// Returns the location's fields other than `type` as `key=value` pairs.
fn location_text(location: &Value) -> String {
    location
        .as_object()
        .map(|fields| {
            fields
                .iter()
                .filter(|(key, _)| key.as_str() != "type")
                .map(|(key, value)| format!("{key}={}", cell(value)))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| cell(location))
}

fn print_definition(definition: &Value, output: OutputFormat) {
    if output == OutputFormat::Json {
        print_json(definition);
        return;
    }
    print_fields(&[
        ("name", cell(&definition["name"])),
        ("type", cell(&definition["location"]["type"])),
        ("location", location_text(&definition["location"])),
        ("created", time_cell(&definition["created_at_ms"])),
        ("updated", time_cell(&definition["updated_at_ms"])),
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_text_leaves_out_type() {
        let location = json!({"type": "hosted", "secret": "warehouse", "json_key": "password"});
        let text = location_text(&location);
        assert!(text.contains("secret=warehouse"), "{text}");
        assert!(text.contains("json_key=password"), "{text}");
        assert!(!text.contains("hosted"), "{text}");
    }
}
