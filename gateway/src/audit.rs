//! The vault audit log as handlers use it: one record per vault access,
//! stored before the response is sent, and its metrics.
//!
//! A read appends one record with its outcome, through [`record`], before
//! the value is returned. A change appends a `started` record before
//! anything changes and a second record with the outcome afterwards
//! ([`AuditedChange`]). When a record cannot be written, the access is
//! refused with 503.

use std::path::PathBuf;
use std::sync::Arc;

use http::StatusCode;
use keygate_auth::Principal;
use keygate_vault::audit::{
    AuditError, AuditEvent, AuditKey, AuditLog, AuditOptions, BatchOutcome,
};
use keygate_vault::{ErrorKind, KvStore, Vault, VaultError};
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
}

impl AuditContext {
    /// Builds the context of a request made with `principal`'s token.
    pub fn new<B>(req: &http::Request<B>, principal: &Principal, project: &str) -> AuditContext {
        AuditContext {
            request_id: request_id(req),
            actor: principal.subject.clone(),
            account: principal.account.clone(),
            project: project.to_owned(),
        }
    }

    /// Builds the context of a request without a valid token.
    pub fn unauthenticated<B>(req: &http::Request<B>, project: &str) -> AuditContext {
        AuditContext {
            request_id: request_id(req),
            actor: String::new(),
            account: String::new(),
            project: project.to_owned(),
        }
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
            details: Default::default(),
        }
    }
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
            metrics,
        })
    }

    /// Appends `event` and waits until it is stored; returns its sequence number.
    pub async fn append(&self, event: AuditEvent) -> Result<u64, AuditError> {
        if self.log.appends_inline(event.operation) {
            let result = self.log.append_read(event);
            self.metrics.observe(&match &result {
                Ok(_) => BatchOutcome::Written { records: 1 },
                Err(error) => BatchOutcome::Failed {
                    records: 1,
                    cause: error.to_string(),
                },
            });
            return result;
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
                    "Audit records written together in one synced batch.",
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
                        "a vault change was made, but its outcome could not be recorded; the log holds its started record"
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
