//! Prometheus metrics of one server instance, in its own registry.
//!
//! Label values come from fixed sets (route templates, outcome and reason
//! names), never from a secret name, a token or a string an agent sent.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub agent_sessions: IntGauge,
    pub tasks: IntCounterVec,
    pub relay_duration: Histogram,
    pub secret_resolutions: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub http_requests: IntCounterVec,
    pub signing_key_age: IntGauge,
    pub handshakes_shed: IntCounterVec,
    pub slow_consumers: IntCounter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let agent_sessions = IntGauge::new(
            "keygate_gateway_agent_sessions",
            "Agent sessions currently connected.",
        )
        .expect("valid metric");
        let tasks = IntCounterVec::new(
            Opts::new(
                "keygate_gateway_tasks_total",
                "Tasks submitted for relay, by final outcome.",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let relay_duration = Histogram::with_opts(
            HistogramOpts::new(
                "keygate_gateway_relay_duration_seconds",
                "Time from sending a task to an agent until its result arrives.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
        )
        .expect("valid metric");
        let secret_resolutions = IntCounterVec::new(
            Opts::new(
                "keygate_vault_resolutions_total",
                "Secret definition resolutions by runners, by outcome.",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "keygate_auth_failures_total",
                "Rejected tokens and client credentials, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let signing_key_age = IntGauge::new(
            "keygate_auth_signing_key_age_seconds",
            "Seconds since the token signing key in use started signing.",
        )
        .expect("valid metric");
        let http_requests = IntCounterVec::new(
            Opts::new(
                "keygate_http_requests_total",
                "HTTP requests by listener, route template and status.",
            ),
            &["listener", "route", "status"],
        )
        .expect("valid metric");
        let handshakes_shed = IntCounterVec::new(
            Opts::new(
                "keygate_listener_handshakes_shed_total",
                "Connections closed before their TLS handshake because gateway.max_concurrent_handshakes were already running, by listener.",
            ),
            &["listener"],
        )
        .expect("valid metric");
        let slow_consumers = IntCounter::new(
            "keygate_gateway_slow_consumer_sessions_total",
            "Agent sessions closed because the agent did not read its frames within gateway.write_timeout_ms.",
        )
        .expect("valid metric");
        for collector in [
            Box::new(agent_sessions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(tasks.clone()),
            Box::new(relay_duration.clone()),
            Box::new(secret_resolutions.clone()),
            Box::new(auth_failures.clone()),
            Box::new(http_requests.clone()),
            Box::new(signing_key_age.clone()),
            Box::new(handshakes_shed.clone()),
            Box::new(slow_consumers.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Metrics {
            registry,
            agent_sessions,
            tasks,
            relay_duration,
            secret_resolutions,
            auth_failures,
            http_requests,
            signing_key_age,
            handshakes_shed,
            slow_consumers,
        }
    }

    /// Adds a metric that another module owns, such as the TLS reload metrics.
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) {
        self.registry
            .register(collector)
            .expect("metric names are unique");
    }

    /// Renders every metric in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
