//! Per-queue depth for `observers status` and `/status`: pending, processing and failed jobs of
//! each queue, and how long its oldest due job has waited to start.

use observers_core::{ObserverError, Result};
use serde::Serialize;
use sqlx::PgPool;

use crate::error::QueueError;

/// One queue's depth.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueDepth {
    pub queue: String,
    pub pending: u64,
    pub processing: u64,
    /// Failed for good (their DLQ item is written); `observers jobs retry` runs them again.
    pub failed: u64,
    /// Seconds the oldest due pending job has waited past its `run_at` (`None`: none due). Jobs
    /// scheduled for a later retry are pending but not yet waiting.
    pub oldest_pending_age_seconds: Option<f64>,
}

const DEPTHS: &str = "SELECT queue_name, \
        count(*) FILTER (WHERE status = 'pending'), \
        count(*) FILTER (WHERE status = 'processing'), \
        count(*) FILTER (WHERE status = 'failed'), \
        extract(epoch FROM now() - min(run_at) FILTER (WHERE status = 'pending' AND run_at <= now()))::float8 \
     FROM observer_jobs GROUP BY queue_name ORDER BY queue_name";

/// Every queue that holds live jobs (completed ones are moved out of `observer_jobs`).
pub async fn queue_depths(pool: &PgPool) -> Result<Vec<QueueDepth>> {
    let rows: Vec<(String, i64, i64, i64, Option<f64>)> = sqlx::query_as(DEPTHS)
        .fetch_all(pool)
        .await
        .map_err(|e| ObserverError::from(QueueError::Database(e)))?;
    let n = |v: i64| u64::try_from(v).unwrap_or_default();
    Ok(rows
        .into_iter()
        .map(|(queue, pending, processing, failed, age)| QueueDepth {
            queue,
            pending: n(pending),
            processing: n(processing),
            failed: n(failed),
            oldest_pending_age_seconds: age.map(|a| a.max(0.0)),
        })
        .collect())
}
