//! Conformance suites shared by every store implementation (feature `testkit`, for tests only):
//! the in-memory stores, Redis and PostgreSQL run the same functions, so they behave alike.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::Duration;

/// Polls `check` until it returns true; panics after `deadline`.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "{what}: not true within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The `DedupStore` suite. Each function takes a fresh, empty store.
pub mod dedup {
    use std::sync::Arc;
    use std::time::Duration;

    use super::eventually;
    use crate::stores::dedup::{ClaimOutcome, DedupStore};

    const TTL: Duration = Duration::from_secs(60);
    const SHORT: Duration = Duration::from_millis(200);
    const DEADLINE: Duration = Duration::from_secs(5);

    async fn claim(s: &dyn DedupStore, key: &str, owner: &str, ttl: Duration) -> ClaimOutcome {
        s.claim(key, owner, ttl).await.unwrap()
    }

    pub async fn lifecycle(s: Arc<dyn DedupStore>) {
        use ClaimOutcome::{Acquired, AlreadyDone, InProgress};
        let s = &*s;
        assert_eq!(claim(s, "k", "run1", TTL).await, Acquired);
        assert_eq!(claim(s, "k", "run1", TTL).await, InProgress, "same owner");
        assert_eq!(
            claim(s, "other", "run1", TTL).await,
            Acquired,
            "keys are independent"
        );
        s.complete("k", TTL).await.unwrap();
        for owner in ["run1", "run2"] {
            assert_eq!(claim(s, "k", owner, TTL).await, AlreadyDone, "{owner}");
        }
        s.release("k").await.unwrap();
        assert_eq!(claim(s, "k", "run2", TTL).await, Acquired, "released");
        s.release("never-claimed").await.unwrap();
    }

    pub async fn takes_over_a_dead_owners_claim(s: Arc<dyn DedupStore>) {
        let s = &*s;
        assert_eq!(claim(s, "k", "dead-run", TTL).await, ClaimOutcome::Acquired);
        assert_eq!(claim(s, "k", "new-run", TTL).await, ClaimOutcome::Acquired);
        // The key now belongs to the new run: it sees its own claim.
        assert_eq!(
            claim(s, "k", "new-run", TTL).await,
            ClaimOutcome::InProgress
        );
        s.complete("k", TTL).await.unwrap();
        assert_eq!(
            claim(s, "k", "dead-run", TTL).await,
            ClaimOutcome::AlreadyDone
        );
    }

    /// Many tasks claim one key at once: exactly one wins, the rest see it in progress.
    pub async fn concurrent_claims_have_one_winner(s: Arc<dyn DedupStore>) {
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.claim("contended", "same-run", TTL).await.unwrap() })
            })
            .collect();
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await.unwrap());
        }
        let won = outcomes
            .iter()
            .filter(|o| **o == ClaimOutcome::Acquired)
            .count();
        assert_eq!(won, 1, "{outcomes:?}");
        assert!(outcomes.iter().all(|o| *o != ClaimOutcome::AlreadyDone));
    }

    pub async fn claims_and_done_marks_expire(s: Arc<dyn DedupStore>) {
        let s = &*s;
        assert_eq!(claim(s, "p", "run", SHORT).await, ClaimOutcome::Acquired);
        assert_eq!(claim(s, "p", "run", SHORT).await, ClaimOutcome::InProgress);
        // An InProgress answer writes nothing, so polling does not extend the claim.
        eventually("in-progress claim expires", DEADLINE, || async {
            claim(s, "p", "run", SHORT).await == ClaimOutcome::Acquired
        })
        .await;

        assert_eq!(claim(s, "d", "run", TTL).await, ClaimOutcome::Acquired);
        s.complete("d", SHORT).await.unwrap();
        assert_eq!(claim(s, "d", "run", TTL).await, ClaimOutcome::AlreadyDone);
        eventually("done mark expires", DEADLINE, || async {
            claim(s, "d", "run", TTL).await == ClaimOutcome::Acquired
        })
        .await;
    }
}

/// The action-cache suite (`CachedActionExecutor` and the `cache` action) over any
/// `CacheBackend`. The backend must be empty.
pub mod action_cache {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use async_trait::async_trait;
    use serde_json::json;

    use crate::ObserverExecutor;
    use crate::actions::{Action, ActionResult, CacheAction, Invocation};
    use crate::config::CacheActionConfig;
    use crate::error::{ObserverError, Result};
    use crate::event::{EntityEvent, EventKind};
    use crate::executor::{ActionSlot, CachedActionExecutor, CompiledObserver, ObserverSet};
    use crate::retry::RetryPolicy;
    use crate::stores::cache::CacheBackend;
    use crate::telemetry::CountingTelemetry;

    /// Counts its runs; fails (permanently) while `fail` is set.
    struct Probe {
        kind: &'static str,
        runs: AtomicUsize,
        fail: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl Action for Probe {
        fn type_name(&self) -> &'static str {
            self.kind
        }

        async fn execute(&self, inv: &Invocation<'_>) -> Result<ActionResult> {
            let n = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
            if self.fail.load(Ordering::SeqCst) {
                return Err(ObserverError::permanent("OBS-TEST", "refused"));
            }
            Ok(ActionResult::new(format!("run {n} for {}", inv.event.id)))
        }
    }

    fn probe(kind: &'static str) -> Arc<Probe> {
        Arc::new(Probe {
            kind,
            runs: AtomicUsize::new(0),
            fail: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn event(id: i64, entity_id: &str, kind: EventKind, total: i64) -> EntityEvent {
        EntityEvent::new(
            id,
            "Order",
            entity_id,
            kind,
            None,
            Some(json!({ "total": total })),
        )
    }

    pub async fn caches_successes_and_invalidates(backend: Arc<dyn CacheBackend>) {
        let telemetry = CountingTelemetry::new();
        let cache = Arc::new(CachedActionExecutor::new(
            backend.clone(),
            Duration::from_secs(60),
            BTreeMap::from([("webhook".to_owned(), Duration::from_secs(30))]),
            telemetry.clone(),
        ));
        assert_eq!(cache.ttl_for("webhook"), Duration::from_secs(30));
        assert_eq!(cache.ttl_for("log"), Duration::from_secs(60));
        let hook = probe("webhook");
        let mail = probe("email");
        mail.fail.store(true, Ordering::SeqCst);
        let invalidate = CacheAction::new(
            &CacheActionConfig {
                keys: vec!["product:{{ entity_id }}".into()],
                patterns: vec!["search:{{ new.total }}:*".into()],
                invalidate_entity: true,
                invalidate_action_types: vec![],
            },
            Some(cache.clone()),
        )
        .unwrap();
        let observers = vec![
            CompiledObserver::new("o", "Order", vec![EventKind::Insert, EventKind::Update])
                .with_action(ActionSlot::new(hook.clone(), "hook"))
                .with_action(ActionSlot::new(mail.clone(), "mail")),
            CompiledObserver::new("inv", "Order", vec![EventKind::Delete])
                .with_action(ActionSlot::new(Arc::new(invalidate), "invalidate")),
        ];
        let exec = ObserverExecutor::builder(ObserverSet::new(
            observers,
            RetryPolicy::none(),
            Duration::from_secs(5),
        ))
        .telemetry(telemetry.clone())
        .action_cache(cache.clone())
        .build();

        // First run: a miss, the action runs; the same content again (new event id) is a hit.
        let first = exec
            .process(&event(1, "7", EventKind::Insert, 5))
            .await
            .unwrap();
        assert_eq!(first.actions[0].detail.as_deref(), Some("run 1 for 1"));
        let again = exec
            .process(&event(2, "7", EventKind::Insert, 5))
            .await
            .unwrap();
        assert_eq!(hook.runs.load(Ordering::SeqCst), 1, "served from the cache");
        assert_eq!(again.actions[0].attempts, 0);
        assert_eq!(
            again.actions[0].detail.as_deref(),
            Some("cached: run 1 for 1")
        );
        // Failures are never cached: the email action ran both times.
        assert_eq!(mail.runs.load(Ordering::SeqCst), 2);
        assert_eq!(telemetry.count("cache_hit"), 1);
        assert_eq!(telemetry.count("cache_miss"), 3);

        // A different change to the same entity is not a hit.
        exec.process(&event(3, "7", EventKind::Update, 6))
            .await
            .unwrap();
        assert_eq!(hook.runs.load(Ordering::SeqCst), 2);
        // Another entity neither.
        exec.process(&event(4, "8", EventKind::Insert, 5))
            .await
            .unwrap();
        assert_eq!(hook.runs.load(Ordering::SeqCst), 3);

        // The cache action: templated key, templated pattern, and the entity's results.
        let ttl = Duration::from_secs(60);
        backend.set("product:7", vec![1], ttl).await.unwrap();
        backend.set("search:9:a", vec![1], ttl).await.unwrap();
        backend.set("search:9:b", vec![1], ttl).await.unwrap();
        backend.set("search:10:a", vec![1], ttl).await.unwrap();
        let done = exec
            .process(&event(5, "7", EventKind::Delete, 9))
            .await
            .unwrap();
        // product:7, search:9:a, search:9:b, and entity 7's two cached webhook results.
        assert_eq!(
            done.actions[0].detail.as_deref(),
            Some("invalidated 5 entries")
        );
        assert!(backend.get("search:10:a").await.unwrap().is_some());
        assert!(telemetry.count("cache_eviction") >= 3);
        exec.process(&event(6, "7", EventKind::Insert, 5))
            .await
            .unwrap();
        assert_eq!(hook.runs.load(Ordering::SeqCst), 4, "entity 7 invalidated");
        exec.process(&event(7, "8", EventKind::Insert, 5))
            .await
            .unwrap();
        assert_eq!(hook.runs.load(Ordering::SeqCst), 4, "entity 8 still cached");

        // By action type.
        assert_eq!(cache.invalidate_action_type("webhook").await.unwrap(), 2);
        exec.process(&event(8, "8", EventKind::Insert, 5))
            .await
            .unwrap();
        assert_eq!(hook.runs.load(Ordering::SeqCst), 5);
        assert_eq!(cache.invalidate_action_type("email").await.unwrap(), 0);
    }

    /// Entity ids full of glob characters invalidate only themselves.
    pub async fn entity_invalidation_escapes_globs(backend: Arc<dyn CacheBackend>) {
        let cache = CachedActionExecutor::new(
            backend.clone(),
            Duration::from_secs(60),
            BTreeMap::new(),
            Arc::new(crate::telemetry::NoopTelemetry),
        );
        let tricky = event(1, "a*[b]?", EventKind::Insert, 1);
        let plain = event(2, "aX[b]Y", EventKind::Insert, 1);
        for e in [&tricky, &plain] {
            let key = CachedActionExecutor::key(e, "o", 0, "webhook");
            cache.store(&key, "webhook", "ok").await;
        }
        assert_eq!(cache.invalidate_entity("Order", "a*[b]?").await.unwrap(), 1);
        let key = CachedActionExecutor::key(&plain, "o", 0, "webhook");
        assert_eq!(cache.lookup(&key, "webhook").await.as_deref(), Some("ok"));
    }
}

/// The hybrid-cache suite: every strategy over a memory local layer and the given remote.
pub mod hybrid {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::clock::system_clock;
    use crate::stores::cache::{CacheBackend, MemoryCacheBackend};
    use crate::stores::hybrid::{HybridCache, HybridStrategy};

    const TTL: Duration = Duration::from_secs(60);

    pub async fn strategies(remote: Arc<dyn CacheBackend>) {
        for strategy in [
            HybridStrategy::WriteThrough,
            HybridStrategy::WriteBehind,
            HybridStrategy::ReadThrough,
            HybridStrategy::CacheAside,
        ] {
            let local = Arc::new(MemoryCacheBackend::new(100, system_clock()));
            let h = HybridCache::new(local.clone(), remote.clone(), strategy, TTL);
            let k = |s: &str| format!("{strategy:?}:{s}");

            h.set(&k("a"), b"1".to_vec(), TTL).await.unwrap();
            assert_eq!(
                h.get(&k("a")).await.unwrap(),
                Some(b"1".to_vec()),
                "{strategy:?}"
            );
            h.flush().await;
            assert_eq!(
                remote.get(&k("a")).await.unwrap(),
                Some(b"1".to_vec()),
                "{strategy:?}: reaches the remote"
            );
            let local_has_a = local.get(&k("a")).await.unwrap().is_some();
            match strategy {
                HybridStrategy::WriteThrough | HybridStrategy::WriteBehind => {
                    assert!(local_has_a, "{strategy:?}: written locally too");
                }
                HybridStrategy::ReadThrough => {
                    assert!(local_has_a, "{strategy:?}: the read kept a local copy");
                }
                HybridStrategy::CacheAside => assert!(!local_has_a, "cache-aside: remote only"),
            }

            // Written by someone else (another instance): every strategy finds it.
            remote.set(&k("b"), b"2".to_vec(), TTL).await.unwrap();
            assert_eq!(
                h.get(&k("b")).await.unwrap(),
                Some(b"2".to_vec()),
                "{strategy:?}"
            );

            // Invalidation reaches both layers.
            h.set(&k("c"), b"3".to_vec(), TTL).await.unwrap();
            assert!(h.delete(&k("c")).await.unwrap());
            assert_eq!(h.get(&k("c")).await.unwrap(), None, "{strategy:?}");
            assert_eq!(remote.get(&k("c")).await.unwrap(), None, "{strategy:?}");
            assert!(h.delete_pattern(&format!("{strategy:?}:*")).await.unwrap() >= 2);
            assert_eq!(h.get(&k("a")).await.unwrap(), None, "{strategy:?}");
            assert_eq!(local.get(&k("a")).await.unwrap(), None, "{strategy:?}");
            assert!(h.set(&k("z"), vec![1], Duration::ZERO).await.is_err());
        }
    }
}
