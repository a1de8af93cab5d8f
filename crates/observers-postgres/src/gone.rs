//! `observer_gone_endpoints`: targets disabled by `410 Gone`, shared by every instance and by
//! the CLI (`observers status` lists them, `observers actions enable` removes them).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use observers_core::Result;
use observers_core::stores::gone::{GoneEndpoint, GoneEndpoints};
use observers_core::text;
use sqlx::PgPool;

use crate::error::PgError;

/// The PostgreSQL store of disabled targets.
#[derive(Debug, Clone)]
pub struct PostgresGoneEndpoints {
    pool: PgPool,
}

impl PostgresGoneEndpoints {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    target: String,
    observer: String,
    action_index: i32,
    reason: String,
    disabled_at: DateTime<Utc>,
}

#[async_trait]
impl GoneEndpoints for PostgresGoneEndpoints {
    async fn disable(&self, e: &GoneEndpoint) -> Result<()> {
        sqlx::query(
            "INSERT INTO observer_gone_endpoints (target, observer, action_index, reason, disabled_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (target) DO NOTHING",
        )
        .bind(text::storable(&e.target))
        .bind(text::storable(&e.observer))
        .bind(i32::try_from(e.action_index).unwrap_or(i32::MAX))
        .bind(text::storable(&e.reason))
        .bind(e.disabled_at)
        .execute(&self.pool)
        .await
        .map_err(PgError::from)?;
        Ok(())
    }

    async fn is_disabled(&self, target: &str) -> Result<bool> {
        let found: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM observer_gone_endpoints WHERE target = $1")
                .bind(text::storable(target))
                .fetch_optional(&self.pool)
                .await
                .map_err(PgError::from)?;
        Ok(found.is_some())
    }

    async fn enable(&self, target: Option<&str>) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM observer_gone_endpoints WHERE $1::text IS NULL OR target = $1",
        )
        .bind(target.map(text::storable))
        .execute(&self.pool)
        .await
        .map_err(PgError::from)?;
        Ok(done.rows_affected())
    }

    async fn list(&self) -> Result<Vec<GoneEndpoint>> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT target, observer, action_index, reason, disabled_at \
               FROM observer_gone_endpoints ORDER BY disabled_at, target LIMIT 1000",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(PgError::from)?;
        Ok(rows
            .into_iter()
            .map(|r| GoneEndpoint {
                target: r.target,
                observer: r.observer,
                action_index: usize::try_from(r.action_index).unwrap_or(0),
                reason: r.reason,
                disabled_at: r.disabled_at,
            })
            .collect())
    }
}
