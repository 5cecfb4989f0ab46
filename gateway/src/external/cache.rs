//! The cache of values read from external secret managers: one upstream call
//! for concurrent misses of a key, refresh ahead of expiry, a short life for
//! not-found results, bounded size, invalidation, and optional stale serving
//! when the provider fails.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;
use zeroize::Zeroizing;

use super::error::{FailureKind, ProviderError};

/// A value as it is returned to runners: after `json_key` selection.
/// `Debug` shows the version only, never the value.
pub struct CachedValue {
    pub value: Zeroizing<String>,
    /// The provider's id of the version read, when it reports one.
    pub version: Option<String>,
}

impl std::fmt::Debug for CachedValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedValue")
            .field("value", &"REDACTED")
            .field("version", &self.version)
            .finish()
    }
}

/// The key of one cache entry. A specific version is part of the key, so a
/// value is only ever returned for the version it was read for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub account: String,
    pub project: String,
    pub definition: String,
    /// The version the location requests, as text; `latest` when it names none.
    pub version: String,
}

#[derive(Clone, Debug)]
pub struct CacheSettings {
    /// Life of a value; zero disables caching of values.
    pub ttl: Duration,
    /// A read in the last `refresh_ahead` of a value's life returns it and
    /// starts one background refresh.
    pub refresh_ahead: Duration,
    /// Life of a not-found result.
    pub not_found_ttl: Duration,
    /// How long past its life a value may still be served when the provider
    /// fails; zero (the default) never serves a stale value.
    pub serve_stale_for: Duration,
    pub max_entries: usize,
}

/// The way the cache served a lookup, for the cache metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Miss,
    /// A miss that waited for another caller's upstream call.
    Joined,
    /// The provider failed and an expired value was served.
    Stale,
}

impl CacheOutcome {
    pub fn label(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Joined => "joined",
            CacheOutcome::Stale => "stale",
        }
    }
}

type Answer = Result<Arc<CachedValue>, ProviderError>;

struct Entry {
    answer: Answer,
    expires_at: Instant,
}

#[derive(Default)]
struct Slot {
    entry: Option<Entry>,
    /// The upstream call in progress; every caller waits on the same cell.
    inflight: Option<Arc<OnceCell<Answer>>>,
    refreshing: bool,
}

/// The lookup cache of one server.
pub struct LookupCache {
    settings: CacheSettings,
    slots: Mutex<HashMap<CacheKey, Slot>>,
}

impl LookupCache {
    pub fn new(settings: CacheSettings) -> LookupCache {
        LookupCache {
            settings,
            slots: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &CacheSettings {
        &self.settings
    }

    /// Returns the value under `key`, calling `fetch` on a miss. Concurrent
    /// misses of one key share one call. `fetch` must not borrow from the
    /// caller, because a refresh ahead of expiry runs it in a background task.
    pub async fn get_or_fetch<F, Fut>(
        self: &Arc<Self>,
        key: &CacheKey,
        fetch: F,
    ) -> (Answer, CacheOutcome)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Answer> + Send + 'static,
    {
        let now = Instant::now();
        let (cell, leader) = {
            let mut slots = self.slots.lock().expect("lookup cache lock");
            let slot = slots.entry(key.clone()).or_default();
            if let Some(entry) = &slot.entry {
                if now < entry.expires_at {
                    let answer = entry.answer.clone();
                    let refresh = answer.is_ok()
                        && !slot.refreshing
                        && slot.inflight.is_none()
                        && entry.expires_at.saturating_duration_since(now)
                            <= self.settings.refresh_ahead;
                    if refresh {
                        slot.refreshing = true;
                        drop(slots);
                        self.spawn_refresh(key.clone(), fetch());
                    }
                    return (answer, CacheOutcome::Hit);
                }
            }
            match &slot.inflight {
                Some(cell) => (cell.clone(), false),
                None => {
                    let cell = Arc::new(OnceCell::new());
                    slot.inflight = Some(cell.clone());
                    (cell, true)
                }
            }
        };

        let future = fetch();
        let answer = cell.get_or_init(|| future).await.clone();
        self.complete(key, &cell, &answer);
        match answer {
            Err(error) if error.kind.is_transient() => match self.stale(key, now) {
                Some(value) => (Ok(value), CacheOutcome::Stale),
                None => (Err(error), outcome(leader)),
            },
            answer => (answer, outcome(leader)),
        }
    }

    /// Stores the answer of a finished call and clears the in-flight mark,
    /// unless an invalidation replaced the slot meanwhile.
    fn complete(&self, key: &CacheKey, cell: &Arc<OnceCell<Answer>>, answer: &Answer) {
        let mut slots = self.slots.lock().expect("lookup cache lock");
        let Some(slot) = slots.get_mut(key) else {
            return;
        };
        let current = slot
            .inflight
            .as_ref()
            .is_some_and(|inflight| Arc::ptr_eq(inflight, cell));
        if !current {
            return;
        }
        slot.inflight = None;
        self.store(slot, answer);
        if slot.entry.is_none() {
            slots.remove(key);
        } else {
            self.evict_over_limit(&mut slots);
        }
    }

    /// Puts a value or a not-found answer in the slot; other failures leave
    /// the last value there for stale serving.
    fn store(&self, slot: &mut Slot, answer: &Answer) {
        let ttl = match answer {
            Ok(_) => self.settings.ttl,
            Err(error) if error.kind == FailureKind::NotFound => self.settings.not_found_ttl,
            Err(_) => return,
        };
        if ttl.is_zero() {
            return;
        }
        slot.entry = Some(Entry {
            answer: answer.clone(),
            expires_at: Instant::now() + ttl,
        });
    }

    fn spawn_refresh<Fut>(self: &Arc<Self>, key: CacheKey, future: Fut)
    where
        Fut: Future<Output = Answer> + Send + 'static,
    {
        let cache = self.clone();
        tokio::spawn(async move {
            let answer = future.await;
            let mut slots = cache.slots.lock().expect("lookup cache lock");
            if let Some(slot) = slots.get_mut(&key) {
                if slot.refreshing {
                    slot.refreshing = false;
                    cache.store(slot, &answer);
                }
            }
        });
    }

    /// Returns an expired value still within the stale-serving window.
    fn stale(&self, key: &CacheKey, now: Instant) -> Option<Arc<CachedValue>> {
        if self.settings.serve_stale_for.is_zero() {
            return None;
        }
        let slots = self.slots.lock().expect("lookup cache lock");
        let entry = slots.get(key)?.entry.as_ref()?;
        let value = entry.answer.as_ref().ok()?;
        (now < entry.expires_at + self.settings.serve_stale_for).then(|| value.clone())
    }

    /// Drops entries past their life (and stale window), then the ones that
    /// expire first, until at most `max_entries` remain.
    fn evict_over_limit(&self, slots: &mut HashMap<CacheKey, Slot>) {
        if slots.len() <= self.settings.max_entries {
            return;
        }
        let now = Instant::now();
        let keep_until = |slot: &Slot| {
            slot.entry
                .as_ref()
                .map(|e| e.expires_at + self.settings.serve_stale_for)
        };
        slots
            .retain(|_, slot| slot.inflight.is_some() || keep_until(slot).is_some_and(|t| t > now));
        while slots.len() > self.settings.max_entries {
            let oldest = slots
                .iter()
                .filter(|(_, slot)| slot.inflight.is_none())
                .min_by_key(|(_, slot)| keep_until(slot))
                .map(|(key, _)| key.clone());
            match oldest {
                Some(key) => slots.remove(&key),
                None => break,
            };
        }
    }

    /// Forgets every version of one definition, and makes calls in progress
    /// for it leave nothing behind. Returns how many entries were dropped.
    pub fn invalidate(&self, account: &str, project: &str, definition: &str) -> usize {
        let mut slots = self.slots.lock().expect("lookup cache lock");
        let before = slots.len();
        slots.retain(|key, _| {
            !(key.account == account && key.project == project && key.definition == definition)
        });
        before - slots.len()
    }

    /// Forgets every value of one account, after one of its connections changed.
    pub fn clear_account(&self, account: &str) -> usize {
        let mut slots = self.slots.lock().expect("lookup cache lock");
        let before = slots.len();
        slots.retain(|key, _| key.account != account);
        before - slots.len()
    }

    pub fn len(&self) -> usize {
        self.slots.lock().expect("lookup cache lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn outcome(leader: bool) -> CacheOutcome {
    if leader {
        CacheOutcome::Miss
    } else {
        CacheOutcome::Joined
    }
}

#[cfg(test)]
mod tests;
