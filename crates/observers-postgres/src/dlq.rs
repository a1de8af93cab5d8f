//! The dead-letter queue in PostgreSQL (`observer_dlq_items`): failed actions and undecodable
//! change-log rows, kept with their event for inspection and retry.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use observers_core::stores::dlq::{DeadLetterQueue, DlqEntry, DlqFilter, DlqItem, DlqStatus};
use observers_core::{EntityEvent, ObserverError, Result, text};
use sqlx::PgPool;
use sqlx::types::Json;

use crate::error::PgError;

/// Dead-lettered items in `observer_dlq_items`. The `event` column holds the whole event as
/// JSON; its entity type, entity id and event id are copied into columns for filtering.
#[derive(Debug, Clone)]
pub struct PostgresDeadLetterQueue {
    pool: PgPool,
}

#[derive(sqlx::FromRow)]
struct DlqRow {
    id: i64,
    event: serde_json::Value,
    observer: String,
    action_index: i32,
    action_type: String,
    error_code: String,
    error: String,
    attempts: i32,
    status: String,
    retry_count: i32,
    created_at: DateTime<Utc>,
    last_retry_at: Option<DateTime<Utc>>,
}

impl DlqRow {
    fn into_item(self) -> Result<DlqItem> {
        let id = self.id;
        let event: EntityEvent = observers_core::numbers::from_json(&self.event).map_err(|e| {
            PgError::Invalid(format!(
                "DLQ item {id}: the stored event is not a valid event ({e}); inspect the row or \
                 purge it by id"
            ))
        })?;
        let status = match self.status.as_str() {
            "pending" => DlqStatus::Pending,
            "resolved" => DlqStatus::Resolved,
            other => {
                return Err(
                    PgError::Invalid(format!("DLQ item {id}: unknown status `{other}`")).into(),
                );
            }
        };
        Ok(DlqItem {
            id,
            entry: DlqEntry {
                event,
                observer: self.observer,
                // Written from usize/u32 by `push`; a hand-edited negative reads as zero.
                action_index: usize::try_from(self.action_index).unwrap_or_default(),
                action_type: self.action_type,
                error_code: self.error_code,
                error: self.error,
                attempts: u32::try_from(self.attempts).unwrap_or_default(),
            },
            status,
            retry_count: u32::try_from(self.retry_count).unwrap_or_default(),
            created_at: self.created_at,
            last_retry_at: self.last_retry_at,
        })
    }
}

/// The filter as one static `WHERE`: every `DlqFilter` field is a nullable bind ($1..$6), so a
/// missing field matches everything.
macro_rules! filter_where {
    () => {
        " WHERE ($1::text IS NULL OR observer = $1) \
           AND ($2::text IS NULL OR entity_type = $2) \
           AND ($3::text IS NULL OR action_type = $3) \
           AND ($4::text IS NULL OR status = $4) \
           AND ($5::timestamptz IS NULL OR created_at < $5) \
           AND ($6::bigint[] IS NULL OR id = ANY($6)) "
    };
}

macro_rules! item_columns {
    () => {
        "SELECT id, event, observer, action_index, action_type, error_code, error, attempts, \
         status, retry_count, created_at, last_retry_at FROM observer_dlq_items"
    };
}

/// `LIMIT NULL` is no limit.
const LIST: &str = concat!(item_columns!(), filter_where!(), "ORDER BY id LIMIT $7");

/// Honours `limit` too, oldest first.
const PURGE: &str = concat!(
    "DELETE FROM observer_dlq_items WHERE id IN (SELECT id FROM observer_dlq_items",
    filter_where!(),
    "ORDER BY id LIMIT $7)"
);

const GET: &str = concat!(item_columns!(), " WHERE id = $1");

const PUSH: &str = "INSERT INTO observer_dlq_items \
       (event_id, entity_type, entity_id, event, observer, action_index, action_type, \
        error_code, error, attempts) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
     RETURNING id";

/// A failed retry keeps the previous error when it has no new one.
const RECORD_RETRY: &str = "UPDATE observer_dlq_items SET \
       retry_count = LEAST(retry_count, 2147483646) + 1, \
       last_retry_at = now(), \
       status = CASE WHEN $2 THEN 'resolved' ELSE 'pending' END, \
       error = CASE WHEN $2 THEN error ELSE COALESCE($3, error) END \
     WHERE id = $1";

const COUNT: &str =
    "SELECT count(*) FROM observer_dlq_items WHERE ($1::text IS NULL OR status = $1)";

impl PostgresDeadLetterQueue {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

/// The bind values of a filter, in `filter_where!` order, then the limit.
struct FilterBinds<'a> {
    observer: Option<&'a str>,
    entity_type: Option<&'a str>,
    action_type: Option<&'a str>,
    status: Option<&'static str>,
    older_than: Option<DateTime<Utc>>,
    ids: Option<&'a [i64]>,
    limit: Option<i64>,
}

impl<'a> FilterBinds<'a> {
    fn new(f: &'a DlqFilter) -> Self {
        Self {
            observer: f.observer.as_deref(),
            entity_type: f.entity_type.as_deref(),
            action_type: f.action_type.as_deref(),
            status: f.status.map(DlqStatus::as_str),
            older_than: f.older_than,
            ids: f.ids.as_deref(),
            limit: f.limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX)),
        }
    }
}

#[async_trait]
impl DeadLetterQueue for PostgresDeadLetterQueue {
    async fn push(&self, entry: DlqEntry) -> Result<i64> {
        let action_index = i32::try_from(entry.action_index).map_err(|_| {
            PgError::Invalid(format!(
                "action index {} is too large to dead-letter",
                entry.action_index
            ))
        })?;
        // Error texts come from remote peers and rows from anywhere: PostgreSQL rejects NUL in
        // text and jsonb, and a DLQ write that fails would hold the event back.
        let mut event = serde_json::to_value(&entry.event).map_err(|e| {
            PgError::Invalid(format!(
                "event {} cannot be serialized: {e}",
                entry.event.id
            ))
        })?;
        text::make_json_storable(&mut event);
        let id: i64 = sqlx::query_scalar(PUSH)
            .bind(entry.event.id)
            .bind(text::storable(&entry.event.entity_type))
            .bind(text::storable(&entry.event.entity_id))
            .bind(Json(&event))
            .bind(text::storable(&entry.observer))
            .bind(action_index)
            .bind(text::storable(&entry.action_type))
            .bind(text::storable(&entry.error_code))
            .bind(text::storable(&entry.error))
            .bind(i32::try_from(entry.attempts).unwrap_or(i32::MAX))
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        tracing::debug!(
            dlq_id = id,
            observer = %entry.observer,
            event_id = entry.event.id,
            error_code = %entry.error_code,
            "action dead-lettered"
        );
        Ok(id)
    }

    async fn list(&self, filter: &DlqFilter) -> Result<Vec<DlqItem>> {
        let b = FilterBinds::new(filter);
        sqlx::query_as::<_, DlqRow>(LIST)
            .bind(b.observer)
            .bind(b.entity_type)
            .bind(b.action_type)
            .bind(b.status)
            .bind(b.older_than)
            .bind(b.ids)
            .bind(b.limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .into_iter()
            .map(DlqRow::into_item)
            .collect()
    }

    async fn get(&self, id: i64) -> Result<Option<DlqItem>> {
        sqlx::query_as::<_, DlqRow>(GET)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
            .map(DlqRow::into_item)
            .transpose()
    }

    async fn record_retry(&self, id: i64, succeeded: bool, error: Option<&str>) -> Result<()> {
        let done = sqlx::query(RECORD_RETRY)
            .bind(id)
            .bind(succeeded)
            .bind(error.map(text::storable))
            .execute(&self.pool)
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            // Purged meanwhile; like the in-memory queue, not an error.
            tracing::warn!(
                dlq_id = id,
                "retry recorded for a DLQ item that no longer exists"
            );
        }
        Ok(())
    }

    async fn purge(&self, filter: &DlqFilter) -> Result<u64> {
        let b = FilterBinds::new(filter);
        let done = sqlx::query(PURGE)
            .bind(b.observer)
            .bind(b.entity_type)
            .bind(b.action_type)
            .bind(b.status)
            .bind(b.older_than)
            .bind(b.ids)
            .bind(b.limit)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(done.rows_affected())
    }

    async fn count(&self, status: Option<DlqStatus>) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(COUNT)
            .bind(status.map(DlqStatus::as_str))
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        Ok(n.unsigned_abs())
    }
}

fn db(e: sqlx::Error) -> ObserverError {
    PgError::Database(e).into()
}
