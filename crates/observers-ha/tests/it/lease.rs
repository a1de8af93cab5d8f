//! The lease suite: the same behaviour in memory and in PostgreSQL (database clock), including
//! exactly one winner under concurrent acquisition and fencing of a lapsed holder's checkpoint
//! writes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use observers_core::clock::system_clock;
use observers_core::stores::lease::{LeaseStore, MemoryLeaseStore};
use observers_core::{Cursor, ObserverError};
use observers_ha::PostgresLeaseStore;
use observers_postgres::PostgresCheckpointStore;
use sqlx::PgPool;

const TTL: Duration = Duration::from_secs(30);
const SHORT: Duration = Duration::from_millis(300);
const DEADLINE: Duration = Duration::from_secs(10);

fn memory() -> Arc<dyn LeaseStore> {
    Arc::new(MemoryLeaseStore::new(system_clock()))
}

fn postgres(pool: PgPool) -> Arc<dyn LeaseStore> {
    Arc::new(PostgresLeaseStore::new(pool))
}

/// Polls until the lease `name` has no holder.
async fn until_free(s: &dyn LeaseStore, name: &str) {
    let deadline = Instant::now() + DEADLINE;
    while s.holder(name).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "lease {name} never lapsed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn acquire_renews_for_the_holder_and_refuses_others(s: Arc<dyn LeaseStore>) {
    let s = &*s;
    let first = s.acquire("leader", "a", TTL).await.unwrap().unwrap();
    assert_eq!((first.holder.as_str(), first.epoch), ("a", 1));
    assert!(first.expires_in <= TTL && first.expires_in > TTL / 2);
    assert_eq!(s.acquire("leader", "b", TTL).await.unwrap(), None);
    let again = s.acquire("leader", "a", TTL).await.unwrap().unwrap();
    assert_eq!(again.epoch, 1, "re-acquiring by the holder keeps the epoch");
    let renewed = s.renew(&first, TTL).await.unwrap().unwrap();
    assert_eq!(renewed.epoch, 1);
    assert!(s.is_valid(&first).await.unwrap());
    assert_eq!(s.holder("leader").await.unwrap().unwrap().holder, "a");
    assert_eq!(
        s.acquire("other", "b", TTL).await.unwrap().unwrap().epoch,
        1,
        "names are independent"
    );
    assert!(s.acquire("leader", "a", Duration::ZERO).await.is_err());
}

async fn epochs_grow_on_every_acquisition(s: Arc<dyn LeaseStore>) {
    let s = &*s;
    let mut epochs = Vec::new();
    for holder in ["a", "b", "a", "c"] {
        let lease = s.acquire("leader", holder, TTL).await.unwrap().unwrap();
        epochs.push(lease.epoch);
        assert!(s.release(&lease).await.unwrap());
        assert!(!s.release(&lease).await.unwrap(), "already released");
        assert!(!s.is_valid(&lease).await.unwrap());
        assert_eq!(s.holder("leader").await.unwrap(), None);
    }
    // Lapsing and retaking by the same holder is a new acquisition too.
    let lease = s.acquire("leader", "c", SHORT).await.unwrap().unwrap();
    until_free(s, "leader").await;
    epochs.push(s.acquire("leader", "c", TTL).await.unwrap().unwrap().epoch);
    assert!(!s.is_valid(&lease).await.unwrap());
    assert_eq!(epochs, vec![1, 2, 3, 4, 6]);
}

async fn a_lapsed_holder_is_fenced(s: Arc<dyn LeaseStore>) {
    let s = &*s;
    let old = s.acquire("leader", "a", SHORT).await.unwrap().unwrap();
    until_free(s, "leader").await;
    assert_eq!(s.renew(&old, TTL).await.unwrap(), None, "lapsed");
    let new = s.acquire("leader", "b", TTL).await.unwrap().unwrap();
    assert_eq!(new.epoch, old.epoch + 1);
    assert_eq!(s.renew(&old, TTL).await.unwrap(), None);
    assert!(!s.is_valid(&old).await.unwrap());
    assert!(
        !s.release(&old).await.unwrap(),
        "cannot release the new lease"
    );
    assert!(s.is_valid(&new).await.unwrap());
    let stale = observers_core::stores::lease::Lease {
        holder: "b".into(),
        epoch: old.epoch,
        ..new.clone()
    };
    assert!(!s.is_valid(&stale).await.unwrap(), "same holder, old epoch");
}

async fn concurrent_acquisition_has_exactly_one_winner(s: Arc<dyn LeaseStore>) {
    for round in 0..3 {
        let name = format!("contested-{round}");
        let tasks: Vec<_> = (0..24)
            .map(|i| {
                let s = s.clone();
                let name = name.clone();
                tokio::spawn(async move { s.acquire(&name, &format!("node-{i}"), TTL).await })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            winners.extend(t.await.unwrap().unwrap());
        }
        assert_eq!(winners.len(), 1, "{winners:?}");
        assert_eq!(winners[0].epoch, 1);
        assert_eq!(
            s.holder(&name).await.unwrap().unwrap().holder,
            winners[0].holder
        );
    }
}

macro_rules! both {
    ($suite:ident, $mem:ident, $pg:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $mem() {
            $suite(memory()).await;
        }

        #[sqlx::test(migrations = "../../migrations")]
        async fn $pg(pool: PgPool) {
            $suite(postgres(pool)).await;
        }
    };
}

both!(
    acquire_renews_for_the_holder_and_refuses_others,
    memory_acquire_renew,
    postgres_acquire_renew
);
both!(
    epochs_grow_on_every_acquisition,
    memory_epochs,
    postgres_epochs
);
both!(a_lapsed_holder_is_fenced, memory_fencing, postgres_fencing);
both!(
    concurrent_acquisition_has_exactly_one_winner,
    memory_one_winner,
    postgres_one_winner
);

#[sqlx::test(migrations = "../../migrations")]
async fn checkpoint_writes_of_a_replaced_holder_are_rejected(pool: PgPool) {
    let leases = PostgresLeaseStore::new(pool.clone());
    let cps = PostgresCheckpointStore::new(pool).with_instance("test");
    let old = leases.acquire("p0", "a", SHORT).await.unwrap().unwrap();
    cps.save_fenced("orders", Cursor::new(5), 1, "p0", "a", old.epoch)
        .await
        .unwrap();
    until_free(&leases, "p0").await;
    let new = leases.acquire("p0", "b", TTL).await.unwrap().unwrap();
    cps.save_fenced("orders", Cursor::new(9), 1, "p0", "b", new.epoch)
        .await
        .unwrap();
    // The paused old holder wakes up and tries to save an older and a newer position.
    for cursor in [Cursor::new(7), Cursor::new(20)] {
        let err = cps
            .save_fenced("orders", cursor, 1, "p0", "a", old.epoch)
            .await
            .unwrap_err();
        assert!(matches!(err, ObserverError::Fenced(_)), "{err}");
    }
    let d = cps.details("orders").await.unwrap().unwrap();
    assert_eq!((d.cursor, d.lease_epoch), (Cursor::new(9), Some(new.epoch)));
    let listed = leases.list("p").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].holder.as_str(), listed[0].epoch), ("b", 2));
}
