//! `keygate vault reencrypt`: starts the server's re-encryption job, or
//! attaches to the running one, and shows its progress until it is done.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use serde_json::Value;

use super::keys_cmd::{self, ApiArgs};
use super::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE};

const PATH: &str = "/v1/admin/vault/reencrypt";
/// Time between two progress requests.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Args)]
pub struct ReencryptArgs {
    /// Only show the job's progress; do not start a job.
    #[arg(long)]
    status: bool,
    /// Start the job and return at once instead of following it.
    #[arg(long, conflicts_with = "status")]
    no_wait: bool,
    #[command(flatten)]
    api: ApiArgs,
}

pub async fn run(args: ReencryptArgs) -> i32 {
    let token = match keys_cmd::read_token(&args.api) {
        Ok(token) => token,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    if args.status {
        return match progress(&args.api, &token).await {
            Ok(body) => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&body).unwrap_or_default()
                );
                EXIT_OK
            }
            Err(e) => {
                eprintln!("error: {e}");
                EXIT_FAILURE
            }
        };
    }

    match keys_cmd::call(&args.api, http::Method::POST, PATH, &token, Bytes::new()).await {
        Ok((status, _)) if status == http::StatusCode::ACCEPTED => {
            println!("started the re-encryption job");
        }
        Ok((status, _)) if status == http::StatusCode::CONFLICT => {
            println!("a re-encryption job is already running; following it");
        }
        Ok((status, body)) => {
            eprintln!(
                "error: the server responded {status}: {}",
                keys_cmd::pretty(&body)
            );
            return EXIT_FAILURE;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILURE;
        }
    }
    if args.no_wait {
        return EXIT_OK;
    }
    follow(&args.api, &token).await
}

/// Polls the progress until the job is done or stops running, printing it
/// in place on a terminal and as one line per change otherwise.
async fn follow(api: &ApiArgs, token: &str) -> i32 {
    let terminal = std::io::stdout().is_terminal();
    let mut last_line = String::new();
    loop {
        let body = match progress(api, token).await {
            Ok(body) => body,
            Err(e) => {
                eprintln!("\nerror: {e}");
                return EXIT_FAILURE;
            }
        };
        let progress = &body["progress"];
        let line = progress_line(progress);
        if line != last_line {
            if terminal {
                print!("\r{line}\x1b[K");
                let _ = std::io::stdout().flush();
            } else {
                println!("{line}");
            }
            last_line = line;
        }
        if progress["done"] == true {
            if terminal {
                println!();
            }
            println!("re-encryption finished");
            return EXIT_OK;
        }
        if body["running"] == false {
            if terminal {
                println!();
            }
            eprintln!("error: the job stopped before it was done (the server may be shutting down); run the command again to resume it");
            return EXIT_FAILURE;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn progress(api: &ApiArgs, token: &str) -> Result<Value, String> {
    let (status, body) = keys_cmd::call(api, http::Method::GET, PATH, token, Bytes::new()).await?;
    if !status.is_success() {
        return Err(format!(
            "the server responded {status}: {}",
            keys_cmd::pretty(&body)
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("the response is not JSON: {e}"))
}

/// Formats one line of progress: a bar, the share done, and the counts.
fn progress_line(progress: &Value) -> String {
    let scanned = progress["scanned"].as_u64().unwrap_or(0);
    let rewritten = progress["rewritten"].as_u64().unwrap_or(0);
    let total = progress["total"].as_u64().unwrap_or(0).max(scanned);
    format!(
        "{}  {scanned}/{total} versions scanned, {rewritten} re-encrypted",
        super::progress::bar(scanned, total)
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::progress_line;

    #[test]
    fn progress_line_shows_share_and_counts() {
        let line = progress_line(&json!({"scanned": 50, "rewritten": 7, "total": 200}));
        assert!(line.starts_with("[########------"), "{line}");
        assert!(
            line.contains(" 25%  50/200 versions scanned, 7 re-encrypted"),
            "{line}"
        );
        let empty = progress_line(&json!({"scanned": 0, "rewritten": 0, "total": 0}));
        assert!(empty.contains("100%"), "{empty}");
    }
}
