//! `MultiListenerCoordinator`: the group's registry in `observer_listeners` (register,
//! deregister, heartbeat, state, health) and its leader (the holder of the group's leader
//! lease). Ages are measured by the database clock.

use std::time::Duration;

use chrono::{DateTime, Utc};
use observers_core::Result;
use observers_core::stores::lease::{Lease, LeaseStore};
use serde::Serialize;
use sqlx::PgPool;

use crate::config::MultiListenerConfig;
use crate::error::db;
use crate::lease::PostgresLeaseStore;
use crate::state::ListenerState;

/// One registered instance, as the registry sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceRecord {
    pub instance_id: String,
    pub listener_id: String,
    /// `initializing`, `connecting`, `running`, `recovering`, `stopped` or `failed`.
    pub state: String,
    pub partitions: Vec<i32>,
    pub is_leader: bool,
    pub started_at: DateTime<Utc>,
    pub last_heartbeat: DateTime<Utc>,
    /// Seconds since the last heartbeat, by the database clock.
    pub heartbeat_age_secs: f64,
}

/// The seeds' health summary of one instance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListenerHealth {
    pub listener_id: String,
    pub is_healthy: bool,
    pub state: String,
    pub heartbeat_age_secs: f64,
    pub partitions: Vec<i32>,
}

type InstanceRow = (
    String,
    String,
    String,
    Vec<i32>,
    bool,
    DateTime<Utc>,
    DateTime<Utc>,
    f64,
);

const UPSERT: &str = "INSERT INTO observer_listeners AS o \
       (group_name, instance_id, listener_id, state, partitions, is_leader) \
     VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (group_name, instance_id) DO UPDATE SET \
       listener_id = EXCLUDED.listener_id, \
       state_changed_at = CASE WHEN o.state = EXCLUDED.state THEN o.state_changed_at ELSE now() END, \
       state = EXCLUDED.state, partitions = EXCLUDED.partitions, is_leader = EXCLUDED.is_leader, \
       last_heartbeat = now()";

const INSTANCES: &str = "SELECT instance_id, listener_id, state, partitions, is_leader, started_at, \
       last_heartbeat, extract(epoch FROM now() - last_heartbeat)::float8 \
     FROM observer_listeners WHERE group_name = $1 ORDER BY instance_id";

/// Coordinates the instances of one HA group.
#[derive(Debug, Clone)]
pub struct MultiListenerCoordinator {
    pool: PgPool,
    leases: PostgresLeaseStore,
    config: MultiListenerConfig,
}

impl MultiListenerCoordinator {
    pub fn new(pool: PgPool, config: MultiListenerConfig) -> Self {
        Self {
            leases: PostgresLeaseStore::new(pool.clone()),
            pool,
            config,
        }
    }

    pub fn config(&self) -> &MultiListenerConfig {
        &self.config
    }

    pub fn leases(&self) -> &PostgresLeaseStore {
        &self.leases
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Adds (or re-adds) `instance` to the group in `Initializing`.
    pub async fn register_listener(&self, instance: &str) -> Result<()> {
        self.heartbeat(instance, ListenerState::Initializing, &[], false)
            .await
    }

    /// Removes `instance` from the registry; returns whether it was registered.
    pub async fn deregister_listener(&self, instance: &str) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM observer_listeners WHERE group_name = $1 AND instance_id = $2",
        )
        .bind(&self.config.group)
        .bind(instance)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    /// Records that `instance` is alive, in `state`, holding `partitions`.
    pub async fn heartbeat(
        &self,
        instance: &str,
        state: ListenerState,
        partitions: &[u32],
        is_leader: bool,
    ) -> Result<()> {
        let parts: Vec<i32> = partitions
            .iter()
            .map(|p| i32::try_from(*p).unwrap_or(i32::MAX))
            .collect();
        sqlx::query(UPSERT)
            .bind(&self.config.group)
            .bind(instance)
            .bind(&self.config.consumer)
            .bind(state.as_str())
            .bind(parts)
            .bind(is_leader)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Every registered instance of the group, by id.
    pub async fn instances(&self) -> Result<Vec<InstanceRecord>> {
        let rows: Vec<InstanceRow> = sqlx::query_as(INSTANCES)
            .bind(&self.config.group)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        Ok(rows
            .into_iter()
            .map(
                |(instance_id, listener_id, state, partitions, is_leader, started, beat, age)| {
                    InstanceRecord {
                        instance_id,
                        listener_id,
                        state,
                        partitions,
                        is_leader,
                        started_at: started,
                        last_heartbeat: beat,
                        heartbeat_age_secs: age.max(0.0),
                    }
                },
            )
            .collect())
    }

    /// Instances that heartbeat within `max_age` and are not stopped or failed, by id.
    pub async fn live_instances(&self, max_age: Duration) -> Result<Vec<String>> {
        Ok(self
            .instances()
            .await?
            .into_iter()
            .filter(|i| is_live(i, max_age))
            .map(|i| i.instance_id)
            .collect())
    }

    /// The registered state of `instance` (`failed` reads as `Stopped`).
    pub async fn get_listener_state(&self, instance: &str) -> Result<Option<ListenerState>> {
        let state: Option<String> = sqlx::query_scalar(
            "SELECT state FROM observer_listeners WHERE group_name = $1 AND instance_id = $2",
        )
        .bind(&self.config.group)
        .bind(instance)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        state
            .map(|s| s.parse::<ListenerState>().map_err(Into::into))
            .transpose()
    }

    /// Health of every instance: healthy while it heartbeats within the failover threshold and
    /// is not stopped or failed.
    pub async fn check_listener_health(&self) -> Result<Vec<ListenerHealth>> {
        let threshold = self.config.failover_threshold;
        Ok(self
            .instances()
            .await?
            .into_iter()
            .map(|i| ListenerHealth {
                is_healthy: is_live(&i, threshold),
                listener_id: i.instance_id,
                state: i.state,
                heartbeat_age_secs: i.heartbeat_age_secs,
                partitions: i.partitions,
            })
            .collect())
    }

    /// Tries to become (or stay) the leader; returns the leader lease when `instance` leads.
    pub async fn elect_leader(&self, instance: &str) -> Result<Option<Lease>> {
        self.leases
            .acquire(
                &self.config.leader_lease(),
                instance,
                self.config.lease_duration,
            )
            .await
    }

    /// The current leader, if any.
    pub async fn leader(&self) -> Result<Option<Lease>> {
        self.leases.holder(&self.config.leader_lease()).await
    }

    /// Marks `instance` failed; returns whether it was live before.
    pub async fn mark_failed(&self, instance: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE observer_listeners SET state = 'failed', state_changed_at = now(), \
               is_leader = false \
             WHERE group_name = $1 AND instance_id = $2 AND state NOT IN ('failed', 'stopped')",
        )
        .bind(&self.config.group)
        .bind(instance)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }
}

fn is_live(i: &InstanceRecord, max_age: Duration) -> bool {
    i.heartbeat_age_secs <= max_age.as_secs_f64()
        && !matches!(i.state.as_str(), "stopped" | "failed")
}
