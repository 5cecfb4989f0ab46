//! The `[external]` options: calls to customers' secret managers (timeouts,
//! retries, circuit breakers, the lookup cache), and their validation.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{check_range, invalid, Config, ConfigError};
use crate::external::cache::CacheSettings;
use crate::external::http::ClientSettings;
use crate::external::retry::{BreakerSettings, RetryPolicy};

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExternalConfig {
    /// Time to open a TCP connection to a provider.
    pub connect_timeout_ms: u64,
    /// Time one provider request may take, connection included.
    pub request_timeout_ms: u64,
    /// Provider requests in flight at once, per provider type.
    pub max_concurrent_calls: usize,
    /// Calls per lookup, the first included, when a provider fails transiently.
    pub max_attempts: u32,
    pub retry_base_delay_ms: u64,
    pub retry_max_delay_ms: u64,
    /// A `Retry-After` longer than this is not waited for; the lookup fails at once.
    pub max_retry_after_ms: u64,
    /// Consecutive transient failures of one provider endpoint that open its circuit.
    pub breaker_failures: u32,
    /// How long an open circuit refuses calls before one test call.
    pub breaker_open_ms: u64,
    /// Life of a cached value; 0 turns caching of values off.
    pub cache_ttl_ms: u64,
    /// A read in the last part of a value's life starts one background refresh.
    pub cache_refresh_ahead_ms: u64,
    /// Life of a cached not-found result.
    pub cache_not_found_ttl_ms: u64,
    /// How long past its life a value may be served when the provider fails; 0 = never.
    pub cache_serve_stale_ms: u64,
    pub cache_max_entries: usize,
    /// PEM bundle of CA certificates for providers; unset means the Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// Contact loopback addresses only, whatever a connection names. `keygate dev` sets it.
    pub loopback_only: bool,
    /// Base URL of the EC2 instance-metadata service, asked for AWS
    /// credentials when a connection names none and the environment has none.
    /// Empty (the default) means it is never contacted.
    pub aws_metadata_endpoint: String,
}

impl Default for ExternalConfig {
    fn default() -> Self {
        ExternalConfig {
            connect_timeout_ms: 3000,
            request_timeout_ms: 10_000,
            max_concurrent_calls: 64,
            max_attempts: 3,
            retry_base_delay_ms: 100,
            retry_max_delay_ms: 2000,
            max_retry_after_ms: 5000,
            breaker_failures: 5,
            breaker_open_ms: 30_000,
            cache_ttl_ms: 300_000,
            cache_refresh_ahead_ms: 30_000,
            cache_not_found_ttl_ms: 10_000,
            cache_serve_stale_ms: 0,
            cache_max_entries: 10_000,
            ca_file: None,
            loopback_only: false,
            aws_metadata_endpoint: String::new(),
        }
    }
}

impl ExternalConfig {
    pub fn client_settings(&self) -> ClientSettings {
        ClientSettings {
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            loopback_only: self.loopback_only,
        }
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            base_delay: Duration::from_millis(self.retry_base_delay_ms),
            max_delay: Duration::from_millis(self.retry_max_delay_ms),
            max_retry_after: Duration::from_millis(self.max_retry_after_ms),
        }
    }

    pub fn breaker_settings(&self) -> BreakerSettings {
        BreakerSettings {
            failure_threshold: self.breaker_failures,
            open_for: Duration::from_millis(self.breaker_open_ms),
        }
    }

    pub fn cache_settings(&self) -> CacheSettings {
        CacheSettings {
            ttl: Duration::from_millis(self.cache_ttl_ms),
            refresh_ahead: Duration::from_millis(self.cache_refresh_ahead_ms),
            not_found_ttl: Duration::from_millis(self.cache_not_found_ttl_ms),
            serve_stale_for: Duration::from_millis(self.cache_serve_stale_ms),
            max_entries: self.cache_max_entries,
        }
    }
}

pub(super) fn problems(config: &Config) -> Vec<ConfigError> {
    let external = &config.external;
    let ranges: [(&'static str, u64, u64, u64); 14] = [
        (
            "external.connect_timeout_ms",
            external.connect_timeout_ms,
            10,
            60_000,
        ),
        (
            "external.request_timeout_ms",
            external.request_timeout_ms,
            10,
            300_000,
        ),
        (
            "external.max_concurrent_calls",
            external.max_concurrent_calls as u64,
            1,
            10_000,
        ),
        (
            "external.max_attempts",
            u64::from(external.max_attempts),
            1,
            10,
        ),
        (
            "external.retry_base_delay_ms",
            external.retry_base_delay_ms,
            1,
            60_000,
        ),
        (
            "external.retry_max_delay_ms",
            external.retry_max_delay_ms,
            external.retry_base_delay_ms.max(1),
            300_000,
        ),
        (
            "external.max_retry_after_ms",
            external.max_retry_after_ms,
            0,
            300_000,
        ),
        (
            "external.breaker_failures",
            u64::from(external.breaker_failures),
            1,
            1000,
        ),
        (
            "external.breaker_open_ms",
            external.breaker_open_ms,
            100,
            3_600_000,
        ),
        (
            "external.cache_ttl_ms",
            external.cache_ttl_ms,
            0,
            86_400_000,
        ),
        (
            "external.cache_refresh_ahead_ms",
            external.cache_refresh_ahead_ms,
            0,
            external.cache_ttl_ms,
        ),
        (
            "external.cache_not_found_ttl_ms",
            external.cache_not_found_ttl_ms,
            0,
            3_600_000,
        ),
        (
            "external.cache_serve_stale_ms",
            external.cache_serve_stale_ms,
            0,
            86_400_000,
        ),
        (
            "external.cache_max_entries",
            external.cache_max_entries as u64,
            1,
            10_000_000,
        ),
    ];
    let mut problems: Vec<ConfigError> = ranges
        .into_iter()
        .filter_map(|(field, value, min, max)| check_range(field, value, min, max).err())
        .collect();
    if !external.aws_metadata_endpoint.is_empty() {
        let checked = crate::jwks_client::OutboundUrl::parse_with(
            &external.aws_metadata_endpoint,
            "http://HOST",
            true,
        );
        if let Err(rule) = checked {
            problems.push(invalid(
                "external.aws_metadata_endpoint",
                format!("{:?}", external.aws_metadata_endpoint),
                &format!("{rule}; leave it empty to never ask an instance-metadata service"),
            ));
        }
    }
    if let Some(ca_file) = &external.ca_file {
        if ca_file.as_os_str().is_empty() {
            problems.push(invalid(
                "external.ca_file",
                "\"\"",
                "must be a file path; leave it out to trust the Mozilla root certificates",
            ));
        }
    }
    problems
}
