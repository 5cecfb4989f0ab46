//! Distributed tracing: W3C `traceparent` contexts, and export of finished
//! spans to an OpenTelemetry collector over OTLP/HTTP with JSON bodies.
//!
//! [`Telemetry`] is the handle the server keeps. [`Telemetry::record`] puts a
//! finished span on a bounded queue and never waits, and a background task
//! sends queued spans in batches. Without `telemetry.otlp_endpoint` the handle
//! does nothing, so callers record spans unconditionally.

mod client;
mod exporter;
pub mod metrics;
mod otlp_json;
mod span;
mod trace_context;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use tokio::sync::{mpsc, oneshot};
use tracing::info;

pub use client::{ExportError, OtlpEndpoint, TRACES_PATH};
pub use otlp_json::{Resource, SCOPE_NAME};
pub use span::{
    unix_nanos_now, Attribute, AttributeValue, SpanKind, SpanRecord, SpanStatus, SpanTimer,
};
pub use trace_context::{encode_hex, TraceContext, TraceparentError};

use crate::config::TelemetryConfig;
use crate::metrics::Metrics;
use crate::tls::TlsError;
use exporter::{Command, Exporter, ExporterSettings};
use metrics::{ExportMetrics, DROP_QUEUE_FULL, DROP_SHUTDOWN};

/// Flush and shutdown requests that may wait for the export task at once.
const COMMAND_QUEUE: usize = 16;

/// The exporter could not be started from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid telemetry.otlp_endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("invalid telemetry.otlp_headers entry {name:?}: {reason}")]
    Header { name: String, reason: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The handle of the span exporter; clones share one queue and one export task.
#[derive(Clone, Default)]
pub struct Telemetry {
    /// `None` when export is off.
    queue: Option<Arc<Queue>>,
}

/// The sending side of the export task.
struct Queue {
    spans: mpsc::Sender<SpanRecord>,
    commands: mpsc::Sender<Command>,
    dropped_queue_full: IntCounter,
    dropped_shutdown: IntCounter,
    /// The export timeout, which also bounds [`Telemetry::shutdown`].
    timeout: Duration,
}

impl Telemetry {
    /// Registers the exporter's metrics in `metrics` and, when
    /// `otlp_endpoint` is set, starts the export task. `instance_id` becomes
    /// the `service.instance.id` resource attribute.
    ///
    /// Call it once per `Metrics`, because a second registration of the same
    /// metric names panics.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime when `otlp_endpoint` is set.
    pub fn start(
        config: &TelemetryConfig,
        metrics: &Metrics,
        instance_id: &str,
    ) -> Result<Telemetry, TelemetryError> {
        let export_metrics = ExportMetrics::new();
        export_metrics.register(metrics);
        Telemetry::start_with_metrics(config, export_metrics, instance_id)
    }

    /// Returns a handle that drops every span without counting it.
    pub fn disabled() -> Telemetry {
        Telemetry { queue: None }
    }

    /// Starts the export task with metrics that are not in a registry.
    fn start_with_metrics(
        config: &TelemetryConfig,
        metrics: ExportMetrics,
        instance_id: &str,
    ) -> Result<Telemetry, TelemetryError> {
        if !config.export_enabled() {
            return Ok(Telemetry::disabled());
        }
        let endpoint = OtlpEndpoint::parse(&config.otlp_endpoint).map_err(|reason| {
            TelemetryError::Endpoint {
                endpoint: config.otlp_endpoint.clone(),
                reason,
            }
        })?;
        let headers = config
            .otlp_headers
            .to_header_pairs()
            .map_err(|(name, reason)| TelemetryError::Header { name, reason })?;
        let client = client::OtlpClient::new(endpoint, config.otlp_ca_file.as_deref(), headers)?;

        let timeout = Duration::from_millis(config.otlp_timeout_ms);
        let settings = ExporterSettings {
            max_batch_spans: config.otlp_max_batch_spans.max(1),
            export_interval: Duration::from_millis(config.otlp_export_interval_ms.max(1)),
            timeout,
        };
        let resource = Resource {
            service_name: config.service_name.clone(),
            service_instance_id: instance_id.to_owned(),
            service_version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        info!(
            endpoint = %client.endpoint().traces_url(),
            service.name = %resource.service_name,
            service.instance.id = %resource.service_instance_id,
            "exporting trace spans over OTLP/HTTP"
        );

        let (span_sender, span_receiver) = mpsc::channel(config.otlp_max_queue_spans.max(1));
        let (command_sender, command_receiver) = mpsc::channel(COMMAND_QUEUE);
        let queue = Queue {
            spans: span_sender,
            commands: command_sender,
            dropped_queue_full: metrics.spans_dropped.with_label_values(&[DROP_QUEUE_FULL]),
            dropped_shutdown: metrics.spans_dropped.with_label_values(&[DROP_SHUTDOWN]),
            timeout,
        };
        let exporter = Exporter::new(client, resource, settings, metrics);
        tokio::spawn(exporter.run(span_receiver, command_receiver));
        Ok(Telemetry {
            queue: Some(Arc::new(queue)),
        })
    }

    /// Returns whether spans are exported.
    pub fn is_enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues a finished span for export without waiting. When the queue is
    /// full, or after [`Telemetry::shutdown`], the span is dropped and counted
    /// in `keygate_telemetry_spans_dropped_total`.
    ///
    /// Every span given is exported: callers skip spans of unsampled contexts
    /// ([`TraceContext::sampled`]) themselves.
    pub fn record(&self, span: SpanRecord) {
        let Some(queue) = &self.queue else {
            return;
        };
        match queue.spans.try_send(span) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => queue.dropped_queue_full.inc(),
            Err(mpsc::error::TrySendError::Closed(_)) => queue.dropped_shutdown.inc(),
        }
    }

    /// Exports every span recorded before the call, and returns once each of
    /// their export requests has succeeded or failed.
    pub async fn flush(&self) {
        let Some(queue) = &self.queue else {
            return;
        };
        let (done, finished) = oneshot::channel();
        if queue.commands.send(Command::Flush(done)).await.is_ok() {
            let _ = finished.await;
        }
    }

    /// Stops the exporter for process exit: exports the queued spans and
    /// returns within about the export timeout (`telemetry.otlp_timeout_ms`).
    /// Spans still queued when that time runs out are lost. Later calls to
    /// [`Telemetry::record`] drop their spans and count them.
    pub async fn shutdown(&self) {
        let Some(queue) = &self.queue else {
            return;
        };
        let (done, finished) = oneshot::channel();
        if queue.commands.send(Command::Shutdown(done)).await.is_err() {
            return;
        }
        // Once the export task takes the command, it bounds its own work by the
        // timeout. A request already in flight can delay the command by up to
        // another timeout, so the wait here has its own bound.
        let _ = tokio::time::timeout(queue.timeout, finished).await;
    }
}
