//! The change-log source: reads `observer_change_log` after a `(txid, id)` cursor, only below
//! the snapshot's xmin (so every row returned is final), and wakes on `NOTIFY` with a fallback
//! poll. `ChangeLogListener` runs core's listener loop over it with PostgreSQL checkpoints.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use observers_core::executor::ObserverExecutor;
use observers_core::listener::{Listener, ListenerConfig, ListenerStats};
use observers_core::stores::checkpoint::CheckpointStore;
use observers_core::stores::source::{EventSource, SourceItem};
use observers_core::{Cursor, ObserverError};
use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgRow};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::change_row::{self, change_columns};
use crate::error::PgError;

/// The NOTIFY channel the change log's statement trigger signals.
pub const CHANNEL: &str = "observer_change_log";

/// The one-statement, snapshot-safe read (DESIGN.md §3).
const FETCH: &str = concat!(
    "SELECT ",
    change_columns!(),
    " FROM observer_change_log \
      WHERE (txid, id) > ($1::text::xid8, $2) \
        AND txid < pg_snapshot_xmin(pg_current_snapshot()) \
      ORDER BY txid, id \
      LIMIT $3"
);

/// The same read restricted to one partition: rows whose entity id hashes to `$5` of `$4`
/// (a stable hash, so an entity always lands in the same partition and stays in order).
const FETCH_PARTITION: &str = concat!(
    "SELECT ",
    change_columns!(),
    " FROM observer_change_log \
      WHERE (txid, id) > ($1::text::xid8, $2) \
        AND txid < pg_snapshot_xmin(pg_current_snapshot()) \
        AND (hashtextextended(entity_id, 0) & 9223372036854775807) % $4 = $5 \
      ORDER BY txid, id \
      LIMIT $3"
);

/// Decodes rows one by one: a row that cannot be read becomes a poison item, never a failed batch.
fn decode_all(rows: &[PgRow]) -> Result<Vec<SourceItem>, PgError> {
    rows.iter().map(change_row::decode).collect()
}

/// Reads the change log; a background task LISTENs and wakes waiters.
pub struct PgEventSource {
    pool: PgPool,
    notify: Arc<Notify>,
    listen_task: JoinHandle<()>,
}

impl Drop for PgEventSource {
    fn drop(&mut self) {
        self.listen_task.abort();
    }
}

impl PgEventSource {
    /// Starts listening on `observer_change_log`. Connection trouble is retried in the
    /// background (the fallback poll keeps delivery going meanwhile).
    pub fn new(pool: PgPool) -> Self {
        let notify = Arc::new(Notify::new());
        let listen_task = tokio::spawn(listen_loop(pool.clone(), notify.clone()));
        Self {
            pool,
            notify,
            listen_task,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Reads up to `limit` final rows after `after`.
    pub async fn fetch_rows(
        &self,
        after: Cursor,
        limit: usize,
    ) -> Result<Vec<SourceItem>, PgError> {
        let txid = after.txid.to_string();
        let rows = sqlx::query(FETCH)
            .bind(txid)
            .bind(after.id)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        decode_all(&rows)
    }

    /// Like [`fetch_rows`](Self::fetch_rows), only the rows of `partition` (of `partitions`).
    pub async fn fetch_partition(
        &self,
        after: Cursor,
        limit: usize,
        partition: u32,
        partitions: u32,
    ) -> Result<Vec<SourceItem>, PgError> {
        if partitions <= 1 {
            return self.fetch_rows(after, limit).await;
        }
        let rows = sqlx::query(FETCH_PARTITION)
            .bind(after.txid.to_string())
            .bind(after.id)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(i64::from(partitions))
            .bind(i64::from(partition))
            .fetch_all(&self.pool)
            .await?;
        decode_all(&rows)
    }
}

async fn listen_loop(pool: PgPool, notify: Arc<Notify>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, ?backoff, "LISTEN connection failed; relying on polling until it is back");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %e, "LISTEN failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
            continue;
        }
        backoff = Duration::from_millis(100);
        // Notifications sent while we were not listening are lost: wake the reader so it
        // re-reads from its cursor.
        notify.notify_one();
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => notify.notify_one(),
                Ok(None) => {
                    tracing::info!(
                        "LISTEN connection was lost and re-established; re-reading from the cursor"
                    );
                    notify.notify_one();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN connection failed; reconnecting");
                    notify.notify_one();
                    break;
                }
            }
        }
    }
}

#[async_trait]
impl EventSource for PgEventSource {
    async fn fetch(&self, after: Cursor, limit: usize) -> observers_core::Result<Vec<SourceItem>> {
        self.fetch_rows(after, limit)
            .await
            .map_err(ObserverError::from)
    }

    async fn wait_for_changes(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.notify.notified())
            .await
            .is_ok()
    }
}

/// Core's listener loop over the PostgreSQL change log.
pub struct ChangeLogListener {
    inner: Listener,
}

impl ChangeLogListener {
    pub fn new(
        pool: PgPool,
        checkpoints: Arc<dyn CheckpointStore>,
        executor: Arc<ObserverExecutor>,
        config: ListenerConfig,
    ) -> Self {
        let source = Arc::new(PgEventSource::new(pool));
        Self {
            inner: Listener::new(source, checkpoints, executor, config),
        }
    }

    /// Runs until `shutdown` is true; in-flight events finish and the checkpoint is saved.
    pub async fn run(
        &self,
        shutdown: watch::Receiver<bool>,
    ) -> observers_core::Result<ListenerStats> {
        self.inner.run(shutdown).await
    }
}
