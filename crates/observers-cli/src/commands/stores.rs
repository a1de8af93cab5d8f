//! Wiring of `[dedup]`, `[cache]` and `[redis]`: which store backs each, and the fallback wrapper
//! (with its health monitor) whenever Redis is in use, so a Redis outage never stalls or loses
//! events.

use std::sync::{Arc, OnceLock};

use observers_core::clock::system_clock;
use observers_core::config::{Config, StoreBackend};
use observers_core::executor::CachedActionExecutor;
use observers_core::stores::cache::{CacheBackend, MemoryCacheBackend};
use observers_core::stores::dedup::{DedupStore, MemoryDedupStore};
use observers_core::stores::fallback::{FallbackCache, FallbackDedupStore, Resilience};
use observers_core::stores::hybrid::{HybridCache, HybridStrategy};
use observers_core::telemetry::SharedTelemetry;
use observers_postgres::{PgPool, PostgresDedupStore};
use observers_redis::ConnectionManager;
use observers_redis::{RedisCacheBackend, RedisDedupStore, RedisProbe};

use crate::{CliResult, Exit};

/// The Redis connection and the resilience layer shared by every Redis-backed store.
struct RedisSide {
    conn: ConnectionManager,
    /// `None` with `fallback = "off"`.
    resilience: Option<Arc<Resilience>>,
    prefix: String,
}

/// Builds the Redis side once, on first need.
struct Builder<'a> {
    config: &'a Config,
    telemetry: &'a SharedTelemetry,
    redis: Option<RedisSide>,
}

impl Builder<'_> {
    fn redis(&mut self, section: &str) -> CliResult<&RedisSide> {
        if self.redis.is_none() {
            let cfg = &self.config.redis;
            let url = cfg
                .url
                .as_ref()
                .map(|u| u.expose().to_owned())
                .or_else(|| std::env::var("REDIS_URL").ok())
                .ok_or_else(|| {
                    Exit::usage(anyhow::anyhow!(
                        "[{section}] backend = \"redis\" needs a Redis: set [redis] url or REDIS_URL"
                    ))
                })?;
            let conn = observers_redis::connect_lazy(&url, cfg.op_timeout)
                .map_err(|e| Exit::usage(anyhow::anyhow!("[redis] url: {e}")))?;
            let resilience = cfg.fallback_mode().map(|mode| {
                let mut settings = cfg.resilience();
                // connect_lazy already bounds connecting and every response by op_timeout; a
                // second timer per call cost ~17% of dedup throughput (docs/benchmarks.md).
                settings.enforce_timeout = false;
                let r = Resilience::new("redis", settings, self.telemetry.clone());
                r.start_health_monitor(Arc::new(RedisProbe::new(conn.clone())));
                let _ = RESILIENCE.set(r.clone());
                tracing::info!(fallback = %mode, "Redis stores fall back to memory while Redis is down");
                r
            });
            self.redis = Some(RedisSide {
                conn,
                resilience,
                prefix: cfg.key_prefix.clone(),
            });
        }
        self.redis
            .as_ref()
            .ok_or_else(|| Exit::usage(anyhow::anyhow!("Redis is not configured")))
    }
}

/// The stores a config asks for.
pub struct Stores {
    pub dedup: Option<Arc<dyn DedupStore>>,
    pub cache: Option<Arc<CachedActionExecutor>>,
}

/// The action cache of this process, once built: `cache` actions built later (on SIGHUP
/// reload) invalidate the same cache.
static ACTION_CACHE: OnceLock<Arc<CachedActionExecutor>> = OnceLock::new();

pub fn action_cache() -> Option<Arc<CachedActionExecutor>> {
    ACTION_CACHE.get().cloned()
}

/// The Redis fallback layer of this process, once built (for `/status`).
static RESILIENCE: OnceLock<Arc<Resilience>> = OnceLock::new();

pub fn resilience() -> Option<Arc<Resilience>> {
    RESILIENCE.get().cloned()
}

pub fn build(config: &Config, pool: &PgPool, telemetry: &SharedTelemetry) -> CliResult<Stores> {
    let mut b = Builder {
        config,
        telemetry,
        redis: None,
    };
    let dedup: Option<Arc<dyn DedupStore>> = if config.dedup.enabled {
        let memory = || -> Arc<dyn DedupStore> {
            Arc::new(MemoryDedupStore::new(
                config.dedup.max_entries,
                system_clock(),
            ))
        };
        Some(match config.dedup.backend {
            StoreBackend::Memory => memory(),
            StoreBackend::Postgres => Arc::new(PostgresDedupStore::new(pool.clone())),
            StoreBackend::Redis => {
                let side = b.redis("dedup")?;
                let redis = Arc::new(
                    RedisDedupStore::new(side.conn.clone())
                        .with_prefix(format!("{}dedup:", side.prefix)),
                );
                match &side.resilience {
                    Some(r) => Arc::new(FallbackDedupStore::new(r.clone(), redis, memory())),
                    None => redis,
                }
            }
        })
    } else {
        None
    };
    let cache: Option<Arc<dyn CacheBackend>> = if config.cache.enabled {
        let memory = || -> Arc<dyn CacheBackend> {
            Arc::new(MemoryCacheBackend::new(
                config.cache.max_entries,
                system_clock(),
            ))
        };
        match config.cache.backend {
            StoreBackend::Memory => Some(memory()),
            StoreBackend::Postgres => {
                return Err(Exit::usage(anyhow::anyhow!(
                    "[cache] backend = \"postgres\" is not supported; use \"memory\" or \"redis\""
                )));
            }
            StoreBackend::Redis => {
                let side = b.redis("cache")?;
                let redis = Arc::new(
                    RedisCacheBackend::new(side.conn.clone())
                        .with_prefix(format!("{}cache:", side.prefix)),
                );
                let remote: Arc<dyn CacheBackend> = match &side.resilience {
                    Some(r) => Arc::new(FallbackCache::new(r.clone(), redis, memory())),
                    None => redis,
                };
                Some(match config.cache.strategy {
                    HybridStrategy::CacheAside => remote,
                    strategy => Arc::new(HybridCache::new(
                        memory(),
                        remote,
                        strategy,
                        config.cache.local_ttl,
                    )),
                })
            }
        }
    } else {
        None
    };
    let cache = cache.map(|backend| {
        let c = Arc::new(CachedActionExecutor::new(
            backend,
            config.cache.default_ttl,
            config.cache.ttls(),
            telemetry.clone(),
        ));
        let _ = ACTION_CACHE.set(c.clone());
        action_cache().unwrap_or(c)
    });
    Ok(Stores { dedup, cache })
}
