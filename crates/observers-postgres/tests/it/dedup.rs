//! `PostgresDedupStore` against the shared dedup suite (`observers_core::testkit::dedup`), the
//! same functions the in-memory and Redis stores pass, plus expiry purging.

use std::sync::Arc;
use std::time::Duration;

use observers_core::stores::dedup::{ClaimOutcome, DedupStore};
use observers_core::testkit::dedup as suite;
use observers_postgres::PostgresDedupStore;
use sqlx::PgPool;

fn store(pool: PgPool) -> Arc<dyn DedupStore> {
    Arc::new(PostgresDedupStore::new(pool))
}

#[sqlx::test(migrations = "../../migrations")]
async fn lifecycle(pool: PgPool) {
    suite::lifecycle(store(pool)).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn takes_over_a_dead_owners_claim(pool: PgPool) {
    suite::takes_over_a_dead_owners_claim(store(pool)).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn concurrent_claims_have_one_winner(pool: PgPool) {
    suite::concurrent_claims_have_one_winner(store(pool)).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn claims_and_done_marks_expire(pool: PgPool) {
    suite::claims_and_done_marks_expire(store(pool)).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn expired_rows_are_purged(pool: PgPool) {
    let s = PostgresDedupStore::new(pool.clone());
    s.complete("old", Duration::from_millis(1)).await.unwrap();
    s.complete("live", Duration::from_secs(60)).await.unwrap();
    observers_core::testkit::eventually("old row expired", Duration::from_secs(5), || async {
        s.claim("probe", "x", Duration::from_secs(60))
            .await
            .unwrap();
        let expired: i64 =
            sqlx::query_scalar("SELECT count(*) FROM observer_dedup WHERE expires_at <= now()")
                .fetch_one(&pool)
                .await
                .unwrap();
        expired >= 1
    })
    .await;
    assert_eq!(s.purge_expired(100).await.unwrap(), 1);
    assert_eq!(
        s.claim("live", "x", Duration::from_secs(60)).await.unwrap(),
        ClaimOutcome::AlreadyDone
    );
}
