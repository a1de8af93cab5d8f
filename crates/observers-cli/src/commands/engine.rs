//! Wiring: builds the executor and listener of `observers run` (and of `dlq retry`, `demo`)
//! from a config, with the PostgreSQL stores.

use std::sync::Arc;

use observers_core::actions::ActionFactory;
use observers_core::breaker::BreakerRegistry;
use observers_core::clock::system_clock;
use observers_core::config::Config;
use observers_core::executor::{Dedup, ExecutorBuilder};
use observers_core::listener::ListenerConfig;
use observers_core::telemetry::SharedTelemetry;
use observers_core::{ObserverExecutor, ObserverSet};
use observers_postgres::{PgPool, PostgresDeadLetterQueue, PostgresGoneEndpoints};

use crate::{CliResult, Exit};

/// `host:pid`, the default instance id.
pub fn instance_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// The observer set of a config (actions built, conditions compiled).
pub fn observer_set(config: &Config) -> CliResult<ObserverSet> {
    let factory =
        ActionFactory::new(config.outbound.clone())?.with_cache(super::stores::action_cache());
    Ok(ObserverSet::from_config(config, &factory)?)
}

/// The executor of `observers run`: PostgreSQL DLQ, configured dedup, breakers.
pub fn executor(
    config: &Config,
    pool: &PgPool,
    telemetry: SharedTelemetry,
) -> CliResult<ObserverExecutor> {
    Ok(executor_builder(config, pool, telemetry)?.build())
}

/// [`executor`] before `build()`, for callers that attach more (the search indexer).
pub fn executor_builder(
    config: &Config,
    pool: &PgPool,
    telemetry: SharedTelemetry,
) -> CliResult<ExecutorBuilder> {
    let breakers = Arc::new(BreakerRegistry::new(
        config.breaker.clone(),
        system_clock(),
        telemetry.clone(),
    ));
    let stores = super::stores::build(config, pool, &telemetry)?;
    let mut builder = ObserverExecutor::builder(observer_set(config)?)
        .dlq(Arc::new(PostgresDeadLetterQueue::new(pool.clone())))
        .gone_endpoints(Arc::new(PostgresGoneEndpoints::new(pool.clone())))
        .telemetry(telemetry)
        .breakers(breakers)
        .max_concurrent_actions(config.executor.max_concurrent_actions);
    builder = super::queue::attach(builder, config, pool);
    if let Some(cache) = stores.cache {
        builder = builder.action_cache(cache);
    }
    if let Some(store) = stores.dedup {
        builder = builder.dedup_key(config.dedup.key_strategy()).dedup(Dedup {
            store,
            window: config.dedup.window,
            namespace: config.source.listener_id.clone(),
        });
    }
    Ok(builder)
}

pub fn listener_config(config: &Config) -> ListenerConfig {
    ListenerConfig {
        listener_id: config.source.listener_id.clone(),
        batch_size: config.source.batch_size,
        max_batch_bytes: config.source.max_batch_bytes,
        poll_interval: config.source.poll_interval,
        max_in_flight: config.executor.max_in_flight,
        ..ListenerConfig::default()
    }
}

/// The database URL of a config: `[source] database_url`, else `DATABASE_URL`.
pub fn database_url(config: &Config) -> CliResult<String> {
    config
        .source
        .database_url
        .as_ref()
        .map(|s| s.expose().to_owned())
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .ok_or_else(|| {
            Exit::usage(anyhow::anyhow!(
                "no database: set [source] database_url or DATABASE_URL"
            ))
        })
}
