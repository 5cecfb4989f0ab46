//! The `[telemetry]` options: export of trace spans to an OTLP/HTTP collector, and their validation.

use std::collections::BTreeMap;
use std::path::PathBuf;

use http::header::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::{check_identifier, check_range, invalid, Config, ConfigError};
use crate::telemetry::OtlpEndpoint;

/// Headers that the exporter sets itself, so `otlp_headers` cannot set them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
];

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Base URL of an OTLP/HTTP collector, such as `http://127.0.0.1:4318`;
    /// spans are POSTed to `<otlp_endpoint>/v1/traces`. Empty turns export off.
    pub otlp_endpoint: String,
    /// Extra headers of every export request, such as a collector's API key.
    pub otlp_headers: OtlpHeaders,
    /// PEM bundle of CA certificates for an https endpoint; unset means the
    /// Mozilla roots (webpki-roots).
    pub otlp_ca_file: Option<PathBuf>,
    /// Time one export request may take, connection included.
    pub otlp_timeout_ms: u64,
    /// Finished spans waiting for export; beyond it new spans are dropped.
    pub otlp_max_queue_spans: usize,
    /// Maximum number of spans in one export request; a full batch is sent at once.
    pub otlp_max_batch_spans: usize,
    /// Maximum time a span waits in an incomplete batch.
    pub otlp_export_interval_ms: u64,
    /// The `service.name` resource attribute of exported spans.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: String::new(),
            otlp_headers: OtlpHeaders::default(),
            otlp_ca_file: None,
            otlp_timeout_ms: 5000,
            otlp_max_queue_spans: 2048,
            otlp_max_batch_spans: 512,
            otlp_export_interval_ms: 2000,
            service_name: "keygate".into(),
        }
    }
}

impl TelemetryConfig {
    /// Returns whether spans are exported, that is whether `otlp_endpoint` is set.
    pub fn export_enabled(&self) -> bool {
        !self.otlp_endpoint.is_empty()
    }
}

/// `[telemetry.otlp_headers]`: header names and values. `Debug` shows the
/// names only, because a value may be a credential.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct OtlpHeaders(pub BTreeMap<String, String>);

impl std::fmt::Debug for OtlpHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|name| (name, "REDACTED")))
            .finish()
    }
}

impl OtlpHeaders {
    /// Converts the headers for a request; values are marked sensitive so
    /// hyper never logs them. The error names the header and the rule it
    /// breaks, and never shows the value.
    pub fn to_header_pairs(&self) -> Result<Vec<(HeaderName, HeaderValue)>, (String, String)> {
        let mut pairs = Vec::with_capacity(self.0.len());
        for (name, value) in &self.0 {
            let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                (
                    name.clone(),
                    "is not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~)"
                        .to_owned(),
                )
            })?;
            if RESERVED_HEADERS.contains(&header.as_str()) {
                return Err((
                    name.clone(),
                    format!(
                        "is set by the exporter itself and cannot be configured (reserved: {})",
                        RESERVED_HEADERS.join(", ")
                    ),
                ));
            }
            let mut value = HeaderValue::from_str(value).map_err(|_| {
                (
                    name.clone(),
                    "has a value that is not a valid HTTP header value (visible ASCII and spaces only)"
                        .to_owned(),
                )
            })?;
            value.set_sensitive(true);
            pairs.push((header, value));
        }
        Ok(pairs)
    }
}

/// Checks the `[telemetry]` options; the endpoint's companions are checked
/// even when export is off, so a mistake shows before export is turned on.
pub(super) fn problems(config: &Config) -> Vec<ConfigError> {
    let telemetry = &config.telemetry;
    let mut problems = Vec::new();
    let endpoint = match telemetry.export_enabled() {
        true => match OtlpEndpoint::parse(&telemetry.otlp_endpoint) {
            Ok(endpoint) => Some(endpoint),
            Err(rule) => {
                problems.push(invalid(
                    "telemetry.otlp_endpoint",
                    format!("{:?}", telemetry.otlp_endpoint),
                    &format!("{rule}; leave it empty to turn span export off"),
                ));
                None
            }
        },
        false => None,
    };
    if let Err((name, rule)) = telemetry.otlp_headers.to_header_pairs() {
        problems.push(invalid(
            "telemetry.otlp_headers",
            format!("{name:?}"),
            &rule,
        ));
    }
    if let Some(ca_file) = &telemetry.otlp_ca_file {
        let shown = format!("{:?}", ca_file.display().to_string());
        if ca_file.as_os_str().is_empty() {
            problems.push(invalid(
                "telemetry.otlp_ca_file",
                shown,
                "must be a file path; leave it out to trust the Mozilla root certificates",
            ));
        } else if endpoint.is_some_and(|endpoint| !endpoint.is_https()) {
            problems.push(invalid(
                "telemetry.otlp_ca_file",
                shown,
                "applies only to an https `telemetry.otlp_endpoint`",
            ));
        }
    }
    problems.extend(
        check_range(
            "telemetry.otlp_timeout_ms",
            telemetry.otlp_timeout_ms,
            100,
            120_000,
        )
        .err(),
    );
    problems.extend(
        check_range(
            "telemetry.otlp_max_queue_spans",
            telemetry.otlp_max_queue_spans as u64,
            1,
            1_000_000,
        )
        .err(),
    );
    problems.extend(
        check_range(
            "telemetry.otlp_max_batch_spans",
            telemetry.otlp_max_batch_spans as u64,
            1,
            (telemetry.otlp_max_queue_spans as u64).clamp(1, 10_000),
        )
        .err(),
    );
    problems.extend(
        check_range(
            "telemetry.otlp_export_interval_ms",
            telemetry.otlp_export_interval_ms,
            100,
            600_000,
        )
        .err(),
    );
    problems.extend(check_identifier("telemetry.service_name", &telemetry.service_name).err());
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_leave_export_off() {
        let config = Config::parse("").unwrap();
        assert!(!config.telemetry.export_enabled());
        assert_eq!(config.telemetry.otlp_timeout_ms, 5000);
        assert_eq!(config.telemetry.otlp_max_queue_spans, 2048);
        assert_eq!(config.telemetry.otlp_max_batch_spans, 512);
        assert_eq!(config.telemetry.otlp_export_interval_ms, 2000);
        assert_eq!(config.telemetry.service_name, "keygate");
    }

    #[test]
    fn endpoint_and_headers_accepted() {
        let config = Config::parse(
            "[telemetry]\notlp_endpoint = \"https://collector.example.com:4318\"\notlp_ca_file = \"/etc/keygate/collector-ca.pem\"\n[telemetry.otlp_headers]\nx-api-key = \"secret-value\"\n",
        )
        .unwrap();
        assert!(config.telemetry.export_enabled());
        let pairs = config.telemetry.otlp_headers.to_header_pairs().unwrap();
        assert_eq!(pairs.len(), 1);
        assert_eq!(pairs[0].0.as_str(), "x-api-key");
        assert!(pairs[0].1.is_sensitive());
    }

    #[test]
    fn header_values_not_in_debug() {
        let config =
            Config::parse("[telemetry.otlp_headers]\nx-api-key = \"secret-value\"\n").unwrap();
        let shown = format!("{config:?}");
        assert!(shown.contains("x-api-key"), "{shown}");
        assert!(!shown.contains("secret-value"), "{shown}");
    }

    #[test]
    fn environment_sets_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.toml");
        std::fs::write(&path, "").unwrap();
        let vars = vec![
            (
                "KEYGATE_TELEMETRY_OTLP_ENDPOINT".to_owned(),
                "http://127.0.0.1:4318".to_owned(),
            ),
            (
                "KEYGATE_TELEMETRY_OTLP_MAX_BATCH_SPANS".to_owned(),
                "100".to_owned(),
            ),
        ];
        let config = Config::load_with_env(&path, vars).unwrap();
        assert_eq!(config.telemetry.otlp_endpoint, "http://127.0.0.1:4318");
        assert_eq!(config.telemetry.otlp_max_batch_spans, 100);
    }

    #[test]
    fn rejected_values_name_field_and_value() {
        let cases = [
            (
                "otlp_endpoint = \"ftp://127.0.0.1:4318\"",
                "telemetry.otlp_endpoint",
                "\"ftp://127.0.0.1:4318\"",
            ),
            (
                "otlp_endpoint = \"http://\"",
                "telemetry.otlp_endpoint",
                "\"http://\"",
            ),
            (
                "otlp_endpoint = \"http://collector.example.com:4318\"",
                "telemetry.otlp_endpoint",
                "\"http://collector.example.com:4318\"",
            ),
            (
                "otlp_endpoint = \"http://127.0.0.1:4318\"\notlp_ca_file = \"/etc/ca.pem\"",
                "telemetry.otlp_ca_file",
                "\"/etc/ca.pem\"",
            ),
            ("otlp_ca_file = \"\"", "telemetry.otlp_ca_file", "\"\""),
            ("otlp_timeout_ms = 99", "telemetry.otlp_timeout_ms", "99"),
            (
                "otlp_max_queue_spans = 0",
                "telemetry.otlp_max_queue_spans",
                "0",
            ),
            (
                "otlp_max_queue_spans = 100\notlp_max_batch_spans = 101",
                "telemetry.otlp_max_batch_spans",
                "101",
            ),
            (
                "otlp_max_batch_spans = 0",
                "telemetry.otlp_max_batch_spans",
                "0",
            ),
            (
                "otlp_export_interval_ms = 600001",
                "telemetry.otlp_export_interval_ms",
                "600001",
            ),
            (
                "service_name = \"key gate\"",
                "telemetry.service_name",
                "\"key gate\"",
            ),
            (
                "otlp_headers = { \"bad header\" = \"x\" }",
                "telemetry.otlp_headers",
                "\"bad header\"",
            ),
            (
                "otlp_headers = { Content-Type = \"text/plain\" }",
                "telemetry.otlp_headers",
                "\"Content-Type\"",
            ),
            (
                "otlp_headers = { x-api-key = \"line\\nbreak\" }",
                "telemetry.otlp_headers",
                "\"x-api-key\"",
            ),
        ];
        for (options, field, value) in cases {
            let text = format!("[telemetry]\n{options}\n");
            match Config::parse(&text) {
                Err(ConfigError::Invalid {
                    field: f, value: v, ..
                }) => {
                    assert_eq!(f, field, "config {text:?}");
                    assert_eq!(v, value, "config {text:?}");
                }
                other => panic!("config {text:?}: expected Invalid, got {other:?}"),
            }
        }
    }

    #[test]
    fn header_error_hides_value() {
        let error = Config::parse("[telemetry.otlp_headers]\nx-api-key = \"key\\u0000x\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("x-api-key"), "{error}");
        assert!(!error.contains("key\u{0}x"), "{error}");
    }
}
