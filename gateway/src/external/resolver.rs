//! The server's resolution of external definitions: connection and
//! credential loading, the cache, retries, circuit breakers, the concurrency
//! bound, the path through an agent, and the metrics of all of them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use keygate_vault::{KvStore, ProjectRef, SecretDefinition, SecretLocation, VaultError};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tracing::{debug, warn};
use zeroize::Zeroizing;

use super::cache::{CacheKey, CacheOutcome, CachedValue, LookupCache};
use super::connection::{ConnectionSpec, HostedCredential, StoredConnection};
use super::error::{FailureKind, ProviderError};
use super::http::HttpClient;
use super::provider::{self, connection_name, requested_version};
use super::retry::{with_retries, Breakers, RetryPolicy};
use super::store::ConnectionStore;
use super::tokens::TokenCache;
use super::ProviderContext;
use crate::config::ExternalConfig;
use crate::metrics::Metrics;
use crate::relay::TaskStatus;
use crate::state::SharedState;
use crate::tls::TlsError;

/// The task kind of a lookup sent to an agent.
pub const AGENT_TASK_KIND: &str = "resolve_secret";
/// Time an agent lookup may take when the connection sets none.
const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Every provider label of the metrics; `agent` is the path through an agent.
const PROVIDERS: [&str; 5] = [
    "aws_secrets_manager",
    "azure_key_vault",
    "gcp_secret_manager",
    "hashicorp_vault",
    "agent",
];

/// Resolution of external definitions, shared by every request.
pub struct ExternalSecrets {
    ctx: Arc<ProviderContext>,
    pub cache: Arc<LookupCache>,
    pub connections: ConnectionStore,
    breakers: Breakers,
    /// Upstream calls in flight, bounded per provider.
    limits: HashMap<&'static str, Arc<Semaphore>>,
    max_concurrent: usize,
    retry: RetryPolicy,
    /// Maximum wait for a free upstream slot.
    slot_wait: Duration,
    metrics: ExternalMetrics,
}

struct ExternalMetrics {
    upstream_seconds: HistogramVec,
    upstream_errors: IntCounterVec,
    cache: IntCounterVec,
    open_circuits: IntGaugeVec,
}

impl ExternalSecrets {
    pub fn new(
        config: &ExternalConfig,
        metrics: &Metrics,
        store: Arc<dyn KvStore>,
    ) -> Result<ExternalSecrets, TlsError> {
        let http = HttpClient::new(config.client_settings(), config.ca_file.as_deref())?;
        let limits = PROVIDERS
            .iter()
            .map(|p| (*p, Arc::new(Semaphore::new(config.max_concurrent_calls))))
            .collect();
        Ok(ExternalSecrets {
            ctx: Arc::new(ProviderContext {
                http,
                tokens: TokenCache::default(),
                aws_metadata: Some(config.aws_metadata_endpoint.clone()).filter(|e| !e.is_empty()),
            }),
            cache: Arc::new(LookupCache::new(config.cache_settings())),
            connections: ConnectionStore::new(store),
            breakers: Breakers::new(config.breaker_settings()),
            limits,
            max_concurrent: config.max_concurrent_calls,
            retry: config.retry_policy(),
            slot_wait: Duration::from_millis(config.request_timeout_ms),
            metrics: ExternalMetrics::register(metrics),
        })
    }
}

impl ExternalMetrics {
    fn register(metrics: &Metrics) -> ExternalMetrics {
        let upstream_seconds = HistogramVec::new(
            HistogramOpts::new(
                "keygate_external_upstream_duration_seconds",
                "Time of one call to a customer's secret manager (or one lookup through an agent), by provider.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["provider"],
        )
        .expect("valid metric");
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "keygate_external_upstream_errors_total",
                "Failed calls to customers' secret managers, by provider and reason.",
            ),
            &["provider", "reason"],
        )
        .expect("valid metric");
        let cache = IntCounterVec::new(
            Opts::new(
                "keygate_external_cache_lookups_total",
                "Lookups of external secret values, by how the cache answered: hit, miss, joined (waited for another caller's call) or stale.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let open_circuits = IntGaugeVec::new(
            Opts::new(
                "keygate_external_open_circuits",
                "Provider endpoints whose circuit breaker currently refuses calls, by provider.",
            ),
            &["provider"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(upstream_seconds.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(upstream_errors.clone()),
            Box::new(cache.clone()),
            Box::new(open_circuits.clone()),
        ] {
            metrics.register(collector);
        }
        ExternalMetrics {
            upstream_seconds,
            upstream_errors,
            cache,
            open_circuits,
        }
    }
}

/// Resolves an external definition of `project`, from the cache when it can.
pub async fn resolve(
    state: &SharedState,
    project: &ProjectRef,
    definition: &SecretDefinition,
) -> Result<Arc<CachedValue>, ProviderError> {
    let external = &state.external;
    let key = CacheKey {
        account: project.account.clone(),
        project: project.project.clone(),
        definition: definition.name.clone(),
        version: requested_version(&definition.location),
    };
    let fetch = {
        let (state, project, definition) = (state.clone(), project.clone(), definition.clone());
        move || async move {
            fetch_uncached(&state, &project, &definition)
                .await
                .map(Arc::new)
        }
    };
    let (answer, outcome) = external.cache.get_or_fetch(&key, fetch).await;
    external
        .metrics
        .cache
        .with_label_values(&[outcome.label()])
        .inc();
    if outcome == CacheOutcome::Stale {
        warn!(
            account = %project.account, project = %project.project, definition = %definition.name,
            "the provider failed; a value past its cache life was served"
        );
    }
    answer
}

/// Loads the definition's connection and credential, then requests the
/// value from the provider or the agent.
async fn fetch_uncached(
    state: &SharedState,
    project: &ProjectRef,
    definition: &SecretDefinition,
) -> Result<CachedValue, ProviderError> {
    let location = &definition.location;
    let name = connection_name(location).ok_or_else(|| {
        ProviderError::misconfigured(format!(
            "the definition sets no connection; set location.connection to the name of one of account {}'s connections (GET /v1/connections lists them)",
            project.account
        ))
    })?;
    let connection = load_connection(state, &project.account, name)?;
    if !connection.allows_project(&project.project) {
        return Err(ProviderError::misconfigured(format!(
            "connection {name:?} may be used by the projects {:?} only, not by {:?}",
            connection.projects.as_deref().unwrap_or_default(),
            project.project
        )));
    }
    if let ConnectionSpec::Agent {
        agent_id,
        connection: agent_connection,
        timeout_ms,
    } = &connection.spec
    {
        let timeout = timeout_ms.map_or(DEFAULT_AGENT_TIMEOUT, Duration::from_millis);
        return guarded(state, "agent", agent_id, || {
            through_agent(
                state,
                &project.account,
                agent_id,
                agent_connection,
                location,
                timeout,
            )
        })
        .await
        .map_err(|error| in_connection(name, error));
    }
    let credential = match connection.spec.credential() {
        Some(reference) => Some(load_credential(state, &project.account, name, reference)?),
        None => None,
    };
    let provider = location.provider();
    let endpoint = endpoint_of(&connection.spec, location);
    let ctx = state.external.ctx.clone();
    guarded(state, provider, &endpoint, || {
        provider::lookup(
            &ctx,
            &connection.spec,
            credential.as_deref().map(|c| c.as_str()),
            location,
        )
    })
    .await
    .map_err(|error| in_connection(name, error))
}

/// Names the connection in a failure's message.
fn in_connection(name: &str, mut error: ProviderError) -> ProviderError {
    error.message = format!("connection {name:?}: {}", error.message);
    error
}

/// Runs `call` behind the endpoint's circuit breaker and the provider's
/// concurrency bound, with retries, and records the metrics.
async fn guarded<F, Fut>(
    state: &SharedState,
    provider: &'static str,
    endpoint: &str,
    mut call: F,
) -> Result<CachedValue, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<CachedValue, ProviderError>>,
{
    let external = &state.external;
    let metrics = &external.metrics;
    let count_error = |kind: FailureKind| {
        metrics
            .upstream_errors
            .with_label_values(&[provider, kind.label()])
            .inc()
    };
    let breaker = external.breakers.get(provider, endpoint);
    let admission = match breaker.admit(&format!("{provider} at {endpoint}")) {
        Ok(admission) => admission,
        Err(error) => {
            count_error(error.kind);
            return Err(error);
        }
    };
    let result = with_retries(&external.retry, || {
        let attempt = call();
        async {
            let slots = external
                .limits
                .get(provider)
                .expect("every provider has a limit");
            let _permit = tokio::time::timeout(external.slot_wait, slots.acquire())
                .await
                .map_err(|_| {
                    ProviderError::new(
                        FailureKind::TimedOut,
                        format!(
                            "all {} call slots for {provider} stayed busy for {} ms",
                            external.max_concurrent,
                            external.slot_wait.as_millis()
                        ),
                    )
                })?
                .expect("the semaphore is never closed");
            let started = Instant::now();
            let result = attempt.await;
            metrics
                .upstream_seconds
                .with_label_values(&[provider])
                .observe(started.elapsed().as_secs_f64());
            if let Err(error) = &result {
                count_error(error.kind);
            }
            result
        }
    })
    .await;
    let failure = result.as_ref().err().map(|e| e.kind);
    if breaker.record(admission, failure) {
        warn!(
            provider,
            endpoint, "calls to the secret manager are suspended after repeated failures"
        );
    }
    metrics
        .open_circuits
        .with_label_values(&[provider])
        .set(external.breakers.open_count(provider) as i64);
    result
}

fn load_connection(
    state: &SharedState,
    account: &str,
    name: &str,
) -> Result<StoredConnection, ProviderError> {
    state
        .external
        .connections
        .get(account, name)
        .map_err(|e| ProviderError::misconfigured(format!("reading connection {name:?} failed: {e}")))?
        .ok_or_else(|| {
            ProviderError::misconfigured(format!(
                "the definition names connection {name:?}, which account {account} does not have; create it with PUT /v1/connections/{name}"
            ))
        })
}

/// Reads the hosted secret that contains a connection's credential.
fn load_credential(
    state: &SharedState,
    account: &str,
    connection: &str,
    reference: &HostedCredential,
) -> Result<Zeroizing<String>, ProviderError> {
    let vault = state
        .vault
        .get()
        .map_err(|_| ProviderError::misconfigured("the vault is sealed"))?;
    let misconfigured = |reason: String| {
        ProviderError::misconfigured(format!(
            "the credential of connection {connection:?} (secret {:?} of project {:?}) {reason}",
            reference.secret, reference.project
        ))
    };
    let project = ProjectRef::new(account, &reference.project)
        .map_err(|e| misconfigured(format!("names an invalid project: {e}")))?;
    let (value, _) = vault
        .read_secret(&project, &reference.secret, None)
        .map_err(|error| match error {
            VaultError::SecretNotFound { .. } => misconfigured(format!(
                "does not exist; store it with PUT /v1/projects/{}/secrets/{}",
                reference.project,
                percent_encoding::utf8_percent_encode(
                    &reference.secret,
                    percent_encoding::NON_ALPHANUMERIC
                )
            )),
            other => misconfigured(format!("cannot be read: {other}")),
        })?;
    let text = value
        .as_str()
        .ok_or_else(|| misconfigured("is not UTF-8 text".into()))?;
    Ok(Zeroizing::new(text.to_owned()))
}

/// Names the endpoint a lookup goes to, the key of its circuit breaker.
fn endpoint_of(spec: &ConnectionSpec<HostedCredential>, location: &SecretLocation) -> String {
    match (spec, location) {
        (
            ConnectionSpec::AwsSecretsManager {
                endpoint, region, ..
            },
            _,
        ) => endpoint
            .clone()
            .unwrap_or_else(|| format!("region {region}")),
        (_, SecretLocation::AzureKeyVault { vault_url, .. }) => vault_url.clone(),
        (ConnectionSpec::GcpSecretManager { endpoint, .. }, _) => endpoint
            .clone()
            .unwrap_or_else(|| super::gcp::DEFAULT_ENDPOINT.to_owned()),
        (ConnectionSpec::HashicorpVault { address, .. }, _) => address.clone(),
        _ => spec.provider().to_owned(),
    }
}

/// Sends the lookup to the customer's agent as an unlisted task.
async fn through_agent(
    state: &SharedState,
    account: &str,
    agent_id: &str,
    connection: &str,
    location: &SecretLocation,
    timeout: Duration,
) -> Result<CachedValue, ProviderError> {
    let directory = state.agents.clone();
    let record = directory
        .get(agent_id)
        .map_err(|e| ProviderError::misconfigured(format!("agent lookup failed: {e}")))?
        .filter(|record| record.account == account)
        .ok_or_else(|| {
            ProviderError::misconfigured(format!(
                "the connection names agent {agent_id}, which account {account} does not have; set its agent_id to one that GET /v1/agents lists"
            ))
        })?;
    if record.disabled {
        return Err(ProviderError::new(
            FailureKind::AccessDenied,
            format!("agent {agent_id} is disabled"),
        ));
    }
    if !state.sessions.is_available(agent_id) {
        return Err(ProviderError::new(
            FailureKind::Unreachable,
            format!(
                "agent {agent_id} is not connected; start the agent or check its logs, then retry"
            ),
        ));
    }
    let payload =
        Bytes::from(json!({ "connection": connection, "location": location }).to_string());
    let result = crate::relay::run_unlisted(
        state,
        agent_id,
        record.paused,
        AGENT_TASK_KIND,
        payload,
        timeout,
    )
    .await;
    match result {
        Ok(result) => agent_answer(agent_id, &result),
        Err((status, message)) => {
            debug!(
                agent.id = agent_id,
                status = status.as_str(),
                "lookup through the agent failed"
            );
            let kind = match status {
                TaskStatus::TimedOut => FailureKind::TimedOut,
                TaskStatus::AgentDisconnected => FailureKind::Unreachable,
                _ => FailureKind::Misconfigured,
            };
            let hint = if message.contains(AGENT_TASK_KIND) {
                "; start the agent with --connections FILE so it resolves lookups"
            } else {
                ""
            };
            Err(ProviderError::new(
                kind,
                format!("agent {agent_id}: {message}{hint}"),
            ))
        }
    }
}

/// Reads an agent's lookup result: `{"value", "version"}` or
/// `{"error": {"reason", "message"}}`.
fn agent_answer(agent_id: &str, result: &Value) -> Result<CachedValue, ProviderError> {
    if let Some(error) = result.get("error") {
        let reason = error.get("reason").and_then(Value::as_str).unwrap_or("");
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("(no message)");
        let kind = kind_from_label(reason).unwrap_or(FailureKind::InvalidResponse);
        let retry_after = error
            .get("retry_after_ms")
            .and_then(Value::as_u64)
            .map(Duration::from_millis);
        return Err(
            ProviderError::new(kind, format!("agent {agent_id}: {message}"))
                .with_retry_after(retry_after),
        );
    }
    let value = result.get("value").and_then(Value::as_str).ok_or_else(|| {
        ProviderError::invalid_response(format!(
            "agent {agent_id} returned a lookup result without a value or an error"
        ))
    })?;
    Ok(CachedValue {
        value: Zeroizing::new(value.to_owned()),
        version: result
            .get("version")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// Returns the failure kind with this metrics label.
pub fn kind_from_label(label: &str) -> Option<FailureKind> {
    [
        FailureKind::AccessDenied,
        FailureKind::NotFound,
        FailureKind::Disabled,
        FailureKind::Throttled,
        FailureKind::TimedOut,
        FailureKind::Unreachable,
        FailureKind::ProviderError,
        FailureKind::InvalidResponse,
        FailureKind::Misconfigured,
        FailureKind::CircuitOpen,
    ]
    .into_iter()
    .find(|kind| kind.label() == label)
}
