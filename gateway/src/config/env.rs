//! Environment variables that override options of the configuration file.
//!
//! Each option that is not a list has one variable: `KEYGATE_` and the
//! option's path in capitals with `_` for `.` (`gateway.heartbeat_interval_ms`
//! is `KEYGATE_GATEWAY_HEARTBEAT_INTERVAL_MS`). A value is read as a TOML
//! value when it is one (a number, `true`, `false`) and as a string otherwise.

/// Every option that a variable can set, by path.
pub const OPTION_PATHS: &[&str] = &[
    "data_dir",
    "listen.agent",
    "listen.api",
    "listen.ops",
    "tls.server_cert",
    "tls.server_key",
    "tls.client_ca",
    "tls.client_crl",
    "tls.reload_check_interval_ms",
    "auth.issuer",
    "auth.audience",
    "auth.signing_key",
    "auth.signing_key_publish_delay_secs",
    "auth.leeway_secs",
    "auth.max_token_lifetime_secs",
    "auth.agent_token_lifetime_secs",
    "auth.client_secret_rotation_overlap_secs",
    "auth.token_requests_per_minute",
    "auth.verified_token_cache_size",
    "vault.master_key_source",
    "vault.master_key_file",
    "vault.master_key_env",
    "vault.aws_kms.endpoint",
    "vault.aws_kms.region",
    "vault.aws_kms.key_id",
    "vault.aws_kms.wrapped_key_file",
    "vault.aws_kms.ca_file",
    "vault.aws_kms.use_instance_metadata",
    "vault.aws_kms.timeout_ms",
    "vault.backup_dir",
    "vault.audit_file",
    "vault.audit_sync_reads",
    "vault.default_max_versions",
    "vault.data_key_max_encryptions",
    "gateway.heartbeat_interval_ms",
    "gateway.max_frame_bytes",
    "gateway.max_result_bytes",
    "gateway.max_task_timeout_ms",
    "gateway.max_wait_ms",
    "gateway.max_queued_tasks_per_agent",
    "gateway.finished_task_retention_secs",
    "gateway.max_finished_tasks",
    "gateway.max_finished_result_bytes",
    "gateway.tls_handshake_timeout_ms",
    "gateway.shutdown_grace_ms",
    "gateway.max_delivery_attempts",
    "gateway.idempotency_window_secs",
    "gateway.write_timeout_ms",
    "gateway.max_concurrent_handshakes",
    "http.max_body_bytes",
    "telemetry.otlp_endpoint",
    "telemetry.otlp_ca_file",
    "telemetry.otlp_timeout_ms",
    "telemetry.otlp_max_queue_spans",
    "telemetry.otlp_max_batch_spans",
    "telemetry.otlp_export_interval_ms",
    "telemetry.service_name",
    "external.connect_timeout_ms",
    "external.request_timeout_ms",
    "external.max_concurrent_calls",
    "external.max_attempts",
    "external.retry_base_delay_ms",
    "external.retry_max_delay_ms",
    "external.max_retry_after_ms",
    "external.breaker_failures",
    "external.breaker_open_ms",
    "external.cache_ttl_ms",
    "external.cache_refresh_ahead_ms",
    "external.cache_not_found_ttl_ms",
    "external.cache_serve_stale_ms",
    "external.cache_max_entries",
    "external.ca_file",
    "external.loopback_only",
    "external.aws_metadata_endpoint",
];

/// Returns the variable that sets the option at `path`.
pub fn variable_name(path: &str) -> String {
    format!("KEYGATE_{}", path.replace('.', "_").to_uppercase())
}

/// Sets the options named by `variables` in `table`; returns the paths it set.
pub fn apply(
    table: &mut toml::Table,
    variables: impl IntoIterator<Item = (String, String)>,
) -> Vec<&'static str> {
    let variables: std::collections::HashMap<String, String> = variables.into_iter().collect();
    let mut applied = Vec::new();
    for path in OPTION_PATHS {
        let Some(raw) = variables.get(&variable_name(path)) else {
            continue;
        };
        let mut target = &mut *table;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                target.insert(part.to_owned(), parse_value(raw));
            } else {
                let entry = target
                    .entry(part.to_owned())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if !entry.is_table() {
                    *entry = toml::Value::Table(toml::Table::new());
                }
                target = entry.as_table_mut().expect("just made a table");
            }
        }
        applied.push(*path);
    }
    applied
}

fn parse_value(raw: &str) -> toml::Value {
    let parsed: Result<toml::Table, _> = toml::from_str(&format!("value = {raw}"));
    match parsed.ok().and_then(|mut t| t.remove("value")) {
        Some(
            value @ (toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)),
        ) => value,
        _ => toml::Value::String(raw.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn variables_override_and_add_options() {
        let mut table: toml::Table =
            toml::from_str("[gateway]\nheartbeat_interval_ms = 10000\n").unwrap();
        let applied = apply(
            &mut table,
            vars(&[
                ("KEYGATE_GATEWAY_HEARTBEAT_INTERVAL_MS", "5000"),
                ("KEYGATE_DATA_DIR", "/srv/keygate"),
                ("KEYGATE_LISTEN_API", "127.0.0.1:18443"),
                ("KEYGATE_UNRELATED", "x"),
            ]),
        );
        assert_eq!(
            applied,
            vec!["data_dir", "listen.api", "gateway.heartbeat_interval_ms"]
        );
        assert_eq!(
            table["gateway"]["heartbeat_interval_ms"].as_integer(),
            Some(5000)
        );
        assert_eq!(table["data_dir"].as_str(), Some("/srv/keygate"));
        assert_eq!(table["listen"]["api"].as_str(), Some("127.0.0.1:18443"));
    }

    #[test]
    fn every_option_in_the_example() {
        let example = super::super::EXAMPLE;
        for path in OPTION_PATHS {
            let key = path.rsplit('.').next().unwrap();
            assert!(
                example.contains(&format!("{key} = ")),
                "{path} is missing from the example file"
            );
        }
    }
}
