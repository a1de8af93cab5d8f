//! The `/status` sections of the parts `observers run` starts besides the listener: the action
//! cache (`cache`), the search indexer (`search`) and the Redis fallback layer (`redis`). Each
//! appears only when its part runs; `observers status` renders them in its tree.

use std::sync::Arc;

use async_trait::async_trait;
use observers_core::config::Config;
use observers_core::stores::fallback::Resilience;
use observers_metrics::{ObserverMetrics, Scrape, StatusSection};
use observers_search::EventSearchIndexer;
use serde_json::{Value, json};

/// `cache`: the action cache's backend and its hit ratio (from the cache telemetry).
pub struct CacheSection {
    pub metrics: Arc<ObserverMetrics>,
    pub config: Value,
}

impl CacheSection {
    pub fn new(metrics: Arc<ObserverMetrics>, config: &Config) -> Self {
        Self {
            metrics,
            config: json!({
                "backend": config.cache.backend,
                "strategy": config.cache.strategy,
            }),
        }
    }
}

#[async_trait]
impl StatusSection for CacheSection {
    fn name(&self) -> &'static str {
        "cache"
    }

    async fn collect(&self) -> Result<Value, String> {
        let s = Scrape::parse(&self.metrics.encode()).map_err(|e| e.to_string())?;
        let hits = s.sum("observer_cache_hits_total", &[]);
        let misses = s.sum("observer_cache_misses_total", &[]);
        let lookups = hits + misses;
        let mut out = self.config.clone();
        out["hits"] = json!(hits);
        out["misses"] = json!(misses);
        out["hit_ratio"] = if lookups > 0.0 {
            json!(hits / lookups)
        } else {
            Value::Null
        };
        Ok(out)
    }
}

/// `search`: the backend and what the indexer did with the events it was handed.
pub struct SearchSection {
    pub backend: &'static str,
    pub indexer: Arc<EventSearchIndexer>,
}

#[async_trait]
impl StatusSection for SearchSection {
    fn name(&self) -> &'static str {
        "search"
    }

    async fn collect(&self) -> Result<Value, String> {
        let s = self.indexer.stats();
        Ok(json!({
            "backend": self.backend,
            "indexed": s.indexed,
            "dropped": s.dropped,
            "failed": s.failed,
            "accepted": s.accepted,
        }))
    }
}

/// `redis`: whether the stores run on their in-memory fallback, Redis's health, and the writes
/// waiting to be replayed to it.
pub struct RedisSection(pub Arc<Resilience>);

#[async_trait]
impl StatusSection for RedisSection {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn collect(&self) -> Result<Value, String> {
        let s = self.0.status();
        Ok(json!({
            "mode": s.mode.to_string(),
            "fallback_active": s.on_fallback,
            "healthy": s.healthy,
            "replay_backlog": s.pending_replay,
            "replayed_total": s.replayed_total,
            "fallback_operations_total": s.fallback_ops_total,
            "last_probe_ms": s.last_probe_latency.map(|d| d.as_secs_f64() * 1000.0),
            "breaker": s.breaker.state,
        }))
    }
}
