//! Per-queue depth (`queue_depths`): counts by status per queue, and the wait of the oldest due
//! pending job (a job scheduled for later is pending but not waiting).

use chrono::TimeDelta;
use observers_core::stores::jobs::{JobQueue, NewJob};
use observers_queue::{PostgresJobQueue, queue_depths};
use serde_json::json;
use sqlx::PgPool;

use crate::support::now_us;

#[sqlx::test(migrations = "../../migrations")]
async fn depths_count_each_queue_and_age_only_due_jobs(pool: PgPool) {
    assert!(queue_depths(&pool).await.unwrap().is_empty());
    let q = PostgresJobQueue::new(pool.clone());
    let now = now_us();
    q.enqueue(NewJob::new("mail", "email", json!({})).with_run_at(now - TimeDelta::seconds(120)))
        .await
        .unwrap();
    q.enqueue(NewJob::new("mail", "email", json!({})).with_run_at(now + TimeDelta::seconds(3600)))
        .await
        .unwrap();
    q.enqueue(NewJob::new("mail", "email", json!({})))
        .await
        .unwrap();
    q.enqueue(
        NewJob::new("hooks", "webhook", json!({})).with_run_at(now + TimeDelta::seconds(3600)),
    )
    .await
    .unwrap();
    let taken = q.dequeue("mail", "w1", 1).await.unwrap();
    assert_eq!(taken.len(), 1, "the overdue job");
    q.enqueue(NewJob::new("mail", "email", json!({})).with_max_attempts(1))
        .await
        .unwrap();
    let failing = q.dequeue("mail", "w1", 1).await.unwrap();
    q.fail("w1", failing[0].id, "no", None).await.unwrap();

    let depths = queue_depths(&pool).await.unwrap();
    let names: Vec<&str> = depths.iter().map(|d| d.queue.as_str()).collect();
    assert_eq!(names, ["hooks", "mail"]);
    let (hooks, mail) = (&depths[0], &depths[1]);
    assert_eq!((hooks.pending, hooks.processing, hooks.failed), (1, 0, 0));
    assert_eq!(hooks.oldest_pending_age_seconds, None, "not due yet");
    assert_eq!((mail.pending, mail.processing, mail.failed), (2, 1, 1));
    let age = mail.oldest_pending_age_seconds.unwrap();
    assert!(
        (0.0..120.0).contains(&age),
        "the due job enqueued now: {age}"
    );
}
