//! Token verifications per second on one thread, with and without the verified-token cache.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate_auth::{
    CachedVerifier, Scope, ScopeSet, SigningKey, TokenIssuer, TokenRequest, TokenVerifier,
    VerifierSettings,
};

/// Runs both measurements for `duration` each and prints one line per mode.
pub fn run(duration: Duration, distinct_tokens: usize) -> Result<(), String> {
    let key = Arc::new(SigningKey::generate().map_err(|e| e.to_string())?);
    let settings = VerifierSettings {
        issuer: "keygate".into(),
        audience: "keygate".into(),
        leeway_secs: 60,
        max_lifetime_secs: 86_400,
    };
    let issuer = TokenIssuer::new(key.clone(), "keygate", "keygate");
    let mut scopes = ScopeSet::default();
    scopes.insert(Scope::SecretsRead);
    let tokens: Vec<String> = (0..distinct_tokens)
        .map(|i| {
            let request = TokenRequest {
                subject: format!("runner-{i}"),
                account: "bench".into(),
                scopes,
                projects: Some(vec!["bench".into()]),
                lifetime_secs: 3600,
                certificate_thumbprint: None,
            };
            issuer
                .issue(&request)
                .map(|(t, _)| t)
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;

    let plain = TokenVerifier::new([key.verifying_key().clone()], settings.clone());
    let rate = measure(duration, &tokens, |t| plain.verify(t, None).is_ok())?;
    println!(
        "verify: no cache: {rate:.0} verifications/s on one thread ({} distinct tokens)",
        tokens.len()
    );

    let cached = CachedVerifier::new(
        TokenVerifier::new([key.verifying_key().clone()], settings),
        100_000,
    );
    let rate = measure(duration, &tokens, |t| cached.verify(t, None).is_ok())?;
    println!(
        "verify: with cache: {rate:.0} verifications/s on one thread ({} distinct tokens)",
        tokens.len()
    );
    Ok(())
}

fn measure(
    duration: Duration,
    tokens: &[String],
    verify: impl Fn(&str) -> bool,
) -> Result<f64, String> {
    let started = Instant::now();
    let mut count: u64 = 0;
    while started.elapsed() < duration {
        for token in tokens {
            if !verify(token) {
                return Err("a valid token failed verification".into());
            }
            count += 1;
        }
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}
