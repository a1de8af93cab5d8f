//! The dedup suite (`observers_core::testkit::dedup`, shared with PostgreSQL): the two-phase
//! claim behaves the same in memory and on Redis.

use std::sync::Arc;
use std::time::Duration;

use observers_core::clock::system_clock;
use observers_core::stores::dedup::{ClaimOutcome, DedupStore, MemoryDedupStore};
use observers_redis::RedisDedupStore;
use redis::aio::ConnectionManager;

use crate::for_each_backend;
use crate::support::unique_prefix;

const TTL: Duration = Duration::from_secs(60);

fn memory_store() -> Arc<dyn DedupStore> {
    Arc::new(MemoryDedupStore::new(10_000, system_clock()))
}

fn redis_store(conn: ConnectionManager) -> Arc<dyn DedupStore> {
    Arc::new(RedisDedupStore::new(conn).with_prefix(unique_prefix("dedup")))
}

use observers_core::testkit::dedup as suite;

async fn lifecycle(s: Arc<dyn DedupStore>) {
    suite::lifecycle(s).await;
}
for_each_backend!(lifecycle, memory_store(), redis_store);

async fn takes_over_a_dead_owners_claim(s: Arc<dyn DedupStore>) {
    suite::takes_over_a_dead_owners_claim(s).await;
}
for_each_backend!(takes_over_a_dead_owners_claim, memory_store(), redis_store);

async fn concurrent_claims_have_one_winner(s: Arc<dyn DedupStore>) {
    suite::concurrent_claims_have_one_winner(s).await;
}
for_each_backend!(
    concurrent_claims_have_one_winner,
    memory_store(),
    redis_store
);

async fn claims_and_done_marks_expire(s: Arc<dyn DedupStore>) {
    suite::claims_and_done_marks_expire(s).await;
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
