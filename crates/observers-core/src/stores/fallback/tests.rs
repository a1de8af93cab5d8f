//! Tests of the fallback wrappers and the health monitor, with a primary that can be taken down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::clock::system_clock;
use crate::stores::cache::MemoryCacheBackend;
use crate::stores::dedup::MemoryDedupStore;
use crate::telemetry::BreakerState;
use crate::telemetry::CountingTelemetry;

const TTL: Duration = Duration::from_secs(60);

/// A primary backend that fails (or hangs) on demand and counts the calls it sees.
#[derive(Default)]
struct Switch {
    down: AtomicBool,
    hang: AtomicBool,
    calls: AtomicU32,
    /// Fail this many more calls, then work.
    fail_next: AtomicU32,
}

impl Switch {
    async fn gate(&self) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let forced = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if forced || self.down.load(Ordering::SeqCst) {
            return Err(ObserverError::store("test", "primary down"));
        }
        Ok(())
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl HealthProbe for Switch {
    async fn ping(&self) -> Result<()> {
        self.gate().await
    }
}

struct FlakyDedup {
    switch: Arc<Switch>,
    inner: MemoryDedupStore,
}

#[async_trait]
impl DedupStore for FlakyDedup {
    async fn claim(&self, key: &str, owner: &str, ttl: Duration) -> Result<ClaimOutcome> {
        self.switch.gate().await?;
        self.inner.claim(key, owner, ttl).await
    }
    async fn complete(&self, key: &str, window: Duration) -> Result<()> {
        self.switch.gate().await?;
        self.inner.complete(key, window).await
    }
    async fn release(&self, key: &str) -> Result<()> {
        self.switch.gate().await?;
        self.inner.release(key).await
    }
}

struct FlakyCache {
    switch: Arc<Switch>,
    inner: MemoryCacheBackend,
}

#[async_trait]
impl CacheBackend for FlakyCache {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.switch.gate().await?;
        self.inner.get(key).await
    }
    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<()> {
        self.switch.gate().await?;
        self.inner.set(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        self.switch.gate().await?;
        self.inner.delete(key).await
    }
    async fn delete_pattern(&self, pattern: &str) -> Result<u64> {
        self.switch.gate().await?;
        self.inner.delete_pattern(pattern).await
    }
    fn stats(&self) -> CacheStats {
        self.inner.stats()
    }
}

struct Rig {
    switch: Arc<Switch>,
    resilience: Arc<Resilience>,
    primary: Arc<FlakyDedup>,
    store: FallbackDedupStore,
    telemetry: Arc<CountingTelemetry>,
}

fn config(mode: FallbackMode) -> ResilienceConfig {
    let mut c = ResilienceConfig {
        mode,
        op_timeout: Duration::from_millis(200),
        ..ResilienceConfig::default()
    };
    c.breaker.open_duration = Duration::from_millis(50);
    c.breaker.jitter = 0.0;
    c.breaker.minimum_calls = 3;
    c.breaker.window_size = 3;
    c.breaker.success_threshold = 1;
    c
}

fn rig(mode: FallbackMode) -> Rig {
    rig_with(config(mode))
}

fn rig_with(config: ResilienceConfig) -> Rig {
    let switch = Arc::new(Switch::default());
    let telemetry = CountingTelemetry::new();
    let resilience = Resilience::new("test", config, telemetry.clone());
    let primary = Arc::new(FlakyDedup {
        switch: switch.clone(),
        inner: MemoryDedupStore::new(1000, system_clock()),
    });
    let store = FallbackDedupStore::new(
        resilience.clone(),
        primary.clone(),
        Arc::new(MemoryDedupStore::new(1000, system_clock())),
    );
    Rig {
        switch,
        resilience,
        primary,
        store,
        telemetry,
    }
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Processes one event the way the executor does: claim, then complete.
async fn process(store: &FallbackDedupStore, key: &str) -> ClaimOutcome {
    let outcome = store.claim(key, "run", TTL).await.unwrap();
    if outcome == ClaimOutcome::Acquired {
        store.complete(key, TTL).await.unwrap();
    }
    outcome
}

#[tokio::test]
async fn circuit_breaker_mode_falls_back_opens_and_replays_on_recovery() {
    let r = rig(FallbackMode::CircuitBreaker);
    assert_eq!(process(&r.store, "before").await, ClaimOutcome::Acquired);
    r.switch.set_down(true);
    // Every call succeeds, served by the fallback.
    for i in 0..10 {
        assert_eq!(
            process(&r.store, &format!("k{i}")).await,
            ClaimOutcome::Acquired
        );
    }
    assert_eq!(r.resilience.breaker().state(), BreakerState::Open);
    let calls_when_open = r.switch.calls();
    assert_eq!(process(&r.store, "k-open").await, ClaimOutcome::Acquired);
    assert_eq!(
        r.switch.calls(),
        calls_when_open,
        "open: primary not called"
    );
    assert_eq!(r.telemetry.count("fallback_activated"), 1, "alerted once");
    assert_eq!(r.telemetry.count("breaker/test/open"), 1);
    assert!(r.resilience.status().on_fallback);
    assert_eq!(r.store.pending_replay(), 11, "completions journalled");
    // Within the outage the fallback deduplicates.
    assert_eq!(process(&r.store, "k3").await, ClaimOutcome::AlreadyDone);

    r.switch.set_down(false);
    eventually("primary serves again", async || {
        process(&r.store, "after").await;
        !r.resilience.status().on_fallback
    })
    .await;
    assert_eq!(r.store.pending_replay(), 0);
    assert_eq!(r.resilience.breaker().state(), BreakerState::Closed);
    for i in 0..10 {
        assert_eq!(
            r.primary
                .inner
                .claim(&format!("k{i}"), "x", TTL)
                .await
                .unwrap(),
            ClaimOutcome::AlreadyDone,
            "k{i} replayed to the primary"
        );
    }
    assert_eq!(r.telemetry.count("fallback_recovered"), 1);
    assert!(r.telemetry.count("fallback_replayed") >= 1);
    // Also counts `after` if its first try still found the breaker open.
    assert!(r.resilience.status().replayed_total >= 11);
}

#[tokio::test]
async fn immediate_mode_stays_on_the_fallback_until_probes_are_healthy() {
    let r = rig(FallbackMode::Immediate);
    r.switch.set_down(true);
    assert_eq!(process(&r.store, "a").await, ClaimOutcome::Acquired);
    let calls = r.switch.calls();
    assert_eq!(calls, 1, "one failed attempt, then the fallback");
    r.switch.set_down(false);
    assert_eq!(process(&r.store, "b").await, ClaimOutcome::Acquired);
    assert_eq!(r.switch.calls(), calls, "degraded: primary not tried");

    // Health monitor: the default thresholds are 3 failures / 2 successes, but the verdict
    // only needs to be healthy (it never turned unhealthy), so one good probe replays.
    assert!(r.resilience.check(r.switch.as_ref()).await);
    assert_eq!(r.store.pending_replay(), 0);
    assert_eq!(
        r.primary.inner.claim("a", "x", TTL).await.unwrap(),
        ClaimOutcome::AlreadyDone
    );
    assert_eq!(process(&r.store, "c").await, ClaimOutcome::Acquired);
    assert!(!r.resilience.status().on_fallback);
    assert_eq!(
        r.primary.inner.claim("c", "x", TTL).await.unwrap(),
        ClaimOutcome::AlreadyDone
    );
}

#[tokio::test]
async fn after_retries_mode_retries_before_falling_back() {
    let r = rig(FallbackMode::AfterRetries(2));
    r.switch.fail_next.store(2, Ordering::SeqCst);
    assert_eq!(process(&r.store, "a").await, ClaimOutcome::Acquired);
    assert_eq!(
        r.telemetry.count("fallback_activated"),
        0,
        "third try worked"
    );
    assert_eq!(
        r.primary.inner.claim("a", "x", TTL).await.unwrap(),
        ClaimOutcome::AlreadyDone
    );
    r.switch.set_down(true);
    let before = r.switch.calls();
    assert_eq!(process(&r.store, "b").await, ClaimOutcome::Acquired);
    assert_eq!(
        r.switch.calls() - before,
        3,
        "1 try + 2 retries, then degraded"
    );
    assert_eq!(r.telemetry.count("fallback_activated"), 1);
}

#[tokio::test]
async fn health_based_mode_follows_the_monitor_thresholds() {
    let r = rig(FallbackMode::HealthBased);
    r.switch.set_down(true);
    // Thresholds: unhealthy after 3 failed probes.
    assert!(r.resilience.check(r.switch.as_ref()).await);
    assert!(r.resilience.check(r.switch.as_ref()).await);
    assert!(!r.resilience.check(r.switch.as_ref()).await);
    assert_eq!(r.telemetry.count("health_state_changed"), 1);
    assert_eq!(r.telemetry.count("health_check"), 3);
    let calls = r.switch.calls();
    assert_eq!(process(&r.store, "a").await, ClaimOutcome::Acquired);
    assert_eq!(r.switch.calls(), calls, "unhealthy: primary not called");

    r.switch.set_down(false);
    // Healthy again after 2 good probes; the second replays.
    assert!(!r.resilience.check(r.switch.as_ref()).await);
    assert_eq!(r.store.pending_replay(), 1);
    assert!(r.resilience.check(r.switch.as_ref()).await);
    assert_eq!(r.store.pending_replay(), 0);
    assert_eq!(r.telemetry.count("health_state_changed"), 2);
    assert!(r.resilience.status().last_probe_latency.is_some());
}

#[tokio::test]
async fn a_hanging_primary_costs_at_most_the_operation_timeout() {
    let r = rig(FallbackMode::CircuitBreaker);
    r.switch.hang.store(true, Ordering::SeqCst);
    // Paused-free: the op timeout is 200 ms, the test only asserts the outcome.
    assert_eq!(process(&r.store, "a").await, ClaimOutcome::Acquired);
    assert!(r.resilience.status().on_fallback);
    assert!(!r.resilience.check(r.switch.as_ref()).await || r.resilience.is_healthy());
}

#[tokio::test]
async fn health_monitor_runs_until_its_guard_is_dropped() {
    let mut c = config(FallbackMode::HealthBased);
    c.health.interval = Duration::from_millis(10);
    let r = rig_with(c);
    r.switch.set_down(true);
    let guard = r.resilience.spawn_health_monitor(r.switch.clone());
    eventually("monitor marks the primary unhealthy", async || {
        !r.resilience.is_healthy()
    })
    .await;
    r.switch.set_down(false);
    eventually("monitor marks it healthy again", async || {
        r.resilience.is_healthy()
    })
    .await;
    drop(guard);
    tokio::time::sleep(Duration::from_millis(30)).await;
    let calls = r.switch.calls();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(r.switch.calls(), calls, "stopped");
}

#[tokio::test]
async fn cache_writes_and_invalidations_made_on_the_fallback_are_replayed() {
    let switch = Arc::new(Switch::default());
    let resilience = Resilience::new(
        "test",
        config(FallbackMode::Immediate),
        CountingTelemetry::new(),
    );
    let primary = Arc::new(FlakyCache {
        switch: switch.clone(),
        inner: MemoryCacheBackend::new(100, system_clock()),
    });
    let cache = FallbackCache::new(
        resilience.clone(),
        primary.clone(),
        Arc::new(MemoryCacheBackend::new(100, system_clock())),
    );
    cache.set("user:1:a", vec![1], TTL).await.unwrap();
    cache.set("user:1:b", vec![1], TTL).await.unwrap();
    switch.set_down(true);
    assert_eq!(
        cache.get("user:1:a").await.unwrap(),
        None,
        "fallback is cold"
    );
    assert_eq!(cache.delete_pattern("user:1:*").await.unwrap(), 0);
    cache.set("user:2:a", vec![2], TTL).await.unwrap();
    assert_eq!(cache.get("user:2:a").await.unwrap(), Some(vec![2]));
    assert_eq!(cache.pending_replay(), 2, "reads are not journalled");
    switch.set_down(false);
    assert!(resilience.check(switch.as_ref()).await);
    assert_eq!(cache.pending_replay(), 0);
    assert_eq!(
        primary.inner.get("user:1:a").await.unwrap(),
        None,
        "invalidated"
    );
    assert_eq!(primary.inner.get("user:1:b").await.unwrap(), None);
    assert_eq!(primary.inner.get("user:2:a").await.unwrap(), Some(vec![2]));
    assert_eq!(cache.get("user:2:a").await.unwrap(), Some(vec![2]));
}

#[tokio::test]
async fn the_journal_is_bounded() {
    let mut c = config(FallbackMode::Immediate);
    c.max_replay = 5;
    let r = rig_with(c);
    r.switch.set_down(true);
    for i in 0..20 {
        process(&r.store, &format!("k{i}")).await;
    }
    assert_eq!(r.store.pending_replay(), 5);
    r.switch.set_down(false);
    assert!(r.resilience.check(r.switch.as_ref()).await);
    // The newest five made it.
    assert_eq!(
        r.primary.inner.claim("k19", "x", TTL).await.unwrap(),
        ClaimOutcome::AlreadyDone
    );
    assert_eq!(
        r.primary.inner.claim("k0", "x", TTL).await.unwrap(),
        ClaimOutcome::Acquired
    );
}

#[tokio::test]
async fn healthy_probes_close_an_open_breaker_without_waiting_for_traffic() {
    let mut c = config(FallbackMode::CircuitBreaker);
    c.breaker.open_duration = Duration::from_secs(600);
    c.breaker.max_open_duration = Duration::from_secs(600);
    let r = rig_with(c);
    r.switch.set_down(true);
    for i in 0..5 {
        process(&r.store, &format!("k{i}")).await;
    }
    assert_eq!(r.resilience.breaker().state(), BreakerState::Open);
    r.switch.set_down(false);
    // The verdict never turned unhealthy, but closing needs `healthy_threshold` good probes.
    r.resilience.check(r.switch.as_ref()).await;
    assert_eq!(r.resilience.breaker().state(), BreakerState::Open);
    r.resilience.check(r.switch.as_ref()).await;
    assert_eq!(r.resilience.breaker().state(), BreakerState::Closed);
    assert_eq!(r.telemetry.count("fallback_recovered"), 1);
    assert_eq!(r.store.pending_replay(), 0);
}

#[tokio::test]
async fn operations_replay_in_small_batches_and_keep_the_order() {
    let r = rig(FallbackMode::HealthBased);
    r.switch.set_down(true);
    // Unhealthy after three failed probes: everything goes to the fallback.
    for _ in 0..3 {
        r.resilience.check(r.switch.as_ref()).await;
    }
    for i in 0..600 {
        process(&r.store, &format!("k{i}")).await;
    }
    assert_eq!(r.store.pending_replay(), 600);
    r.switch.set_down(false);
    // Force the verdict back without the monitor's replay, to see the operations' own.
    r.resilience.healthy.store(true, Ordering::SeqCst);
    // Each operation replays at most 256 writes; while some remain it is served by the fallback.
    assert_eq!(process(&r.store, "x1").await, ClaimOutcome::Acquired);
    // Claim and complete replayed 256 each; the completion, served by the fallback, queued one.
    assert_eq!(r.store.pending_replay(), 600 - 2 * 256 + 1);
    let mut rounds = 0;
    while r.store.pending_replay() > 0 {
        process(&r.store, &format!("y{rounds}")).await;
        rounds += 1;
        assert!(rounds < 10, "replay makes progress");
    }
    assert_eq!(
        r.primary.inner.claim("k599", "x", TTL).await.unwrap(),
        ClaimOutcome::AlreadyDone
    );
    assert_eq!(process(&r.store, "z").await, ClaimOutcome::Acquired);
    assert_eq!(
        r.primary.inner.claim("z", "x", TTL).await.unwrap(),
        ClaimOutcome::AlreadyDone,
        "served by the primary once the journal is empty"
    );
}
