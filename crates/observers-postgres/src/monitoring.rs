//! Gauges read from the database for metrics and status: the cutoff lag (age of the oldest open
//! transaction that wrote the change log, which holds the read horizon back), a consumer's backlog and the
//! age of its oldest unprocessed change, and a reachability probe. [`status_pool`] is the pool
//! they run on in `observers run`: small, separate from the listener's, with a server-side
//! statement timeout.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::error::PgError;

/// Status counts (backlogs, change-log rows) stop at this many rows, so they stay cheap on a
/// huge log.
pub const COUNT_CAP: i64 = 100_000;

/// Backlogs are counted up to this many rows.
pub const BACKLOG_COUNT_CAP: i64 = COUNT_CAP;

/// How long one status or gauge query may run in PostgreSQL before the server cancels it.
pub const STATUS_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections of the status pool.
pub const STATUS_POOL_SIZE: u32 = 2;

/// A pool for status, readiness and gauge queries, separate from `pool` (same server and
/// credentials) so they can never take the listener's connections: at most
/// [`STATUS_POOL_SIZE`] connections, opened lazily, a short acquire timeout, and
/// `statement_timeout` set on every connection, so a query whose caller gave up (an HTTP client
/// that went away) stops in PostgreSQL too.
pub fn status_pool(pool: &PgPool, statement_timeout: Duration) -> PgPool {
    let ms = statement_timeout.as_millis().max(1).to_string();
    let options = (*pool.connect_options())
        .clone()
        .options([("statement_timeout", ms.as_str())]);
    PgPoolOptions::new()
        .max_connections(STATUS_POOL_SIZE)
        .min_connections(0)
        .acquire_timeout(statement_timeout)
        .connect_lazy_with(options)
}

/// One consumer's view of the source.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SourceGauges {
    /// Age of the oldest open transaction that wrote the change log (it holds the read horizon
    /// back; transactions that wrote no captured row never do). Needs `pg_monitor` (or superuser)
    /// to see other roles' sessions.
    pub cutoff_lag: Duration,
    /// Rows after the consumer's cursor, capped at [`BACKLOG_COUNT_CAP`].
    pub backlog: u64,
    /// Age of the first row after the cursor (zero when caught up).
    pub checkpoint_lag: Duration,
}

fn secs(v: f64) -> Duration {
    Duration::try_from_secs_f64(v.max(0.0)).unwrap_or_default()
}

/// Reads the gauges of `listener_id` (cursor 0 when it has no checkpoint yet).
pub async fn source_gauges(pool: &PgPool, listener_id: &str) -> Result<SourceGauges, PgError> {
    // The writers in flight: transactions holding the write lock every insert into the change
    // log takes (prepared ones too, aged from their PREPARE).
    let cutoff: f64 = sqlx::query_scalar(
        "SELECT coalesce(extract(epoch FROM now() - min(coalesce(a.xact_start, p.prepared))), 0)::float8
           FROM pg_locks l
           LEFT JOIN pg_stat_activity a ON a.pid = l.pid
           LEFT JOIN pg_locks t
             ON l.pid IS NULL AND t.locktype = 'transactionid'
            AND t.virtualtransaction = l.virtualtransaction
           LEFT JOIN pg_prepared_xacts p ON p.transaction = t.transactionid
          WHERE l.locktype = 'relation' AND l.relation = 'observer_change_log'::regclass
            AND l.granted AND l.mode = 'RowExclusiveLock'
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(pool)
    .await?;
    let (backlog, oldest): (i64, f64) = sqlx::query_as(
        "WITH after AS (
             SELECT l.created_at FROM observer_change_log l
              WHERE l.id > coalesce((SELECT cursor_id FROM observer_checkpoints WHERE listener_id = $1), 0)
              ORDER BY l.id
              LIMIT $2
         )
         SELECT count(*),
                coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
           FROM after",
    )
    .bind(listener_id)
    .bind(BACKLOG_COUNT_CAP)
    .fetch_one(pool)
    .await?;
    Ok(SourceGauges {
        cutoff_lag: secs(cutoff),
        backlog: u64::try_from(backlog).unwrap_or_default(),
        checkpoint_lag: secs(oldest),
    })
}

/// `SELECT 1`: whether the database answers.
pub async fn ping(pool: &PgPool) -> Result<(), PgError> {
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(())
}
