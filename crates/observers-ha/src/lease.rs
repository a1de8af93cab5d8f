//! `PostgresLeaseStore`: core's `LeaseStore` on the `observer_leases` table, by the database
//! clock, so that instances with skewed clocks still agree on who holds what. Every method is
//! one statement; concurrent acquisitions of a free lease have exactly one winner (the row lock
//! of `INSERT ... ON CONFLICT DO UPDATE ... WHERE` serializes them and re-checks the condition).

use std::time::Duration;

use async_trait::async_trait;
use observers_core::Result;
use observers_core::stores::lease::{Lease, LeaseStore};
use sqlx::PgPool;

use crate::error::{HaError, db};

/// Takes a free or lapsed lease (new epoch), or extends one the caller already holds (same
/// epoch). Returns nothing while another holder's lease is live.
const ACQUIRE: &str = "INSERT INTO observer_leases AS l \
       (name, holder, epoch, acquired_at, renewed_at, expires_at) \
     VALUES ($1, $2, 1, now(), now(), now() + make_interval(secs => $3)) \
     ON CONFLICT (name) DO UPDATE SET \
       epoch = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at > now() \
                    THEN l.epoch ELSE l.epoch + 1 END, \
       acquired_at = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at > now() \
                          THEN l.acquired_at ELSE now() END, \
       holder = EXCLUDED.holder, \
       renewed_at = now(), \
       expires_at = EXCLUDED.expires_at \
     WHERE l.holder IS NULL OR l.expires_at <= now() OR l.holder = EXCLUDED.holder \
     RETURNING holder, epoch, extract(epoch FROM expires_at - now())::float8";

const RENEW: &str = "UPDATE observer_leases \
     SET expires_at = now() + make_interval(secs => $4), renewed_at = now() \
     WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at > now() \
     RETURNING holder, epoch, extract(epoch FROM expires_at - now())::float8";

const RELEASE: &str = "UPDATE observer_leases SET holder = NULL, expires_at = now() \
     WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at > now()";

const IS_VALID: &str = "SELECT EXISTS (SELECT 1 FROM observer_leases \
     WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at > now())";

const HOLDER: &str = "SELECT holder, epoch, extract(epoch FROM expires_at - now())::float8 \
     FROM observer_leases WHERE name = $1 AND holder IS NOT NULL AND expires_at > now()";

const LIST: &str = "SELECT name, holder, epoch, extract(epoch FROM expires_at - now())::float8 \
     FROM observer_leases WHERE starts_with(name, $1) AND holder IS NOT NULL AND expires_at > now() \
     ORDER BY name";

/// Leases in PostgreSQL (`observer_leases`), timed by the database clock.
#[derive(Debug, Clone)]
pub struct PostgresLeaseStore {
    pool: PgPool,
}

impl PostgresLeaseStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Every live lease whose name starts with `prefix`, ordered by name.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Lease>> {
        let rows: Vec<(String, String, i64, f64)> = sqlx::query_as(LIST)
            .bind(prefix)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        Ok(rows
            .into_iter()
            .map(|(name, holder, epoch, secs)| Lease {
                name,
                holder,
                epoch,
                expires_in: secs_to_duration(secs),
            })
            .collect())
    }
}

fn ttl_secs(name: &str, ttl: Duration) -> Result<f64> {
    if ttl.is_zero() {
        return Err(
            HaError::Invalid(format!("lease `{name}`: TTL must be greater than zero")).into(),
        );
    }
    Ok(ttl.as_secs_f64())
}

fn secs_to_duration(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or_default()
}

fn to_lease(name: &str, row: Option<(String, i64, f64)>) -> Option<Lease> {
    row.map(|(holder, epoch, secs)| Lease {
        name: name.to_owned(),
        holder,
        epoch,
        expires_in: secs_to_duration(secs),
    })
}

#[async_trait]
impl LeaseStore for PostgresLeaseStore {
    async fn acquire(&self, name: &str, holder: &str, ttl: Duration) -> Result<Option<Lease>> {
        let secs = ttl_secs(name, ttl)?;
        let row = sqlx::query_as(ACQUIRE)
            .bind(name)
            .bind(holder)
            .bind(secs)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(to_lease(name, row))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Option<Lease>> {
        let secs = ttl_secs(&lease.name, ttl)?;
        let row = sqlx::query_as(RENEW)
            .bind(&lease.name)
            .bind(&lease.holder)
            .bind(lease.epoch)
            .bind(secs)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(to_lease(&lease.name, row))
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let done = sqlx::query(RELEASE)
            .bind(&lease.name)
            .bind(&lease.holder)
            .bind(lease.epoch)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn is_valid(&self, lease: &Lease) -> Result<bool> {
        sqlx::query_scalar(IS_VALID)
            .bind(&lease.name)
            .bind(&lease.holder)
            .bind(lease.epoch)
            .fetch_one(&self.pool)
            .await
            .map_err(db)
    }

    async fn holder(&self, name: &str) -> Result<Option<Lease>> {
        let row = sqlx::query_as(HOLDER)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(to_lease(name, row))
    }
}
