//! Change-log retention and statistics: `observers changelog prune` deletes rows every consumer
//! has passed, and `stats` feeds `observers status`.
//!
//! A row may go only when its id is at or below the cursor of EVERY checkpoint, i.e. below the
//! slowest consumer. A cursor only ever passes final ids (docs/postgres.md, "The cursor"), so no
//! row at or below it can still appear.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use observers_core::event::Cursor;
use serde::Serialize;
use sqlx::PgPool;

use crate::error::PgError;

/// What `prune` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// Rows deleted.
    pub deleted: u64,
    /// The slowest consumer's cursor: nothing after it was touched. `None` when no consumer has a
    /// checkpoint yet, in which case nothing is deleted.
    pub cutoff: Option<Cursor>,
    /// How many consumers (checkpoints) were considered.
    pub consumers: usize,
}

impl fmt::Display for PruneReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.cutoff {
            None => f.write_str(
                "no consumer has a checkpoint yet, so every change-log row may still be needed; \
                 nothing pruned",
            ),
            Some(cutoff) => write!(
                f,
                "deleted {} change-log row(s) at or below {cutoff}, the cursor of the slowest of {} consumer(s)",
                self.deleted, self.consumers
            ),
        }
    }
}

/// Deletes change-log rows at or below every consumer's cursor, `batch` rows per statement (so no
/// statement holds locks on a large part of the table), optionally only rows created more than
/// `older_than` ago. Each batch commits on its own; an interrupted prune leaves a consistent log.
pub async fn prune(
    pool: &PgPool,
    older_than: Option<Duration>,
    batch: i64,
) -> Result<PruneReport, PgError> {
    prune_reporting(pool, older_than, batch, |_| {}).await
}

/// [`prune`], calling `on_batch` with the rows each batch deleted (for progress output).
pub async fn prune_reporting(
    pool: &PgPool,
    older_than: Option<Duration>,
    batch: i64,
    mut on_batch: impl FnMut(u64) + Send,
) -> Result<PruneReport, PgError> {
    if batch < 1 {
        return Err(PgError::Invalid(format!(
            "prune batch size must be at least 1, got {batch}"
        )));
    }
    let batch_rows = u64::try_from(batch).unwrap_or(u64::MAX);

    // The window count runs before LIMIT: the row is the slowest cursor, the count all consumers.
    let slowest: Option<(i64, i64)> = sqlx::query_as(
        "SELECT cursor_id, count(*) OVER ()
           FROM observer_checkpoints
          ORDER BY cursor_id
          LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    let Some((cursor_id, consumers)) = slowest else {
        tracing::info!("no consumer checkpoints; change log not pruned");
        return Ok(PruneReport {
            deleted: 0,
            cutoff: None,
            consumers: 0,
        });
    };
    let cutoff = Cursor::new(cursor_id);
    let consumers = usize::try_from(consumers).unwrap_or(usize::MAX);

    // Fixed once, on the database clock that wrote created_at, so every batch agrees.
    let created_before: Option<DateTime<Utc>> = match older_than {
        None => None,
        Some(age) => Some(
            sqlx::query_scalar("SELECT now() - make_interval(secs => $1)")
                .bind(age.as_secs_f64())
                .fetch_one(pool)
                .await?,
        ),
    };

    let mut deleted = 0u64;
    loop {
        // Each batch also counts what it deleted per entity type and minute of creation
        // (`observer_pruned_changes`), so `observers replay` can say what of its window is gone.
        let n: i64 = sqlx::query_scalar(
            "WITH d AS (
                  DELETE FROM observer_change_log
                   WHERE id IN (
                         SELECT id FROM observer_change_log
                          WHERE id <= $1
                            AND ($2::timestamptz IS NULL OR created_at < $2)
                          ORDER BY id
                          LIMIT $3)
               RETURNING id, entity_type, created_at),
             counted AS (
                  INSERT INTO observer_pruned_changes AS p (entity_type, minute, rows, max_id)
                  SELECT entity_type, date_trunc('minute', created_at), count(*), max(id)
                    FROM d GROUP BY 1, 2
                  ON CONFLICT (minute, entity_type) DO UPDATE
                     SET rows = p.rows + excluded.rows,
                         max_id = greatest(p.max_id, excluded.max_id))
             SELECT count(*) FROM d",
        )
        .bind(cursor_id)
        .bind(created_before)
        .bind(batch)
        .fetch_one(pool)
        .await?;
        let n = u64::try_from(n).unwrap_or(0);
        deleted += n;
        on_batch(n);
        // New rows always get an id above every cursor, so this terminates.
        if n < batch_rows {
            break;
        }
    }

    // A capture error is kept as long as the change-log row it explains.
    sqlx::query(
        "DELETE FROM observer_capture_errors e
          WHERE NOT EXISTS (SELECT 1 FROM observer_change_log l WHERE l.id = e.change_id)",
    )
    .execute(pool)
    .await?;

    tracing::info!(deleted, cutoff = %cutoff, consumers, "change log pruned");
    Ok(PruneReport {
        deleted,
        cutoff: Some(cutoff),
        consumers,
    })
}

/// The size of the change log and how far behind each consumer is. Counts stop at a cap (see
/// [`stats`]), so reading them costs the same on a log of a billion rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangeLogStats {
    /// Rows in the log, counted up to the cap.
    pub total_rows: u64,
    /// `total_rows` reached the cap: there are at least that many.
    pub total_rows_capped: bool,
    pub min_id: Option<i64>,
    pub max_id: Option<i64>,
    /// `created_at` of the rows with the smallest and the largest id (read through the primary
    /// key, not a scan).
    pub oldest_created_at: Option<DateTime<Utc>>,
    pub newest_created_at: Option<DateTime<Utc>>,
    /// One entry per checkpoint, ordered by listener id.
    pub consumers: Vec<ConsumerBacklog>,
}

/// One consumer's position and the rows after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsumerBacklog {
    pub listener_id: String,
    pub cursor: Cursor,
    /// Change-log rows after `cursor` (including rows of transactions still open), counted up to
    /// the cap.
    pub backlog: u64,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct TotalsRow {
    total_rows: i64,
    min_id: Option<i64>,
    max_id: Option<i64>,
    oldest_created_at: Option<DateTime<Utc>>,
    newest_created_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct BacklogRow {
    listener_id: String,
    cursor_id: i64,
    backlog: i64,
    updated_at: DateTime<Utc>,
}

/// Totals of the change log and each consumer's backlog, counted up to
/// [`COUNT_CAP`](crate::monitoring::COUNT_CAP) rows each.
pub async fn stats(pool: &PgPool) -> Result<ChangeLogStats, PgError> {
    stats_capped(pool, crate::monitoring::COUNT_CAP).await
}

/// [`stats`] with counts stopping at `cap` rows.
pub async fn stats_capped(pool: &PgPool, cap: i64) -> Result<ChangeLogStats, PgError> {
    let cap = cap.max(1);
    let totals: TotalsRow = sqlx::query_as(
        "SELECT (SELECT count(*) FROM (SELECT 1 FROM observer_change_log LIMIT $1) c) AS total_rows,
                (SELECT min(id) FROM observer_change_log) AS min_id,
                (SELECT max(id) FROM observer_change_log) AS max_id,
                (SELECT created_at FROM observer_change_log ORDER BY id LIMIT 1) AS oldest_created_at,
                (SELECT created_at FROM observer_change_log ORDER BY id DESC LIMIT 1) AS newest_created_at",
    )
    .bind(cap)
    .fetch_one(pool)
    .await?;
    let rows: Vec<BacklogRow> = sqlx::query_as(
        "SELECT k.listener_id, k.cursor_id, k.updated_at,
                (SELECT count(*) FROM (
                     SELECT 1 FROM observer_change_log l
                      WHERE l.id > k.cursor_id
                      LIMIT $1) c) AS backlog
           FROM observer_checkpoints k
          ORDER BY k.listener_id",
    )
    .bind(cap)
    .fetch_all(pool)
    .await?;
    let consumers = rows
        .into_iter()
        .map(|r| ConsumerBacklog {
            cursor: Cursor::new(r.cursor_id),
            listener_id: r.listener_id,
            backlog: u64::try_from(r.backlog).unwrap_or_default(),
            updated_at: r.updated_at,
        })
        .collect();
    Ok(ChangeLogStats {
        total_rows: u64::try_from(totals.total_rows).unwrap_or_default(),
        total_rows_capped: totals.total_rows >= cap,
        min_id: totals.min_id,
        max_id: totals.max_id,
        oldest_created_at: totals.oldest_created_at,
        newest_created_at: totals.newest_created_at,
        consumers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_says_why_nothing_was_pruned() {
        let none = PruneReport {
            deleted: 0,
            cutoff: None,
            consumers: 0,
        };
        assert!(none.to_string().contains("no consumer has a checkpoint"));
        let some = PruneReport {
            deleted: 3,
            cutoff: Some(Cursor::new(12)),
            consumers: 2,
        };
        assert_eq!(
            some.to_string(),
            "deleted 3 change-log row(s) at or below 12, the cursor of the slowest of 2 consumer(s)"
        );
    }
}
