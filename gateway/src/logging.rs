//! Process-wide `tracing` set-up: JSON or human-readable lines on stderr, with
//! a filter that can be changed while the process runs.

use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

type Reloader = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// The installed subscriber's filter: its text and how to replace it.
struct FilterControl {
    current: Mutex<String>,
    reload: Reloader,
}

static FILTER: OnceLock<FilterControl> = OnceLock::new();

/// Installs the global subscriber. `filter` uses the `EnvFilter` syntax, e.g. `info,keygate_gateway=debug`.
pub fn init(format: LogFormat, filter: &str) -> Result<(), String> {
    let parsed = parse_filter(filter)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(parsed)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let (result, reload): (_, Reloader) = match format {
        LogFormat::Pretty => {
            let builder = builder.with_filter_reloading();
            let handle = builder.reload_handle();
            (
                builder.try_init(),
                Box::new(move |f| handle.reload(f).map_err(|e| e.to_string())),
            )
        }
        LogFormat::Json => {
            let builder = builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_filter_reloading();
            let handle = builder.reload_handle();
            (
                builder.try_init(),
                Box::new(move |f| handle.reload(f).map_err(|e| e.to_string())),
            )
        }
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))?;
    let _ = FILTER.set(FilterControl {
        current: Mutex::new(filter.to_owned()),
        reload,
    });
    Ok(())
}

/// Returns the filter in force, or None when [`init`] did not run in this process.
pub fn current_filter() -> Option<String> {
    FILTER
        .get()
        .map(|c| c.current.lock().expect("log filter lock").clone())
}

/// Replaces the filter of the running process.
pub fn set_filter(filter: &str) -> Result<(), String> {
    let control = FILTER.get().ok_or_else(|| {
        "this process did not install keygate's logger, so its filter cannot change".to_owned()
    })?;
    (control.reload)(parse_filter(filter)?)?;
    *control.current.lock().expect("log filter lock") = filter.to_owned();
    tracing::info!(filter, "log filter changed");
    Ok(())
}

fn parse_filter(filter: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(filter).map_err(|e| {
        format!("invalid log filter {filter:?}: {e}; use the EnvFilter syntax, e.g. `info,keygate_gateway=debug`")
    })
}
