//! Retries of transient provider failures with jittered backoff, and the
//! circuit breakers that stop calls to a provider endpoint that keeps failing.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};

use super::error::{FailureKind, ProviderError};

/// How often and how long to retry.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Calls in total, the first included; 1 disables retries.
    pub max_attempts: u32,
    /// The first backoff's upper bound; each retry doubles it.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// A `Retry-After` longer than this ends the retries at once.
    pub max_retry_after: Duration,
}

/// Calls `call` until it succeeds, fails for good, or `policy` runs out.
/// Transient failures retry after a random delay up to the doubling bound, or
/// after the provider's `Retry-After` plus up to one base delay of jitter.
pub async fn with_retries<T, F, Fut>(policy: &RetryPolicy, mut call: F) -> Result<T, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ProviderError>>,
{
    let mut attempt = 1;
    loop {
        let error = match call().await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        if !error.kind.is_transient() || attempt >= policy.max_attempts.max(1) {
            return Err(error);
        }
        let delay = match error.retry_after {
            Some(wait) if wait > policy.max_retry_after => return Err(error),
            Some(wait) => wait + jitter(policy.base_delay),
            None => {
                let bound = policy
                    .base_delay
                    .saturating_mul(1 << (attempt - 1).min(16))
                    .min(policy.max_delay);
                jitter(bound)
            }
        };
        tracing::debug!(
            attempt,
            reason = error.kind.label(),
            delay_ms = delay.as_millis() as u64,
            "retrying a provider call"
        );
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

/// Returns a random duration from zero up to `max`.
fn jitter(max: Duration) -> Duration {
    let mut bytes = [0u8; 8];
    let _ = SystemRandom::new().fill(&mut bytes);
    let fraction = u64::from_le_bytes(bytes) as f64 / u64::MAX as f64;
    max.mul_f64(fraction)
}

/// When a breaker opens and for how long.
#[derive(Clone, Debug)]
pub struct BreakerSettings {
    /// Consecutive transient failures that open the circuit.
    pub failure_threshold: u32,
    /// How long an open circuit refuses calls before one probe is let through.
    pub open_for: Duration,
}

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe call is out; others are refused until it ends.
    Probing,
}

/// The breaker of one provider endpoint.
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
    settings: BreakerSettings,
}

/// Permission to make one call; report its outcome with [`Breaker::record`].
#[must_use]
pub struct Admission {
    probe: bool,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Breaker {
        Breaker {
            state: Mutex::new(State::Closed { failures: 0 }),
            settings,
        }
    }

    /// Lets a call through, or refuses it with [`FailureKind::CircuitOpen`]
    /// and the time left before the next probe.
    pub fn admit(&self, what: &str) -> Result<Admission, ProviderError> {
        let mut state = self.state.lock().expect("breaker lock");
        match *state {
            State::Closed { .. } => Ok(Admission { probe: false }),
            State::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    *state = State::Probing;
                    return Ok(Admission { probe: true });
                }
                let left = until - now;
                Err(ProviderError::new(
                    FailureKind::CircuitOpen,
                    format!(
                        "calls to {what} are suspended for {} ms more after {} failures in a row",
                        left.as_millis(),
                        self.settings.failure_threshold
                    ),
                )
                .with_retry_after(Some(left.max(Duration::from_secs(1)))))
            }
            State::Probing => Err(ProviderError::new(
                FailureKind::CircuitOpen,
                format!(
                    "calls to {what} are suspended while one test call checks whether it is back"
                ),
            )
            .with_retry_after(Some(Duration::from_secs(1)))),
        }
    }

    /// Records a call's outcome; returns true when this call opened the circuit.
    pub fn record(&self, admission: Admission, failure: Option<FailureKind>) -> bool {
        let mut state = self.state.lock().expect("breaker lock");
        let failed = failure.is_some_and(FailureKind::is_transient);
        match (&mut *state, failed) {
            (_, false) => {
                *state = State::Closed { failures: 0 };
                false
            }
            (State::Closed { failures }, true) => {
                *failures += 1;
                if *failures >= self.settings.failure_threshold.max(1) {
                    *state = State::Open {
                        until: Instant::now() + self.settings.open_for,
                    };
                    return true;
                }
                false
            }
            (_, true) if admission.probe => {
                *state = State::Open {
                    until: Instant::now() + self.settings.open_for,
                };
                true
            }
            (_, true) => false,
        }
    }

    pub fn is_open(&self) -> bool {
        !matches!(
            *self.state.lock().expect("breaker lock"),
            State::Closed { .. }
        )
    }
}

/// Breakers by provider and endpoint, created on first use.
pub struct Breakers {
    settings: BreakerSettings,
    breakers: Mutex<HashMap<(String, String), Arc<Breaker>>>,
}

impl Breakers {
    pub fn new(settings: BreakerSettings) -> Breakers {
        Breakers {
            settings,
            breakers: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, provider: &str, endpoint: &str) -> Arc<Breaker> {
        let mut breakers = self.breakers.lock().expect("breakers lock");
        breakers
            .entry((provider.to_owned(), endpoint.to_owned()))
            .or_insert_with(|| Arc::new(Breaker::new(self.settings.clone())))
            .clone()
    }

    /// Returns how many circuits of `provider` are open or probing.
    pub fn open_count(&self, provider: &str) -> usize {
        let breakers = self.breakers.lock().expect("breakers lock");
        breakers
            .iter()
            .filter(|((p, _), breaker)| p == provider && breaker.is_open())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
            max_retry_after: Duration::from_secs(2),
        }
    }

    #[tokio::test]
    async fn transient_failures_retry_until_success() {
        let calls = AtomicU32::new(0);
        let result = with_retries(&policy(3), || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 => Err(ProviderError::new(FailureKind::Unreachable, "down")),
                1 => Err(ProviderError::new(FailureKind::ProviderError, "500")),
                _ => Ok("value"),
            }
        })
        .await;
        assert_eq!(result.unwrap(), "value");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn permanent_failures_and_exhausted_attempts_stop() {
        let calls = AtomicU32::new(0);
        let error = with_retries(&policy(5), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(ProviderError::new(FailureKind::NotFound, "gone"))
        })
        .await
        .unwrap_err();
        assert_eq!(error.kind, FailureKind::NotFound);
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let calls = AtomicU32::new(0);
        let error = with_retries(&policy(2), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(ProviderError::new(FailureKind::TimedOut, "slow"))
        })
        .await
        .unwrap_err();
        assert_eq!(error.kind, FailureKind::TimedOut);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn retry_after_is_honoured_or_ends_retries() {
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let result = with_retries(&policy(3), || async {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(ProviderError::new(FailureKind::Throttled, "429")
                    .with_retry_after(Some(Duration::from_millis(300))))
            } else {
                Ok(())
            }
        })
        .await;
        assert!(result.is_ok());
        assert!(started.elapsed() >= Duration::from_millis(300));

        let calls = AtomicU32::new(0);
        let error = with_retries(&policy(3), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(
                ProviderError::new(FailureKind::Throttled, "429")
                    .with_retry_after(Some(Duration::from_secs(30))),
            )
        })
        .await
        .unwrap_err();
        assert_eq!(error.kind, FailureKind::Throttled);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "a long Retry-After is not waited for"
        );
    }

    #[test]
    fn breaker_opens_probes_and_closes() {
        let breaker = Breaker::new(BreakerSettings {
            failure_threshold: 2,
            open_for: Duration::from_millis(30),
        });
        let a = breaker.admit("p").unwrap();
        assert!(!breaker.record(a, Some(FailureKind::Unreachable)));
        // A non-transient failure means the provider responded, so the count resets.
        let a = breaker.admit("p").unwrap();
        breaker.record(a, Some(FailureKind::NotFound));
        let a = breaker.admit("p").unwrap();
        assert!(!breaker.record(a, Some(FailureKind::Unreachable)));
        let a = breaker.admit("p").unwrap();
        assert!(
            breaker.record(a, Some(FailureKind::TimedOut)),
            "second failure in a row opens"
        );
        let refused = breaker.admit("p").err().unwrap();
        assert_eq!(refused.kind, FailureKind::CircuitOpen);
        assert!(refused.retry_after.is_some());

        std::thread::sleep(Duration::from_millis(40));
        let probe = breaker.admit("p").unwrap();
        assert_eq!(
            breaker.admit("p").err().unwrap().kind,
            FailureKind::CircuitOpen,
            "one probe at a time"
        );
        assert!(
            breaker.record(probe, Some(FailureKind::Unreachable)),
            "a failed probe reopens"
        );
        std::thread::sleep(Duration::from_millis(40));
        let probe = breaker.admit("p").unwrap();
        breaker.record(probe, None);
        assert!(!breaker.is_open());
        assert!(breaker.admit("p").is_ok());
    }
}
