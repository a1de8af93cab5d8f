//! Migration 007 on a database that already holds jobs in the old layout: completed rows move to
//! `observer_jobs_completed` with their run times, every key stays claimed, and the queue keeps
//! working on the result.

use observers_core::stores::jobs::{JobQueue, JobStatus, NewJob};
use observers_postgres::MIGRATOR;
use observers_queue::PostgresJobQueue;
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test(migrations = false)]
async fn migration_007_moves_completed_jobs_and_keeps_their_keys(pool: PgPool) {
    MIGRATOR.run_to(20_260_101_000_006, &pool).await.unwrap();
    sqlx::query(
        "INSERT INTO observer_jobs (kind, payload, unique_key, status, started_at, completed_at) \
         VALUES ('email', '{}', 'done-key', 'completed', \
                 now() - interval '3 seconds', now() - interval '1 second'), \
                ('email', '{}', NULL, 'completed', \
                 now() - interval '3 seconds', now() - interval '1 second'), \
                ('email', '{}', 'live-key', 'pending', NULL, NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    MIGRATOR.run(&pool).await.unwrap();

    let q = PostgresJobQueue::new(pool.clone());
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.pending, stats.completed), (1, 2));
    let avg = stats.avg_run_ms.unwrap();
    assert!((avg - 2000.0).abs() < 1.0, "avg_run_ms {avg}");
    let job = |key: &str| NewJob::new("default", "email", json!({})).with_unique_key(key);
    for key in ["done-key", "live-key"] {
        assert!(
            q.enqueue(job(key)).await.unwrap().is_duplicate(),
            "{key} stays taken"
        );
    }
    assert_eq!(
        q.list(Some(JobStatus::Completed), 10).await.unwrap().len(),
        2
    );

    let live = q.dequeue("default", "w", 10).await.unwrap();
    assert_eq!(live.len(), 1);
    q.complete("w", live[0].id).await.unwrap();
    let stats = q.stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.processing, stats.completed),
        (0, 0, 3)
    );
    assert_eq!(q.purge(JobStatus::Completed).await.unwrap(), 3);
    assert!(
        !q.enqueue(job("done-key")).await.unwrap().is_duplicate(),
        "purge freed the key"
    );
}
