//! Opening a connection, and turning Redis errors into `ObserverError`s.

use observers_core::ObserverError;
use redis::aio::ConnectionManager;

/// The backend name carried by every error this crate returns.
pub(crate) const BACKEND: &str = "redis";

/// Opens a [`ConnectionManager`] to `url` (`redis://host:port/db`, `rediss://` needs a TLS
/// feature this workspace does not enable). The manager reconnects on its own; clone it to share.
pub async fn connect(url: &str) -> Result<ConnectionManager, ObserverError> {
    let client = redis::Client::open(url)
        .map_err(|e| ObserverError::store(BACKEND, format!("invalid Redis URL: {e}")))?;
    ConnectionManager::new(client)
        .await
        .map_err(|e| ObserverError::store(BACKEND, format!("cannot connect to Redis: {e}")))
}

/// Maps a Redis failure to a transient store error, naming the operation that failed.
pub(crate) fn store_error(op: &str, err: &redis::RedisError) -> ObserverError {
    ObserverError::store(BACKEND, format!("{op} failed: {err}"))
}

/// Milliseconds for `PX`, which rejects zero: a non-zero sub-millisecond TTL rounds up to 1.
pub(crate) fn px_millis(ttl: std::time::Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}
