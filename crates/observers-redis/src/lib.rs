//! Redis implementations of observers-core's `DedupStore` and `CacheBackend`.
//!
//! - [`RedisDedupStore`]: the two-phase claim as one Lua script, so a claim is a single atomic
//!   step on the server (no check-then-set across round trips).
//! - [`RedisCacheBackend`]: `GET` / `SET PX` / `UNLINK`, pattern invalidation through `SCAN MATCH`
//!   in batches (never `KEYS`), hit and miss counters kept locally.
//! - [`connect`]: opens one [`ConnectionManager`](redis::aio::ConnectionManager); clone it to
//!   share, it multiplexes and reconnects by itself.
//!
//! Every key is namespaced by a configurable prefix so several deployments (and tests) can share
//! one Redis. Redis failures surface as transient `ObserverError::Store { backend: "redis" }`.
//!
//! [`RedisProbe`] (`PING`) feeds core's health monitor; core's fallback wrappers
//! (`observers_core::stores::fallback`) keep the system running on in-memory stores while Redis
//! is down and replay to it when it returns.

#![forbid(unsafe_code)]

mod cache;
mod connection;
mod dedup;

pub use cache::{DEFAULT_CACHE_PREFIX, RedisCacheBackend};
pub use connection::{RedisProbe, connect, connect_lazy};
pub use dedup::{DEFAULT_DEDUP_PREFIX, RedisDedupStore};
pub use redis::aio::ConnectionManager;
