//! Hybrid caches (seed 004): a local in-memory layer in front of a remote cache (Redis), with
//! one of four strategies.
//!
//! | strategy | `set` | `get` |
//! |---|---|---|
//! | `WriteThrough` | remote, then local | remote; local if the remote fails |
//! | `WriteBehind` | local now, remote in the background (in order; bounded queue, a full queue writes inline) | local, then remote |
//! | `ReadThrough` | remote, local dropped | local, on a miss remote (then kept locally for at most `local_ttl`) |
//! | `CacheAside` | remote only | remote only (the caller, e.g. `CachedActionExecutor`, loads and stores) |
//!
//! Deletes and pattern deletes always reach both layers, so an invalidation is never hidden by a
//! stale local copy. The local layer's `local_ttl` bounds how stale a copy another instance
//! invalidated can be.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::cache::{CacheBackend, CacheStats};
use crate::error::{ObserverError, Result};

/// How the local and remote layers are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HybridStrategy {
    WriteThrough,
    WriteBehind,
    ReadThrough,
    #[default]
    CacheAside,
}

enum Behind {
    Set(String, Vec<u8>, Duration),
    Flush(oneshot::Sender<()>),
}

/// A [`CacheBackend`] over a local and a remote cache.
pub struct HybridCache {
    local: Arc<dyn CacheBackend>,
    remote: Arc<dyn CacheBackend>,
    strategy: HybridStrategy,
    local_ttl: Duration,
    behind: Option<mpsc::Sender<Behind>>,
}

impl fmt::Debug for HybridCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HybridCache")
            .field("strategy", &self.strategy)
            .field("local_ttl", &self.local_ttl)
            .finish_non_exhaustive()
    }
}

/// Writes queued by `WriteBehind` before a `set` waits and writes inline.
const BEHIND_QUEUE: usize = 10_000;

impl HybridCache {
    /// `WriteBehind` spawns its writer task, so call this inside a Tokio runtime.
    pub fn new(
        local: Arc<dyn CacheBackend>,
        remote: Arc<dyn CacheBackend>,
        strategy: HybridStrategy,
        local_ttl: Duration,
    ) -> Self {
        let behind = (strategy == HybridStrategy::WriteBehind).then(|| {
            let (tx, mut rx) = mpsc::channel::<Behind>(BEHIND_QUEUE);
            let remote = remote.clone();
            tokio::spawn(async move {
                while let Some(job) = rx.recv().await {
                    match job {
                        Behind::Set(key, value, ttl) => {
                            if let Err(e) = remote.set(&key, value, ttl).await {
                                tracing::warn!(error = %e, key, "write-behind to the remote cache failed");
                            }
                        }
                        Behind::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            });
            tx
        });
        Self {
            local,
            remote,
            strategy,
            local_ttl: local_ttl.max(Duration::from_millis(1)),
            behind,
        }
    }

    pub fn strategy(&self) -> HybridStrategy {
        self.strategy
    }

    /// Waits until every write-behind queued so far reached the remote (no-op otherwise).
    pub async fn flush(&self) {
        if let Some(tx) = &self.behind {
            let (done, wait) = oneshot::channel();
            if tx.send(Behind::Flush(done)).await.is_ok() {
                let _ = wait.await;
            }
        }
    }

    fn local_ttl(&self, ttl: Duration) -> Duration {
        ttl.min(self.local_ttl)
    }
}

#[async_trait]
impl CacheBackend for HybridCache {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self.strategy {
            HybridStrategy::CacheAside => self.remote.get(key).await,
            HybridStrategy::WriteThrough => match self.remote.get(key).await {
                Ok(v) => Ok(v),
                Err(e) => {
                    tracing::debug!(error = %e, "remote cache read failed; reading the local copy");
                    self.local.get(key).await
                }
            },
            HybridStrategy::WriteBehind => match self.local.get(key).await? {
                Some(v) => Ok(Some(v)),
                None => self.remote.get(key).await,
            },
            HybridStrategy::ReadThrough => {
                if let Some(v) = self.local.get(key).await? {
                    return Ok(Some(v));
                }
                let v = self.remote.get(key).await?;
                if let Some(v) = &v {
                    self.local.set(key, v.clone(), self.local_ttl).await?;
                }
                Ok(v)
            }
        }
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<()> {
        if ttl.is_zero() {
            return Err(ObserverError::Store {
                backend: "hybrid",
                message: format!("cache TTL for `{key}` must be greater than zero"),
                transient: false,
            });
        }
        match self.strategy {
            HybridStrategy::CacheAside => self.remote.set(key, value, ttl).await,
            HybridStrategy::WriteThrough => {
                self.remote.set(key, value.clone(), ttl).await?;
                self.local.set(key, value, self.local_ttl(ttl)).await
            }
            HybridStrategy::WriteBehind => {
                self.local
                    .set(key, value.clone(), self.local_ttl(ttl))
                    .await?;
                let Some(tx) = &self.behind else {
                    return self.remote.set(key, value, ttl).await;
                };
                // A full (or closed) queue hands the write back: it is done inline instead.
                if let Err(
                    mpsc::error::TrySendError::Full(Behind::Set(_, value, _))
                    | mpsc::error::TrySendError::Closed(Behind::Set(_, value, _)),
                ) = tx.try_send(Behind::Set(key.to_owned(), value, ttl))
                {
                    return self.remote.set(key, value, ttl).await;
                }
                Ok(())
            }
            HybridStrategy::ReadThrough => {
                self.remote.set(key, value, ttl).await?;
                self.local.delete(key).await.map(|_| ())
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        self.flush().await;
        let local = self.local.delete(key).await?;
        let remote = self.remote.delete(key).await?;
        Ok(local || remote)
    }

    async fn delete_pattern(&self, pattern: &str) -> Result<u64> {
        self.flush().await;
        let local = self.local.delete_pattern(pattern).await?;
        let remote = self.remote.delete_pattern(pattern).await?;
        Ok(remote.max(local))
    }

    fn stats(&self) -> CacheStats {
        let (l, r) = (self.local.stats(), self.remote.stats());
        CacheStats {
            entries: l.entries.max(r.entries),
            hits: l.hits.saturating_add(r.hits),
            misses: r.misses,
            evictions: l.evictions.saturating_add(r.evictions),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::clock::system_clock;
    use crate::stores::cache::MemoryCacheBackend;

    #[tokio::test]
    async fn strategies_over_a_memory_remote() {
        crate::testkit::hybrid::strategies(Arc::new(MemoryCacheBackend::new(1000, system_clock())))
            .await;
    }
}
