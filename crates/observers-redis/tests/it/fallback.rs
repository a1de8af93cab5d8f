//! Core's fallback wrappers over the Redis stores: the shared suites pass through the wrapper
//! on a live Redis, and a Redis that is not there is served by the in-memory fallback.

use std::sync::Arc;
use std::time::Duration;

use observers_core::clock::system_clock;
use observers_core::stores::cache::{CacheBackend, MemoryCacheBackend};
use observers_core::stores::dedup::{ClaimOutcome, DedupStore, MemoryDedupStore};
use observers_core::stores::fallback::{
    FallbackCache, FallbackDedupStore, FallbackMode, Resilience, ResilienceConfig,
};
use observers_core::telemetry::CountingTelemetry;
use observers_core::testkit::dedup as suite;
use observers_redis::{RedisCacheBackend, RedisDedupStore, RedisProbe, connect_lazy};
use redis::aio::ConnectionManager;

use crate::support::unique_prefix;

fn wrapped(conn: ConnectionManager, mode: FallbackMode) -> (Arc<Resilience>, Arc<dyn DedupStore>) {
    let config = ResilienceConfig {
        mode,
        op_timeout: Duration::from_millis(300),
        ..ResilienceConfig::default()
    };
    let resilience = Resilience::new("redis", config, CountingTelemetry::new());
    let store = FallbackDedupStore::new(
        resilience.clone(),
        Arc::new(RedisDedupStore::new(conn).with_prefix(unique_prefix("fb-dedup"))),
        Arc::new(MemoryDedupStore::new(10_000, system_clock())),
    );
    (resilience, Arc::new(store))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dedup_suite_passes_through_the_wrapper_on_a_live_redis() {
    let Some(conn) = crate::support::redis().await else {
        return;
    };
    for mode in [
        FallbackMode::CircuitBreaker,
        FallbackMode::Immediate,
        FallbackMode::AfterRetries(1),
        FallbackMode::HealthBased,
    ] {
        let (r, s) = wrapped(conn.clone(), mode);
        suite::lifecycle(s.clone()).await;
        let (_, s) = wrapped(conn.clone(), mode);
        suite::concurrent_claims_have_one_winner(s).await;
        assert!(!r.status().on_fallback, "{mode}: never fell back");
    }
}

/// A port nothing listens on: Redis "down" from the start.
fn dead_redis() -> ConnectionManager {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    connect_lazy(
        &format!("redis://127.0.0.1:{port}"),
        Duration::from_millis(200),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_redis_is_served_by_the_fallback_and_probed_unhealthy() {
    let conn = dead_redis();
    let (r, s) = wrapped(conn.clone(), FallbackMode::CircuitBreaker);
    suite::lifecycle(s.clone()).await;
    suite::concurrent_claims_have_one_winner(s).await;
    assert!(r.status().on_fallback);
    let probe = RedisProbe::new(conn.clone());
    for _ in 0..r.config().health.unhealthy_threshold {
        r.check(&probe).await;
    }
    assert!(!r.is_healthy());

    let cache = FallbackCache::new(
        r.clone(),
        Arc::new(RedisCacheBackend::new(conn).with_prefix(unique_prefix("fb-cache"))),
        Arc::new(MemoryCacheBackend::new(100, system_clock())),
    );
    cache
        .set("k", vec![1], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(cache.get("k").await.unwrap(), Some(vec![1]));
    assert!(cache.pending_replay() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_probe_answers_on_a_live_redis() {
    let Some(conn) = crate::support::redis().await else {
        return;
    };
    let (r, s) = wrapped(conn.clone(), FallbackMode::HealthBased);
    assert!(r.check(&RedisProbe::new(conn)).await);
    assert_eq!(
        s.claim("k", "o", Duration::from_secs(5)).await.unwrap(),
        ClaimOutcome::Acquired
    );
}
