//! `RedisDedupStore`: the two-phase claim of `observers_core::stores::dedup` on Redis.
//!
//! A key holds `p:<owner>` while in progress and `d` once done. `claim` runs as one Lua script,
//! so reading the mark and writing the new one cannot interleave with another claim.

use std::time::Duration;

use async_trait::async_trait;
use observers_core::Result;
use observers_core::stores::dedup::{ClaimOutcome, DedupStore};
use redis::aio::ConnectionManager;

use crate::connection::{px_millis, store_error};

/// The key prefix used unless [`RedisDedupStore::with_prefix`] says otherwise.
pub const DEFAULT_DEDUP_PREFIX: &str = "observers:dedup:";

/// Returns 0 = Acquired, 1 = AlreadyDone, 2 = InProgress (same owner). A claim in progress under
/// another owner belongs to a run that died mid-event, so it is taken over.
const CLAIM_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if v == 'd' then
  return 1
end
local mine = 'p:' .. ARGV[1]
if v == mine then
  return 2
end
redis.call('SET', KEYS[1], mine, 'PX', ARGV[2])
return 0
";

/// Claims on Redis. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct RedisDedupStore {
    conn: ConnectionManager,
    prefix: String,
    claim: redis::Script,
}

impl std::fmt::Debug for RedisDedupStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDedupStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisDedupStore {
    /// A store using [`DEFAULT_DEDUP_PREFIX`].
    pub fn new(conn: ConnectionManager) -> Self {
        Self {
            conn,
            prefix: DEFAULT_DEDUP_PREFIX.to_owned(),
            claim: redis::Script::new(CLAIM_SCRIPT),
        }
    }

    /// Replaces the key prefix (keep the trailing separator, e.g. `"myapp:dedup:"`).
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

#[async_trait]
impl DedupStore for RedisDedupStore {
    async fn claim(&self, key: &str, owner: &str, ttl: Duration) -> Result<ClaimOutcome> {
        let mut conn = self.conn.clone();
        let code: i64 = self
            .claim
            .key(self.key(key))
            .arg(owner)
            .arg(px_millis(ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| store_error("dedup claim", &e))?;
        match code {
            0 => Ok(ClaimOutcome::Acquired),
            1 => Ok(ClaimOutcome::AlreadyDone),
            2 => Ok(ClaimOutcome::InProgress),
            other => Err(observers_core::ObserverError::store(
                crate::connection::BACKEND,
                format!("dedup claim script returned unexpected {other}"),
            )),
        }
    }

    async fn complete(&self, key: &str, window: Duration) -> Result<()> {
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(self.key(key))
            .arg("d")
            .arg("PX")
            .arg(px_millis(window))
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| store_error("dedup complete", &e))
    }

    async fn release(&self, key: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        redis::cmd("DEL")
            .arg(self.key(key))
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| store_error("dedup release", &e))
    }
}
