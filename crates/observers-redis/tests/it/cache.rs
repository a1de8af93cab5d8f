//! The cache suite: get/set/expiry/delete/pattern invalidation, in memory and on Redis.

use std::sync::Arc;
use std::time::Duration;

use observers_core::clock::system_clock;
use observers_core::stores::cache::{CacheBackend, MemoryCacheBackend};
use observers_redis::RedisCacheBackend;
use redis::aio::ConnectionManager;

use crate::for_each_backend;
use crate::support::{eventually, unique_prefix};

const TTL: Duration = Duration::from_secs(60);
const SHORT: Duration = Duration::from_millis(200);
const DEADLINE: Duration = Duration::from_secs(5);
/// More than two `SCAN` batches of 500.
const MANY: usize = 1_200;

fn memory_store() -> Arc<dyn CacheBackend> {
    Arc::new(MemoryCacheBackend::new(10_000, system_clock()))
}

fn redis_store(conn: ConnectionManager) -> Arc<dyn CacheBackend> {
    Arc::new(RedisCacheBackend::new(conn).with_prefix(unique_prefix("cache")))
}

async fn get_set_delete(c: Arc<dyn CacheBackend>) {
    let c = &*c;
    assert_eq!(c.get("k").await.unwrap(), None);
    c.set("k", b"v1".to_vec(), TTL).await.unwrap();
    assert_eq!(c.get("k").await.unwrap(), Some(b"v1".to_vec()));
    c.set("k", vec![0, 255, 1], TTL).await.unwrap();
    assert_eq!(
        c.get("k").await.unwrap(),
        Some(vec![0, 255, 1]),
        "binary-safe overwrite"
    );
    assert!(c.delete("k").await.unwrap());
    assert!(!c.delete("k").await.unwrap(), "already gone");
    assert_eq!(c.get("k").await.unwrap(), None);
    let stats = c.stats();
    assert_eq!((stats.hits, stats.misses), (2, 2));
    assert_eq!(stats.hit_ratio(), Some(0.5));

    let err = c.set("k", vec![1], Duration::ZERO).await.unwrap_err();
    assert!(
        !err.is_transient(),
        "a zero TTL is a caller bug, not worth a retry"
    );
}
for_each_backend!(get_set_delete, memory_store(), redis_store);

async fn entries_expire(c: Arc<dyn CacheBackend>) {
    let c = &*c;
    c.set("short", b"s".to_vec(), SHORT).await.unwrap();
    c.set("long", b"l".to_vec(), TTL).await.unwrap();
    eventually("short entry expires", DEADLINE, || async {
        c.get("short").await.unwrap().is_none()
    })
    .await;
    assert_eq!(c.get("long").await.unwrap(), Some(b"l".to_vec()));
    assert!(!c.delete("short").await.unwrap(), "nothing live to delete");
}
for_each_backend!(entries_expire, memory_store(), redis_store);

async fn delete_pattern_over_many_keys(c: Arc<dyn CacheBackend>) {
    let writes: Vec<_> = (0..MANY)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                c.set(&format!("action:user:1:{i}"), vec![1], TTL)
                    .await
                    .unwrap();
            })
        })
        .collect();
    for w in writes {
        w.await.unwrap();
    }
    let keep = [
        "action:user:2:0",
        "action:user:10:0",
        "action:order:1:0",
        "other",
    ];
    for key in keep {
        c.set(key, vec![2], TTL).await.unwrap();
    }

    assert_eq!(
        c.delete_pattern("action:user:1:*").await.unwrap(),
        MANY as u64
    );
    assert_eq!(c.get("action:user:1:0").await.unwrap(), None);
    assert_eq!(
        c.get(&format!("action:user:1:{}", MANY - 1)).await.unwrap(),
        None
    );
    for key in keep {
        assert_eq!(c.get(key).await.unwrap(), Some(vec![2]), "{key} left alone");
    }
    assert_eq!(c.delete_pattern("action:user:1:*").await.unwrap(), 0);
    assert_eq!(c.delete_pattern("action:*:?:0").await.unwrap(), 2);
    assert_eq!(c.get("action:user:10:0").await.unwrap(), Some(vec![2]));
}
for_each_backend!(delete_pattern_over_many_keys, memory_store(), redis_store);

/// Redis only: pattern deletion stays inside the prefix, even one full of glob characters.
#[tokio::test]
async fn redis_delete_pattern_stays_inside_the_prefix() {
    let Some(conn) = crate::support::redis().await else {
        return;
    };
    let base = unique_prefix("cache");
    let tricky = RedisCacheBackend::new(conn.clone()).with_prefix(format!("{base}[a]*?:"));
    // Would match `{base}[a]*?:*` read as a glob.
    let neighbour = RedisCacheBackend::new(conn.clone()).with_prefix(format!("{base}aXY:"));
    tricky.set("k", vec![1], TTL).await.unwrap();
    neighbour.set("k", vec![2], TTL).await.unwrap();
    assert_eq!(tricky.delete_pattern("*").await.unwrap(), 1);
    assert_eq!(neighbour.get("k").await.unwrap(), Some(vec![2]));
    assert_eq!(tricky.get("k").await.unwrap(), None);

    let default = RedisCacheBackend::new(conn);
    assert_eq!(default.prefix(), observers_redis::DEFAULT_CACHE_PREFIX);
    assert_eq!(
        default.stats().entries,
        0,
        "documented: not counted remotely"
    );
}

/// The action cache (`CachedActionExecutor` + the `cache` action), shared with core.
async fn action_cache(c: Arc<dyn CacheBackend>) {
    observers_core::testkit::action_cache::caches_successes_and_invalidates(c).await;
}
for_each_backend!(action_cache, memory_store(), redis_store);

async fn action_cache_escapes_globs(c: Arc<dyn CacheBackend>) {
    observers_core::testkit::action_cache::entity_invalidation_escapes_globs(c).await;
}
for_each_backend!(action_cache_escapes_globs, memory_store(), redis_store);

/// Hybrid caches (write-through, write-behind, read-through, cache-aside) with this remote.
async fn hybrid_strategies(c: Arc<dyn CacheBackend>) {
    observers_core::testkit::hybrid::strategies(c).await;
}
for_each_backend!(hybrid_strategies, memory_store(), redis_store);
