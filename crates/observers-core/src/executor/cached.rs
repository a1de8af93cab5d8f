//! `CachedActionExecutor` (seed 003, feature 4): action results cached by event and action, so a
//! repeated event does not call the same external API again within the action type's TTL.
//!
//! The key is `action:<entity_type>:<entity_id>:<action_type>:<observer>:<index>:<digest>`, where
//! the digest covers the event kind and row (so a different change to the same entity is not a
//! hit). Only successes are cached. Invalidation by entity deletes `action:<type>:<id>:*`, by
//! action type `action:*:*:<action_type>:*`. A cache failure never fails an action: lookups that
//! fail are misses, stores that fail are logged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::event::EntityEvent;
use crate::stores::cache::CacheBackend;
use crate::telemetry::{SharedTelemetry, TelemetryEvent};

/// Escapes the glob metacharacters of a literal so it matches only itself in a pattern.
pub fn escape_glob(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len());
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The action-result cache of an executor, and the invalidation entry points of the `cache`
/// action. Cheap to share (`Arc`).
pub struct CachedActionExecutor {
    backend: Arc<dyn CacheBackend>,
    default_ttl: Duration,
    ttls: BTreeMap<String, Duration>,
    telemetry: SharedTelemetry,
}

impl std::fmt::Debug for CachedActionExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedActionExecutor")
            .field("default_ttl", &self.default_ttl)
            .field("ttls", &self.ttls)
            .finish_non_exhaustive()
    }
}

impl CachedActionExecutor {
    pub fn new(
        backend: Arc<dyn CacheBackend>,
        default_ttl: Duration,
        ttls: BTreeMap<String, Duration>,
        telemetry: SharedTelemetry,
    ) -> Self {
        Self {
            backend,
            default_ttl,
            ttls,
            telemetry,
        }
    }

    pub fn backend(&self) -> &Arc<dyn CacheBackend> {
        &self.backend
    }

    /// The TTL of a cached result of `action_type`.
    pub fn ttl_for(&self, action_type: &str) -> Duration {
        self.ttls
            .get(action_type)
            .copied()
            .unwrap_or(self.default_ttl)
    }

    /// Whether results of this action type are cached (`cache` actions always run).
    pub fn caches(action_type: &str) -> bool {
        action_type != "cache"
    }

    pub fn key(event: &EntityEvent, observer: &str, index: usize, action_type: &str) -> String {
        let mut h = Sha256::new();
        h.update(event.kind.as_str().as_bytes());
        h.update([0]);
        if let Some(after) = &event.after {
            h.update(after.to_string().as_bytes());
        }
        h.update([0]);
        if let Some(before) = &event.before {
            h.update(before.to_string().as_bytes());
        }
        let digest = h.finalize();
        let short = digest[..8]
            .iter()
            .fold(String::with_capacity(16), |mut out, b| {
                use std::fmt::Write;
                let _ = write!(out, "{b:02x}");
                out
            });
        format!(
            "action:{}:{}:{action_type}:{observer}:{index}:{short}",
            event.entity_type, event.entity_id
        )
    }

    pub fn entity_pattern(entity_type: &str, entity_id: &str) -> String {
        format!(
            "action:{}:{}:*",
            escape_glob(entity_type),
            escape_glob(entity_id)
        )
    }

    pub fn action_type_pattern(action_type: &str) -> String {
        format!("action:*:*:{}:*", escape_glob(action_type))
    }

    /// The cached detail of a successful run, if any. Emits a hit or a miss.
    pub async fn lookup(&self, key: &str, action_type: &str) -> Option<String> {
        let found = match self.backend.get(key).await {
            Ok(v) => v.and_then(|bytes| String::from_utf8(bytes).ok()),
            Err(e) => {
                tracing::debug!(error = %e, key, "action cache lookup failed; running the action");
                None
            }
        };
        if found.is_some() {
            self.telemetry
                .emit(&TelemetryEvent::CacheHit { action_type });
        } else {
            self.telemetry
                .emit(&TelemetryEvent::CacheMiss { action_type });
        }
        found
    }

    /// Remembers a successful run.
    pub async fn store(&self, key: &str, action_type: &str, detail: &str) {
        let ttl = self.ttl_for(action_type);
        if let Err(e) = self.backend.set(key, detail.as_bytes().to_vec(), ttl).await {
            tracing::warn!(error = %e, key, "action result not cached");
        }
    }

    /// Deletes every cached result of one entity; returns how many.
    pub async fn invalidate_entity(&self, entity_type: &str, entity_id: &str) -> Result<u64> {
        let n = self
            .backend
            .delete_pattern(&Self::entity_pattern(entity_type, entity_id))
            .await?;
        self.evicted("*", n);
        Ok(n)
    }

    /// Deletes every cached result of one action type; returns how many.
    pub async fn invalidate_action_type(&self, action_type: &str) -> Result<u64> {
        let n = self
            .backend
            .delete_pattern(&Self::action_type_pattern(action_type))
            .await?;
        self.evicted(action_type, n);
        Ok(n)
    }

    /// Deletes one key (any key of the backend, not only action results).
    pub async fn invalidate_key(&self, key: &str) -> Result<u64> {
        let n = u64::from(self.backend.delete(key).await?);
        self.evicted("*", n);
        Ok(n)
    }

    /// Deletes the keys matching a glob.
    pub async fn invalidate_pattern(&self, pattern: &str) -> Result<u64> {
        let n = self.backend.delete_pattern(pattern).await?;
        self.evicted("*", n);
        Ok(n)
    }

    fn evicted(&self, action_type: &str, entries: u64) {
        if entries > 0 {
            self.telemetry.emit(&TelemetryEvent::CacheEviction {
                action_type,
                entries,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::clock::system_clock;
    use crate::stores::cache::MemoryCacheBackend;
    use crate::testkit::action_cache as suite;

    #[tokio::test]
    async fn caches_successes_and_invalidates() {
        suite::caches_successes_and_invalidates(Arc::new(MemoryCacheBackend::new(
            1000,
            system_clock(),
        )))
        .await;
    }

    #[tokio::test]
    async fn entity_invalidation_escapes_globs() {
        suite::entity_invalidation_escapes_globs(Arc::new(MemoryCacheBackend::new(
            1000,
            system_clock(),
        )))
        .await;
    }
}
