//! Listener checkpoints in PostgreSQL (`observer_checkpoints`), with an audit trail of operator
//! moves (`observer_checkpoints_history`) and lease-fenced saves for HA (docs/ha.md).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use observers_core::stores::checkpoint::{Checkpoint, CheckpointStore};
use observers_core::{Cursor, ObserverError, Result};
use serde::Serialize;
use sqlx::PgPool;

use crate::error::PgError;

/// `last_error` is kept short: it is a hint for `status`, the full error is in the logs.
const MAX_ERROR_BYTES: usize = 4096;

/// Checkpoints stored in `observer_checkpoints`, one row per listener.
///
/// Every write records `updated_by` (this instance, `host:pid` unless set otherwise).
#[derive(Debug, Clone)]
pub struct PostgresCheckpointStore {
    pool: PgPool,
    instance: String,
}

/// Everything the checkpoint row holds, for `status` output and diagnostics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointDetails {
    pub listener_id: String,
    pub cursor: Cursor,
    pub last_processed_at: DateTime<Utc>,
    /// Events acknowledged by the last save.
    pub batch_size: i32,
    pub event_count: u64,
    /// Failures recorded since the last successful save.
    pub consecutive_errors: i32,
    pub last_error: Option<String>,
    pub updated_by: Option<String>,
    /// The lease epoch of the last fenced save; `None` after an unfenced one.
    pub lease_epoch: Option<i64>,
    pub updated_at: DateTime<Utc>,
}

/// One operator move of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointHistoryEntry {
    pub id: i64,
    pub listener_id: String,
    /// `None` when the listener had no checkpoint before.
    pub old: Option<Cursor>,
    pub new: Cursor,
    pub reason: String,
    pub changed_by: Option<String>,
    pub changed_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct CheckpointRow {
    listener_id: String,
    cursor_id: i64,
    last_processed_at: DateTime<Utc>,
    batch_size: i32,
    event_count: i64,
    consecutive_errors: i32,
    last_error: Option<String>,
    updated_by: Option<String>,
    lease_epoch: Option<i64>,
    updated_at: DateTime<Utc>,
}

impl CheckpointRow {
    fn into_details(self) -> Result<CheckpointDetails> {
        Ok(CheckpointDetails {
            cursor: cursor_from_db(&self.listener_id, self.cursor_id)?,
            listener_id: self.listener_id,
            last_processed_at: self.last_processed_at,
            batch_size: self.batch_size,
            // A statistic; a hand-edited negative count reads as zero rather than failing.
            event_count: self.event_count.max(0).unsigned_abs(),
            consecutive_errors: self.consecutive_errors,
            last_error: self.last_error,
            updated_by: self.updated_by,
            lease_epoch: self.lease_epoch,
            updated_at: self.updated_at,
        })
    }

    fn into_checkpoint(self) -> Result<Checkpoint> {
        let d = self.into_details()?;
        Ok(Checkpoint {
            listener_id: d.listener_id,
            cursor: d.cursor,
            events_processed: d.event_count,
            updated_at: d.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct HistoryRow {
    id: i64,
    listener_id: String,
    old_id: Option<i64>,
    new_id: i64,
    reason: String,
    changed_by: Option<String>,
    changed_at: DateTime<Utc>,
}

const SELECT_CHECKPOINT: &str = "SELECT listener_id, cursor_id, last_processed_at, \
     batch_size, event_count, consecutive_errors, last_error, updated_by, lease_epoch, updated_at \
     FROM observer_checkpoints WHERE listener_id = $1";

const LIST_CHECKPOINTS: &str = "SELECT listener_id, cursor_id, last_processed_at, \
     batch_size, event_count, consecutive_errors, last_error, updated_by, lease_epoch, updated_at \
     FROM observer_checkpoints ORDER BY listener_id";

/// A plain save: moves the cursor as told, counts the batch, clears the error streak. The write
/// is unfenced, so the recorded lease epoch is cleared.
const SAVE: &str = "INSERT INTO observer_checkpoints AS c \
       (listener_id, cursor_id, last_processed_id, last_processed_at, event_count, \
        batch_size, consecutive_errors, last_error, updated_by, lease_epoch, updated_at) \
     VALUES ($1, $2, $2, now(), $3, $4, 0, NULL, $5, NULL, now()) \
     ON CONFLICT (listener_id) DO UPDATE SET \
       cursor_id = EXCLUDED.cursor_id, \
       last_processed_id = EXCLUDED.cursor_id, \
       last_processed_at = now(), \
       event_count = c.event_count + EXCLUDED.event_count, \
       batch_size = EXCLUDED.batch_size, \
       consecutive_errors = 0, \
       last_error = NULL, \
       updated_by = EXCLUDED.updated_by, \
       lease_epoch = NULL, \
       updated_at = now()";

/// A save that only happens while `observer_leases` says the writer holds the lease under its
/// epoch, by the database clock. `FOR SHARE` keeps a concurrent takeover from committing between
/// the check and the write (a takeover that committed first is seen by the re-check). The cursor
/// never moves backwards, and a row written under a newer epoch is left alone.
const SAVE_FENCED: &str = "WITH lease AS ( \
       SELECT epoch FROM observer_leases \
       WHERE name = $6 AND holder = $7 AND epoch = $8 AND expires_at > now() \
       FOR SHARE \
     ), written AS ( \
       INSERT INTO observer_checkpoints AS c \
         (listener_id, cursor_id, last_processed_id, last_processed_at, event_count, \
          batch_size, consecutive_errors, last_error, updated_by, lease_epoch, updated_at) \
       SELECT $1, $2, $2, now(), $3, $4, 0, NULL, $5, lease.epoch, now() FROM lease \
       ON CONFLICT (listener_id) DO UPDATE SET \
         cursor_id = GREATEST(EXCLUDED.cursor_id, c.cursor_id), \
         last_processed_id = GREATEST(EXCLUDED.cursor_id, c.cursor_id), \
         last_processed_at = now(), \
         event_count = c.event_count + EXCLUDED.event_count, \
         batch_size = EXCLUDED.batch_size, \
         consecutive_errors = 0, \
         last_error = NULL, \
         updated_by = EXCLUDED.updated_by, \
         lease_epoch = EXCLUDED.lease_epoch, \
         updated_at = now() \
       WHERE c.lease_epoch IS NULL OR c.lease_epoch <= EXCLUDED.lease_epoch \
       RETURNING 1 \
     ) \
     SELECT EXISTS (SELECT 1 FROM lease), EXISTS (SELECT 1 FROM written)";

const CAS_CREATE: &str = "INSERT INTO observer_checkpoints \
       (listener_id, cursor_id, last_processed_id, updated_by) \
     VALUES ($1, $2, $2, $3) \
     ON CONFLICT (listener_id) DO NOTHING";

/// Under READ COMMITTED a concurrent winner's update makes the losers re-check the WHERE
/// against the new row, so exactly one of them moves it.
const CAS_MOVE: &str = "UPDATE observer_checkpoints SET \
       cursor_id = $3, last_processed_id = $3, updated_by = $4, updated_at = now() \
     WHERE listener_id = $1 AND cursor_id = $2";

const RECORD_ERROR: &str = "UPDATE observer_checkpoints SET \
       consecutive_errors = LEAST(consecutive_errors, 2147483646) + 1, \
       last_error = $2, updated_by = $3, updated_at = now() \
     WHERE listener_id = $1";

const SET_CREATE: &str = "INSERT INTO observer_checkpoints \
       (listener_id, cursor_id, last_processed_id, updated_by) \
     VALUES ($1, $2, $2, $3) \
     ON CONFLICT (listener_id) DO NOTHING";

const SET_LOCK: &str = "SELECT cursor_id, wal_lsn IS NOT NULL FROM observer_checkpoints \
     WHERE listener_id = $1 FOR UPDATE";

const SET_MOVE: &str = "INSERT INTO observer_checkpoints \
       (listener_id, cursor_id, last_processed_id, updated_by) \
     VALUES ($1, $2, $2, $3) \
     ON CONFLICT (listener_id) DO UPDATE SET \
       cursor_id = EXCLUDED.cursor_id, \
       last_processed_id = EXCLUDED.cursor_id, updated_by = EXCLUDED.updated_by, updated_at = now()";

const SET_HISTORY: &str = "INSERT INTO observer_checkpoints_history \
       (listener_id, old_id, new_id, reason, changed_by) \
     VALUES ($1, $2, $3, $4, $5)";

const HISTORY: &str = "SELECT id, listener_id, old_id, new_id, reason, \
       changed_by, changed_at \
     FROM observer_checkpoints_history WHERE listener_id = $1 \
     ORDER BY changed_at DESC, id DESC LIMIT $2";

/// What [`PostgresCheckpointStore::adopt_partitions`] did when the layout changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionHandover {
    /// The partition count recorded before; `None` when none was (checkpoints written before
    /// layouts were recorded, or a consumer that ran unpartitioned).
    pub from: Option<u32>,
    pub to: u32,
    /// Where every partition of the new layout starts: the lowest cursor of the old ones.
    pub start: Cursor,
    /// The old layout's checkpoints that were removed (recorded in the history).
    pub retired: Vec<String>,
}

const LAYOUT_LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtextextended('observers/partition-layout/' || $1, 0))";

const LAYOUT_GET: &str = "SELECT partitions FROM observer_partition_layouts WHERE consumer = $1";

const LAYOUT_SET: &str = "INSERT INTO observer_partition_layouts AS l \
       (consumer, partitions, changed_by, changed_at) VALUES ($1, $2, $3, now()) \
     ON CONFLICT (consumer) DO UPDATE SET partitions = EXCLUDED.partitions, \
       changed_by = EXCLUDED.changed_by, changed_at = now() \
     WHERE l.partitions <> EXCLUDED.partitions";

/// The consumer's own checkpoint and its partitions' (`consumer#pN`), locked.
const FAMILY: &str = "SELECT listener_id, cursor_id FROM observer_checkpoints \
     WHERE listener_id = $1 OR starts_with(listener_id, $1 || '#p') \
     ORDER BY listener_id FOR UPDATE";

const RETIRE: &str = "DELETE FROM observer_checkpoints WHERE listener_id = $1";

impl PostgresCheckpointStore {
    /// A store on `pool` that signs its writes as this process (`host:pid`).
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            instance: default_instance(),
        }
    }

    /// Signs writes (`updated_by`, `changed_by`) with `instance` instead of `host:pid`.
    #[must_use]
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = instance.into();
        self
    }

    /// The name this store signs its writes with.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The whole checkpoint row, including the error streak and the lease epoch.
    pub async fn details(&self, listener_id: &str) -> Result<Option<CheckpointDetails>> {
        sqlx::query_as::<_, CheckpointRow>(SELECT_CHECKPOINT)
            .bind(listener_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
            .map(CheckpointRow::into_details)
            .transpose()
    }

    /// Moves a checkpoint by operator decision, backwards too (to replay) or forwards (to skip),
    /// and records the move with `reason` in `observer_checkpoints_history`, in one transaction.
    /// Returns the previous cursor. A running listener keeps its own position in memory: stop
    /// it first, or it will overwrite the move with its next save. The position of a WAL stream
    /// consumer (`wal_delivery = "direct"`, a row with `wal_lsn`) is refused (`OBS-PG-INVALID`):
    /// it is the commit LSN confirmed to its slot, with the ids the stream numbers its events
    /// from, not a change-log cursor.
    pub async fn set(
        &self,
        listener_id: &str,
        cursor: Cursor,
        reason: &str,
    ) -> Result<Option<Cursor>> {
        let id = cursor_to_db(cursor)?;
        let mut tx = self.pool.begin().await.map_err(db)?;
        let created = sqlx::query(SET_CREATE)
            .bind(listener_id)
            .bind(id)
            .bind(&self.instance)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected()
            == 1;
        let old = if created {
            None
        } else {
            let row: Option<(i64, bool)> = sqlx::query_as(SET_LOCK)
                .bind(listener_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
            if row.is_some_and(|(_, stream)| stream) {
                return Err(PgError::Invalid(format!(
                    "`{listener_id}` is the position of a WAL stream consumer (wal_delivery = \
                     \"direct\"): it is the commit LSN confirmed to the replication slot, with \
                     the ids the stream numbers its events from, and `checkpoint set` moves \
                     change-log cursors only; stop `observers run` and drop or advance the slot \
                     to skip ahead"
                ))
                .into());
            }
            let row = row.map(|(id, _)| id);
            // The upsert also covers a row deleted between the two statements.
            sqlx::query(SET_MOVE)
                .bind(listener_id)
                .bind(id)
                .bind(&self.instance)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            row.map(|i| cursor_from_db(listener_id, i)).transpose()?
        };
        let old_id = old.map(cursor_to_db).transpose()?;
        sqlx::query(SET_HISTORY)
            .bind(listener_id)
            .bind(old_id)
            .bind(id)
            .bind(reason)
            .bind(&self.instance)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        tracing::info!(
            listener = %listener_id,
            old = ?old,
            new = %cursor,
            reason = %reason,
            by = %self.instance,
            "checkpoint moved by operator"
        );
        Ok(old)
    }

    /// Makes `consumer`'s checkpoints match a layout of `partitions` partitions whose checkpoint
    /// names are `names` (the consumer itself for one partition, `consumer#pN` otherwise), in
    /// one transaction serialised per consumer by an advisory lock, before any partition reads.
    ///
    /// Entities move between partitions when the count changes (partition = hash(entity_id) mod
    /// count), so no old cursor is right for a new partition. When the recorded count differs,
    /// or the checkpoints present are not exactly `names`, every partition of the new layout
    /// starts from the LOWEST cursor among the consumer's checkpoints, the others are removed,
    /// and each move is recorded in `observer_checkpoints_history`: events between the lowest
    /// and the highest old cursor are read again (idempotency keys and dedup absorb them), none
    /// is skipped. Otherwise missing partition checkpoints are created at the start of the log
    /// (with several partitions, so that prune keeps what they have not read; a single one keeps
    /// its start-position policy). Returns the handover, if one happened.
    pub async fn adopt_partitions(
        &self,
        consumer: &str,
        partitions: u32,
        names: &[String],
    ) -> Result<Option<PartitionHandover>> {
        let count = i32::try_from(partitions).map_err(|_| {
            PgError::Invalid(format!(
                "{partitions} partitions do not fit a layout record"
            ))
        })?;
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query(LAYOUT_LOCK)
            .bind(consumer)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let known: Option<i32> = sqlx::query_scalar(LAYOUT_GET)
            .bind(consumer)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        let rows: Vec<(String, i64)> = sqlx::query_as(FAMILY)
            .bind(consumer)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        let mut existing: Vec<(String, Cursor)> = Vec::with_capacity(rows.len());
        for (name, i) in rows {
            if is_family(consumer, &name) {
                let cursor = cursor_from_db(&name, i)?;
                existing.push((name, cursor));
            }
        }
        let present: std::collections::BTreeSet<&str> =
            existing.iter().map(|(n, _)| n.as_str()).collect();
        let wanted: std::collections::BTreeSet<&str> = names.iter().map(String::as_str).collect();
        let changed =
            !existing.is_empty() && (present != wanted || known.is_some_and(|k| k != count));
        let handover = if changed {
            let from = known.and_then(|k| u32::try_from(k).ok());
            Some(
                self.hand_over(&mut tx, &existing, names, from, partitions)
                    .await?,
            )
        } else {
            if partitions > 1 {
                for name in names {
                    sqlx::query(SET_CREATE)
                        .bind(name)
                        .bind(0_i64)
                        .bind(0_i64)
                        .bind(&self.instance)
                        .execute(&mut *tx)
                        .await
                        .map_err(db)?;
                }
            }
            None
        };
        sqlx::query(LAYOUT_SET)
            .bind(consumer)
            .bind(count)
            .bind(&self.instance)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        if let Some(h) = &handover {
            tracing::warn!(
                consumer = %consumer,
                from = ?h.from,
                to = h.to,
                start = %h.start,
                retired = ?h.retired,
                "partition count changed: every partition restarts from the lowest old cursor \
                 (events after it may be delivered again, none is skipped)"
            );
        }
        Ok(handover)
    }

    /// Every partition of the new layout (`names`) from the lowest cursor of `existing`; the
    /// others removed; each move in the history.
    async fn hand_over(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        existing: &[(String, Cursor)],
        names: &[String],
        from: Option<u32>,
        partitions: u32,
    ) -> Result<PartitionHandover> {
        let start = existing.iter().map(|(_, c)| *c).min().unwrap_or_default();
        let id = cursor_to_db(start)?;
        let reason = format!(
            "[source] partitions changed from {} to {partitions}: every partition starts \
             from the lowest old cursor",
            from.map_or_else(|| "an unrecorded layout".to_owned(), |f| f.to_string())
        );
        let mut retired = Vec::new();
        for (name, old) in existing {
            if names.contains(name) {
                continue;
            }
            sqlx::query(RETIRE)
                .bind(name)
                .execute(&mut **tx)
                .await
                .map_err(db)?;
            self.history_in(
                tx,
                name,
                Some(*old),
                start,
                &format!("{reason} (checkpoint retired)"),
            )
            .await?;
            retired.push(name.clone());
        }
        for name in names {
            let old = existing.iter().find(|(n, _)| n == name).map(|(_, c)| *c);
            sqlx::query(SET_MOVE)
                .bind(name)
                .bind(id)
                .bind(&self.instance)
                .execute(&mut **tx)
                .await
                .map_err(db)?;
            self.history_in(tx, name, old, start, &reason).await?;
        }
        Ok(PartitionHandover {
            from,
            to: partitions,
            start,
            retired,
        })
    }

    async fn history_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        listener_id: &str,
        old: Option<Cursor>,
        new: Cursor,
        reason: &str,
    ) -> Result<()> {
        let old_id = old.map(cursor_to_db).transpose()?;
        let id = cursor_to_db(new)?;
        sqlx::query(SET_HISTORY)
            .bind(listener_id)
            .bind(old_id)
            .bind(id)
            .bind(reason)
            .bind(&self.instance)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        Ok(())
    }

    /// The latest operator moves of a checkpoint, newest first.
    pub async fn history(
        &self,
        listener_id: &str,
        limit: usize,
    ) -> Result<Vec<CheckpointHistoryEntry>> {
        let rows = sqlx::query_as::<_, HistoryRow>(HISTORY)
            .bind(listener_id)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.into_iter()
            .map(|r| {
                let old = r
                    .old_id
                    .map(|i| cursor_from_db(&r.listener_id, i))
                    .transpose()?;
                Ok(CheckpointHistoryEntry {
                    id: r.id,
                    new: cursor_from_db(&r.listener_id, r.new_id)?,
                    old,
                    listener_id: r.listener_id,
                    reason: r.reason,
                    changed_by: r.changed_by,
                    changed_at: r.changed_at,
                })
            })
            .collect()
    }

    /// Saves like [`CheckpointStore::save`], but only while the lease `lease_name` is held by
    /// `holder` under `epoch` and has not expired by the database clock; otherwise nothing is
    /// written and the error is `ObserverError::Fenced`. A fenced save never moves the cursor
    /// backwards (the batch is still counted), and never overwrites a checkpoint written under
    /// a newer epoch. Needs the `observer_leases` table.
    pub async fn save_fenced(
        &self,
        listener_id: &str,
        cursor: Cursor,
        processed: u64,
        lease_name: &str,
        holder: &str,
        epoch: i64,
    ) -> Result<(), ObserverError> {
        let id = cursor_to_db(cursor)?;
        let (count, batch) = processed_to_db(processed)?;
        let (leased, written): (bool, bool) = sqlx::query_as(SAVE_FENCED)
            .bind(listener_id)
            .bind(id)
            .bind(count)
            .bind(batch)
            .bind(&self.instance)
            .bind(lease_name)
            .bind(holder)
            .bind(epoch)
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        match (leased, written) {
            (true, true) => Ok(()),
            (false, _) => Err(PgError::Fenced(format!(
                "checkpoint of `{listener_id}` not saved: lease `{lease_name}` is no longer held \
                 by `{holder}` under epoch {epoch} (taken over, expired or released); stop \
                 processing and re-acquire the lease"
            ))
            .into()),
            (true, false) => Err(PgError::Fenced(format!(
                "checkpoint of `{listener_id}` not saved: it was written under a lease epoch \
                 newer than {epoch}; another instance has taken over"
            ))
            .into()),
        }
    }

    /// Counts a failure against the listener's checkpoint (`consecutive_errors`, `last_error`);
    /// the next successful save clears both. Returns whether the listener has a checkpoint: no
    /// row is created, so that a listener that never saved keeps its start-position policy.
    pub async fn record_error(&self, listener_id: &str, error: &str) -> Result<bool> {
        let done = sqlx::query(RECORD_ERROR)
            .bind(listener_id)
            .bind(truncate(error, MAX_ERROR_BYTES))
            .bind(&self.instance)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }
}

#[async_trait]
impl CheckpointStore for PostgresCheckpointStore {
    async fn load(&self, listener_id: &str) -> Result<Option<Checkpoint>> {
        sqlx::query_as::<_, CheckpointRow>(SELECT_CHECKPOINT)
            .bind(listener_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
            .map(CheckpointRow::into_checkpoint)
            .transpose()
    }

    async fn save(&self, listener_id: &str, cursor: Cursor, processed: u64) -> Result<()> {
        let id = cursor_to_db(cursor)?;
        let (count, batch) = processed_to_db(processed)?;
        sqlx::query(SAVE)
            .bind(listener_id)
            .bind(id)
            .bind(count)
            .bind(batch)
            .bind(&self.instance)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn record_save_error(&self, listener_id: &str, error: &str) -> Result<()> {
        self.record_error(listener_id, error).await.map(|_| ())
    }

    async fn compare_and_swap(
        &self,
        listener_id: &str,
        expected: Option<Cursor>,
        new: Cursor,
    ) -> Result<bool> {
        let id = cursor_to_db(new)?;
        let query = match expected {
            None => sqlx::query(CAS_CREATE)
                .bind(listener_id)
                .bind(id)
                .bind(&self.instance),
            Some(old) => {
                let old_id = cursor_to_db(old)?;
                sqlx::query(CAS_MOVE)
                    .bind(listener_id)
                    .bind(old_id)
                    .bind(id)
                    .bind(&self.instance)
            }
        };
        let done = query.execute(&self.pool).await.map_err(db)?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete(&self, listener_id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM observer_checkpoints WHERE listener_id = $1")
            .bind(listener_id)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn list(&self) -> Result<Vec<Checkpoint>> {
        sqlx::query_as::<_, CheckpointRow>(LIST_CHECKPOINTS)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .into_iter()
            .map(CheckpointRow::into_checkpoint)
            .collect()
    }
}

/// The consumer's own checkpoint or one of its partitions' (`consumer#pN`).
fn is_family(consumer: &str, name: &str) -> bool {
    name == consumer
        || name
            .strip_prefix(consumer)
            .and_then(|rest| rest.strip_prefix("#p"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn db(e: sqlx::Error) -> ObserverError {
    PgError::Database(e).into()
}

/// The cursor as the `bigint` column.
fn cursor_to_db(cursor: Cursor) -> Result<i64, PgError> {
    if cursor.id < 0 {
        return Err(PgError::Invalid(format!(
            "cursor {cursor}: the change-log id must not be negative"
        )));
    }
    Ok(cursor.id)
}

fn cursor_from_db(listener_id: &str, id: i64) -> Result<Cursor, PgError> {
    if id < 0 {
        return Err(PgError::Invalid(format!(
            "checkpoint of `{listener_id}` holds the negative change-log id {id}; fix it with \
             an operator move"
        )));
    }
    Ok(Cursor::new(id))
}

/// The batch as the `event_count` increment and the `batch_size` column (which saturates: it
/// is informational).
fn processed_to_db(processed: u64) -> Result<(i64, i32), PgError> {
    let count = i64::try_from(processed).map_err(|_| {
        PgError::Invalid(format!(
            "a batch of {processed} events exceeds what a checkpoint can count"
        ))
    })?;
    Ok((count, i32::try_from(processed).unwrap_or(i32::MAX)))
}

fn truncate(s: &str, max_bytes: usize) -> &str {
    if s.len() <= max_bytes {
        return s;
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn default_instance() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_conversion_rejects_negative_ids() {
        assert_eq!(cursor_to_db(Cursor::new(0)).ok(), Some(0));
        assert_eq!(cursor_to_db(Cursor::new(i64::MAX)).ok(), Some(i64::MAX));
        assert!(cursor_to_db(Cursor::new(-1)).is_err());
        assert!(cursor_from_db("l", -1).is_err());
        assert_eq!(cursor_from_db("l", 7).ok(), Some(Cursor::new(7)));
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abcdef", 3), "abc");
        assert_eq!(truncate("aé", 2), "a");
    }

    #[test]
    fn batch_size_saturates_but_count_is_checked() {
        assert_eq!(processed_to_db(5).ok(), Some((5, 5)));
        assert_eq!(
            processed_to_db(u64::from(u32::MAX)).ok(),
            Some((i64::from(u32::MAX), i32::MAX))
        );
        assert!(processed_to_db(u64::MAX).is_err());
    }
}
