//! Requests of the API subcommands (`agents`, `tasks`, `secrets`, `definitions`)
//! and the exit code that each kind of failure maps to.

use bytes::Bytes;
use clap::Args;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;

use super::keys_cmd::{self, ApiArgs};
use super::output::OutputFormat;
use super::{EXIT_FAILURE, EXIT_NOT_FOUND, EXIT_OK, EXIT_REJECTED, EXIT_UNAUTHORIZED, EXIT_USAGE};

/// Characters left as they are in a path segment: RFC 3986's unreserved set.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Connection and output flags shared by every API subcommand.
#[derive(Args)]
pub struct CommonArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Output format: an aligned text table, or the server's JSON response.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// A failed command, with the exit code it maps to.
#[derive(Debug)]
pub enum CliError {
    /// Bad arguments or local input: exit 64.
    Usage(String),
    /// The server could not be reached, or its response could not be read: exit 1.
    Connection(String),
    /// The server responded with an error status.
    Status {
        status: http::StatusCode,
        detail: String,
    },
    /// The request succeeded but the command's own check failed, such as a task
    /// that finished without succeeding: exit 1.
    Failed(String),
}

impl CliError {
    /// Returns the process exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Connection(_) | CliError::Failed(_) => EXIT_FAILURE,
            CliError::Status { status, .. } => exit_code_for_status(*status),
        }
    }

    /// Prints `error: ` and the message to standard error, with a hint where one helps.
    pub fn print(&self) {
        match self {
            CliError::Usage(message)
            | CliError::Connection(message)
            | CliError::Failed(message) => eprintln!("error: {message}"),
            CliError::Status { status, detail } => {
                eprintln!("error: {detail} ({status})");
                if let Some(hint) = hint_for_status(*status) {
                    eprintln!("hint: {hint}");
                }
            }
        }
    }
}

/// Maps an error status to an exit code: 3 not found or gone, 5 unauthorized or
/// forbidden, 1 any 5xx, and 4 every other client error (conflict or rejected input).
pub fn exit_code_for_status(status: http::StatusCode) -> i32 {
    match status.as_u16() {
        404 | 410 => EXIT_NOT_FOUND,
        401 | 403 => EXIT_UNAUTHORIZED,
        400..=499 => EXIT_REJECTED,
        _ => EXIT_FAILURE,
    }
}

fn hint_for_status(status: http::StatusCode) -> Option<&'static str> {
    match status.as_u16() {
        401 => Some("check the token in KEYGATE_TOKEN or --token-file; it may have expired"),
        403 => Some("the token lacks the scope, account or project the request needs"),
        _ => None,
    }
}

/// Runs `command` and turns its result into an exit code, printing the error if any.
pub fn finish(result: Result<(), CliError>) -> i32 {
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            e.print();
            e.exit_code()
        }
    }
}

/// Percent-encodes one path segment, so names that contain `/`, spaces or `%` reach the server intact.
pub fn segment(value: &str) -> String {
    utf8_percent_encode(value, SEGMENT).to_string()
}

/// Returns `path` with the query parameters that are set.
pub fn with_query(path: &str, params: &[(&str, Option<String>)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for (key, value) in params {
        if let Some(value) = value {
            query.append_pair(key, value);
            any = true;
        }
    }
    if any {
        format!("{path}?{}", query.finish())
    } else {
        path.to_owned()
    }
}

/// A connection target and token for one command run.
pub struct ApiClient<'a> {
    args: &'a ApiArgs,
    token: String,
}

impl<'a> ApiClient<'a> {
    /// Reads the token from `KEYGATE_TOKEN` or `--token-file`.
    pub fn new(args: &'a ApiArgs) -> Result<ApiClient<'a>, CliError> {
        let token = keys_cmd::read_token(args).map_err(CliError::Usage)?;
        Ok(ApiClient { args, token })
    }

    /// Sends one request and returns the status and parsed JSON body of a
    /// 2xx response; any other status becomes [`CliError::Status`] with the
    /// problem document's `detail`.
    pub async fn send(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(http::StatusCode, Value), CliError> {
        let bytes = match body {
            Some(value) => Bytes::from(value.to_string()),
            None => Bytes::new(),
        };
        let (status, body) = keys_cmd::call(self.args, method, path, &self.token, bytes)
            .await
            .map_err(|e| {
                CliError::Connection(format!(
                    "{e}; check that the server is running and that --api, --server-name and --ca fit it"
                ))
            })?;
        if !status.is_success() {
            return Err(status_error(status, &body));
        }
        let value = serde_json::from_slice(&body).map_err(|e| {
            CliError::Connection(format!(
                "the server's {status} response is not valid JSON: {e}"
            ))
        })?;
        Ok((status, value))
    }

    /// Sends a GET request and returns the JSON body of a 2xx response.
    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.send(http::Method::GET, path, None)
            .await
            .map(|(_, body)| body)
    }
}

/// Returns the error for a non-2xx response, with the problem document's `detail`.
pub fn status_error(status: http::StatusCode, body: &[u8]) -> CliError {
    CliError::Status {
        status,
        detail: problem_detail(body),
    }
}

/// Returns the `detail` of a problem document, or the body as text when it is not one.
fn problem_detail(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|problem| problem["detail"].as_str().map(str::to_owned))
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body).trim().to_owned();
            if text.is_empty() {
                "the server sent no detail".to_owned()
            } else {
                text
            }
        })
}

/// The part of a list to fetch.
#[derive(Args)]
pub struct PageArgs {
    /// Fetch one page of at most this many items (1 to 1000) instead of every page.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: Option<u32>,
    /// Fetch one page that starts after this id or name (the previous page's `next_after`).
    #[arg(long)]
    pub after: Option<String>,
}

/// Page size when every page is fetched.
const ALL_PAGES_LIMIT: u32 = 1000;

/// A fetched list: the items, and where the next page starts when only one page was asked for.
pub struct Listing {
    /// The server's response for one page, or the items of every page under
    /// `items_key` (with `next_after: null` when the server's lists carry it).
    pub body: Value,
    pub items: Vec<Value>,
    pub next_after: Option<String>,
}

/// Fetches a list endpoint page by page. The cursor of the next page is the
/// response's `next_after` where the server sends one, else the `cursor_field`
/// of a full page's last item.
pub async fn fetch_list(
    client: &ApiClient<'_>,
    path: &str,
    items_key: &str,
    cursor_field: &str,
    page: &PageArgs,
) -> Result<Listing, CliError> {
    let one_page = page.limit.is_some() || page.after.is_some();
    let limit = page.limit.unwrap_or(ALL_PAGES_LIMIT);
    let mut after = page.after.clone();
    let mut items = Vec::new();
    loop {
        let url = with_query(
            path,
            &[("after", after.clone()), ("limit", Some(limit.to_string()))],
        );
        let body = client.get(&url).await?;
        let page_items = body[items_key].as_array().cloned().ok_or_else(|| {
            CliError::Connection(format!(
                "the server's list response has no `{items_key}` array"
            ))
        })?;
        let has_cursor_member = body.get("next_after").is_some();
        let next = if has_cursor_member {
            body["next_after"].as_str().map(str::to_owned)
        } else if page_items.len() as u32 == limit {
            page_items
                .last()
                .and_then(|item| item[cursor_field].as_str())
                .map(str::to_owned)
        } else {
            None
        };
        if one_page {
            return Ok(Listing {
                items: page_items,
                body,
                next_after: next,
            });
        }
        items.extend(page_items);
        if next.is_none() || next == after {
            let mut body = serde_json::json!({ items_key: items.clone() });
            if has_cursor_member {
                body["next_after"] = Value::Null;
            }
            return Ok(Listing {
                body,
                items,
                next_after: None,
            });
        }
        after = next;
    }
}

/// Version numbers given as one comma-separated argument.
#[derive(Clone, Debug)]
pub struct VersionList(pub Vec<u32>);

/// Parses `--versions 1,2,5` for clap.
pub fn parse_version_list(text: &str) -> Result<VersionList, String> {
    parse_versions(text).map(VersionList)
}

/// Parses a comma-separated list of version numbers, such as `1,2,5`.
pub fn parse_versions(text: &str) -> Result<Vec<u32>, String> {
    text.split(',')
        .map(|part| {
            let part = part.trim();
            part.parse::<u32>()
                .ok()
                .filter(|version| *version >= 1)
                .ok_or_else(|| {
                    format!("version {part:?} is not a whole number of at least 1; write versions as 1,2,5")
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_encodes_reserved_characters() {
        assert_eq!(segment("db/pass word%"), "db%2Fpass%20word%25");
        assert_eq!(segment("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(segment("é"), "%C3%A9");
    }

    #[test]
    fn query_lists_only_set_parameters() {
        assert_eq!(with_query("/x", &[("after", None)]), "/x");
        assert_eq!(
            with_query(
                "/x",
                &[("after", Some("a b&c".into())), ("limit", Some("5".into()))]
            ),
            "/x?after=a+b%26c&limit=5"
        );
    }

    #[test]
    fn status_exit_codes() {
        let code = |status: u16| exit_code_for_status(http::StatusCode::from_u16(status).unwrap());
        assert_eq!(code(404), EXIT_NOT_FOUND);
        assert_eq!(code(410), EXIT_NOT_FOUND);
        assert_eq!(code(401), EXIT_UNAUTHORIZED);
        assert_eq!(code(403), EXIT_UNAUTHORIZED);
        assert_eq!(code(409), EXIT_REJECTED);
        assert_eq!(code(400), EXIT_REJECTED);
        assert_eq!(code(422), EXIT_REJECTED);
        assert_eq!(code(500), EXIT_FAILURE);
        assert_eq!(code(503), EXIT_FAILURE);
    }

    #[test]
    fn versions_parse_and_reject() {
        assert_eq!(parse_versions("1,2, 5").unwrap(), vec![1, 2, 5]);
        assert!(parse_versions("0").is_err());
        assert!(parse_versions("1,,2").is_err());
        assert!(parse_versions("two").unwrap_err().contains("\"two\""));
    }

    #[test]
    fn detail_comes_from_problem() {
        let body = br#"{"type":"urn:keygate:problem:not-found","title":"Not Found","status":404,"detail":"secret x does not exist"}"#;
        assert_eq!(problem_detail(body), "secret x does not exist");
        assert_eq!(problem_detail(b"plain text"), "plain text");
        assert_eq!(problem_detail(b""), "the server sent no detail");
    }
}
