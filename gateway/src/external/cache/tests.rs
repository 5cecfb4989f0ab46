use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

fn settings() -> CacheSettings {
    CacheSettings {
        ttl: Duration::from_secs(60),
        refresh_ahead: Duration::ZERO,
        not_found_ttl: Duration::from_secs(5),
        serve_stale_for: Duration::ZERO,
        max_entries: 100,
    }
}

fn key(definition: &str, version: &str) -> CacheKey {
    CacheKey {
        account: "acme".into(),
        project: "etl".into(),
        definition: definition.into(),
        version: version.into(),
    }
}

fn value(text: &str) -> Answer {
    Ok(Arc::new(CachedValue {
        value: Zeroizing::new(text.to_owned()),
        version: None,
    }))
}

/// Builds a fetch that counts its calls and returns `answer` after a short pause.
fn counted(
    calls: &Arc<AtomicUsize>,
    answer: Answer,
) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = Answer> + Send>> {
    let calls = calls.clone();
    move || {
        Box::pin(async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            answer
        })
    }
}

fn text(answer: &Answer) -> String {
    answer.as_ref().unwrap().value.as_str().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_make_one_call() {
    let cache = Arc::new(LookupCache::new(settings()));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut lookups = Vec::new();
    for _ in 0..100 {
        let (cache, calls) = (cache.clone(), calls.clone());
        lookups.push(tokio::spawn(async move {
            cache
                .get_or_fetch(&key("db", "latest"), counted(&calls, value("v1")))
                .await
        }));
    }
    let mut misses = 0;
    for lookup in lookups {
        let (answer, outcome) = lookup.await.unwrap();
        assert_eq!(text(&answer), "v1");
        misses += usize::from(outcome == CacheOutcome::Miss);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(misses, 1, "one caller made the call, the others joined it");
    let (answer, outcome) = cache
        .get_or_fetch(&key("db", "latest"), counted(&calls, value("v2")))
        .await;
    assert_eq!((text(&answer), outcome), ("v1".into(), CacheOutcome::Hit));
}

#[tokio::test]
async fn versions_are_separate_and_invalidation_drops_all() {
    let cache = Arc::new(LookupCache::new(settings()));
    let calls = Arc::new(AtomicUsize::new(0));
    let _ = cache
        .get_or_fetch(&key("db", "latest"), counted(&calls, value("latest")))
        .await;
    let (answer, outcome) = cache
        .get_or_fetch(&key("db", "3"), counted(&calls, value("three")))
        .await;
    assert_eq!(
        (text(&answer), outcome),
        ("three".into(), CacheOutcome::Miss)
    );
    let (answer, _) = cache
        .get_or_fetch(&key("db", "latest"), counted(&calls, value("x")))
        .await;
    assert_eq!(text(&answer), "latest");

    assert_eq!(cache.invalidate("acme", "etl", "db"), 2);
    assert_eq!(cache.invalidate("acme", "etl", "db"), 0);
    let (answer, outcome) = cache
        .get_or_fetch(&key("db", "latest"), counted(&calls, value("new")))
        .await;
    assert_eq!((text(&answer), outcome), ("new".into(), CacheOutcome::Miss));
}

#[tokio::test]
async fn values_expire_after_the_ttl() {
    let cache = Arc::new(LookupCache::new(CacheSettings {
        ttl: Duration::from_millis(50),
        ..settings()
    }));
    let calls = Arc::new(AtomicUsize::new(0));
    let _ = cache
        .get_or_fetch(&key("db", "latest"), counted(&calls, value("v1")))
        .await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    let (answer, outcome) = cache
        .get_or_fetch(&key("db", "latest"), counted(&calls, value("v2")))
        .await;
    assert_eq!((text(&answer), outcome), ("v2".into(), CacheOutcome::Miss));
}

#[tokio::test]
async fn not_found_is_kept_briefly_and_other_failures_not_at_all() {
    let cache = Arc::new(LookupCache::new(CacheSettings {
        not_found_ttl: Duration::from_millis(50),
        ..settings()
    }));
    let calls = Arc::new(AtomicUsize::new(0));
    let missing = || Err(ProviderError::new(FailureKind::NotFound, "no such secret"));
    let _ = cache
        .get_or_fetch(&key("db", "latest"), counted(&calls, missing()))
        .await;
    let (answer, outcome) = cache
        .get_or_fetch(&key("db", "latest"), counted(&calls, value("v")))
        .await;
    assert_eq!(answer.unwrap_err().kind, FailureKind::NotFound);
    assert_eq!(outcome, CacheOutcome::Hit);
    tokio::time::sleep(Duration::from_millis(60)).await;
    let (answer, _) = cache
        .get_or_fetch(&key("db", "latest"), counted(&calls, value("v")))
        .await;
    assert_eq!(text(&answer), "v");

    let denied = Err(ProviderError::new(FailureKind::AccessDenied, "denied"));
    let _ = cache
        .get_or_fetch(&key("other", "latest"), counted(&calls, denied))
        .await;
    let (answer, outcome) = cache
        .get_or_fetch(&key("other", "latest"), counted(&calls, value("ok")))
        .await;
    assert_eq!((text(&answer), outcome), ("ok".into(), CacheOutcome::Miss));
}

#[tokio::test]
async fn stale_values_are_served_only_when_enabled_and_within_the_window() {
    for serve_stale_for in [Duration::ZERO, Duration::from_millis(200)] {
        let cache = Arc::new(LookupCache::new(CacheSettings {
            ttl: Duration::from_millis(30),
            serve_stale_for,
            ..settings()
        }));
        let calls = Arc::new(AtomicUsize::new(0));
        let down = || {
            Err(ProviderError::new(
                FailureKind::Unreachable,
                "connection refused",
            ))
        };
        let _ = cache
            .get_or_fetch(&key("db", "latest"), counted(&calls, value("old")))
            .await;
        tokio::time::sleep(Duration::from_millis(40)).await;
        let (answer, outcome) = cache
            .get_or_fetch(&key("db", "latest"), counted(&calls, down()))
            .await;
        if serve_stale_for.is_zero() {
            assert_eq!(answer.unwrap_err().kind, FailureKind::Unreachable);
        } else {
            assert_eq!(
                (text(&answer), outcome),
                ("old".into(), CacheOutcome::Stale)
            );
            tokio::time::sleep(Duration::from_millis(220)).await;
            let (answer, _) = cache
                .get_or_fetch(&key("db", "latest"), counted(&calls, down()))
                .await;
            assert_eq!(
                answer.unwrap_err().kind,
                FailureKind::Unreachable,
                "past the window"
            );
        }
    }
}

#[tokio::test]
async fn reads_near_expiry_refresh_in_the_background() {
    let cache = Arc::new(LookupCache::new(CacheSettings {
        ttl: Duration::from_millis(200),
        refresh_ahead: Duration::from_millis(150),
        ..settings()
    }));
    let calls = Arc::new(AtomicUsize::new(0));
    let _ = cache
        .get_or_fetch(&key("db", "latest"), counted(&calls, value("v1")))
        .await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    // Within the refresh window: the old value now, the new one soon.
    let (answer, outcome) = cache
        .get_or_fetch(&key("db", "latest"), counted(&calls, value("v2")))
        .await;
    assert_eq!((text(&answer), outcome), ("v1".into(), CacheOutcome::Hit));
    let (answer, _) = cache
        .get_or_fetch(&key("db", "latest"), counted(&calls, value("v3")))
        .await;
    assert_eq!(text(&answer), "v1", "one refresh at a time");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (answer, outcome) = cache
        .get_or_fetch(&key("db", "latest"), counted(&calls, value("v4")))
        .await;
    assert_eq!((text(&answer), outcome), ("v2".into(), CacheOutcome::Hit));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn size_stays_bounded() {
    let cache = Arc::new(LookupCache::new(CacheSettings {
        max_entries: 10,
        ..settings()
    }));
    let calls = Arc::new(AtomicUsize::new(0));
    for i in 0..25 {
        let _ = cache
            .get_or_fetch(
                &key(&format!("d{i}"), "latest"),
                counted(&calls, value("v")),
            )
            .await;
    }
    assert_eq!(cache.len(), 10);
    // The newest entries stay.
    let (_, outcome) = cache
        .get_or_fetch(&key("d24", "latest"), counted(&calls, value("v")))
        .await;
    assert_eq!(outcome, CacheOutcome::Hit);
}

#[test]
fn debug_output_hides_the_value() {
    let value = CachedValue {
        value: Zeroizing::new("s3cr3t-value".to_owned()),
        version: Some("7".to_owned()),
    };
    let shown = format!("{value:?}");
    assert!(!shown.contains("s3cr3t-value"), "{shown}");
    assert!(shown.contains("\"7\""), "{shown}");
}
