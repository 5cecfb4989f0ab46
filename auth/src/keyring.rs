//! The set of token signing keys and their schedule: which key signs now,
//! which keys are published, and when an old key may be dropped.
//!
//! A rotation adds a key that is published at once but signs only from
//! `activates_at`, so verifiers that cache the JWK set see it before any token
//! carries it. The key it replaces stays published until every token it can
//! have signed has expired: its successor's `activates_at` plus the retention
//! (the maximum token lifetime and the clock-skew leeway).

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::KeyError;
use crate::keys::{SigningKey, VerifyingKey};

/// A signing key and the time, in Unix seconds, from which it signs.
#[derive(Clone, Debug)]
pub struct ManagedKey {
    pub key: Arc<SigningKey>,
    pub created_at: u64,
    pub activates_at: u64,
}

/// Status of one key, as an operator sees it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct KeyStatus {
    pub kid: String,
    /// `pending` (published, not signing yet), `active` (signing) or `retired` (published only).
    pub state: &'static str,
    pub created_at: u64,
    pub activates_at: u64,
    /// When a newer key took over signing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<u64>,
    /// When the key leaves the JWK set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unpublish_at: Option<u64>,
}

/// The signing keys, oldest first. There is always at least one key that signs.
#[derive(Clone, Debug)]
pub struct KeyRing {
    keys: Vec<ManagedKey>,
}

#[derive(Serialize, Deserialize)]
struct StoredRing {
    format: u32,
    keys: Vec<StoredKey>,
}

#[derive(Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    /// PKCS#8 DER, base64.
    pkcs8: String,
    created_at: u64,
    activates_at: u64,
}

const STORED_FORMAT: u32 = 1;

impl KeyRing {
    /// Creates a ring with `key`, signing from `now`.
    pub fn with_key(key: SigningKey, now: u64) -> KeyRing {
        KeyRing {
            keys: vec![ManagedKey {
                key: Arc::new(key),
                created_at: now,
                activates_at: now,
            }],
        }
    }

    /// Returns the key that signs at `now`: the newest one whose `activates_at` has passed.
    pub fn active(&self, now: u64) -> &ManagedKey {
        self.keys
            .iter()
            .rev()
            .find(|k| k.activates_at <= now)
            .unwrap_or(&self.keys[0])
    }

    /// Returns every published key, for verification and the JWK set.
    pub fn verifying_keys(&self) -> Vec<VerifyingKey> {
        self.keys
            .iter()
            .map(|k| k.key.verifying_key().clone())
            .collect()
    }

    /// Adds a new key that signs from `now + publish_delay_secs`. Fails while
    /// an earlier rotation is still pending, so keys activate in order.
    pub fn rotate(&mut self, now: u64, publish_delay_secs: u64) -> Result<&ManagedKey, KeyError> {
        if let Some(pending) = self.keys.iter().find(|k| k.activates_at > now) {
            return Err(KeyError::RotationPending {
                kid: pending.key.kid().to_owned(),
                activates_at: pending.activates_at,
            });
        }
        self.keys.push(ManagedKey {
            key: Arc::new(SigningKey::generate()?),
            created_at: now,
            activates_at: now + publish_delay_secs,
        });
        Ok(self.keys.last().expect("a key was just pushed"))
    }

    /// Drops keys whose every token has expired; returns their ids.
    pub fn prune(&mut self, now: u64, retention_secs: u64) -> Vec<String> {
        let mut removed = Vec::new();
        while self.keys.len() > 1 && self.keys[1].activates_at + retention_secs <= now {
            removed.push(self.keys.remove(0).key.kid().to_owned());
        }
        removed
    }

    pub fn status(&self, now: u64, retention_secs: u64) -> Vec<KeyStatus> {
        let active_kid = self.active(now).key.kid().to_owned();
        self.keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let retired_at = self.keys.get(i + 1).map(|next| next.activates_at);
                let state = if k.key.kid() == active_kid {
                    "active"
                } else if k.activates_at > now {
                    "pending"
                } else {
                    "retired"
                };
                KeyStatus {
                    kid: k.key.kid().to_owned(),
                    state,
                    created_at: k.created_at,
                    activates_at: k.activates_at,
                    retired_at,
                    unpublish_at: retired_at.map(|t| t + retention_secs),
                }
            })
            .collect()
    }

    /// Serializes the ring, private keys included, for sealing by the vault.
    pub fn to_json(&self) -> Zeroizing<Vec<u8>> {
        let stored = StoredRing {
            format: STORED_FORMAT,
            keys: self
                .keys
                .iter()
                .map(|k| StoredKey {
                    kid: k.key.kid().to_owned(),
                    pkcs8: STANDARD.encode(k.key.pkcs8()),
                    created_at: k.created_at,
                    activates_at: k.activates_at,
                })
                .collect(),
        };
        let json = Zeroizing::new(serde_json::to_vec(&stored).expect("the key ring serializes"));
        for key in stored.keys {
            drop(Zeroizing::new(key.pkcs8));
        }
        json
    }

    /// Reads a ring written by [`KeyRing::to_json`].
    pub fn from_json(bytes: &[u8]) -> Result<KeyRing, KeyError> {
        let invalid = |reason: String| KeyError::Invalid {
            what: "stored signing key ring".into(),
            reason,
        };
        let stored: StoredRing =
            serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        if stored.format != STORED_FORMAT {
            return Err(invalid(format!(
                "format {} is not supported (expected {STORED_FORMAT})",
                stored.format
            )));
        }
        let mut keys = Vec::with_capacity(stored.keys.len());
        for entry in stored.keys {
            let der = Zeroizing::new(
                STANDARD
                    .decode(entry.pkcs8.as_bytes())
                    .map_err(|e| invalid(format!("key {}: {e}", entry.kid)))?,
            );
            drop(Zeroizing::new(entry.pkcs8));
            let key = SigningKey::from_pkcs8(&der)?;
            if key.kid() != entry.kid {
                return Err(invalid(format!(
                    "key {} has the id {} when loaded",
                    entry.kid,
                    key.kid()
                )));
            }
            keys.push(ManagedKey {
                key: Arc::new(key),
                created_at: entry.created_at,
                activates_at: entry.activates_at,
            });
        }
        if keys.is_empty() {
            return Err(invalid("it holds no key".into()));
        }
        keys.sort_by_key(|k| k.activates_at);
        Ok(KeyRing { keys })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(now: u64) -> KeyRing {
        KeyRing::with_key(SigningKey::generate().unwrap(), now)
    }

    #[test]
    fn rotation_publishes_before_signing() {
        let mut ring = ring(1000);
        let first = ring.active(1000).key.kid().to_owned();
        let next = ring.rotate(2000, 300).unwrap().key.kid().to_owned();
        assert_eq!(
            ring.verifying_keys().len(),
            2,
            "the next key is published at once"
        );
        assert_eq!(
            ring.active(2000).key.kid(),
            first,
            "the old key signs until activation"
        );
        assert_eq!(ring.active(2299).key.kid(), first);
        assert_eq!(ring.active(2300).key.kid(), next);
        let status = ring.status(2100, 3600);
        assert_eq!(status[0].state, "active");
        assert_eq!(status[1].state, "pending");
        assert_eq!(status[0].unpublish_at, Some(2300 + 3600));
    }

    #[test]
    fn second_rotation_waits_for_pending() {
        let mut ring = ring(1000);
        ring.rotate(2000, 300).unwrap();
        assert!(matches!(
            ring.rotate(2100, 300),
            Err(KeyError::RotationPending {
                activates_at: 2300,
                ..
            })
        ));
        assert!(ring.rotate(2300, 300).is_ok());
    }

    #[test]
    fn old_key_kept_until_its_tokens_expire() {
        let mut ring = ring(1000);
        let first = ring.active(1000).key.kid().to_owned();
        ring.rotate(2000, 0).unwrap();
        assert!(ring.prune(2000 + 3599, 3600).is_empty());
        assert_eq!(ring.prune(2000 + 3600, 3600), vec![first]);
        assert_eq!(ring.verifying_keys().len(), 1);
        assert!(
            ring.prune(99_999, 3600).is_empty(),
            "the last key is never dropped"
        );
    }

    #[test]
    fn json_round_trip() {
        let mut ring = ring(1000);
        ring.rotate(2000, 300).unwrap();
        let back = KeyRing::from_json(&ring.to_json()).unwrap();
        assert_eq!(back.status(2100, 60), ring.status(2100, 60));
        assert!(KeyRing::from_json(b"{\"format\":1,\"keys\":[]}").is_err());
        assert!(KeyRing::from_json(b"{\"format\":9,\"keys\":[]}").is_err());
    }
}
