//! Tests of change-log retention (`changelog::prune`) and statistics (`changelog::stats`).

use std::time::Duration;

use observers_core::Cursor;
use observers_postgres::PgError;
use observers_postgres::changelog;
use sqlx::PgPool;

/// Writes one change-log row in its own transaction and returns its cursor.
async fn write(pool: &PgPool, entity_id: &str) -> Cursor {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO observer_change_log (entity_type, entity_id, operation)
         VALUES ('Order', $1, 'insert') RETURNING id",
    )
    .bind(entity_id)
    .fetch_one(pool)
    .await
    .unwrap();
    Cursor::new(id)
}

async fn write_many(pool: &PgPool, n: usize) -> Vec<Cursor> {
    let mut cursors = Vec::new();
    for i in 0..n {
        cursors.push(write(pool, &i.to_string()).await);
    }
    cursors
}

async fn checkpoint(pool: &PgPool, listener: &str, at: Cursor) {
    sqlx::query(
        "INSERT INTO observer_checkpoints (listener_id, cursor_id, last_processed_id)
         VALUES ($1, $2, $2)",
    )
    .bind(listener)
    .bind(at.id)
    .execute(pool)
    .await
    .unwrap();
}

/// Remaining change-log ids in cursor order.
async fn remaining(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM observer_change_log ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = "../../migrations")]
async fn without_checkpoints_nothing_is_pruned(pool: PgPool) {
    write_many(&pool, 3).await;
    let report = changelog::prune(&pool, None, 100).await.unwrap();
    assert_eq!(report.deleted, 0);
    assert_eq!(report.cutoff, None);
    assert_eq!(report.consumers, 0);
    assert!(report.to_string().contains("nothing pruned"));
    assert_eq!(remaining(&pool).await.len(), 3);
}

#[sqlx::test(migrations = "../../migrations")]
async fn only_rows_behind_the_slowest_consumer_are_pruned(pool: PgPool) {
    let c = write_many(&pool, 5).await;
    checkpoint(&pool, "fast", c[3]).await;
    checkpoint(&pool, "slow", c[1]).await;

    let report = changelog::prune(&pool, None, 100).await.unwrap();
    assert_eq!(report.deleted, 2, "rows at or below the slow cursor");
    assert_eq!(report.cutoff, Some(c[1]));
    assert_eq!(report.consumers, 2);
    assert_eq!(remaining(&pool).await, [c[2].id, c[3].id, c[4].id]);

    // Nothing more until the slow consumer moves.
    assert_eq!(changelog::prune(&pool, None, 100).await.unwrap().deleted, 0);
}

#[sqlx::test(migrations = "../../migrations")]
async fn capture_errors_go_with_their_change_log_rows(pool: PgPool) {
    let c = write_many(&pool, 3).await;
    for at in [c[0], c[2]] {
        sqlx::query(
            "INSERT INTO observer_capture_errors (table_schema, table_name, entity_type, change_id, error)
             VALUES ('public', 'orders', 'Order', $1, 'no key')",
        )
        .bind(at.id)
        .execute(&pool)
        .await
        .unwrap();
    }
    checkpoint(&pool, "only", c[1]).await;
    assert_eq!(changelog::prune(&pool, None, 100).await.unwrap().deleted, 2);
    let left: Vec<i64> = sqlx::query_scalar("SELECT change_id FROM observer_capture_errors")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(left, [c[2].id], "the error of a row still in the log stays");
}

#[sqlx::test(migrations = "../../migrations")]
async fn older_than_keeps_recent_rows(pool: PgPool) {
    let c = write_many(&pool, 4).await;
    sqlx::query(
        "UPDATE observer_change_log SET created_at = now() - interval '2 hours' WHERE id <= $1",
    )
    .bind(c[1].id)
    .execute(&pool)
    .await
    .unwrap();
    checkpoint(&pool, "reader", c[3]).await;

    let report = changelog::prune(&pool, Some(Duration::from_secs(3600)), 100)
        .await
        .unwrap();
    assert_eq!(report.deleted, 2);
    assert_eq!(remaining(&pool).await, [c[2].id, c[3].id]);

    let report = changelog::prune(&pool, Some(Duration::from_secs(3 * 3600)), 100)
        .await
        .unwrap();
    assert_eq!(report.deleted, 0, "nothing is older than three hours");
    let report = changelog::prune(&pool, None, 100).await.unwrap();
    assert_eq!(report.deleted, 2);
}

#[sqlx::test(migrations = "../../migrations")]
async fn batches_delete_everything_below_the_cutoff(pool: PgPool) {
    let c = write_many(&pool, 7).await;
    checkpoint(&pool, "reader", c[4]).await;
    let report = changelog::prune(&pool, None, 2).await.unwrap();
    assert_eq!(report.deleted, 5, "three batches: 2 + 2 + 1");
    assert_eq!(remaining(&pool).await, [c[5].id, c[6].id]);

    // An exact multiple of the batch size ends with an empty batch.
    checkpoint(&pool, "other", c[6]).await;
    sqlx::query("DELETE FROM observer_checkpoints WHERE listener_id = 'reader'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(changelog::prune(&pool, None, 2).await.unwrap().deleted, 2);
    assert!(remaining(&pool).await.is_empty());
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_batch_below_one_is_rejected(pool: PgPool) {
    for batch in [0, -5] {
        match changelog::prune(&pool, None, batch).await {
            Err(PgError::Invalid(message)) => assert!(message.contains("at least 1"), "{message}"),
            other => panic!("batch {batch}: expected Invalid, got {other:?}"),
        }
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn stats_show_totals_and_each_backlog(pool: PgPool) {
    let empty = changelog::stats(&pool).await.unwrap();
    assert_eq!(empty.total_rows, 0);
    assert_eq!(
        (empty.min_id, empty.max_id, empty.oldest_created_at),
        (None, None, None)
    );
    assert!(empty.consumers.is_empty());

    let c = write_many(&pool, 5).await;
    checkpoint(&pool, "b-slow", c[0]).await;
    checkpoint(&pool, "a-fast", c[3]).await;
    checkpoint(&pool, "c-new", Cursor::START).await;

    let stats = changelog::stats(&pool).await.unwrap();
    assert_eq!(stats.total_rows, 5);
    assert_eq!((stats.min_id, stats.max_id), (Some(c[0].id), Some(c[4].id)));
    assert!(stats.oldest_created_at.is_some());
    assert!(stats.oldest_created_at <= stats.newest_created_at);
    let backlogs: Vec<_> = stats
        .consumers
        .iter()
        .map(|b| (b.listener_id.as_str(), b.cursor, b.backlog))
        .collect();
    assert_eq!(
        backlogs,
        [
            ("a-fast", c[3], 1),
            ("b-slow", c[0], 4),
            ("c-new", Cursor::START, 5)
        ]
    );
    let as_json = serde_json::to_value(&stats).unwrap();
    assert_eq!(as_json["consumers"][1]["backlog"], 4);
}

/// Status used to `count(*)` the whole change log and every consumer's backlog; on a large log
/// that ran for as long as the table was big. Counts now stop at a cap and say so.
#[sqlx::test(migrations = "../../migrations")]
async fn stats_count_up_to_a_cap(pool: PgPool) {
    let c = write_many(&pool, 25).await;
    checkpoint(&pool, "behind", c[1]).await;
    let capped = changelog::stats_capped(&pool, 10).await.unwrap();
    assert_eq!((capped.total_rows, capped.total_rows_capped), (10, true));
    assert_eq!(capped.consumers[0].backlog, 10);
    assert_eq!(
        (capped.min_id, capped.max_id),
        (Some(c[0].id), Some(c[24].id))
    );
    let exact = changelog::stats_capped(&pool, 100).await.unwrap();
    assert_eq!((exact.total_rows, exact.total_rows_capped), (25, false));
    assert_eq!(exact.consumers[0].backlog, 23);
    assert!(exact.oldest_created_at <= exact.newest_created_at);
}

/// The status pool is separate from the listener's (it answers while that pool is exhausted)
/// and its queries carry a server-side `statement_timeout`: PostgreSQL cancels one that runs too
/// long even if the caller went away.
#[sqlx::test(migrations = "../../migrations")]
async fn status_queries_have_their_own_pool_and_a_server_side_timeout(pool: PgPool) {
    use observers_postgres::monitoring;
    let listener_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(200))
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap();
    let _held = listener_pool.acquire().await.unwrap();
    assert!(
        listener_pool.acquire().await.is_err(),
        "the listener's pool is exhausted"
    );
    let status = monitoring::status_pool(&listener_pool, Duration::from_millis(300));
    monitoring::ping(&status).await.unwrap();
    let timeout: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(&status)
        .await
        .unwrap();
    assert_eq!(timeout, "300ms");
    let slow = sqlx::query("SELECT pg_sleep(30)")
        .execute(&status)
        .await
        .unwrap_err();
    let code = slow
        .as_database_error()
        .and_then(sqlx::error::DatabaseError::code)
        .map(std::borrow::Cow::into_owned);
    assert_eq!(
        code.as_deref(),
        Some("57014"),
        "canceled by the server: {slow}"
    );
    changelog::stats(&status).await.unwrap();
}
