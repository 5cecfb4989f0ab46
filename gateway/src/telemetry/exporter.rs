//! The background task that batches queued spans and sends them to the collector.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use super::client::{ExportError, OtlpClient};
use super::metrics::{ExportMetrics, DROP_EXPORT_FAILED, DROP_SHUTDOWN};
use super::otlp_json::{encode_request, Resource};
use super::span::SpanRecord;

/// Minimum time between two warnings about failed exports; failures in
/// between are counted and the next warning reports their number.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// A request from a [`super::Telemetry`] handle to the export task.
pub(super) enum Command {
    /// Export every span queued before the command; reply when done.
    Flush(oneshot::Sender<()>),
    /// Stop taking spans, export the queued ones within the timeout, reply and end.
    Shutdown(oneshot::Sender<()>),
}

pub(super) struct ExporterSettings {
    pub max_batch_spans: usize,
    pub export_interval: Duration,
    pub timeout: Duration,
}

/// The state of the export task.
pub(super) struct Exporter {
    client: OtlpClient,
    resource: Resource,
    settings: ExporterSettings,
    metrics: ExportMetrics,
    batch: Vec<SpanRecord>,
    failure_log: FailureLog,
}

impl Exporter {
    pub(super) fn new(
        client: OtlpClient,
        resource: Resource,
        settings: ExporterSettings,
        metrics: ExportMetrics,
    ) -> Exporter {
        Exporter {
            batch: Vec::with_capacity(settings.max_batch_spans),
            client,
            resource,
            settings,
            metrics,
            failure_log: FailureLog::default(),
        }
    }

    /// Runs until a shutdown command, or until every handle is dropped.
    /// A batch is sent when it has `max_batch_spans` spans, or when
    /// `export_interval` passes with spans waiting.
    pub(super) async fn run(
        mut self,
        mut spans: mpsc::Receiver<SpanRecord>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        let interval = self.settings.export_interval;
        let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                Some(command) = commands.recv() => match command {
                    Command::Flush(done) => {
                        self.drain(&mut spans, None).await;
                        let _ = done.send(());
                    }
                    Command::Shutdown(done) => {
                        spans.close();
                        let deadline = Instant::now() + self.settings.timeout;
                        self.drain(&mut spans, Some(deadline)).await;
                        debug!(endpoint = %self.client.endpoint().traces_url(), "span exporter stopped");
                        let _ = done.send(());
                        return;
                    }
                },
                span = spans.recv() => match span {
                    Some(span) => {
                        self.batch.push(span);
                        if self.batch.len() >= self.settings.max_batch_spans {
                            self.export_batch(self.settings.timeout).await;
                        }
                    }
                    None => {
                        // Every handle is gone, so nothing can ask for a flush any more.
                        self.drain(&mut spans, None).await;
                        return;
                    }
                },
                _ = ticker.tick() => {
                    if !self.batch.is_empty() {
                        self.export_batch(self.settings.timeout).await;
                    }
                },
            }
        }
    }

    /// Exports the current batch and the spans queued now, in batches of at
    /// most `max_batch_spans`. Spans recorded while it runs wait for a later
    /// batch. Past `deadline`, the spans left are dropped and counted.
    async fn drain(&mut self, spans: &mut mpsc::Receiver<SpanRecord>, deadline: Option<Instant>) {
        let mut queued = spans.len();
        loop {
            while queued > 0 && self.batch.len() < self.settings.max_batch_spans {
                match spans.try_recv() {
                    Ok(span) => {
                        self.batch.push(span);
                        queued -= 1;
                    }
                    Err(_) => queued = 0,
                }
            }
            if self.batch.is_empty() {
                return;
            }
            let timeout = match deadline {
                None => self.settings.timeout,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        let dropped = self.batch.len() + queued;
                        self.batch.clear();
                        self.metrics.drop_spans(DROP_SHUTDOWN, dropped);
                        warn!(
                            endpoint = %self.client.endpoint().traces_url(),
                            spans = dropped,
                            "the span exporter ran out of time at shutdown; queued spans are dropped"
                        );
                        return;
                    }
                    left.min(self.settings.timeout)
                }
            };
            self.export_batch(timeout).await;
        }
    }

    /// Sends the current batch; on failure drops it and counts it.
    async fn export_batch(&mut self, timeout: Duration) {
        let capacity = self.settings.max_batch_spans;
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(capacity));
        let body = Bytes::from(encode_request(&self.resource, &batch));

        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, self.client.post(body)).await {
            Ok(result) => result,
            Err(_) => {
                self.client.disconnect();
                Err(ExportError::TimedOut {
                    timeout_ms: timeout.as_millis(),
                })
            }
        };
        self.metrics
            .export_duration
            .observe(started.elapsed().as_secs_f64());

        match result {
            Ok(()) => {
                self.metrics.spans_exported.inc_by(batch.len() as u64);
                if self.failure_log.failing {
                    info!(endpoint = %self.client.endpoint().traces_url(), "exporting spans to the OTLP collector works again");
                    self.failure_log.failing = false;
                }
            }
            Err(error) => {
                self.metrics.export_failures.inc();
                self.metrics.drop_spans(DROP_EXPORT_FAILED, batch.len());
                self.log_failure(&error, batch.len());
            }
        }
    }

    fn log_failure(&mut self, error: &ExportError, spans: usize) {
        let now = Instant::now();
        let log = &mut self.failure_log;
        log.failing = true;
        if log
            .last_warning
            .is_some_and(|last| now.duration_since(last) < FAILURE_LOG_INTERVAL)
        {
            log.suppressed += 1;
            return;
        }
        warn!(
            endpoint = %self.client.endpoint().traces_url(),
            status = error.status().map(|status| status.as_u16()),
            error = %error,
            spans,
            failures_not_logged = log.suppressed,
            "exporting spans to the OTLP collector failed; the batch is dropped"
        );
        log.last_warning = Some(now);
        log.suppressed = 0;
    }
}

/// Rate limit of the failure warnings.
#[derive(Default)]
struct FailureLog {
    last_warning: Option<Instant>,
    /// Failures since the last warning that were not logged.
    suppressed: u64,
    /// Whether the last export failed, so the next success is logged.
    failing: bool,
}
