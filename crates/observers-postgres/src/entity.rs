//! `observers debug-event --entity-type E --entity-id ID`: an entity's recent changes in the
//! change log, and the DLQ items and jobs of given events. Diagnostic reads: they scan what no
//! index covers, bounded by `LIMIT` or the event ids given.

use chrono::{DateTime, Utc};
use observers_core::stores::source::SourceItem;
use serde::Serialize;
use sqlx::PgPool;

use crate::change_row::{self, change_columns};
use crate::error::PgError;

/// The entity's last `last` changes still in the change log, oldest first.
pub async fn recent_changes(
    pool: &PgPool,
    entity_type: &str,
    entity_id: &str,
    last: i64,
) -> Result<Vec<SourceItem>, PgError> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        change_columns!(),
        " FROM observer_change_log
          WHERE entity_type = $1 AND entity_id = $2
          ORDER BY id DESC
          LIMIT $3"
    ))
    .bind(entity_type)
    .bind(entity_id)
    .bind(last)
    .fetch_all(pool)
    .await?;
    let mut items = rows
        .iter()
        .map(change_row::decode)
        .collect::<Result<Vec<_>, _>>()?;
    items.reverse();
    Ok(items)
}

/// A DLQ item of an event, as `debug-event` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct DlqOfEvent {
    pub id: i64,
    pub event_id: i64,
    pub observer: String,
    pub action_index: i32,
    pub status: String,
    pub error_code: String,
    pub error: String,
    pub attempts: i32,
    pub retry_count: i32,
    pub created_at: DateTime<Utc>,
}

/// The DLQ items of `event_ids`, oldest first.
pub async fn dlq_items(pool: &PgPool, event_ids: &[i64]) -> Result<Vec<DlqOfEvent>, PgError> {
    Ok(sqlx::query_as(
        "SELECT id, event_id, observer, action_index, status, error_code, error, attempts,
                retry_count, created_at
           FROM observer_dlq_items WHERE event_id = ANY($1) ORDER BY id",
    )
    .bind(event_ids)
    .fetch_all(pool)
    .await?)
}

/// A queued action's job of an event (live or completed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct JobOfEvent {
    pub id: i64,
    pub event_id: i64,
    pub observer: String,
    pub action_index: i64,
    /// Its idempotency key (`{event_id}:{observer}:{action_index}`, a replay's with
    /// `:replay-{replay_id}`).
    pub unique_key: String,
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
}

/// The jobs of `event_ids` (found by their payload), oldest first.
pub async fn jobs(pool: &PgPool, event_ids: &[i64]) -> Result<Vec<JobOfEvent>, PgError> {
    Ok(sqlx::query_as(
        "SELECT id, (payload->'event'->>'id')::bigint AS event_id, payload->>'observer' AS observer,
                (payload->>'action_index')::bigint AS action_index,
                coalesce(unique_key, '') AS unique_key, status, attempts, last_error
           FROM (SELECT id, payload, unique_key, status, attempts, last_error FROM observer_jobs
                 UNION ALL
                 SELECT id, payload, unique_key, 'completed', attempts, last_error
                   FROM observer_jobs_completed) j
          WHERE (payload->'event'->>'id')::bigint = ANY($1)
            AND payload ? 'observer'
          ORDER BY id",
    )
    .bind(event_ids)
    .fetch_all(pool)
    .await?)
}
