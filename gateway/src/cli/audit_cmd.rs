//! `keygate audit verify`, `keygate audit search` and `keygate audit hash`.
//!
//! Exit codes of `verify`: 0 the log is intact, 1 a record was changed,
//! removed, added or reordered (the message names the first bad record),
//! 2 the store or file could not be read, 64 usage or configuration error.
//!
//! Exit codes of `search`, as grep's: 0 some record matched, 1 none did,
//! 2 the store could not be read or the output could not be written, 64
//! usage or configuration error.

use std::io::{IsTerminal, Read, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use clap::{Args, Subcommand};
use keygate_vault::audit::{
    self, AuditOp, AuditOutcome, AuditRecord, ChainHead, Progress, RecordFilter, SearchReport,
    VerifyReport,
};
use keygate_vault::{KvStore, RocksStore, Space};
use serde_json::json;

use super::keys_cmd::{self, ApiArgs};
use super::{ConfigSource, EXIT_FAILURE, EXIT_OK, EXIT_USAGE};

/// Exit code of `audit verify` and `audit search` when the store or file
/// cannot be read, and of `audit search` when its output cannot be written.
pub const EXIT_UNREADABLE: i32 = 2;

/// Records between two progress lines when stdout is not a terminal.
const LINE_EVERY: u64 = 100_000;

/// Records between two updates of the progress line on a terminal.
const TERMINAL_EVERY: u64 = 5_000;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the audit log's hash chain in the store (opened read-only, so the server may run) and in a JSON-lines file.
    Verify(VerifyArgs),
    /// Print the records of the store's audit log that match every given condition, as JSON lines (the store is opened read-only, so the server may run).
    Search(SearchArgs),
    /// Print the HMAC that audit records carry for a sensitive string, computed by the running server.
    Hash(HashArgs),
}

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    source: ConfigSource,
    /// JSON-lines audit file to check as well; default: `vault.audit_file` of --config, if it is a regular file.
    #[arg(long)]
    file: Option<PathBuf>,
}

#[derive(Args)]
pub struct SearchArgs {
    #[command(flatten)]
    source: ConfigSource,
    /// Sequence number of the first record to read.
    #[arg(long, default_value_t = 1)]
    from_seq: u64,
    /// Sequence number of the last record to read; default: the last record.
    #[arg(long)]
    to_seq: Option<u64>,
    /// Only records stored at or after this time, in RFC 3339 (such as 2026-12-05T10:00:00Z).
    #[arg(long, value_parser = parse_time)]
    since: Option<u64>,
    /// Only records stored before this time, in RFC 3339.
    #[arg(long, value_parser = parse_time)]
    until: Option<u64>,
    /// Only the records of this request (the `x-request-id` header of its response).
    #[arg(long)]
    request_id: Option<String>,
    /// Only records whose actor (the token's `sub`) is this value.
    #[arg(long)]
    actor: Option<String>,
    /// Only records of this account.
    #[arg(long)]
    account: Option<String>,
    /// Only records of this project. Records of connection changes have no project.
    #[arg(long)]
    project: Option<String>,
    /// Only records of this secret, definition or connection name.
    #[arg(long)]
    secret: Option<String>,
    /// Only records of this operation, such as read_value or write. Repeat it to match any of several.
    #[arg(long, value_parser = parse_operation)]
    operation: Vec<AuditOp>,
    /// Only records with this outcome, such as denied or success. Repeat it to match any of several.
    #[arg(long, value_parser = parse_outcome)]
    outcome: Vec<AuditOutcome>,
    /// Only records with a detail of this value, compared without regard to ASCII case, such as the HMAC that `keygate audit hash` prints for a sensitive string.
    #[arg(long)]
    detail: Option<String>,
    /// Stop after this many matching records.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
}

#[derive(Args)]
pub struct HashArgs {
    /// The string to hash; read from standard input (without its final line break) when left out, which keeps it out of the shell history.
    value: Option<String>,
    #[command(flatten)]
    api: ApiArgs,
}

pub async fn run(command: AuditCommand) -> i32 {
    match command {
        AuditCommand::Verify(args) => verify(args),
        AuditCommand::Search(args) => search(args),
        AuditCommand::Hash(args) => hash(args).await,
    }
}

fn verify(args: VerifyArgs) -> i32 {
    let (config, store) = match open_store(&args.source) {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let db = config.db_dir();
    println!("checking the audit log in {}", db.display());
    let report = match audit::verify_store(&store, &mut progress_printer()) {
        Ok(report) => report,
        Err(e) => {
            finish_progress_line();
            eprintln!("error: reading the audit log failed: {e}");
            return EXIT_UNREADABLE;
        }
    };
    finish_progress_line();
    let mut intact = print_verdict("the store's audit log", &report);

    let file = args.file.or_else(|| {
        config
            .vault
            .audit_file
            .clone()
            .filter(|path| path.is_file())
    });
    if let Some(path) = file {
        match verify_file(&path, &store, &report) {
            Ok(file_intact) => intact &= file_intact,
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_UNREADABLE;
            }
        }
    }
    if intact {
        EXIT_OK
    } else {
        EXIT_FAILURE
    }
}

/// Loads the configuration and opens its store read-only; on failure, prints
/// why and returns the exit code.
fn open_store(source: &ConfigSource) -> Result<(crate::config::Config, RocksStore), i32> {
    let config = source.load().map_err(|e| {
        eprintln!("error: {e}");
        EXIT_USAGE
    })?;
    let db = config.db_dir();
    if !db.exists() {
        eprintln!(
            "error: no store in {}; pass the server's --config or --data-dir",
            db.display()
        );
        return Err(EXIT_UNREADABLE);
    }
    let store = RocksStore::open_read_only(&db).map_err(|e| {
        eprintln!("error: {e}");
        EXIT_UNREADABLE
    })?;
    Ok((config, store))
}

fn search(args: SearchArgs) -> i32 {
    if let Err(message) = check_search_bounds(&args) {
        eprintln!("error: {message}");
        return EXIT_USAGE;
    }
    let (_, store) = match open_store(&args.source) {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let (from_seq, to_seq, limit) = (args.from_seq, args.to_seq.unwrap_or(u64::MAX), args.limit);
    let filter = RecordFilter {
        since_ms: args.since,
        until_ms: args.until,
        request_id: args.request_id,
        actor: args.actor,
        account: args.account,
        project: args.project,
        secret: args.secret,
        operations: args.operation,
        outcomes: args.outcome,
        detail_value: args.detail,
    };

    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut output_error = None;
    let mut printed = 0u64;
    let result = audit::search_store(&store, &filter, from_seq, to_seq, &mut |_, json| {
        let written = out.write_all(json).and_then(|()| out.write_all(b"\n"));
        if let Err(e) = written {
            output_error = Some(e);
            return ControlFlow::Break(());
        }
        printed += 1;
        if limit.is_some_and(|limit| printed >= limit) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    let flushed = out.flush();
    let output = output_error.map_or(flushed, Err);

    // A closed stderr must not turn a finished search into a panic.
    let mut stderr = std::io::stderr();
    let _ = match (&result, &output) {
        (Err(e), _) => writeln!(stderr, "error: reading the audit log failed: {e}"),
        (Ok(_), Err(e)) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            writeln!(stderr, "error: writing the records failed: {e}")
        }
        (Ok(report), _) => writeln!(stderr, "{}", search_summary(report, from_seq, limit)),
    };
    search_exit_code(&result, &output)
}

/// Rejects time and sequence bounds between which no record can be.
fn check_search_bounds(args: &SearchArgs) -> Result<(), String> {
    if let (Some(since), Some(until)) = (args.since, args.until) {
        if since >= until {
            return Err(format!(
                "--since ({since} ms) must be before --until ({until} ms), or nothing can match"
            ));
        }
    }
    match args.to_seq {
        Some(to_seq) if to_seq < args.from_seq => Err(format!(
            "--to-seq {to_seq} is before --from-seq {}, so no record can be read",
            args.from_seq
        )),
        _ => Ok(()),
    }
}

/// Returns the exit code of a search from its result and from the result of
/// writing its output.
fn search_exit_code(
    result: &Result<SearchReport, audit::AuditError>,
    output: &std::io::Result<()>,
) -> i32 {
    match (result, output) {
        (Err(_), _) => EXIT_UNREADABLE,
        // A reader such as `head` that has read enough closes the pipe.
        (Ok(_), Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => EXIT_OK,
        (Ok(_), Err(_)) => EXIT_UNREADABLE,
        (Ok(report), Ok(())) if report.matched > 0 => EXIT_OK,
        (Ok(_), Ok(())) => EXIT_FAILURE,
    }
}

/// Formats the line that a search prints to stderr when it is done.
fn search_summary(report: &SearchReport, from_seq: u64, limit: Option<u64>) -> String {
    let read = match (report.first_seq, report.last_seq) {
        (Some(first), Some(last)) => format!(
            "{} read, from record {first} to record {last}",
            count(report.scanned, "record")
        ),
        _ if from_seq > 1 => format!("no records at --from-seq {from_seq} or later"),
        _ => "the audit log has no records".to_owned(),
    };
    let mut summary = format!("{} matched, {read}", report.matched);
    if let (true, Some(limit), Some(last)) = (report.stopped, limit, report.last_seq) {
        summary.push_str(&format!(
            ". Stopped at --limit {limit}, so continue with --from-seq {} for more",
            last + 1
        ));
    }
    summary
}

/// Returns `n` followed by `noun`, in the plural unless `n` is 1.
fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Parses an RFC 3339 time into milliseconds since the Unix epoch. A time
/// before the epoch becomes 0, because no record is older.
fn parse_time(text: &str) -> Result<u64, String> {
    let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("not an RFC 3339 time such as 2026-12-05T10:00:00Z: {e}"))?;
    let millis = time.unix_timestamp_nanos().div_euclid(1_000_000).max(0);
    Ok(u64::try_from(millis).unwrap_or(u64::MAX))
}

fn parse_operation(text: &str) -> Result<AuditOp, String> {
    AuditOp::from_name(text).ok_or_else(|| {
        let names: Vec<&str> = AuditOp::ALL.iter().map(|op| op.as_str()).collect();
        format!(
            "not an audit operation; expected one of {}",
            names.join(", ")
        )
    })
}

fn parse_outcome(text: &str) -> Result<AuditOutcome, String> {
    AuditOutcome::from_name(text).ok_or_else(|| {
        let names: Vec<&str> = AuditOutcome::ALL.iter().map(|o| o.as_str()).collect();
        format!("not an audit outcome; expected one of {}", names.join(", "))
    })
}

/// Verifies the file's own chain, then checks that it agrees with the store.
/// Returns whether both hold.
fn verify_file(
    path: &Path,
    store: &dyn KvStore,
    store_report: &VerifyReport,
) -> Result<bool, String> {
    println!("checking the audit file {}", path.display());
    let report = audit::verify_file(path, &mut progress_printer());
    finish_progress_line();
    let report = report.map_err(|e| e.to_string())?;
    if !print_verdict("the audit file", &report) {
        return Ok(false);
    }

    let (Some(file_last), Some(store_last)) = (&report.last, &store_report.last) else {
        return Ok(true);
    };
    // The store was read as of opening it, and a running server may have
    // appended to the file since, so the file may go further than the store.
    if file_last.seq < store_last.seq {
        eprintln!(
            "error: the audit file ends at record {} but the store's log goes on to record {}; its last records were removed, or the server could not write them (see /readyz)",
            file_last.seq, store_last.seq
        );
        return Ok(false);
    }

    let store_hash = store_record_hash(store, store_last.seq)?;
    let file_hash = file_record_hash(path, store_last.seq)?;
    if store_hash.as_deref() != file_hash.as_deref() {
        eprintln!(
            "error: record {} differs between the audit file and the store",
            store_last.seq
        );
        return Ok(false);
    }
    println!(
        "the audit file agrees with the store at record {}",
        store_last.seq
    );
    Ok(true)
}

fn store_record_hash(store: &dyn KvStore, seq: u64) -> Result<Option<String>, String> {
    let value = store
        .get(Space::Audit, &audit::seq_key(seq))
        .map_err(|e| e.to_string())?;
    Ok(value
        .and_then(|value| serde_json::from_slice::<AuditRecord>(&value).ok())
        .map(|record| record.hash))
}

fn file_record_hash(path: &Path, seq: u64) -> Result<Option<String>, String> {
    use std::io::BufRead;
    let file = std::fs::File::open(path)
        .map_err(|e| format!("cannot read the audit file {}: {e}", path.display()))?;
    for line in std::io::BufReader::new(file).lines() {
        let line =
            line.map_err(|e| format!("cannot read the audit file {}: {e}", path.display()))?;
        if let Ok(record) = serde_json::from_str::<AuditRecord>(&line) {
            if record.seq == seq {
                return Ok(Some(record.hash));
            }
        }
    }
    Ok(None)
}

/// Prints whether a chain is intact; returns true when it is.
fn print_verdict(log_name: &str, report: &VerifyReport) -> bool {
    match &report.problem {
        None => {
            match &report.last {
                Some(ChainHead { seq, hash }) => println!(
                    "{log_name} is intact: {} records, from record {} to record {seq} (hash {hash})",
                    report.checked,
                    report.first_seq.unwrap_or(1)
                ),
                None => println!("{log_name} is intact: it has no records"),
            }
            true
        }
        Some(problem) => {
            let last_good = match &report.last {
                Some(last) => format!("record {} is the last good one", last.seq),
                None => "no record before it is good".to_owned(),
            };
            eprintln!("error: {log_name} is broken: {problem}; {last_good}");
            false
        }
    }
}

/// Returns a progress callback: an updated line on a terminal, otherwise a
/// line every [`LINE_EVERY`] records.
fn progress_printer() -> impl FnMut(Progress) {
    let terminal = std::io::stdout().is_terminal();
    let mut lines = ProgressLines::every(if terminal { TERMINAL_EVERY } else { LINE_EVERY });
    move |progress: Progress| {
        let (checked, total) = (progress.checked, progress.total);
        let Some(text) = lines.line(progress) else {
            return;
        };
        let mut stdout = std::io::stdout().lock();
        if terminal {
            let bar = total.map(|total| super::progress::bar(checked, total));
            let _ = write!(stdout, "\r{} {text}", bar.unwrap_or_default());
            let _ = stdout.flush();
        } else {
            let _ = writeln!(stdout, "{text}");
        }
    }
}

/// The progress text due after every `every` records.
struct ProgressLines {
    every: u64,
    next_line_at: u64,
}

impl ProgressLines {
    fn every(every: u64) -> ProgressLines {
        ProgressLines {
            every,
            next_line_at: every,
        }
    }

    /// Returns the text to print for `progress`, or `None` before the next line is due.
    fn line(&mut self, progress: Progress) -> Option<String> {
        if progress.checked < self.next_line_at {
            return None;
        }
        self.next_line_at = progress.checked + self.every;
        Some(match progress.total {
            Some(total) => format!("checked {} of {total} records", progress.checked),
            None => format!("checked {} records", progress.checked),
        })
    }
}

/// Ends the in-place progress line on a terminal.
fn finish_progress_line() {
    if std::io::stdout().is_terminal() {
        // Clears the progress line so the verdict starts at the left margin.
        print!("\r\x1b[2K");
        let _ = std::io::stdout().flush();
    }
}

async fn hash(args: HashArgs) -> i32 {
    let value = match args.value {
        Some(value) => value,
        None => {
            let mut text = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut text) {
                eprintln!("error: cannot read the value from standard input: {e}");
                return EXIT_USAGE;
            }
            let trimmed = text
                .strip_suffix('\n')
                .map(|rest| rest.strip_suffix('\r').unwrap_or(rest));
            trimmed.map(str::to_owned).unwrap_or(text)
        }
    };
    let token = match keys_cmd::read_token(&args.api) {
        Ok(token) => token,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let body = Bytes::from(json!({ "value": value }).to_string());
    match keys_cmd::call(
        &args.api,
        http::Method::POST,
        "/v1/admin/audit/hash",
        &token,
        body,
    )
    .await
    {
        Ok((status, body)) if status.is_success() => {
            match serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|answer| answer["hmac"].as_str().map(str::to_owned))
            {
                Some(hmac) => {
                    println!("{hmac}");
                    EXIT_OK
                }
                None => {
                    eprintln!(
                        "error: the server's answer has no `hmac`: {}",
                        keys_cmd::pretty(&body)
                    );
                    EXIT_FAILURE
                }
            }
        }
        Ok((status, body)) => keys_cmd::error_response(status, &body),
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_time_gives_milliseconds() {
        assert_eq!(parse_time("1970-01-01T00:00:01.5Z"), Ok(1500));
        assert_eq!(
            parse_time("2026-12-05T11:00:00+01:00"),
            parse_time("2026-12-05T10:00:00Z")
        );
        assert_eq!(parse_time("2026-12-05T10:00:00Z"), Ok(1_796_464_800_000));
        assert_eq!(parse_time("1969-12-31T23:59:59.9995Z"), Ok(0));
        assert_eq!(parse_time("1900-01-01T00:00:00Z"), Ok(0));
        let error = parse_time("2026-12-05").unwrap_err();
        assert!(error.contains("not an RFC 3339 time"), "{error}");
    }

    fn report(scanned: u64, matched: u64, seqs: Option<(u64, u64)>, stopped: bool) -> SearchReport {
        SearchReport {
            scanned,
            matched,
            first_seq: seqs.map(|(first, _)| first),
            last_seq: seqs.map(|(_, last)| last),
            stopped,
        }
    }

    #[test]
    fn search_summary_names_range_and_next_start() {
        assert_eq!(
            search_summary(&report(5, 2, Some((1, 5)), false), 1, None),
            "2 matched, 5 records read, from record 1 to record 5"
        );
        assert_eq!(
            search_summary(&report(1, 1, Some((7, 7)), true), 7, Some(1)),
            "1 matched, 1 record read, from record 7 to record 7. \
             Stopped at --limit 1, so continue with --from-seq 8 for more"
        );
        assert_eq!(
            search_summary(&report(0, 0, None, false), 9, None),
            "0 matched, no records at --from-seq 9 or later"
        );
        assert_eq!(
            search_summary(&report(0, 0, None, false), 1, None),
            "0 matched, the audit log has no records"
        );
    }

    #[test]
    fn search_exit_codes() {
        let matched = Ok(report(3, 1, Some((1, 3)), false));
        let none = Ok(report(3, 0, Some((1, 3)), false));
        let written = Ok(());
        let pipe_closed = Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        let disk_full = Err(std::io::Error::other("no space left on device"));
        let unreadable = Err(audit::AuditError::Inconsistent {
            reason: "record 2 is not a valid audit record".into(),
        });
        assert_eq!(search_exit_code(&matched, &written), EXIT_OK);
        assert_eq!(search_exit_code(&none, &written), EXIT_FAILURE);
        assert_eq!(search_exit_code(&matched, &pipe_closed), EXIT_OK);
        assert_eq!(search_exit_code(&matched, &disk_full), EXIT_UNREADABLE);
        assert_eq!(search_exit_code(&unreadable, &written), EXIT_UNREADABLE);
    }

    #[test]
    fn progress_lines_come_every_n_records() {
        let mut lines = ProgressLines::every(3);
        let printed: Vec<String> = (1..=7)
            .filter_map(|checked| {
                lines.line(Progress {
                    checked,
                    total: Some(7),
                })
            })
            .collect();
        assert_eq!(
            printed,
            vec!["checked 3 of 7 records", "checked 6 of 7 records"]
        );
    }

    #[test]
    fn progress_lines_without_total() {
        let mut lines = ProgressLines::every(2);
        assert_eq!(
            lines.line(Progress {
                checked: 1,
                total: None
            }),
            None
        );
        assert_eq!(
            lines.line(Progress {
                checked: 2,
                total: None
            }),
            Some("checked 2 records".to_owned())
        );
    }
}
