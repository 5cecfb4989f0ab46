//! Tokens from external identity providers (trusted issuers): their JWK sets,
//! the cooldown between refetches, and verification.
//!
//! This module does no I/O. The gateway fetches an issuer's JWK set, passes
//! the bytes to [`ExternalKeySet::parse`] and installs the result with
//! [`ExternalVerifier::install`]. When [`ExternalVerifier::verify`] rejects a
//! token because its `kid` is not in the installed set, the gateway calls
//! [`ExternalVerifier::try_begin_refetch`], which decides whether the cooldown
//! allows a new fetch, and verifies again afterwards.
//!
//! Each key accepts exactly one algorithm: the `alg` its JWK declares, or the
//! one its key type implies (RSA: RS256, EC P-256: ES256, OKP Ed25519: EdDSA).
//! The `alg` in a token's header is only compared against it.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Deserializer};

use crate::claims::{Confirmation, Principal};
use crate::error::AuthError;
use crate::jose::{is_plain_identifier, map_jwt_error, read_header, shorten};
use crate::scope::{Scope, ScopeSet};
use crate::unix_now;

/// Keys accepted from one JWK set document; a larger document is rejected whole.
pub const MAX_KEYS_PER_SET: usize = 100;

/// The checks and permissions that apply to one trusted issuer's tokens.
#[derive(Clone, Debug)]
pub struct ExternalIssuerSettings {
    /// The expected `iss`.
    pub issuer: String,
    /// The expected `aud`; a token whose `aud` array contains it also passes.
    pub audience: String,
    /// The keygate account the issuer's tokens act for.
    pub account: String,
    /// Scopes the issuer may grant. Scopes outside this set are dropped from
    /// a token, and so is `agent:session` in every case.
    pub allowed_scopes: ScopeSet,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway_secs: u64,
    /// Tokens that carry `iat` and whose `exp - iat` exceeds this are rejected.
    pub max_lifetime_secs: u64,
    /// Shortest time between two refetches that unknown key ids trigger.
    pub refetch_cooldown: Duration,
}

/// A JWK set document could not be used; the previous key set stays installed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum JwksError {
    #[error("the key set is not a JSON object with a `keys` array: {0}")]
    NotJwkSet(String),
    #[error("the key set has {count} keys, more than the maximum of {MAX_KEYS_PER_SET}")]
    TooManyKeys { count: usize },
    #[error("the key set has no usable signing key ({})", describe_skipped(.skipped))]
    NoUsableKey { skipped: Vec<SkippedKey> },
}

/// A key of a JWK set that was left out, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    /// The key's `kid`, shortened, if it has a string one.
    pub kid: Option<String>,
    pub reason: String,
}

impl fmt::Display for SkippedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kid {
            Some(kid) => write!(f, "key {kid:?}: {}", self.reason),
            None => write!(f, "key without kid: {}", self.reason),
        }
    }
}

fn describe_skipped(skipped: &[SkippedKey]) -> String {
    if skipped.is_empty() {
        return "the `keys` array is empty".to_owned();
    }
    skipped
        .iter()
        .map(SkippedKey::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// One verifying key of an external issuer, fixed to one algorithm.
#[derive(Clone)]
struct ExternalKey {
    algorithm: Algorithm,
    decoding: DecodingKey,
}

/// The usable keys of a JWK set by `kid`, and the keys that were left out.
#[derive(Clone, Default)]
pub struct ExternalKeySet {
    keys: HashMap<String, ExternalKey>,
    skipped: Vec<SkippedKey>,
}

impl fmt::Debug for ExternalKeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalKeySet")
            .field("kids", &self.key_ids())
            .field("skipped", &self.skipped)
            .finish()
    }
}

/// The members of a JWK that keygate reads (RFC 7517, RFC 7518, RFC 8037).
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    key_use: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

#[derive(Deserialize)]
struct RawJwkSet {
    keys: Vec<serde_json::Value>,
}

impl ExternalKeySet {
    /// Parses a JWK set document. Keys that cannot be used (unsupported type
    /// or algorithm, `use` other than `sig`, invalid members, a missing,
    /// non-plain or repeated `kid`) are left out and listed in [`Self::skipped`].
    /// A document without any usable key is an error.
    pub fn parse(document: &[u8]) -> Result<ExternalKeySet, JwksError> {
        let raw: RawJwkSet =
            serde_json::from_slice(document).map_err(|e| JwksError::NotJwkSet(e.to_string()))?;
        if raw.keys.len() > MAX_KEYS_PER_SET {
            return Err(JwksError::TooManyKeys {
                count: raw.keys.len(),
            });
        }
        let mut set = ExternalKeySet::default();
        for value in raw.keys {
            let kid = value.get("kid").and_then(|k| k.as_str()).map(shorten);
            let skip = |reason: String| SkippedKey {
                kid: kid.clone(),
                reason,
            };
            let jwk: RawJwk = match serde_json::from_value(value) {
                Ok(jwk) => jwk,
                Err(e) => {
                    set.skipped.push(skip(format!("not a valid JWK: {e}")));
                    continue;
                }
            };
            let Some(kid) = jwk.kid.clone() else {
                set.skipped.push(skip("no `kid`".into()));
                continue;
            };
            if !is_plain_identifier(&kid) {
                set.skipped.push(skip(
                    "the `kid` is not 1 to 64 characters of A-Z, a-z, 0-9, '-', '_'".into(),
                ));
                continue;
            }
            if set.keys.contains_key(&kid) {
                set.skipped
                    .push(skip("the `kid` repeats an earlier key's one".into()));
                continue;
            }
            match key_from_jwk(&jwk) {
                Ok(key) => {
                    set.keys.insert(kid, key);
                }
                Err(reason) => set.skipped.push(skip(reason)),
            }
        }
        if set.keys.is_empty() {
            return Err(JwksError::NoUsableKey {
                skipped: set.skipped,
            });
        }
        Ok(set)
    }

    /// Returns the ids of the usable keys, sorted.
    pub fn key_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        ids.sort_unstable();
        ids
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Keys of the document that were left out, with the reason.
    pub fn skipped(&self) -> &[SkippedKey] {
        &self.skipped
    }
}

/// Builds the verifying key of one JWK, or returns why it cannot be used.
fn key_from_jwk(jwk: &RawJwk) -> Result<ExternalKey, String> {
    if let Some(key_use) = &jwk.key_use {
        if key_use != "sig" {
            return Err(format!(
                "`use` is {:?}, not \"sig\"",
                shorten(key_use.as_str())
            ));
        }
    }
    let algorithm = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RSA", _) => Algorithm::RS256,
        ("EC", Some("P-256")) => Algorithm::ES256,
        ("OKP", Some("Ed25519")) => Algorithm::EdDSA,
        (kty, crv) => {
            return Err(format!(
                "key type {:?} with curve {:?} is not supported (supported: RSA, EC P-256, OKP Ed25519)",
                shorten(kty),
                crv.map(shorten)
            ))
        }
    };
    if let Some(alg) = &jwk.alg {
        if alg.as_str() != algorithm_name(algorithm) {
            return Err(format!(
                "`alg` {:?} is not accepted for a {} key; keygate accepts only {} for it",
                shorten(alg),
                jwk.kty,
                algorithm_name(algorithm)
            ));
        }
    }
    let decoding = match algorithm {
        Algorithm::RS256 => rsa_key(jwk)?,
        Algorithm::ES256 => {
            let x = decode_member("x", jwk.x.as_deref(), Some(32))?;
            let y = decode_member("y", jwk.y.as_deref(), Some(32))?;
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            // ring reads the key as an uncompressed SEC1 point: 0x04 | x | y.
            DecodingKey::from_ec_der(&point)
        }
        _ => {
            let x = decode_member("x", jwk.x.as_deref(), Some(32))?;
            DecodingKey::from_ed_der(&x)
        }
    };
    Ok(ExternalKey {
        algorithm,
        decoding,
    })
}

/// Reads an RSA key's modulus and exponent. The modulus must be 2048 to 8192
/// bits, the range ring verifies RS256 signatures with.
fn rsa_key(jwk: &RawJwk) -> Result<DecodingKey, String> {
    let n = decode_member("n", jwk.n.as_deref(), None)?;
    let e = decode_member("e", jwk.e.as_deref(), None)?;
    let n = strip_leading_zeros(&n);
    let e = strip_leading_zeros(&e);
    let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
    if !(2048..=8192).contains(&bits) {
        return Err(format!(
            "the RSA modulus has {bits} bits; 2048 to 8192 are accepted"
        ));
    }
    if e.is_empty() || e.len() > 4 {
        return Err("the RSA exponent is not 1 to 4 bytes".into());
    }
    Ok(DecodingKey::from_rsa_raw_components(n, e))
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// Decodes a base64url JWK member, checking its length when one is fixed.
fn decode_member(
    name: &str,
    value: Option<&str>,
    expected_len: Option<usize>,
) -> Result<Vec<u8>, String> {
    let value = value.ok_or_else(|| format!("no `{name}`"))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|e| format!("`{name}` is not base64url: {e}"))?;
    match expected_len {
        Some(len) if bytes.len() != len => {
            Err(format!("`{name}` is {} bytes, expected {len}", bytes.len()))
        }
        _ => Ok(bytes),
    }
}

fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        Algorithm::EdDSA => "EdDSA",
        _ => "unsupported",
    }
}

/// The key set in use and the outcome of the latest fetch.
struct KeyState {
    keys: Arc<HashMap<String, ExternalKey>>,
    /// False until a fetch succeeds, and again after a fetch fails.
    last_fetch_succeeded: bool,
}

/// Verifies the tokens of one trusted issuer against its cached key set.
pub struct ExternalVerifier {
    settings: ExternalIssuerSettings,
    state: RwLock<KeyState>,
    /// When the cooldown started: the start or the end of the latest refetch.
    cooldown_start: Mutex<Option<Instant>>,
}

impl fmt::Debug for ExternalVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalVerifier")
            .field("issuer", &self.settings.issuer)
            .finish_non_exhaustive()
    }
}

impl ExternalVerifier {
    /// Creates a verifier without keys; every token is rejected with
    /// [`AuthError::JwksUnavailable`] until a key set is installed.
    pub fn new(settings: ExternalIssuerSettings) -> ExternalVerifier {
        ExternalVerifier {
            settings,
            state: RwLock::new(KeyState {
                keys: Arc::new(HashMap::new()),
                last_fetch_succeeded: false,
            }),
            cooldown_start: Mutex::new(None),
        }
    }

    pub fn settings(&self) -> &ExternalIssuerSettings {
        &self.settings
    }

    /// Replaces the key set after a successful fetch.
    pub fn install(&self, set: ExternalKeySet) {
        let mut state = self.state.write().expect("key set lock");
        state.keys = Arc::new(set.keys);
        state.last_fetch_succeeded = true;
    }

    /// Records a failed fetch. The installed keys stay in use, and a token
    /// with an unknown `kid` gets [`AuthError::JwksUnavailable`] until a fetch succeeds.
    pub fn record_fetch_failure(&self) {
        self.state
            .write()
            .expect("key set lock")
            .last_fetch_succeeded = false;
    }

    /// Returns the ids of the installed keys, sorted.
    pub fn key_ids(&self) -> Vec<String> {
        let keys = self.state.read().expect("key set lock").keys.clone();
        let mut ids: Vec<String> = keys.keys().cloned().collect();
        ids.sort_unstable();
        ids
    }

    /// Decides whether a token with an unknown `kid` may trigger a refetch at
    /// `now`. It may when no refetch happened yet or the cooldown has passed
    /// since the latest one, and then the cooldown starts again at `now`.
    ///
    /// The fetch at start is not a refetch and starts no cooldown. The caller
    /// serializes refetches and calls [`Self::end_refetch`] after each one.
    pub fn try_begin_refetch(&self, now: Instant) -> bool {
        let mut start = self.cooldown_start.lock().expect("cooldown lock");
        let allowed = match *start {
            None => true,
            Some(previous) => {
                now.saturating_duration_since(previous) >= self.settings.refetch_cooldown
            }
        };
        if allowed {
            *start = Some(now);
        }
        allowed
    }

    /// Restarts the cooldown when a refetch ends, so requests that waited for
    /// it verify against its result instead of fetching again.
    pub fn end_refetch(&self, now: Instant) {
        *self.cooldown_start.lock().expect("cooldown lock") = Some(now);
    }

    /// Verifies `token` against the installed keys and the issuer's settings.
    /// When the token is bound to a certificate (`cnf.x5t#S256`),
    /// `presented_thumbprint` must be that certificate's thumbprint.
    ///
    /// A `kid` that is not installed gives [`AuthError::UnknownKeyId`], or
    /// [`AuthError::JwksUnavailable`] when the latest fetch failed or none has
    /// succeeded yet. Either one is the caller's cue to consider a refetch.
    pub fn verify(
        &self,
        token: &str,
        presented_thumbprint: Option<&str>,
    ) -> Result<Principal, AuthError> {
        let header = read_header(token)?;
        let (keys, last_fetch_succeeded) = {
            let state = self.state.read().expect("key set lock");
            (state.keys.clone(), state.last_fetch_succeeded)
        };
        let key = match keys.get(&header.kid) {
            Some(key) => key,
            None if last_fetch_succeeded => return Err(AuthError::UnknownKeyId(header.kid)),
            None => {
                return Err(AuthError::JwksUnavailable {
                    issuer: self.settings.issuer.clone(),
                })
            }
        };
        let expected = algorithm_name(key.algorithm);
        if header.alg != expected {
            return Err(AuthError::WrongAlgorithm {
                kid: header.kid,
                found: header.alg.chars().take(20).collect(),
                expected: expected.to_owned(),
            });
        }

        let mut validation = Validation::new(key.algorithm);
        validation.leeway = self.settings.leeway_secs;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<ExternalClaims>(token, &key.decoding, &validation)
            .map_err(|e| map_jwt_error(e.kind()))?
            .claims;

        let now = unix_now();
        if let Some(iat) = claims.iat {
            if iat > now + self.settings.leeway_secs {
                return Err(AuthError::NotYetValid);
            }
            let lifetime_secs = claims.exp.saturating_sub(iat);
            if lifetime_secs > self.settings.max_lifetime_secs {
                return Err(AuthError::LifetimeTooLong {
                    lifetime_secs,
                    max_secs: self.settings.max_lifetime_secs,
                });
            }
        }
        if let Some(cnf) = &claims.cnf {
            if presented_thumbprint != Some(cnf.x5t_s256.as_str()) {
                return Err(AuthError::CertificateMismatch {
                    presented: presented_thumbprint.is_some(),
                });
            }
        }
        Ok(self.principal(claims))
    }

    fn principal(&self, claims: ExternalClaims) -> Principal {
        let mut scopes = ScopeSet::default();
        for claim in [&claims.scope, &claims.scp].into_iter().flatten() {
            for scope in claim.scopes().iter() {
                if scope != Scope::AgentSession && self.settings.allowed_scopes.contains(scope) {
                    scopes.insert(scope);
                }
            }
        }
        Principal {
            subject: claims.sub,
            account: self.settings.account.clone(),
            scopes,
            projects: None,
            token_id: claims
                .jti
                .as_ref()
                .and_then(|j| j.as_str())
                .unwrap_or_default()
                .to_owned(),
            // Without `iat`, 0 makes any comparison with a revocation time
            // treat the token as issued before it.
            issued_at: claims.iat.unwrap_or(0),
            expires_at: claims.exp,
            certificate_thumbprint: claims.cnf.map(|c| c.x5t_s256),
        }
    }
}

/// Reads a token's `iss` without verifying anything.
///
/// Use it only to pick the verifier. Returns `None` when the payload is not
/// base64url JSON or has no string `iss`.
pub fn unverified_issuer(token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct IssuerOnly {
        iss: Option<String>,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<IssuerOnly>(&bytes).ok()?.iss
}

/// The claims of an external token that keygate reads; `iss`, `aud` and
/// `nbf` are checked by jsonwebtoken's validation.
#[derive(Deserialize)]
struct ExternalClaims {
    sub: String,
    #[serde(deserialize_with = "numeric_date")]
    exp: u64,
    #[serde(default, deserialize_with = "optional_numeric_date")]
    iat: Option<u64>,
    /// Space-separated scopes (RFC 8693).
    #[serde(default)]
    scope: Option<ScopeClaim>,
    /// Scopes as an array, or space-separated like `scope`, as some providers send them.
    #[serde(default)]
    scp: Option<ScopeClaim>,
    #[serde(default)]
    jti: Option<serde_json::Value>,
    #[serde(default)]
    cnf: Option<Confirmation>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ScopeClaim {
    Text(String),
    List(Vec<String>),
}

impl ScopeClaim {
    /// Returns the scopes keygate defines; unknown names are ignored.
    fn scopes(&self) -> ScopeSet {
        match self {
            ScopeClaim::Text(text) => ScopeSet::from_claim(text),
            ScopeClaim::List(names) => {
                let mut set = ScopeSet::default();
                for scope in names.iter().filter_map(|n| Scope::parse(n)) {
                    set.insert(scope);
                }
                set
            }
        }
    }
}

/// Reads a NumericDate (RFC 7519): whole seconds, or a non-negative number
/// with a fraction, which is rounded down.
fn numeric_date<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Whole(u64),
        Fraction(f64),
    }
    match Number::deserialize(deserializer)? {
        Number::Whole(n) => Ok(n),
        Number::Fraction(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => Ok(f as u64),
        Number::Fraction(f) => Err(serde::de::Error::custom(format!(
            "{f} is not a valid NumericDate"
        ))),
    }
}

fn optional_numeric_date<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    numeric_date(deserializer).map(Some)
}

#[cfg(test)]
mod tests;
