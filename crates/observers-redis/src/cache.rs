//! `RedisCacheBackend`: the action-result cache on Redis.
//!
//! Expiry is Redis's own (`SET ... PX`). Pattern invalidation walks the keyspace with `SCAN MATCH`
//! in batches and `UNLINK`s each batch, so it never blocks the server the way `KEYS` would.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use observers_core::stores::cache::{CacheBackend, CacheStats};
use observers_core::{ObserverError, Result};
use redis::aio::ConnectionManager;

use crate::connection::{BACKEND, px_millis, store_error};

/// The key prefix used unless [`RedisCacheBackend::with_prefix`] says otherwise.
pub const DEFAULT_CACHE_PREFIX: &str = "observers:cache:";

/// Keys asked for per `SCAN` step (a hint to Redis) and so the most `UNLINK`ed at once.
const SCAN_BATCH: usize = 500;

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
}

/// A cache on Redis. Cheap to clone; clones share the connection and the counters.
///
/// [`stats`](CacheBackend::stats) reports the hits and misses seen by this process. `entries`
/// and `evictions` are always 0: counting keys under a prefix would need a `SCAN` (the trait's
/// `stats` is synchronous and must not do IO), and evictions are Redis's `maxmemory` business,
/// visible in `INFO stats`.
#[derive(Clone)]
pub struct RedisCacheBackend {
    conn: ConnectionManager,
    prefix: String,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for RedisCacheBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCacheBackend")
            .field("prefix", &self.prefix)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl RedisCacheBackend {
    /// A cache using [`DEFAULT_CACHE_PREFIX`].
    pub fn new(conn: ConnectionManager) -> Self {
        Self {
            conn,
            prefix: DEFAULT_CACHE_PREFIX.to_owned(),
            counters: Arc::default(),
        }
    }

    /// Replaces the key prefix (keep the trailing separator, e.g. `"myapp:cache:"`).
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

/// Escapes the glob metacharacters of a literal so it matches only itself in `SCAN MATCH`.
fn escape_glob(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len());
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[async_trait]
impl CacheBackend for RedisCacheBackend {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let mut conn = self.conn.clone();
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.key(key))
            .query_async(&mut conn)
            .await
            .map_err(|e| store_error("cache get", &e))?;
        let counter = if value.is_some() {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(value)
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<()> {
        if ttl.is_zero() {
            return Err(ObserverError::Store {
                backend: BACKEND,
                message: format!("cache TTL for `{key}` must be greater than zero"),
                transient: false,
            });
        }
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(self.key(key))
            .arg(value)
            .arg("PX")
            .arg(px_millis(ttl))
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| store_error("cache set", &e))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let mut conn = self.conn.clone();
        let removed: u64 = redis::cmd("UNLINK")
            .arg(self.key(key))
            .query_async(&mut conn)
            .await
            .map_err(|e| store_error("cache delete", &e))?;
        Ok(removed > 0)
    }

    async fn delete_pattern(&self, pattern: &str) -> Result<u64> {
        let mut conn = self.conn.clone();
        let matcher = format!("{}{pattern}", escape_glob(&self.prefix));
        let mut cursor: u64 = 0;
        let mut removed: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&matcher)
                .arg("COUNT")
                .arg(SCAN_BATCH)
                .query_async(&mut conn)
                .await
                .map_err(|e| store_error("cache delete_pattern scan", &e))?;
            // SCAN may return a key twice; UNLINK counts only keys it actually removed.
            for chunk in keys.chunks(SCAN_BATCH) {
                let n: u64 = redis::cmd("UNLINK")
                    .arg(chunk)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| store_error("cache delete_pattern unlink", &e))?;
                removed += n;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        tracing::debug!(pattern = %matcher, removed, "cache pattern invalidated");
        Ok(removed)
    }

    fn stats(&self) -> CacheStats {
        CacheStats {
            entries: 0,
            hits: self.counters.hits.load(Ordering::Relaxed),
            misses: self.counters.misses.load(Ordering::Relaxed),
            evictions: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::escape_glob;
    use observers_core::stores::cache::glob_match;

    #[test]
    fn escaped_prefix_matches_only_itself() {
        let cases: &[(&str, &str, bool)] = &[
            ("app:cache:", "app:cache:", true),
            ("a*b:", "a*b:", true),
            ("a*b:", "aXb:", false),
            ("a?[x]\\:", "a?[x]\\:", true),
            ("a?[x]\\:", "ab[x]\\:", false),
            ("a?[x]\\:", "a?x\\:", false),
        ];
        for (prefix, key, want) in cases {
            assert_eq!(
                glob_match(&escape_glob(prefix), key),
                *want,
                "{prefix:?} vs {key:?}"
            );
        }
    }
}
