//! `PostgresDedupStore`: the two-phase claim of `observers_core::stores::dedup` in the table
//! `observer_dedup`, so deduplication is shared between instances without Redis.
//!
//! A claim is one `INSERT ... ON CONFLICT DO UPDATE ... WHERE` statement: it writes only when the
//! key is free, expired, or held in progress by another (dead) owner, so two claims of one key can
//! never both win (the loser blocks on the row lock, then re-checks the condition).

use std::time::Duration;

use async_trait::async_trait;
use observers_core::Result;
use observers_core::stores::dedup::{ClaimOutcome, DedupStore};
use sqlx::PgPool;

use crate::error::PgError;

/// 0 = acquired, 1 = done, 2 = in progress. No row at all means the row that blocked the insert
/// was committed after this statement's snapshot: ask again.
const CLAIM_SQL: &str = "
WITH won AS (
    INSERT INTO observer_dedup AS d (key, owner, done, expires_at)
    VALUES ($1, $2, false, now() + make_interval(secs => $3))
    ON CONFLICT (key) DO UPDATE
        SET owner = EXCLUDED.owner, done = false, expires_at = EXCLUDED.expires_at
        WHERE d.expires_at <= now() OR (NOT d.done AND d.owner IS DISTINCT FROM EXCLUDED.owner)
    RETURNING 0 AS code
)
SELECT code FROM won
UNION ALL
SELECT CASE WHEN done THEN 1 ELSE 2 END FROM observer_dedup
 WHERE key = $1 AND NOT EXISTS (SELECT 1 FROM won)";

const COMPLETE_SQL: &str = "
INSERT INTO observer_dedup (key, owner, done, expires_at)
VALUES ($1, NULL, true, now() + make_interval(secs => $2))
ON CONFLICT (key) DO UPDATE SET owner = NULL, done = true, expires_at = EXCLUDED.expires_at";

/// Claims in PostgreSQL. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PostgresDedupStore {
    pool: PgPool,
}

impl PostgresDedupStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Deletes up to `limit` expired rows; returns how many. Expired rows are harmless (claims
    /// take them over), this only keeps the table small.
    pub async fn purge_expired(&self, limit: i64) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM observer_dedup WHERE key IN (
                 SELECT key FROM observer_dedup WHERE expires_at <= now() LIMIT $1
                 FOR UPDATE SKIP LOCKED)",
        )
        .bind(limit)
        .execute(&self.pool)
        .await
        .map_err(PgError::from)?;
        Ok(done.rows_affected())
    }
}

fn secs(d: Duration) -> f64 {
    // make_interval keeps microseconds; anything shorter rounds up so a TTL is never zero.
    d.as_secs_f64().max(0.000_001)
}

#[async_trait]
impl DedupStore for PostgresDedupStore {
    async fn claim(&self, key: &str, owner: &str, ttl: Duration) -> Result<ClaimOutcome> {
        // The retry is only for the snapshot race described on CLAIM_SQL; a few rounds suffice.
        for _ in 0..5 {
            let code: Option<i32> = sqlx::query_scalar(CLAIM_SQL)
                .bind(key)
                .bind(owner)
                .bind(secs(ttl))
                .fetch_optional(&self.pool)
                .await
                .map_err(PgError::from)?;
            match code {
                Some(0) => return Ok(ClaimOutcome::Acquired),
                Some(1) => return Ok(ClaimOutcome::AlreadyDone),
                Some(_) => return Ok(ClaimOutcome::InProgress),
                None => {}
            }
        }
        Err(observers_core::ObserverError::store(
            "postgres",
            format!("dedup claim of `{key}` kept racing with concurrent claims; try again"),
        ))
    }

    async fn complete(&self, key: &str, window: Duration) -> Result<()> {
        sqlx::query(COMPLETE_SQL)
            .bind(key)
            .bind(secs(window))
            .execute(&self.pool)
            .await
            .map_err(PgError::from)?;
        Ok(())
    }

    async fn release(&self, key: &str) -> Result<()> {
        sqlx::query("DELETE FROM observer_dedup WHERE key = $1")
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(PgError::from)?;
        Ok(())
    }
}
