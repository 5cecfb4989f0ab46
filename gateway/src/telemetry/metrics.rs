//! The exporter's Prometheus metrics.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts};

use crate::metrics::Metrics;

/// Reasons a span is dropped, the values of the `reason` label.
pub const DROP_QUEUE_FULL: &str = "queue_full";
pub const DROP_EXPORT_FAILED: &str = "export_failed";
pub const DROP_SHUTDOWN: &str = "shutdown";

#[derive(Clone)]
pub struct ExportMetrics {
    pub spans_exported: IntCounter,
    pub spans_dropped: IntCounterVec,
    pub export_duration: Histogram,
    pub export_failures: IntCounter,
}

impl ExportMetrics {
    pub fn new() -> ExportMetrics {
        let spans_exported = IntCounter::new(
            "keygate_telemetry_spans_exported_total",
            "Spans the OTLP collector accepted.",
        )
        .expect("valid metric");
        let spans_dropped = IntCounterVec::new(
            Opts::new(
                "keygate_telemetry_spans_dropped_total",
                "Spans dropped before the OTLP collector accepted them, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let export_duration = Histogram::with_opts(
            HistogramOpts::new(
                "keygate_telemetry_export_duration_seconds",
                "Time of one export request to the OTLP collector, failed ones included.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .expect("valid metric");
        let export_failures = IntCounter::new(
            "keygate_telemetry_export_failures_total",
            "Export requests to the OTLP collector that failed: an error status, a transport error or a timeout.",
        )
        .expect("valid metric");
        // Every reason appears at 0 from the start, so a rate over it is defined.
        for reason in [DROP_QUEUE_FULL, DROP_EXPORT_FAILED, DROP_SHUTDOWN] {
            spans_dropped.with_label_values(&[reason]);
        }
        ExportMetrics {
            spans_exported,
            spans_dropped,
            export_duration,
            export_failures,
        }
    }

    /// Adds the exporter's metrics to the server's registry.
    pub fn register(&self, metrics: &Metrics) {
        metrics.register(Box::new(self.spans_exported.clone()));
        metrics.register(Box::new(self.spans_dropped.clone()));
        metrics.register(Box::new(self.export_duration.clone()));
        metrics.register(Box::new(self.export_failures.clone()));
    }

    /// Counts `count` spans dropped for `reason`.
    pub fn drop_spans(&self, reason: &str, count: usize) {
        self.spans_dropped
            .with_label_values(&[reason])
            .inc_by(count as u64);
    }
}

impl Default for ExportMetrics {
    fn default() -> Self {
        ExportMetrics::new()
    }
}
