//! The registry, leader election and failure detection on `observer_listeners`, and the group
//! status built from them.

use std::sync::Arc;
use std::time::Duration;

use observers_core::stores::checkpoint::CheckpointStore;
use observers_core::{Cursor, stores::lease::LeaseStore};
use observers_ha::{
    FailoverManager, GroupStatus, ListenerState, MultiListenerConfig, MultiListenerCoordinator,
};
use observers_postgres::PostgresCheckpointStore;
use sqlx::PgPool;

fn config(partitions: u32) -> MultiListenerConfig {
    MultiListenerConfig {
        enabled: true,
        group: "g".into(),
        listener_id: "a".into(),
        consumer: "orders".into(),
        lease_duration: Duration::from_secs(30),
        health_check_interval: Duration::from_secs(1),
        failover_threshold: Duration::from_secs(31),
        partitions,
        ..MultiListenerConfig::default()
    }
}

async fn age_heartbeat(pool: &PgPool, instance: &str, secs: i64) {
    sqlx::query(
        "UPDATE observer_listeners SET last_heartbeat = now() - make_interval(secs => $2) \
         WHERE instance_id = $1",
    )
    .bind(instance)
    .bind(secs)
    .execute(pool)
    .await
    .unwrap();
}

#[sqlx::test(migrations = "../../migrations")]
async fn register_heartbeat_state_and_deregister(pool: PgPool) {
    let c = MultiListenerCoordinator::new(pool.clone(), config(2));
    c.register_listener("a").await.unwrap();
    c.register_listener("b").await.unwrap();
    assert_eq!(
        c.get_listener_state("a").await.unwrap(),
        Some(ListenerState::Initializing)
    );
    c.heartbeat("a", ListenerState::Running, &[0, 1], true)
        .await
        .unwrap();
    let all = c.instances().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(
        (all[0].state.as_str(), all[0].partitions.clone()),
        ("running", vec![0, 1])
    );
    assert!(all[0].is_leader);
    assert_eq!(
        c.live_instances(Duration::from_secs(30)).await.unwrap(),
        ["a", "b"]
    );
    age_heartbeat(&pool, "b", 60).await;
    assert_eq!(
        c.live_instances(Duration::from_secs(30)).await.unwrap(),
        ["a"]
    );
    let health = c.check_listener_health().await.unwrap();
    assert_eq!(
        health
            .iter()
            .map(|h| (h.listener_id.as_str(), h.is_healthy))
            .collect::<Vec<_>>(),
        [("a", true), ("b", false)]
    );
    assert!(c.deregister_listener("b").await.unwrap());
    assert!(!c.deregister_listener("b").await.unwrap());
    assert_eq!(c.get_listener_state("b").await.unwrap(), None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn one_leader_and_failover_of_a_silent_instance(pool: PgPool) {
    let c = Arc::new(MultiListenerCoordinator::new(pool.clone(), config(2)));
    let lead = c.elect_leader("a").await.unwrap().unwrap();
    assert_eq!(c.elect_leader("b").await.unwrap(), None, "a leads");
    assert_eq!(c.leader().await.unwrap().unwrap().holder, "a");
    c.register_listener("a").await.unwrap();
    c.register_listener("b").await.unwrap();
    c.heartbeat("b", ListenerState::Running, &[1], false)
        .await
        .unwrap();
    let checkpoints = Arc::new(PostgresCheckpointStore::new(pool.clone()));
    checkpoints
        .save("orders#p1", Cursor::new(4), 1)
        .await
        .unwrap();
    let f = FailoverManager::new(c.clone(), checkpoints.clone() as Arc<dyn CheckpointStore>);
    assert!(f.detect_failures().await.unwrap().is_empty());
    age_heartbeat(&pool, "b", 120).await;
    assert_eq!(f.detect_failures().await.unwrap(), ["b"]);
    let events = f.check("a").await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (
            events[0].failed_listener_id.as_str(),
            events[0].partitions.clone()
        ),
        ("b", vec![1])
    );
    assert!(f.check("a").await.unwrap().is_empty(), "recorded once");
    assert_eq!(
        c.get_listener_state("b").await.unwrap(),
        Some(ListenerState::Stopped)
    );
    assert_eq!(f.resume_from_checkpoint(1).await.unwrap(), Cursor::new(4));
    assert_eq!(
        f.resume_from_checkpoint(0).await.unwrap(),
        Cursor::default()
    );

    // The leader goes away: another instance is elected under a new epoch.
    assert!(c.leases().release(&lead).await.unwrap());
    let next = c.elect_leader("b").await.unwrap().unwrap();
    assert_eq!(next.epoch, lead.epoch + 1);

    let status = GroupStatus::load(&pool, c.config()).await.unwrap();
    assert_eq!(status.leader.unwrap().holder, "b");
    assert_eq!(status.instances.len(), 2);
    assert_eq!(status.failovers.len(), 1);
    assert_eq!(status.lag.len(), 2);
    assert_eq!(status.lag[1].cursor_name, "orders#p1");
}

#[sqlx::test(migrations = "../../migrations")]
async fn partition_lag_counts_only_the_partitions_rows(pool: PgPool) {
    for i in 0..40 {
        sqlx::query(
            "INSERT INTO observer_change_log (entity_type, entity_id, operation, after) \
             VALUES ('T', $1, 'insert', '{}')",
        )
        .bind(format!("e{i}"))
        .execute(&pool)
        .await
        .unwrap();
    }
    let lag = observers_ha::status::partition_lag(&pool, &config(3))
        .await
        .unwrap();
    assert_eq!(lag.iter().map(|l| l.rows).sum::<u64>(), 40);
    assert!(lag.iter().all(|l| l.rows > 0 && l.rows < 40), "{lag:?}");
    let leases = observers_ha::PostgresLeaseStore::new(pool);
    assert!(leases.holder("none").await.unwrap().is_none());
}
