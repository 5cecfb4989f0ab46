//! Task kinds the reference agent can run. More kinds plug in through `TaskHandlers::register`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;

/// The future a handler returns: the JSON result bytes, or an error message for the caller.
pub type TaskFuture = Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send>>;

/// Runs one kind of task. The payload is the JSON the caller submitted.
pub trait TaskHandler: Send + Sync + 'static {
    fn run(&self, payload: Bytes) -> TaskFuture;
}

/// The handlers of an agent, by task kind.
#[derive(Clone, Default)]
pub struct TaskHandlers {
    handlers: HashMap<String, Arc<dyn TaskHandler>>,
}

impl TaskHandlers {
    /// `echo`, `fill` and `sleep`, the kinds used by tests and benchmarks.
    pub fn builtin() -> TaskHandlers {
        let mut handlers = TaskHandlers::default();
        handlers.register("echo", Echo);
        handlers.register("fill", Fill);
        handlers.register("sleep", Sleep);
        handlers
    }

    pub fn register(&mut self, kind: &str, handler: impl TaskHandler) {
        self.handlers.insert(kind.to_owned(), Arc::new(handler));
    }

    pub fn get(&self, kind: &str) -> Option<Arc<dyn TaskHandler>> {
        self.handlers.get(kind).cloned()
    }

    pub fn kinds(&self) -> Vec<&str> {
        let mut kinds: Vec<&str> = self.handlers.keys().map(String::as_str).collect();
        kinds.sort_unstable();
        kinds
    }
}

/// Returns its payload unchanged.
struct Echo;

impl TaskHandler for Echo {
    fn run(&self, payload: Bytes) -> TaskFuture {
        Box::pin(async move { Ok(payload) })
    }
}

/// Returns `{"data": "aaa…"}` with as many letters as `{"bytes": N}` requests
/// for (at most 64 MiB): a result of a chosen size.
struct Fill;

const MAX_FILL_BYTES: usize = 64 * 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FillPayload {
    bytes: usize,
}

impl TaskHandler for Fill {
    fn run(&self, payload: Bytes) -> TaskFuture {
        Box::pin(async move {
            let request: FillPayload = serde_json::from_slice(&payload)
                .map_err(|e| format!("fill expects a payload like {{\"bytes\": 1000}}: {e}"))?;
            if request.bytes > MAX_FILL_BYTES {
                return Err(format!(
                    "fill bytes {} exceeds the maximum of {MAX_FILL_BYTES}",
                    request.bytes
                ));
            }
            let mut result = Vec::with_capacity(request.bytes + 12);
            result.extend_from_slice(b"{\"data\": \"");
            result.resize(result.len() + request.bytes, b'a');
            result.extend_from_slice(b"\"}");
            Ok(Bytes::from(result))
        })
    }
}

/// Sleeps for `{"ms": N}` milliseconds (at most ten minutes), then returns `{"slept_ms": N}`.
struct Sleep;

const MAX_SLEEP_MS: u64 = 600_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepPayload {
    ms: u64,
}

impl TaskHandler for Sleep {
    fn run(&self, payload: Bytes) -> TaskFuture {
        Box::pin(async move {
            let request: SleepPayload = serde_json::from_slice(&payload)
                .map_err(|e| format!("sleep expects a payload like {{\"ms\": 100}}: {e}"))?;
            if request.ms > MAX_SLEEP_MS {
                return Err(format!(
                    "sleep ms {} exceeds the maximum of {MAX_SLEEP_MS}",
                    request.ms
                ));
            }
            tokio::time::sleep(Duration::from_millis(request.ms)).await;
            Ok(Bytes::from(
                serde_json::json!({ "slept_ms": request.ms }).to_string(),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn builtin_kinds_run() {
        let handlers = TaskHandlers::builtin();
        assert_eq!(handlers.kinds(), vec!["echo", "fill", "sleep"]);
        let echo = handlers.get("echo").unwrap();
        assert_eq!(
            echo.run(Bytes::from_static(b"{\"a\":1}")).await.unwrap(),
            Bytes::from_static(b"{\"a\":1}")
        );
        let sleep = handlers.get("sleep").unwrap();
        assert_eq!(
            sleep.run(Bytes::from_static(b"{\"ms\":5}")).await.unwrap(),
            Bytes::from_static(b"{\"slept_ms\":5}")
        );
        let err = sleep
            .run(Bytes::from_static(b"{\"seconds\":5}"))
            .await
            .unwrap_err();
        assert!(err.contains("{\"ms\": 100}"), "{err}");
        assert!(sleep
            .run(Bytes::from_static(b"{\"ms\":600001}"))
            .await
            .is_err());
        assert!(handlers.get("rm-rf").is_none());
    }

    #[tokio::test]
    async fn fill_returns_requested_size() {
        let fill = TaskHandlers::builtin().get("fill").unwrap();
        let result = fill.run(Bytes::from_static(b"{\"bytes\":3}")).await;
        assert_eq!(result.unwrap(), Bytes::from_static(b"{\"data\": \"aaa\"}"));

        let too_many = fill.run(Bytes::from_static(b"{\"bytes\":67108865}")).await;
        assert!(too_many.unwrap_err().contains("67108864"));
    }
}
