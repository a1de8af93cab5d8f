//! The dedup suite: the two-phase claim behaves the same in memory and on Redis.

use std::sync::Arc;
use std::time::Duration;

use observers_core::clock::system_clock;
use observers_core::stores::dedup::{ClaimOutcome, DedupStore, MemoryDedupStore};
use observers_redis::RedisDedupStore;
use redis::aio::ConnectionManager;

use crate::for_each_backend;
use crate::support::{eventually, unique_prefix};

const TTL: Duration = Duration::from_secs(60);
const SHORT: Duration = Duration::from_millis(200);
const DEADLINE: Duration = Duration::from_secs(5);

fn memory_store() -> Arc<dyn DedupStore> {
    Arc::new(MemoryDedupStore::new(10_000, system_clock()))
}

fn redis_store(conn: ConnectionManager) -> Arc<dyn DedupStore> {
    Arc::new(RedisDedupStore::new(conn).with_prefix(unique_prefix("dedup")))
}

async fn claim(s: &dyn DedupStore, key: &str, owner: &str, ttl: Duration) -> ClaimOutcome {
    s.claim(key, owner, ttl).await.unwrap()
}

async fn lifecycle(s: Arc<dyn DedupStore>) {
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
for_each_backend!(lifecycle, memory_store(), redis_store);

async fn takes_over_a_dead_owners_claim(s: Arc<dyn DedupStore>) {
    let s = &*s;
    assert_eq!(claim(s, "k", "dead-run", TTL).await, ClaimOutcome::Acquired);
    assert_eq!(claim(s, "k", "new-run", TTL).await, ClaimOutcome::Acquired);
    // The key now belongs to the new run: it sees its own claim, the old run is taken over again.
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
for_each_backend!(takes_over_a_dead_owners_claim, memory_store(), redis_store);

async fn concurrent_claims_have_one_winner(s: Arc<dyn DedupStore>) {
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
for_each_backend!(
    concurrent_claims_have_one_winner,
    memory_store(),
    redis_store
);

async fn claims_and_done_marks_expire(s: Arc<dyn DedupStore>) {
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
for_each_backend!(claims_and_done_marks_expire, memory_store(), redis_store);

/// Redis only: the prefix namespaces keys, so two stores never see each other's claims.
#[tokio::test]
async fn redis_prefixes_isolate_stores() {
    let Some(conn) = crate::support::redis().await else {
        return;
    };
    let a = RedisDedupStore::new(conn.clone()).with_prefix(unique_prefix("dedup-a"));
    let b = RedisDedupStore::new(conn).with_prefix(unique_prefix("dedup-b"));
    a.claim("k", "run", TTL).await.unwrap();
    a.complete("k", TTL).await.unwrap();
    assert_eq!(
        b.claim("k", "run", TTL).await.unwrap(),
        ClaimOutcome::Acquired
    );
    assert_eq!(
        a.claim("k", "run", TTL).await.unwrap(),
        ClaimOutcome::AlreadyDone
    );
}
