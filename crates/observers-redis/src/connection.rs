//! Opening a connection, probing it, and turning Redis errors into `ObserverError`s.

use std::time::Duration;

use async_trait::async_trait;
use observers_core::ObserverError;
use observers_core::stores::fallback::HealthProbe;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// The backend name carried by every error this crate returns.
pub(crate) const BACKEND: &str = "redis";

/// Opens a [`ConnectionManager`] to `url` (`redis://host:port/db`, `rediss://` needs a TLS
/// feature this workspace does not enable) and waits for the first connection. The manager
/// reconnects on its own; clone it to share.
pub async fn connect(url: &str) -> Result<ConnectionManager, ObserverError> {
    let client = client(url)?;
    ConnectionManager::new(client)
        .await
        .map_err(|e| ObserverError::store(BACKEND, format!("cannot connect to Redis: {e}")))
}

/// Opens a [`ConnectionManager`] without waiting for Redis: the connection is made on first use,
/// so a process can start while Redis is down (the fallback serves meanwhile). Connecting and
/// every response are bounded by `timeout`, and a broken connection is retried once before the
/// command fails, so a dead server costs a caller at most about `timeout`.
pub fn connect_lazy(url: &str, timeout: Duration) -> Result<ConnectionManager, ObserverError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(timeout);
    ConnectionManager::new_lazy_with_config(client(url)?, config)
        .map_err(|e| ObserverError::store(BACKEND, format!("cannot set up Redis client: {e}")))
}

fn client(url: &str) -> Result<redis::Client, ObserverError> {
    redis::Client::open(url).map_err(|e| ObserverError::Store {
        backend: BACKEND,
        message: format!("invalid Redis URL: {e}"),
        transient: false,
    })
}

/// The health probe of the fallback wrappers: `PING`.
#[derive(Clone)]
pub struct RedisProbe {
    conn: ConnectionManager,
}

impl RedisProbe {
    pub fn new(conn: ConnectionManager) -> Self {
        Self { conn }
    }
}

#[async_trait]
impl HealthProbe for RedisProbe {
    async fn ping(&self) -> observers_core::Result<()> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| store_error("ping", &e))
    }
}

/// Maps a Redis failure to a transient store error, naming the operation that failed.
pub(crate) fn store_error(op: &str, err: &redis::RedisError) -> ObserverError {
    ObserverError::store(BACKEND, format!("{op} failed: {err}"))
}

/// Milliseconds for `PX`, which rejects zero: a non-zero sub-millisecond TTL rounds up to 1.
pub(crate) fn px_millis(ttl: std::time::Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}
