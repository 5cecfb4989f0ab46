//! Locks by key, so submissions with the same idempotency key run one at a
//! time while different keys rarely wait for each other.

use std::hash::BuildHasher;

use tokio::sync::{Mutex, MutexGuard};

/// Number of locks; two keys share one with probability 1/SHARDS.
const SHARDS: usize = 64;

/// A fixed set of async locks, chosen by a hash of the key.
pub struct KeyLocks {
    shards: Vec<Mutex<()>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for KeyLocks {
    fn default() -> KeyLocks {
        KeyLocks {
            shards: (0..SHARDS).map(|_| Mutex::new(())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }
}

impl KeyLocks {
    /// Waits for the lock of `key` and holds it until the guard is dropped.
    pub async fn lock(&self, key: &str) -> MutexGuard<'_, ()> {
        let shard = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        self.shards[shard].lock().await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn same_key_waits_for_the_holder() {
        let locks = KeyLocks::default();
        let held = locks.lock("k-1").await;
        let waited = tokio::time::timeout(Duration::from_millis(50), locks.lock("k-1")).await;
        assert!(waited.is_err(), "a second lock of the same key must wait");
        drop(held);
        let again = tokio::time::timeout(Duration::from_secs(5), locks.lock("k-1")).await;
        assert!(again.is_ok(), "the lock is free once the guard is dropped");
    }
}
