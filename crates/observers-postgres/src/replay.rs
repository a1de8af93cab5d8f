//! `observers replay`'s reads: change-log rows of a time window that a consumer has already
//! processed, what of the window is no longer in the log (pruned), and the record of each replay
//! (its id makes the replay's idempotency keys).

use chrono::{DateTime, Utc};
use observers_core::stores::source::SourceItem;
use serde::Serialize;
use sqlx::PgPool;

use crate::change_row::{self, change_columns};
use crate::error::PgError;

/// The changes a replay covers: created in `[from, to)`, optionally of one entity type or one
/// entity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayWindow {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub entity_type: Option<String>,
    pub entity_id: Option<String>,
}

/// What of a window the change log no longer holds, from the counts every prune keeps per entity
/// type and minute of creation (`observer_pruned_changes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pruned {
    /// Changes of the window's entity type (all types when none) deleted by prunes. Counted per
    /// minute: the window's first and last minute count whole.
    pub rows: i64,
    /// The first and last minute with pruned changes.
    pub first_minute: Option<DateTime<Utc>>,
    pub last_minute: Option<DateTime<Utc>>,
    /// The oldest row the log still holds (id, created_at), if any.
    pub oldest_kept: Option<(i64, DateTime<Utc>)>,
}

/// The lowest cursor of `consumer`'s checkpoints (its own, or its partitions' `consumer#pN`
/// under HA): every id at or below it has been processed. `None` before its first checkpoint.
pub async fn processed_upto(pool: &PgPool, consumer: &str) -> Result<Option<i64>, PgError> {
    Ok(sqlx::query_scalar(
        "SELECT min(cursor_id) FROM observer_checkpoints
          WHERE listener_id = $1 OR left(listener_id, length($1) + 2) = $1 || '#p'",
    )
    .bind(consumer)
    .fetch_one(pool)
    .await?)
}

/// Up to `limit` rows of `window` with ids in `(after, upto]`, in id order.
pub async fn read(
    pool: &PgPool,
    window: &ReplayWindow,
    after: i64,
    upto: i64,
    limit: i64,
) -> Result<Vec<SourceItem>, PgError> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        change_columns!(),
        " FROM observer_change_log
          WHERE id > $1 AND id <= $2 AND created_at >= $3 AND created_at < $4
            AND ($5::text IS NULL OR entity_type = $5)
            AND ($6::text IS NULL OR entity_id = $6)
          ORDER BY id
          LIMIT $7"
    ))
    .bind(after)
    .bind(upto)
    .bind(window.from)
    .bind(window.to)
    .bind(&window.entity_type)
    .bind(&window.entity_id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(change_row::decode).collect()
}

/// Rows of `window` in the change log: at or below `upto` (processed) and above it (not yet).
pub async fn count(pool: &PgPool, window: &ReplayWindow, upto: i64) -> Result<(i64, i64), PgError> {
    Ok(sqlx::query_as(
        "SELECT count(*) FILTER (WHERE id <= $1), count(*) FILTER (WHERE id > $1)
           FROM observer_change_log
          WHERE created_at >= $2 AND created_at < $3
            AND ($4::text IS NULL OR entity_type = $4)
            AND ($5::text IS NULL OR entity_id = $5)",
    )
    .bind(upto)
    .bind(window.from)
    .bind(window.to)
    .bind(&window.entity_type)
    .bind(&window.entity_id)
    .fetch_one(pool)
    .await?)
}

/// What of `window` was pruned (see [`Pruned`]).
pub async fn pruned(pool: &PgPool, window: &ReplayWindow) -> Result<Pruned, PgError> {
    let (rows, first_minute, last_minute): (i64, Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
        sqlx::query_as(
            "SELECT coalesce(sum(rows), 0)::bigint, min(minute), max(minute)
               FROM observer_pruned_changes
              WHERE minute >= date_trunc('minute', $1::timestamptz) AND minute < $2
                AND ($3::text IS NULL OR entity_type = $3)",
        )
        .bind(window.from)
        .bind(window.to)
        .bind(&window.entity_type)
        .fetch_one(pool)
        .await?;
    let oldest_kept =
        sqlx::query_as("SELECT id, created_at FROM observer_change_log ORDER BY id LIMIT 1")
            .fetch_optional(pool)
            .await?;
    Ok(Pruned {
        rows,
        first_minute,
        last_minute,
        oldest_kept,
    })
}

/// Records a replay's start; returns its id.
pub async fn start(
    pool: &PgPool,
    window: &ReplayWindow,
    filter: &serde_json::Value,
    dry_run: bool,
    same_keys: bool,
) -> Result<i64, PgError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO observer_replays (window_from, window_to, filter, dry_run, same_keys)
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(window.from)
    .bind(window.to)
    .bind(filter)
    .bind(dry_run)
    .bind(same_keys)
    .fetch_one(pool)
    .await?)
}

/// Records a replay's end and totals.
pub async fn finish(
    pool: &PgPool,
    id: i64,
    events: i64,
    actions: i64,
    failed: i64,
) -> Result<(), PgError> {
    sqlx::query(
        "UPDATE observer_replays
            SET finished_at = now(), events = $2, actions = $3, failed = $4
          WHERE id = $1",
    )
    .bind(id)
    .bind(events)
    .bind(actions)
    .bind(failed)
    .execute(pool)
    .await?;
    Ok(())
}
