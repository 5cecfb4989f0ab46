//! Failures of lookups at customers' secret managers, in terms common to every provider.

use std::fmt;
use std::time::Duration;

/// The sentence that starts the message of a failure to reach a secret manager
/// or to be let in by it.
pub const CANNOT_ACCESS: &str = "The agent can't access the customer's secret manager";

/// The kind of failure that a provider's own error maps onto.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The credentials were refused, or they lack permission for the secret.
    AccessDenied,
    /// The secret or the version does not exist.
    NotFound,
    /// The secret or the version exists but is disabled or destroyed.
    Disabled,
    /// The provider asked keygate to slow down.
    Throttled,
    /// The provider did not respond in time.
    TimedOut,
    /// No connection to the provider could be made.
    Unreachable,
    /// The provider failed on its side (an HTTP 5xx response).
    ProviderError,
    /// The provider's response could not be understood.
    InvalidResponse,
    /// The connection or the definition is not usable as configured.
    Misconfigured,
    /// Calls to this provider are suspended after repeated failures.
    CircuitOpen,
}

impl FailureKind {
    /// Returns the `reason` label of upstream error metrics, also used in logs.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::AccessDenied => "access_denied",
            FailureKind::NotFound => "not_found",
            FailureKind::Disabled => "disabled",
            FailureKind::Throttled => "throttled",
            FailureKind::TimedOut => "timed_out",
            FailureKind::Unreachable => "unreachable",
            FailureKind::ProviderError => "provider_error",
            FailureKind::InvalidResponse => "invalid_response",
            FailureKind::Misconfigured => "misconfigured",
            FailureKind::CircuitOpen => "circuit_open",
        }
    }

    /// Returns whether a later attempt may succeed without any change on either side.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            FailureKind::Throttled
                | FailureKind::TimedOut
                | FailureKind::Unreachable
                | FailureKind::ProviderError
        )
    }

    /// Returns whether the failure means the secret manager could not be
    /// reached or refused access, which the message starts with [`CANNOT_ACCESS`] for.
    pub fn is_access_failure(self) -> bool {
        matches!(
            self,
            FailureKind::AccessDenied
                | FailureKind::Throttled
                | FailureKind::TimedOut
                | FailureKind::Unreachable
                | FailureKind::ProviderError
                | FailureKind::CircuitOpen
        )
    }
}

/// One failed lookup. `message` is in the provider's terms (its error code
/// and message) and never contains a credential or a secret value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderError {
    pub kind: FailureKind,
    pub message: String,
    /// How long the provider asked keygate to wait (`Retry-After`), or how
    /// long an open circuit stays open.
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> ProviderError {
        ProviderError {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> ProviderError {
        self.retry_after = retry_after;
        self
    }

    pub fn misconfigured(message: impl Into<String>) -> ProviderError {
        ProviderError::new(FailureKind::Misconfigured, message)
    }

    pub fn invalid_response(message: impl Into<String>) -> ProviderError {
        ProviderError::new(FailureKind::InvalidResponse, message)
    }
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ProviderError {}
