//! The ops side of `observers run`: `ObserverMetrics` as the telemetry sink, the ops HTTP server
//! (with the PostgreSQL readiness check, the `database` status section and Debezium ingest into
//! the change log), and the poller of the gauges read from the database. `run` calls
//! [`telemetry`] and [`start`] and nothing else of this module.

use std::sync::Arc;

use async_trait::async_trait;
use observers_core::ObserverExecutor;
use observers_core::config::Config;
use observers_core::debezium::DebeziumMapping;
use observers_core::stores::dlq::{DeadLetterQueue, DlqStatus};
use observers_core::stores::jobs::JobQueue;
use observers_core::telemetry::{NoopTelemetry, SharedTelemetry, TelemetryEvent};
use observers_metrics::{
    ConsoleSources, IngestTarget, InstanceInfo, ObserverMetrics, OpsServer, OpsState,
    ReadinessCheck, StatusSection,
};
use observers_postgres::{PgPool, PostgresChangeLogSink, PostgresDeadLetterQueue};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{engine, sections, status};
use crate::CliResult;

/// The telemetry of `run`: `ObserverMetrics` when `[metrics] enabled` (the default).
pub fn telemetry(config: &Config) -> (SharedTelemetry, Option<Arc<ObserverMetrics>>) {
    if config.metrics.enabled {
        let m = Arc::new(ObserverMetrics::new());
        (m.clone(), Some(m))
    } else {
        (Arc::new(NoopTelemetry), None)
    }
}

/// `/ready`'s database check.
struct DatabaseReady(PgPool);

#[async_trait]
impl ReadinessCheck for DatabaseReady {
    fn name(&self) -> &'static str {
        "database"
    }

    async fn check(&self) -> Result<Value, String> {
        observers_postgres::monitoring::ping(&self.0)
            .await
            .map(|()| json!("reachable"))
            .map_err(|e| e.to_string())
    }
}

/// `/status`'s `database` section: listeners and cursors, backlog, DLQ counts.
struct DatabaseSection(PgPool);

#[async_trait]
impl StatusSection for DatabaseSection {
    fn name(&self) -> &'static str {
        "database"
    }

    async fn collect(&self) -> Result<Value, String> {
        let s = status::database_status(&self.0)
            .await
            .map_err(|e| format!("{:#}", e.error))?;
        serde_json::to_value(s).map_err(|e| e.to_string())
    }
}

/// `/ready`'s HA check: this instance is a live member of its group (a standby holding no
/// partition is ready too: it is what takes over).
struct GroupMemberReady {
    pool: PgPool,
    config: Config,
}

#[async_trait]
impl ReadinessCheck for GroupMemberReady {
    fn name(&self) -> &'static str {
        "lease"
    }

    async fn check(&self) -> Result<Value, String> {
        let me = observers_ha::MultiListenerConfig::from_config(&self.config)
            .map_err(|e| e.to_string())?;
        let group = super::ha::group_status(&self.config, &self.pool)
            .await
            .map_err(|e| format!("{:#}", e.error))?;
        let record = group
            .instances
            .iter()
            .find(|i| i.instance_id == me.listener_id)
            .ok_or_else(|| {
                format!(
                    "{} is not registered in group {} yet",
                    me.listener_id, group.group
                )
            })?;
        if record.heartbeat_age_secs > me.lease_duration.as_secs_f64() {
            return Err(format!(
                "{}'s last heartbeat is {:.1}s old (lease {:?})",
                me.listener_id, record.heartbeat_age_secs, me.lease_duration
            ));
        }
        Ok(json!({
            "instance": record.instance_id,
            "partitions": record.partitions,
            "leader": record.is_leader,
        }))
    }
}

/// `/status`'s `group` section: the HA group (leader, instances, partition leases, lag).
struct GroupSection {
    pool: PgPool,
    config: Config,
}

#[async_trait]
impl StatusSection for GroupSection {
    fn name(&self) -> &'static str {
        "group"
    }

    async fn collect(&self) -> Result<Value, String> {
        let group = super::ha::group_status(&self.config, &self.pool)
            .await
            .map_err(|e| format!("{:#}", e.error))?;
        serde_json::to_value(group).map_err(|e| e.to_string())
    }
}

/// Starts the ops server and the gauge poller (when metrics are on); both stop when `stop`
/// turns true. Returns their tasks.
pub async fn start(
    config: &Config,
    pool: &PgPool,
    executor: &Arc<ObserverExecutor>,
    metrics: Option<Arc<ObserverMetrics>>,
    search: &super::search::SearchRuntime,
    stop: watch::Receiver<bool>,
) -> CliResult<Vec<JoinHandle<()>>> {
    let Some(metrics) = metrics else {
        return Ok(Vec::new());
    };
    let instance = InstanceInfo {
        instance_id: config
            .ha
            .instance_id
            .clone()
            .unwrap_or_else(engine::instance_id),
        listener_id: config.source.listener_id.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: chrono::Utc::now(),
        observers: config.observers.len(),
    };
    // Status, readiness and gauges never use the listener's pool, and PostgreSQL itself stops
    // any of their queries that runs too long.
    let status_pool = observers_postgres::monitoring::status_pool(
        pool,
        observers_postgres::monitoring::STATUS_STATEMENT_TIMEOUT,
    );
    let mut state = OpsState::new(metrics.clone(), instance)
        .with_check(Arc::new(DatabaseReady(status_pool.clone())))
        .with_section(Arc::new(DatabaseSection(status_pool.clone())))
        .with_breakers(executor.breakers().clone())
        .with_console(ConsoleSources {
            dlq: Arc::new(PostgresDeadLetterQueue::new(status_pool.clone())),
            jobs: Arc::new(observers_queue::PostgresJobQueue::new(status_pool.clone())),
            executor: executor.clone(),
        });
    if config.ha.enabled {
        state = state
            .with_check(Arc::new(GroupMemberReady {
                pool: status_pool.clone(),
                config: config.clone(),
            }))
            .with_section(Arc::new(GroupSection {
                pool: status_pool.clone(),
                config: config.clone(),
            }));
    }
    if config.cache.enabled {
        state = state.with_section(Arc::new(sections::CacheSection::new(
            metrics.clone(),
            config,
        )));
    }
    if let Some((backend, indexer)) = search.indexer() {
        state = state.with_section(Arc::new(sections::SearchSection { backend, indexer }));
    }
    if let Some(r) = super::stores::resilience() {
        state = state.with_section(Arc::new(sections::RedisSection(r)));
    }
    if config.metrics.debezium.enabled {
        state = state.with_ingest(IngestTarget {
            sink: Arc::new(PostgresChangeLogSink::new(pool.clone())),
            mapping: DebeziumMapping::from(&config.metrics.debezium),
        });
    }
    let server = search
        .routes()
        .into_iter()
        .fold(OpsServer::new(state), OpsServer::merge);
    let bound = match &config.metrics.listen {
        Some(addr) => server.bind(addr).await?,
        None => server.bind_default().await?,
    };
    let addr = bound.local_addr();
    tracing::info!("ops server listening on http://{addr} (/metrics /health /ready /status)");
    tracing::info!("web console: http://{addr}/ui/");
    if let Some(why) = bound.data_closed_because() {
        tracing::warn!("{why}");
    }
    let mut server_stop = stop.clone();
    let server = tokio::spawn(async move {
        let shutdown = async move {
            let _ = server_stop.wait_for(|s| *s).await;
        };
        if let Err(e) = bound.serve(shutdown).await {
            tracing::error!(error = %e, "ops server stopped");
        }
    });
    let poller = tokio::spawn(poll_gauges(
        status_pool,
        executor.clone(),
        metrics,
        config.clone(),
        stop,
    ));
    Ok(vec![server, poller])
}

/// Refreshes the database-derived gauges every `interval` until `stop`.
async fn poll_gauges(
    pool: PgPool,
    executor: Arc<ObserverExecutor>,
    metrics: Arc<ObserverMetrics>,
    config: Config,
    mut stop: watch::Receiver<bool>,
) {
    let listener = config.source.listener_id;
    let interval = config.metrics.refresh_interval;
    let ha = config.ha.enabled;
    let partitioned = ha && config.source.partitions > 1;
    let dlq = PostgresDeadLetterQueue::new(pool.clone());
    let jobs = observers_queue::PostgresJobQueue::new(pool.clone());
    let telemetry = executor.telemetry().clone();
    // Without HA this process runs exactly one listener; with HA the HA wiring owns these.
    if !ha {
        metrics.set_listeners_active(1);
    }
    metrics.set_ha_enabled(ha);
    while !*stop.borrow() {
        metrics.set_observers_registered(executor.observers().observers.len());
        match observers_postgres::monitoring::source_gauges(&pool, &listener).await {
            Ok(g) => {
                telemetry.emit(&TelemetryEvent::CutoffLag {
                    listener: &listener,
                    lag: g.cutoff_lag,
                });
                // Partitioned, every partition has a cursor of its own (`listener#pN`) and the
                // HA leader reports their backlog and lag; the consumer name has no cursor.
                if !partitioned {
                    telemetry.emit(&TelemetryEvent::SourceBacklog {
                        listener: &listener,
                        rows: g.backlog,
                    });
                    metrics.set_checkpoint_lag(&listener, g.checkpoint_lag);
                }
            }
            Err(e) => tracing::debug!(error = %e, "reading the source gauges failed"),
        }
        match dlq.count(Some(DlqStatus::Pending)).await {
            Ok(n) => metrics.set_dlq_pending(n),
            Err(e) => tracing::debug!(error = %e, "counting the DLQ failed"),
        }
        match jobs.stats().await {
            // The queue's stats are over every queue; the label says so.
            Ok(j) => metrics.set_job_depth("all", j.pending, j.processing),
            Err(e) => tracing::debug!(error = %e, "counting the job queue failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.changed() => {}
        }
    }
    if !ha {
        metrics.set_listeners_active(0);
    }
}
