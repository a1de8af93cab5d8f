//! Named leases with fencing epochs, so that one instance at a time does a singleton job
//! (leading the listener, rescuing stale jobs): the `LeaseStore` trait and an in-memory store.
//!
//! The epoch is the fencing token: it grows by one every time the lease changes hands (or is
//! taken again after lapsing), so a write stamped with an old epoch can be refused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::lock;
use crate::clock::SharedClock;
use crate::error::{ObserverError, Result};

/// A held lease, as of the call that returned it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub name: String,
    pub holder: String,
    /// Fencing token; larger is newer.
    pub epoch: i64,
    /// Time left when the store answered. Holders should treat the lease as lost somewhat
    /// earlier, to allow for their own delays.
    pub expires_in: Duration,
}

/// Leases by name. Every method is one atomic step.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Takes the lease if it is free or has lapsed (new epoch), or renews it if `holder` already
    /// holds it (same epoch). `None` while someone else holds it.
    async fn acquire(&self, name: &str, holder: &str, ttl: Duration) -> Result<Option<Lease>>;
    /// Extends the lease if it is still held under the same epoch and has not lapsed.
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Option<Lease>>;
    /// Gives the lease up; `true` if it was still held.
    async fn release(&self, lease: &Lease) -> Result<bool>;
    /// Whether the lease is still held under its epoch.
    async fn is_valid(&self, lease: &Lease) -> Result<bool>;
    /// The current holder, if any.
    async fn holder(&self, name: &str) -> Result<Option<Lease>>;
}

/// The state of one name. Kept after release so the epoch keeps growing.
#[derive(Debug)]
struct Record {
    holder: Option<String>,
    epoch: i64,
    expires_at: Duration,
}

impl Record {
    fn held_by(&self, lease: &Lease, now: Duration) -> bool {
        self.holder.as_deref() == Some(lease.holder.as_str())
            && self.epoch == lease.epoch
            && now < self.expires_at
    }

    fn lease(&self, name: &str, now: Duration) -> Option<Lease> {
        let holder = self.holder.clone()?;
        (now < self.expires_at).then(|| Lease {
            name: name.to_owned(),
            holder,
            epoch: self.epoch,
            expires_in: self.expires_at.saturating_sub(now),
        })
    }
}

/// In-memory leases on the injected clock; good for one process (tests, embedded mode).
/// Holds one small record per name ever leased.
#[derive(Debug)]
pub struct MemoryLeaseStore {
    records: Mutex<HashMap<String, Record>>,
    clock: SharedClock,
}

impl MemoryLeaseStore {
    pub fn new(clock: SharedClock) -> Self {
        Self {
            records: Mutex::new(HashMap::new()),
            clock,
        }
    }
}

fn check_ttl(name: &str, ttl: Duration) -> Result<()> {
    if ttl.is_zero() {
        return Err(ObserverError::Store {
            backend: "memory",
            message: format!("lease `{name}`: TTL must be greater than zero"),
            transient: false,
        });
    }
    Ok(())
}

#[async_trait]
impl LeaseStore for MemoryLeaseStore {
    async fn acquire(&self, name: &str, holder: &str, ttl: Duration) -> Result<Option<Lease>> {
        check_ttl(name, ttl)?;
        let now = self.clock.now();
        let expires_at = now.saturating_add(ttl);
        let mut records = lock(&self.records);
        let record = records.entry(name.to_owned()).or_insert(Record {
            holder: None,
            epoch: 0,
            expires_at: now,
        });
        let live = record.holder.is_some() && now < record.expires_at;
        if live && record.holder.as_deref() != Some(holder) {
            return Ok(None);
        }
        if !live {
            record.epoch += 1;
            record.holder = Some(holder.to_owned());
        }
        record.expires_at = expires_at;
        Ok(record.lease(name, now))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Option<Lease>> {
        check_ttl(&lease.name, ttl)?;
        let now = self.clock.now();
        let mut records = lock(&self.records);
        let Some(record) = records.get_mut(&lease.name) else {
            return Ok(None);
        };
        if !record.held_by(lease, now) {
            return Ok(None);
        }
        record.expires_at = now.saturating_add(ttl);
        Ok(record.lease(&lease.name, now))
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let now = self.clock.now();
        let mut records = lock(&self.records);
        let Some(record) = records.get_mut(&lease.name) else {
            return Ok(false);
        };
        let held = record.held_by(lease, now);
        if held {
            record.holder = None;
            record.expires_at = now;
        }
        Ok(held)
    }

    async fn is_valid(&self, lease: &Lease) -> Result<bool> {
        let now = self.clock.now();
        Ok(lock(&self.records)
            .get(&lease.name)
            .is_some_and(|r| r.held_by(lease, now)))
    }

    async fn holder(&self, name: &str) -> Result<Option<Lease>> {
        let now = self.clock.now();
        Ok(lock(&self.records)
            .get(name)
            .and_then(|r| r.lease(name, now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::sync::Arc;

    const TTL: Duration = Duration::from_secs(10);

    fn store() -> (MemoryLeaseStore, ManualClock) {
        let clock = ManualClock::new();
        (MemoryLeaseStore::new(Arc::new(clock.clone())), clock)
    }

    #[tokio::test]
    async fn acquire_by_holder_renews_under_the_same_epoch() {
        let (s, clock) = store();
        let first = s.acquire("leader", "a", TTL).await.unwrap().unwrap();
        assert_eq!(
            (first.holder.as_str(), first.epoch, first.expires_in),
            ("a", 1, TTL)
        );
        assert_eq!(
            s.acquire("leader", "b", TTL).await.unwrap(),
            None,
            "held by a"
        );
        clock.advance(Duration::from_secs(6));
        let again = s.acquire("leader", "a", TTL).await.unwrap().unwrap();
        assert_eq!((again.epoch, again.expires_in), (1, TTL));
        clock.advance(Duration::from_secs(6));
        assert!(
            s.is_valid(&first).await.unwrap(),
            "12 s after taking, 6 s after renewing"
        );
        // Another name is independent.
        assert_eq!(
            s.acquire("rescuer", "b", TTL).await.unwrap().unwrap().epoch,
            1
        );
    }

    #[tokio::test]
    async fn epochs_increase_across_holders() {
        let (s, clock) = store();
        let mut epochs = Vec::new();
        for holder in ["a", "b", "a", "c"] {
            let lease = s.acquire("leader", holder, TTL).await.unwrap().unwrap();
            epochs.push(lease.epoch);
            assert!(s.release(&lease).await.unwrap());
            assert!(!s.release(&lease).await.unwrap(), "already released");
            assert_eq!(s.holder("leader").await.unwrap(), None);
        }
        // Lapsing and retaking by the same holder is a new acquisition too.
        let lease = s.acquire("leader", "c", TTL).await.unwrap().unwrap();
        clock.advance(TTL);
        epochs.push(s.acquire("leader", "c", TTL).await.unwrap().unwrap().epoch);
        assert!(!s.is_valid(&lease).await.unwrap());
        assert_eq!(epochs, vec![1, 2, 3, 4, 6]);
    }

    #[tokio::test]
    async fn expired_lease_is_taken_over_and_the_old_holder_is_fenced() {
        let (s, clock) = store();
        let old = s.acquire("leader", "a", TTL).await.unwrap().unwrap();
        clock.advance(Duration::from_secs(9));
        assert_eq!(
            s.holder("leader").await.unwrap().unwrap().expires_in,
            Duration::from_secs(1)
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            s.holder("leader").await.unwrap(),
            None,
            "lapses exactly at its TTL"
        );
        assert_eq!(
            s.renew(&old, TTL).await.unwrap(),
            None,
            "cannot renew a lapsed lease"
        );
        let new = s.acquire("leader", "b", TTL).await.unwrap().unwrap();
        assert_eq!(new.epoch, old.epoch + 1);
        assert_eq!(s.renew(&old, TTL).await.unwrap(), None);
        assert!(!s.is_valid(&old).await.unwrap());
        assert!(
            !s.release(&old).await.unwrap(),
            "the old holder cannot release the new lease"
        );
        assert!(s.is_valid(&new).await.unwrap());
        // Same holder name, stale epoch: still fenced.
        let stale = Lease {
            holder: "b".into(),
            epoch: old.epoch,
            ..new.clone()
        };
        assert!(!s.is_valid(&stale).await.unwrap());
        assert_eq!(s.holder("leader").await.unwrap().unwrap().holder, "b");
    }

    #[tokio::test]
    async fn renew_extends_from_now() {
        let (s, clock) = store();
        let lease = s.acquire("leader", "a", TTL).await.unwrap().unwrap();
        clock.advance(Duration::from_secs(8));
        let renewed = s
            .renew(&lease, Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (renewed.epoch, renewed.expires_in),
            (1, Duration::from_secs(30))
        );
        clock.advance(Duration::from_secs(29));
        assert!(s.is_valid(&renewed).await.unwrap());
        clock.advance(Duration::from_secs(1));
        assert!(!s.is_valid(&renewed).await.unwrap());
        let missing = Lease {
            name: "nope".into(),
            ..renewed
        };
        assert_eq!(s.renew(&missing, TTL).await.unwrap(), None);
        assert!(s.acquire("leader", "a", Duration::ZERO).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 8)]
    async fn concurrent_acquire_has_exactly_one_winner() {
        let s = Arc::new(MemoryLeaseStore::new(Arc::new(ManualClock::new())));
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    s.acquire("leader", &format!("node-{i}"), TTL)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            winners.extend(t.await.unwrap());
        }
        assert_eq!(winners.len(), 1, "{winners:?}");
        assert_eq!(winners[0].epoch, 1);
        assert_eq!(
            s.holder("leader").await.unwrap().unwrap().holder,
            winners[0].holder
        );
    }
}
