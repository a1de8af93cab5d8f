//! `[retention]` inside `observers run`: every `interval`, each table with an age deletes its
//! older rows in batches of `batch` (each batch a statement of its own, so no writer or delivery
//! waits on a long lock), through the same functions as the manual commands (`changelog prune`,
//! `events prune`, `jobs purge`, `dlq purge`). Under HA only the group's leader runs it.

use std::sync::Arc;
use std::time::Duration;

use observers_core::config::{Config, SearchBackendKind};
use observers_core::stores::dlq::{DeadLetterQueue, DlqFilter, DlqStatus};
use observers_metrics::ObserverMetrics;
use observers_postgres::retention::{self, Table};
use observers_postgres::{PgPool, PostgresDeadLetterQueue};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Starts the retention task, or nothing when every age is `"off"`.
pub fn spawn(
    config: &Config,
    pool: &PgPool,
    metrics: Option<Arc<ObserverMetrics>>,
    stop: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    let r = &config.retention;
    if [r.change_log, r.events, r.jobs_completed, r.dlq_resolved]
        .iter()
        .all(Option::is_none)
    {
        return None;
    }
    Some(tokio::spawn(run(
        config.clone(),
        pool.clone(),
        metrics,
        stop,
    )))
}

async fn run(
    config: Config,
    pool: PgPool,
    metrics: Option<Arc<ObserverMetrics>>,
    mut stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        if super::ha::leads(&config, &pool, "retention").await {
            pass(&config, &pool, metrics.as_deref()).await;
        }
        observers_core::listener::sleep_or_shutdown(config.retention.interval, &mut stop).await;
    }
}

/// One pass over every table with an age; failures are logged and retried next pass.
pub async fn pass(config: &Config, pool: &PgPool, metrics: Option<&ObserverMetrics>) {
    let r = &config.retention;
    let batch = i64::try_from(r.batch.max(1)).unwrap_or(i64::MAX);
    for table in Table::ALL {
        let age = match table {
            Table::ChangeLog => r.change_log,
            Table::Events => r.events,
            Table::JobsCompleted => r.jobs_completed,
            Table::DlqResolved => r.dlq_resolved,
        };
        let Some(age) = age else { continue };
        let deleted = match delete(config, pool, table, age, batch).await {
            Ok(None) => continue,
            Ok(Some(n)) => n,
            Err(e) => {
                tracing::warn!(table = table.as_str(), error = %e, "retention pass failed; retried next pass");
                continue;
            }
        };
        if deleted > 0 {
            tracing::info!(
                table = table.as_str(),
                deleted,
                "retention deleted old rows"
            );
        }
        let Some(m) = metrics else { continue };
        m.retention_deleted(table.as_str(), deleted);
        // The audit trail in Elasticsearch has no row in PostgreSQL to read the age of.
        if table != Table::Events || config.search.backend == SearchBackendKind::Postgres {
            match retention::oldest_age(pool, table).await {
                Ok(oldest) => m.set_retention_oldest_age(table.as_str(), oldest),
                Err(e) => tracing::debug!(error = %e, "reading the oldest row's age failed"),
            }
        }
    }
}

/// Deletes `table`'s rows older than `age`; `None` when the table is not in use (the audit trail
/// with search off).
async fn delete(
    config: &Config,
    pool: &PgPool,
    table: Table,
    age: Duration,
    batch: i64,
) -> anyhow::Result<Option<u64>> {
    let cutoff = chrono::Utc::now() - chrono::Duration::from_std(age)?;
    Ok(Some(match table {
        // Never above the slowest consumer's cursor: the prune itself guarantees it.
        Table::ChangeLog => {
            observers_postgres::changelog::prune(pool, Some(age), batch)
                .await?
                .deleted
        }
        Table::Events => {
            let Some(backend) = super::search::backend(config, pool).map_err(|e| e.error)? else {
                return Ok(None);
            };
            backend.delete_older_than(cutoff).await?
        }
        Table::JobsCompleted => {
            observers_queue::PostgresJobQueue::new(pool.clone())
                .purge_completed_older_than(age, batch)
                .await?
        }
        Table::DlqResolved => {
            let dlq = PostgresDeadLetterQueue::new(pool.clone());
            let filter = DlqFilter {
                status: Some(DlqStatus::Resolved),
                older_than: Some(cutoff),
                limit: Some(usize::try_from(batch).unwrap_or(usize::MAX)),
                ..DlqFilter::default()
            };
            let mut deleted = 0;
            loop {
                let n = dlq.purge(&filter).await?;
                deleted += n;
                if n < batch.unsigned_abs() {
                    break deleted;
                }
            }
        }
    }))
}
