//! The group's status for `observers status` and `/status`: the leader, every instance with its
//! state, heartbeat age and partitions, the leases with their epochs, and per partition the
//! checkpoint and how far behind it is.

use observers_core::Result;
use observers_core::stores::lease::Lease;
use serde::Serialize;
use sqlx::PgPool;

use crate::config::MultiListenerConfig;
use crate::coordinator::{InstanceRecord, MultiListenerCoordinator};
use crate::error::db;

/// How far one partition's cursor is behind the change log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionLag {
    pub partition: u32,
    pub cursor_name: String,
    /// `None` while the partition has no checkpoint.
    pub cursor: Option<String>,
    /// Committed or not, rows of the partition after the cursor.
    pub rows: u64,
    /// Age of the oldest of them (0 when none).
    pub oldest_age_secs: f64,
}

/// One partition lease.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeaseStatus {
    pub name: String,
    pub holder: String,
    pub epoch: i64,
    pub expires_in_secs: f64,
}

impl From<Lease> for LeaseStatus {
    fn from(l: Lease) -> Self {
        Self {
            name: l.name,
            holder: l.holder,
            epoch: l.epoch,
            expires_in_secs: l.expires_in.as_secs_f64(),
        }
    }
}

/// A recorded failover.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailoverRecord {
    pub failed_instance: String,
    pub partitions: Vec<i32>,
    pub detected_by: String,
    pub detected_at: chrono::DateTime<chrono::Utc>,
}

/// Everything `observers status` shows about an HA group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupStatus {
    pub group: String,
    pub consumer: String,
    pub partitions: u32,
    pub leader: Option<LeaseStatus>,
    pub instances: Vec<InstanceRecord>,
    pub leases: Vec<LeaseStatus>,
    pub lag: Vec<PartitionLag>,
    /// The latest failovers, newest first.
    pub failovers: Vec<FailoverRecord>,
}

impl GroupStatus {
    pub async fn load(pool: &PgPool, config: &MultiListenerConfig) -> Result<Self> {
        let coordinator = MultiListenerCoordinator::new(pool.clone(), config.clone());
        let leader = coordinator.leader().await?.map(LeaseStatus::from);
        let instances = coordinator.instances().await?;
        let leases = coordinator
            .leases()
            .list(&config.partition_lease_prefix())
            .await?
            .into_iter()
            .map(LeaseStatus::from)
            .collect();
        let lag = partition_lag(pool, config).await?;
        let rows: Vec<(String, Vec<i32>, String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
            "SELECT failed_instance, partitions, detected_by, detected_at \
                 FROM observer_failovers WHERE group_name = $1 \
                 ORDER BY detected_at DESC, id DESC LIMIT 20",
        )
        .bind(&config.group)
        .fetch_all(pool)
        .await
        .map_err(db)?;
        let failovers = rows
            .into_iter()
            .map(
                |(failed_instance, partitions, detected_by, detected_at)| FailoverRecord {
                    failed_instance,
                    partitions,
                    detected_by,
                    detected_at,
                },
            )
            .collect();
        Ok(Self {
            group: config.group.clone(),
            consumer: config.consumer.clone(),
            partitions: config.partitions,
            leader,
            instances,
            leases,
            lag,
            failovers,
        })
    }
}

type LagRow = (String, i64, Option<i64>, i64, f64);

/// Rows after each partition's cursor (one statement for all partitions).
pub async fn partition_lag(
    pool: &PgPool,
    config: &MultiListenerConfig,
) -> Result<Vec<PartitionLag>> {
    let n = config.partitions;
    let names: Vec<String> = (0..n).map(|p| config.partition_cursor(p)).collect();
    let parts: Vec<i64> = (0..n).map(i64::from).collect();
    let rows: Vec<LagRow> = sqlx::query_as(
        "SELECT p.name, p.part, c.cursor_id, lag.rows, lag.age \
           FROM unnest($1::text[], $2::bigint[]) AS p(name, part) \
           LEFT JOIN observer_checkpoints c ON c.listener_id = p.name \
           CROSS JOIN LATERAL ( \
             SELECT count(*) AS rows, \
                    coalesce(extract(epoch FROM now() - min(l.created_at))::float8, 0) AS age \
               FROM observer_change_log l \
              WHERE l.id > coalesce(c.cursor_id, 0) \
                AND ($3 <= 1 OR (hashtextextended(l.entity_id, 0) & 9223372036854775807) % $3 = p.part) \
           ) lag \
          ORDER BY p.part",
    )
    .bind(&names)
    .bind(&parts)
    .bind(i64::from(n))
    .fetch_all(pool)
    .await
    .map_err(db)?;
    Ok(rows
        .into_iter()
        .map(|(name, part, id, rows, age)| PartitionLag {
            partition: u32::try_from(part).unwrap_or(0),
            cursor: id.map(|i| i.to_string()),
            cursor_name: name,
            rows: u64::try_from(rows).unwrap_or(0),
            oldest_age_secs: age.max(0.0),
        })
        .collect())
}
