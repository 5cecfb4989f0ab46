//! `keygate tasks submit|get|wait|cancel`: run tasks on agents and follow them to their result.
//!
//! `submit` and `wait` exit 0 only when the task succeeded, and 1 when it
//! failed, timed out, lost its agent or was still running at `--timeout`.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::api_client::{self, segment, ApiClient, CliError, CommonArgs};
use super::output::{cell, print_fields, print_json, time_cell, OutputFormat};

/// Time between two polls of `GET /v1/tasks/{id}` in `tasks wait`.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Subcommand)]
pub enum TasksCommand {
    /// Submit a task to an agent; waits up to --wait-ms for the result.
    Submit(SubmitArgs),
    /// Show a task's status and result.
    Get(TaskArgs),
    /// Poll a task until it finishes or --timeout passes.
    Wait(WaitArgs),
    /// Cancel a queued or running task; the agent gets a request to stop it.
    Cancel(TaskArgs),
}

#[derive(Args)]
pub struct SubmitArgs {
    /// The agent that runs the task.
    agent_id: String,
    /// The kind of task the agent runs: 1 to 64 characters of a-z, 0-9, `_`, `-` and `.`.
    #[arg(long)]
    kind: String,
    /// The task's JSON payload, passed to the agent as is.
    #[arg(long, conflicts_with = "payload_file")]
    payload: Option<String>,
    /// File holding the JSON payload; `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    payload_file: Option<PathBuf>,
    /// The project the task works for; agents limited to projects require it.
    #[arg(long)]
    project: Option<String>,
    /// Time the agent has for the task, in milliseconds [server default: 30000].
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Time the server waits for the result before it returns the running task, in milliseconds [server default: 10000].
    #[arg(long)]
    wait_ms: Option<u64>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
pub struct TaskArgs {
    /// The task id.
    task_id: String,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
pub struct WaitArgs {
    /// The task id.
    task_id: String,
    /// Maximum time to wait, in seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    #[command(flatten)]
    common: CommonArgs,
}

pub async fn run(command: TasksCommand) -> i32 {
    api_client::finish(dispatch(command).await)
}

async fn dispatch(command: TasksCommand) -> Result<(), CliError> {
    match command {
        TasksCommand::Submit(args) => submit(args).await,
        TasksCommand::Get(args) => {
            let client = ApiClient::new(&args.common.api)?;
            let task = client.get(&task_path(&args.task_id)).await?;
            print_task(&task, args.common.output);
            Ok(())
        }
        TasksCommand::Wait(args) => wait(args).await,
        TasksCommand::Cancel(args) => {
            let client = ApiClient::new(&args.common.api)?;
            let (status, task) = client
                .send(http::Method::DELETE, &task_path(&args.task_id), None)
                .await?;
            print_task(&task, args.common.output);
            if status == http::StatusCode::ACCEPTED {
                eprintln!(
                    "the cancellation is on its way; `keygate tasks wait {}` shows the end",
                    args.task_id
                );
            }
            Ok(())
        }
    }
}

async fn submit(args: SubmitArgs) -> Result<(), CliError> {
    let payload = read_payload(&args)?;
    let client = ApiClient::new(&args.common.api)?;
    let mut request = json!({ "kind": args.kind });
    if let Some(payload) = payload {
        request["payload"] = payload;
    }
    if let Some(project) = &args.project {
        request["project"] = json!(project);
    }
    if let Some(timeout_ms) = args.timeout_ms {
        request["timeout_ms"] = json!(timeout_ms);
    }
    if let Some(wait_ms) = args.wait_ms {
        request["wait_ms"] = json!(wait_ms);
    }
    let path = format!("/v1/agents/{}/tasks", segment(&args.agent_id));
    let (status, task) = client
        .send(http::Method::POST, &path, Some(&request))
        .await?;
    print_task(&task, args.common.output);
    if status == http::StatusCode::ACCEPTED {
        eprintln!(
            "the task is still {}; follow it with `keygate tasks wait {}`",
            cell(&task["status"]),
            cell(&task["id"])
        );
        return Ok(());
    }
    check_succeeded(&task)
}

fn read_payload(args: &SubmitArgs) -> Result<Option<Value>, CliError> {
    let (text, source) = match (&args.payload, &args.payload_file) {
        (Some(text), _) => (text.clone(), "--payload".to_owned()),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).map_err(|e| {
                CliError::Usage(format!("cannot read the payload from standard input: {e}"))
            })?;
            (text, "the payload on standard input".to_owned())
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                CliError::Usage(format!(
                    "cannot read --payload-file {}: {e}",
                    path.display()
                ))
            })?;
            (text, format!("--payload-file {}", path.display()))
        }
        (None, None) => return Ok(None),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| CliError::Usage(format!("{source} is not valid JSON: {e}")))
}

async fn wait(args: WaitArgs) -> Result<(), CliError> {
    let client = ApiClient::new(&args.common.api)?;
    let path = task_path(&args.task_id);
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    loop {
        let task = client.get(&path).await?;
        if !is_pending(&task) {
            print_task(&task, args.common.output);
            return check_succeeded(&task);
        }
        if Instant::now() >= deadline {
            print_task(&task, args.common.output);
            return Err(CliError::Failed(format!(
                "task {} is still {} after {} s; wait again or raise --timeout",
                args.task_id,
                cell(&task["status"]),
                args.timeout
            )));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn task_path(task_id: &str) -> String {
    format!("/v1/tasks/{}", segment(task_id))
}

fn is_pending(task: &Value) -> bool {
    matches!(task["status"].as_str(), Some("queued" | "running"))
}

fn check_succeeded(task: &Value) -> Result<(), CliError> {
    match task["status"].as_str() {
        Some("succeeded") => Ok(()),
        _ => Err(CliError::Failed(format!(
            "task {} finished as {}: {}",
            cell(&task["id"]),
            cell(&task["status"]),
            cell(&task["error"])
        ))),
    }
}

fn print_task(task: &Value, output: OutputFormat) {
    if output == OutputFormat::Json {
        print_json(task);
        return;
    }
    print_fields(&[
        ("id", cell(&task["id"])),
        ("agent", cell(&task["agent_id"])),
        ("kind", cell(&task["kind"])),
        ("status", cell(&task["status"])),
        ("timeout ms", cell(&task["timeout_ms"])),
        ("created", time_cell(&task["created_at_ms"])),
        ("finished", time_cell(&task["finished_at_ms"])),
        ("traceparent", cell(&task["traceparent"])),
        ("result", cell(&task["result"])),
        ("error", cell(&task["error"])),
    ]);
}
