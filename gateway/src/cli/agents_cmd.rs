//! `keygate agents ...`: create, list, show, disable, enable, pause, resume and restart agents, and rotate their client secret.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::api_client::{self, segment, ApiClient, CliError, CommonArgs, PageArgs};
use super::output::{cell, list_cell, print_fields, print_json, time_cell, OutputFormat, Table};

#[derive(Subcommand)]
pub enum AgentsCommand {
    /// Create an agent; its client secret is shown only in this response.
    Create(CreateArgs),
    /// List the account's agents with their session state.
    List(ListArgs),
    /// Show one agent.
    Show(AgentArgs),
    /// Disable an agent: its session closes at once and its tokens are revoked.
    Disable(AgentArgs),
    /// Enable a disabled agent, so it can log in again.
    Enable(AgentArgs),
    /// Pause task delivery: running tasks finish, new tasks queue until `resume` or their timeout.
    Pause(AgentArgs),
    /// Resume task delivery to a paused agent; queued tasks are sent.
    Resume(AgentArgs),
    /// Restart the agent's session: running tasks finish (within `gateway.shutdown_grace_ms`), then the agent reconnects; queued tasks wait for it.
    Restart(AgentArgs),
    /// Issue a new client secret; the old one keeps working for `auth.client_secret_rotation_overlap_secs`.
    RotateSecret(RotateArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    /// A name for people to recognize the agent by.
    #[arg(long)]
    name: Option<String>,
    /// Limit the agent to this project; repeat for several. Without it the agent serves every project.
    #[arg(long = "project", value_name = "PROJECT")]
    projects: Vec<String>,
    #[command(flatten)]
    secret: SecretFileArgs,
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

#[derive(Args)]
pub struct AgentArgs {
    /// The agent id (its OAuth client id).
    agent_id: String,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
pub struct RotateArgs {
    /// The agent id (its OAuth client id).
    agent_id: String,
    #[command(flatten)]
    secret: SecretFileArgs,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
struct SecretFileArgs {
    /// Write the client secret into this new file (mode 0600) instead of printing it; `keygate agent --client-secret-file` reads it.
    #[arg(long, value_name = "FILE")]
    client_secret_file: Option<PathBuf>,
}

pub async fn run(command: AgentsCommand) -> i32 {
    api_client::finish(dispatch(command).await)
}

async fn dispatch(command: AgentsCommand) -> Result<(), CliError> {
    match command {
        AgentsCommand::Create(args) => create(args).await,
        AgentsCommand::List(args) => list(args).await,
        AgentsCommand::Show(args) => {
            let client = ApiClient::new(&args.common.api)?;
            let body = client
                .get(&format!("/v1/agents/{}", segment(&args.agent_id)))
                .await?;
            print_agent(&body, args.common.output);
            Ok(())
        }
        AgentsCommand::Disable(args) => agent_action(args, "disable").await,
        AgentsCommand::Enable(args) => agent_action(args, "enable").await,
        AgentsCommand::Pause(args) => agent_action(args, "pause").await,
        AgentsCommand::Resume(args) => agent_action(args, "resume").await,
        AgentsCommand::Restart(args) => {
            let client = ApiClient::new(&args.common.api)?;
            let path = format!("/v1/agents/{}/restart", segment(&args.agent_id));
            let (_, body) = client.send(http::Method::POST, &path, None).await?;
            print_agent(&body, args.common.output);
            if args.common.output != OutputFormat::Json {
                eprintln!(
                    "agent {} reconnects once the tasks it runs now ({}) finish, at most {} ms from now",
                    args.agent_id,
                    cell(&body["restart"]["in_flight"]),
                    cell(&body["restart"]["grace_ms"])
                );
            }
            Ok(())
        }
        AgentsCommand::RotateSecret(args) => rotate_secret(args).await,
    }
}

async fn create(args: CreateArgs) -> Result<(), CliError> {
    args.secret.check_free()?;
    let client = ApiClient::new(&args.common.api)?;
    let mut request = json!({});
    if let Some(name) = &args.name {
        request["name"] = json!(name);
    }
    if !args.projects.is_empty() {
        request["projects"] = json!(args.projects);
    }
    let (_, body) = client
        .send(http::Method::POST, "/v1/agents", Some(&request))
        .await?;
    print_with_secret(body, &args.secret, args.common.output)
}

async fn list(args: ListArgs) -> Result<(), CliError> {
    let client = ApiClient::new(&args.common.api)?;
    let listing = api_client::fetch_list(&client, "/v1/agents", "agents", "id", &args.page).await?;
    if args.common.output == OutputFormat::Json {
        print_json(&listing.body);
        return Ok(());
    }
    let mut table = Table::new(&["ID", "NAME", "STATUS", "PROJECTS", "CREATED"]);
    for agent in &listing.items {
        table.push(vec![
            cell(&agent["id"]),
            cell(&agent["name"]),
            cell(&agent["status"]),
            list_cell(&agent["projects"]),
            time_cell(&agent["created_at_ms"]),
        ]);
    }
    print!("{}", table.render());
    if let Some(next) = listing.next_after {
        eprintln!("more agents follow: pass --after {next}");
    }
    Ok(())
}

/// Runs a `POST /v1/agents/{id}/{action}` without a body and prints the agent.
async fn agent_action(args: AgentArgs, action: &str) -> Result<(), CliError> {
    let client = ApiClient::new(&args.common.api)?;
    let path = format!("/v1/agents/{}/{action}", segment(&args.agent_id));
    let (_, body) = client.send(http::Method::POST, &path, None).await?;
    print_agent(&body, args.common.output);
    Ok(())
}

async fn rotate_secret(args: RotateArgs) -> Result<(), CliError> {
    args.secret.check_free()?;
    let client = ApiClient::new(&args.common.api)?;
    let path = format!("/v1/agents/{}/rotate-secret", segment(&args.agent_id));
    let (_, body) = client.send(http::Method::POST, &path, None).await?;
    print_with_secret(body, &args.secret, args.common.output)
}

impl SecretFileArgs {
    /// Fails before the request when the secret file exists, because the
    /// secret cannot be fetched again once the response is lost.
    fn check_free(&self) -> Result<(), CliError> {
        match &self.client_secret_file {
            Some(path) if path.exists() => Err(CliError::Usage(format!(
                "--client-secret-file {} already exists; name a new file",
                path.display()
            ))),
            _ => Ok(()),
        }
    }
}

/// Prints a response that carries `client_secret`, moving the secret into
/// `--client-secret-file` when one is given.
fn print_with_secret(
    mut body: Value,
    secret: &SecretFileArgs,
    output: OutputFormat,
) -> Result<(), CliError> {
    if let Some(path) = &secret.client_secret_file {
        let value = body["client_secret"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if let Err(e) = write_secret_file(path, &value) {
            // The secret exists only in this response, so it is printed rather than lost.
            print_json(&body);
            return Err(CliError::Failed(format!(
                "cannot write --client-secret-file {}: {e}; the response above contains the client secret",
                path.display()
            )));
        }
        if let Some(object) = body.as_object_mut() {
            object.remove("client_secret");
        }
        eprintln!("client secret written to {}", path.display());
    }
    print_agent(&body, output);
    Ok(())
}

fn write_secret_file(path: &Path, secret: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")
}

fn print_agent(agent: &Value, output: OutputFormat) {
    if output == OutputFormat::Json {
        print_json(agent);
        return;
    }
    let instances: Vec<String> = agent["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            format!(
                "{} (session {}, version {}, capacity {}, in flight {})",
                cell(&i["instance_id"]),
                cell(&i["session_id"]),
                cell(&i["agent_version"]),
                cell(&i["capacity"]),
                cell(&i["in_flight"])
            )
        })
        .collect();
    let instances_text = if instances.is_empty() {
        "-".to_owned()
    } else {
        instances.join("; ")
    };
    let mut fields = vec![
        ("id", cell(&agent["id"])),
        ("account", cell(&agent["account"])),
        ("name", cell(&agent["name"])),
        ("status", cell(&agent["status"])),
        ("disabled", cell(&agent["disabled"])),
        ("paused", cell(&agent["paused"])),
        ("queued tasks", cell(&agent["queued_tasks"])),
        ("projects", list_cell(&agent["projects"])),
        ("created", time_cell(&agent["created_at_ms"])),
        (
            "previous secret valid until",
            time_cell(&agent["previous_secret_valid_until_ms"]),
        ),
        (
            "in flight",
            format!(
                "{} of {}",
                cell(&agent["in_flight"]),
                cell(&agent["capacity"])
            ),
        ),
        ("instances", instances_text),
    ];
    if let Some(secret) = agent.get("client_secret") {
        fields.push(("client secret (shown once)", cell(secret)));
    }
    print_fields(&fields);
}
