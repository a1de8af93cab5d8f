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

/// A connection kept for a hot path rather than taken from the pool for each query: sqlx checks
/// a pooled connection with a round trip each time it goes back, which was half the round trips
/// of a busy reader or relay. [`Kept::run`] drops it after an error, so the next query takes a
/// fresh one.
#[derive(Default)]
pub(crate) struct Kept(tokio::sync::Mutex<Option<sqlx::pool::PoolConnection<sqlx::Postgres>>>);

impl Kept {
    /// Runs `f` on the kept connection (taken from `pool` when there is none), one caller at a
    /// time.
    pub(crate) async fn run<T, E: From<sqlx::Error>>(
        &self,
        pool: &PgPool,
        f: impl AsyncFnOnce(&mut sqlx::PgConnection) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut kept = self.0.lock().await;
        if kept.is_none() {
            *kept = Some(pool.acquire().await?);
        }
        let Some(conn) = kept.as_mut() else {
            unreachable!("set above")
        };
        let result = f(conn).await;
        if result.is_err() {
            *kept = None;
        }
        result
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
