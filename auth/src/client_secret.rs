//! Agent client secrets: generation, the stored hash and constant-time checking.
//!
//! A client secret is 32 random bytes, so an unsalted SHA-256 is enough to
//! store it: a slow password hash defends low-entropy passwords against
//! guessing, and 256 random bits cannot be guessed.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SecureRandom;
use zeroize::Zeroizing;

const PREFIX: &str = "kgs_";

/// A client secret in clear text; shown to the caller once, then dropped.
pub struct ClientSecret(Zeroizing<String>);

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecret(REDACTED)")
    }
}

impl ClientSecret {
    pub fn generate() -> ClientSecret {
        let mut bytes = Zeroizing::new([0u8; 32]);
        ring::rand::SystemRandom::new()
            .fill(bytes.as_mut())
            .expect("the system random source failed");
        ClientSecret(Zeroizing::new(format!(
            "{PREFIX}{}",
            URL_SAFE_NO_PAD.encode(bytes.as_ref())
        )))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> ClientSecretHash {
        ClientSecretHash::of(&self.0)
    }
}

/// The stored form of a client secret: hex SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct ClientSecretHash(String);

impl ClientSecretHash {
    pub fn of(secret: &str) -> ClientSecretHash {
        let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
        ClientSecretHash(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Compares a presented secret with this hash in time independent of where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        let candidate = ClientSecretHash::of(presented);
        let (a, b) = (self.0.as_bytes(), candidate.0.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_matches_own_hash_only() {
        let secret = ClientSecret::generate();
        let other = ClientSecret::generate();
        let hash = secret.hash();
        assert!(hash.matches(secret.expose()));
        assert!(!hash.matches(other.expose()));
        assert!(!hash.matches(""));
        assert!(secret.expose().starts_with(PREFIX));
        assert!(!format!("{secret:?}").contains(secret.expose()));
    }
}
