//! Deduplication: an atomic claim per key, and an in-memory store.
//!
//! A claim is two-phase so that deduplication never loses an event: `claim` marks a key as in
//! progress by an owner (one per process run); `complete` marks it done for the window. A key
//! still in progress under a *different* owner belongs to a run that died mid-event, so the new
//! run takes it over instead of skipping it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::lock;
use crate::clock::SharedClock;
use crate::error::Result;

/// The answer to a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// This caller owns the key now; process the event, then `complete` it.
    Acquired,
    /// Already processed within the window: skip.
    AlreadyDone,
    /// Being processed right now by the same owner: skip.
    InProgress,
}

/// An atomic claim store. Implementations must make `claim` a single atomic step (no
/// check-then-set).
#[async_trait]
pub trait DedupStore: Send + Sync {
    async fn claim(&self, key: &str, owner: &str, ttl: Duration) -> Result<ClaimOutcome>;
    /// Marks the key done for `window`.
    async fn complete(&self, key: &str, window: Duration) -> Result<()>;
    /// Forgets a claim (processing was abandoned).
    async fn release(&self, key: &str) -> Result<()>;
}

#[derive(Debug)]
enum Mark {
    InProgress(String),
    Done,
}

/// In-memory claims with TTLs, bounded: when full, expired keys are swept, then the
/// soonest-to-expire done keys are dropped.
#[derive(Debug)]
pub struct MemoryDedupStore {
    map: Mutex<HashMap<String, (Mark, Duration)>>,
    max_entries: usize,
    clock: SharedClock,
}

impl MemoryDedupStore {
    pub fn new(max_entries: usize, clock: SharedClock) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            max_entries: max_entries.max(1),
            clock,
        }
    }

    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn make_room(map: &mut HashMap<String, (Mark, Duration)>, max: usize, now: Duration) {
        if map.len() < max {
            return;
        }
        map.retain(|_, (_, exp)| *exp > now);
        if map.len() >= max {
            let mut done: Vec<(Duration, String)> = map
                .iter()
                .filter(|(_, (m, _))| matches!(m, Mark::Done))
                .map(|(k, (_, e))| (*e, k.clone()))
                .collect();
            done.sort();
            let excess = map.len() + 1 - max;
            for (_, k) in done.into_iter().take(excess.max(max / 10)) {
                map.remove(&k);
            }
        }
    }
}

#[async_trait]
impl DedupStore for MemoryDedupStore {
    async fn claim(&self, key: &str, owner: &str, ttl: Duration) -> Result<ClaimOutcome> {
        let now = self.clock.now();
        let mut map = lock(&self.map);
        if let Some((mark, exp)) = map.get(key)
            && *exp > now
        {
            match mark {
                Mark::Done => return Ok(ClaimOutcome::AlreadyDone),
                Mark::InProgress(o) if o == owner => return Ok(ClaimOutcome::InProgress),
                Mark::InProgress(_) => {}
            }
        }
        Self::make_room(&mut map, self.max_entries, now);
        map.insert(
            key.to_owned(),
            (Mark::InProgress(owner.to_owned()), now + ttl),
        );
        Ok(ClaimOutcome::Acquired)
    }

    async fn complete(&self, key: &str, window: Duration) -> Result<()> {
        let now = self.clock.now();
        let mut map = lock(&self.map);
        Self::make_room(&mut map, self.max_entries, now);
        map.insert(key.to_owned(), (Mark::Done, now + window));
        Ok(())
    }

    async fn release(&self, key: &str) -> Result<()> {
        lock(&self.map).remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::sync::Arc;

    const TTL: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn claim_lifecycle() {
        let clock = ManualClock::new();
        let s = MemoryDedupStore::new(100, Arc::new(clock.clone()));
        assert_eq!(
            s.claim("k", "run1", TTL).await.unwrap(),
            ClaimOutcome::Acquired
        );
        assert_eq!(
            s.claim("k", "run1", TTL).await.unwrap(),
            ClaimOutcome::InProgress
        );
        // A different run finds a claim left by a dead run: it takes it over.
        assert_eq!(
            s.claim("k", "run2", TTL).await.unwrap(),
            ClaimOutcome::Acquired
        );
        s.complete("k", TTL).await.unwrap();
        assert_eq!(
            s.claim("k", "run3", TTL).await.unwrap(),
            ClaimOutcome::AlreadyDone
        );
        clock.advance(TTL + Duration::from_secs(1));
        assert_eq!(
            s.claim("k", "run3", TTL).await.unwrap(),
            ClaimOutcome::Acquired
        );
        s.release("k").await.unwrap();
        assert_eq!(
            s.claim("k", "run3", TTL).await.unwrap(),
            ClaimOutcome::Acquired
        );
    }

    #[tokio::test]
    async fn bounded() {
        let s = MemoryDedupStore::new(10, Arc::new(ManualClock::new()));
        for i in 0..100 {
            s.claim(&i.to_string(), "o", TTL).await.unwrap();
            s.complete(&i.to_string(), TTL).await.unwrap();
        }
        assert!(s.len() <= 10, "len {}", s.len());
        assert_eq!(
            s.claim("99", "o", TTL).await.unwrap(),
            ClaimOutcome::AlreadyDone
        );
    }

    #[tokio::test]
    async fn concurrent_claims_have_one_winner() {
        let s = Arc::new(MemoryDedupStore::new(100, Arc::new(ManualClock::new())));
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.claim("k", "same-run", TTL).await.unwrap() })
            })
            .collect();
        let mut won = 0;
        for t in tasks {
            if t.await.unwrap() == ClaimOutcome::Acquired {
                won += 1;
            }
        }
        assert_eq!(won, 1);
    }
}
