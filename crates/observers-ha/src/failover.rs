//! `FailoverManager`: run by the group leader. It finds instances that stopped heartbeating,
//! records each failover (`observer_failovers`, telemetry), and tells where a partition resumes:
//! its checkpoint. The work itself moves through the leases: a dead holder's partition leases
//! lapse and the survivors take them under new epochs, so no failover step can race a paused
//! old holder (its checkpoint writes are fenced).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use observers_core::Cursor;
use observers_core::Result;
use observers_core::stores::checkpoint::CheckpointStore;
use serde::Serialize;

use crate::coordinator::MultiListenerCoordinator;
use crate::error::db;

/// One detected failure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailoverEvent {
    pub failed_listener_id: String,
    /// The instance that detected it (the leader); the partitions go to whoever takes their
    /// leases, see `targets`.
    pub detected_by: String,
    /// The partitions the failed instance held.
    pub partitions: Vec<i32>,
    /// Current holders of those partitions (empty until the survivors have taken over).
    pub targets: Vec<String>,
    pub timestamp: DateTime<Utc>,
}

/// Detects failed instances and records failovers.
pub struct FailoverManager {
    coordinator: Arc<MultiListenerCoordinator>,
    checkpoints: Arc<dyn CheckpointStore>,
}

impl FailoverManager {
    pub fn new(
        coordinator: Arc<MultiListenerCoordinator>,
        checkpoints: Arc<dyn CheckpointStore>,
    ) -> Self {
        Self {
            coordinator,
            checkpoints,
        }
    }

    /// Instances still registered as live whose heartbeat is older than the failover
    /// threshold.
    pub async fn detect_failures(&self) -> Result<Vec<String>> {
        let threshold = self.coordinator.config().failover_threshold.as_secs_f64();
        Ok(self
            .coordinator
            .instances()
            .await?
            .into_iter()
            .filter(|i| {
                i.heartbeat_age_secs > threshold
                    && !matches!(i.state.as_str(), "stopped" | "failed")
            })
            .map(|i| i.instance_id)
            .collect())
    }

    /// Marks `failed` as failed and records the failover; `None` if it was already handled
    /// (another leader got there first) or is unknown.
    pub async fn trigger_failover(
        &self,
        failed: &str,
        detected_by: &str,
    ) -> Result<Option<FailoverEvent>> {
        let record = self
            .coordinator
            .instances()
            .await?
            .into_iter()
            .find(|i| i.instance_id == failed);
        let Some(record) = record else {
            return Ok(None);
        };
        if !self.coordinator.mark_failed(failed).await? {
            return Ok(None);
        }
        let config = self.coordinator.config();
        let group = config.group.clone();
        let timestamp: DateTime<Utc> = sqlx::query_scalar(
            "INSERT INTO observer_failovers (group_name, failed_instance, partitions, detected_by) \
             VALUES ($1, $2, $3, $4) RETURNING detected_at",
        )
        .bind(&group)
        .bind(failed)
        .bind(&record.partitions)
        .bind(detected_by)
        .fetch_one(self.coordinator.pool())
        .await
        .map_err(db)?;
        let leases = self
            .coordinator
            .leases()
            .list(&config.partition_lease_prefix())
            .await?;
        let mut targets: Vec<String> = record
            .partitions
            .iter()
            .filter_map(|p| {
                let name = config.partition_lease(u32::try_from(*p).unwrap_or(u32::MAX));
                leases
                    .iter()
                    .find(|l| l.name == name)
                    .map(|l| l.holder.clone())
            })
            .collect();
        targets.sort();
        targets.dedup();
        tracing::warn!(
            group = %group,
            failed,
            partitions = ?record.partitions,
            heartbeat_age_secs = record.heartbeat_age_secs,
            "instance failed; its partitions move to the survivors as their leases lapse"
        );
        Ok(Some(FailoverEvent {
            failed_listener_id: failed.to_owned(),
            detected_by: detected_by.to_owned(),
            partitions: record.partitions,
            targets,
            timestamp,
        }))
    }

    /// Where partition `partition` resumes: its checkpoint (the start of the log if none).
    pub async fn resume_from_checkpoint(&self, partition: u32) -> Result<Cursor> {
        let name = self.coordinator.config().partition_cursor(partition);
        Ok(self
            .checkpoints
            .load(&name)
            .await?
            .map(|c| c.cursor)
            .unwrap_or_default())
    }

    /// One pass: detect and record every failure.
    pub async fn check(&self, detected_by: &str) -> Result<Vec<FailoverEvent>> {
        let mut events = Vec::new();
        for failed in self.detect_failures().await? {
            if let Some(e) = self.trigger_failover(&failed, detected_by).await? {
                events.push(e);
            }
        }
        Ok(events)
    }
}
