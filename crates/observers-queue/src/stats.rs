//! Per-queue figures and listings for `observers jobs stats|list`: each queue's counts by
//! status and mean run time, and jobs of one queue, newest first.

use observers_core::stores::jobs::{Job, JobStats, JobStatus};
use observers_core::{ObserverError, Result};
use serde::Serialize;
use sqlx::PgPool;

use crate::error::QueueError;
use crate::pg::JobRow;

/// One queue's counts by status, the mean time from dequeue to completion of its completed
/// jobs, and how long its oldest due pending job has waited.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueStats {
    pub queue: String,
    pub pending: u64,
    pub processing: u64,
    pub completed: u64,
    pub failed: u64,
    pub avg_run_ms: Option<f64>,
    /// Seconds the oldest due pending job has waited past its `run_at` (`None`: none due).
    pub oldest_pending_age_seconds: Option<f64>,
}

impl QueueStats {
    /// The totals of `queues` in the shape of [`JobStats`] (the mean weighted by completions).
    pub fn total(queues: &[QueueStats]) -> JobStats {
        let mut total = JobStats::default();
        let mut weighted = 0.0;
        for q in queues {
            total.pending += q.pending;
            total.processing += q.processing;
            total.completed += q.completed;
            total.failed += q.failed;
            if let Some(ms) = q.avg_run_ms {
                #[expect(clippy::cast_precision_loss, reason = "a mean needs no more")]
                let n = q.completed as f64;
                weighted += ms * n;
            }
        }
        if total.completed > 0 {
            #[expect(clippy::cast_precision_loss, reason = "a mean needs no more")]
            let n = total.completed as f64;
            total.avg_run_ms = Some(weighted / n);
        }
        total
    }
}

fn db(e: sqlx::Error) -> ObserverError {
    QueueError::Database(e).into()
}

/// Every queue holding jobs (live or completed), by name; only `queue` when given (then one
/// entry, zeros included, even when it holds no job).
pub async fn queue_stats(pool: &PgPool, queue: Option<&str>) -> Result<Vec<QueueStats>> {
    type Row = (String, i64, i64, i64, i64, Option<f64>, Option<f64>);
    let rows: Vec<Row> = sqlx::query_as(
        "WITH live AS ( \
           SELECT queue_name, \
                  count(*) FILTER (WHERE status = 'pending') AS pending, \
                  count(*) FILTER (WHERE status = 'processing') AS processing, \
                  count(*) FILTER (WHERE status = 'failed') AS failed, \
                  extract(epoch FROM now() - min(run_at) \
                      FILTER (WHERE status = 'pending' AND run_at <= now()))::float8 AS age \
             FROM observer_jobs WHERE $1::text IS NULL OR queue_name = $1 GROUP BY queue_name), \
         done AS ( \
           SELECT queue_name, count(*) AS completed, \
                  avg(extract(epoch FROM completed_at - started_at) * 1000)::float8 AS avg_ms \
             FROM observer_jobs_completed WHERE $1::text IS NULL OR queue_name = $1 \
            GROUP BY queue_name), \
         names AS (SELECT queue_name FROM live UNION SELECT queue_name FROM done \
                   UNION SELECT $1 WHERE $1::text IS NOT NULL) \
         SELECT n.queue_name, coalesce(l.pending, 0), coalesce(l.processing, 0), \
                coalesce(d.completed, 0), coalesce(l.failed, 0), d.avg_ms, l.age \
           FROM names n \
           LEFT JOIN live l ON l.queue_name = n.queue_name \
           LEFT JOIN done d ON d.queue_name = n.queue_name \
          ORDER BY n.queue_name",
    )
    .bind(queue)
    .fetch_all(pool)
    .await
    .map_err(db)?;
    let n = |v: i64| u64::try_from(v).unwrap_or_default();
    Ok(rows
        .into_iter()
        .map(
            |(queue, pending, processing, completed, failed, avg_run_ms, age)| QueueStats {
                queue,
                pending: n(pending),
                processing: n(processing),
                completed: n(completed),
                failed: n(failed),
                avg_run_ms,
                oldest_pending_age_seconds: age.map(|a| a.max(0.0)),
            },
        )
        .collect())
}

/// Jobs newest first, live and completed together, of `queue` when given and of `status` when
/// given.
pub async fn list_jobs(
    pool: &PgPool,
    queue: Option<&str>,
    status: Option<JobStatus>,
    limit: usize,
) -> Result<Vec<Job>> {
    let rows: Vec<JobRow> = sqlx::query_as(
        "(SELECT id, queue_name, kind, status, payload, unique_key, priority, run_at, attempts, \
                 max_attempts, last_error, worker_id, heartbeat_at, created_at, group_key \
            FROM observer_jobs \
           WHERE ($1::text IS NULL OR status = $1) AND ($3::text IS NULL OR queue_name = $3) \
           ORDER BY id DESC LIMIT $2) \
         UNION ALL \
         (SELECT id, queue_name, kind, 'completed', payload, unique_key, priority, run_at, \
                 attempts, max_attempts, last_error, worker_id, heartbeat_at, created_at, group_key \
            FROM observer_jobs_completed \
           WHERE ($1::text IS NULL OR $1 = 'completed') AND ($3::text IS NULL OR queue_name = $3) \
           ORDER BY id DESC LIMIT $2) \
         ORDER BY id DESC LIMIT $2",
    )
    .bind(status.map(JobStatus::as_str))
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .bind(queue)
    .fetch_all(pool)
    .await
    .map_err(db)?;
    rows.into_iter().map(JobRow::into_job).collect()
}
