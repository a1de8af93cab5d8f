//! Conformance suites shared by every store implementation (feature `testkit`, for tests only):
//! the in-memory stores, Redis and PostgreSQL run the same functions, so they behave alike.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::Duration;

/// Polls `check` until it returns true; panics after `deadline`.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "{what}: not true within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The `DedupStore` suite. Each function takes a fresh, empty store.
pub mod dedup {
    use std::sync::Arc;
    use std::time::Duration;

    use super::eventually;
    use crate::stores::dedup::{ClaimOutcome, DedupStore};

    const TTL: Duration = Duration::from_secs(60);
    const SHORT: Duration = Duration::from_millis(200);
    const DEADLINE: Duration = Duration::from_secs(5);

    async fn claim(s: &dyn DedupStore, key: &str, owner: &str, ttl: Duration) -> ClaimOutcome {
        s.claim(key, owner, ttl).await.unwrap()
    }

    pub async fn lifecycle(s: Arc<dyn DedupStore>) {
        use ClaimOutcome::{Acquired, AlreadyDone, InProgress};
        let s = &*s;
        assert_eq!(claim(s, "k", "run1", TTL).await, Acquired);
        assert_eq!(claim(s, "k", "run1", TTL).await, InProgress, "same owner");
        assert_eq!(
            claim(s, "other", "run1", TTL).await,
            Acquired,
            "keys are independent"
        );
        s.complete("k", TTL).await.unwrap();
        for owner in ["run1", "run2"] {
            assert_eq!(claim(s, "k", owner, TTL).await, AlreadyDone, "{owner}");
        }
        s.release("k").await.unwrap();
        assert_eq!(claim(s, "k", "run2", TTL).await, Acquired, "released");
        s.release("never-claimed").await.unwrap();
    }

    pub async fn takes_over_a_dead_owners_claim(s: Arc<dyn DedupStore>) {
        let s = &*s;
        assert_eq!(claim(s, "k", "dead-run", TTL).await, ClaimOutcome::Acquired);
        assert_eq!(claim(s, "k", "new-run", TTL).await, ClaimOutcome::Acquired);
        // The key now belongs to the new run: it sees its own claim.
        assert_eq!(
            claim(s, "k", "new-run", TTL).await,
            ClaimOutcome::InProgress
        );
        s.complete("k", TTL).await.unwrap();
        assert_eq!(
            claim(s, "k", "dead-run", TTL).await,
            ClaimOutcome::AlreadyDone
        );
    }

    /// Many tasks claim one key at once: exactly one wins, the rest see it in progress.
    pub async fn concurrent_claims_have_one_winner(s: Arc<dyn DedupStore>) {
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.claim("contended", "same-run", TTL).await.unwrap() })
            })
            .collect();
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await.unwrap());
        }
        let won = outcomes
            .iter()
            .filter(|o| **o == ClaimOutcome::Acquired)
            .count();
        assert_eq!(won, 1, "{outcomes:?}");
        assert!(outcomes.iter().all(|o| *o != ClaimOutcome::AlreadyDone));
    }

    pub async fn claims_and_done_marks_expire(s: Arc<dyn DedupStore>) {
        let s = &*s;
        assert_eq!(claim(s, "p", "run", SHORT).await, ClaimOutcome::Acquired);
        assert_eq!(claim(s, "p", "run", SHORT).await, ClaimOutcome::InProgress);
        // An InProgress answer writes nothing, so polling does not extend the claim.
        eventually("in-progress claim expires", DEADLINE, || async {
            claim(s, "p", "run", SHORT).await == ClaimOutcome::Acquired
        })
        .await;

        assert_eq!(claim(s, "d", "run", TTL).await, ClaimOutcome::Acquired);
        s.complete("d", SHORT).await.unwrap();
        assert_eq!(claim(s, "d", "run", TTL).await, ClaimOutcome::AlreadyDone);
        eventually("done mark expires", DEADLINE, || async {
            claim(s, "d", "run", TTL).await == ClaimOutcome::Acquired
        })
        .await;
    }
}
