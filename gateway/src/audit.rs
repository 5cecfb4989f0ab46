//! The vault audit log as handlers use it: one record per vault access,
//! stored before the response is sent, and its metrics.
//!
//! A read appends one record with its outcome, through [`record`], before
//! the value is returned. A change appends a `started` record before
//! anything changes and a second record with the outcome afterwards
//! ([`AuditedChange`]). When a record cannot be written, the access is
//! refused with 503.
//!
//! While records of reads are not synced, the reads that run at the same
//! moment store their records together. The first one queued lets the other
//! ready requests run, then stores every queued record in one batch and sends
//! each request its sequence number. A read while no other API request is in
//! flight stores its record at once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use http::StatusCode;
use keygate_auth::Principal;
use keygate_vault::audit::{
    AuditError, AuditEvent, AuditKey, AuditLog, AuditOptions, BatchOutcome,
};
use keygate_vault::{ErrorKind, KvStore, SecretLocation, Vault, VaultError};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge};
use tokio::sync::{oneshot, Semaphore};

pub use keygate_vault::audit::{AuditOp, AuditOutcome};

use crate::http::problem::ApiError;
use crate::metrics::Metrics;
use crate::state::SharedState;

/// The id of one HTTP request, as sent in its `x-request-id` response
/// header. `http::handle` puts it into every request's extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(pub String);

/// The caller and project of a request: the part of an audit record that is
/// the same for every access of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditContext {
    pub request_id: String,
    /// The token's subject; empty when the request had no valid token.
    pub actor: String,
    /// The token's account; empty when the request had no valid token.
    pub account: String,
    /// The project id from the path, as sent.
    pub project: String,
    /// Details added to every event built from this context.
    pub details: BTreeMap<String, String>,
}

impl AuditContext {
    /// Builds the context of a request made with `principal`'s token.
    pub fn new<B>(req: &http::Request<B>, principal: &Principal, project: &str) -> AuditContext {
        AuditContext {
            request_id: request_id(req),
            actor: principal.subject.clone(),
            account: principal.account.clone(),
            project: project.to_owned(),
            details: BTreeMap::new(),
        }
    }

    /// Builds the context of a request without a valid token.
    pub fn unauthenticated<B>(req: &http::Request<B>, project: &str) -> AuditContext {
        AuditContext {
            request_id: request_id(req),
            actor: String::new(),
            account: String::new(),
            project: project.to_owned(),
            details: BTreeMap::new(),
        }
    }

    /// Returns this context with `details` added to its events' details.
    pub fn with_details(&self, details: BTreeMap<String, String>) -> AuditContext {
        let mut context = self.clone();
        context.details.extend(details);
        context
    }

    /// Builds the event of one access in this context.
    pub fn event(
        &self,
        secret: &str,
        version: Option<u32>,
        operation: AuditOp,
        outcome: AuditOutcome,
    ) -> AuditEvent {
        AuditEvent {
            request_id: self.request_id.clone(),
            actor: self.actor.clone(),
            account: self.account.clone(),
            project: self.project.clone(),
            secret: secret.to_owned(),
            version,
            operation,
            outcome,
            details: self.details.clone(),
        }
    }
}

/// Returns the audit details of an access to `location`: `hosted_secret`
/// for a hosted secret, or `provider` and `location_hmac`, the HMAC of
/// [`SecretLocation::external_id`]. A customer's secret ids can name its
/// systems and environments, so records do not contain them as text.
pub fn location_details(
    state: &SharedState,
    location: &SecretLocation,
) -> BTreeMap<String, String> {
    let mut details = BTreeMap::new();
    match (location, location.external_id()) {
        (SecretLocation::Hosted { secret, .. }, _) => {
            details.insert("hosted_secret".to_owned(), secret.clone());
        }
        (_, Some(id)) => {
            details.insert("provider".to_owned(), location.provider().to_owned());
            match state.audit.hmac(&id) {
                Ok(hmac) => {
                    details.insert("location_hmac".to_owned(), hmac);
                }
                // The key is loaded when the vault opens, and a definition
                // is only read from an open vault, so this is not expected.
                Err(error) => {
                    tracing::warn!(error = %error, provider = location.provider(), "an audit record lacks the HMAC of its external location");
                }
            }
        }
        (_, None) => {}
    }
    details
}

fn request_id<B>(req: &http::Request<B>) -> String {
    req.extensions()
        .get::<RequestId>()
        .map(|id| id.0.clone())
        .unwrap_or_default()
}

/// The server's audit log: the writer of the vault crate, a bound on the
/// events in flight, and the metrics.
pub struct Audit {
    log: AuditLog,
    /// Records of reads waiting to be stored together.
    reads: Mutex<ReadQueue>,
    /// One permit per event submitted and not yet acknowledged. There are
    /// as many permits as the writer's queue has places, so submitting never
    /// blocks an async worker; callers wait here instead.
    permits: Arc<Semaphore>,
    metrics: AuditMetrics,
}

impl Audit {
    /// Starts the audit log on `store`, copying records to `file` if set.
    /// With `sync_reads` false, batches of read records are acknowledged
    /// before they reach the disk (see [`AuditOptions::sync_reads`]).
    /// Without `key`, [`Audit::hmac`] fails until [`Audit::load_hmac_key`].
    pub fn start(
        store: Arc<dyn KvStore>,
        key: Option<AuditKey>,
        file: Option<PathBuf>,
        sync_reads: bool,
    ) -> Result<Audit, AuditError> {
        let metrics = AuditMetrics::new();
        let observed = metrics.clone();
        let log = AuditLog::start_with(
            store,
            key,
            AuditOptions {
                file,
                on_batch: Some(Box::new(move |outcome| observed.observe(outcome))),
                sync_reads,
                ..AuditOptions::default()
            },
        )?;
        Ok(Audit {
            permits: Arc::new(Semaphore::new(log.queue_capacity())),
            log,
            reads: Mutex::default(),
            metrics,
        })
    }

    /// Appends `event` and waits until it is stored; returns its sequence number.
    pub async fn append(&self, event: AuditEvent) -> Result<u64, AuditError> {
        if self.log.appends_inline(event.operation) {
            // A request that runs alone does not wait for others to join its
            // batch, because there are none, and a yield then only makes the
            // two async workers wake each other.
            let gather = crate::http::api_requests_in_flight() > 1;
            return self.append_read(event, gather).await;
        }
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| AuditError::Stopped)?;
        let (sender, receiver) = oneshot::channel();
        self.log.submit(event, move |result| {
            // The permit is returned once the writer is done with the event,
            // even when the request that waited for it is gone.
            drop(permit);
            let _ = sender.send(result);
        });
        receiver.await.unwrap_or(Err(AuditError::Stopped))
    }

    /// Queues the record of a read and waits until the batch holding it is
    /// stored. The request that finds no batch being gathered leads one. With
    /// `gather`, it yields once before it stores the batch.
    async fn append_read(&self, event: AuditEvent, gather: bool) -> Result<u64, AuditError> {
        let (sender, receiver) = oneshot::channel();
        let lead = {
            let mut queue = lock(&self.reads);
            queue.waiting.push((event, sender));
            !std::mem::replace(&mut queue.gathering, true)
        };
        if lead {
            // The guard stores the batch when dropped, also when this request
            // is dropped while it waits.
            let batch = StoreOnDrop(self);
            // Yielding once lets the requests that are ready on this worker
            // queue their records first.
            if gather {
                tokio::task::yield_now().await;
            }
            drop(batch);
        }
        // A sender dropped unused means that storing the batch panicked, so
        // the read is rejected.
        receiver.await.unwrap_or_else(|_| {
            Err(AuditError::Unavailable {
                cause: "storing the batch of audit records that held this read's record panicked"
                    .into(),
            })
        })
    }

    /// Returns the HMAC of `value` under this installation's audit key, in hex.
    pub fn hmac(&self, value: &str) -> Result<String, AuditError> {
        self.log.hmac(value)
    }

    /// Reads the HMAC key from `vault`, creating it there on first use, and
    /// uses it from now on.
    pub fn load_hmac_key(&self, vault: &Vault) -> Result<(), AuditError> {
        let key = AuditKey::load_or_create(vault).map_err(AuditError::Key)?;
        self.log.set_hmac_key(key);
        Ok(())
    }

    /// Returns why the last batch failed, while no later batch has succeeded.
    pub fn failure(&self) -> Option<String> {
        self.log.failure()
    }

    /// Adds the audit metrics to the server's metrics.
    pub fn register_metrics(&self, metrics: &Metrics) {
        metrics.register(Box::new(self.metrics.records.clone()));
        metrics.register(Box::new(self.metrics.failures.clone()));
        metrics.register(Box::new(self.metrics.batch_size.clone()));
        metrics.register(Box::new(self.metrics.failing.clone()));
    }
}

/// Records of reads queued by [`Audit::append`], and whether a request
/// leads the batch they join.
#[derive(Default)]
struct ReadQueue {
    waiting: Vec<(AuditEvent, oneshot::Sender<Result<u64, AuditError>>)>,
    gathering: bool,
}

/// Stores the queued records of reads when dropped.
struct StoreOnDrop<'a>(&'a Audit);

impl Drop for StoreOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store_reads();
    }
}

fn lock(queue: &Mutex<ReadQueue>) -> std::sync::MutexGuard<'_, ReadQueue> {
    queue
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Audit {
    /// Stores every queued record of a read in one batch and sends each
    /// waiting request its sequence number or the failure.
    fn store_reads(&self) {
        let waiting = {
            let mut queue = lock(&self.reads);
            queue.gathering = false;
            std::mem::take(&mut queue.waiting)
        };
        let records = waiting.len();
        let (events, senders): (Vec<_>, Vec<_>) = waiting.into_iter().unzip();
        match self.log.append_reads(events) {
            Ok(first) => {
                self.metrics.observe(&BatchOutcome::Written { records });
                for (seq, sender) in (first..).zip(senders) {
                    let _ = sender.send(Ok(seq));
                }
            }
            Err(error) => {
                self.metrics.observe(&BatchOutcome::Failed {
                    records,
                    cause: error.to_string(),
                });
                let cause = match error {
                    AuditError::Unavailable { cause } => cause,
                    other => other.to_string(),
                };
                for sender in senders {
                    let _ = sender.send(Err(AuditError::Unavailable {
                        cause: cause.clone(),
                    }));
                }
            }
        }
    }
}

#[derive(Clone)]
struct AuditMetrics {
    records: IntCounter,
    failures: IntCounter,
    batch_size: Histogram,
    failing: IntGauge,
}

impl AuditMetrics {
    fn new() -> AuditMetrics {
        AuditMetrics {
            records: IntCounter::new(
                "keygate_audit_records_total",
                "Audit records written to the store (and to the audit file, if one is set).",
            )
            .expect("valid metric"),
            failures: IntCounter::new(
                "keygate_audit_failures_total",
                "Audit records that could not be written; each one refused a vault access.",
            )
            .expect("valid metric"),
            batch_size: Histogram::with_opts(
                HistogramOpts::new(
                    "keygate_audit_batch_size",
                    "Audit records written together in one batch.",
                )
                .buckets(vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                ]),
            )
            .expect("valid metric"),
            failing: IntGauge::new(
                "keygate_audit_failing",
                "1 while audit records cannot be written, so vault accesses are refused; 0 otherwise.",
            )
            .expect("valid metric"),
        }
    }

    fn observe(&self, outcome: &BatchOutcome) {
        match outcome {
            BatchOutcome::Written { records } => {
                self.records.inc_by(*records as u64);
                self.batch_size.observe(*records as f64);
                self.failing.set(0);
            }
            BatchOutcome::Failed { records, .. } => {
                self.failures.inc_by(*records as u64);
                self.failing.set(1);
            }
        }
    }
}

/// Appends the record of one access; fails with 503 when it cannot be
/// stored, and the caller must then refuse the access.
pub async fn record(
    state: &SharedState,
    ctx: &AuditContext,
    secret: &str,
    version: Option<u32>,
    operation: AuditOp,
    outcome: AuditOutcome,
) -> Result<(), ApiError> {
    record_event(state, ctx.event(secret, version, operation, outcome)).await
}

/// Appends the record of an access that changes nothing, with the outcome
/// of `result`, and returns `result`. When the record cannot be written,
/// returns 503 in its place, so that no value is sent without a record.
pub async fn record_result<T>(
    state: &SharedState,
    ctx: &AuditContext,
    secret: &str,
    version: Option<u32>,
    operation: AuditOp,
    result: Result<T, ApiError>,
) -> Result<T, ApiError> {
    let outcome = match &result {
        Ok(_) => AuditOutcome::Success,
        Err(error) => outcome_of(error),
    };
    record(state, ctx, secret, version, operation, outcome).await?;
    result
}

/// Appends `event`, for records with details; fails with 503 like [`record`].
pub async fn record_event(state: &SharedState, event: AuditEvent) -> Result<(), ApiError> {
    match state.audit.append(event).await {
        Ok(_) => Ok(()),
        Err(error) => Err(unavailable(&error)),
    }
}

/// A change to the vault that is audited before and after.
///
/// ```ignore
/// let ctx = AuditContext::new(&req, &principal, &project.project);
/// let change = AuditedChange::begin(state, &ctx, name, None, AuditOp::Write).await?;
/// let result = blocking(move || vault.put_secret(&p, &n, &value)).await.and_then(|r| Ok(r?));
/// let version = result.as_ref().ok().map(|written| written.version);
/// let written = change.finish(result, version).await?;
/// ```
#[must_use = "a change that is begun must be finished, or its outcome is never recorded"]
pub struct AuditedChange<'a> {
    state: &'a SharedState,
    ctx: &'a AuditContext,
    secret: &'a str,
    operation: AuditOp,
}

impl<'a> AuditedChange<'a> {
    /// Appends the `started` record of `operation` on `secret`; on failure
    /// (503) nothing may be changed.
    pub async fn begin(
        state: &'a SharedState,
        ctx: &'a AuditContext,
        secret: &'a str,
        version: Option<u32>,
        operation: AuditOp,
    ) -> Result<AuditedChange<'a>, ApiError> {
        record(
            state,
            ctx,
            secret,
            version,
            operation,
            AuditOutcome::Started,
        )
        .await?;
        Ok(AuditedChange {
            state,
            ctx,
            secret,
            operation,
        })
    }

    /// Appends the outcome of the change, `version` being the version it
    /// produced or acted on, and returns `result`. When the record cannot be
    /// stored, returns 503 in place of a successful result, because the
    /// change was made but its outcome is missing from the log.
    pub async fn finish<T>(
        self,
        result: Result<T, ApiError>,
        version: Option<u32>,
    ) -> Result<T, ApiError> {
        let outcome = match &result {
            Ok(_) => AuditOutcome::Success,
            Err(error) => outcome_of(error),
        };
        let event = self
            .ctx
            .event(self.secret, version, self.operation, outcome);
        match self.state.audit.append(event).await {
            Ok(_) => result,
            Err(error) => {
                if result.is_ok() {
                    tracing::error!(
                        error = %error,
                        operation = %self.operation,
                        secret.name = %self.secret,
                        "a change was made, but its outcome could not be recorded; the log holds its started record"
                    );
                }
                Err(unavailable(&error))
            }
        }
    }
}

/// Returns the audit outcome of a failed request, from its status.
pub fn outcome_of(error: &ApiError) -> AuditOutcome {
    match error.status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => AuditOutcome::Denied,
        StatusCode::NOT_FOUND | StatusCode::GONE => AuditOutcome::NotFound,
        StatusCode::CONFLICT | StatusCode::PRECONDITION_FAILED => AuditOutcome::Conflict,
        StatusCode::NOT_IMPLEMENTED => AuditOutcome::NotSupported,
        StatusCode::SERVICE_UNAVAILABLE if error.problem == "vault-sealed" => AuditOutcome::Sealed,
        status if status.is_client_error() => AuditOutcome::Invalid,
        _ => AuditOutcome::Error,
    }
}

/// Returns the audit outcome of a failed vault call.
pub fn outcome_of_vault_error(error: &VaultError) -> AuditOutcome {
    match error.kind() {
        ErrorKind::InvalidInput => AuditOutcome::Invalid,
        ErrorKind::NotFound => AuditOutcome::NotFound,
        ErrorKind::NotSupported => AuditOutcome::NotSupported,
        ErrorKind::Conflict => AuditOutcome::Conflict,
        ErrorKind::Internal => AuditOutcome::Error,
    }
}

/// Returns the 503 error for an access whose audit record could not be stored.
pub fn unavailable(error: &AuditError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "audit-unavailable",
        format!("audit log unavailable: {error}; the access was refused"),
    )
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use keygate_vault::{MemStore, Space};

    use super::*;

    fn read_event(secret: &str) -> AuditEvent {
        let ctx = AuditContext {
            request_id: format!("req-{secret}"),
            actor: "runner".into(),
            account: "acme".into(),
            project: "etl".into(),
            details: BTreeMap::new(),
        };
        ctx.event(secret, Some(1), AuditOp::ReadValue, AuditOutcome::Success)
    }

    fn stored_secrets(store: &MemStore) -> Vec<String> {
        store
            .scan_prefix(Space::Audit, b"", None, 100)
            .unwrap()
            .into_iter()
            .map(|(_, value)| {
                let record: serde_json::Value = serde_json::from_slice(&value).unwrap();
                record["secret"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    #[tokio::test]
    async fn dropped_leader_stores_gathered_batch() {
        let store = Arc::new(MemStore::new());
        let audit = Audit::start(store.clone(), None, None, false).unwrap();
        let mut cx = Context::from_waker(Waker::noop());

        let mut leader = Box::pin(audit.append_read(read_event("a"), true));
        assert!(
            leader.as_mut().poll(&mut cx).is_pending(),
            "the leader yields"
        );
        let mut follower = pin!(audit.append_read(read_event("b"), true));
        assert!(
            follower.as_mut().poll(&mut cx).is_pending(),
            "b waits for the batch"
        );
        assert!(stored_secrets(&store).is_empty());

        // A request dropped while it gathers, such as when its client goes away.
        drop(leader);
        assert_eq!(stored_secrets(&store), ["a", "b"]);
        assert!(matches!(
            follower.as_mut().poll(&mut cx),
            Poll::Ready(Ok(2))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_reads_get_distinct_sequence_numbers() {
        let store = Arc::new(MemStore::new());
        let audit = Arc::new(Audit::start(store.clone(), None, None, false).unwrap());
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let audit = audit.clone();
                tokio::spawn(
                    async move { audit.append_read(read_event(&i.to_string()), true).await },
                )
            })
            .collect();
        let mut seqs = Vec::new();
        for task in tasks {
            seqs.push(task.await.unwrap().unwrap());
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=40).collect::<Vec<u64>>());
        assert_eq!(stored_secrets(&store).len(), 40);
        let report = keygate_vault::audit::verify_store(store.as_ref(), &mut |_| {}).unwrap();
        assert!(report.problem.is_none(), "{:?}", report.problem);
    }
}
