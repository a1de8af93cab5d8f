//! PostgreSQL backends for Observers: the change-log source (id cursor below a lock-derived
//! horizon, NOTIFY wake-up), checkpoints, the dead-letter queue, capture management, change-log
//! retention and the migrations (embedded from `../../migrations`).
#![forbid(unsafe_code)]

pub mod backfill;
pub mod capture;
pub mod change_row;
pub mod changelog;
pub mod checkpoint;
pub mod dedup;
pub mod dlq;
pub mod entity;
pub mod error;
pub mod gone;
pub mod ingest;
pub mod monitoring;
pub mod replay;
pub mod retention;
pub mod source;
pub mod wal;

use std::time::Duration;

pub use checkpoint::{PartitionHandover, PostgresCheckpointStore};
pub use dedup::PostgresDedupStore;
pub use dlq::PostgresDeadLetterQueue;
pub use error::PgError;
pub use gone::PostgresGoneEndpoints;
pub use ingest::PostgresChangeLogSink;
pub use source::{ChangeLogListener, PgEventSource};
pub use sqlx::PgPool;

/// The schema, embedded: `observers migrate` and `observers run` apply it.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Opens a pool to `url` with settings suited to a listener process.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, PgError> {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .map_err(|e| PgError::Connect {
            message: observers_core::redact::text(&e.to_string()),
        })
}

/// A connection kept for a hot path (taken from `pool` when `conn` holds none). sqlx checks a
/// pooled connection with a round trip each time it goes back to the pool; a reader or relay
/// that keeps its connection saves that round trip on every query. The caller drops it after an
/// error, so the next query takes a fresh one.
pub(crate) async fn held<'a>(
    pool: &PgPool,
    conn: &'a mut Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
) -> Result<&'a mut sqlx::PgConnection, sqlx::Error> {
    if conn.is_none() {
        *conn = Some(pool.acquire().await?);
    }
    match conn {
        Some(c) => Ok(&mut **c),
        None => unreachable!("set above"),
    }
}

/// Applies every pending migration (idempotent; concurrent callers are serialized by an
/// advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<(), PgError> {
    MIGRATOR
        .run(pool)
        .await
        .map_err(|e| PgError::Migrate(e.to_string()))
}
