//! The replication slot and publication the WAL source streams: created on first use, watched
//! (`observers status`, metrics: a slot nobody confirms keeps every WAL segment from its restart
//! point on disk) and dropped by an operator (`observers capture drop-slot`).

use serde::Serialize;
use sqlx::PgPool;

use crate::error::PgError;

/// `wal_level` must be `logical` for a logical slot.
pub async fn require_logical(pool: &PgPool) -> Result<(), PgError> {
    let level: String = sqlx::query_scalar("SELECT current_setting('wal_level')")
        .fetch_one(pool)
        .await?;
    if level == "logical" {
        Ok(())
    } else {
        Err(PgError::Invalid(format!(
            "the WAL source needs wal_level = logical, and this server runs wal_level = {level}: \
             set it in postgresql.conf (ALTER SYSTEM SET wal_level = logical) and restart \
             PostgreSQL, or capture with kind = \"trigger\""
        )))
    }
}

/// Creates the logical slot `slot` (plugin `pgoutput`) unless it exists. Returns whether it
/// created it. Changes committed after this returns are kept for the relay. Slot names are the
/// whole server's: a slot of that name in another database is refused, naming that database.
pub async fn ensure_slot(pool: &PgPool, slot: &str) -> Result<bool, PgError> {
    let exists: Option<(String, String, String)> = sqlx::query_as(
        "SELECT plugin::text, database::text, current_database()::text
           FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_optional(pool)
    .await?;
    if let Some((_, database, current)) = exists.as_ref().filter(|(_, d, c)| d != c) {
        return Err(PgError::Invalid(format!(
            "replication slot {slot} belongs to database {database}, not to {current}: slot names \
             are shared by the whole server, so name another slot in [source] slot for this \
             database"
        )));
    }
    match exists.as_ref().map(|(plugin, ..)| plugin.as_str()) {
        Some("pgoutput") => return Ok(false),
        Some(other) => {
            return Err(PgError::Invalid(format!(
                "replication slot {slot} exists with plugin {other}, not pgoutput: drop it \
                 (`observers capture drop-slot`) or name another slot in [source] slot"
            )));
        }
        None => {}
    }
    require_logical(pool).await?;
    match sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
        .bind(slot)
        .execute(pool)
        .await
    {
        Ok(_) => {
            tracing::info!(slot, "created the logical replication slot");
            Ok(true)
        }
        // Another instance created it a moment ago.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42710") => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A slot as `pg_replication_slots` has it, with the WAL it holds back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct SlotStatus {
    pub slot_name: String,
    pub active: bool,
    pub confirmed_flush_lsn: Option<String>,
    /// Bytes of WAL written since the slot's confirmed position: how far the relay is behind.
    pub lag_bytes: Option<i64>,
    /// Bytes of WAL the slot keeps on disk (from its restart point).
    pub retained_bytes: Option<i64>,
    /// `reserved`, `extended`, `unreserved` or `lost` (max_slot_wal_keep_size reached).
    pub wal_status: Option<String>,
}

/// The columns of [`SlotStatus`] from `pg_replication_slots`.
macro_rules! slot_status_sql {
    ($where:literal) => {
        concat!(
            "SELECT slot_name::text, active, confirmed_flush_lsn::text,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8 AS lag_bytes,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8 AS retained_bytes,
                    wal_status
               FROM pg_replication_slots ",
            $where
        )
    };
}

/// The slot's state, or `None` when this database has no slot of that name.
pub async fn status(pool: &PgPool, slot: &str) -> Result<Option<SlotStatus>, PgError> {
    Ok(sqlx::query_as(slot_status_sql!(
        "WHERE slot_name = $1 AND database = current_database()"
    ))
    .bind(slot)
    .fetch_optional(pool)
    .await?)
}

/// Every `pgoutput` slot of this database (the WAL source's, and any other consumer's).
pub async fn list(pool: &PgPool) -> Result<Vec<SlotStatus>, PgError> {
    Ok(sqlx::query_as(slot_status_sql!(
        "WHERE plugin = 'pgoutput' AND database = current_database() ORDER BY slot_name"
    ))
    .fetch_all(pool)
    .await?)
}

/// Drops this database's slot (refused while a relay streams it) and the relay's progress for
/// it. Returns whether there was a slot (one of that name in another database is left alone). Changes not yet copied are lost to the relay; the next relay
/// creates a new slot and starts from then.
pub async fn drop_slot(pool: &PgPool, slot: &str) -> Result<bool, PgError> {
    let Some(s) = status(pool, slot).await? else {
        sqlx::query("DELETE FROM observer_wal_progress WHERE slot_name = $1")
            .bind(slot)
            .execute(pool)
            .await?;
        return Ok(false);
    };
    if s.active {
        return Err(PgError::Invalid(format!(
            "replication slot {slot} is being streamed (an `observers run` with kind = \"wal\" \
             is running): stop it first"
        )));
    }
    sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(slot)
        .execute(pool)
        .await?;
    sqlx::query("DELETE FROM observer_wal_progress WHERE slot_name = $1")
        .bind(slot)
        .execute(pool)
        .await?;
    Ok(true)
}

/// Ends the connection streaming `slot`, if one does: a former HA leader's relay, paused or cut
/// off, that the server would otherwise keep until `wal_sender_timeout` (60 s by default).
/// Returns the process id ended. Needs the right to signal that backend (the same role, or
/// `pg_signal_backend`).
pub async fn end_stream(pool: &PgPool, slot: &str) -> Result<Option<i32>, PgError> {
    Ok(sqlx::query_scalar(
        // The CASE keeps the signal behind the slot's own conditions, whatever order the
        // planner gives the filters.
        "SELECT active_pid FROM pg_replication_slots
          WHERE CASE WHEN slot_name = $1 AND database = current_database() AND active
                     THEN pg_terminate_backend(active_pid)
                     ELSE false END",
    )
    .bind(slot)
    .fetch_optional(pool)
    .await?)
}
