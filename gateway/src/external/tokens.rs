//! Access tokens of providers (Entra ID, Google OAuth, Vault logins, AWS
//! role sessions), kept until shortly before they expire.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ring::digest;
use zeroize::Zeroizing;

/// A token is used no later than this long before it expires.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(60);
/// Most tokens kept; the cache is cleared when it would grow past this.
const MAX_TOKENS: usize = 10_000;

/// Tokens by a key naming the token service, the client and a digest of the
/// credential, so a rotated credential gets a new token.
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<String, CachedToken>>,
}

/// A token and the time it expires.
type CachedToken = (Arc<Zeroizing<String>>, Instant);

impl TokenCache {
    /// Returns the token under `key` unless it expires within [`EXPIRY_MARGIN`].
    pub fn get(&self, key: &str) -> Option<Arc<Zeroizing<String>>> {
        let entries = self.entries.lock().expect("token cache lock");
        let (token, expires_at) = entries.get(key)?;
        (Instant::now() + EXPIRY_MARGIN < *expires_at).then(|| token.clone())
    }

    /// Keeps `token` for `lifetime` from now.
    pub fn put(
        &self,
        key: String,
        token: Zeroizing<String>,
        lifetime: Duration,
    ) -> Arc<Zeroizing<String>> {
        let token = Arc::new(token);
        let mut entries = self.entries.lock().expect("token cache lock");
        if entries.len() >= MAX_TOKENS {
            entries.clear();
        }
        entries.insert(key, (token.clone(), Instant::now() + lifetime));
        token
    }

    /// Forgets the token under `key`, after the provider rejected it.
    pub fn remove(&self, key: &str) {
        self.entries.lock().expect("token cache lock").remove(key);
    }
}

/// Returns a cache key from its parts and the SHA-256 of `credential`.
pub fn token_key(parts: &[&str], credential: &[u8]) -> String {
    let hash = digest::digest(&digest::SHA256, credential);
    let mut key = parts.join("\u{1f}");
    key.push('\u{1f}');
    for byte in hash.as_ref() {
        key.push_str(&format!("{byte:02x}"));
    }
    key
}
